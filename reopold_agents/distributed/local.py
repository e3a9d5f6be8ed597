"""LocalBackend: every role in this process, the default (``distributed=single``).

It runs the same chunks with the same seeds as RayBackend, one after another, so a single-process run
and a Ray run with the same seed train on the same episodes. The rollout engine shares the learner's
student module (no copy: a sync only drops the engine's cached key/values). That is exact in async mode too: a submitted
rollout runs at once, so step k+1 is sampled with the weights of step k, before step k's update.
With a LoRA student (``model.lora``) ``model.teacher=self`` scores with that module too, adapters disabled.
"""

from __future__ import annotations

import time
from typing import Any

from reopold_agents.config.schema import RunConfig
from reopold_agents.distributed.backend import Backend, ChunkedRolloutStats, RoleName, RolloutHandle
from reopold_agents.distributed.chunks import join_chunks, make_chunks
from reopold_agents.roles import LearnerRole, RolloutRole, TeacherRole
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.trajectory import Batch, Trajectory


class _DoneHandle(RolloutHandle):
    def __init__(self, trajectories: list[Trajectory], stats: ChunkedRolloutStats) -> None:
        self._trajectories = trajectories
        self.stats = stats

    def result(self) -> list[Trajectory]:
        return self._trajectories


class LocalBackend(Backend):
    """One rollout worker, one teacher, one learner, all in-process."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.learner = LearnerRole(cfg)
        # a LoRA student's frozen base is model.teacher=self's teacher: shared, not loaded twice
        self.teacher = TeacherRole(cfg, student=self.learner.model)
        self.worker = RolloutRole(cfg, 0, student=self.learner.model)
        self.pad_token_id = self.worker.pad_token_id()
        self.sync_weights()

    def submit_rollout(self, tasks: list[Any], step: int) -> RolloutHandle:
        start = time.perf_counter()
        chunks = make_chunks(tasks, self.dcfg.rollout_chunk_size, self.seed, step)
        results: dict[int, list[Trajectory]] = {}
        stats = ChunkedRolloutStats(chunks=len(chunks))
        for chunk in chunks:
            results[chunk.index], chunk_stats = self.worker.run(chunk)
            stats.add_chunk(chunk_stats)
        trajectories = join_chunks(results, len(chunks))
        stats.episodes = len(trajectories)
        stats.seconds = time.perf_counter() - start
        return _DoneHandle(trajectories, stats)

    def score(self, batch: Batch) -> TeacherScores | None:
        return self.teacher.score(batch)

    def update(self, batch: Batch, step: int) -> tuple[dict[str, float], int]:
        return self.learner.update(batch, step)

    def sync_weights(self) -> int:
        # The HF engine runs the learner's own module (nothing is copied; its cached key/values are
        # dropped); an engine with weights of its own (vLLM) copies them in.
        return self.worker.load_weights(self.learner.model, self.learner.version)

    def evaluate(self, step: int) -> dict[str, float]:
        return self.worker.evaluate(step)

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        self.learner.save(directory, step, data_state)

    def load(self, directory: str) -> Any:
        state = self.learner.load(directory)
        self.sync_weights()
        return state

    def ask(self, role: RoleName, method: str, *args: Any, **kwargs: Any) -> Any:
        target = {"rollout": self.worker, "teacher": self.teacher, "learner": self.learner}[role]
        answer = getattr(target, method)(*args, **kwargs)
        if role == "rollout":
            self.sync_weights()  # same weights and version; drops the engine's cached key/values of the call
        return answer

    def shutdown(self) -> None:
        for role in (self.worker, self.teacher, self.learner):
            role.close()
