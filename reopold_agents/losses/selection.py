"""Token selection rules M_t (which trainable tokens the surrogate uses at a step).

* ``all``: every trainable token (vanilla OPD / GRPO).
* ``entropy``: REOPOLD's entropy-based token-level dynamic sampling (paper Eq. 8): the top ``beta``
  fraction of the batch's trainable tokens by *student* entropy, i.e. ``H_t >= tau_beta``. Exactly
  ``ceil(beta * n)`` tokens are kept; ties in entropy go to the earlier token in batch-major order,
  so the mask is deterministic.
* ``reward_floor``: REOPOLD's exploration-stage rule, ``M_t = 1[r_t >= log(lambda / (1 - lambda))]``:
  only tokens whose teacher reward is above the clipping floor are trained on.
"""

from __future__ import annotations

import math

import torch


def select_all(loss_mask: torch.Tensor) -> torch.Tensor:
    return loss_mask > 0


def select_top_entropy(entropy: torch.Tensor, loss_mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Boolean mask of the ``ceil(beta * n)`` highest-entropy trainable tokens (n = trainable count)."""
    if entropy.shape != loss_mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and loss_mask {tuple(loss_mask.shape)} differ")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must lie in (0, 1], got {beta}")
    flat_mask = (loss_mask > 0).reshape(-1)
    idx = flat_mask.nonzero(as_tuple=True)[0]
    out = torch.zeros_like(flat_mask)
    if idx.numel() == 0:
        return out.view_as(loss_mask)
    keep = min(idx.numel(), math.ceil(beta * idx.numel() - 1e-9))
    values = entropy.reshape(-1).index_select(0, idx).detach().float()
    order = torch.sort(values, descending=True, stable=True).indices  # stable: earlier index wins ties
    out[idx[order[:keep]]] = True
    return out.view_as(loss_mask)


def select_reward_floor(reward: torch.Tensor, loss_mask: torch.Tensor, floor: float) -> torch.Tensor:
    """Trainable tokens whose (unclipped) reward is at least ``floor``."""
    return (loss_mask > 0) & (reward >= floor)


def select_tokens(
    rule: str,
    loss_mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    reward: torch.Tensor | None = None,
    beta: float = 0.5,
    floor: float | None = None,
) -> torch.Tensor:
    """Dispatch one of the rules above; raises naming what the rule is missing."""
    if rule == "all":
        return select_all(loss_mask)
    if rule == "entropy":
        if entropy is None:
            raise ValueError("selection rule 'entropy' needs the student entropy")
        return select_top_entropy(entropy, loss_mask, beta)
    if rule == "reward_floor":
        if reward is None or floor is None:
            raise ValueError("selection rule 'reward_floor' needs the token reward and the clip floor")
        return select_reward_floor(reward, loss_mask, floor)
    raise ValueError(f"unknown selection rule {rule!r} (all | entropy | reward_floor)")
