"""Placement of the rollout, teacher and learner roles: in-process (``distributed=single``) or Ray actors.

``make_backend(cfg, RoleFactories(rollout=..., teacher=..., learner=...))`` returns a ``Backend``;
``reopold_agents.step.run_steps`` drives it (the one training step) and never needs to know where the
roles live.
"""

from __future__ import annotations

from typing import Any

from reopold_agents.distributed.backend import Backend, ChunkedRolloutStats, RolloutHandle
from reopold_agents.distributed.roles import LearnerRole, RoleFactories, RolloutRole, TeacherRole


def make_backend(cfg: Any, factories: RoleFactories) -> Backend:
    """The backend ``cfg.distributed.backend`` names, with every role built and initial weights synced."""
    name = cfg.distributed.backend
    if name == "single":
        from reopold_agents.distributed.local import LocalBackend

        return LocalBackend(cfg, factories)
    if name == "ray":
        from reopold_agents.distributed.ray_backend import RayBackend

        return RayBackend(cfg, factories)
    raise ValueError(f"distributed.backend: unknown backend {name!r}; choose single or ray")


__all__ = ["Backend", "ChunkedRolloutStats", "LearnerRole", "RoleFactories", "RolloutHandle", "RolloutRole",
           "TeacherRole", "make_backend"]
