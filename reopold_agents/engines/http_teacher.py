"""A remote teacher (``model.teacher_engine=http``): prompt log-probs from OpenAI-compatible vLLM servers.

Why it works the way it does (docs/distributed.md, "Serving teachers"):

* The teacher never sees text: each row's token ids go out as a token-id ``prompt`` to
  ``POST {url}/v1/completions`` with ``max_tokens: 1`` and vLLM's ``prompt_logprobs: 0``, which
  returns log p(ids[t] | ids[:t]) for every prompt position. So the server must serve a model with
  the student's tokenizer; ``check_tokenizer`` asks the server's ``/tokenize`` to make sure.
* Rows travel ``batch_size`` per request (one prompt list per request), ``concurrency`` requests are
  in flight at once (a thread pool; the work is waiting on sockets), spread round-robin over the
  servers of a comma-separated ``model.teacher_url``.
* Scoring is stateless and deterministic, so a failed request is simply sent again: connection errors,
  timeouts, 5xx, 408 and 429 are retried ``retries`` times with exponential back-off
  (``backoff_s * 2**attempt``, at most ``MAX_BACKOFF_S``), each retry on the next server. Requests
  that already succeeded are kept. Other 4xx answers (a prompt too long for the server's
  ``max_model_len``, a wrong model name) are the caller's mistake and fail at once.
* When every attempt failed, ``TeacherServerError`` (a ``ConnectionError``) names the URLs and what
  was tried; the training step fails, and nothing of a completed step is lost (its checkpoint was
  written before this step started).

Standard library only (``urllib``): no client dependency for the trainer, the Ray workers or CI.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from reopold_agents.engines.base import GenerationRequest

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0  # cap of one back-off sleep
RETRY_STATUS = (408, 429)  # besides 5xx: the server is busy or gave up waiting, a resend may succeed
PROBE_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is 12 + 30? Use the calculator tool."}]


class TeacherServerError(ConnectionError):
    """The teacher server(s) could not be reached or kept failing after every retry."""


class TeacherRequestError(RuntimeError):
    """The server answered, but not with usable prompt log-probs (a 4xx, or a reply of the wrong shape)."""


class _Retryable(Exception):
    """One failed attempt that a resend may fix (connection, timeout, 5xx)."""


def parse_teacher_urls(value: str) -> list[str]:
    """``model.teacher_url``: one or more comma-separated server base URLs (``http://host:port``; a
    trailing ``/`` or ``/v1`` as in OpenAI client base URLs is dropped). Raises ValueError saying why."""
    urls = []
    for part in value.split(","):
        url = part.strip().rstrip("/")
        url = url[: -len("/v1")] if url.endswith("/v1") else url
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{part.strip()!r} is not an http(s)://host:port URL")
        urls.append(url)
    return urls


def prompt_logprobs_row(ids: list[int], entries: Any) -> list[float]:
    """vLLM's ``prompt_logprobs`` of one prompt -> target-aligned log-probs of ``ids`` (entry 0 is 0.0).

    ``entries[t]`` (t >= 1) maps token ids (JSON string keys) to ``{"logprob": float, ...}``; with
    ``prompt_logprobs: 0`` it holds the prompt's own token, which must be there: a missing id means
    the server scored other ids than the ones sent."""
    if not isinstance(entries, list) or len(entries) != len(ids):
        got = "none" if entries is None else f"{len(entries)} positions" if isinstance(entries, list) else type(entries).__name__
        raise TeacherRequestError(f"prompt_logprobs for a {len(ids)}-token prompt: got {got}")
    row = [0.0]
    for t in range(1, len(ids)):
        step = entries[t]
        hit = step.get(str(ids[t])) if isinstance(step, dict) else None
        if hit is None:
            shown = sorted(step)[:5] if isinstance(step, dict) else step
            raise TeacherRequestError(f"prompt_logprobs position {t}: no entry for the prompt's token {ids[t]} (got {shown})")
        lp = float(hit["logprob"] if isinstance(hit, dict) else hit)
        if not lp <= 1e-4:  # a log-prob is <= 0: this is a logit (`--logprobs-mode raw_logits`) or garbage
            raise TeacherRequestError(f"prompt_logprobs position {t}: {lp} is not a log-probability (start the "
                                      "server with the default --logprobs-mode raw_logprobs)")
        row.append(lp)
    return row


@dataclass
class _Chunk:
    index: int  # chunk number: picks the first server (round-robin)
    rows: list[int]  # request indices it scores
    prompts: list[list[int]]


class HTTPTeacherClient:
    """Scores token-id sequences on vLLM servers (``score``, the ``Engine.score`` contract: entry ``t`` is
    log p(ids[t] | ids[:t]), entry 0 is 0.0). ``model`` is the served model name (None: the one model
    each server lists at ``/v1/models``, asked once here)."""

    def __init__(self, urls: list[str], model: str | None = None, *, batch_size: int = 8, concurrency: int = 4,
                 timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 1.0) -> None:
        if not urls:
            raise ValueError("HTTPTeacherClient needs at least one server URL")
        if batch_size < 1 or concurrency < 1 or timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError(f"batch_size/concurrency >= 1, timeout_s > 0, retries/backoff_s >= 0; got "
                             f"{batch_size}/{concurrency}/{timeout_s}/{retries}/{backoff_s}")
        self.urls = list(urls)
        self.batch_size, self.concurrency = batch_size, concurrency
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.model = model if model is not None else self._served_model()

    @classmethod
    def from_config(cls, model_cfg: Any) -> "HTTPTeacherClient":
        """From the ``model.teacher_*`` keys (``reopold_agents/config/model.py``)."""
        return cls(parse_teacher_urls(model_cfg.teacher_url), model_cfg.teacher_served_model,
                   batch_size=model_cfg.teacher_batch_size, concurrency=model_cfg.teacher_concurrency,
                   timeout_s=model_cfg.teacher_timeout_s, retries=model_cfg.teacher_retries,
                   backoff_s=model_cfg.teacher_backoff_s)

    # -- transport ----------------------------------------------------------------------------------

    def _request(self, url: str, body: dict[str, Any] | None) -> Any:
        """One attempt: GET (``body`` None) or POST JSON; the decoded reply. Raises _Retryable or
        TeacherRequestError."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            if exc.code >= 500 or exc.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {exc.code}: {detail}") from None
            raise TeacherRequestError(f"{url} answered HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"no answer within {self.timeout_s:g} s (model.teacher_timeout_s)") from None
            raise _Retryable(f"cannot connect ({reason})") from None
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"no answer within {self.timeout_s:g} s (model.teacher_timeout_s)") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retryable(f"connection broke ({type(exc).__name__}: {exc})") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Retryable(f"reply is not JSON ({len(raw)} bytes: {raw[:80]!r})") from None

    def _with_retries(self, path: str, body: dict[str, Any] | None, first: int = 0,
                      abort: threading.Event | None = None) -> Any:
        """``_request`` on ``urls[first]``, retried with back-off on the next servers; TeacherServerError
        naming every attempt when none succeeds (or as soon as ``abort`` is set by a failed sibling)."""
        errors: list[str] = []
        t0 = time.monotonic()
        for attempt in range(self.retries + 1):
            url = self.urls[(first + attempt) % len(self.urls)] + path
            try:
                return self._request(url, body)
            except _Retryable as exc:
                errors.append(f"attempt {attempt + 1}: {url}: {exc}")
                log.warning("teacher server %s failed (attempt %d of %d): %s", url, attempt + 1, self.retries + 1, exc)
            if attempt == self.retries or (abort is not None and abort.is_set()):
                break
            delay = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
            if abort is not None:
                if abort.wait(delay):
                    break
            else:
                time.sleep(delay)
        raise TeacherServerError(
            f"teacher server {', '.join(self.urls)} did not answer {path}: {len(errors)} attempt(s) over "
            f"{time.monotonic() - t0:.1f} s (model.teacher_url; timeout {self.timeout_s:g} s each, "
            f"model.teacher_retries={self.retries}, back-off from {self.backoff_s:g} s); is the teacher "
            f"server (`vllm serve`) running there? " + "; ".join(errors)
        )

    # -- set-up -------------------------------------------------------------------------------------

    def _served_model(self) -> str:
        """The model name every server lists at /v1/models (they must agree: one teacher)."""
        names: set[str] = set()
        for i, url in enumerate(self.urls):
            reply = self._with_retries("/v1/models", None, first=i)
            listed = [m.get("id") for m in reply.get("data", [])] if isinstance(reply, dict) else []
            if len(listed) != 1:
                raise TeacherRequestError(f"{url}/v1/models lists {listed or 'no models'}; name the teacher with "
                                          "model.teacher_served_model")
            names.add(str(listed[0]))
        if len(names) != 1:
            raise TeacherRequestError(f"the teacher servers serve different models {sorted(names)}; "
                                      "they must serve one teacher (model.teacher_url)")
        return names.pop()

    def check_tokenizer(self, tokenizer: Any) -> bool:
        """Compare the server's tokenisation (vLLM ``/tokenize``) of a chat-rendered probe, special tokens
        included, with ``tokenizer``'s: the server must read the student's ids as the student meant
        them. Raises TeacherRequestError on a mismatch; returns False (logged) where the server has
        no ``/tokenize`` (not vLLM), True when checked."""
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
        else:  # a base model: plain text and whatever special tokens it has
            text = " ".join([m["content"] for m in PROBE_MESSAGES] + list(tokenizer.all_special_tokens))
        want = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        for i, url in enumerate(self.urls):
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
            try:
                reply = self._with_retries("/tokenize", body, first=i)
            except TeacherRequestError as exc:
                log.warning("could not check the teacher server's tokenizer (%s); make sure it serves a model "
                            "with the student's tokenizer", exc)
                return False
            got = reply.get("tokens") if isinstance(reply, dict) else None
            if got != want:
                diff = next((t for t, (a, b) in enumerate(zip(got or [], want)) if a != b), min(len(got or []), len(want)))
                raise TeacherRequestError(
                    f"{url} tokenises differently from model.teacher's tokenizer (first difference at token "
                    f"{diff} of {len(want)}: server {(got or [])[diff:diff + 5]} vs local {want[diff:diff + 5]}); the "
                    "teacher server must serve a model with the student's tokenizer")
        return True

    # -- scoring ------------------------------------------------------------------------------------

    def _score_chunk(self, chunk: _Chunk, abort: threading.Event) -> list[list[float]]:
        body = {"model": self.model, "prompt": chunk.prompts, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0}
        reply = self._with_retries("/v1/completions", body, first=chunk.index, abort=abort)
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != len(chunk.prompts):
            n = len(choices) if isinstance(choices, list) else 0
            raise TeacherRequestError(f"/v1/completions answered {n} choices for {len(chunk.prompts)} prompts")
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        try:
            return [prompt_logprobs_row(ids, c.get("prompt_logprobs")) for ids, c in zip(chunk.prompts, choices)]
        except TeacherRequestError as exc:
            raise TeacherRequestError(f"{self.urls[chunk.index % len(self.urls)]}: {exc} (is it a vLLM server? "
                                      "prompt_logprobs is a vLLM extension)") from None

    def score(self, requests: list[GenerationRequest]) -> list[list[float]]:
        """Target-aligned log-probs of each request's ``prompt_ids``, in order (text only)."""
        for i, req in enumerate(requests):
            if req.images:
                raise ValueError(f"request {i} has images: model.teacher_engine=http scores text only")
            if not req.prompt_ids:
                raise ValueError(f"request {i} has an empty prompt")
        chunks = [_Chunk(k, list(range(s, min(s + self.batch_size, len(requests)))),
                         [list(map(int, r.prompt_ids)) for r in requests[s : s + self.batch_size]])
                  for k, s in enumerate(range(0, len(requests), self.batch_size))]
        out: list[list[float] | None] = [None] * len(requests)
        abort = threading.Event()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(len(chunks), 1)),
                                thread_name_prefix="teacher-http") as pool:
            futures = {pool.submit(self._score_chunk, c, abort): c for c in chunks}
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                abort.set()  # siblings stop retrying; queued chunks are dropped
                for f in futures:
                    f.cancel()
                raise failed[0].exception()  # type: ignore[misc]
            for f, c in futures.items():
                for row, lps in zip(c.rows, f.result()):
                    out[row] = lps
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Nothing to release: connections and threads live only inside ``score``."""


def build_http_teacher(model_cfg: Any, student_tokenizer: Any, top_k: int = 0) -> Any:
    """The ``Teacher`` for ``model.teacher_engine=http``: ``model.teacher`` names the served model's
    tokenizer (a tiny name, HF id or local path; its weights are not loaded), which must be the
    student's (the server scores the student's ids, it cannot re-tokenise) and the server's own."""
    from reopold_agents.models import load_tokenizer_and_processor
    from reopold_agents.teacher import Teacher, check_same_tokenizer

    tok, processor, _ = load_tokenizer_and_processor(model_cfg.teacher, "teacher")
    if processor is not None:
        raise ValueError(f"model.teacher_engine=http scores text only; model.teacher={model_cfg.teacher!r} is a "
                         "vision-language model (use teacher_engine=hf or vllm)")
    check_same_tokenizer(student_tokenizer, tok)
    client = HTTPTeacherClient.from_config(model_cfg)
    client.check_tokenizer(tok)
    return Teacher(tok, engine=client, chunk_size=model_cfg.logprob_chunk_size,
                   batch_size=model_cfg.teacher_batch_size, top_k=top_k)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's error message (vLLM: ``{"error": {"message": ...}}`` or ``{"message": ...}``), short."""
    try:
        raw = exc.read()
    except Exception:  # noqa: BLE001 - the body is only decoration of the error
        return exc.reason or ""
    try:
        data = json.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:500]
    except ValueError:
        return raw[:300].decode(errors="replace")
