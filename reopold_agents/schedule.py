"""Exploration-to-refinement: which token-selection rule applies at a learner step.

REOPOLD trains in two stages: the first ``stage_switch`` fraction of ``total_steps`` uses
``stage1_rule`` (paper: ``reward_floor``, explore with the tokens the teacher does not strongly
reject), the rest uses ``stage2_rule`` (paper: ``entropy``, refine on the student's uncertain tokens).
``stage_switch`` 0 or 1 gives a single-stage run.
"""

from __future__ import annotations

from dataclasses import dataclass

from reopold_agents.config.algo import AlgoConfig, SELECTION_RULES


@dataclass(frozen=True)
class StageSchedule:
    total_steps: int
    stage_switch: float = 0.5
    stage1_rule: str = "reward_floor"
    stage2_rule: str = "entropy"

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0.0 <= self.stage_switch <= 1.0:
            raise ValueError(f"stage_switch must lie in [0, 1], got {self.stage_switch}")
        for rule in (self.stage1_rule, self.stage2_rule):
            if rule not in SELECTION_RULES:
                raise ValueError(f"unknown selection rule {rule!r} (one of {SELECTION_RULES})")

    @classmethod
    def from_config(cls, algo: AlgoConfig, total_steps: int) -> "StageSchedule":
        return cls(total_steps, algo.stage_switch, algo.stage1_rule, algo.stage2_rule)

    @property
    def switch_step(self) -> int:
        """First (0-based) step of stage 2: round(stage_switch * total_steps)."""
        return int(round(self.stage_switch * self.total_steps))

    def stage_at(self, step: int) -> int:
        """1 or 2 for the 0-based learner ``step`` (steps past total_steps stay in the last stage)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return 1 if step < self.switch_step else 2

    def rule_at(self, step: int) -> str:
        return self.stage1_rule if self.stage_at(step) == 1 else self.stage2_rule
