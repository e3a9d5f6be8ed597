"""What each placed role must do, independent of where it runs (in-process or a Ray actor).

The run CLI builds its rollout, teacher and learner objects with plain functions of the config
(``RoleFactories``); a backend only decides *where* to call those functions. So the single-process
path and ``distributed=ray`` share every line of rollout, scoring and loss code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from reopold_agents.trajectory import Trajectory

StateDict = dict[str, torch.Tensor]


@runtime_checkable
class RolloutRole(Protocol):
    """Owns one student engine and its own envs/sandboxes; runs episodes for a list of tasks."""

    def run(self, tasks: list[Any], seed: int) -> list[Trajectory]:
        """Episodes for ``tasks`` (any picklable task records), sampled reproducibly from ``seed``."""

    def load_weights(self, state_dict: StateDict) -> None:
        """Replace the engine's student weights with the learner's."""


@runtime_checkable
class TeacherRole(Protocol):
    """Scores the student's exact token ids; fills ``Trajectory.teacher_logprobs``."""

    def score(self, trajectories: list[Trajectory]) -> list[Trajectory]: ...


@runtime_checkable
class LearnerRole(Protocol):
    """Owns the student being trained, its optimiser and checkpoints."""

    def update(self, trajectories: list[Trajectory], step: int) -> dict[str, float]:
        """One optimisation step on scored trajectories; returns scalar metrics."""

    def state_dict(self) -> StateDict:
        """The student's weights as the rollout engines load them (full, unsharded, on CPU)."""

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        """Write a resumable checkpoint for ``step`` (model, optimiser, RNG, step, the caller's data state)."""

    def load(self, directory: str) -> Any:
        """Restore a checkpoint written by ``save``; return its ``checkpoint.ResumeState`` (``.step``,
        ``.data_state``) or the step as an int."""


@dataclass(frozen=True)
class RoleFactories:
    """Picklable builders of the three roles, called where the role lives (cloudpickle: closures work).

    ``rollout(cfg, worker_index)`` gets the worker's index so it can seed its envs or sandboxes
    distinctly; ``teacher(cfg)`` and ``learner(cfg)`` are called once per placed copy.
    """

    rollout: Callable[[Any, int], RolloutRole]
    teacher: Callable[[Any], TeacherRole]
    learner: Callable[[Any], LearnerRole]
