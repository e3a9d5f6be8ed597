"""Training objectives, found by name through one registry (``algo.name`` -> class).

``reopold.py`` is the REOPOLD objective on one page (token reward, mixture clipping, stage rules,
surrogate); its siblings are small modules that reuse its pieces. Add an objective: subclass
``Objective`` (base.py) and add one entry to ``OBJECTIVES``.
"""

from __future__ import annotations

from reopold_agents.objectives.base import Forward, Objective, TokenTerms
from reopold_agents.objectives.dapo import DAPO
from reopold_agents.objectives.gkd import GKD, DenseKL
from reopold_agents.objectives.grpo import GRPO
from reopold_agents.objectives.opd import OPD
from reopold_agents.objectives.opd_outcome import OPDOutcome
from reopold_agents.objectives.reopold import Reopold

OBJECTIVES: dict[str, type[Objective]] = {
    "reopold": Reopold,
    "opd": OPD,
    "opd_outcome": OPDOutcome,
    "grpo": GRPO,
    "gkd": GKD,
    "dapo": DAPO,
    "dense_kl": DenseKL,
}


def make_objective(cfg, total_steps: int) -> Objective:
    """The objective ``cfg.name`` names (an ``AlgoConfig``), for a run of ``total_steps`` learner steps."""
    try:
        cls = OBJECTIVES[cfg.name]
    except KeyError:
        raise ValueError(f"algo.name: {cfg.name!r} is not one of {sorted(OBJECTIVES)}") from None
    return cls(cfg, total_steps)


__all__ = ["OBJECTIVES", "Forward", "Objective", "TokenTerms", "make_objective"]
