"""Placement of the rollout, teacher and learner roles (``reopold_agents.roles``): in-process
(``distributed=single``) or Ray actors (``distributed=ray``).

``make_backend(cfg)`` returns a ``Backend``; ``reopold_agents.step.run_steps`` drives it (the one training
step) and never needs to know where the roles live.
"""

from __future__ import annotations

from reopold_agents.config.schema import RunConfig
from reopold_agents.distributed.backend import Backend, ChunkedRolloutStats, RoleName, RolloutHandle


def make_backend(cfg: RunConfig) -> Backend:
    """The backend ``cfg.distributed.backend`` names, with every role built and initial weights synced."""
    name = cfg.distributed.backend
    if name == "single":
        from reopold_agents.distributed.local import LocalBackend

        return LocalBackend(cfg)
    if name == "ray":
        from reopold_agents.distributed.ray_backend import RayBackend

        return RayBackend(cfg)
    raise ValueError(f"distributed.backend: unknown backend {name!r}; choose single or ray")


__all__ = ["Backend", "ChunkedRolloutStats", "RoleName", "RolloutHandle", "make_backend"]
