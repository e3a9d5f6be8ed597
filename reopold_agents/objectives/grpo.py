"""``algo=grpo``: outcome reward only (no teacher), advantage normalised within each prompt group.

``A_i = (R_i - mean_g) / (std_g + eps)`` (unbiased std) or ``R_i - mean_g``, the same value on every
token of episode i, through the PPO-clipped surrogate of reopold.py (step 4).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from reopold_agents.objectives.base import Forward, Objective, TokenTerms
from reopold_agents.objectives.reopold import SURROGATE_KEYS, surrogate_loss
from reopold_agents.trajectory import Batch

GROUP_EPS = 1e-6


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, std_norm: bool = True) -> torch.Tensor:
    """One advantage per episode; a group of one episode has no baseline, so its advantage is 0."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be [B]")
    rewards = rewards.float()
    adv = torch.zeros_like(rewards)
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero(as_tuple=True)[0]
        if idx.numel() < 2:
            continue
        r = rewards[idx]
        centred = r - r.mean()
        adv[idx] = centred / (r.std(correction=1) + GROUP_EPS) if std_norm else centred
    return adv


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
