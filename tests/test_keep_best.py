"""trainer.keep_best: checkpoints/best is a whole checkpoint of the best held-out evaluation after step 0,
outside the keep_checkpoints rotation."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

from reopold_agents.checkpoint import (BEST_DIR, CheckpointError, best_step, keep_best, latest_checkpoint,
                                       list_checkpoints, load_checkpoint, remove_stale_temp_dirs, save_checkpoint,
                                       verify_checkpoint)
from reopold_agents.tiny import build_tokenizer, tiny_qwen2

pytestmark = pytest.mark.usefixtures("one_thread")


def test_best_step_is_the_first_highest_after_step_zero():
    assert best_step([]) is None and best_step([(0, 0.9)]) is None  # step 0 is the untrained student
    assert best_step([(0, 0.9), (2, 0.3), (4, 0.5), (6, 0.5), (8, 0.4)]) == (4, 0.5)  # a tie keeps the earlier
    assert best_step([(0, 0.1), (2, 0.3), (4, 0.6)]) == (4, 0.6)


def _params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_best_survives_rotation_verifies_and_loads(tmp_path):
    tok = build_tokenizer()
    models = {step: tiny_qwen2(tok, seed=step) for step in (1, 2, 3)}
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, models[1], keep_last=1)
    best = keep_best(root, 1)
    assert best == root / BEST_DIR
    linked = (root / "step_00000001" / "state.json").stat().st_ino == (best / "state.json").stat().st_ino
    assert linked or os.name != "posix"  # hard links, no second copy on disk
    for step in (2, 3):
        save_checkpoint(root, step, models[step], keep_last=1)
    assert [p.name for p in list_checkpoints(root)] == ["step_00000003"]  # rotation never counts or removes best
    assert latest_checkpoint(root) == root / "step_00000003"
    verify_checkpoint(best)
    assert json.loads((best / "state.json").read_text())["step"] == 1
    fresh = tiny_qwen2(tok, seed=9)
    assert load_checkpoint(best, fresh).step == 1
    assert torch.equal(_params(fresh), _params(models[1]))
    keep_best(root, 3)  # a later best replaces it whole
    assert json.loads((best / "state.json").read_text())["step"] == 3
    assert sorted(p.name for p in root.iterdir()) == [BEST_DIR, "step_00000003"]  # no temporary left
    with pytest.raises(CheckpointError, match="step_00000002: no complete checkpoint to keep as the best"):
        keep_best(root, 2)


def test_an_interrupted_best_copy_is_cleaned_up(tmp_path):
    dead = tmp_path / f".tmp-{BEST_DIR}-{socket.gethostname()}-999999999"
    dead.mkdir(parents=True)
    assert remove_stale_temp_dirs(tmp_path) == [dead] and not dead.exists()


@pytest.mark.parametrize("save_every", [0, 2])
def test_a_run_keeps_its_best_evaluation(tmp_path, save_every):
    """A tiny run evaluated every step: best is the checkpoint of best_step(evals), whether or not the
    periodic saves hit that step, and the newest checkpoints rotate as before."""
    import reopold_agents.run as run_mod
    from reopold_agents.config import compose

    cfg = compose(["env=math", f"trainer.output_dir={tmp_path}", "trainer.total_steps=3", "trainer.prompts_per_step=2",
                   "trainer.group_size=2", f"trainer.save_every={save_every}", "trainer.keep_checkpoints=1",
                   "trainer.eval_every=1", "trainer.heldout_tasks=4", "trainer.keep_best=true",
                   "trainer.eval_teacher=false", "engine.sampling.max_new_tokens=8", "env.max_turns=1"])
    result = run_mod.train(cfg, progress=False)
    assert [step for step, _ in result.evals] == [0, 1, 2, 3]
    assert result.best == best_step(result.evals) and result.best is not None
    best = tmp_path / "checkpoints" / BEST_DIR
    verify_checkpoint(best)
    assert json.loads((best / "state.json").read_text())["step"] == result.best[0]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000003"]
    assert json.loads((tmp_path / "summary.json").read_text())["best"] == list(result.best)
