"""Steps skipped for non-finite inputs (``reopold_agents/step.py``): each is a warning naming the step and
what was not finite; ``trainer.max_skipped_steps`` in a row stop the run (0: never). The whole-run case
(a served teacher answering -inf) is in tests/test_http_teacher.py."""

from __future__ import annotations

import logging

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.step import NonFiniteStepsError, SkipGuard, StepResult, describe_nonfinite
from reopold_agents.trajectory import Batch, Trajectory, collate


def _batch(teachers: list[str] | None = None) -> Batch:
    trajs = []
    for i in range(3):
        t = Trajectory(group_id=i)
        t.append_env([5, 6, 7])
        t.append_generated([8, 9, 10 + i], [-1.0, -1.0, -1.0])
        trajs.append(t)
    batch = collate(trajs, 0)
    batch.teacher_logprobs = torch.where(batch.loss_mask > 0, torch.full_like(batch.old_logprobs, -0.5), 0.0)
    batch.teachers = teachers
    return batch


def _result(step: int, skipped: bool, batch: Batch | None = None) -> StepResult:
    return StepResult(step, [], batch if batch is not None else _batch(), {"skipped_nonfinite": float(skipped)})


def test_describe_names_the_non_finite_inputs():
    batch = _batch(teachers=["math", "math", "tool"])
    assert describe_nonfinite(batch) == "a non-finite loss or gradient norm in a minibatch (the inputs were finite)"
    batch.teacher_logprobs[0, 4] = float("-inf")
    batch.teacher_logprobs[2, 5] = float("nan")
    batch.teacher_logprobs[1, 1] = float("nan")  # an env token: not trained, not reported
    assert describe_nonfinite(batch) == ("non-finite teacher log-probs on 2 of 9 trained tokens (NaN/-inf) in rows "
                                         "[0, 2] (teacher math, tool)")
    batch.rewards[1] = float("inf")
    batch.old_logprobs[1, 3] = float("nan")
    assert describe_nonfinite(batch).split("; ")[1:] == [
        "non-finite old (rollout) log-probs on 1 of 9 trained tokens (NaN) in rows [1] (teacher math)",
        "non-finite rewards on 1 of 3 rows (+inf) in rows [1] (teacher math)"]


def test_every_skipped_step_warns_and_the_limit_in_a_row_stops(caplog):
    guard = SkipGuard(limit=2)
    bad = _batch()
    bad.teacher_logprobs[:, 4] = float("-inf")
    with caplog.at_level(logging.WARNING, logger="reopold_agents.step"):
        guard.observe(_result(0, skipped=False))
        guard.observe(_result(1, skipped=True, batch=bad))
        guard.observe(_result(2, skipped=False))  # a good step resets the count
        guard.observe(_result(3, skipped=True, batch=bad))
        with pytest.raises(NonFiniteStepsError) as info:
            guard.observe(_result(4, skipped=True, batch=bad))
    warned = [r.getMessage() for r in caplog.records if r.name == "reopold_agents.step"]
    assert len(warned) == 3 and warned[0].startswith("step 2 skipped for non-finite teacher log-probs on 3 of 9")
    assert warned[0].endswith("(1 in a row of trainer.max_skipped_steps=2)") and "step 5 skipped" in warned[2]
    msg = str(info.value)
    assert msg.startswith("steps 4..5: 2 steps in a row were skipped for non-finite inputs (trainer.max_skipped_steps=2)")
    assert "(-inf)" in msg and "since step 3" in msg


def test_limit_zero_only_warns(caplog):
    guard = SkipGuard(limit=0)
    with caplog.at_level(logging.WARNING, logger="reopold_agents.step"):
        for step in range(10):
            guard.observe(_result(step, skipped=True))
    assert guard.in_row == 10 and len(caplog.records) == 10
    assert "(trainer.max_skipped_steps=0)" in caplog.records[-1].getMessage()


def test_the_key_and_its_range():
    assert compose([]).trainer.max_skipped_steps == 3
    assert compose(["trainer.max_skipped_steps=0"]).trainer.max_skipped_steps == 0
    with pytest.raises(ConfigError, match="trainer.max_skipped_steps: must be >= 0"):
        compose(["trainer.max_skipped_steps=-1"])
