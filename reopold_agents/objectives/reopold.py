"""REOPOLD (Relaxed On-Policy Distillation, Ko et al., arXiv 2603.11137) on one page.

Read top to bottom, this file is the whole objective the learner optimises:

1. token reward       r_t     = log pi_T(y_t|s_t) - log pi_old(y_t|s_t)            (stop-gradient)
2. mixture clipping   r_hat_t = max(r_t, log(lambda / (1 - lambda)))             (paper Eq. 7)
3. stage rule M_t     stage 1 (exploration): M_t = 1[r_t >= log(lambda / (1 - lambda))]
                      stage 2 (refinement):  M_t = 1[H_t >= tau_beta], the top-beta tokens of the
                      batch by student entropy H_t                               (paper Eq. 8)
4. surrogate          L = -1/sum(M) * sum_t M_t min(rho_t r_hat_t, clip(rho_t, 1-eps_lo, 1+eps_hi) r_hat_t),
                      rho_t = pi_theta(y_t|s_t) / pi_old(y_t|s_t)   (paper Eq. 4; the PPO ratio clip is
                      ours and optional: algo.ppo_clip=false gives Eq. 4 as written); 1/sum(M) is
                      algo.aggregation=token_mean, the options are seq_mean and constant (1/(B * L))

Optional, off by default: the token that ended a reply is trained like the rest (train), left out of M
(mask), or has its advantage capped at 0 (clip) (algo.stop_token, base.py); and the environment's
outcome joins the teacher's reward, A_t = r_hat_t + outcome_coef * A_group(R) in place of r_hat_t in
step 4 (algo.outcome_coef, outcome.py: where the teacher is no better than the student, the outcome
keeps the student from learning the teacher's mistakes). Steps 1-3 and the clipping do not change.
With algo.teacher_on=failed the teacher's reward (and reopold_topk's dense term) acts only on the
episodes the environment scores unsolved: a solved episode keeps its outcome advantage alone, and leaves
M_t where that is 0 (outcome.py).

On-policy distillation minimises the reverse KL(pi_theta || pi_T) on the student's own samples, which
is policy gradient with the per-token reward r_t held fixed. With one pass over a fresh batch rho = 1
and the gradient is exactly -mean_t sg(r_hat_t) grad log pi_theta(y_t) over the selected tokens.
The sibling objectives (opd, opd_outcome, grpo, gkd, ...) reuse the pieces defined here.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from reopold_agents.config.algo import AGGREGATIONS, SELECTION_RULES, AlgoConfig
from reopold_agents.objectives.base import Forward, Objective, TokenTerms, require_teacher
from reopold_agents.objectives.outcome import teacher_rows, with_outcome
from reopold_agents.trajectory import Batch


# --- 1. token reward ------------------------------------------------------------------------------
def token_reward(teacher_logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """``r_t = log pi_T - log pi_old`` on trainable tokens, 0 elsewhere; never carries a gradient."""
    if teacher_logprobs.shape != old_logprobs.shape or old_logprobs.shape != loss_mask.shape:
        raise ValueError(
            f"teacher {tuple(teacher_logprobs.shape)}, old {tuple(old_logprobs.shape)} and mask "
            f"{tuple(loss_mask.shape)} log-probs must share one [B, T] shape"
        )
    # where, not a product: a NaN/inf off the student's tokens (a prompt position) must not leak in
    return torch.where(loss_mask > 0, teacher_logprobs - old_logprobs, torch.zeros_like(old_logprobs)).detach()


# --- 2. mixture-based reward clipping (Eq. 7) -----------------------------------------------------
def clip_floor(clip_lambda: float) -> float:
    """``log(lambda / (1 - lambda))``: the lowest reward a token keeps (lambda=0.2 -> ~-1.386)."""
    if not 0.0 < clip_lambda < 1.0:
        raise ValueError(f"clip_lambda must lie in (0, 1), got {clip_lambda}")
    return math.log(clip_lambda / (1.0 - clip_lambda))


def clip_reward(reward: torch.Tensor, clip_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``r_hat = max(r, floor)``; returns ``(r_hat, clipped)`` where ``clipped`` marks raised tokens.
    Heavy-tailed negative rewards (tokens the teacher finds very unlikely) stop dominating the update."""
    floor = clip_floor(clip_lambda)
    return torch.clamp(reward, min=floor), reward < floor


# --- 3. token selection and the exploration-to-refinement schedule (Eq. 8) ------------------------
def select_top_entropy(entropy: torch.Tensor, loss_mask: torch.Tensor, beta: float) -> torch.Tensor:
    """The ``ceil(beta * n)`` highest-entropy trainable tokens of the batch (n = trainable count).

    Ties go to the earlier token in batch-major order (stable sort), so the mask is deterministic.
    """
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
    order = torch.sort(values, descending=True, stable=True).indices
    out[idx[order[:keep]]] = True
    return out.view_as(loss_mask)


def select_reward_floor(reward: torch.Tensor, loss_mask: torch.Tensor, floor: float) -> torch.Tensor:
    """Trainable tokens whose (unclipped) reward is at least ``floor``: those the teacher does not
    strongly reject (the exploration stage)."""
    return (loss_mask > 0) & (reward >= floor)


def select_tokens(rule: str, loss_mask: torch.Tensor, entropy: torch.Tensor | None = None,
                  reward: torch.Tensor | None = None, beta: float = 0.5, floor: float | None = None) -> torch.Tensor:
    """One of the rules above by name (``algo.stage1_rule`` / ``algo.stage2_rule``)."""
    if rule == "all":
        return loss_mask > 0
    if rule == "entropy":
        if entropy is None:
            raise ValueError("selection rule 'entropy' needs the student entropy")
        return select_top_entropy(entropy, loss_mask, beta)
    if rule == "reward_floor":
        if reward is None or floor is None:
            raise ValueError("selection rule 'reward_floor' needs the token reward and the clip floor")
        return select_reward_floor(reward, loss_mask, floor)
    raise ValueError(f"unknown selection rule {rule!r} (one of {SELECTION_RULES})")


def stage_at(step: int, total_steps: int, stage_switch: float) -> int:
    """1 before step ``round(stage_switch * total_steps)`` (0-based), 2 from it on; ``stage_switch``
    0 or 1 gives a single-stage run."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return 1 if step < int(round(stage_switch * total_steps)) else 2


# --- 4. surrogate and aggregation (Eq. 4) ---------------------------------------------------------
def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str = "token_mean",
              token_norm: float | None = None, norm_tokens: int = 0) -> torch.Tensor:
    """``token_mean``: mean over all selected tokens of the batch (paper Eq. 4: 1/sum M); ``token_norm``
    is that count when this is one minibatch of a larger batch (so minibatches sum to the batch mean);
    ``seq_mean``: mean over tokens within each sequence, then over sequences with any token;
    ``constant``: the sum over selected tokens divided by ``B * norm_tokens`` (B = rows of ``per_token``;
    Dr. GRPO's constant normaliser): every token weighs the same whatever the lengths and the selection,
    so a batch of shorter replies does not weigh each of its tokens more.
    An empty mask gives a zero that still depends on ``per_token`` (backward works, grads are 0)."""
    m = mask.to(per_token.dtype)
    kept = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))  # NaN off the mask stays out
    if how == "token_mean":
        denom = m.sum().clamp(min=1.0) if token_norm is None else max(float(token_norm), 1.0)
        return kept.sum() / denom
    if how == "constant":
        if norm_tokens < 1:
            raise ValueError(f"aggregation 'constant' needs norm_tokens >= 1 (algo.loss_norm_tokens), got {norm_tokens}")
        return kept.sum() / (per_token.shape[0] * norm_tokens)
    if how == "seq_mean":
        counts = m.sum(dim=-1)
        per_seq = kept.sum(dim=-1) / counts.clamp(min=1.0)
        has = (counts > 0).to(per_token.dtype)
        return (per_seq * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"unknown aggregation {how!r} (one of {AGGREGATIONS})")


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                      aggregation: str = "token_mean", clip: bool = True, weights: torch.Tensor | None = None,
                      token_norm: float | None = None, norm_tokens: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """``-min(rho A, clip(rho, 1-low, 1+high) A)`` aggregated over ``mask`` (``clip=False``: ``-rho A``, the
    paper's Eq. 4 without a ratio clip); ``weights`` (no grad) scale each token's term, e.g. the truncated
    importance weight of an engine/learner mismatch. Stats: the fraction of selected tokens whose ratio
    was clipped, and the mean ratio."""
    adv = advantages.detach()
    sel = mask.bool()
    # Off the mask the ratio is pinned to 1: a NaN/inf there (a prompt position) must not reach the gradient.
    old = torch.where(sel, old_logprobs.detach(), logprobs.detach())
    ratio = torch.exp(logprobs - old)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) if clip else ratio
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = aggregate(per_token, mask, aggregation, token_norm, norm_tokens)
    with torch.no_grad():
        n = max(int(sel.sum()), 1)
        ratio_clipped = ((ratio * adv) > (clipped_ratio * adv)) & sel  # where the clipped branch is active
        stats = {"ratio_clip_frac": float(ratio_clipped.sum()) / n,
                 "ratio_mean": float(torch.where(sel, ratio, torch.zeros_like(ratio)).sum()) / n}
    return loss, stats


SURROGATE_KEYS = ("ppo_clip", "ppo_clip_low", "ppo_clip_high", "aggregation", "loss_norm_tokens")


def surrogate_loss(fwd: Forward, cfg: AlgoConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Step 4 on one minibatch with the ``algo.ppo_clip*`` / ``algo.aggregation`` keys (every
    policy-gradient objective here ends in it). With the stop tokens known, two stats say what the
    loss did with them: ``stop_frac_selected`` (of this minibatch's stop tokens, those in the mask)
    and ``stop_advantage_mean`` (their mean advantage, after ``algo.stop_token``)."""
    loss, stats = clipped_surrogate(fwd.logprobs, fwd.old_logprobs, fwd.terms.advantages, fwd.mask,
                                    cfg.ppo_clip_low, cfg.ppo_clip_high, cfg.aggregation, clip=cfg.ppo_clip,
                                    weights=fwd.weights, token_norm=fwd.token_norm, norm_tokens=cfg.loss_norm_tokens)
    stop = fwd.terms.stop
    if stop is not None:
        n = max(int(stop.sum()), 1)
        stats["stop_frac_selected"] = float((stop & fwd.mask.bool()).sum()) / n
        stats["stop_advantage_mean"] = float(torch.where(stop, fwd.terms.advantages, 0.0).sum()) / n
    if fwd.terms.teacher_rows is not None:  # algo.teacher_on=failed: the share of episodes the teacher trains
        stats["teacher_rows_frac"] = float(fwd.terms.teacher_rows.float().mean())
    return loss, stats


# --- the objective --------------------------------------------------------------------------------
class Reopold(Objective):
    """``algo=reopold``: steps 1-4 above, each switchable by its key (ablations are one override)."""

    keys: ClassVar[tuple[str, ...]] = ("reward_clip", "clip_lambda", "beta", "stage_switch", "stage1_rule",
                                       "stage2_rule", *SURROGATE_KEYS, "stop_token", "outcome_coef",
                                       "grpo_std_norm", "teacher_on")

    def __init__(self, cfg: AlgoConfig, total_steps: int) -> None:
        super().__init__(cfg, total_steps)
        self.floor = clip_floor(cfg.clip_lambda)

    def stage(self, step: int) -> int:
        return stage_at(step, self.total_steps, self.cfg.stage_switch)

    def rule(self, step: int) -> str:
        return self.cfg.stage1_rule if self.stage(step) == 1 else self.cfg.stage2_rule

    def needs_entropy(self, step: int) -> bool:
        return self.rule(step) == "entropy"

    def token_terms(self, batch: Batch) -> TokenTerms:
        mask = batch.loss_mask
        reward = token_reward(require_teacher(batch, "reopold"), batch.old_logprobs, mask)  # 1.
        adv, clipped = reward, torch.zeros_like(mask, dtype=torch.bool)
        if self.cfg.reward_clip:
            adv, clipped = clip_reward(reward, self.cfg.clip_lambda)  # 2.
            clipped = clipped & (mask > 0)
        adv = adv * mask
        rows = teacher_rows(batch, self.cfg.teacher_on)  # optional: the teacher's terms on failed episodes only
        if rows is not None:
            adv, clipped = adv * rows[:, None], clipped & rows[:, None]
        adv = with_outcome(adv, batch, self.cfg.outcome_coef, self.cfg.grpo_std_norm)  # optional outcome
        # a solved episode stays in the loss only where its outcome advantage says something
        kept = None if rows is None else rows | (adv != 0).any(dim=-1)
        terms = TokenTerms(advantages=adv.detach(), reward=reward, clipped=clipped, kept=kept, teacher_rows=rows)
        return self.with_stop_token(terms, batch)

    def select(self, step: int, loss_mask: torch.Tensor, terms: TokenTerms,
               entropy: torch.Tensor | None) -> torch.Tensor:
        reward = terms.reward
        if terms.kept is not None:  # algo.teacher_on=failed: the teacher's reward says nothing on a solved episode
            loss_mask = loss_mask * terms.kept.to(loss_mask.device)[:, None]
            reward = torch.where(terms.teacher_rows.to(reward.device)[:, None], reward, torch.zeros_like(reward))
        chosen = select_tokens(self.rule(step), loss_mask, entropy=entropy, reward=reward,  # 3.
                               beta=self.cfg.beta, floor=self.floor)
        return self.without_stop_tokens(chosen, terms)

    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        return surrogate_loss(fwd, self.cfg)  # 4.
