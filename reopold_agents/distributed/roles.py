"""What each placed role must do, independent of where it runs (in-process or a Ray actor).

The run CLI builds its rollout, teacher and learner objects with plain functions of the config
(``RoleFactories``); a backend only decides *where* to call those functions. So the single-process
path and ``distributed=ray`` share every line of rollout, scoring and loss code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from reopold_agents.trajectory import Batch, Trajectory

StateDict = dict[str, torch.Tensor]


@runtime_checkable
class RolloutRole(Protocol):
    """Owns one student engine and its own envs/sandboxes; runs episodes for a list of tasks."""

    pad_token_id: int
    stats: Any  # reopold_agents.rollout.RolloutStats of the last ``run``

    def run(self, tasks: list[Any], seed: int, **probe: int) -> list[Trajectory]:
        """Episodes for ``tasks`` (any picklable task records), sampled reproducibly from ``seed``; a
        preflight probe caps them with ``max_new_tokens`` and ``group_size``."""

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out greedy success (``eval/success``) plus the configured eval suite, if any."""

    def load_weights(self, state_dict: StateDict | torch.nn.Module) -> None:
        """Replace the engine's student weights with the learner's (a state dict, or in-process the module)."""


@runtime_checkable
class TeacherRole(Protocol):
    """Scores the student's exact token ids; fills ``Batch.teacher_logprobs``."""

    def score(self, batch: Batch, trajectories: list[Trajectory]) -> Batch: ...


@runtime_checkable
class LearnerRole(Protocol):
    """Owns the student being trained, its optimiser and checkpoints."""

    model: torch.nn.Module  # the student as the learner trains it (an in-process rollout may share it)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        """One optimisation step on a scored batch; returns scalar metrics."""

    def logprobs(self, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """Log-probs ``[B, T]`` of the batch's trained tokens as the update computes them (0 elsewhere)."""

    def state_dict(self) -> StateDict:
        """The student's weights as the rollout engines load them (full, unsharded, on CPU)."""

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        """Write a resumable checkpoint for ``step`` (model, optimiser, RNG, step, the caller's data state)."""

    def load(self, directory: str) -> Any:
        """Restore a checkpoint written by ``save``; return its ``checkpoint.ResumeState``."""


@dataclass(frozen=True)
class RoleFactories:
    """Picklable builders of the three roles, called where the role lives (cloudpickle: closures work).

    ``rollout(cfg, worker_index, student)`` gets the worker's index so it can seed its envs or sandboxes
    distinctly, and (in-process only) the learner's student module to share instead of loading a copy;
    ``teacher(cfg)`` and ``learner(cfg)`` are called once per placed copy.
    """

    rollout: Callable[..., RolloutRole]
    teacher: Callable[[Any], TeacherRole]
    learner: Callable[[Any], LearnerRole]
