"""The placement abstraction the run CLI drives: one object, same calls whether in-process or on Ray.

``Backend`` owns the step pipeline (rollout -> teacher score -> learner update -> weight sync) and its
asynchronous variant; subclasses only say where each role runs. In async mode the rollout of step k+1
is submitted (with the weights of step k) before step k's update, so it overlaps the update and every
batch after the first is one policy version old; the learner's importance ratio against the rollout's
own log-probs (pi_old = the policy that sampled) corrects for it. ``policy_lag`` reports the gap.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from reopold_agents.trajectory import Trajectory


@dataclass
class RolloutStats:
    """What a rollout cost and survived: chunks redone after worker crashes, workers restarted."""

    episodes: int = 0
    chunks: int = 0
    redone_chunks: int = 0
    worker_restarts: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0  # summed over workers: time spent inside the rollout role


@dataclass
class StepResult:
    """One training step as the run CLI logs it: the trajectories it trained on and its metrics."""

    step: int
    trajectories: list[Trajectory]
    metrics: dict[str, float] = field(default_factory=dict)


class RolloutHandle(ABC):
    """A submitted rollout; ``result()`` blocks until every chunk is back (redone if a worker died)."""

    stats: RolloutStats

    @abstractmethod
    def result(self) -> list[Trajectory]: ...


class Backend(ABC):
    """Rollout workers, teacher and learner placed somewhere; the step pipeline is shared."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.dcfg = cfg.distributed
        self.seed = int(getattr(getattr(cfg, "trainer", None), "seed", 0) or 0)

    # --- placement-specific primitives -------------------------------------------------------
    @abstractmethod
    def submit_rollout(self, tasks: list[Any], step: int) -> RolloutHandle:
        """Start episodes for ``tasks`` with the latest synced weights; may return before they finish."""

    @abstractmethod
    def score(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """Teacher log-probs for every trajectory (same order)."""

    @abstractmethod
    def update(self, trajectories: list[Trajectory], step: int) -> tuple[dict[str, float], int]:
        """One learner step; returns its metrics and the learner version it started from."""

    @abstractmethod
    def sync_weights(self) -> int:
        """Make the learner's current weights the ones the next submitted rollout uses; return the version."""

    @abstractmethod
    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        """Learner checkpoint (reuses the learner role's checkpoint code), with the caller's data state."""

    @abstractmethod
    def load(self, directory: str) -> Any:
        """Restore the learner from ``directory`` (a checkpoint or a folder of them) and make its weights
        the next rollout's; return the role's resume state (``checkpoint.ResumeState``: step, data_state)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The learner's current student weights on CPU (e.g. for an evaluation engine in the driver)."""

    @abstractmethod
    def shutdown(self) -> None: ...

    # --- shared -------------------------------------------------------------------------------
    def rollout(self, tasks: list[Any], step: int) -> list[Trajectory]:
        return self.submit_rollout(tasks, step).result()

    def train(self, tasks_for_step: Callable[[int], list[Any]], start_step: int, end_step: int,
              async_rollout: bool | None = None) -> Iterator[StepResult]:
        """Run steps ``start_step..end_step-1``; ``tasks_for_step(step)`` must be deterministic in ``step``
        (resume and async look-ahead both rely on it). Yields after each update, weights already synced,
        so the caller may checkpoint with ``save`` between steps. ``async_rollout`` defaults to
        ``distributed.async_rollout``; the first step after (re)starting has lag 0, later ones lag 1."""
        async_rollout = bool(self.dcfg.async_rollout if async_rollout is None else async_rollout)
        pending_box: list[RolloutHandle | None] = [None]  # the async look-ahead rollout, if any
        try:
            yield from self._steps(tasks_for_step, start_step, end_step, async_rollout, pending_box)
        finally:
            if pending_box[0] is not None:  # the caller stopped early: finish the look-ahead, don't leak it
                pending_box[0].result()

    def _steps(self, tasks_for_step: Callable[[int], list[Any]], start_step: int, end_step: int,
               async_rollout: bool, pending_box: list[RolloutHandle | None]) -> Iterator[StepResult]:
        for step in range(start_step, end_step):
            pending = pending_box[0]
            t0 = time.perf_counter()
            handle = pending if pending is not None else self.submit_rollout(tasks_for_step(step), step)
            pending_box[0] = None
            trajectories = handle.result()
            t_rollout = time.perf_counter() - t0
            if async_rollout and step + 1 < end_step:
                pending_box[0] = self.submit_rollout(tasks_for_step(step + 1), step + 1)  # overlaps score + update
            t1 = time.perf_counter()
            scored = self.score(trajectories)
            t2 = time.perf_counter()
            learner_metrics, learner_version = self.update(scored, step)
            t3 = time.perf_counter()
            self.sync_weights()
            versions = [int(t.info.get("policy_version", learner_version)) for t in trajectories]
            metrics = dict(learner_metrics)
            metrics.update(
                policy_lag=float(learner_version - min(versions)),
                rollout_wait_s=t_rollout,
                score_s=t2 - t1,
                update_s=t3 - t2,
                rollout_redone_chunks=float(handle.stats.redone_chunks),
                rollout_worker_restarts=float(handle.stats.worker_restarts),
                episodes=float(len(trajectories)),
            )
            yield StepResult(step=step, trajectories=scored, metrics=metrics)  # as trained on: with teacher log-probs

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def make_backend(cfg: Any, factories: Any) -> Backend:
    """The backend ``cfg.distributed.backend`` names, with every role built and initial weights synced."""
    name = cfg.distributed.backend
    if name == "single":
        from reopold_agents.distributed.local import LocalBackend

        return LocalBackend(cfg, factories)
    if name == "ray":
        from reopold_agents.distributed.ray_backend import RayBackend

        return RayBackend(cfg, factories)
    raise ValueError(f"distributed.backend: unknown backend {name!r}; choose single or ray")
