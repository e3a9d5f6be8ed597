"""Training objectives: REOPOLD, vanilla OPD, OPD+outcome, GRPO and GKD (docs/objective.md).

One concern per module: ``reward`` (token reward, mixture clipping), ``selection`` (token rules),
``surrogate`` (PPO clipped surrogate, aggregation), ``grpo`` (group advantages), ``gkd`` (top-k KL),
``objective`` (the AlgoConfig-driven glue the learner calls).
"""

from reopold_agents.losses.gkd import topk_kl
from reopold_agents.losses.grpo import group_advantages
from reopold_agents.losses.objective import TokenAdvantages, batch_advantages, objective_loss, selection_mask
from reopold_agents.losses.reward import clip_floor, clip_reward, token_reward
from reopold_agents.losses.selection import select_tokens, select_top_entropy
from reopold_agents.losses.surrogate import aggregate, clipped_surrogate

__all__ = [
    "TokenAdvantages",
    "aggregate",
    "batch_advantages",
    "clip_floor",
    "clip_reward",
    "clipped_surrogate",
    "group_advantages",
    "objective_loss",
    "select_tokens",
    "select_top_entropy",
    "selection_mask",
    "token_reward",
    "topk_kl",
]
