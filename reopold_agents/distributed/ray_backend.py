"""RayBackend: rollout workers, teacher scorers and the learner as Ray actors (`distributed=ray`).

Weights travel through the object store: the learner returns its state dict as an object (stored
once per node), and each rollout worker loads it before the first chunk it runs with that version.
The broadcast is lazy, at dispatch, so a rollout submitted before an update (async mode) keeps the
weights it was submitted with. On GPU with ``engine=vllm`` the same ``load_weights`` call goes to the
vLLM engine's weight loader; for large models replace the object store with an NCCL broadcast from
the learner to the vLLM workers (docs/distributed.md).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from reopold_agents.config.schema import RunConfig
from reopold_agents.distributed.backend import Backend, ChunkedRolloutStats, RoleName, RolloutHandle
from reopold_agents.distributed.chunks import join_chunks, make_chunks, shard_by_group
from reopold_agents.distributed.cluster import connect, import_ray
from reopold_agents.distributed.supervisor import ChunkSupervisor
from reopold_agents.roles import LearnerRole, RolloutRole, TeacherRole
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.trajectory import Batch, Trajectory


class _RayRolloutHandle(RolloutHandle):
    def __init__(self, supervisor: ChunkSupervisor, future: Future, num_chunks: int, started: float) -> None:
        self.supervisor = supervisor
        self.stats: ChunkedRolloutStats = supervisor.stats
        self._future = future
        self._num_chunks = num_chunks
        self._started = started
        self._trajectories: list[Trajectory] | None = None

    @property
    def completed(self) -> int:
        return len(self.supervisor.results)

    def result(self) -> list[Trajectory]:
        if self._trajectories is None:
            results = self._future.result()
            self._trajectories = join_chunks(results, self._num_chunks)
            self.stats.seconds = time.perf_counter() - self._started
        return self._trajectories


class RayBackend(Backend):
    """Actors: ``num_rollout_workers`` RolloutRoles (restartable), ``num_teacher_workers`` TeacherRoles
    (restartable, calls retried), ``num_learner_workers`` LearnerRole ranks (not restarted: a job
    resumes from its checkpoint)."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        d = self.rcfg = cfg.distributed.ray
        self.ray = ray = import_ray()
        self._started_ray = connect(d)
        self.learners = [
            ray.remote(LearnerRole)
            .options(num_cpus=d.cpus_per_learner, num_gpus=d.gpus_per_learner, max_restarts=0)
            .remote(cfg, cpus=d.cpus_per_learner, defer=True)
            for _ in range(d.num_learner_workers)
        ]
        self.learner = self.learners[0]  # rank 0: metrics, weights, checkpoints
        self.teachers = [
            ray.remote(TeacherRole)
            .options(num_cpus=d.cpus_per_teacher, num_gpus=d.gpus_per_teacher, max_restarts=d.max_restarts,
                     max_task_retries=d.max_chunk_retries)
            .remote(cfg, cpus=d.cpus_per_teacher)
            for _ in range(d.num_teacher_workers)
        ]
        self.workers = [
            ray.remote(RolloutRole)
            .options(num_cpus=d.cpus_per_rollout_worker, num_gpus=d.gpus_per_rollout_worker,
                     max_restarts=d.max_restarts, max_task_retries=0)  # redo is ours: weights must be re-sent
            .remote(cfg, i, cpus=d.cpus_per_rollout_worker)
            for i in range(d.num_rollout_workers)
        ]
        self.alive = [True] * len(self.workers)
        self._worker_sync = [-1] * len(self.workers)  # id of the broadcast each worker was last sent
        self._sync_id = 0
        self._weights: tuple[Any, int, int] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-supervisor")
        self._active: _RayRolloutHandle | None = None
        self._build_learners()
        # Fail fast (with the actor's own traceback) if any role cannot be built.
        ray.get([a.ready.remote() for a in [*self.teachers, *self.workers]])
        self.pad_token_id = int(ray.get(self.workers[0].pad_token_id.remote()))
        self.sync_weights()

    def _build_learners(self) -> None:
        """One rank: build in place. Several: rendezvous at rank 0's node (torch.distributed env vars,
        as ``torchrun`` would set them; accelerate reads them). Each actor sees only its own GPUs, so
        LOCAL_RANK is 0 everywhere."""
        n = len(self.learners)
        if n == 1:
            self.ray.get(self.learner.build.remote(None))
            return
        host, port = self.ray.get(self.learner.address.remote())
        envs = [
            {"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
             "MASTER_ADDR": host, "MASTER_PORT": str(port)}
            for r in range(n)
        ]
        self.ray.get([a.build.remote(env) for a, env in zip(self.learners, envs)])  # all at once: they rendezvous

    def _on_learners(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every learner rank (collectives need all of them); results in rank order."""
        return self.ray.get([getattr(a, method).remote(*args, **kwargs) for a in self.learners])

    # --- weights -----------------------------------------------------------------------------
    def sync_weights(self) -> int:
        state_ref, version_ref = self.learner.weights.options(num_returns=2).remote(True)
        others = [a.weights.options(num_returns=2).remote(False)[1] for a in self.learners[1:]]
        version = int(self.ray.get(version_ref))
        self.ray.get(others)
        self._sync_id += 1  # identity of this broadcast: after a checkpoint load a version number can repeat
        self._weights = (state_ref, version, self._sync_id)
        return version

    def _ensure_weights(self, worker: int, weights: tuple[Any, int, int]) -> None:
        state_ref, version, sync_id = weights
        if self._worker_sync[worker] != sync_id:
            self.workers[worker].load_weights.remote(state_ref, version)  # actor order: runs before the chunk
            self._worker_sync[worker] = sync_id

    def _forget_weights(self, worker: int) -> None:
        self._worker_sync[worker] = -1  # a restarted actor has its initial weights again

    def worker_pids(self) -> list[int]:
        """Pids of the rollout workers, waiting (up to ``restart_timeout_s``) for any that is restarting."""
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + self.rcfg.restart_timeout_s
        pids = []
        for worker in self.workers:
            while True:
                try:
                    pids.append(int(self.ray.get(worker.ready.remote())))
                    break
                except ActorUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        return pids

    # --- roles -------------------------------------------------------------------------------
    def submit_rollout(self, tasks: list[Any], step: int) -> RolloutHandle:
        if self._active is not None and self._active._trajectories is None:
            raise RuntimeError("submit_rollout: the previous rollout was not collected (call result() first)")
        assert self._weights is not None
        weights = self._weights  # pinned: a later sync_weights does not change this rollout's policy
        chunks = make_chunks(tasks, self.dcfg.rollout_chunk_size, self.seed, step)
        supervisor = ChunkSupervisor(
            self.ray,
            self.workers,
            self.alive,
            chunks,
            ensure_weights=lambda w: self._ensure_weights(w, weights),
            forget_weights=self._forget_weights,
            max_chunk_retries=self.rcfg.max_chunk_retries,
            restart_timeout_s=self.rcfg.restart_timeout_s,
        )
        started = time.perf_counter()
        self._active = _RayRolloutHandle(supervisor, self._executor.submit(supervisor.run), len(chunks), started)
        return self._active

    def score(self, batch: Batch) -> TeacherScores | None:
        """Each teacher actor scores a contiguous block of rows; the blocks are gathered by row."""
        n = min(len(self.teachers), len(batch))
        bounds = [round(i * len(batch) / n) for i in range(n + 1)]
        blocks = [list(range(bounds[i], bounds[i + 1])) for i in range(n)]
        parts = self.ray.get([self.teachers[i].score.remote(batch.select(torch.tensor(rows)))
                              for i, rows in enumerate(blocks)])
        if parts[0] is None:
            return None
        scores = TeacherScores.empty(batch.loss_mask)
        for rows, part in zip(blocks, parts):
            scores.put(rows, part)
        return scores

    def update(self, batch: Batch, step: int) -> tuple[dict[str, float], int]:
        """Each learner rank takes a shard of whole groups; metrics are rank 0's, which the accelerate
        learner reduces over ranks."""
        shards = shard_by_group(batch.group_ids.tolist(), len(self.learners))
        results = self.ray.get([a.update.remote(batch.select(torch.tensor(rows)), step)
                                for a, rows in zip(self.learners, shards)])
        return results[0]

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out evaluation on rollout worker 0 with the last synced weights."""
        assert self._weights is not None
        self._ensure_weights(0, self._weights)
        return self.ray.get(self.workers[0].evaluate.remote(step))

    def ask(self, role: RoleName, method: str, *args: Any, **kwargs: Any) -> Any:
        if role == "learner":
            return self._on_learners(method, *args, **kwargs)[0]
        if role == "teacher":
            return self.ray.get(getattr(self.teachers[0], method).remote(*args, **kwargs))
        if self._active is not None and self._active._trajectories is None:
            raise RuntimeError(f"ask(rollout, {method}): a submitted rollout was not collected (call result() first)")
        assert self._weights is not None
        self._ensure_weights(0, self._weights)
        answer = self.ray.get(getattr(self.workers[0], method).remote(*args, **kwargs))
        self._forget_weights(0)  # worker 0 reloads before its next chunk, dropping the call's cached states
        return answer

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        self._on_learners("save", directory, step, data_state)  # rank 0 writes; FSDP gathers on all

    def load(self, directory: str) -> Any:
        state = self._on_learners("load", directory)[0]
        self.sync_weights()
        return state

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for actor in [*self.workers, *self.teachers, *self.learners]:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        if self._started_ray:
            self.ray.shutdown()
