"""Run a scoring function contained, in a process that is killed when it overruns its time.

Why a process: math-verify (sympy) can spend unbounded time on a pathological answer
(``\\boxed{9^{9^{9^{9}}}}``), inside C code that holds the GIL, so neither a thread timeout nor
math-verify's own SIGALRM timeout (main thread only; rollouts score from a thread pool) can stop it.
Why contained: some third-party scorers ``eval`` the answer (reasoning-gym's countdown and friends, through
``sympy.parse_expr``), so the model's text must never reach them in the trainer's process or with its
privileges. Each worker is started by `envs.scoring_sandbox.launch` (bubblewrap namespaces, read-only
root, no network, private /tmp, an unprivileged uid as root, rlimits, seccomp); where that containment is
unavailable no worker starts and every call fails with the reason (the answer scores 0).

A worker is a fresh interpreter running this file as a script (not multiprocessing, which would re-import
the caller's ``__main__``, and not ``-m``, which would import the ``envs`` package and torch with it). It
imports the scorers once, loads each scoring file by path (calling its ``warm_up()`` if it has one), and
then, per request, **forks a child** that runs the function: the child drops the protocol pipes, gets an
RLIMIT_CPU, and is killed at ``timeout_s``. So one answer's code can neither change what later answers are
scored with nor forge their replies, and a timed-out answer costs a fork, not a new worker. A request may
name a ``prepare`` function run in the worker itself before the fork, for work on **trusted** arguments
only (building a reasoning-gym dataset from the task config) that the children then share.

Requests go to the worker as length-prefixed pickles; replies come back as length-prefixed JSON of at most
`MAX_REPLY_BYTES` (the trainer never unpickles what a worker sends). `WorkerPool.call(path, function,
*args, timeout_s=)` returns ``(True, result)`` or ``(False, reason)``; it is thread-safe and never raises for
what the function does.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import logging
import math
import os
import pickle
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

log = logging.getLogger(__name__)

PRELOAD = ("math_verify",)
OPTIONAL_PRELOAD = ("reasoning_gym",)  # the bench extra: imported once in the worker when installed
STARTUP_TIMEOUT_S = 120.0  # a worker imports sympy; a call's own timeout starts once it is up
FORK_GRACE_S = 3.0  # the worker kills a child at timeout_s; the pool kills the worker this much later
PREPARE_ALLOWANCE_S = 60.0  # extra wait for a request whose trusted `prepare` step runs first
MAX_REPLY_BYTES = 256 * 1024
WORKER_FILE = os.path.abspath(__file__)
_HEADER = struct.Struct("<Q")


class ProtocolError(ValueError):
    """A worker sent something that is not a well-formed reply (too large, not JSON, wrong shape)."""


def _send_request(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("the scoring worker closed its output")
    return data


def _recv_request(stream: IO[bytes]) -> Any:
    (n,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, n))


def _send_reply(stream: IO[bytes], reply: list[Any]) -> None:
    data = json.dumps(reply).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def recv_reply(stream: IO[bytes]) -> tuple[bool, Any]:
    """One reply ``[ok, value]`` from a worker, checked: a worker is contained, not trusted."""
    (n,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    if n > MAX_REPLY_BYTES:
        raise ProtocolError(f"a reply of {n} bytes (limit {MAX_REPLY_BYTES})")
    try:
        reply = json.loads(_read_exact(stream, n))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"a reply that is not JSON ({type(exc).__name__})") from None
    if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bool)):
        raise ProtocolError("a reply that is not [ok, value]")
    if not reply[0] and not isinstance(reply[1], str):
        raise ProtocolError("a failure reply without a reason")
    return reply[0], reply[1]


# ------------------------------------------------------------------------------------- worker side


def _load(path: str, cache: dict[str, Any]) -> Any:
    if path not in cache:
        spec = importlib.util.spec_from_file_location(f"reopold_scoring_{len(cache)}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        warm_up = getattr(module, "warm_up", None)
        if callable(warm_up):
            warm_up()  # imports and caches the children then share (no model text involved)
        cache[path] = module
    return cache[path]


def _failure(exc: BaseException) -> list[Any]:
    try:
        detail = str(exc)[:200]
    except Exception:  # noqa: BLE001 - a hostile __str__
        detail = "?"
    return [False, f"{type(exc).__name__}: {detail}"]


def _child(fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float, write_fd: int,
           protocol_fds: tuple[int, ...]) -> None:
    """In the forked child: give up the protocol pipes, bound CPU, run ``fn``, write one JSON reply, exit."""
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in protocol_fds:  # answer code never holds the pipes to the trainer
            os.dup2(devnull, fd)
        cpu = int(math.ceil(timeout_s)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        try:
            reply = [True, fn(*args)]
        except BaseException as exc:  # noqa: BLE001 - reported as a failed score (SystemExit included)
            reply = _failure(exc)
        try:
            data = json.dumps(reply).encode()
        except (TypeError, ValueError):
            data = json.dumps([False, "the scorer returned a value that is not plain data"]).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    finally:
        os._exit(0)


def _read_child(read_fd: int, deadline: float) -> tuple[bytes, bool, bool]:
    """(data, timed_out, too_large) from the child's pipe until EOF or the deadline."""
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(buf), True, False
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return bytes(buf), False, False
        buf += chunk
        if len(buf) > MAX_REPLY_BYTES:
            return bytes(buf), False, True


def run_forked(fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float, protocol_fds: tuple[int, ...]) -> list[Any]:
    """``fn(*args)`` in a forked child killed (with its process group) after ``timeout_s``: ``[ok, value]``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(fn, args, timeout_s, write_fd, protocol_fds)
    os.close(write_fd)
    try:
        data, timed_out, too_large = _read_child(read_fd, time.monotonic() + timeout_s)
    finally:
        os.close(read_fd)
        for kill in (os.killpg, os.kill):  # the group: whatever the answer's code started, too
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _, status = os.waitpid(pid, 0)
    if timed_out:
        return [False, f"timed out after {timeout_s:g} s"]
    if too_large:
        return [False, f"the scorer's reply is over {MAX_REPLY_BYTES} bytes"]
    try:
        reply = json.loads(data)
    except (ValueError, RecursionError):
        reply = None
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bool):
        return reply
    if os.WIFSIGNALED(status):
        return [False, f"the scoring process died ({signal.Signals(os.WTERMSIG(status)).name})"]
    return [False, "the scoring process ended without a reply"]


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """Worker loop: say it is ready, then answer ``(file, function, args, timeout_s, prepare)`` with ``[ok, result]``."""
    for module in PRELOAD:
        importlib.import_module(module)
    for module in OPTIONAL_PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    _send_reply(out, [True, "ready"])
    modules: dict[str, Any] = {}
    protocol_fds = (inp.fileno(), out.fileno())
    while True:
        try:
            path, name, args, timeout_s, prepare = _recv_request(inp)
        except EOFError:
            return
        try:
            module = _load(path, modules)
            if prepare is not None:  # trusted arguments only (see the module docstring)
                getattr(module, prepare[0])(*prepare[1])
            fn = getattr(module, name)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a failed score
            reply = _failure(exc)
        else:
            try:
                reply = run_forked(fn, tuple(args), float(timeout_s), protocol_fds)
            except OSError as exc:  # fork or pipe refused (process or descriptor limit): this answer fails
                reply = _failure(exc)
        _send_reply(out, reply)


def _harden() -> None:
    """Worker start: no inherited descriptor beyond stdio, and not dumpable (a child cannot read or write
    this process's memory through /proc)."""
    os.closerange(3, 65536)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------- trainer side


class _Spawner:
    """Starts workers from one long-lived thread: ``bwrap --die-with-parent`` ties a worker's life to the
    *thread* that started it, and pool calls come from short-lived threads too."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], list[Any], threading.Event]] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="reopold-scoring-spawner").start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                box.append((False, exc))
            done.set()

    def run(self, fn: Callable[[], Any]) -> Any:
        box: list[Any] = []
        done = threading.Event()
        self._jobs.put((fn, box, done))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> _Spawner:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = _Spawner()
        return _SPAWNER


class _Worker:
    def __init__(self, kernels: tuple[str, ...]) -> None:
        from envs.scoring_sandbox import launch

        self.launch = launch([WORKER_FILE], [WORKER_FILE, *kernels])
        try:
            self.proc = _spawner().run(lambda: subprocess.Popen(
                self.launch.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                close_fds=True, env={}, preexec_fn=self.launch.preexec_fn,
            ))
        except BaseException:
            self.launch.cleanup()
            raise
        ready = _call_with_timeout(lambda: recv_reply(self.proc.stdout), STARTUP_TIMEOUT_S)  # type: ignore[arg-type]
        if ready != (True, (True, "ready")):
            self.stop()
            raise RuntimeError(f"the scoring worker did not start within {STARTUP_TIMEOUT_S:g} s ({ready[1]})")

    def ask(self, request: Any, timeout_s: float) -> tuple[bool, Any]:
        _send_request(self.proc.stdin, request)  # type: ignore[arg-type]
        return _call_with_timeout(lambda: recv_reply(self.proc.stdout), timeout_s)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        survivors = self.launch.cleanup()
        if survivors:
            log.error("scoring worker: processes %s of a stopped worker survived SIGKILL", survivors)


def _call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, Any]:
    """``(True, fn())`` if it returns within ``timeout_s``, else ``(False, "timed out")``; a reader
    thread blocks on the pipe, and killing the worker (the caller's next move) releases it."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except (EOFError, OSError, ValueError) as exc:  # ProtocolError is a ValueError
            box.append((False, f"the worker process died or misbehaved ({type(exc).__name__}: {exc})"))

    t = threading.Thread(target=target, daemon=True, name="reopold-scoring-read")
    t.start()
    t.join(timeout_s)
    if not box:
        return False, f"timed out after {timeout_s:g} s"
    ok, value = box[0]
    return (ok, value)


class WorkerPool:
    """Up to ``size`` contained worker processes able to run the scoring files ``kernels`` (only those
    are visible inside); a call waits for an idle worker (threads share the pool)."""

    def __init__(self, size: int = 2, kernels: tuple[str, ...] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if kernels is None:
            kernels = (os.path.join(os.path.dirname(WORKER_FILE), "scoring_kernel.py"),)
        self.kernels = tuple(os.path.abspath(k) for k in kernels)
        self.size = size
        self._idle: list[_Worker] = []
        self._started = 0
        self._cond = threading.Condition()
        self._logged: set[str] = set()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._started >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return _Worker(self.kernels)
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

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.error("scoring worker: %s", message)

    def call(self, path: str, name: str, *args: Any, timeout_s: float,
             prepare: tuple[str, tuple[Any, ...]] | None = None) -> tuple[bool, Any]:
        """Run function ``name`` of the scoring file ``path`` in a contained worker: ``(True, result)``, or
        ``(False, why)`` on a timeout, an exception in the function, or a worker that died, misbehaved or
        could not start (no containment here included). ``prepare=(function, args)`` runs first in the
        worker itself: give it trusted arguments only, never model text."""
        path = os.path.abspath(path)
        if path not in self.kernels:
            return False, f"{path} is not one of this pool's scoring files {list(self.kernels)}"
        try:
            worker = self._acquire()
        except (RuntimeError, OSError, EOFError) as exc:
            self._log_once(str(exc))
            return False, f"no scoring worker ({exc})"
        wait_s = timeout_s + FORK_GRACE_S + (PREPARE_ALLOWANCE_S if prepare is not None else 0.0)
        try:
            ok, reply = worker.ask((path, name, args, timeout_s, prepare), wait_s)
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
            worker = _Worker(self.kernels)
        except (RuntimeError, OSError, EOFError) as exc:
            self._log_once(str(exc))
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
    _harden()
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print in a scoring library must not corrupt the protocol stream
    serve(sys.stdin.buffer, protocol_out)
