"""The remote teacher (``model.teacher_engine=http``) against a canned vLLM-format server on loopback.

A tiny ``http.server`` plays the vLLM OpenAI server: it answers ``/v1/models``, ``/tokenize`` and
``/v1/completions`` (``prompt_logprobs`` computed by a formula the test also knows), or fails as told
(500, 400, a hang past the client's timeout, a dropped connection, a trickled or oversize reply, a
malformed one). No vLLM here: these run in the default suite (loopback only). The real vLLM server (parity with the in-process teacher, a killed server mid-run) is
tests/test_http_teacher_vllm.py.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.engines.base import GenerationRequest, TopKRow
from reopold_agents.teacher.http import (
    MIB,
    HTTPTeacherClient,
    MalformedReplyError,
    TeacherRequestError,
    TeacherServerError,
    parse_teacher_urls,
    prompt_logprobs_row,
    prompt_topk_row,
)
from reopold_agents.teacher import Teacher, build_teacher
from reopold_agents.trajectory import Trajectory, collate

SERVED = "tiny-teacher"


def fake_logprob(ids: list[int], t: int) -> float:
    """What the canned server reports for log p(ids[t] | ids[:t]): depends on the token and its prefix."""
    return -0.01 * ((ids[t] * 31 + ids[t - 1] * 7 + t) % 97) - 0.001


@dataclass
class FakeVLLM:
    """The server's script: ``actions`` are consumed one per /v1/completions request (then ``default``). An
    action is a name (see ``do_POST``) or a function of the request body giving the raw 200 reply body."""

    actions: list[str | Callable[[dict[str, Any]], bytes]] = field(default_factory=list)
    default: str = "ok"
    tokenize: Callable[[str], Any] | None = None
    models_reply: bytes | None = None  # raw /v1/models body (None: the one served model)
    hang_s: float = 2.0
    max_logprobs: int = 20  # as vLLM's --max-logprobs: a larger prompt_logprobs is a 400
    trickle_s: float = 0.05  # between two trickled bytes
    sent: list[int] = field(default_factory=list)  # body bytes written per streamed reply
    seen: list[tuple[float, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> str | Callable[[dict[str, Any]], bytes]:
        with self.lock:
            return self.actions.pop(0) if self.actions else self.default


def completion_reply(body: dict[str, Any], value: Callable[[list[int], int], float] = fake_logprob) -> dict[str, Any]:
    if body.get("prompt_logprobs"):  # the teacher's top-k (score_topk): see topk_completion_reply below
        return topk_completion_reply(body)
    prompts = body["prompt"]
    choices = []
    for i, ids in enumerate(prompts):
        plp: list[Any] = [None]
        for t in range(1, len(ids)):
            decoy = (ids[t] + 1) % 1000  # vLLM also lists the top-ranked token when it is not the prompt's
            plp.append({str(decoy): {"logprob": -0.0001, "rank": 1, "decoded_token": "x"},
                        str(ids[t]): {"logprob": value(ids, t), "rank": 5, "decoded_token": "y"}})
        choices.append({"index": i, "text": "a", "logprobs": None, "finish_reason": "length", "prompt_logprobs": plp})
    choices.reverse()  # order comes from "index", not position
    return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices}


def make_handler(state: FakeVLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, data: Any) -> None:
            raw = data if isinstance(data, bytes) else json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            try:
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): fine
                pass

        def do_GET(self) -> None:
            state.seen.append((time.monotonic(), self.path, None))
            if self.path == "/v1/models":
                self._send(200, state.models_reply or {"object": "list",
                                                       "data": [{"id": SERVED, "object": "model", "max_model_len": 512}]})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.seen.append((time.monotonic(), self.path, body))
            if self.path == "/tokenize":
                if state.tokenize is None:
                    self._send(404, {"detail": "Not Found"})
                else:
                    self._send(200, {"tokens": state.tokenize(body["prompt"]), "count": 0, "max_model_len": 512})
                return
            if self.path != "/v1/completions":
                self._send(404, {"detail": "Not Found"})
                return
            if body.get("prompt_logprobs", 0) > state.max_logprobs:  # vLLM's own check and words
                self._send(400, {"error": {"message": f"Requested prompt logprobs of {body['prompt_logprobs']}, "
                                                      f"which is greater than max allowed: {state.max_logprobs}",
                                           "type": "BadRequestError", "code": 400}})
                return
            action = state.next_action()
            if callable(action):
                self._send(200, action(body))
            elif action == "neginf":  # a teacher that finds every token impossible
                self._send(200, completion_reply(body, lambda ids, t: float("-inf")))
            elif action in ("trickle", "trickle_headers"):
                self._trickle(completion_reply(body), headers_too=action == "trickle_headers")
            elif action in ("huge", "huge_declared"):
                self._stream(100 * MIB, declare=action == "huge_declared")
            elif action == "500":
                self._send(500, {"error": {"message": "EngineCore died", "type": "InternalServerError", "code": 500}})
            elif action == "400":
                self._send(400, {"error": {"message": "This model's maximum context length is 512 tokens",
                                           "type": "BadRequestError", "code": 400}})
            elif action == "hang":
                time.sleep(state.hang_s)
                self._send(200, completion_reply(body))
            elif action == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)  # as a killed server: no status line at all
            elif action == "garbled":
                self._send(200, {"choices": [{"index": 0, "text": "a"}] * len(body["prompt"])})
            else:
                self._send(200, completion_reply(body))

        def _trickle(self, data: dict[str, Any], headers_too: bool) -> None:
            """A valid reply, one byte every ``trickle_s`` (each socket wait is short; the whole is not)."""
            raw = json.dumps(data).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
            out = (head + raw) if headers_too else raw
            try:
                if not headers_too:
                    self.wfile.write(head)
                for i in range(len(out)):
                    self.wfile.write(out[i : i + 1])
                    time.sleep(state.trickle_s)
            except OSError:  # the client gave up: fine
                pass

        def _stream(self, size: int, declare: bool) -> None:
            """``size`` bytes of a JSON string, with or without a Content-Length; counts what got out."""
            piece = b"x" * (1 << 16)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if declare:
                self.send_header("Content-Length", str(size))
            sent = 0
            try:
                self.end_headers()
                self.wfile.write(b'"')
                while sent < size:
                    self.wfile.write(piece)
                    sent += len(piece)
            except OSError:  # the client refused the rest: fine
                pass
            state.sent.append(sent)

    return Handler


@pytest.fixture
def fake():
    """(state, base URL) of a canned server on a free loopback port."""
    state = FakeVLLM()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def free_port_url() -> str:
    """A loopback URL where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def requests_of(lengths: list[int], seed: int = 0) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(seed)
    return [GenerationRequest(torch.randint(3, 1000, (n,), generator=g).tolist()) for n in lengths]


def expected(req: GenerationRequest) -> list[float]:
    return [0.0] + [fake_logprob(req.prompt_ids, t) for t in range(1, len(req.prompt_ids))]


def completions(state: FakeVLLM) -> list[tuple[float, Any]]:
    return [(t, body) for t, path, body in state.seen if path == "/v1/completions"]


def test_urls_are_parsed_and_checked():
    assert parse_teacher_urls("http://a:8000/v1/, https://b:9/") == ["http://a:8000", "https://b:9"]
    for bad in ("a:8000", "ftp://a:1", "http://", "http://a:1,,http://b:2"):
        with pytest.raises(ValueError, match="URL"):
            parse_teacher_urls(bad)


def test_prompt_logprobs_row_checks_the_ids():
    ids = [5, 6, 7]
    entries = [None, {"6": {"logprob": -1.5}, "9": {"logprob": -0.1}}, {"7": {"logprob": -0.25}}]
    assert prompt_logprobs_row(ids, entries) == [0.0, -1.5, -0.25]
    with pytest.raises(MalformedReplyError, match="no entry for the prompt's token 7"):
        prompt_logprobs_row(ids, [None, entries[1], {"8": {"logprob": -0.25}}])
    with pytest.raises(MalformedReplyError, match="3-token prompt: got 2 positions"):
        prompt_logprobs_row(ids, entries[:2])
    with pytest.raises(MalformedReplyError, match="got none"):
        prompt_logprobs_row(ids, None)
    with pytest.raises(MalformedReplyError, match="3.5 is not a log-probability.*logprobs-mode"):
        prompt_logprobs_row(ids, [None, entries[1], {"7": {"logprob": 3.5}}])
    assert prompt_logprobs_row(ids, [None, entries[1], {"7": {"logprob": float("-inf")}}])[2] == float("-inf")


def test_batched_concurrent_scores_equal_the_server_values(fake):
    state, url = fake
    client = HTTPTeacherClient([url], batch_size=2, concurrency=3, timeout_s=5, retries=0)
    assert client.model == SERVED  # from /v1/models
    reqs = requests_of([5, 9, 2, 14, 7])
    got = client.score(reqs)
    assert got == [expected(r) for r in reqs]  # floats through JSON: exact
    sent = completions(state)
    assert len(sent) == 3  # 5 rows, 2 per request
    assert sorted(len(b["prompt"]) for _, b in sent) == [1, 2, 2]
    assert sorted(p for _, b in sent for p in b["prompt"]) == sorted(r.prompt_ids for r in reqs)
    for _, body in sent:
        assert body["model"] == SERVED and body["max_tokens"] == 1 and body["prompt_logprobs"] == 0
    assert client.score([]) == []


def test_requests_really_run_concurrently(fake):
    state, url = fake
    state.hang_s = 0.6
    state.actions = ["hang"] * 4
    client = HTTPTeacherClient([url], batch_size=1, concurrency=4, timeout_s=5, retries=0)
    t0 = time.monotonic()
    reqs = requests_of([4, 4, 4, 4])
    assert client.score(reqs) == [expected(r) for r in reqs]
    assert time.monotonic() - t0 < 4 * 0.6 * 0.75  # serial would be 2.4 s


def test_5xx_and_dropped_connections_are_retried_with_backoff(fake):
    state, url = fake
    state.actions = ["500", "drop", "500"]
    client = HTTPTeacherClient([url], SERVED, batch_size=8, timeout_s=5, retries=3, backoff_s=0.2)
    reqs = requests_of([6, 3])
    assert client.score(reqs) == [expected(r) for r in reqs]
    times = [t for t, _ in completions(state)]
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:])]
    for gap, want in zip(gaps, (0.2, 0.4, 0.8)):  # backoff_s * 2**attempt
        assert want <= gap < want + 0.5, gaps


def test_a_hanging_server_times_out_and_is_retried(fake):
    state, url = fake
    state.hang_s = 3.0
    state.actions = ["hang"]
    client = HTTPTeacherClient([url], SERVED, timeout_s=0.5, retries=1, backoff_s=0.0)
    reqs = requests_of([5])
    t0 = time.monotonic()
    assert client.score(reqs) == [expected(reqs[0])]
    assert time.monotonic() - t0 < 2.5  # did not wait for the hung reply
    state.actions = ["hang", "hang"]
    with pytest.raises(TeacherServerError, match=r"no answer within 0.5 s \(model.teacher_timeout_s\)"):
        client.score(reqs)


def test_down_server_error_names_the_url_and_the_attempts():
    url = free_port_url()
    t0 = time.monotonic()
    with pytest.raises(TeacherServerError) as info:
        HTTPTeacherClient([url], timeout_s=1, retries=2, backoff_s=0.1)  # the /v1/models lookup
    msg = str(info.value)
    assert f"teacher server {url} did not answer /v1/models: 3 attempt(s)" in msg
    assert "cannot connect" in msg and "Connection refused" in msg and "model.teacher_url" in msg
    assert time.monotonic() - t0 >= 0.1 + 0.2  # two back-off sleeps
    client = HTTPTeacherClient([url], SERVED, timeout_s=1, retries=0)  # a named model needs no lookup
    with pytest.raises(ConnectionError, match=f"{url} did not answer /v1/completions: 1 attempt"):
        client.score(requests_of([4]))


def test_client_errors_are_not_retried(fake):
    state, url = fake
    state.actions = ["400"]
    client = HTTPTeacherClient([url], SERVED, retries=3, backoff_s=0.0)
    with pytest.raises(TeacherRequestError, match="HTTP 400: This model's maximum context length is 512"):
        client.score(requests_of([4]))
    assert len(completions(state)) == 1


def test_a_malformed_reply_is_the_servers_failure_retried_then_named(fake):
    """A reply without usable prompt_logprobs fails that attempt like a 5xx: resent (on the next server),
    and when every attempt got one, TeacherServerError names the URL and what was wrong."""
    state, url = fake
    client = HTTPTeacherClient([url], SERVED, retries=1, backoff_s=0.0)
    state.actions = ["garbled"]
    reqs = requests_of([4])
    assert client.score(reqs) == [expected(reqs[0])]
    assert len(completions(state)) == 2
    state.actions = ["garbled", "garbled"]
    with pytest.raises(TeacherServerError, match=f"attempt 2: {url}/v1/completions: malformed reply: prompt_logprobs "
                                                 "for a 4-token prompt: got none.*is it a vLLM server"):
        client.score(reqs)


def _choice_with(plp: Any, **extra: Any) -> Callable[[dict[str, Any]], bytes]:
    """A reply whose one choice carries ``plp(ids)`` as its prompt_logprobs (and ``extra`` keys)."""
    return lambda body: json.dumps({"choices": [{"index": 0, "prompt_logprobs": plp(body["prompt"][0]), **extra}]}).encode()


def _entry(value: Any) -> Callable[[list[int]], list[Any]]:
    """prompt_logprobs whose position 1 holds ``value`` for the prompt's token (the others are valid)."""
    def plp(ids: list[int]) -> list[Any]:
        out: list[Any] = [None] + [{str(ids[t]): {"logprob": -0.5}} for t in range(1, len(ids))]
        out[1] = {str(ids[1]): value}
        return out
    return plp


MALFORMED = {  # each reply form a broken or foreign server may send -> what the error must say
    "html": (lambda body: b"<html><body>502 Bad Gateway</body></html>", "reply is not JSON"),
    "deep nesting": (lambda body: b"[" * 200_000, "reply is not JSON"),
    "a JSON list": (lambda body: b"[1, 2]", "the reply \\(a JSON list\\) has no 'choices' list"),
    "choices not a list": (lambda body: b'{"choices": "x"}', "has no 'choices' list"),
    "0 choices": (lambda body: b'{"choices": []}', "0 choices for 1 prompts"),
    "a choice not an object": (lambda body: b'{"choices": [1]}', "a choice is not an object"),
    "index a string": (_choice_with(_entry({"logprob": -0.5}), index="0"), "choice indices \\['0'\\]"),
    "index out of range": (_choice_with(_entry({"logprob": -0.5}), index=1), "do not number the 1 prompts"),
    "no prompt_logprobs": (lambda body: b'{"choices": [{"index": 0, "text": "a"}]}', "got none"),
    "prompt_logprobs a string": (_choice_with(lambda ids: "abc"), "got str"),
    "one position short": (_choice_with(lambda ids: _entry({"logprob": -0.5})(ids)[:-1]), "got 3 positions"),
    "a position a list": (_choice_with(lambda ids: [None, [1, 2], *_entry(-0.5)(ids)[2:]]), "position 1 is a list"),
    "no logprob key": (_choice_with(_entry({"rank": 1})), "logprob is null"),
    "logprob a string": (_choice_with(_entry({"logprob": "high"})), "logprob is str 'high'"),
    "logprob a list": (_choice_with(_entry([0.5])), "logprob is list"),
    "logprob overflows": (_choice_with(_entry({"logprob": -(10**400)})), "overflows a float"),
    "logprob NaN": (_choice_with(_entry({"logprob": float("nan")})), "nan is not a log-probability"),
    "a logit": (_choice_with(_entry({"logprob": 7.5})), "7.5 is not a log-probability"),
}


@pytest.mark.parametrize("form", list(MALFORMED))
def test_every_malformed_reply_is_a_server_error_naming_the_url(fake, form):
    state, url = fake
    reply, says = MALFORMED[form]
    state.actions = [reply]
    client = HTTPTeacherClient([url], SERVED, timeout_s=5, retries=0)
    with pytest.raises(TeacherServerError, match=f"attempt 1: {url}/v1/completions: .*{says}"):
        client.score(requests_of([4]))


def test_malformed_model_list_and_tokenize_replies_name_the_url(fake, tok):
    state, url = fake
    for raw in (b'{"data": [1]}', b'{"data": "abc"}', b'{"object": "list"}', b"null"):
        state.models_reply = raw
        with pytest.raises(TeacherServerError, match=f"{url}/v1/models: malformed reply: the reply is not an OpenAI"):
            HTTPTeacherClient([url], timeout_s=5, retries=0)
    state.models_reply = None
    state.tokenize = lambda text: "abc"
    with pytest.raises(TeacherServerError, match=f"{url}/tokenize: malformed reply: the reply has no 'tokens' list"):
        HTTPTeacherClient([url], SERVED, retries=0).check_tokenizer(tok)


@pytest.mark.parametrize("action", ["trickle", "trickle_headers"])
def test_a_trickling_server_fails_at_the_deadline(fake, action):
    """Each byte comes well within the 5 s socket timeout, the whole reply would take ~20 s: each attempt
    ends at its 1 s deadline (also while the status line and headers trickle), naming the URL and the key."""
    state, url = fake
    state.trickle_s = 0.02
    state.actions = [action] * 2
    client = HTTPTeacherClient([url], SERVED, timeout_s=5, deadline_s=1.0, retries=1, backoff_s=0.0)
    t0 = time.monotonic()
    with pytest.raises(TeacherServerError) as info:
        client.score(requests_of([8]))  # a reply of ~1 kB: ~20 s trickled (the headers alone: ~1.6 s)
    took = time.monotonic() - t0
    assert 2 * 1.0 <= took < 2 * 1.0 + 1.5, took  # two attempts, each cut at its deadline
    msg = str(info.value)
    assert f"attempt 2: {url}/v1/completions: no complete reply within the 1 s deadline (model.teacher_deadline_s)" in msg
    reqs = requests_of([5])
    assert client.score(reqs) == [expected(reqs[0])]  # a server that answers in time still does


@pytest.mark.parametrize("declared", [False, True])
def test_an_oversize_reply_is_refused_while_read(fake, declared):
    """A 100 MB reply against a 1 MiB cap: refused after about the cap (undeclared length) or before its
    body (declared), never buffered whole: the client's memory peak and the bytes the server got out stay
    far below 100 MB."""
    state, url = fake
    state.actions = ["huge_declared" if declared else "huge"]
    client = HTTPTeacherClient([url], SERVED, timeout_s=5, max_reply_bytes=MIB, retries=0)
    tracemalloc.start()
    try:
        with pytest.raises(TeacherServerError) as info:
            client.score(requests_of([4]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert f"attempt 1: {url}/v1/completions: reply" in msg and "over the 1 MiB cap (model.teacher_max_reply_mb)" in msg
    assert ("not read" in msg) == declared
    assert peak < 16 * MIB, peak
    for _ in range(100):  # the server notices the closed connection
        if state.sent:
            break
        time.sleep(0.05)
    assert state.sent and state.sent[0] < 40 * MIB, state.sent


def test_one_failed_request_fails_the_call_without_waiting_for_the_rest(fake):
    state, url = fake
    state.actions = ["400", "500", "500", "500"]  # the first chunk fails for good; the others keep retrying
    client = HTTPTeacherClient([url], SERVED, batch_size=1, concurrency=2, timeout_s=5, retries=3, backoff_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(TeacherRequestError):
        client.score(requests_of([3, 3, 3, 3]))
    assert time.monotonic() - t0 < 1.5  # the siblings' 2 s back-off was cut short
    assert len(completions(state)) <= 3  # queued chunks were dropped


def test_retries_fail_over_to_the_next_server(fake):
    state, live = fake
    dead = free_port_url()
    client = HTTPTeacherClient([dead, live], SERVED, batch_size=1, concurrency=2, retries=1, backoff_s=0.0)
    reqs = requests_of([3, 4, 5, 6])
    assert client.score(reqs) == [expected(r) for r in reqs]
    assert len(completions(state)) == 4  # every chunk ended on the live one


def test_tokenizer_check_against_the_server(fake, tok):
    state, url = fake
    client = HTTPTeacherClient([url], SERVED)
    assert client.check_tokenizer(tok) is False  # no /tokenize: not checked (logged)
    state.tokenize = lambda text: list(tok(text, add_special_tokens=False)["input_ids"])
    assert client.check_tokenizer(tok) is True
    sent = [b for _, p, b in state.seen if p == "/tokenize"][-1]
    assert "<|im_start|>" in sent["prompt"] and sent["add_special_tokens"] is False
    base = copy.deepcopy(tok)
    base.chat_template = None  # a base model's tokenizer: the probe is plain text and its special tokens
    assert client.check_tokenizer(base) is True
    assert tok.eos_token in [b for _, p, b in state.seen if p == "/tokenize"][-1]["prompt"]
    state.tokenize = lambda text: [i + 1 for i in tok(text, add_special_tokens=False)["input_ids"]]
    with pytest.raises(TeacherRequestError, match=r"tokenises differently .*\(first difference at token 0 of"):
        client.check_tokenizer(tok)


def _trajectories(n: int = 4) -> list[Trajectory]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        t = Trajectory(group_id=i)
        t.append_env(torch.randint(3, 1000, (3 + i,), generator=g).tolist())
        t.append_generated(torch.randint(3, 1000, (2 + 2 * i,), generator=g).tolist(), [-1.0] * (2 + 2 * i))
        t.append_env(torch.randint(3, 1000, (2,), generator=g).tolist())
        t.append_generated(torch.randint(3, 1000, (3,), generator=g).tolist(), [-1.0] * 3)
        out.append(t)
    return out


def test_teacher_fills_the_batch_through_the_server(fake, tok):
    _, url = fake
    trajs = _trajectories()
    batch = collate(trajs, tok.pad_token_id)
    Teacher(tok, engine=HTTPTeacherClient([url], SERVED, batch_size=3)).score(batch).apply_to(batch)
    for b, t in enumerate(trajs):
        want = torch.tensor([lp * m for lp, m in zip(expected(GenerationRequest(t.token_ids)), batch.loss_mask[b].tolist())])
        assert torch.allclose(batch.teacher_logprobs[b, : len(t)], want.float())
        assert torch.all(batch.teacher_logprobs[b, len(t):] == 0)
    with pytest.raises(ValueError, match="scores text only"):
        HTTPTeacherClient([url], SERVED).score([GenerationRequest([1, 2], images=["img"])])


def test_config_keys_and_build_teacher(fake, tok):
    _, url = fake
    cfg = compose(["model.teacher_engine=http", f"model.teacher_url={url}/v1", "model.teacher_batch_size=2",
                   "model.teacher_concurrency=2", "model.teacher_timeout_s=5", "model.teacher_retries=1",
                   "model.teacher_backoff_s=0.5"])
    teacher = build_teacher(cfg.model, tok)
    client = teacher.engine
    assert isinstance(client, HTTPTeacherClient) and client.urls == [url] and client.model == SERVED
    assert (client.batch_size, client.concurrency, client.timeout_s, client.retries, client.backoff_s) == (2, 2, 5, 1, 0.5)
    assert build_teacher(cfg.model, tok, top_k=4).top_k == 4  # served top-k: test_served_topk_* below
    two = compose(["model.teacher_engine=http", f"model.teacher_url='{url},{url}/'"])
    assert build_teacher(two.model, tok).engine.urls == [url, url]
    for bad, key in ((["model.teacher_engine=http"], "model.teacher_url"),
                     ([f"model.teacher_url={url}"], "model.teacher_url: only read with teacher_engine=http"),
                     (["model.teacher_served_model=x"], "model.teacher_served_model: only read"),
                     (["model.teacher_engine=http", "model.teacher_url=localhost:8000"], "model.teacher_url"),
                     (["model.teacher_engine=http", f"model.teacher_url={url}", "model.teacher_concurrency=0"],
                      "model.teacher_concurrency"),
                     (["model.teacher_engine=http", f"model.teacher_url={url}", "model.teacher_timeout_s=0"],
                      "model.teacher_timeout_s"),
                     (["model.teacher_engine=http", f"model.teacher_url={url}", "model=tiny", "model.teacher=self"],
                      "model.teacher"),
                     (["model.teacher_engine=grpc"], "model.teacher_engine")):
        with pytest.raises(ConfigError, match=key):
            compose(bad)


def test_vision_teacher_is_refused(fake, tok):
    _, url = fake
    cfg = compose(["env=vqa", "model=tiny_vl", "model.teacher_engine=http", f"model.teacher_url={url}"])
    with pytest.raises(ValueError, match="scores text only"):
        build_teacher(cfg.model, tok)


def test_a_teacher_answering_minus_inf_stops_the_run_keeping_the_last_good_weights(fake, tmp_path, caplog):
    """A served teacher that starts answering -inf after step 1: steps 2 and 3 are skipped (a warning each,
    naming the step and the -inf teacher log-probs), the 3rd skipped step in a row (step 4) stops the run
    with NonFiniteStepsError; the checkpoints of the skipped steps hold step 1's weights."""
    from safetensors.torch import load_file

    import reopold_agents.run as run_mod
    from reopold_agents.metrics import read_metrics
    from reopold_agents.step import NonFiniteStepsError, StepResult

    state, url = fake
    out = tmp_path / "run"
    cfg = compose(["env=math", f"trainer.output_dir={out}", "trainer.total_steps=6", "trainer.prompts_per_step=2",
                   "trainer.group_size=2", "trainer.save_every=1", "trainer.keep_checkpoints=6",
                   "engine.sampling.max_new_tokens=12", "env.max_turns=2", "trainer.heldout_tasks=4", "trainer.lr=1e-3",
                   "model.teacher_engine=http", f"model.teacher_url={url}", "trainer.max_skipped_steps=3"])

    def go_bad(result: StepResult) -> None:
        if result.step == 0:  # after step 1 (0-based 0) trained: every later scoring is -inf
            state.default = "neginf"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with caplog.at_level(logging.WARNING, logger="reopold_agents.step"), \
                pytest.raises(NonFiniteStepsError) as info:
            run_mod.train(cfg, progress=False, on_step=go_bad)
    finally:
        torch.set_num_threads(threads)
    msg = str(info.value)
    assert "steps 2..4: 3 steps in a row were skipped for non-finite inputs (trainer.max_skipped_steps=3)" in msg
    assert "non-finite teacher log-probs on" in msg and "(-inf)" in msg and "since step 1" in msg
    warned = [r.getMessage() for r in caplog.records if r.name == "reopold_agents.step" and r.levelno == logging.WARNING]
    assert [w.split(" skipped")[0] for w in warned] == ["step 2", "step 3", "step 4"], warned
    assert all("non-finite teacher log-probs" in w and "(-inf)" in w for w in warned)
    assert "(3 in a row of trainer.max_skipped_steps=3)" in warned[-1]
    records = {r["step"]: r for r in read_metrics(out)}
    assert sorted(records) == [0, 1, 2, 3]  # the step that hit the limit is neither logged nor saved
    assert records[1]["skipped_nonfinite"] == 0.0 and records[2]["skipped_nonfinite"] == records[3]["skipped_nonfinite"] == 1.0
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000001", "step_00000002", "step_00000003"]
    weights = [load_file(str(next((out / "checkpoints" / c / "model").glob("*.safetensors")))) for c in ckpts]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])


# -- the teacher's top-k (prompt_logprobs=k: score_topk, Teacher(engine=..., top_k=k)) ----------------------


def fake_top(ids: list[int], t: int, k: int) -> list[tuple[int, float]]:
    """The canned server's top-k at position ``t`` as (id, log-prob) for ranks 1..k: the prompt's token
    ranks first when it is a multiple of 3 (else it is outside the top k, below it); ranks 2 and 3 tie."""
    others = [c for c in ((ids[t - 1] * 13 + 37 * j + t) % 1000 for j in range(k + 1)) if c != ids[t]]
    top = ([ids[t]] if ids[t] % 3 == 0 else []) + others
    values = [-1e-5 * (j + 1) for j in range(k)]
    if k >= 3:
        values[2] = values[1]
    return list(zip(top[:k], values))


def topk_completion_reply(body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's reply to ``prompt_logprobs: k``: at each position the prompt's token with its rank (first,
    when it is outside the top k), then the top k with ranks 1..k (tied values keep distinct ranks)."""
    k = body["prompt_logprobs"]
    choices = []
    for i, ids in enumerate(body["prompt"]):
        plp: list[Any] = [None]
        for t in range(1, len(ids)):
            top = fake_top(ids, t, k)
            step: dict[str, Any] = {}
            if ids[t] not in dict(top):
                step[str(ids[t])] = {"logprob": fake_logprob(ids, t), "rank": k + 1 + ids[t] % 5, "decoded_token": "y"}
            for rank, (tid, lp) in enumerate(top, 1):
                step[str(tid)] = {"logprob": lp, "rank": rank, "decoded_token": "x"}
            plp.append(step)
        choices.append({"index": i, "text": "a", "logprobs": None, "finish_reason": "length", "prompt_logprobs": plp})
    choices.reverse()
    return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices}


def expected_topk(ids: list[int], k: int) -> TopKRow:
    """What the client must make of ``topk_completion_reply``: the top k by log-prob, ties by id."""
    logprobs, top_ids, top_lps = [0.0], [[0] * k], [[0.0] * k]
    for t in range(1, len(ids)):
        top = sorted(fake_top(ids, t, k), key=lambda pair: (-pair[1], pair[0]))
        logprobs.append(dict(top).get(ids[t], fake_logprob(ids, t)))
        top_ids.append([i for i, _ in top])
        top_lps.append([v for _, v in top])
    return TopKRow(logprobs, top_ids, top_lps)


def test_prompt_topk_row_reads_vllms_form():
    ids, k = [5, 6, 7, 8], 3
    entries = [
        None,
        # 6 is among the top 3 (3 entries); ranks 2 and 3 tie: ordered by id, as the in-process teacher's
        {"9": {"logprob": -0.1, "rank": 1}, "6": {"logprob": -2.0, "rank": 3}, "4": {"logprob": -2.0, "rank": 2}},
        # 7 is outside the top 3: listed (first, as vLLM does) with its own rank > 3
        {"7": {"logprob": -5.0, "rank": 40, "decoded_token": "q"}, "1": {"logprob": -0.5, "rank": 1},
         "2": {"logprob": -1.0, "rank": 2}, "3": {"logprob": -1.5, "rank": 3}},
        # -inf (probability 0) is a log-probability
        {"8": {"logprob": -0.01, "rank": 1}, "11": {"logprob": float("-inf"), "rank": 2},
         "0": {"logprob": float("-inf"), "rank": 3}},
    ]
    row = prompt_topk_row(ids, entries, k)
    assert row.logprobs == [0.0, -2.0, -5.0, -0.01] == prompt_logprobs_row(ids, entries)
    assert row.topk_ids == [[0, 0, 0], [9, 4, 6], [1, 2, 3], [8, 0, 11]]
    assert row.topk_logprobs == [[0.0] * 3, [-0.1, -2.0, -2.0], [-0.5, -1.0, -1.5], [-0.01, float("-inf"), float("-inf")]]
    assert row.k == k
    with pytest.raises(ValueError, match="k >= 1"):
        prompt_topk_row(ids, entries, 0)


_TOPK_OK = {"6": {"logprob": -3.0, "rank": 7}, "1": {"logprob": -0.5, "rank": 1}, "2": {"logprob": -1.0, "rank": 2}}


def _with(**changes: Any) -> dict[str, Any]:
    """``_TOPK_OK`` (prompt [5, 6], k=2) with entries replaced (a value None drops that key)."""
    out = {key: value for key, value in _TOPK_OK.items() if changes.get(key, 0) is not None}
    out.update({key: value for key, value in changes.items() if value is not None})
    return out


MALFORMED_TOPK = {  # position 1 of a reply to prompt_logprobs=2 for the prompt [5, 6] -> what the error says
    "fewer than k entries": ({"6": {"logprob": -0.5, "rank": 1}}, "1 entries for prompt_logprobs=2"),
    "k + 2 entries": (_with(**{"3": {"logprob": -1.2, "rank": 3}}), "4 entries for prompt_logprobs=2"),
    "the prompt's token missing": ({"1": _TOPK_OK["1"], "2": _TOPK_OK["2"]}, "no entry for the prompt's token 6"),
    "duplicate ranks": (_with(**{"2": {"logprob": -1.0, "rank": 1}}), r"the top 2 have ranks \[1, 1\], not 1..2"),
    "ranks not from 1": (_with(**{"1": {"logprob": -0.5, "rank": 3}}), r"ranks \[2, 3\], not 1..2"),
    "a rank missing": (_with(**{"2": {"logprob": -1.0}}), "token 2 has rank 'None', not an integer >= 1"),
    "a rank a string": (_with(**{"2": {"logprob": -1.0, "rank": "2"}}), "token 2 has rank '2', not an integer"),
    "a rank a float": (_with(**{"2": {"logprob": -1.0, "rank": 2.0}}), "token 2 has rank '2.0', not an integer"),
    "a rank true": (_with(**{"1": {"logprob": -0.5, "rank": True}}), "token 1 has rank 'True'"),
    "a rank 0": (_with(**{"1": {"logprob": -0.5, "rank": 0}}), "token 1 has rank '0', not an integer >= 1"),
    "an id not a number": (_with(**{"2": None, "abc": {"logprob": -1.0, "rank": 2}}), "'abc' is not a token id"),
    "a negative id": (_with(**{"2": None, "-2": {"logprob": -1.0, "rank": 2}}), "'-2' is not a token id"),
    "a fractional id": (_with(**{"2": None, "1.5": {"logprob": -1.0, "rank": 2}}), "'1.5' is not a token id"),
    "an id past int32": (_with(**{"2": None, "99999999999": {"logprob": -1.0, "rank": 2}}), "is not a token id"),
    "an entry not an object": (_with(**{"2": -1.0}), "the entry of token 2 is a float, not an object"),
    "a top log-prob NaN": (_with(**{"2": {"logprob": float("nan"), "rank": 2}}), "nan is not a log-probability"),
    "a top log-prob a logit": (_with(**{"2": {"logprob": 2.5, "rank": 2}}), "2.5 is not a log-probability"),
    "a top log-prob a string": (_with(**{"2": {"logprob": "x", "rank": 2}}), "logprob of token 2 is str 'x'"),
    "a top log-prob overflows": (_with(**{"2": {"logprob": -(10**400), "rank": 2}}), "overflows a float"),
    "log-probs rising with rank": (_with(**{"2": {"logprob": -0.1, "rank": 2}}), "rise with rank"),
    "the extra token ranked in the top k": (_with(**{"6": {"logprob": -3.0, "rank": 2}}),
                                            "the prompt's token 6 is listed besides the top 2 with rank 2"),
    "the extra token above the kth": (_with(**{"6": {"logprob": -0.2, "rank": 7}}), "with rank 7 and log-prob -0.2"),
    "the prompt's own log-prob a logit": (_with(**{"6": {"logprob": 1.0, "rank": 7}}), "1.0 is not a log-probability"),
}


@pytest.mark.parametrize("form", list(MALFORMED_TOPK))
def test_every_malformed_topk_reply_is_a_server_error_naming_the_url(fake, form):
    state, url = fake
    step, says = MALFORMED_TOPK[form]
    assert prompt_topk_row([5, 6], [None, _TOPK_OK], 2).topk_ids == [[0, 0], [1, 2]]  # the form it breaks is fine
    state.actions = [lambda body: json.dumps({"choices": [{"index": 0, "prompt_logprobs": [None, step]}]}).encode()]
    client = HTTPTeacherClient([url], SERVED, timeout_s=5, retries=0)
    with pytest.raises(TeacherServerError, match=f"attempt 1: {url}/v1/completions: malformed reply: .*{says}"):
        client.score_topk([GenerationRequest([5, 6])], 2)


def test_served_topk_equals_the_server_values(fake):
    state, url = fake
    client = HTTPTeacherClient([url], batch_size=2, concurrency=2, timeout_s=5, retries=0)
    reqs = requests_of([5, 9, 2, 14, 7])
    got = client.score_topk(reqs, 4)
    assert got == [expected_topk(r.prompt_ids, 4) for r in reqs]  # floats through JSON: exact
    inside = [r.prompt_ids[t] % 3 == 0 for r in reqs for t in range(1, len(r.prompt_ids))]
    assert any(inside) and not all(inside)  # the prompt's token both among the top k and outside it
    sent = completions(state)
    assert len(sent) == 3 and all(b["prompt_logprobs"] == 4 and b["max_tokens"] == 1 for _, b in sent)
    assert client.score_topk([], 4) == []
    with pytest.raises(ValueError, match="k >= 1"):
        client.score_topk(reqs, 0)


def test_teacher_fills_the_served_topk_like_the_in_process_one(fake, tok):
    """TeacherScores.topk_ids/topk_logprobs [B, T, k] (long, float32) hold what the server sent on the
    student's tokens and 0 elsewhere, as ``_score_hf`` fills them; apply_to puts them in the batch."""
    state, url = fake
    trajs = _trajectories()
    batch = collate(trajs, tok.pad_token_id)
    k = 4
    scores = Teacher(tok, engine=HTTPTeacherClient([url], SERVED, batch_size=3), top_k=k).score(batch)
    assert scores.topk_ids is not None and scores.topk_logprobs is not None
    assert scores.topk_ids.shape == (*batch.loss_mask.shape, k) and scores.topk_ids.dtype == torch.long
    assert scores.topk_logprobs.shape == scores.topk_ids.shape and scores.topk_logprobs.dtype == torch.float32
    for b, t in enumerate(trajs):
        want, n = expected_topk(t.token_ids, k), len(t)
        keep = batch.loss_mask[b, :n] > 0
        assert bool(keep.any()) and not bool(keep.all())
        assert torch.equal(scores.topk_ids[b, :n], torch.where(keep[:, None], torch.tensor(want.topk_ids), 0))
        assert torch.equal(scores.topk_logprobs[b, :n],
                           torch.where(keep[:, None], torch.tensor(want.topk_logprobs), torch.zeros(())))
        assert torch.equal(scores.logprobs[b, :n], torch.where(keep, torch.tensor(want.logprobs), torch.zeros(())))
        assert not bool(scores.topk_ids[b, n:].any()) and not bool(scores.topk_logprobs[b, n:].any())
    assert all(b["prompt_logprobs"] == k for _, b in completions(state))
    scores.apply_to(batch)
    assert batch.teacher_topk_ids is scores.topk_ids and batch.teacher_topk_logprobs is scores.topk_logprobs


def test_objectives_train_on_the_served_topk(fake, tok):
    """algo=gkd and reopold_topk take the served teacher's top-k: a finite step with a gradient."""
    import copy
    import math

    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner
    from reopold_agents.tiny import tiny_qwen2

    _, url = fake
    batch = collate(_trajectories(), tok.pad_token_id)
    Teacher(tok, engine=HTTPTeacherClient([url], SERVED), top_k=4).score(batch).apply_to(batch)
    student = tiny_qwen2(tok, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for algo, stat in ((AlgoConfig(name="gkd", gkd_topk=4), "topk_kl"),
                           (AlgoConfig(name="reopold_topk", gkd_topk=4, stage1_rule="all"), "topk_student_mass")):
            m = Learner(copy.deepcopy(student), algo, TrainerConfig(lr=1e-3)).step(batch, 0)
            assert m["skipped"] == 0.0 and m["grad_norm"] > 0 and math.isfinite(m["loss"]), (algo.name, m)
            assert m[stat] > 0, (algo.name, m)
    finally:
        torch.set_num_threads(threads)


def test_teacher_topk_needs_a_scorer_that_gives_it(tok):
    class SampledOnly:  # a Scorer without score_topk (as the vLLM engine)
        def score(self, requests: list[GenerationRequest]) -> list[list[float]]:
            return [[0.0] * len(r.prompt_ids) for r in requests]

    with pytest.raises(ValueError, match="top-k .*model.teacher_engine=http.*SampledOnly has no score_topk"):
        Teacher(tok, engine=SampledOnly(), top_k=4)
    assert Teacher(tok, engine=SampledOnly()).top_k == 0


def test_build_teacher_serves_the_topk_and_refuses_what_it_cannot(fake, tok):
    """top_k > 0 through model.teacher_engine=http: probed once at start-up; a server whose
    --max-logprobs is below k fails there saying so; the full vocabulary (dense_kl) is refused."""
    from reopold_agents.objectives.gkd import FULL_VOCAB

    state, url = fake
    cfg = compose(["model.teacher_engine=http", f"model.teacher_url={url}"])
    teacher = build_teacher(cfg.model, tok, top_k=4)
    assert isinstance(teacher, Teacher) and teacher.top_k == 4
    assert [b["prompt_logprobs"] for _, b in completions(state)] == [4]  # the start-up probe
    with pytest.raises(TeacherRequestError, match="greater than max allowed: 20 .*--max-logprobs 30 or more"):
        build_teacher(cfg.model, tok, top_k=30)
    with pytest.raises(ValueError, match="dense_kl.*not the whole vocabulary"):
        build_teacher(cfg.model, tok, top_k=FULL_VOCAB)


def test_an_oversize_topk_reply_says_how_to_size_the_cap(fake):
    state, url = fake
    state.actions = ["huge_declared"]
    client = HTTPTeacherClient([url], SERVED, timeout_s=5, max_reply_bytes=MIB, retries=0)
    with pytest.raises(TeacherServerError, match=r"reply cap 1 MiB \(a prompt_logprobs=8 reply carries about 9 "
                                                 r"entries per position: raise model.teacher_max_reply_mb"):
        client.score_topk(requests_of([4]), 8)


def test_a_cross_tokenizer_teacher_has_no_served_topk(fake, tok):
    """Another vocabulary: the served teacher (top-k or not) is refused at build, and teacher_path says
    why for a top-k objective with an in-process teacher."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _second_tokenizer import second_tokenizer

    from reopold_agents.teacher.build import TeacherPathError, teacher_path
    from reopold_agents.teacher.tokenizers import TokenizerMismatchError

    _, url = fake
    other = second_tokenizer()
    served = compose(["model.teacher_engine=http", f"model.teacher_url={url}"]).model
    with pytest.raises(TokenizerMismatchError):
        build_teacher(served, other, top_k=4)
    with pytest.raises(TeacherPathError, match="teacher_engine=http scores the student's ids"):
        teacher_path(served, 4, other, tok)
    with pytest.raises(TeacherPathError, match=r"top-k objective \(gkd, dense_kl, reopold_topk\) compares "
                                               "distributions over one vocabulary"):
        teacher_path(compose([]).model, 4, other, tok)


def test_the_in_process_vllm_teacher_refuses_a_topk_before_loading(tok):
    """teacher_engine=vllm has no score_topk: a top-k objective is refused at build, before vLLM loads
    (no vllm needed to get there); without top-k the same build reaches the engine."""
    cfg = compose(["model.teacher_engine=vllm"])
    with pytest.raises(ValueError, match="teacher_engine=vllm gives no teacher top-k .*teacher_engine=http"):
        build_teacher(cfg.model, tok, top_k=4, engine_cfg=cfg.engine)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="engine.name=vllm needs the `vllm` package"):
            build_teacher(cfg.model, tok, top_k=0, engine_cfg=cfg.engine)
