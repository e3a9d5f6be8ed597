"""``algo=grpo``: outcome reward only (no teacher), advantage normalised within each prompt group.

``A_i = (R_i - mean_g) / (std_g + eps)`` (unbiased std) or ``R_i - mean_g`` (outcome.py), the same value
on every token of episode i, through the PPO-clipped surrogate of reopold.py (step 4).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from reopold_agents.objectives.base import Forward, Objective, TokenTerms
from reopold_agents.objectives.outcome import group_advantages
from reopold_agents.objectives.reopold import SURROGATE_KEYS, surrogate_loss
from reopold_agents.trajectory import Batch


class GRPO(Objective):
    keys: ClassVar[tuple[str, ...]] = ("grpo_std_norm", *SURROGATE_KEYS, "stop_token")
    needs_teacher: ClassVar[bool] = False

    def token_terms(self, batch: Batch) -> TokenTerms:
        mask = batch.loss_mask
        adv = group_advantages(batch.rewards, batch.group_ids, self.cfg.grpo_std_norm)[:, None] * mask
        terms = TokenTerms(advantages=adv.detach(), reward=None, clipped=torch.zeros_like(mask, dtype=torch.bool))
        return self.with_stop_token(terms, batch)

    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        return surrogate_loss(fwd, self.cfg)
