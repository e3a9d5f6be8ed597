"""One cgroup per sandbox run: every process it starts is counted, limited and killed as a group.

Why: a PID namespace's init can be tampered with from inside (same uid), rlimits count per process
(RLIMIT_AS misses SysV shm, memfd and tmpfs pages) or per uid across runs (RLIMIT_NPROC). A cgroup
sees all of a run's processes in every namespace and charges all of its memory.

What is used, probed once per process (`layout()`), needs root (or a delegated subtree):

- cgroup v2 (``/sys/fs/cgroup`` or the hybrid ``/sys/fs/cgroup/unified``): membership and
  ``cgroup.kill`` (Linux >= 5.14); ``memory.max`` / ``memory.swap.max`` / ``pids.max`` when those
  controllers can be enabled under the caller's cgroup;
- else cgroup v1 ``memory`` (``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes``) and ``pids``
  hierarchies for the limits, with the kill done by signalling every pid listed in the groups.

The child joins its groups itself before exec (`RunCgroup.join`, in ``preexec_fn``, as root), so
nothing it starts is ever outside them.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

log = logging.getLogger(__name__)

ROOT = "/sys/fs/cgroup"
PREFIX = "reopold-sbx-"


@dataclass(frozen=True)
class Layout:
    """Where this machine lets us create run cgroups; None for what is not available."""

    v2_parent: str | None = None  # a writable cgroup2 directory (membership, cgroup.kill)
    v2_memory: bool = False
    v2_pids: bool = False
    v1_memory_parent: str | None = None
    v1_pids_parent: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def counts_memory(self) -> bool:
        return self.v2_memory or self.v1_memory_parent is not None

    @property
    def counts_pids(self) -> bool:
        return self.v2_pids or self.v1_pids_parent is not None

    @property
    def usable(self) -> bool:
        return self.v2_parent is not None or self.counts_memory or self.counts_pids


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy: ``""`` for v2, the controller names for v1."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _mounts() -> tuple[str | None, dict[str, str]]:
    """The cgroup2 mount point and the v1 mount point of each v1 controller."""
    v2, v1 = None, {}
    with open("/proc/self/mounts") as f:
        for line in f:
            _, where, fstype, opts, *_ = line.split()
            if fstype == "cgroup2" and v2 is None:
                v2 = where
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in ("memory", "pids"):
                        v1[opt] = where
    return v2, v1


def _writable_dir(parent: str, needs: str | None = None) -> bool:
    """True when we can create child groups under ``parent`` (having the file ``needs``, if given)."""
    probe = os.path.join(parent, f"{PREFIX}probe-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    ok = needs is None or os.path.exists(os.path.join(probe, needs))
    os.rmdir(probe)
    return ok


def _enable_v2(parent: str, controller: str) -> bool:
    try:
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            if controller not in f.read().split():
                return False
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            if controller in f.read().split():
                return True
        with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
            f.write(f"+{controller}")
        return True
    except OSError:  # EBUSY: the caller's cgroup holds processes (no internal processes rule)
        return False


@lru_cache(maxsize=1)
def layout() -> Layout:
    """Probe what this machine offers (once): see the module docstring."""
    if os.geteuid() != 0:
        return Layout(notes=("not root: no cgroups are created",))
    try:
        own = _own_paths()
        v2_mount, v1_mounts = _mounts()
    except OSError as exc:
        return Layout(notes=(f"cannot read the cgroup setup: {exc}",))
    notes: list[str] = []
    v2_parent = v2_memory = v2_pids = None
    if v2_mount is not None:
        cand = os.path.join(v2_mount, own.get("", "/").lstrip("/"))
        if _writable_dir(cand, needs="cgroup.kill"):  # the root group itself has no cgroup.kill
            v2_parent = cand
            v2_memory = _enable_v2(cand, "memory")
            v2_pids = _enable_v2(cand, "pids")
        else:
            notes.append(f"cgroup v2 at {cand} is not writable or lacks cgroup.kill")
    v1 = {}
    for ctrl in ("memory", "pids"):
        if (ctrl == "memory" and v2_memory) or (ctrl == "pids" and v2_pids) or ctrl not in v1_mounts:
            continue
        cand = os.path.join(v1_mounts[ctrl], own.get(ctrl, "/").lstrip("/"))
        if _writable_dir(cand):
            v1[ctrl] = cand
        else:
            notes.append(f"cgroup v1 {ctrl} at {cand} is not writable")
    return Layout(v2_parent=v2_parent, v2_memory=bool(v2_memory), v2_pids=bool(v2_pids),
                  v1_memory_parent=v1.get("memory"), v1_pids_parent=v1.get("pids"), notes=tuple(notes))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_pids(group: str) -> list[int]:
    try:
        with open(os.path.join(group, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@dataclass
class RunCgroup:
    """The cgroups of one run: created with its limits, joined by the child, killed and removed after."""

    lay: Layout
    memory_bytes: int
    max_pids: int
    groups: list[str] = field(default_factory=list)  # every directory created (v2 first)

    def __post_init__(self) -> None:
        name = PREFIX + uuid.uuid4().hex[:16]
        try:
            if self.lay.v2_parent:
                g = self._make(self.lay.v2_parent, name)
                if self.lay.v2_memory:
                    _write(os.path.join(g, "memory.max"), str(self.memory_bytes))
                    if os.path.exists(os.path.join(g, "memory.swap.max")):
                        _write(os.path.join(g, "memory.swap.max"), "0")
                if self.lay.v2_pids:
                    _write(os.path.join(g, "pids.max"), str(self.max_pids))
            if self.lay.v1_memory_parent:
                g = self._make(self.lay.v1_memory_parent, name)
                _write(os.path.join(g, "memory.limit_in_bytes"), str(self.memory_bytes))
                if os.path.exists(os.path.join(g, "memory.memsw.limit_in_bytes")):
                    _write(os.path.join(g, "memory.memsw.limit_in_bytes"), str(self.memory_bytes))
            if self.lay.v1_pids_parent:
                g = self._make(self.lay.v1_pids_parent, name)
                _write(os.path.join(g, "pids.max"), str(self.max_pids))
        except OSError:
            self.remove()
            raise

    def _make(self, parent: str, name: str) -> str:
        g = os.path.join(parent, name)
        os.mkdir(g)
        self.groups.append(g)
        return g

    def procs_files(self) -> list[str]:
        return [os.path.join(g, "cgroup.procs") for g in self.groups]

    def join(self) -> None:
        """Move the calling process into every group (called in the child before exec, as root)."""
        pid = str(os.getpid())
        for path in self.procs_files():
            _write(path, pid)

    def pids(self) -> set[int]:
        return {p for g in self.groups for p in _read_pids(g)}

    def oom_killed(self) -> bool:
        """True when the memory limit killed a process of this run."""
        for g in self.groups:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    with open(os.path.join(g, name)) as f:
                        fields = dict(line.split() for line in f if len(line.split()) == 2)
                except OSError:
                    continue
                if int(fields.get(key, 0)) > 0:
                    return True
        return False

    def kill_all(self, within_s: float = 5.0) -> set[int]:
        """SIGKILL every process of the run and wait until none is left; returns the survivors."""
        deadline = time.monotonic() + within_s
        v2 = self.groups[0] if self.lay.v2_parent and self.groups else None
        while True:
            if v2 is not None:
                try:
                    _write(os.path.join(v2, "cgroup.kill"), "1")
                except OSError:
                    v2 = None
            left = self.pids()
            for pid in left:  # v1 (no cgroup.kill), or a process forked while the kill ran
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if not left:
                return set()
            if time.monotonic() > deadline:
                return left
            time.sleep(0.01)

    def remove(self) -> None:
        for g in reversed(self.groups):
            for _ in range(50):  # a killed process leaves its cgroup a moment after it dies
                try:
                    os.rmdir(g)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                log.error("sandbox: cannot remove cgroup %s (processes: %s)", g, _read_pids(g))
        self.groups = []

