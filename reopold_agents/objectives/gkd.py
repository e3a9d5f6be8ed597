"""``algo=gkd``: supervised KL to the teacher over its top-k support, on the student's own tokens.

Both distributions are renormalised on the same K ids. ``reverse`` is KL(student || teacher), mode
seeking; ``forward`` is KL(teacher || student), mass covering. No advantage, no ratio.

``algo=dense_kl`` is the same loss over the *whole* vocabulary (what TRL's GKD / distillation trainers
optimise): the teacher returns its full next-token distribution at every student token, so nothing is
renormalised. Exact, but it moves ``[tokens x vocab]`` teacher log-probs: fine for the tiny models'
1,024-token vocabulary, not for a 150k vocabulary (use gkd's top-k there).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from reopold_agents.config.algo import KL_DIRECTIONS
from reopold_agents.objectives.base import Forward, Objective, TokenTerms
from reopold_agents.objectives.reopold import aggregate
from reopold_agents.trajectory import Batch

def topk_kl(student_topk: torch.Tensor, teacher_topk: torch.Tensor, direction: str = "reverse") -> torch.Tensor:
    """Per-position KL ``[...]`` from log-probs ``[..., K]`` of the same K ids under each model."""
    if student_topk.shape != teacher_topk.shape:
        raise ValueError(f"student {tuple(student_topk.shape)} and teacher {tuple(teacher_topk.shape)} top-k differ")
    log_s = torch.log_softmax(student_topk.float(), dim=-1)
    log_t = torch.log_softmax(teacher_topk.float().detach(), dim=-1)
    if direction == "reverse":
        return (log_s.exp() * (log_s - log_t)).sum(dim=-1)
    if direction == "forward":
        return (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    raise ValueError(f"unknown KL direction {direction!r} (one of {KL_DIRECTIONS})")


FULL_VOCAB = 2**31 - 1  # a top-k past the vocabulary size: the teacher scores every id


class GKD(Objective):
    keys: ClassVar[tuple[str, ...]] = ("gkd_topk", "gkd_direction", "aggregation", "loss_norm_tokens")

    @property
    def teacher_topk(self) -> int:
        return self.cfg.gkd_topk

    def token_terms(self, batch: Batch) -> TokenTerms:
        if batch.teacher_topk_ids is None or batch.teacher_topk_logprobs is None:
            raise ValueError("algo 'gkd' needs batch.teacher_topk_ids/teacher_topk_logprobs (teacher top-k scoring)")
        if self.teacher_topk != FULL_VOCAB and batch.teacher_topk_ids.shape[-1] < self.teacher_topk:
            raise ValueError(f"algo.gkd_topk={self.cfg.gkd_topk} but the batch carries only "
                             f"{batch.teacher_topk_ids.shape[-1]} ids")
        zeros = torch.zeros_like(batch.loss_mask)
        return TokenTerms(advantages=zeros, reward=None, clipped=zeros.bool())

    direction_stat: ClassVar[str] = "topk_kl"  # the logged stat

    @property
    def direction(self) -> str:
        return self.cfg.gkd_direction

    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        if fwd.student_topk is None or fwd.teacher_topk is None:
            raise ValueError(f"algo {self.cfg.name!r} needs the student's and the teacher's top-k log-probs")
        kl = topk_kl(fwd.student_topk, fwd.teacher_topk, self.direction)
        n = max(int(fwd.mask.sum()), 1)
        weighted = kl if fwd.weights is None else kl * fwd.weights.detach()
        return (aggregate(weighted, fwd.mask, self.cfg.aggregation, fwd.token_norm, self.cfg.loss_norm_tokens),
                {self.direction_stat: float((kl.detach() * fwd.mask).sum()) / n})


class DenseKL(GKD):
    """``algo=dense_kl``: reverse KL(student || teacher) over the full vocabulary at every student token."""

    keys: ClassVar[tuple[str, ...]] = ("aggregation", "loss_norm_tokens")
    direction_stat: ClassVar[str] = "dense_kl"

    @property
    def teacher_topk(self) -> int:
        return FULL_VOCAB

    @property
    def direction(self) -> str:
        return "reverse"
