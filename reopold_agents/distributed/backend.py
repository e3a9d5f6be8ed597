"""The placement interface the run CLI drives: the same calls whether the roles are in-process or Ray actors.

A ``Backend`` says only *where* the rollout, teacher and learner roles (``reopold_agents.roles``) run and
how data and weights move between them. The training step itself is ``reopold_agents.step.train_step``,
written once and driven by ``reopold_agents.step.run_steps`` for every backend. Anything else a caller
needs from a role (the preflight's probe, the learner's log-probs, the teacher's held-out success) goes
through ``ask``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from reopold_agents.config.schema import RunConfig
from reopold_agents.rollout import RolloutStats
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.trajectory import Batch, Trajectory

RoleName = Literal["rollout", "teacher", "learner"]


@dataclass
class ChunkedRolloutStats:
    """What a step's rollout cost and survived, summed over its chunks."""

    episodes: int = 0
    chunks: int = 0
    redone_chunks: int = 0  # chunks rerun after a worker crash
    worker_restarts: int = 0
    seconds: float = 0.0  # wall time of the whole rollout
    busy_seconds: float = 0.0  # summed over workers: time spent inside the rollout role
    generate_s: float = 0.0  # summed over chunks: time inside engine.generate
    generated_tokens: int = 0

    def add_chunk(self, chunk_stats: RolloutStats) -> None:
        """Fold in one chunk's ``RolloutStats``."""
        self.busy_seconds += chunk_stats.total_s
        self.generate_s += chunk_stats.generate_s
        self.generated_tokens += chunk_stats.generated_tokens


class RolloutHandle(ABC):
    """A submitted rollout; ``result()`` blocks until every chunk is back (redone if a worker died)."""

    stats: ChunkedRolloutStats

    @abstractmethod
    def result(self) -> list[Trajectory]: ...


class Backend(ABC):
    """Rollout workers, teacher and learner placed somewhere."""

    pad_token_id: int  # the student tokenizer's pad id (the driver collates the batch)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.dcfg = cfg.distributed
        self.seed = int(cfg.trainer.seed)

    @abstractmethod
    def submit_rollout(self, tasks: list[Any], step: int) -> RolloutHandle:
        """Start episodes for ``tasks`` with the latest synced weights; may return before they finish."""

    @abstractmethod
    def score(self, batch: Batch) -> TeacherScores | None:
        """The teachers' scores of ``batch``'s rows (None: the objective learns without a teacher)."""

    @abstractmethod
    def update(self, batch: Batch, step: int) -> tuple[dict[str, float], int]:
        """One learner step; returns its metrics and the learner version it started from."""

    @abstractmethod
    def sync_weights(self) -> int:
        """Make the learner's current weights the ones the next submitted rollout uses; return the version."""

    @abstractmethod
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out greedy success (``eval/success``, per entry) and any configured suite, with the synced weights."""

    @abstractmethod
    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        """Learner checkpoint (the learner role's checkpoint code), with the caller's data state."""

    @abstractmethod
    def load(self, directory: str) -> Any:
        """Restore the learner from ``directory`` (a checkpoint or a folder of them) and make its weights
        the next rollout's; return the role's resume state (``checkpoint.ResumeState``: step, data_state)."""

    @abstractmethod
    def ask(self, role: RoleName, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on one copy of ``role`` and return its answer: the rollout role runs it with the
        synced weights and keeps no cached state from it (no rollout may be in flight); every learner rank
        runs it (collectives need all of them) and rank 0 answers."""

    @abstractmethod
    def shutdown(self) -> None: ...

    def rollout(self, tasks: list[Any], step: int) -> list[Trajectory]:
        return self.submit_rollout(tasks, step).result()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
