"""The thread policy: how many busy threads each process of a run uses, decided here and nowhere else.

Why: torch runs its intra-op work on an OpenMP team (libgomp in the Linux wheels). The team splits every
large op into equal parts and waits at a barrier for the slowest one, and by default a waiting thread
*spins* (300,000 spins, ~3 ms by libgomp's own estimate) before it sleeps. Beside another CPU-bound process
(a served teacher, a second experiment, CI, Ray actors on one node) the spinning threads take the cores
the descheduled thread they wait for needs: the toolqa step took 3.2x as long beside one busy loop on 2
cores, where losing a core should cost at most 2x (docs/BENCHMARKS.md "Contention"). The policy:

* one intra-op thread count per process, ``distributed.threads``: 0 (the default) keeps torch's own count
  (``OMP_NUM_THREADS`` when the environment sets it, else torch's default, or what the caller set with
  ``torch.set_num_threads``); either way never more than the cores this process may run on
  (``os.sched_getaffinity``). One inter-op thread (the run never forks torch graph work);
* short spinning: ``GOMP_SPINCOUNT=1000`` (~10 us; the count libgomp itself falls back to under
  ``OMP_WAIT_POLICY=ACTIVE`` when it sees more threads than CPUs: a waiting thread gives its core away
  soon when the thread it waits for is descheduled) and ``OMP_WAIT_POLICY=PASSIVE`` (what other OpenMP
  runtimes read; libgomp lets the explicit spin count win). Measured on the toolqa run (2 cores, a VM):
  beside one busy process a step takes 1.7 s instead of libgomp's default 3.2 s; on a quiet machine
  1.3-1.5 s instead of 1.0 s, because a thread that stopped spinning must be woken for the next op (plain
  PASSIVE: 1.9 s quiet; 10,000 spins: 1.0 s quiet but 2.7 s contended). For a machine the run has to
  itself, set ``GOMP_SPINCOUNT=300000`` (libgomp's default). OpenMP reads these once, when torch loads, so
  ``set_env_defaults`` runs in ``reopold_agents/__init__.py`` before torch is imported (the CLI,
  ``python -m reopold_agents.run``, imports the package first). A program that imported torch before
  ``reopold_agents`` keeps whatever its OpenMP runtime already decided; the thread counts are still
  applied (``apply``). If the environment sets either variable, neither is touched;
* child processes inherit ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` equal to the
  process's intra-op count (``apply`` writes them), and the answer-scoring workers run single-threaded
  (``envs/scoring_sandbox.py`` starts them with a cleared environment that sets all three to 1);
* a Ray actor gets ``max(1, int(distributed.ray.cpus_per_<role>))`` threads, capped by the cores it may
  run on (``reopold_agents/roles.py``);
* the rollout's env thread pool (``engine.env_workers``) is not capped: its threads wait on tools,
  sandboxes and the GIL, not on cores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

# How waiting OpenMP threads behave: spin briefly (libgomp), else sleep (other runtimes). Set only when
# the environment sets neither.
WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}
THREAD_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset, cgroups cpusets and Ray narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """Threads of one process: torch's intra-op team and its inter-op pool."""

    intra_op: int
    inter_op: int = 1

    def env(self) -> dict[str, str]:
        """What child processes inherit: the same intra-op count for every OpenMP/BLAS runtime."""
        return {key: str(self.intra_op) for key in THREAD_ENV_KEYS}


def plan(requested: int = 0, cores: int | None = None, current: int | None = None) -> ThreadPlan:
    """``requested`` intra-op threads, or with 0 torch's ``current`` count (``OMP_NUM_THREADS`` when the
    environment set it, else torch's default, or whatever the caller set with ``torch.set_num_threads``);
    never more than the usable ``cores``."""
    cores = max(1, int(usable_cores() if cores is None else cores))
    want = int(requested or 0)
    if want <= 0:
        if current is None:
            import torch

            current = torch.get_num_threads()
        want = max(1, int(current))
    return ThreadPlan(intra_op=min(want, cores))


def actor_plan(cpus: float | None) -> ThreadPlan:
    """A Ray actor's threads: the CPUs it reserved (at least 1: a 0-CPU reservation still runs on one),
    capped by the cores it may run on. ``None``: this process's own plan (no reservation)."""
    if cpus is None:
        return plan(0)
    return plan(max(1, int(cpus)))


def set_env_defaults() -> None:
    """Before torch loads: the short-spinning wait settings (``WAIT_ENV``), unless the environment already
    sets one of them (then it decides alone)."""
    if not any(key in os.environ for key in WAIT_ENV):
        os.environ.update(WAIT_ENV)


def apply(threads: ThreadPlan) -> ThreadPlan:
    """Set torch's thread counts to ``threads`` and export them to child processes; returns what holds.

    ``torch.set_num_interop_threads`` works only before the first inter-op parallel work of the process;
    after that (a second run in one process, a caller that used torch first) the pool stays as it is."""
    import torch

    if torch.get_num_threads() != threads.intra_op:
        torch.set_num_threads(threads.intra_op)
    if torch.get_num_interop_threads() != threads.inter_op:
        try:
            torch.set_num_interop_threads(threads.inter_op)
        except RuntimeError as exc:  # already started: keep it
            log.debug("inter-op threads stay at %d (%s)", torch.get_num_interop_threads(), exc)
    os.environ.update(threads.env())
    set_env_defaults()
    return ThreadPlan(torch.get_num_threads(), torch.get_num_interop_threads())
