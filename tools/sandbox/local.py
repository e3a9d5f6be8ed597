"""`local` backend: bubblewrap namespaces + a per-run cgroup and uid + rlimits + seccomp, on this machine.

With bwrap (preferred) the code runs in fresh user/pid/net/ipc/uts/mount namespaces: no network (an
empty net namespace), only ``local.ro_paths`` visible and read-only, private size-limited tmpfs for
``/workspace`` (the cwd), ``/tmp`` and ``/dev/shm``, a read-only ``/dev`` with only the harmless
devices, its own /proc (host processes invisible), a new session, killed with its parent.

Containment does not rest on the namespace's PID 1 (same uid as the code, so tamperable): each run
has its own cgroup (`cgroup.py`: memory and pids limits that count SysV shm, memfd and tmpfs pages;
``cgroup.kill`` after the run) and, as root, its own ephemeral uid (`containment.py`), and `run`
returns only after a scan finds no process of the run left. Without a usable cgroup the limits fall
back to rlimits, with a logged warning. Without bwrap it falls back to rlimits + the per-run uid + a
new session in a private temp dir, and logs a warning: that mode is *not* filesystem- or
network-isolated (see docs/sandbox.md).
"""

from __future__ import annotations

import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
import tempfile
from functools import lru_cache

from reopold_agents.config.sandbox import LocalSandboxConfig, SandboxLimits
from tools.sandbox import cgroup, seccomp
from tools.sandbox.base import ExecResult, Sandbox, SandboxError
from tools.sandbox.containment import ChildSetup, allocate_uid, kill_uid, release_uid
from tools.sandbox.process import run_captured

log = logging.getLogger(__name__)

WORKDIR = "/workspace"
CODE_DIR = "/sandbox"
_MB = 1024 * 1024
DEV_MB = 1  # the /dev tmpfs holds only device nodes and symlinks; it is read-only after setup
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SURVIVOR_KILL_S = 5.0


def _rlimits(limits: SandboxLimits) -> list[tuple[int, tuple[int, int]]]:
    """The rlimits of the child: per-process bounds, kept even when a cgroup bounds the whole run
    (RLIMIT_AS turns a big allocation into a catchable MemoryError instead of an OOM kill)."""
    cpu = int(limits.cpu_time_s)
    return [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the soft limit, SIGKILL a second later
        (resource.RLIMIT_AS, (limits.memory_mb * _MB,) * 2),
        (resource.RLIMIT_NPROC, (limits.max_processes,) * 2),
        (resource.RLIMIT_FSIZE, (limits.max_file_size_mb * _MB,) * 2),
        (resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]


def _dev_args(shm_bytes: int) -> list[str]:
    """A small read-only /dev with the harmless devices, and a sized private /dev/shm.

    (bwrap's ``--dev`` mounts an unsized tmpfs, half of RAM, that the code can fill.)
    """
    args = ["--size", str(DEV_MB * _MB), "--tmpfs", "/dev"]
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        args += ["--symlink", f"/proc/self/fd/{i}", f"/dev/{name}"]
    args += ["--symlink", "/proc/self/fd", "/dev/fd", "--dir", "/dev/shm", "--remount-ro", "/dev",
             "--size", str(shm_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
    return args


def _ro_args(ro_paths: list[str] | tuple[str, ...]) -> list[str]:
    """bwrap arguments exposing ``ro_paths`` read-only (symlinks, as in merged-/usr layouts, recreated)."""
    args: list[str] = []
    for path in ro_paths:
        if os.path.islink(path):  # /bin -> usr/bin
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


@lru_cache(maxsize=None)
def _bwrap_works(bwrap: str, uid: int | None, gid: int | None, ro_paths: tuple[str, ...], python: str) -> str | None:
    """Probe bwrap once per setting: None if it can build our namespaces and start Python, else why not."""
    try:
        proc = subprocess.run(
            [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
             *_ro_args(ro_paths), "--proc", "/proc", *_dev_args(_MB), "--", python, "-I", "-c", "pass"],
            capture_output=True, timeout=20, user=uid, group=gid, extra_groups=[] if uid is not None else None,
            env={},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        return "bwrap: " + (proc.stderr.decode(errors="replace").strip() or f"exit code {proc.returncode}")
    return None


class LocalSandbox(Sandbox):
    """Run Python source under bwrap (or rlimits only) as ``local.user``."""

    name = "local"

    def __init__(self, limits: SandboxLimits | None = None, local: LocalSandboxConfig | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.cfg = local or LocalSandboxConfig()
        self.limits.check()
        self.cfg.check()
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(self.cfg.user)
            except KeyError:
                raise SandboxError(f"local.user: no such user {self.cfg.user!r} on this machine") from None
            if pw.pw_uid == 0:
                raise SandboxError(f"local.user: {self.cfg.user!r} is root; pick an unprivileged user")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        else:
            log.warning("local sandbox: not root, so code runs as the current user (uid %d)", os.geteuid())
        if self.cfg.bwrap != "never" and not any(
            self.cfg.python.startswith(p.rstrip("/") + "/") for p in self.cfg.ro_paths
        ):
            raise SandboxError(f"local.python: {self.cfg.python} is not under any of local.ro_paths {self.cfg.ro_paths}")
        if not os.path.exists(self.cfg.python):
            raise SandboxError(f"local.python: {self.cfg.python} does not exist")
        self.bwrap = self._find_bwrap()
        self.cgroups = cgroup.layout()
        if not (self.cgroups.counts_memory and self.cgroups.counts_pids):
            log.warning(
                "local sandbox: no writable cgroup %s controller (%s); memory_mb is RLIMIT_AS per process "
                "(SysV shm, memfd and tmpfs pages are not counted) and max_processes is RLIMIT_NPROC",
                "memory" if not self.cgroups.counts_memory else "pids", "; ".join(self.cgroups.notes) or "none found")
        self.seccomp_filter = seccomp.program()
        if self.seccomp_filter is None:
            log.warning("local sandbox: no seccomp filter for this architecture: ptrace and keyrings are not blocked")

    @property
    def isolated(self) -> bool:
        """True when namespaces (bwrap) are in use, False in the rlimits-only fallback."""
        return self.bwrap is not None

    def _find_bwrap(self) -> str | None:
        if self.cfg.bwrap == "never":
            return None
        path = shutil.which("bwrap")
        if path is None:
            why: str | None = "bwrap is not installed (apt-get install bubblewrap)"
        else:
            why = _bwrap_works(path, self.uid, self.gid, tuple(self.cfg.ro_paths), self.cfg.python)
        if why is None:
            return path
        if self.cfg.bwrap == "always":
            raise SandboxError(f"local.bwrap=always but bubblewrap cannot be used: {why}")
        log.warning("local sandbox: %s; falling back to rlimits only: NO filesystem or network isolation", why)
        return None

    def _bwrap_argv(self, host_dir: str) -> list[str]:
        lim = self.limits
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--clearenv", "--hostname", "sandbox"]
        if self.uid is not None:
            argv += ["--uid", str(self.uid), "--gid", str(self.gid)]
        argv += _ro_args(self.cfg.ro_paths)
        size = str(lim.workdir_mb * _MB)
        argv += ["--proc", "/proc", *_dev_args(lim.workdir_mb * _MB),
                 "--size", size, "--perms", "1777", "--tmpfs", "/tmp",
                 "--size", size, "--perms", "1777", "--tmpfs", WORKDIR,
                 "--ro-bind", host_dir, CODE_DIR, "--remount-ro", "/", "--chdir", WORKDIR]
        for key, value in self._child_env(WORKDIR).items():
            argv += ["--setenv", key, value]
        return argv + ["--", self.cfg.python, "-I", f"{CODE_DIR}/main.py"]

    @staticmethod
    def _child_env(home: str) -> dict[str, str]:
        # Built from nothing: no host variable (tokens, keys, proxies) reaches the code.
        return {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
                "PYTHONDONTWRITEBYTECODE": "1"}

    def run(self, code: str, stdin: str | None = None, timeout_s: float | None = None) -> ExecResult:
        timeout = float(timeout_s if timeout_s is not None else self.limits.timeout_s)
        if not 0 < timeout < float("inf"):
            raise ValueError(f"timeout_s must be a positive finite number, got {timeout}")
        # As root, a fresh uid per run: private files, a per-run NPROC, and a survivor scan by uid.
        run_uid = allocate_uid() if self.uid is not None else None
        group = None
        if self.cgroups.usable:
            try:
                group = cgroup.RunCgroup(self.cgroups, self.limits.memory_mb * _MB, self.limits.max_processes)
            except OSError as exc:
                if run_uid is not None:
                    release_uid(run_uid)
                raise SandboxError(f"local sandbox: cannot create the run's cgroup: {exc}") from None
        host_dir = tempfile.mkdtemp(prefix="reopold-sbx-")  # 0700: only root and the run's uid enter
        try:
            if run_uid is not None:
                os.chown(host_dir, run_uid, self.gid)
            with open(os.path.join(host_dir, "main.py"), "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(code)
            stdin_path = None
            if stdin is not None:
                stdin_path = os.path.join(host_dir, "stdin")
                with open(stdin_path, "w", encoding="utf-8", errors="surrogatepass") as f:
                    f.write(stdin)
            if self.bwrap:
                argv, env, cwd = self._bwrap_argv(host_dir), {}, None
            else:
                cwd = os.path.join(host_dir, "work")
                os.mkdir(cwd, 0o700)
                if run_uid is not None:
                    os.chown(cwd, run_uid, self.gid)
                argv = [self.cfg.python, "-I", os.path.join(host_dir, "main.py")]
                env = self._child_env(cwd)
            setup = ChildSetup(_rlimits(self.limits), run_uid, self.gid if run_uid is not None else None,
                               group, self.seccomp_filter)
            try:
                cap = run_captured(
                    argv, stdin_path=stdin_path, timeout_s=timeout, max_output_bytes=self.limits.max_output_bytes,
                    env=env, cwd=cwd, preexec_fn=setup,
                )
            except subprocess.SubprocessError as exc:  # the child setup failed: a backend problem
                raise SandboxError(f"local sandbox: cannot start the run: {exc}") from None
        finally:
            oom = group.oom_killed() if group is not None else False
            self._reap(group, run_uid)
            shutil.rmtree(host_dir, ignore_errors=True)
        code_ = cap.returncode
        if self.bwrap and code_ > 128 and not cap.timed_out:  # bwrap reports a signalled child as 128+N
            code_ = -(code_ - 128)
        reason = killed_reason(code_, cap.timed_out, cap.output_exceeded, cap.stderr)
        if oom and not cap.timed_out and not cap.output_exceeded:
            reason = "memory limit"
        return ExecResult(
            stdout=cap.stdout, stderr=cap.stderr, exit_code=code_, timed_out=cap.timed_out,
            killed_reason=reason, duration_s=cap.duration_s, truncated=cap.truncated,
        )

    @staticmethod
    def _reap(group: cgroup.RunCgroup | None, run_uid: int | None) -> None:
        """Kill whatever the run left (its cgroup, then its uid) and check that nothing survived."""
        survivors: set[int] = set()
        if group is not None:
            survivors |= group.kill_all(SURVIVOR_KILL_S)
        if run_uid is not None:
            survivors |= set(kill_uid(run_uid, SURVIVOR_KILL_S))
            if not survivors:
                release_uid(run_uid)  # a uid with survivors is never handed out again
        if group is not None:
            group.remove()
        if survivors:
            log.error("local sandbox: processes %s of a finished run could not be killed", sorted(survivors))
            raise SandboxError(f"local sandbox: processes {sorted(survivors)} of the run survived SIGKILL")


def killed_reason(exit_code: int, timed_out: bool, output_exceeded: bool, stderr: str) -> str | None:
    """Why the run ended abnormally, in words a model can act on (None for a normal exit)."""
    if timed_out:
        return "timeout"
    if output_exceeded:
        return "output limit"
    if exit_code < 0:
        sig = -exit_code
        if sig == signal.SIGXCPU:
            return "cpu time limit"
        if sig == signal.SIGXFSZ:
            return "file size limit"
        if sig == signal.SIGKILL:
            return "killed (SIGKILL: cpu time or memory limit)"
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    if exit_code != 0 and "MemoryError" in stderr[-2000:]:
        return "memory limit"
    return None
