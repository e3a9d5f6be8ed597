"""Token reward of on-policy distillation and REOPOLD's mixture-based clipping.

OPD minimises the reverse KL(pi_theta || pi_T) on the student's own samples, which is policy gradient
with the per-token reward ``r_t = log pi_T(y_t|s_t) - log pi_old(y_t|s_t)`` held fixed (stop-gradient).
Tokens the teacher finds very unlikely give heavy-tailed negative rewards; REOPOLD bounds them from
below by the log-odds of the mixture weight, ``r_hat_t = max(r_t, log(lambda / (1 - lambda)))``
(paper Eq. 7).
"""

from __future__ import annotations

import math

import torch


def token_reward(teacher_logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """``r_t = log pi_T - log pi_old`` on trainable tokens, 0 elsewhere; never carries a gradient."""
    if teacher_logprobs.shape != old_logprobs.shape or old_logprobs.shape != loss_mask.shape:
        raise ValueError(
            f"teacher {tuple(teacher_logprobs.shape)}, old {tuple(old_logprobs.shape)} and mask "
            f"{tuple(loss_mask.shape)} log-probs must share one [B, T] shape"
        )
    return ((teacher_logprobs - old_logprobs) * loss_mask).detach()


def clip_floor(clip_lambda: float) -> float:
    """``log(lambda / (1 - lambda))``: the lowest reward a token keeps (lambda=0.2 -> ~-1.386)."""
    if not 0.0 < clip_lambda < 1.0:
        raise ValueError(f"clip_lambda must lie in (0, 1), got {clip_lambda}")
    return math.log(clip_lambda / (1.0 - clip_lambda))


def clip_reward(reward: torch.Tensor, clip_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture-based clipping; returns ``(r_hat, clipped)`` where ``clipped`` marks raised tokens."""
    floor = clip_floor(clip_lambda)
    clipped = reward < floor
    return torch.clamp(reward, min=floor), clipped
