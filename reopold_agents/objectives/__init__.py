"""Training objectives, found by name through one registry (``algo.name`` -> class).

``reopold.py`` is the REOPOLD objective on one page (token reward, mixture clipping, stage rules,
surrogate); its siblings are small modules that reuse its pieces. Add an objective: subclass
``Objective`` (base.py) and add one entry to ``OBJECTIVES``.
"""

from __future__ import annotations

from dataclasses import fields

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.objectives.base import Forward, Objective, TokenTerms
from reopold_agents.objectives.dapo import DAPO
from reopold_agents.objectives.gkd import GKD, DenseKL
from reopold_agents.objectives.grpo import GRPO
from reopold_agents.objectives.opd import OPD
from reopold_agents.objectives.opd_outcome import OPDOutcome
from reopold_agents.objectives.reopold import Reopold
from reopold_agents.objectives.reopold_topk import ReopoldTopK

OBJECTIVES: dict[str, type[Objective]] = {
    "reopold": Reopold,
    "reopold_topk": ReopoldTopK,
    "opd": OPD,
    "opd_outcome": OPDOutcome,
    "grpo": GRPO,
    "gkd": GKD,
    "dapo": DAPO,
    "dense_kl": DenseKL,
}


def objective_class(name: str) -> type[Objective]:
    """The class ``algo.name`` names: its class-level facts (``keys``, ``needs_teacher``) without building it."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"algo.name: {name!r} is not one of {sorted(OBJECTIVES)}") from None


def check_algo(cfg: AlgoConfig) -> None:
    """The objective exists, every ``algo.*`` key it does not read keeps its default (it would otherwise be
    silently ignored), and its own checks pass; raise ValueError('key: why') (run start-up, the learner)."""
    if cfg.name not in OBJECTIVES:
        raise ValueError(f"name: {cfg.name!r} is not one of {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[cfg.name]
    reads = set(cls.keys) | {"name"}
    default = AlgoConfig()
    for f in fields(cfg):
        if f.name not in reads and getattr(cfg, f.name) != getattr(default, f.name):
            raise ValueError(f"{f.name}: algo={cfg.name} does not read it (it reads {', '.join(sorted(reads - {'name'}))})")
    cls.check_config(cfg)


def make_objective(cfg: AlgoConfig, total_steps: int) -> Objective:
    """The objective ``cfg.name`` names, for a run of ``total_steps`` learner steps."""
    return objective_class(cfg.name)(cfg, total_steps)


__all__ = ["OBJECTIVES", "Forward", "Objective", "TokenTerms", "check_algo", "make_objective", "objective_class"]
