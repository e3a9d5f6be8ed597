"""One entry point per concern the learner needs: advantages, token selection, loss, driven by AlgoConfig.

Families (``algo.name``):
* ``reopold`` / ``opd`` / ``opd_outcome``: A_t = r_hat_t (+ outcome_coef * A_group for opd_outcome),
  r_t = log pi_T - log pi_old under stop-gradient, clipped if ``reward_clip``; PPO surrogate.
* ``grpo``: A_t = A_group (outcome reward, group-normalised) on every token of the episode.
* ``gkd``: supervised top-k KL to the teacher (no advantage, no ratio).
The selection rule of the current stage (reopold_agents.schedule) masks tokens for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.losses.gkd import topk_kl
from reopold_agents.losses.grpo import group_advantages
from reopold_agents.losses.reward import clip_floor, clip_reward, token_reward
from reopold_agents.losses.selection import select_tokens
from reopold_agents.losses.surrogate import aggregate, clipped_surrogate
from reopold_agents.trajectory import Batch

TEACHER_FAMILIES = ("reopold", "opd", "opd_outcome")


@dataclass
class TokenAdvantages:
    """Per-token quantities fixed for a whole learner step (computed once, before any minibatch)."""

    advantages: torch.Tensor  # [B, T] A_t (0 on non-trainable tokens), no grad
    reward: torch.Tensor | None  # [B, T] raw token reward r_t, None without teacher log-probs
    clipped: torch.Tensor  # [B, T] bool, tokens raised to the clip floor


def batch_advantages(cfg: AlgoConfig, batch: Batch) -> TokenAdvantages:
    """Token advantages of ``batch`` under ``cfg``; fails naming the missing batch field."""
    mask = batch.loss_mask
    reward = None
    if batch.teacher_logprobs is not None:
        reward = token_reward(batch.teacher_logprobs, batch.old_logprobs, mask)
    clipped = torch.zeros_like(mask, dtype=torch.bool)
    if cfg.name in TEACHER_FAMILIES:
        if reward is None:
            raise ValueError(f"algo {cfg.name!r} needs batch.teacher_logprobs (run teacher scoring first)")
        adv = reward
        if cfg.reward_clip:
            adv, clipped = clip_reward(reward, cfg.clip_lambda)
            clipped = clipped & (mask > 0)
        if cfg.name == "opd_outcome":
            outcome = group_advantages(batch.rewards, batch.group_ids, cfg.grpo_std_norm)
            adv = adv + cfg.outcome_coef * outcome[:, None]
    elif cfg.name == "grpo":
        adv = group_advantages(batch.rewards, batch.group_ids, cfg.grpo_std_norm)[:, None].expand_as(mask)
    elif cfg.name == "gkd":
        adv = torch.zeros_like(mask)
    else:
        raise ValueError(f"unknown algo {cfg.name!r}")
    return TokenAdvantages(advantages=(adv * mask).detach(), reward=reward, clipped=clipped)


def selection_mask(
    cfg: AlgoConfig, rule: str, loss_mask: torch.Tensor, entropy: torch.Tensor | None, adv: TokenAdvantages
) -> torch.Tensor:
    """Boolean ``[B, T]`` mask M_t * loss_mask_t for the stage rule ``rule``."""
    return select_tokens(
        rule, loss_mask, entropy=entropy, reward=adv.reward, beta=cfg.beta, floor=clip_floor(cfg.clip_lambda)
    )


def objective_loss(
    cfg: AlgoConfig,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    student_topk: torch.Tensor | None = None,
    teacher_topk: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise on selected tokens ``mask`` and its stats."""
    if cfg.name == "gkd":
        if student_topk is None or teacher_topk is None:
            raise ValueError("algo 'gkd' needs student and teacher top-k log-probs")
        kl = topk_kl(student_topk, teacher_topk, cfg.gkd_direction)
        loss = aggregate(kl, mask, cfg.aggregation)
        n = max(int(mask.sum()), 1)
        return loss, {"topk_kl": float((kl.detach() * mask).sum()) / n}
    return clipped_surrogate(
        logprobs, old_logprobs, advantages, mask, cfg.ppo_clip_low, cfg.ppo_clip_high, cfg.aggregation
    )
