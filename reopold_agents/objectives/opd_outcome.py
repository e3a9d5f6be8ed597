"""``algo=opd_outcome``: OPD plus the group-normalised outcome advantage,
``A_t = r_t + outcome_coef * A_group`` (outcome.py), through the surrogate of reopold.py (step 4)."""

from __future__ import annotations

from typing import ClassVar

import torch

from reopold_agents.objectives.base import Forward, Objective, TokenTerms, require_teacher
from reopold_agents.objectives.outcome import with_outcome
from reopold_agents.objectives.reopold import SURROGATE_KEYS, surrogate_loss, token_reward
from reopold_agents.trajectory import Batch


class OPDOutcome(Objective):
    keys: ClassVar[tuple[str, ...]] = ("outcome_coef", "grpo_std_norm", *SURROGATE_KEYS)

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.outcome_coef == 0.0:
            raise ValueError("outcome_coef: opd_outcome needs a positive coefficient (0 is plain OPD)")

    def token_terms(self, batch: Batch) -> TokenTerms:
        mask = batch.loss_mask
        reward = token_reward(require_teacher(batch, "opd_outcome"), batch.old_logprobs, mask)
        adv = with_outcome(reward * mask, batch, self.cfg.outcome_coef, self.cfg.grpo_std_norm)
        return TokenTerms(advantages=adv.detach(), reward=reward, clipped=torch.zeros_like(mask, dtype=torch.bool))

    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        return surrogate_loss(fwd, self.cfg)
