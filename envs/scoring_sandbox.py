"""How the scoring worker is started contained: bubblewrap namespaces, an unprivileged uid, rlimits, seccomp.

Third-party scorers get model text, and some of them ``eval`` it (reasoning-gym's countdown, puzzle24,
polynomial_multiplication... through ``sympy.parse_expr``). So the worker that runs them (`envs.scoring_worker`)
never runs as the trainer: `launch` builds a ``bwrap`` command line, the same containment as the `local`
code sandbox (`tools/sandbox/local.py`):

- fresh user/pid/net/ipc/uts/mount namespaces: no network, no host process visible;
- a read-only root holding only the system library folders, the Python installation and virtual
  environment, and the scoring files (each read-only); a private, size-limited tmpfs ``/tmp``; a small
  read-only ``/dev``. No host path is writable;
- an environment built from nothing; rlimits on memory, open files, file size, core dumps;
- the seccomp filter of `tools.sandbox.seccomp` under ``no_new_privs``; a new session keyring;
- as root, a per-worker ephemeral uid with no groups (`tools.sandbox.containment`) and a process limit.

As root the ephemeral uid may not be able to reach the Python installation (pyenv under a 0700 ``/root``),
so the child first binds each needed path onto an empty staging folder in a private mount namespace of
its own, then drops to the uid and hands bwrap the staging folder (`_StageMounts`): no host permission
changes, and the bind exists only for that worker.

Fail closed: when bwrap is missing or cannot build its namespaces, `launch` raises `ContainmentUnavailable`
with the reason, and the answer scores 0 saying so (docs/sandbox.md).
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

SYSTEM_RO_PATHS = ("/usr", "/bin", "/lib", "/lib64", "/sbin")
NOBODY = 65534
STAGE_PREFIX = "reopold-scoring-"  # + pid of the process that started the worker
_MB = 1024 * 1024
_CLONE_NEWNS, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x00020000, 4096, 16384, 1 << 18


class ContainmentUnavailable(RuntimeError):
    """No containment can be built on this machine: third-party scorers are not run at all."""


@dataclass(frozen=True)
class ScoringLimits:
    """Per-worker bounds (the wall-clock limit is the caller's ``timeout_s``; each answer's process
    also gets RLIMIT_CPU = timeout + 1 s in the worker)."""

    memory_mb: int = 2048  # RLIMIT_AS of every process in the worker (sympy + reasoning-gym + numpy: ~320 MB)
    max_open_files: int = 64
    max_file_size_mb: int = 1
    max_processes: int = 32  # RLIMIT_NPROC of the worker's own uid (as root only: it is per-uid)
    tmp_mb: int = 16  # the private /tmp


@dataclass
class Launch:
    """A ready command line for one worker, and what to undo when it stops."""

    argv: list[str]
    preexec_fn: Callable[[], None]
    uid: int | None = None  # the worker's ephemeral uid (root only)
    stage_dir: str | None = None

    def cleanup(self) -> list[int]:
        """Kill whatever is left of the worker's uid and remove the staging folder; returns survivors."""
        from tools.sandbox.containment import kill_uid, release_uid

        survivors: list[int] = []
        if self.uid is not None:
            survivors = kill_uid(self.uid, 5.0)
            if not survivors:
                release_uid(self.uid)  # a uid with survivors is never handed out again
        if self.stage_dir is not None:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
        return survivors


def _remove_stale_stages() -> None:
    """Remove the (empty) staging folders of processes that ended without stopping their workers."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(STAGE_PREFIX):].split("-", 1)[0]
        if not (name.startswith(STAGE_PREFIX) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _is_under(path: str, parents: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def python_paths() -> list[str]:
    """The folders the interpreter needs (installation and virtual environment) outside the system folders,
    parents first, nested ones dropped."""
    found: list[str] = []
    for p in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix), sys.prefix,
                     os.path.realpath(sys.prefix)}, key=len):
        if os.path.isdir(p) and not _is_under(p, SYSTEM_RO_PATHS) and not _is_under(p, found):
            found.append(p)
    return found


class _StageMounts:
    """Child side, as root: a private mount namespace in which each host path is bound onto its staging
    target (prepared in the parent: no allocation after fork)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = [(s.encode(), t.encode()) for s, t in pairs]
        self.libc = ctypes.CDLL(None, use_errno=True)

    def __call__(self) -> None:
        if self.libc.unshare(_CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if self.libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        for src, target in self.pairs:
            if self.libc.mount(src, target, None, _MS_BIND | _MS_REC, None) != 0:
                raise OSError(ctypes.get_errno(), f"bind {src.decode()}")


class _Preexec:
    def __init__(self, steps: list[Callable[[], None]]) -> None:
        self.steps = steps

    def __call__(self) -> None:
        for step in self.steps:
            step()


def _rlimits(limits: ScoringLimits, per_uid: bool) -> list[tuple[int, tuple[int, int]]]:
    out = [
        (resource.RLIMIT_AS, (limits.memory_mb * _MB,) * 2),
        (resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2),
        (resource.RLIMIT_FSIZE, (limits.max_file_size_mb * _MB,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if per_uid:  # without a uid of its own, NPROC would count (and starve) all of the caller's processes
        out.append((resource.RLIMIT_NPROC, (limits.max_processes,) * 2))
    return out


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def launch(program: Sequence[str], files: Sequence[str], limits: ScoringLimits = ScoringLimits()) -> Launch:
    """A contained command running ``python -I <program...>`` with ``files`` visible read-only at their own paths.

    Raises `ContainmentUnavailable` (with why) when bwrap is missing or unusable here.
    """
    why = unavailable_reason()
    if why is not None:
        raise ContainmentUnavailable(why)
    return _build(program, files, limits)


def _build(program: Sequence[str], files: Sequence[str], limits: ScoringLimits) -> Launch:
    from tools.sandbox import seccomp
    from tools.sandbox.containment import ChildSetup, allocate_uid
    from tools.sandbox.local import _dev_args, _ro_args

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise ContainmentUnavailable("bubblewrap (bwrap) is not installed (apt-get install bubblewrap)")
    root = os.geteuid() == 0
    binds = [*python_paths(), *(os.path.abspath(f) for f in files)]
    uid = allocate_uid() if root else None
    stage_dir = None
    steps: list[Callable[[], None]] = []
    sources = binds
    try:
        if root:
            # The ephemeral uid may not traverse to these paths (e.g. /root is 0700): bind them, as root and
            # in a mount namespace of the child's own, onto targets it can reach.
            _remove_stale_stages()
            stage_dir = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-")
            os.chmod(stage_dir, 0o755)
            sources = []
            for i, path in enumerate(binds):
                target = os.path.join(stage_dir, str(i))
                if os.path.isdir(path):
                    os.mkdir(target)
                else:
                    open(target, "w").close()  # noqa: SIM115 - an empty mount point for a file bind
                sources.append(target)
            steps.append(_StageMounts(list(zip(binds, sources))))
        steps.append(ChildSetup(_rlimits(limits, per_uid=root), uid, NOBODY if root else None, None, seccomp.program()))
    except BaseException:
        Launch([], _Preexec([]), uid, stage_dir).cleanup()
        raise
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--clearenv", "--hostname", "scoring"]
    if root:
        argv += ["--uid", str(NOBODY), "--gid", str(NOBODY)]
    argv += _ro_args(SYSTEM_RO_PATHS)
    argv += ["--proc", "/proc", *_dev_args(_MB), "--size", str(limits.tmp_mb * _MB), "--perms", "1777", "--tmpfs", "/tmp"]
    for src, dest in zip(sources, binds):  # after /tmp: a checkout (or a test's file) under /tmp stays visible
        argv += ["--ro-bind", src, dest]
    argv += ["--remount-ro", "/", "--chdir", "/tmp"]
    for key, value in _env().items():
        argv += ["--setenv", key, value]
    argv += ["--", sys.executable, "-I", *program]
    return Launch(argv, _Preexec(steps), uid, stage_dir)


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when a contained Python starts on this machine, else why not (probed once per process)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (apt-get install bubblewrap; scripts/setup.sh does it)"
    if not os.path.exists(sys.executable):
        return f"the interpreter {sys.executable} does not exist"
    try:
        probe = _build(["-c", "import sys; sys.exit(0)"], [], ScoringLimits())
    except (OSError, RuntimeError) as exc:
        return f"cannot prepare the containment: {type(exc).__name__}: {exc}"
    try:
        proc = subprocess.run(probe.argv, preexec_fn=probe.preexec_fn, capture_output=True, timeout=60, env={})
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap could not start: {type(exc).__name__}: {exc}"
    finally:
        probe.cleanup()
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        return f"bwrap cannot build the scoring sandbox here: {err or f'exit code {proc.returncode}'}"
    return None
