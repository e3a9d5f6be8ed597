"""The CPU demos learn: the shipped tiny pairs, the env presets, the real run loop (slow: ~3 minutes).

Shortened versions of the README's measured runs, cut where their curves had already risen (both
stay in the exploration stage, so the first steps are exactly those of the full runs).
"""

from __future__ import annotations

import pytest
import torch

from reopold_agents import run as run_mod
from reopold_agents.config import compose

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "env, overrides, min_gain",
    [
        # the guessing student calls its tools again: 0.000 -> ~0.30 by step 25 in the measured run
        ("toolqa", ["trainer.total_steps=25", "algo.stage_switch=1.0"], 0.15),
        # the math test bed: the guessing student works the problems out again, 0.160 -> 0.930 by step
        # 100 in the measured run (256 held-out tasks, stage 1 up to step 300)
        ("math", ["trainer.total_steps=100", "algo.stage_switch=1.0"], 0.5),
        # the VL student reads the images better: 0.375 -> ~0.48 by step 100 in the measured run
        ("vqa", ["trainer.total_steps=100"], 0.06),
    ],
)
def test_default_demo_raises_held_out_success(env, overrides, min_gain, tmp_path):
    cfg = compose([f"env={env}", f"trainer.output_dir={tmp_path}", "trainer.eval_every=0", *overrides])
    result = run_mod.train(cfg, progress=False)
    assert result.success_after >= result.success_before + min_gain, (result.success_before, result.success_after)
