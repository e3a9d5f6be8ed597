"""Exploration-to-refinement schedule (objectives/reopold.py stage_at, Reopold.stage/rule): switch point,
single-stage runs, bad input."""

from __future__ import annotations

import pytest

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.objectives import make_objective
from reopold_agents.objectives.reopold import Reopold, stage_at


def _reopold(total_steps, **algo) -> Reopold:
    cfg = AlgoConfig(name="reopold", **algo)
    cfg.check()
    obj = make_objective(cfg, total_steps)
    assert isinstance(obj, Reopold)
    return obj


def test_switch_at_fraction_of_total_steps():
    assert [stage_at(i, 10, 0.3) for i in range(10)] == [1, 1, 1] + [2] * 7
    s = _reopold(10, stage_switch=0.3, stage1_rule="reward_floor", stage2_rule="entropy")
    assert [s.stage(i) for i in range(10)] == [1, 1, 1] + [2] * 7
    assert [s.rule(i) for i in (0, 2, 3, 9, 50)] == ["reward_floor", "reward_floor", "entropy", "entropy", "entropy"]
    assert [s.needs_entropy(i) for i in (0, 2, 3, 9, 50)] == [False, False, True, True, True]


def test_single_stage_runs():
    only2 = _reopold(5, stage_switch=0.0)
    assert {only2.rule(i) for i in range(5)} == {"entropy"} and {only2.stage(i) for i in range(5)} == {2}
    only1 = _reopold(5, stage_switch=1.0)
    assert {only1.rule(i) for i in range(5)} == {"reward_floor"} and {only1.stage(i) for i in range(5)} == {1}
    assert {stage_at(i, 5, 0.0) for i in range(5)} == {2} and {stage_at(i, 5, 1.0) for i in range(5)} == {1}


def test_one_step_run_and_rounding():
    assert stage_at(0, 1, 0.5) == 2  # switch step round(0.5) = 0 (round-half-even): stage 2 from step 0
    assert [stage_at(i, 3, 0.5) for i in range(3)] == [1, 1, 2]  # switch step round(1.5) = 2
    assert stage_at(0, 1, 0.6) == 1  # switch step round(0.6) = 1
    assert _reopold(1, stage_switch=0.5).stage(0) == 2 and _reopold(3, stage_switch=0.5).stage(1) == 1


def test_objective_uses_algo_keys():
    s = _reopold(8, stage_switch=0.25, stage1_rule="all", stage2_rule="entropy")
    assert (s.stage(1), s.stage(2), s.rule(1), s.rule(2)) == (1, 2, "all", "entropy")
    assert s.total_steps == 8


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="stage_switch"):
        AlgoConfig(stage_switch=1.5).check()
    with pytest.raises(ValueError, match="stage1_rule"):
        AlgoConfig(stage1_rule="topk").check()
    with pytest.raises(ValueError, match="stage2_rule"):
        AlgoConfig(stage2_rule="topk").check()
    with pytest.raises(ValueError, match="total_steps"):
        TrainerConfig(total_steps=0).check()
    with pytest.raises(ValueError, match="step"):
        stage_at(-1, 5, 0.5)
    with pytest.raises(ValueError, match="step"):
        _reopold(5).stage(-1)
