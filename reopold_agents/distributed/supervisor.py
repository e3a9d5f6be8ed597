"""Dispatching a rollout's chunks over Ray workers and redoing the chunks of workers that crash.

Each worker holds at most one chunk at a time (dynamic load balancing: a free worker takes the next
chunk). When a worker dies mid-chunk (SIGKILL, OOM, node loss), Ray restarts it (``max_restarts``);
the supervisor waits for it to answer again, re-sends the rollout's pinned weights and requeues the
chunk *whole*, so its episodes are redone exactly once: a chunk's result is accepted only from a
call that returned, and only the first time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from reopold_agents.distributed.backend import ChunkedRolloutStats
from reopold_agents.distributed.chunks import Chunk
from reopold_agents.trajectory import Trajectory

PROBE_INTERVAL_S = 0.5


@dataclass
class _Recovery:
    deadline: float
    next_probe: float
    probe: Any = None  # ObjectRef of a pending ready() call


class ChunkSupervisor:
    """Runs ``chunks`` on ``workers`` (Ray actor handles of RolloutRole) until all are back."""

    def __init__(
        self,
        ray: Any,
        workers: list[Any],
        alive: list[bool],
        chunks: list[Chunk],
        ensure_weights: Callable[[int], None],
        forget_weights: Callable[[int], None],
        max_chunk_retries: int,
        restart_timeout_s: float,
    ) -> None:
        self.ray = ray
        self.workers = workers
        self.alive = alive  # shared with the backend: a worker that never came back stays out
        self.chunks = chunks
        self.ensure_weights = ensure_weights
        self.forget_weights = forget_weights
        self.max_chunk_retries = max_chunk_retries
        self.restart_timeout_s = restart_timeout_s
        self.stats = ChunkedRolloutStats(chunks=len(chunks))
        self.results: dict[int, list[Trajectory]] = {}
        self.inflight: dict[int, int] = {}  # worker index -> chunk index (read by tests to aim a kill)
        self._lock = threading.Lock()

    def run(self) -> dict[int, list[Trajectory]]:
        ray = self.ray
        from ray.exceptions import RayActorError

        pending: deque[Chunk] = deque(self.chunks)
        idle: deque[int] = deque(i for i, ok in enumerate(self.alive) if ok)
        refs: dict[Any, tuple[int, Chunk]] = {}
        recovering: dict[int, _Recovery] = {}
        retries: dict[int, int] = {}
        while len(self.results) < len(self.chunks):
            while pending and idle:
                w, chunk = idle.popleft(), pending.popleft()
                self.ensure_weights(w)
                refs[self.workers[w].run.remote(chunk)] = (w, chunk)
                with self._lock:
                    self.inflight[w] = chunk.index
            now = time.monotonic()
            for w, rec in list(recovering.items()):
                if rec.probe is None and now >= rec.next_probe:
                    rec.probe = self.workers[w].ready.remote()
            probes = {rec.probe: w for w, rec in recovering.items() if rec.probe is not None}
            waitable = list(refs) + list(probes)
            if not waitable:
                if not recovering:
                    raise RuntimeError(
                        f"rollout: every rollout worker is dead; {len(self.chunks) - len(self.results)} chunks undone"
                    )
                time.sleep(PROBE_INTERVAL_S / 5)
                continue
            ready, _ = ray.wait(waitable, num_returns=1, timeout=PROBE_INTERVAL_S)
            for ref in ready:
                if ref in refs:
                    w, chunk = refs.pop(ref)
                    with self._lock:
                        self.inflight.pop(w, None)
                    try:
                        trajectories, chunk_stats = ray.get(ref)
                    except RayActorError as exc:  # the worker died (or is restarting) under this chunk
                        retries[chunk.index] = retries.get(chunk.index, 0) + 1
                        if retries[chunk.index] > self.max_chunk_retries:
                            raise RuntimeError(
                                f"rollout: chunk {chunk.index} failed {retries[chunk.index]} times "
                                f"(distributed.max_chunk_retries={self.max_chunk_retries}): {exc}"
                            ) from exc
                        pending.appendleft(chunk)
                        self.stats.redone_chunks += 1
                        self.forget_weights(w)
                        recovering[w] = _Recovery(deadline=time.monotonic() + self.restart_timeout_s,
                                                  next_probe=time.monotonic() + PROBE_INTERVAL_S / 5)
                        continue
                    if chunk.index in self.results:  # cannot happen (one call per chunk at a time); guard anyway
                        raise RuntimeError(f"rollout: chunk {chunk.index} returned twice")
                    self.results[chunk.index] = trajectories
                    self.stats.add_chunk(chunk_stats)
                    idle.append(w)
                else:
                    w = probes[ref]
                    rec = recovering[w]
                    rec.probe = None
                    try:
                        ray.get(ref)
                    except RayActorError:
                        if time.monotonic() > rec.deadline:
                            del recovering[w]
                            self.alive[w] = False  # gave up on it; the other workers take its chunks
                        else:
                            rec.next_probe = time.monotonic() + PROBE_INTERVAL_S
                        continue
                    del recovering[w]
                    self.stats.worker_restarts += 1
                    idle.append(w)
        self.stats.episodes = sum(len(v) for v in self.results.values())
        return self.results
