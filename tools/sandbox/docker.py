"""`docker` backend: a pool of warm, locked-down containers; each run is a ``docker exec`` into one.

Every container: ``--network none``, read-only root filesystem, size-limited tmpfs ``/workspace`` (cwd)
and ``/tmp``, cgroup memory (swap off) / pids / CPU quota, rlimits (CPU time, file size, open files),
all capabilities dropped, ``no-new-privileges``, a non-root user, no host environment. The code (and
stdin) reach it through a per-container host directory bind-mounted read-only at ``/sandbox`` (so the
daemon must run on this machine). A run that timed out, overflowed its output or left the container
unhealthy gets the container destroyed and replaced in the background; after a clean run the container
is reused (``docker.reuse``) once a cleanup exec has killed every leftover process and wiped the tmpfs.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from reopold_agents.config.sandbox import DockerSandboxConfig, SandboxLimits
from tools.sandbox.base import ExecResult, Sandbox, SandboxError, truncate
from tools.sandbox.local import killed_reason

log = logging.getLogger(__name__)

LABEL = "reopold.sandbox"
# PID 1 of each container: waits forever; SIGKILL from `docker rm -f` ends it.
_IDLE = ["python3", "-I", "-c", "import signal; signal.pause()"]
# Entry of each run: stdin from the bound file (exec has no redirection without a shell), then exec.
_BOOT = (
    "import os, sys\n"
    "if os.path.exists('/sandbox/stdin'):\n"
    "    fd = os.open('/sandbox/stdin', os.O_RDONLY); os.dup2(fd, 0); os.close(fd)\n"
    "os.execv(sys.executable, [sys.executable, '-I', '/sandbox/main.py'])\n"
)
# Cleanup between runs: kill everything the sandbox user can signal (all but PID 1 and itself), verify
# nothing is left, remove the SysV IPC objects (the container's IPC namespace outlives a run), empty
# the writable dirs.
_CLEAN = (
    "import os, signal, shutil, time\n"
    "me = os.getpid()\n"
    "for _ in range(5):\n"
    "    try: os.kill(-1, signal.SIGKILL)\n"
    "    except ProcessLookupError: pass\n"
    "    time.sleep(0.02)\n"
    "    left = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, me)]\n"
    "    left = [p for p in left if open(f'/proc/{p}/stat').read().split(')')[-1].split()[0] != 'Z']\n"
    "    if not left: break\n"
    "else: raise SystemExit('processes survive: ' + ' '.join(left))\n"
    "import ctypes\n"
    "libc = ctypes.CDLL(None)\n"
    "for kind, rm in (('shm', lambda i: libc.shmctl(i, 0, None)), ('sem', lambda i: libc.semctl(i, 0, 0)),\n"
    "                 ('msg', lambda i: libc.msgctl(i, 0, None))):\n"
    "    for line in open(f'/proc/sysvipc/{kind}').read().splitlines()[1:]:\n"
    "        rm(int(line.split()[1]))\n"
    "    if len(open(f'/proc/sysvipc/{kind}').read().splitlines()) > 1: raise SystemExit(kind + ' objects survive')\n"
    "for d in ('/workspace', '/tmp', '/dev/shm'):\n"
    "    for n in os.listdir(d):\n"
    "        p = os.path.join(d, n)\n"
    "        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)\n"
)
_ENV = {"HOME": "/workspace", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
_MB = 1024 * 1024


@dataclass
class _Slot:
    container: Any
    host_dir: str


class DockerSandbox(Sandbox):
    """Run Python source in pooled containers of ``docker.image``."""

    name = "docker"

    def __init__(self, limits: SandboxLimits | None = None, docker_cfg: DockerSandboxConfig | None = None) -> None:
        try:
            import docker
            from docker.errors import DockerException, ImageNotFound
        except ImportError:
            raise SandboxError("sandbox=docker needs the docker SDK: pip install 'reopold-agents[docker]'") from None
        self.limits = limits or SandboxLimits()
        self.cfg = docker_cfg or DockerSandboxConfig()
        self.limits.check()
        self.cfg.check()
        self._docker = docker
        try:
            self.client = docker.DockerClient(base_url=self.cfg.base_url) if self.cfg.base_url else docker.from_env()
            self.client.ping()
        except DockerException as exc:
            where = self.cfg.base_url or os.environ.get("DOCKER_HOST", "the default socket")
            raise SandboxError(f"docker daemon at {where} is not reachable: {exc}") from None
        try:
            self.client.images.get(self.cfg.image)
        except ImageNotFound:
            raise SandboxError(
                f"docker.image {self.cfg.image!r} not found; build it with scripts/docker_sandbox_image.sh"
            ) from None
        self._pool: queue.Queue[_Slot] = queue.Queue()
        self._all: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._refill = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docker-sandbox-refill")
        for _ in range(self.cfg.pool_size):
            self._pool.put(self._start())

    # ------------------------------------------------------------------------------- containers

    def _start(self) -> _Slot:
        lim = self.limits
        host_dir = tempfile.mkdtemp(prefix="reopold-dsbx-")
        os.chmod(host_dir, 0o755)
        Ulimit = self._docker.types.Ulimit
        tmpfs_opts = f"size={lim.workdir_mb}m,mode=1777,noexec,nosuid,nodev"
        try:
            container = self.client.containers.run(
                self.cfg.image,
                _IDLE,
                detach=True,
                network_mode="none",
                read_only=True,
                tmpfs={"/workspace": tmpfs_opts, "/tmp": tmpfs_opts},
                volumes={host_dir: {"bind": "/sandbox", "mode": "ro"}},
                working_dir="/workspace",
                user=self.cfg.user,
                environment={},
                shm_size=lim.workdir_mb * _MB,  # /dev/shm: bounded like the other writable mounts
                mem_limit=lim.memory_mb * _MB,
                memswap_limit=lim.memory_mb * _MB,  # no swap on top of the memory limit
                pids_limit=lim.max_processes,
                nano_cpus=int(self.cfg.cpus * 1e9),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ipc_mode="private",
                hostname="sandbox",
                ulimits=[
                    Ulimit(name="cpu", soft=lim.cpu_time_s, hard=lim.cpu_time_s + 1),
                    Ulimit(name="fsize", soft=lim.max_file_size_mb * _MB, hard=lim.max_file_size_mb * _MB),
                    Ulimit(name="nofile", soft=lim.max_open_files, hard=lim.max_open_files),
                    Ulimit(name="core", soft=0, hard=0),
                ],
                labels={LABEL: "1"},
            )
        except Exception as exc:
            shutil.rmtree(host_dir, ignore_errors=True)
            raise SandboxError(f"cannot start a sandbox container from {self.cfg.image!r}: {exc}") from None
        with self._lock:
            self._all.add(container.id)
        return _Slot(container, host_dir)

    def _destroy(self, slot: _Slot) -> None:
        try:
            slot.container.remove(force=True)
        except Exception as exc:  # noqa: BLE001 - already gone or daemon hiccup: nothing left to do
            log.debug("docker sandbox: removing %s: %s", slot.container.id[:12], exc)
        with self._lock:
            self._all.discard(slot.container.id)
        shutil.rmtree(slot.host_dir, ignore_errors=True)

    def _replace(self, slot: _Slot) -> None:
        """Destroy ``slot`` and put a fresh container in the pool (in the background)."""

        def work() -> None:
            self._destroy(slot)
            if not self._closed:
                try:
                    self._pool.put(self._start())
                except SandboxError as exc:
                    log.error("docker sandbox: refill failed: %s", exc)

        self._refill.submit(work)

    def _acquire(self, deadline: float) -> _Slot:
        try:
            return self._pool.get(timeout=max(1.0, deadline - time.monotonic()))
        except queue.Empty:
            return self._start()  # every warm container is busy or being replaced: start one now

    # ------------------------------------------------------------------------------------- run

    def _exec(self, slot: _Slot, cmd: list[str], timeout: float) -> tuple[bytes, bytes, int | None, bool, bool]:
        """Run ``cmd`` in the container; (stdout, stderr, exit code, timed_out, output_exceeded)."""
        api = self.client.api
        exec_id = api.exec_create(slot.container.id, cmd, stdout=True, stderr=True, stdin=False,
                                  user=self.cfg.user, workdir="/workspace", environment=_ENV)["Id"]
        chunks: queue.Queue[tuple[bytes | None, bytes | None] | None] = queue.Queue()

        def pump() -> None:
            try:
                for item in api.exec_start(exec_id, stream=True, demux=True):
                    chunks.put(item)
            except Exception as exc:  # noqa: BLE001 - the stream breaks when we kill the container
                log.debug("docker sandbox: exec stream ended: %s", exc)
            finally:
                chunks.put(None)

        threading.Thread(target=pump, daemon=True, name="docker-sandbox-exec").start()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        timed_out = exceeded = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            try:
                item = chunks.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                # Children that inherited stdout keep the stream open after the program exits: stop
                # at the program's exit (the cleanup exec or the container's removal kills them).
                if not api.exec_inspect(exec_id).get("Running", True):
                    self._drain(chunks, out, err)
                    break
                continue
            if item is None:
                break
            o, e = item
            out += o or b""
            err += e or b""
            if len(out) > self.limits.max_output_bytes or len(err) > self.limits.max_output_bytes:
                exceeded = True
                break
        if timed_out or exceeded:
            return bytes(out), bytes(err), None, timed_out, exceeded
        code = api.exec_inspect(exec_id).get("ExitCode")
        return bytes(out), bytes(err), code, False, False

    @staticmethod
    def _drain(chunks: queue.Queue, out: bytearray, err: bytearray, grace_s: float = 0.1) -> None:
        """Collect the output still in flight after the program exited (for up to ``grace_s``)."""
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            try:
                item = chunks.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return
            if item is None:
                return
            out += item[0] or b""
            err += item[1] or b""

    def run(self, code: str, stdin: str | None = None, timeout_s: float | None = None) -> ExecResult:
        if self._closed:
            raise SandboxError("docker sandbox is closed")
        timeout = float(timeout_s if timeout_s is not None else self.limits.timeout_s)
        if timeout <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        start = time.monotonic()
        slot = self._acquire(start + 60.0)
        healthy = False
        try:
            for name in ("main.py", "stdin"):
                path = os.path.join(slot.host_dir, name)
                if os.path.exists(path):
                    os.unlink(path)
            with open(os.path.join(slot.host_dir, "main.py"), "w", encoding="utf-8") as f:
                f.write(code)
            if stdin is not None:
                with open(os.path.join(slot.host_dir, "stdin"), "w", encoding="utf-8") as f:
                    f.write(stdin)
            run_start = time.monotonic()
            out, err, exit_code, timed_out, exceeded = self._exec(slot, ["python3", "-I", "-c", _BOOT], timeout)
            duration = time.monotonic() - run_start
            if exit_code is None:  # killed by us: the container goes
                slot.container.kill()
                exit_code = -9
            elif exit_code > 128:  # signalled (docker reports 128+N, like a shell)
                exit_code = -(exit_code - 128)
            if not (timed_out or exceeded) and self.cfg.reuse:
                _, cerr, ccode, ctimeout, _ = self._exec(slot, ["python3", "-I", "-c", _CLEAN], 10.0)
                healthy = ccode == 0 and not ctimeout
                if not healthy:
                    log.warning("docker sandbox: cleanup failed (%s); replacing the container",
                                cerr.decode(errors="replace").strip()[-200:] or ccode)
        except SandboxError:
            raise
        except Exception as exc:
            raise SandboxError(f"docker sandbox run failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if healthy and not self._closed:
                self._pool.put(slot)
            else:
                self._replace(slot)
        stdout, cut_out = truncate(out, self.limits.max_output_bytes)
        stderr, cut_err = truncate(err, self.limits.max_output_bytes)
        return ExecResult(
            stdout=stdout, stderr=stderr, exit_code=exit_code, timed_out=timed_out,
            killed_reason=killed_reason(exit_code, timed_out, exceeded, stderr),
            duration_s=duration, truncated=cut_out or cut_err,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._refill.shutdown(wait=True)
        while True:
            try:
                self._destroy(self._pool.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            leftover = list(self._all)
        for cid in leftover:  # containers of runs still in flight on other threads
            try:
                self.client.containers.get(cid).remove(force=True)
            except Exception:  # noqa: BLE001
                pass
