"""Run a scoring function in a worker process that is killed when it overruns its time.

Why a process: math-verify (sympy) can spend unbounded time on a pathological answer
(``\\boxed{9^{9^{9^{9}}}}``), inside C code that holds the GIL, so neither a thread timeout nor
math-verify's own SIGALRM timeout (main thread only; rollouts score from a thread pool) can stop it.
A process can always be killed. Each worker is a fresh interpreter running this file as a script
(not multiprocessing, which would re-import the caller's ``__main__`` in every worker, and not ``-m``,
which would import the ``envs`` package and torch with it): it loads the scoring module by path and
speaks length-prefixed pickles over its stdin/stdout. A killed worker's replacement starts in the
background at once, so the next call rarely waits for its import.

`WorkerPool.call(path, function, *args, timeout_s=)` returns ``(True, result)`` or ``(False, reason)``; it is
thread-safe and never raises for what the function does.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from typing import IO, Any

log = logging.getLogger(__name__)

PRELOAD = ["math_verify"]
STARTUP_TIMEOUT_S = 120.0  # a worker imports sympy; a call's own timeout starts once it is up
_HEADER = struct.Struct("<Q")


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _recv(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the scoring worker closed its output")
    (n,) = _HEADER.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("the scoring worker closed its output")
    return pickle.loads(data)


def _load(path: str, cache: dict[str, Any]) -> Any:
    if path not in cache:
        spec = importlib.util.spec_from_file_location(f"reopold_scoring_{len(cache)}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        cache[path] = module
    return cache[path]


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """Worker loop: say it is ready, then answer ``(file, function, args)`` with ``(ok, result)``."""
    for module in PRELOAD:
        importlib.import_module(module)
    _send(out, "ready")
    modules: dict[str, Any] = {}
    while True:
        try:
            path, name, args = _recv(inp)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, getattr(_load(path, modules), name)(*args))
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a failed score
            reply = (False, f"{type(exc).__name__}: {str(exc)[:200]}")
            log.debug("scoring worker: %s", traceback.format_exc())
        _send(out, reply)


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, close_fds=True,
        )
        ready = _call_with_timeout(lambda: _recv(self.proc.stdout), STARTUP_TIMEOUT_S)  # type: ignore[arg-type]
        if ready != (True, "ready"):
            self.stop()
            raise RuntimeError(f"the scoring worker did not start within {STARTUP_TIMEOUT_S:g} s ({ready[1]})")

    def ask(self, request: Any, timeout_s: float) -> tuple[bool, Any]:
        _send(self.proc.stdin, request)  # type: ignore[arg-type]
        return _call_with_timeout(lambda: _recv(self.proc.stdout), timeout_s)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass


def _call_with_timeout(fn: Any, timeout_s: float) -> tuple[bool, Any]:
    """``(True, fn())`` if it returns within ``timeout_s``, else ``(False, "timed out")``; a reader
    thread blocks on the pipe, and killing the worker (the caller's next move) releases it."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            box.append((False, f"the worker process died ({type(exc).__name__})"))

    t = threading.Thread(target=target, daemon=True, name="reopold-scoring-read")
    t.start()
    t.join(timeout_s)
    if not box:
        return False, f"timed out after {timeout_s:g} s"
    ok, value = box[0]
    return (ok, value)


class WorkerPool:
    """Up to ``size`` worker processes; a call waits for an idle one (threads share the pool)."""

    def __init__(self, size: int = 2) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._idle: list[_Worker] = []
        self._started = 0
        self._cond = threading.Condition()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._started >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return _Worker()
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

    def call(self, path: str, name: str, *args: Any, timeout_s: float) -> tuple[bool, Any]:
        """Run function ``name`` of the Python file ``path`` in a worker: ``(True, result)``, or ``(False, why)`` on a timeout,
        an exception in the function, or a worker that died or could not start."""
        try:
            worker = self._acquire()
        except (RuntimeError, OSError, EOFError) as exc:
            log.error("scoring worker: %s", exc)
            return False, f"no scoring worker ({exc})"
        try:
            ok, reply = worker.ask((path, name, args), timeout_s)
        except (OSError, ValueError) as exc:  # a broken pipe to a dead worker
            ok, reply = False, f"the worker process died ({type(exc).__name__})"
        else:
            if ok:
                self._release(worker)
                return reply
        worker.stop()
        self._release(None)
        threading.Thread(target=self.warm_up, daemon=True, name="reopold-scoring-restart").start()
        return False, reply

    def warm_up(self) -> None:
        """Start a worker now if fewer than ``size`` run (a start imports sympy: seconds)."""
        with self._cond:
            if self._started >= self.size:
                return
            self._started += 1
        try:
            worker = _Worker()
        except (RuntimeError, OSError) as exc:
            log.error("scoring worker: %s", exc)
            self._release(None)
            return
        self._release(worker)

    def warm_up_all(self) -> None:
        """Start all ``size`` workers, in parallel."""
        threads = [threading.Thread(target=self.warm_up, daemon=True) for _ in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

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


if __name__ == "__main__":
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print in a scoring library must not corrupt the protocol stream
    serve(sys.stdin.buffer, protocol_out)
