"""``algo=dapo``: DAPO (Yu et al., 2025), outcome-reward RL without a teacher, the stronger GRPO baseline.

* clip-higher: a wider upper ratio bound (``algo.ppo_clip_high``, 0.28 in configs/algo/dapo.yaml) so
  low-probability tokens can still gain mass;
* dynamic sampling: groups whose episodes all got the same reward carry no signal (zero group
  advantage); their tokens are dropped from the loss and the kept fraction is logged
  (``dapo_kept_groups``). Unlike the paper, the batch is not refilled by sampling more groups;
* token-level loss: ``token_mean`` over every kept token of the batch (``algo.aggregation``);
* soft overlong punishment: with ``algo.overlong_max_tokens`` L > 0 and ``algo.overlong_buffer`` C, an
  episode of n generated tokens gets ``R += 0`` for n <= L - C, ``(L - C - n) / C`` for L - C < n <= L
  and ``-1`` beyond L, before the group normalisation.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from reopold_agents.objectives.base import Forward, Objective, TokenTerms
from reopold_agents.objectives.outcome import group_advantages, mixed_groups
from reopold_agents.objectives.reopold import SURROGATE_KEYS, surrogate_loss
from reopold_agents.trajectory import Batch


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft length penalty per episode (0 when ``max_tokens`` is 0: off)."""
    lengths = lengths.float()
    if max_tokens <= 0:
        return torch.zeros_like(lengths)
    start = max_tokens - buffer
    ramp = (start - lengths) / max(buffer, 1)
    return torch.where(lengths <= start, torch.zeros_like(lengths),
                       torch.where(lengths <= max_tokens, ramp, torch.full_like(lengths, -1.0)))


class DAPO(Objective):
    keys: ClassVar[tuple[str, ...]] = (*SURROGATE_KEYS, "grpo_std_norm", "overlong_max_tokens",
                                       "overlong_buffer")
    needs_teacher: ClassVar[bool] = False

    def token_terms(self, batch: Batch) -> TokenTerms:
        mask = batch.loss_mask
        rewards = batch.rewards.float() + overlong_penalty(mask.sum(dim=-1), self.cfg.overlong_max_tokens,
                                                          self.cfg.overlong_buffer)
        adv = group_advantages(rewards, batch.group_ids, self.cfg.grpo_std_norm)[:, None] * mask
        return TokenTerms(advantages=adv.detach(), reward=None, clipped=torch.zeros_like(mask, dtype=torch.bool),
                          kept=mixed_groups(rewards, batch.group_ids))

    def select(self, step: int, loss_mask: torch.Tensor, terms: TokenTerms,
               entropy: torch.Tensor | None) -> torch.Tensor:
        assert terms.kept is not None
        return (loss_mask > 0) & terms.kept.to(loss_mask.device)[:, None]

    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats = surrogate_loss(fwd, self.cfg)
        assert fwd.terms.kept is not None
        stats["dapo_kept_groups"] = float(fwd.terms.kept.float().mean())  # of this minibatch's sequences
        return loss, stats
