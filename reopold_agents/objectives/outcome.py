"""The outcome (environment reward) advantage that GRPO trains on alone and the teacher objectives may add.

``A_i = (R_i - mean_g) / (std_g + eps)`` (unbiased std; ``algo.grpo_std_norm=false``: ``R_i - mean_g``),
one value per episode i of prompt group g. Next to a teacher's token reward (``algo.outcome_coef``,
read by opd_outcome, reopold and reopold_topk):

    A_t = r_hat_t + outcome_coef * A_group(R)      on every trainable token of the episode

Why a distillation objective wants it: the teacher's token reward moves the student toward whatever the
teacher does, also where the teacher is no better (on BFCL the teacher calls a function on 62 % of the
requests no function fits; docs/run.md "BFCL runs"). The environment's reward is the one signal that
says a reply is right, so it keeps the student from learning the teacher's mistakes where the student
already gets some of its own samples right. A group whose episodes all score alike adds nothing.

``algo.teacher_on=failed`` (reopold, reopold_topk) goes further: the teacher's terms act only on the episodes
the environment scores unsolved (``teacher_rows``). A solved episode is never pulled toward what the teacher
would have written instead (a right "no call" toward the teacher's call); it trains only on its outcome
advantage, and without one (``outcome_coef`` 0, or a group that scored alike) it leaves the loss.
"""

from __future__ import annotations

import torch

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


def mixed_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """[B] bool: the episode's group has at least two different rewards: the groups an outcome advantage acts
    on (DAPO keeps only these; a run logs their share as ``rollout/mixed_groups``)."""
    keep = torch.zeros_like(rewards, dtype=torch.bool)
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero(as_tuple=True)[0]
        r = rewards[idx]
        keep[idx] = bool((r != r[0]).any())
    return keep


def teacher_rows(batch: Batch, teacher_on: str) -> torch.Tensor | None:
    """``[B]`` bool: the episodes the teacher's terms act on (``algo.teacher_on``); None: every episode."""
    if teacher_on == "all":
        return None
    if teacher_on != "failed":
        raise ValueError(f"unknown teacher_on {teacher_on!r} (all | failed)")
    if batch.successes is None:
        raise ValueError("algo.teacher_on=failed needs batch.successes (a batch built by trajectory.collate)")
    return ~batch.successes.bool().to(batch.loss_mask.device)


def with_outcome(advantages: torch.Tensor, batch: Batch, coef: float, std_norm: bool) -> torch.Tensor:
    """``advantages + coef * A_group(batch.rewards)`` on the batch's trainable tokens (``coef`` 0: unchanged)."""
    if coef == 0.0:
        return advantages
    outcome = group_advantages(batch.rewards, batch.group_ids, std_norm).to(advantages.device)
    return (advantages + coef * outcome[:, None]) * (batch.loss_mask > 0).to(advantages.dtype)
