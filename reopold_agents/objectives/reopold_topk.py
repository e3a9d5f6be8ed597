"""``algo=reopold_topk``: REOPOLD with the teacher's top-k: the sampled-token reward's exact expectation
over the teacher's top-k candidates, next to the sampled-token term, with the same relaxations.

A sampled-token reward only says that the student's own token is good or bad; where the student never
samples the move the teacher would make (a decisive token), it carries nothing about that move, and
REOPOLD's stage-1 floor drops exactly those tokens. The teacher's top-k at each student position names
the moves it prefers. For each selected position t, with K_t the teacher's top-k ids (``algo.gkd_topk``:
the one key for the teacher's top-k support size):

1. candidate reward   r_t(v)     = log pi_T(v|s_t) - log pi_theta(v|s_t),  v in K_t      (stop-gradient)
2. mixture clipping   r_hat_t(v) = max(r_t(v), log(lambda / (1 - lambda)))              (as reopold.py step 2)
3. dense term         D_t        = - sum_{v in K_t} pi_theta(v|s_t) * sg(r_hat_t(v))
                      grad D_t   = - sum_{v in K_t} pi_theta(v|s_t) sg(r_hat_t(v)) grad log pi_theta(v|s_t):
                      the policy gradient of reopold.py step 4 with the one sampled token replaced by
                      every top-k candidate, weighted by its probability (its exact expectation on K_t;
                      over the whole vocabulary and without clipping it is the gradient of the reverse
                      KL(pi_theta || pi_T) at s_t)
3'. forward direction  D_t       = sum_{v in K_t} pi_T(v|s_t) * (log pi_T(v|s_t) - log pi_theta(v|s_t))
                      grad D_t   = - sum_{v in K_t} pi_T(v|s_t) grad log pi_theta(v|s_t)       (algo.gkd_direction=forward)
                      each candidate pulled up by the *teacher's* probability, however unlikely the student
                      finds it; pi_theta is the full-vocabulary softmax, so raising the candidates lowers the
                      rest, the student's own rejected token included. Over the whole vocabulary it is
                      KL(pi_T || pi_theta) at s_t. No clipping: the term has no negative reward to bound.
4. loss               L = L_reopold(M) + algo.topk_coef * aggregate_{t in M}(D_t)
                      L_reopold: reopold.py steps 1-4 on the sampled tokens; M: the stage rule's token
                      mask (reopold.py step 3), applied to both terms; the same aggregation.
                      With algo.teacher_on=failed, D_t = 0 on the episodes the environment scores solved.

Clipping caps how hard a candidate the teacher rejects is pushed down, as it does for a sampled token;
selection picks the same positions for both terms. Which direction (``algo.gkd_direction``, the one key for
a top-k term's KL direction, shared with gkd): the reverse term (3.) weighs each candidate by the
student's probability, so a move the student gives ~0 mass gets ~0 gradient: it can only push the
student's wrong token down and wait for the freed mass to find the teacher's move. Where the student never
samples the right move (a knowledge gap, docs/run.md "Knowledge beds"), the forward term (3'.) pulls that
move up directly. With ``algo.stage1_rule=reward_floor`` stage 1 still
drops positions whose *sampled* token the teacher rejects, the positions where the dense term helps most:
configs/algo/reopold_topk.yaml therefore trains every student token in stage 1 (``stage1_rule=all``).
The dense term is not ratio-clipped: with several PPO epochs it is exact only on the first pass.
Needs the teacher's top-k (in-process, or a served vLLM teacher's ``prompt_logprobs``) and the student's
log-probs of those ids (the learner gathers them in its chunked LM-head pass, no [tokens x vocab] tensor).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from reopold_agents.config.algo import KL_DIRECTIONS
from reopold_agents.objectives.base import Forward, TokenTerms
from reopold_agents.objectives.reopold import Reopold, aggregate, clip_floor, surrogate_loss
from reopold_agents.trajectory import Batch


def dense_topk_term(student_topk: torch.Tensor, teacher_topk: torch.Tensor, floor: float | None,
                    direction: str = "reverse") -> torch.Tensor:
    """``D_t`` per position ``[...]`` from the student's (with grad, full-vocabulary log-probs) and the
    teacher's log-probs ``[..., K]`` of the teacher's top-k ids: step 3 (``reverse``; ``floor`` None: no
    clipping) or step 3' (``forward``; ``floor`` unused)."""
    if student_topk.shape != teacher_topk.shape:
        raise ValueError(f"student {tuple(student_topk.shape)} and teacher {tuple(teacher_topk.shape)} top-k differ")
    if direction == "forward":
        teacher = teacher_topk.float().detach()
        return (teacher.exp() * (teacher - student_topk.float())).sum(dim=-1)  # 3'.
    if direction != "reverse":
        raise ValueError(f"unknown top-k direction {direction!r} (one of {KL_DIRECTIONS})")
    reward = (teacher_topk.float() - student_topk.float()).detach()  # 1.
    if floor is not None:
        reward = torch.clamp(reward, min=floor)  # 2.
    return -(student_topk.float().exp() * reward).sum(dim=-1)  # 3.


class ReopoldTopK(Reopold):
    """REOPOLD's sampled-token objective plus ``algo.topk_coef`` x the dense top-k term on the same tokens."""

    keys: ClassVar[tuple[str, ...]] = (*Reopold.keys, "gkd_topk", "gkd_direction", "topk_coef")

    @property
    def teacher_topk(self) -> int:
        return self.cfg.gkd_topk

    def token_terms(self, batch: Batch) -> TokenTerms:
        if batch.teacher_topk_ids is None or batch.teacher_topk_logprobs is None:
            raise ValueError("algo 'reopold_topk' needs the teacher's top-k (batch.teacher_topk_ids/logprobs)")
        if batch.teacher_topk_ids.shape[-1] < self.teacher_topk:
            raise ValueError(f"algo.gkd_topk={self.cfg.gkd_topk} but the batch carries only "
                             f"{batch.teacher_topk_ids.shape[-1]} ids")
        return super().token_terms(batch)

    def loss(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        if fwd.student_topk is None or fwd.teacher_topk is None:
            raise ValueError("algo 'reopold_topk' needs the student's and the teacher's top-k log-probs")
        sampled, stats = surrogate_loss(fwd, self.cfg)  # 4. (L_reopold)
        floor = clip_floor(self.cfg.clip_lambda) if self.cfg.reward_clip else None
        dense = dense_topk_term(fwd.student_topk, fwd.teacher_topk, floor, self.cfg.gkd_direction)
        if fwd.terms.teacher_rows is not None:  # algo.teacher_on=failed: no dense term on a solved episode
            dense = dense * fwd.terms.teacher_rows.to(dense.device)[:, None]
        if fwd.weights is not None:
            dense = dense * fwd.weights.detach()
        loss = sampled + self.cfg.topk_coef * aggregate(dense, fwd.mask, self.cfg.aggregation, fwd.token_norm,
                                                        self.cfg.loss_norm_tokens)
        with torch.no_grad():
            sel = fwd.mask.bool()
            n = max(int(sel.sum()), 1)
            mass = fwd.student_topk.float().exp().sum(dim=-1)
            stats["topk_dense"] = float(torch.where(sel, dense, torch.zeros_like(dense)).sum()) / n
            stats["topk_student_mass"] = float(torch.where(sel, mass, torch.zeros_like(mass)).sum()) / n
        return loss, stats
