"""Run a scoring function in a worker process that is killed when it overruns its time.

Why a process: math-verify (sympy) can spend unbounded time on a pathological answer
(``\\boxed{9^{9^{9^{9}}}}``), inside C code that holds the GIL, so neither a thread timeout nor
math-verify's own SIGALRM timeout (main thread only; rollouts score from a thread pool) can stop it.
A process can always be killed. Workers come from a ``forkserver`` that has the scoring modules
preloaded, so replacing a killed worker costs a fork, not a fresh sympy import.

`WorkerPool.call(func, *args, timeout_s=)` returns ``(True, result)`` or ``(False, reason)``; it is
thread-safe and never raises for what the function does.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing as mp
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

PRELOAD = ["envs.scoring", "math_verify"]


def _serve(conn: Connection) -> None:
    """Worker loop: say it is ready, then receive ``(module, function, args)`` and send back
    ``(ok, result or error text)``."""
    for module in PRELOAD:  # already imported when forked from the preloaded forkserver
        importlib.import_module(module)
    conn.send("ready")
    while True:
        try:
            module, name, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            out: tuple[bool, Any] = (True, getattr(importlib.import_module(module), name)(*args))
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a failed score
            out = (False, f"{type(exc).__name__}: {str(exc)[:200]}")
            log.debug("scoring worker: %s", traceback.format_exc())
        try:
            conn.send(out)
        except (OSError, ValueError):
            return


STARTUP_TIMEOUT_S = 120.0  # the first worker imports sympy; a call's own timeout starts once it is up


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="reopold-scoring")
        self.proc.start()
        child.close()
        if not (self.conn.poll(STARTUP_TIMEOUT_S) and self.conn.recv() == "ready"):
            self.stop()
            raise RuntimeError(f"the scoring worker did not start within {STARTUP_TIMEOUT_S:g} s")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """Up to ``size`` worker processes; a call waits for an idle one (threads share the pool)."""

    def __init__(self, size: int = 2) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._idle: list[_Worker] = []
        self._started = 0
        self._cond = threading.Condition()
        self._ctx: Any = None

    def _context(self) -> Any:
        if self._ctx is None:
            try:
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload(PRELOAD)
            except ValueError:  # no forkserver on this platform
                ctx = mp.get_context("spawn")
            self._ctx = ctx
        return self._ctx

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._started >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return _Worker(self._context())
        except BaseException:
            self._release(None)
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is None:
                self._started -= 1
            else:
                self._idle.append(worker)
            self._cond.notify()

    def call(self, module: str, name: str, *args: Any, timeout_s: float) -> tuple[bool, Any]:
        """Run ``module.name(*args)`` in a worker: ``(True, result)``, or ``(False, why)`` on a timeout,
        an exception in the function, or a worker that died or could not start."""
        try:
            worker = self._acquire()
        except (RuntimeError, OSError, EOFError) as exc:
            log.error("scoring worker: %s", exc)
            return False, f"no scoring worker ({exc})"
        try:
            worker.conn.send((module, name, args))
            if worker.conn.poll(timeout_s):
                ok, out = worker.conn.recv()
                self._release(worker)
                return ok, out
            why = f"timed out after {timeout_s:g} s"
        except (EOFError, OSError) as exc:
            why = f"the worker process died ({type(exc).__name__})"
        worker.stop()
        self._release(None)
        return False, why

    def warm_up(self) -> None:
        """Start one worker now (the first start imports sympy: seconds), so no call waits for it."""
        self._release(self._acquire())

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._started -= len(idle)
        for w in idle:
            w.stop()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool() -> WorkerPool:
    """The process-wide scoring pool (started on first use, stopped at exit)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool()
            atexit.register(_POOL.close)
        return _POOL
