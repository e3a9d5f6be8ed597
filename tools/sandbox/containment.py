"""What the `local` backend does in the child before exec, and how it finds what a run left behind.

`ChildSetup` runs in ``preexec_fn`` (still root when the caller is root), in this order:

1. join the run's cgroups (`cgroup.RunCgroup.join`), so every later process is counted and killable;
2. join a new, empty session keyring (the caller's session keyring, with its secrets, is left behind);
3. set the rlimits;
4. drop to the run's uid/gid with no supplementary groups;
5. install the seccomp filter (`seccomp.py`) under ``no_new_privs``.

Each run gets its own **ephemeral uid** (`allocate_uid`) when the caller is root: a uid no account
and no running process has. So runs cannot read each other's files even without a mount namespace
(the rlimits-only fallback), RLIMIT_NPROC counts one run's processes only, the uid's kernel user
keyring is fresh, and `processes_of` can find every survivor of a run by uid, even without cgroups.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import random
import resource
import signal
import threading
import time

from tools.sandbox import seccomp
from tools.sandbox.cgroup import RunCgroup

EPHEMERAL_UID_BASE = 1_600_000_000  # far above login and system accounts, below 2**31
EPHEMERAL_UID_SPAN = 2**24
_TAKEN: set[int] = set()  # uids handed to runs of this process that have not ended yet
_TAKEN_LOCK = threading.Lock()


def _running_uids() -> set[int]:
    uids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                uids.add(os.stat(f"/proc/{pid}").st_uid)
            except OSError:
                pass
    return uids


def allocate_uid(rng: random.Random | None = None) -> int:
    """A uid that no account, no running process and no live run of this process uses; give it
    back with `release_uid` once the run's processes are gone."""
    rng = rng or random.SystemRandom()
    busy = _running_uids()
    with _TAKEN_LOCK:
        for _ in range(100):
            uid = EPHEMERAL_UID_BASE + rng.randrange(EPHEMERAL_UID_SPAN)
            if uid in busy or uid in _TAKEN:
                continue
            try:
                pwd.getpwuid(uid)
            except KeyError:
                _TAKEN.add(uid)
                return uid
    raise RuntimeError("no free ephemeral uid found")


def release_uid(uid: int) -> None:
    with _TAKEN_LOCK:
        _TAKEN.discard(uid)


def processes_of(uid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose real uid is ``uid``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid and not fields.get("State", "").strip().startswith("Z"):
            found.append(int(pid))
    return found


def kill_uid(uid: int, within_s: float = 5.0) -> list[int]:
    """SIGKILL every process of ``uid`` until none is left; returns the survivors (empty on success)."""
    deadline = time.monotonic() + within_s
    while True:
        left = processes_of(uid)
        if not left or time.monotonic() > deadline:
            return left
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


class ChildSetup:
    """The ``preexec_fn`` of one run; everything that allocates is prepared in the parent."""

    def __init__(
        self,
        rlimits: list[tuple[int, tuple[int, int]]],
        uid: int | None,
        gid: int | None,
        cgroup: RunCgroup | None,
        seccomp_filter: bytes | None,
    ) -> None:
        self.rlimits = rlimits
        self.uid, self.gid = uid, gid
        self.cgroup = cgroup
        self.procs_files = cgroup.procs_files() if cgroup is not None else []
        self.seccomp = seccomp.Installer(seccomp_filter) if seccomp_filter is not None else None
        self.libc = ctypes.CDLL(None, use_errno=True)

    def __call__(self) -> None:
        pid = str(os.getpid())
        for path in self.procs_files:
            with open(path, "w") as f:
                f.write(pid)
        seccomp.join_new_session_keyring(self.libc)
        for res, value in self.rlimits:
            resource.setrlimit(res, value)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)
        if self.seccomp is not None:
            self.seccomp()

