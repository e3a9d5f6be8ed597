"""The thread policy (reopold_agents/threads.py): counts capped by the usable cores, short OpenMP spinning
set before torch loads, actors sized by their reservation, and the key's range check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reopold_agents import threads
from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_plan_never_exceeds_the_usable_cores():
    assert threads.plan(8, cores=2).intra_op == 2
    assert threads.plan(1, cores=2).intra_op == 1
    assert threads.plan(0, cores=4, current=3).intra_op == 3  # 0 keeps torch's own count ...
    assert threads.plan(0, cores=2, current=16).intra_op == 2  # ... capped by the cores
    assert threads.plan(0, cores=2, current=0).intra_op == 1
    assert threads.plan(0).intra_op == min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    assert threads.plan(3, cores=8).inter_op == 1


def test_actor_plan_follows_the_reservation():
    cores = threads.usable_cores()
    assert cores == len(os.sched_getaffinity(0))
    assert threads.actor_plan(0).intra_op == 1  # a 0-CPU reservation still runs one thread
    assert threads.actor_plan(1.5).intra_op == 1
    assert threads.actor_plan(10_000).intra_op == cores


def test_apply_sets_torch_and_the_child_environment(monkeypatch):
    for key in (*threads.THREAD_ENV_KEYS, *threads.WAIT_ENV):
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    try:
        held = threads.apply(threads.ThreadPlan(intra_op=1))
        assert torch.get_num_threads() == 1 and held.intra_op == 1
        assert all(os.environ[key] == "1" for key in threads.THREAD_ENV_KEYS)
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["GOMP_SPINCOUNT"] == "1000"
        monkeypatch.delenv("GOMP_SPINCOUNT")
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        threads.apply(threads.ThreadPlan(intra_op=1))
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ  # the user's word
    finally:
        torch.set_num_threads(before)


def test_plan_env_names_every_runtime():
    assert threads.ThreadPlan(intra_op=3).env() == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3",
                                                    "OPENBLAS_NUM_THREADS": "3"}


def _spin_count(code: str, **env: str) -> str:
    """GOMP_SPINCOUNT as torch's libgomp reports it when it loads (OMP_DISPLAY_ENV)."""
    clean = {k: v for k, v in os.environ.items() if k not in threads.WAIT_ENV}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "GOMP_SPINCOUNT" in ln]
    assert lines, proc.stderr[-2000:]
    return lines[0].split("=")[1].strip().strip("'")


def test_the_package_sets_short_spinning_before_torch_loads():
    assert _spin_count("import reopold_agents, torch; torch.ones(1)") == "1000"
    # the user's own setting decides alone; a program that loaded torch first keeps libgomp's default (300000)
    assert _spin_count("import reopold_agents, torch", OMP_WAIT_POLICY="ACTIVE") not in ("1000", "300000")
    assert _spin_count("import reopold_agents, torch", GOMP_SPINCOUNT="5") == "5"
    assert _spin_count("import torch, reopold_agents") == "300000"


def test_threads_key_is_checked(tmp_path):
    cfg = compose(["env=toolqa", "distributed.threads=1", f"trainer.output_dir={tmp_path}"])
    assert cfg.distributed.threads == 1
    with pytest.raises(ConfigError, match=r"distributed\.threads"):
        compose(["env=toolqa", "distributed.threads=-1"])


def test_scoring_workers_run_single_threaded():
    """The answer-scoring workers start from a cleared environment that pins every runtime to 1 thread."""
    from envs.scoring_sandbox import _env

    env = _env()
    assert all(env[key] == "1" for key in threads.THREAD_ENV_KEYS)
