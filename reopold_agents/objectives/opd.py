"""``algo=opd``: vanilla on-policy distillation (Agarwal et al. / Thinking Machines' OPD).

Policy gradient with the *unclipped* token reward ``r_t = log pi_T - log pi_old`` on every student
token: REOPOLD without clipping and without token selection (the same surrogate, reopold.py step 4).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from reopold_agents.objectives.base import Forward, Objective, TokenTerms, require_teacher
from reopold_agents.objectives.reopold import SURROGATE_KEYS, surrogate_loss, token_reward
from reopold_agents.trajectory import Batch


class OPD(Objective):
    keys: ClassVar[tuple[str, ...]] = (*SURROGATE_KEYS, "stop_token")

    def token_terms(self, batch: Batch) -> TokenTerms:
        reward = token_reward(require_teacher(batch, "opd"), batch.old_logprobs, batch.loss_mask)
        terms = TokenTerms(advantages=reward, reward=reward, clipped=torch.zeros_like(reward, dtype=torch.bool))
        return self.with_stop_token(terms, batch)

    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        return surrogate_loss(fwd, self.cfg)
