"""Exploration-to-refinement schedule: switch point, single-stage runs, bad input."""

from __future__ import annotations

import pytest

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.schedule import StageSchedule


def test_switch_at_fraction_of_total_steps():
    s = StageSchedule(total_steps=10, stage_switch=0.3, stage1_rule="reward_floor", stage2_rule="entropy")
    assert s.switch_step == 3
    assert [s.stage_at(i) for i in range(10)] == [1, 1, 1] + [2] * 7
    assert [s.rule_at(i) for i in (0, 2, 3, 9, 50)] == ["reward_floor", "reward_floor", "entropy", "entropy", "entropy"]


def test_single_stage_runs():
    only2 = StageSchedule(total_steps=5, stage_switch=0.0)
    assert {only2.rule_at(i) for i in range(5)} == {"entropy"}
    only1 = StageSchedule(total_steps=5, stage_switch=1.0)
    assert {only1.rule_at(i) for i in range(5)} == {"reward_floor"}


def test_one_step_run_and_rounding():
    assert StageSchedule(total_steps=1, stage_switch=0.5).switch_step == 0  # round-half-even: 0.5 -> 0
    assert StageSchedule(total_steps=3, stage_switch=0.5).switch_step == 2
    assert StageSchedule(total_steps=1, stage_switch=0.6).stage_at(0) == 1


def test_from_config_uses_algo_keys():
    cfg = AlgoConfig(stage_switch=0.25, stage1_rule="all", stage2_rule="entropy")
    s = StageSchedule.from_config(cfg, total_steps=8)
    assert (s.switch_step, s.rule_at(1), s.rule_at(2)) == (2, "all", "entropy")


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="stage_switch"):
        StageSchedule(total_steps=5, stage_switch=1.5)
    with pytest.raises(ValueError, match="selection rule"):
        StageSchedule(total_steps=5, stage1_rule="topk")
    with pytest.raises(ValueError, match="total_steps"):
        StageSchedule(total_steps=0)
    with pytest.raises(ValueError, match="step"):
        StageSchedule(total_steps=5).stage_at(-1)
