"""A remote teacher (``model.teacher_engine=http``): prompt log-probs from OpenAI-compatible vLLM servers.

Why it works the way it does (docs/distributed.md, "Serving teachers"):

* The teacher never sees text: each row's token ids go out as a token-id ``prompt`` to
  ``POST {url}/v1/completions`` with ``max_tokens: 1`` and vLLM's ``prompt_logprobs: 0``, which
  returns log p(ids[t] | ids[:t]) for every prompt position. So the server must serve a model with
  the student's tokenizer; ``check_tokenizer`` asks the server's ``/tokenize`` to make sure.
* The teacher's top-k (dense objectives, ``score_topk``) is the same request with ``prompt_logprobs: k``:
  vLLM then lists at each position the k ids ranked 1..k, plus the prompt's token when it is not among
  them (about k + 1 entries per position: the reply grows with k, ``max_reply_bytes`` must hold it).
* Rows travel ``batch_size`` per request (one prompt list per request), ``concurrency`` requests are
  in flight at once (a thread pool; the work is waiting on sockets), spread round-robin over the
  servers of a comma-separated ``model.teacher_url``.
* Every attempt is bounded three ways: ``timeout_s`` for connecting and for each wait on a socket read,
  ``deadline_s`` for the whole attempt (connect, send, headers and body: a watchdog shuts the socket
  down when it passes, so a server that trickles bytes cannot hold ``score`` past it), and
  ``max_reply_bytes`` for the reply, counted while it is read (a declared ``Content-Length`` over the
  cap is refused before the body is read).
* Scoring is stateless and deterministic, so a failed attempt is simply sent again: connection errors,
  timeouts, a passed deadline, an oversize, cut-short or malformed reply (not JSON, the wrong shape, the
  wrong number of choices or positions, a value that is not a log-probability), 5xx, 408 and 429 are
  the server's failure, retried ``retries`` times with exponential back-off (``backoff_s * 2**attempt``,
  at most ``MAX_BACKOFF_S``), each retry on the next server. Requests that already succeeded are kept.
  Other 4xx answers (a prompt too long for the server's ``max_model_len``, a wrong model name) are the
  caller's mistake and fail at once (``TeacherRequestError``).
* When every attempt failed, ``TeacherServerError`` (a ``ConnectionError``) names the URLs and each
  attempt's URL and what was wrong; the training step fails, and nothing of a completed step is lost
  (its checkpoint was written before this step started).

Standard library only (``http.client``, teacher/http_transport.py): no client dependency for the trainer,
the Ray workers or CI.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from reopold_agents.config.model import ModelConfig
from reopold_agents.config.teacher_url import parse_teacher_urls
from reopold_agents.engines.base import GenerationRequest, TopKRow
from reopold_agents.teacher.http_transport import ExchangeFailed, ExchangeRefused, Limits, exchange_json

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0  # cap of one back-off sleep
MIB = 2**20
PROBE_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is 12 + 30? Use the calculator tool."}]
T = TypeVar("T")
__all__ = ["MIB", "HTTPTeacherClient", "MalformedReplyError", "TeacherRequestError", "TeacherServerError",
           "build_http_teacher", "completion_rows", "completion_topk_rows", "parse_teacher_urls",
           "prompt_logprobs_row", "prompt_topk_row"]


class TeacherServerError(ConnectionError):
    """The teacher server(s) failed every attempt: unreachable, too slow, too large or malformed replies."""


class TeacherRequestError(RuntimeError):
    """The server refused the request (a 4xx) or the set-up does not fit it (models, tokenizer)."""


class MalformedReplyError(ValueError):
    """The server answered, but not with what was asked (wrong shape, count, or values): that server's failure."""


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_positions(ids: list[int], entries: object) -> list[object]:
    """``entries`` is a list of one entry per prompt token (else MalformedReplyError)."""
    if not isinstance(entries, list) or len(entries) != len(ids):
        got = (f"{len(entries)} positions" if isinstance(entries, list)
               else "none" if entries is None else _kind(entries))
        raise MalformedReplyError(f"prompt_logprobs for a {len(ids)}-token prompt: got {got}")
    return entries


def _logprob(t: int, value: object, what: str = "logprob") -> float:
    """A reply's log-prob as a float: a number <= 0 (-inf, probability 0, is one; NaN, a value above 0,
    e.g. a logit, and a non-number are not). Raises MalformedReplyError naming position ``t``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedReplyError(f"prompt_logprobs position {t}: {what} is {_kind(value)} {str(value)[:40]!r}, "
                                  "not a number")
    try:
        lp = float(value)
    except OverflowError:
        raise MalformedReplyError(f"prompt_logprobs position {t}: {what} {str(value)[:40]}... "
                                  "overflows a float") from None
    if not lp <= 1e-4:  # a log-prob is <= 0: this is a logit (`--logprobs-mode raw_logits`), NaN or garbage
        raise MalformedReplyError(f"prompt_logprobs position {t}: {lp} is not a log-probability (start the "
                                  "server with the default --logprobs-mode raw_logprobs)")
    return lp


def _own_logprob(ids: list[int], t: int, step: object) -> float:
    """Position ``t``'s entry -> the log-prob of the prompt's own token ``ids[t]``, which must be listed:
    a missing id means the server scored other ids than the ones sent."""
    if not isinstance(step, dict):
        raise MalformedReplyError(f"prompt_logprobs position {t} is a {_kind(step)}, not an object")
    hit = step.get(str(ids[t]))
    if hit is None:
        raise MalformedReplyError(f"prompt_logprobs position {t}: no entry for the prompt's token {ids[t]} "
                                  f"(got {sorted(step)[:5]})")
    return _logprob(t, hit.get("logprob") if isinstance(hit, dict) else hit)


def prompt_logprobs_row(ids: list[int], entries: object) -> list[float]:
    """vLLM's ``prompt_logprobs`` of one prompt -> target-aligned log-probs of ``ids`` (entry 0 is 0.0).

    ``entries[t]`` (t >= 1) maps token ids (JSON string keys) to ``{"logprob": float, ...}``; with
    ``prompt_logprobs: 0`` it holds the prompt's own token, which must be there: a missing id means
    the server scored other ids than the ones sent. -inf (probability 0) is a log-probability; NaN and
    values above 0 are not. Raises MalformedReplyError saying what is wrong."""
    entries = _check_positions(ids, entries)
    return [0.0] + [_own_logprob(ids, t, entries[t]) for t in range(1, len(ids))]


def _ranked(t: int, step: dict[object, object]) -> list[tuple[int, int, float]]:
    """Position ``t``'s entries as (rank, token id, log-prob): ids are JSON keys of decimal digits, each
    value an object with an integer ``rank`` >= 1 and a ``logprob``. Raises MalformedReplyError."""
    out = []
    for key, entry in step.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) < 2**31):
            raise MalformedReplyError(f"prompt_logprobs position {t}: {str(key)[:40]!r} is not a token id")
        if not isinstance(entry, dict):
            raise MalformedReplyError(f"prompt_logprobs position {t}: the entry of token {key} is a {_kind(entry)}, "
                                      "not an object")
        rank = entry.get("rank")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise MalformedReplyError(f"prompt_logprobs position {t}: token {key} has rank {str(rank)[:40]!r}, "
                                      "not an integer >= 1")
        out.append((rank, int(key), _logprob(t, entry.get("logprob"), f"logprob of token {key}")))
    return out


def prompt_topk_row(ids: list[int], entries: object, k: int) -> TopKRow:
    """vLLM's ``prompt_logprobs`` of one prompt asked with ``prompt_logprobs: k`` -> its target-aligned
    log-probs and, at each position, the teacher's top-k (entry 0: zeros).

    vLLM lists at each position t >= 1 the k ids ranked 1..k and, when the prompt's token ``ids[t]`` is
    not among them, that token too, with its rank (the number of ids at least as likely as it: > k);
    each entry is ``{"logprob": float, "rank": int, ...}``. Anything else is MalformedReplyError: the
    prompt's token missing, fewer or more entries, ranks of the top k that are not 1..k (duplicated or
    missing), an extra token ranked inside the top k or more likely than the k-th, log-probs that rise
    with rank, a key that is not a token id, and every value check of ``prompt_logprobs_row``. The top k
    are ordered by log-prob descending, ties by id ascending (as the in-process teacher's)."""
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    entries = _check_positions(ids, entries)
    logprobs, top_ids, top_lps = [0.0], [[0] * k], [[0.0] * k]
    for t in range(1, len(ids)):
        step = entries[t]
        logprobs.append(_own_logprob(ids, t, step))
        assert isinstance(step, dict)
        if len(step) not in (k, k + 1):
            raise MalformedReplyError(f"prompt_logprobs position {t}: {len(step)} entries for prompt_logprobs={k} "
                                      f"(want the top {k}, plus the prompt's token when it is not among them)")
        ranked = _ranked(t, step)
        extra = [r for r in ranked if r[1] == ids[t]] if len(step) == k + 1 else []
        top = sorted(r for r in ranked if not extra or r[1] != ids[t])
        if [r[0] for r in top] != list(range(1, k + 1)):
            raise MalformedReplyError(f"prompt_logprobs position {t}: the top {k} have ranks "
                                      f"{[r[0] for r in top][:12]}, not 1..{k} once each")
        if any(a[2] < b[2] for a, b in zip(top, top[1:])):
            raise MalformedReplyError(f"prompt_logprobs position {t}: log-probs {[r[2] for r in top][:12]} "
                                      "rise with rank")
        if extra and (extra[0][0] <= k or extra[0][2] > top[-1][2]):
            raise MalformedReplyError(f"prompt_logprobs position {t}: the prompt's token {ids[t]} is listed "
                                      f"besides the top {k} with rank {extra[0][0]} and log-prob {extra[0][2]} "
                                      f"(rank {k}'s: {top[-1][2]})")
        top.sort(key=lambda r: (-r[2], r[1]))
        top_ids.append([r[1] for r in top])
        top_lps.append([r[2] for r in top])
    return TopKRow(logprobs, top_ids, top_lps)


def _ordered_choices(prompts: list[list[int]], reply: object) -> list[dict[str, Any]]:
    """A ``/v1/completions`` reply's choices in prompt order (matched by their ``index``, which must number
    the prompts once each). Raises MalformedReplyError."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list):
        where = "the reply" if isinstance(reply, dict) else f"the reply (a JSON {_kind(reply)})"
        raise MalformedReplyError(f"{where} has no 'choices' list")
    if len(choices) != len(prompts):
        raise MalformedReplyError(f"{len(choices)} choices for {len(prompts)} prompts")
    if not all(isinstance(c, dict) for c in choices):
        raise MalformedReplyError(f"a choice is not an object ({[_kind(c) for c in choices][:5]})")
    indices = [c.get("index") for c in choices]
    if all(i is None for i in indices):
        indices = list(range(len(choices)))  # no index: in prompt order
    numbered = sorted(i if isinstance(i, int) and not isinstance(i, bool) else -1 for i in indices)
    if numbered != list(range(len(prompts))):
        raise MalformedReplyError(f"choice indices {indices[:8]} do not number the {len(prompts)} prompts once each")
    return [c for _, c in sorted(zip(indices, choices), key=lambda pair: pair[0])]


def _rows(prompts: list[list[int]], reply: object, row: Callable[[list[int], object], T]) -> list[T]:
    """``row(ids, prompt_logprobs)`` of each prompt's choice, in prompt order. Raises MalformedReplyError."""
    ordered = _ordered_choices(prompts, reply)
    try:
        return [row(ids, c.get("prompt_logprobs")) for ids, c in zip(prompts, ordered)]
    except MalformedReplyError as exc:
        raise MalformedReplyError(f"{exc} (is it a vLLM server? prompt_logprobs is a vLLM extension)") from None


def completion_rows(prompts: list[list[int]], reply: object) -> list[list[float]]:
    """A ``/v1/completions`` reply -> each prompt's target-aligned log-probs, in prompt order (choices are
    matched by their ``index``, which must number the prompts once each). Raises MalformedReplyError."""
    return _rows(prompts, reply, prompt_logprobs_row)


def completion_topk_rows(prompts: list[list[int]], reply: object, k: int) -> list[TopKRow]:
    """A ``/v1/completions`` reply to ``prompt_logprobs: k`` -> each prompt's ``TopKRow`` (``prompt_topk_row``),
    in prompt order. Raises MalformedReplyError."""
    return _rows(prompts, reply, lambda ids, entries: prompt_topk_row(ids, entries, k))


def served_model_names(reply: object) -> list[str]:
    """The model ids of a ``/v1/models`` reply. Raises MalformedReplyError."""
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        raise MalformedReplyError("the reply is not an OpenAI model list ({'data': [{'id': ...}, ...]})")
    return [m["id"] for m in data]


def tokenize_ids(reply: object) -> list[int]:
    """The token ids of a vLLM ``/tokenize`` reply. Raises MalformedReplyError."""
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise MalformedReplyError("the reply has no 'tokens' list of ids")
    return tokens


@dataclass
class _Chunk:
    index: int  # chunk number: picks the first server (round-robin)
    rows: list[int]  # request indices it scores
    prompts: list[list[int]]


class HTTPTeacherClient:
    """Scores token-id sequences on vLLM servers (``score``, the ``Engine.score`` contract: entry ``t`` is
    log p(ids[t] | ids[:t]), entry 0 is 0.0; ``score_topk`` adds the teacher's top-k, a ``TopKScorer``).
    ``model`` is the served model name (None: the one model each server lists at ``/v1/models``, asked
    once here)."""

    def __init__(self, urls: list[str], model: str | None = None, *, batch_size: int = 8, concurrency: int = 4,
                 timeout_s: float = 120.0, deadline_s: float = 600.0, max_reply_bytes: int = 64 * MIB,
                 retries: int = 3, backoff_s: float = 1.0) -> None:
        if not urls:
            raise ValueError("HTTPTeacherClient needs at least one server URL")
        if (batch_size < 1 or concurrency < 1 or timeout_s <= 0 or deadline_s <= 0 or max_reply_bytes < 1
                or retries < 0 or backoff_s < 0):
            raise ValueError(f"batch_size/concurrency/max_reply_bytes >= 1, timeout_s/deadline_s > 0, retries/"
                             f"backoff_s >= 0; got {batch_size}/{concurrency}/{max_reply_bytes}, {timeout_s}/"
                             f"{deadline_s}, {retries}/{backoff_s}")
        self.urls = list(urls)
        self.batch_size, self.concurrency = batch_size, concurrency
        self.limits = Limits(timeout_s, deadline_s, int(max_reply_bytes))
        self.retries, self.backoff_s = retries, backoff_s
        self.model = model if model is not None else self._served_model()

    @property
    def timeout_s(self) -> float:
        return self.limits.timeout_s

    @classmethod
    def from_config(cls, model_cfg: ModelConfig) -> "HTTPTeacherClient":
        """From the ``model.teacher_*`` keys (``reopold_agents/config/model.py``)."""
        return cls(parse_teacher_urls(model_cfg.teacher_url), model_cfg.teacher_served_model,
                   batch_size=model_cfg.teacher_batch_size, concurrency=model_cfg.teacher_concurrency,
                   timeout_s=model_cfg.teacher_timeout_s, deadline_s=model_cfg.teacher_deadline_s,
                   max_reply_bytes=int(model_cfg.teacher_max_reply_mb * MIB), retries=model_cfg.teacher_retries,
                   backoff_s=model_cfg.teacher_backoff_s)

    # -- transport ----------------------------------------------------------------------------------

    def _with_retries(self, path: str, body: dict[str, Any] | None, parse: Callable[[Any], T], first: int = 0,
                      abort: threading.Event | None = None) -> T:
        """One exchange with ``urls[first] + path`` and ``parse`` of its reply, retried with back-off on the
        next servers while the server is at fault (ExchangeFailed, MalformedReplyError); TeacherServerError
        naming every attempt when none succeeds (or as soon as ``abort`` is set by a failed sibling). A
        refusal (4xx) is TeacherRequestError at once."""
        errors: list[str] = []
        t0 = time.monotonic()
        for attempt in range(self.retries + 1):
            url = self.urls[(first + attempt) % len(self.urls)] + path
            try:
                return parse(exchange_json(url, body, self.limits))
            except ExchangeRefused as exc:
                raise TeacherRequestError(f"{url} answered {exc}") from None
            except (ExchangeFailed, MalformedReplyError) as exc:
                what = f"malformed reply: {exc}" if isinstance(exc, MalformedReplyError) else str(exc)
                errors.append(f"attempt {attempt + 1}: {url}: {what}")
                log.warning("teacher server %s failed (attempt %d of %d): %s", url, attempt + 1, self.retries + 1, what)
            if attempt == self.retries or (abort is not None and abort.is_set()):
                break
            delay = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
            if abort is not None:
                if abort.wait(delay):
                    break
            else:
                time.sleep(delay)
        lim = self.limits
        k = body.get("prompt_logprobs", 0) if body else 0
        sizing = (f" (a prompt_logprobs={k} reply carries about {k + 1} entries per position: raise "
                  "model.teacher_max_reply_mb or lower model.teacher_batch_size, docs/distributed.md)"
                  if k and any("model.teacher_max_reply_mb" in e for e in errors) else "")
        raise TeacherServerError(
            f"teacher server {', '.join(self.urls)} did not answer {path}: {len(errors)} attempt(s) over "
            f"{time.monotonic() - t0:.1f} s (model.teacher_url; per attempt: timeout {lim.timeout_s:g} s per wait, "
            f"deadline {lim.deadline_s:g} s, reply cap {lim.max_reply_bytes / MIB:g} MiB{sizing}; "
            f"model.teacher_retries={self.retries}, back-off from {self.backoff_s:g} s); is a vLLM server "
            f"(`vllm serve`) running there? " + "; ".join(errors)
        )

    # -- set-up -------------------------------------------------------------------------------------

    def _served_model(self) -> str:
        """The model name every server lists at /v1/models (they must agree: one teacher)."""
        names: set[str] = set()
        for i, url in enumerate(self.urls):
            listed = self._with_retries("/v1/models", None, served_model_names, first=i)
            if len(listed) != 1:
                raise TeacherRequestError(f"{url}/v1/models lists {listed or 'no models'}; name the teacher with "
                                          "model.teacher_served_model")
            names.add(listed[0])
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
                got = self._with_retries("/tokenize", body, tokenize_ids, first=i)
            except TeacherRequestError as exc:
                log.warning("could not check the teacher server's tokenizer (%s); make sure it serves a model "
                            "with the student's tokenizer", exc)
                return False
            if got != want:
                diff = next((t for t, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                raise TeacherRequestError(
                    f"{url} tokenises differently from model.teacher's tokenizer (first difference at token "
                    f"{diff} of {len(want)}: server {got[diff:diff + 5]} vs local {want[diff:diff + 5]}); the "
                    "teacher server must serve a model with the student's tokenizer")
        return True

    # -- scoring ------------------------------------------------------------------------------------

    def _completions(self, chunk: _Chunk, abort: threading.Event, k: int, parse: Callable[[Any], T]) -> T:
        """One ``/v1/completions`` request of ``chunk``'s prompts asking ``prompt_logprobs: k``, parsed."""
        body = {"model": self.model, "prompt": chunk.prompts, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": k}
        return self._with_retries("/v1/completions", body, parse, first=chunk.index, abort=abort)

    def _scatter(self, requests: list[GenerationRequest],
                 work: Callable[[_Chunk, threading.Event], list[T]]) -> list[T]:
        """``work`` on ``batch_size``-row chunks of ``requests``, ``concurrency`` at once; one result per
        request, in order. The first chunk to fail for good fails the call (siblings stop retrying)."""
        for i, req in enumerate(requests):
            if req.images:
                raise ValueError(f"request {i} has images: model.teacher_engine=http scores text only")
            if not req.prompt_ids:
                raise ValueError(f"request {i} has an empty prompt")
        chunks = [_Chunk(k, list(range(s, min(s + self.batch_size, len(requests)))),
                         [list(map(int, r.prompt_ids)) for r in requests[s : s + self.batch_size]])
                  for k, s in enumerate(range(0, len(requests), self.batch_size))]
        out: list[T | None] = [None] * len(requests)
        abort = threading.Event()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(len(chunks), 1)),
                                thread_name_prefix="teacher-http") as pool:
            futures = {pool.submit(work, c, abort): c for c in chunks}
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                abort.set()  # siblings stop retrying; queued chunks are dropped
                for f in futures:
                    f.cancel()
                raise failed[0].exception()  # type: ignore[misc]
            for f, c in futures.items():
                for row, result in zip(c.rows, f.result()):
                    out[row] = result
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def score(self, requests: list[GenerationRequest]) -> list[list[float]]:
        """Target-aligned log-probs of each request's ``prompt_ids``, in order (text only)."""
        return self._scatter(requests, lambda c, abort: self._completions(
            c, abort, 0, lambda reply: completion_rows(c.prompts, reply)))

    def score_topk(self, requests: list[GenerationRequest], k: int) -> list[TopKRow]:
        """``score`` plus the teacher's top-``k`` ids and log-probs at every position (vLLM's
        ``prompt_logprobs: k``; the server's ``--max-logprobs`` must be >= k), in order (text only)."""
        if k < 1:
            raise ValueError(f"score_topk needs k >= 1, got {k}")
        return self._scatter(requests, lambda c, abort: self._completions(
            c, abort, k, lambda reply: completion_topk_rows(c.prompts, reply, k)))

    def check_topk(self, k: int, tokenizer: Any) -> None:
        """Ask each server for the top-``k`` of a short probe, so a server that cannot give it (its
        ``--max-logprobs`` below k, a reply of another form) fails at start-up, not at the first step."""
        ids = list(tokenizer(PROBE_MESSAGES[1]["content"], add_special_tokens=False)["input_ids"])[:8]
        for i in range(len(self.urls)):
            probe = _Chunk(i, [0], [ids])
            try:
                self._completions(probe, threading.Event(), k, lambda reply: completion_topk_rows([ids], reply, k))
            except TeacherRequestError as exc:
                if "logprobs" not in str(exc):
                    raise
                raise TeacherRequestError(f"{exc} (the teacher's top-{k}, algo.gkd_topk, is vLLM's prompt_logprobs="
                                          f"{k}: start the teacher server(s) with --max-logprobs {k} or more)") from None

    def close(self) -> None:
        """Nothing to release: connections and threads live only inside ``score``."""


def build_http_teacher(model_cfg: ModelConfig, student_tokenizer: Any, top_k: int = 0) -> Any:
    """The ``Teacher`` for ``model.teacher_engine=http``: ``model.teacher`` names the served model's
    tokenizer (a tiny name, HF id or local path; its weights are not loaded), which must be the
    student's (the server scores the student's ids, it cannot re-tokenise) and the server's own."""
    from reopold_agents.models import load_tokenizer_and_processor
    from reopold_agents.teacher.scorer import Teacher
    from reopold_agents.teacher.tokenizers import check_same_tokenizer

    tok, processor, _ = load_tokenizer_and_processor(model_cfg.teacher, "teacher")
    if processor is not None:
        raise ValueError(f"model.teacher_engine=http scores text only; model.teacher={model_cfg.teacher!r} is a "
                         "vision-language model (use teacher_engine=hf or vllm)")
    check_same_tokenizer(student_tokenizer, tok)
    if top_k > len(tok):
        raise ValueError(f"the objective asks for the teacher's top-{top_k} over a {len(tok)}-token vocabulary "
                         "(algo=dense_kl: the full distribution): model.teacher_engine=http serves a top-k "
                         "(vLLM's prompt_logprobs=k per position), not the whole vocabulary; use algo=gkd or "
                         "reopold_topk with algo.gkd_topk=k, or model.teacher_engine=hf")
    client = HTTPTeacherClient.from_config(model_cfg)
    client.check_tokenizer(tok)
    if top_k:
        client.check_topk(top_k, tok)
    return Teacher(tok, engine=client, chunk_size=model_cfg.logprob_chunk_size,
                   batch_size=model_cfg.teacher_batch_size, top_k=top_k)

