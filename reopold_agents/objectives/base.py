"""What every objective gives the learner, and the data that flows between them.

An objective turns a scored ``Batch`` into a loss in three calls, in this order, once per learner
step: ``token_terms`` (per-token advantages fixed for the whole step), ``select`` (the token mask
M_t of this step) and, per minibatch, ``loss``. The learner owns everything else (forward passes,
log-probs, backward, clipping, the NaN guard, minibatches), so a new objective is one small module
plus one line in ``reopold_agents/objectives/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.trajectory import Batch


@dataclass
class TokenTerms:
    """Per-token quantities fixed for a whole learner step (computed once, before any minibatch)."""

    advantages: torch.Tensor  # [B, T] A_t, 0 on non-trainable tokens, no grad
    reward: torch.Tensor | None  # [B, T] raw token reward r_t; None without teacher log-probs
    clipped: torch.Tensor  # [B, T] bool: tokens whose reward was raised to the clip floor
    kept: torch.Tensor | None = None  # [B] bool: sequences the objective keeps (DAPO's dynamic sampling); None: all
    stop: torch.Tensor | None = None  # [B, T] bool: the tokens that ended a reply (Batch.stop_mask); None: unknown
    teacher_rows: torch.Tensor | None = None  # [B] bool: sequences the teacher's terms act on (algo.teacher_on); None: all

    def rows(self, idx: torch.Tensor) -> "TokenTerms":
        """The terms of sequences ``idx`` (a minibatch)."""
        pick = lambda t: None if t is None else t.index_select(0, idx.to(t.device))  # noqa: E731
        return TokenTerms(pick(self.advantages), pick(self.reward), pick(self.clipped), pick(self.kept),
                          pick(self.stop), pick(self.teacher_rows))


@dataclass
class Forward:
    """One minibatch as the loss sees it: the student's log-probs (with grad) and the fixed terms."""

    logprobs: torch.Tensor  # [b, T] log pi_theta(y_t | s_t), fp32, carries the gradient
    old_logprobs: torch.Tensor  # [b, T] log pi_old(y_t | s_t) of the policy that sampled
    terms: TokenTerms  # rows of this minibatch
    mask: torch.Tensor  # [b, T] bool: M_t * loss_mask_t, the tokens the loss averages over
    student_topk: torch.Tensor | None = None  # [b, T, K] student log-probs of the teacher's top-k ids (GKD)
    teacher_topk: torch.Tensor | None = None  # [b, T, K] the teacher's top-k log-probs (GKD)
    weights: torch.Tensor | None = None  # [b, T] truncated importance weights min(pi_old / pi_engine, C), no grad
    token_norm: float | None = None  # token_mean's denominator: the whole batch's selected tokens


class Objective(ABC):
    """A training objective. ``keys`` lists the ``algo.*`` keys it reads: any other algo key must keep
    its default (``AlgoConfig.check`` fails naming it), so no knob is silently ignored."""

    keys: ClassVar[tuple[str, ...]] = ()
    needs_teacher: ClassVar[bool] = True  # the batch must carry teacher log-probs (teacher scoring runs)

    def __init__(self, cfg: AlgoConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = total_steps

    @classmethod
    def check_config(cls, cfg: AlgoConfig) -> None:
        """Checks only this objective needs (raise ValueError('key: why')); the ranges are AlgoConfig's."""

    @property
    def teacher_topk(self) -> int:
        """How many top-k teacher ids per position the batch must carry (0: none)."""
        return 0

    def stage(self, step: int) -> int:
        """The training stage at 0-based ``step`` (logged as ``stage``; single-stage objectives: 1)."""
        return 1

    def needs_entropy(self, step: int) -> bool:
        """Whether ``select`` at ``step`` ranks tokens by the student's entropy."""
        return False

    def normaliser(self, mask: torch.Tensor) -> float:
        """What the loss divides by over ``mask`` (``algo.aggregation``): the selected tokens (token_mean), the
        sequences with any (seq_mean), or every sequence times ``algo.loss_norm_tokens`` whatever was
        selected (constant). A learner that splits a batch weights each part by its share."""
        if self.cfg.aggregation == "seq_mean":
            return float((mask.sum(-1) > 0).sum())
        if self.cfg.aggregation == "constant":
            return float(mask.shape[0] * self.cfg.loss_norm_tokens)
        return float(mask.sum())

    @property
    def batch_normalised(self) -> bool:
        """Whether a minibatch's loss is normalised by the whole batch's selected tokens (token_mean: the
        minibatch gradients add up to the batch mean's), not by its own."""
        return self.cfg.aggregation == "token_mean"

    @abstractmethod
    def token_terms(self, batch: Batch) -> TokenTerms:
        """Advantages (and the raw reward) of every token; fails naming a missing batch field."""

    def select(self, step: int, loss_mask: torch.Tensor, terms: TokenTerms,
               entropy: torch.Tensor | None) -> torch.Tensor:
        """Boolean ``[B, T]`` mask M_t * loss_mask_t of the tokens trained on at ``step`` (default: all but
        the stop tokens under ``algo.stop_token=mask``)."""
        return self.without_stop_tokens(loss_mask > 0, terms)

    # --- the stop token (algo.stop_token), for the objectives that list it in ``keys`` -------------------
    def with_stop_token(self, terms: TokenTerms, batch: Batch) -> TokenTerms:
        """``terms`` with the batch's stop tokens marked (``Batch.stop_mask``) and, under
        ``algo.stop_token=clip``, their advantage capped at 0: a stop the teacher (or the outcome) does
        not want is discouraged, a stop is never rewarded, so replies cannot be trained shorter."""
        stop = batch.stop_mask
        if stop is None:
            return terms
        stop = stop.to(terms.advantages.device).bool() & (batch.loss_mask > 0)
        adv = terms.advantages
        if self.cfg.stop_token == "clip":
            adv = torch.where(stop, adv.clamp(max=0.0), adv)
        return replace(terms, advantages=adv, stop=stop)

    def without_stop_tokens(self, mask: torch.Tensor, terms: TokenTerms) -> torch.Tensor:
        """``mask`` less the stop tokens under ``algo.stop_token=mask`` (they never enter the loss)."""
        if self.cfg.stop_token != "mask" or terms.stop is None:
            return mask
        return mask & ~terms.stop.to(mask.device)

    @abstractmethod
    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise on ``fwd.mask`` and scalar stats of it."""


def require_teacher(batch: Batch, name: str) -> torch.Tensor:
    if batch.teacher_logprobs is None:
        raise ValueError(f"algo {name!r} needs batch.teacher_logprobs (run teacher scoring first)")
    return batch.teacher_logprobs
