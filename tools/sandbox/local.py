"""`local` backend: bubblewrap namespaces + rlimits + a non-root user, on this machine.

With bwrap (preferred) the code runs in fresh user/pid/net/ipc/uts/mount namespaces: no network (an
empty net namespace), only ``local.ro_paths`` visible and read-only, private size-limited tmpfs for
``/workspace`` (the cwd) and ``/tmp``, its own /proc (host processes invisible), a new session,
killed with its parent. Whatever it starts dies with it: when the namespace's PID 1 exits or is killed,
the kernel kills every process in the namespace. Without bwrap it falls back to rlimits + a non-root
user + a new session in a private temp dir, and logs a warning: that mode is *not* filesystem- or
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
from tools.sandbox.base import ExecResult, Sandbox, SandboxError
from tools.sandbox.process import run_captured

log = logging.getLogger(__name__)

WORKDIR = "/workspace"
CODE_DIR = "/sandbox"
_MB = 1024 * 1024


def _rlimits(limits: SandboxLimits):
    """preexec_fn setting the rlimits in the child (after the uid switch, before exec)."""
    cpu = int(limits.cpu_time_s)
    table = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the soft limit, SIGKILL a second later
        (resource.RLIMIT_AS, (limits.memory_mb * _MB,) * 2),
        (resource.RLIMIT_NPROC, (limits.max_processes,) * 2),
        (resource.RLIMIT_FSIZE, (limits.max_file_size_mb * _MB,) * 2),
        (resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]

    def apply() -> None:
        for res, value in table:
            resource.setrlimit(res, value)

    return apply


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
             *_ro_args(ro_paths), "--proc", "/proc", "--dev", "/dev", "--", python, "-I", "-c", "pass"],
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
        argv += ["--proc", "/proc", "--dev", "/dev",
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
        if timeout <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        host_dir = tempfile.mkdtemp(prefix="reopold-sbx-")
        try:
            os.chmod(host_dir, 0o755)
            with open(os.path.join(host_dir, "main.py"), "w", encoding="utf-8") as f:
                f.write(code)
            stdin_path = None
            if stdin is not None:
                stdin_path = os.path.join(host_dir, "stdin")
                with open(stdin_path, "w", encoding="utf-8") as f:
                    f.write(stdin)
            if self.bwrap:
                argv, env, cwd = self._bwrap_argv(host_dir), {}, None
            else:
                cwd = os.path.join(host_dir, "work")
                os.mkdir(cwd, 0o700)
                if self.uid is not None:
                    os.chown(cwd, self.uid, self.gid)
                argv = [self.cfg.python, "-I", os.path.join(host_dir, "main.py")]
                env = self._child_env(cwd)
            cap = run_captured(
                argv, stdin_path=stdin_path, timeout_s=timeout, max_output_bytes=self.limits.max_output_bytes,
                env=env, cwd=cwd, user=self.uid, group=self.gid, preexec_fn=_rlimits(self.limits),
            )
        finally:
            shutil.rmtree(host_dir, ignore_errors=True)
        code_ = cap.returncode
        if self.bwrap and code_ > 128 and not cap.timed_out:  # bwrap reports a signalled child as 128+N
            code_ = -(code_ - 128)
        return ExecResult(
            stdout=cap.stdout, stderr=cap.stderr, exit_code=code_, timed_out=cap.timed_out,
            killed_reason=killed_reason(code_, cap.timed_out, cap.output_exceeded, cap.stderr),
            duration_s=cap.duration_s, truncated=cap.truncated,
        )


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
