"""Placement of the rollout, teacher and learner roles: in-process (default) or Ray actors.

``make_backend(cfg, RoleFactories(rollout=..., teacher=..., learner=...))`` returns a ``Backend``;
the run CLI drives it with ``backend.train(tasks_for_step, start, end)`` (or the primitives
``rollout`` / ``score`` / ``update`` / ``sync_weights``) and never needs to know where roles live.
"""

from reopold_agents.distributed.backend import Backend, RolloutHandle, RolloutStats, StepResult, make_backend
from reopold_agents.distributed.roles import LearnerRole, RoleFactories, RolloutRole, TeacherRole

__all__ = [
    "Backend",
    "LearnerRole",
    "RoleFactories",
    "RolloutHandle",
    "RolloutRole",
    "RolloutStats",
    "StepResult",
    "TeacherRole",
    "make_backend",
]
