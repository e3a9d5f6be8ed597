"""PPO-style clipped surrogate and the two aggregations over tokens.

``rho_t = pi_theta / pi_old``; the per-token loss is ``-min(rho_t A_t, clip(rho_t, 1-low, 1+high) A_t)``
on tokens where ``M_t * loss_mask_t = 1``. With one pass over fresh samples rho = 1 and the gradient
is REINFORCE with advantage A_t (for OPD: the stop-gradient token reward).
"""

from __future__ import annotations

import torch


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str = "token_mean") -> torch.Tensor:
    """``token_mean``: mean over all selected tokens of the batch (paper Eq. 4: 1/sum M);
    ``seq_mean``: mean over tokens within each sequence, then over sequences with any token.
    An empty mask gives a zero that still depends on ``per_token`` (backward works, grads are 0)."""
    m = mask.to(per_token.dtype)
    if how == "token_mean":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    if how == "seq_mean":
        counts = m.sum(dim=-1)
        per_seq = (per_token * m).sum(dim=-1) / counts.clamp(min=1.0)
        has = (counts > 0).to(per_token.dtype)
        return (per_seq * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"unknown aggregation {how!r} (token_mean | seq_mean)")


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss to minimise and stats (fraction of selected tokens whose ratio was clipped, mean ratio)."""
    adv = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        sel = mask.bool()
        n = max(int(sel.sum()), 1)
        ratio_clipped = ((ratio * adv) > (clipped_ratio * adv)) & sel  # where the clipped branch is active
        stats = {
            "ratio_clip_frac": float(ratio_clipped.sum()) / n,
            "ratio_mean": float((ratio * sel).sum()) / n,
        }
    return loss, stats
