"""LocalBackend: every role in this process, the default (`distributed=single`).

It runs the same chunks with the same seeds as RayBackend, one after another, so a single-process run
and a Ray run with the same seed train on the same episodes. A "submitted" rollout runs immediately,
which in async mode gives exactly Ray's semantics (step k+1 sampled with the weights of step k).
"""

from __future__ import annotations

import time
from typing import Any

from reopold_agents.distributed.backend import Backend, RolloutHandle, RolloutStats
from reopold_agents.distributed.chunks import join_chunks, make_chunks
from reopold_agents.distributed.roles import RoleFactories
from reopold_agents.distributed.workers import LearnerWorker, RolloutWorker, TeacherWorker
from reopold_agents.trajectory import Trajectory


class _DoneHandle(RolloutHandle):
    def __init__(self, trajectories: list[Trajectory], stats: RolloutStats) -> None:
        self._trajectories = trajectories
        self.stats = stats

    def result(self) -> list[Trajectory]:
        return self._trajectories


class LocalBackend(Backend):
    """One rollout worker, one teacher, one learner, all in-process; weights are copied, not shared,
    so the rollout engine holds exactly the synced version (needed for async mode's lag semantics)."""

    def __init__(self, cfg: Any, factories: RoleFactories) -> None:
        super().__init__(cfg)
        self.learner = LearnerWorker(factories, cfg)
        self.teacher = TeacherWorker(factories, cfg)
        self.worker = RolloutWorker(factories, cfg, 0)
        self.sync_weights()

    def submit_rollout(self, tasks: list[Any], step: int) -> RolloutHandle:
        start = time.perf_counter()
        chunks = make_chunks(tasks, self.dcfg.rollout_chunk_size, self.seed, step)
        results: dict[int, list[Trajectory]] = {}
        stats = RolloutStats(chunks=len(chunks))
        for chunk in chunks:
            results[chunk.index], busy = self.worker.run(chunk)
            stats.busy_seconds += busy
        trajectories = join_chunks(results, len(chunks))
        stats.episodes = len(trajectories)
        stats.seconds = time.perf_counter() - start
        return _DoneHandle(trajectories, stats)

    def score(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        return self.teacher.score(trajectories)

    def update(self, trajectories: list[Trajectory], step: int) -> tuple[dict[str, float], int]:
        return self.learner.update(trajectories, step)

    def sync_weights(self) -> int:
        state, version = self.learner.weights()
        return self.worker.load_weights(state, version)

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        self.learner.save(directory, step, data_state)

    def load(self, directory: str) -> Any:
        state = self.learner.load(directory)
        self.sync_weights()
        return state

    def state_dict(self) -> dict[str, Any]:
        return self.learner.weights()[0]

    def shutdown(self) -> None:
        for role in (self.worker.role, self.learner.role):
            close = getattr(role, "close", None)
            if callable(close):
                close()
