"""The remote teacher (``model.teacher_engine=http``) against a canned vLLM-format server on loopback.

A tiny ``http.server`` plays the vLLM OpenAI server: it answers ``/v1/models``, ``/tokenize`` and
``/v1/completions`` (``prompt_logprobs`` computed by a formula the test also knows), or fails as told
(500, 400, a hang past the client's timeout, a dropped connection). No vLLM here: these run in the
default suite. The real vLLM server (parity with the in-process teacher, a killed server mid-run) is
tests/test_http_teacher_vllm.py.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.engines.base import GenerationRequest
from reopold_agents.engines.http_teacher import (
    HTTPTeacherClient,
    TeacherRequestError,
    TeacherServerError,
    parse_teacher_urls,
    prompt_logprobs_row,
)
from reopold_agents.teacher import Teacher, build_teacher
from reopold_agents.trajectory import Trajectory, collate

SERVED = "tiny-teacher"


def fake_logprob(ids: list[int], t: int) -> float:
    """What the canned server reports for log p(ids[t] | ids[:t]): depends on the token and its prefix."""
    return -0.01 * ((ids[t] * 31 + ids[t - 1] * 7 + t) % 97) - 0.001


@dataclass
class FakeVLLM:
    """The server's script: ``actions`` are consumed one per /v1/completions request (then ``ok``)."""

    actions: list[str] = field(default_factory=list)
    tokenize: Callable[[str], list[int]] | None = None
    hang_s: float = 2.0
    seen: list[tuple[float, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> str:
        with self.lock:
            return self.actions.pop(0) if self.actions else "ok"


def completion_reply(body: dict[str, Any]) -> dict[str, Any]:
    prompts = body["prompt"]
    choices = []
    for i, ids in enumerate(prompts):
        plp: list[Any] = [None]
        for t in range(1, len(ids)):
            decoy = (ids[t] + 1) % 1000  # vLLM also lists the top-ranked token when it is not the prompt's
            plp.append({str(decoy): {"logprob": -0.0001, "rank": 1, "decoded_token": "x"},
                        str(ids[t]): {"logprob": fake_logprob(ids, t), "rank": 5, "decoded_token": "y"}})
        choices.append({"index": i, "text": "a", "logprobs": None, "finish_reason": "length", "prompt_logprobs": plp})
    choices.reverse()  # order comes from "index", not position
    return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices}


def make_handler(state: FakeVLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, data: Any) -> None:
            raw = json.dumps(data).encode()
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
                self._send(200, {"object": "list", "data": [{"id": SERVED, "object": "model", "max_model_len": 512}]})
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
            action = state.next_action()
            if action == "500":
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
    with pytest.raises(TeacherRequestError, match="no entry for the prompt's token 7"):
        prompt_logprobs_row(ids, [None, entries[1], {"8": {"logprob": -0.25}}])
    with pytest.raises(TeacherRequestError, match="3-token prompt: got 2 positions"):
        prompt_logprobs_row(ids, entries[:2])
    with pytest.raises(TeacherRequestError, match="got none"):
        prompt_logprobs_row(ids, None)
    with pytest.raises(TeacherRequestError, match="3.5 is not a log-probability.*logprobs-mode"):
        prompt_logprobs_row(ids, [None, entries[1], {"7": {"logprob": 3.5}}])


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
    state.actions = ["garbled"]
    with pytest.raises(TeacherRequestError, match="got none.*is it a vLLM server"):
        client.score(requests_of([4]))


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
    Teacher(tok, engine=HTTPTeacherClient([url], SERVED, batch_size=3)).score(batch)
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
    with pytest.raises(ValueError, match="top-k"):
        build_teacher(cfg.model, tok, top_k=4)
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
