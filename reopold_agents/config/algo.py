"""Config section `algo`: the training objective and every one of its knobs (docs/objective.md).

Defaults are REOPOLD's and live here only; configs/algo/<name>.yaml presets state what differs.
Ablations are one override (``algo.reward_clip=false``, ``algo.stage2_rule=all``, ``algo.stage_switch=0``).
Each objective (reopold_agents/objectives/) declares the keys it reads; the others must stay at
their defaults: ``objectives.check_algo`` checks that (and the name) at start-up, since this package
knows no objective.
"""

from __future__ import annotations

from dataclasses import dataclass

SELECTION_RULES = ("all", "entropy", "reward_floor")
AGGREGATIONS = ("token_mean", "seq_mean", "constant")
STOP_TOKEN_RULES = ("train", "mask", "clip")
KL_DIRECTIONS = ("reverse", "forward")
TEACHER_ON = ("all", "failed")


@dataclass
class AlgoConfig:
    """Objective (``name``, a key of ``reopold_agents.objectives.OBJECTIVES``) plus its knobs."""

    name: str = "reopold"  # a key of reopold_agents.objectives.OBJECTIVES
    reward_clip: bool = True  # mixture-based clipping r_hat = max(r, log(lambda / (1 - lambda)))
    clip_lambda: float = 0.2  # lambda in (0, 1); floor log(0.25) ~ -1.386; also the reward_floor rule's floor
    beta: float = 0.5  # fraction of trainable tokens kept by the "entropy" rule (top by student entropy)
    stage_switch: float = 0.5  # fraction of trainer.total_steps spent in stage 1 (0: stage 2 only, 1: stage 1 only)
    stage1_rule: str = "reward_floor"  # exploration stage token rule: all | entropy | reward_floor
    stage2_rule: str = "entropy"  # refinement stage token rule: all | entropy | reward_floor
    ppo_clip: bool = True  # clip rho to [1 - low, 1 + high] in the surrogate (false: the paper's Eq. 4 as written)
    ppo_clip_low: float = 0.2
    ppo_clip_high: float = 0.2
    aggregation: str = "token_mean"  # token_mean | seq_mean | constant (Dr. GRPO: sum / (sequences * loss_norm_tokens))
    loss_norm_tokens: int = 0  # aggregation=constant: the tokens one sequence is normalised by (>= 1; e.g. the longest reply)
    # the token that ended a reply (EOS or a stop id, Batch.stop_mask): train (like any token) | mask (never in the
    # loss) | clip (its advantage capped at 0: stopping is never rewarded, only discouraged); reopold, opd, grpo
    stop_token: str = "train"
    outcome_coef: float = 0.0  # opd_outcome, reopold, reopold_topk: A_t = r_hat_t + outcome_coef * A_group(outcome)
    # reopold, reopold_topk: which episodes the teacher's terms train: all | failed (only those the env scores
    # unsolved, Trajectory.success; a solved episode then trains only on its outcome advantage, if any)
    teacher_on: str = "all"
    grpo_std_norm: bool = True  # group outcome advantage (R - mean_group) / (std_group + eps) (grpo, dapo, outcome_coef); false: centred only
    gkd_topk: int = 8  # the teacher's top-k support size (gkd, reopold_topk; teacher scoring fills k ids per position)
    topk_coef: float = 1.0  # reopold_topk: weight of the dense top-k term next to the sampled-token term
    gkd_direction: str = "reverse"  # gkd, reopold_topk: the top-k term's reverse KL(student || teacher) or forward KL(teacher || student)
    overlong_max_tokens: int = 0  # dapo: soft overlong punishment beyond this many generated tokens (0: off)
    overlong_buffer: int = 0  # dapo: the ramp length before overlong_max_tokens

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key. The name and the keys
        the chosen objective reads are ``objectives.check_algo``'s."""
        if not self.name:
            raise ValueError("name: empty; name an objective (algo=reopold, opd, grpo, ...)")
        if not 0.0 < self.clip_lambda < 1.0:
            raise ValueError(f"clip_lambda: must lie in (0, 1), got {self.clip_lambda}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta: must lie in (0, 1], got {self.beta}")
        if not 0.0 <= self.stage_switch <= 1.0:
            raise ValueError(f"stage_switch: must lie in [0, 1], got {self.stage_switch}")
        for key in ("stage1_rule", "stage2_rule"):
            rule = getattr(self, key)
            if rule not in SELECTION_RULES:
                raise ValueError(f"{key}: {rule!r} is not one of {SELECTION_RULES}")
        for key in ("ppo_clip_low", "ppo_clip_high"):
            if getattr(self, key) <= 0.0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.ppo_clip_low >= 1.0:
            raise ValueError(f"ppo_clip_low: must be < 1 (rho >= 1 - low > 0), got {self.ppo_clip_low}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation: {self.aggregation!r} is not one of {AGGREGATIONS}")
        if self.aggregation == "constant" and self.loss_norm_tokens < 1:
            raise ValueError(f"loss_norm_tokens: aggregation=constant divides each sequence's token sum by it; set it "
                             f">= 1 (e.g. engine.sampling.max_new_tokens), got {self.loss_norm_tokens}")
        if self.aggregation != "constant" and self.loss_norm_tokens != 0:
            raise ValueError(f"loss_norm_tokens: only aggregation=constant reads it (aggregation={self.aggregation}); "
                             f"leave it 0")
        if self.stop_token not in STOP_TOKEN_RULES:
            raise ValueError(f"stop_token: {self.stop_token!r} is not one of {STOP_TOKEN_RULES}")
        if self.outcome_coef < 0.0:
            raise ValueError(f"outcome_coef: must be >= 0, got {self.outcome_coef}")
        if self.teacher_on not in TEACHER_ON:
            raise ValueError(f"teacher_on: {self.teacher_on!r} is not one of {TEACHER_ON}")
        if self.topk_coef < 0.0:
            raise ValueError(f"topk_coef: must be >= 0, got {self.topk_coef}")
        if self.gkd_topk < 1:
            raise ValueError(f"gkd_topk: must be >= 1, got {self.gkd_topk}")
        if self.overlong_max_tokens < 0 or not 0 <= self.overlong_buffer <= self.overlong_max_tokens:
            raise ValueError(f"overlong_buffer: need 0 <= overlong_buffer <= overlong_max_tokens, got "
                             f"{self.overlong_buffer}, {self.overlong_max_tokens}")
        if self.gkd_direction not in KL_DIRECTIONS:
            raise ValueError(f"gkd_direction: {self.gkd_direction!r} is not one of {KL_DIRECTIONS}")
