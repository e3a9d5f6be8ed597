"""A mixed math+toolqa run with two routed teachers on Ray samples and scores what the single-process run
does: the chunk seeds and the mix draw do not depend on placement, and each teacher actor routes its own
block of rows (slow: a local Ray cluster takes a while to start on 2 cores)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install -e '.[ray]')")

import reopold_agents.run as run_mod  # noqa: E402
from reopold_agents.config import compose  # noqa: E402
from reopold_agents.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow

OVERRIDES = [
    "experiment=mix_math_toolqa", "model=tiny_toolqa", "mix.toolqa.teacher=self",
    "trainer.total_steps=1", "trainer.prompts_per_step=4", "trainer.group_size=2", "trainer.heldout_tasks=2",
    "trainer.save_every=0", "engine.sampling.max_new_tokens=16", "mix.toolqa.env.max_turns=2",
    "distributed.rollout_chunk_size=2",
]
RAY = ["distributed=ray", "distributed.ray.num_rollout_workers=2", "distributed.ray.num_teacher_workers=2",
       "distributed.ray.local_num_cpus=2"]


def test_mixed_run_on_ray_matches_single_process(tmp_path):
    torch.set_num_threads(1)
    local = run_mod.train(compose([*OVERRIDES, f"trainer.output_dir={tmp_path / 'local'}"]), progress=False)
    ray_run = run_mod.train(compose([*OVERRIDES, *RAY, f"trainer.output_dir={tmp_path / 'ray'}"]), progress=False)
    a, b = read_metrics(local.output_dir)[1], read_metrics(ray_run.output_dir)[1]
    keys = [k for k in a if k.startswith(("env/", "rollout/")) or (k.startswith("teacher/") and "log_ratio" in k)]
    assert any(k.startswith("env/math/") for k in keys) and any(k.startswith("teacher/self/") for k in keys)
    for k in keys:
        assert b[k] == pytest.approx(a[k], abs=1e-4), k
    assert b["teacher/self/frac_selected"] == pytest.approx(a["teacher/self/frac_selected"], abs=1e-6)
    assert local.by_env == ray_run.by_env
