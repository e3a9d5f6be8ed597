"""GRPO's outcome advantage: each episode's reward normalised within its prompt group."""

from __future__ import annotations

import torch

GROUP_EPS = 1e-6


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, std_norm: bool = True) -> torch.Tensor:
    """``A_i = (R_i - mean_g) / (std_g + eps)`` (unbiased std) or ``R_i - mean_g``; one value per episode.

    A group of one episode has no baseline to compare against, so its advantage is 0.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be [B]")
    rewards = rewards.float()
    adv = torch.zeros_like(rewards)
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero(as_tuple=True)[0]
        r = rewards[idx]
        if idx.numel() < 2:
            continue
        centred = r - r.mean()
        adv[idx] = centred / (r.std(correction=1) + GROUP_EPS) if std_norm else centred
    return adv
