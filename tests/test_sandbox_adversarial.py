"""Adversarial programs against the `local` (bwrap) and `docker` sandboxes: 0 escapes, 0 hangs.

Each case is a hostile program plus host-side checks of what it must not have achieved (files read or
written on the host, connections to a host listener, a host canary process killed or traced, processes
left running, secrets from the host environment), and a bound on the wall time of the run.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from reopold_agents.config.sandbox import DockerSandboxConfig, LocalSandboxConfig, SandboxLimits
from tools.sandbox.base import ExecResult, Sandbox

sys.path.insert(0, str(Path(__file__).parent))
from _docker import docker_base_url  # noqa: E402,F401  (session fixture)

REPO = Path(__file__).resolve().parents[1]
LIMITS = SandboxLimits(timeout_s=2.0, cpu_time_s=1, memory_mb=256, max_processes=32, max_file_size_mb=8,
                       max_open_files=32, workdir_mb=16, max_output_bytes=8192)
WALL_SLACK_S = 3.0  # process start/teardown on a loaded 2-core machine
NOBODY = 65534


@dataclass
class Ctx:
    """Host-side facts the programs attack and the checks inspect."""

    backend: str
    secret: str
    secret_path: str
    canary_pid: int
    canary_marker: str
    tcp: socket.socket
    udp: socket.socket
    marker: str = field(default_factory=lambda: f"reopold-leftover-{uuid.uuid4().hex[:12]}")
    escape_paths: list[str] = field(default_factory=list)
    sandbox: Sandbox | None = None

    @property
    def tcp_port(self) -> int:
        return self.tcp.getsockname()[1]

    @property
    def udp_port(self) -> int:
        return self.udp.getsockname()[1]


@dataclass
class Case:
    name: str
    code: Callable[[Ctx], str]
    check: Callable[[ExecResult, Ctx], None]


# ---------------------------------------------------------------------------------- host checks


def procs_with(text: str) -> list[int]:
    """Host pids whose command line contains ``text`` (zombies excluded)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(pid))
    return found


def assert_no_leftovers(marker: str, within_s: float = 0.3) -> None:
    """Nothing the run started may be alive once `run` returned (a short grace for /proc to settle)."""
    deadline = time.monotonic() + within_s
    while procs_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = procs_with(marker)
    assert not left, f"processes left behind by the sandboxed program: {left}"


def canary_ok(ctx: Ctx) -> None:
    status = Path(f"/proc/{ctx.canary_pid}/status").read_text()
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    tracer = next(line for line in status.splitlines() if line.startswith("TracerPid:"))
    assert "Z" not in state.split()[1], f"host canary was killed: {state}"
    assert tracer.split()[1] == "0", f"host canary is being traced: {tracer}"


def no_secret(res: ExecResult, ctx: Ctx) -> None:
    assert ctx.secret not in res.stdout and ctx.secret not in res.stderr, "host secret leaked into the sandbox"


def denied(res: ExecResult, ctx: Ctx) -> None:
    no_secret(res, ctx)
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, "program printed nothing"
    assert all(ln.startswith("DENIED") for ln in lines), f"an attempt succeeded: {res.stdout!r}"


def ended_abnormally(res: ExecResult, ctx: Ctx) -> None:
    assert res.timed_out or res.exit_code != 0, f"expected a limit to stop it: {res}"
    canary_ok(ctx)


def try_each(*attempts: str) -> str:
    """Program running each attempt; prints DENIED <error> when it fails, OK <result> when it succeeds."""
    body = ["import os, sys, socket, ctypes"]
    for a in attempts:
        body.append("try:\n    r = " + a + "\n    print('OK', repr(r)[:200])\n"
                    "except Exception as e:\n    print('DENIED', type(e).__name__)")
    return "\n".join(body)


LIBC = "ctypes.CDLL(None, use_errno=True)"


def _leftover_check(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0 and "spawned" in res.stdout, res
    assert_no_leftovers(ctx.marker)
    canary_ok(ctx)


def _no_host_writes(res: ExecResult, ctx: Ctx) -> None:
    no_secret(res, ctx)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == "PRIVATE", res.stdout
    assert all(ln.startswith("DENIED") for ln in lines[:-1]), f"a write outside the work dir succeeded: {res.stdout}"
    for p in ctx.escape_paths:
        assert not os.path.exists(p), f"sandbox wrote {p} on the host"


def denied_or_private(res: ExecResult, ctx: Ctx) -> None:
    no_secret(res, ctx)
    assert res.exit_code == 0, res.stderr


def _write_outside(ctx: Ctx) -> str:
    host_tmp = f"/tmp/reopold-escape-{uuid.uuid4().hex[:8]}"
    repo_file = str(REPO / f"ESCAPED-{uuid.uuid4().hex[:8]}")
    ctx.escape_paths += [host_tmp, repo_file]
    targets = ["/usr/escape", "/etc/escape", "/escape", "/sandbox/escape", "/proc/escape", repo_file, "/root/escape"]
    return try_each(*[f"open({t!r}, 'w').write('x')" for t in targets]) + (
        # /tmp is private inside the sandbox: writing there must not reach the host's /tmp
        f"\nopen({host_tmp!r}, 'w').write('x')\nprint('PRIVATE')")


def _disk_fill(where: str, one_file: bool) -> str:
    return f"""
import os
total = 0
try:
    if {one_file}:
        with open('{where}/big', 'wb') as f:
            while True:
                f.write(b'x' * 2**20); f.flush(); total += 1
    else:
        i = 0
        while True:
            with open(f'{where}/f{{i}}', 'wb') as f:
                f.write(b'x' * 2**20)
            i += 1; total += 1
except OSError as e:
    print('stopped', total, type(e).__name__)
"""


def _disk_check(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0 and res.stdout.startswith("stopped"), res
    written_mb = int(res.stdout.split()[1])
    assert written_mb <= max(LIMITS.workdir_mb, LIMITS.max_file_size_mb) + 1, f"wrote {written_mb} MB"


def _network_tcp(res: ExecResult, ctx: Ctx) -> None:
    denied(res, ctx)
    ctx.tcp.settimeout(0.5)
    try:
        conn, addr = ctx.tcp.accept()
    except (socket.timeout, BlockingIOError):
        return
    conn.close()
    pytest.fail(f"the sandbox connected to the host listener from {addr}")


def _network_udp(res: ExecResult, ctx: Ctx) -> None:
    no_secret(res, ctx)
    ctx.udp.settimeout(0.5)
    try:
        data, addr = ctx.udp.recvfrom(100)
    except (socket.timeout, BlockingIOError):
        return
    pytest.fail(f"the sandbox reached the host UDP listener from {addr}: {data!r}")


def _stdout_flood(res: ExecResult, ctx: Ctx) -> None:
    assert res.truncated, res
    assert len(res.stdout.encode()) <= LIMITS.max_output_bytes and len(res.stderr.encode()) <= LIMITS.max_output_bytes
    assert res.killed_reason == "output limit"


def _env_check(res: ExecResult, ctx: Ctx) -> None:
    no_secret(res, ctx)
    assert res.exit_code == 0, res.stderr
    assert "REOPOLD_SECRET_TOKEN" not in res.stdout
    assert "VIRTUAL_ENV" not in res.stdout and "/work/main" not in res.stdout


def _proc_snoop(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0, res.stderr
    assert ctx.canary_marker not in res.stdout, "host processes are visible in /proc"
    n = int(res.stdout.split("\n", 1)[0])
    assert n <= 8, f"{n} processes visible: not a private pid namespace"


def _setuid(res: ExecResult, ctx: Ctx) -> None:
    denied(res, ctx)


def _uid_after(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0 and res.stdout.split() == [str(NOBODY)] * 2, res


def _fd_check(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0, res.stderr
    assert int(res.stdout.split()[0]) <= LIMITS.max_open_files


def _killers(res: ExecResult, ctx: Ctx) -> None:
    canary_ok(ctx)
    no_secret(res, ctx)


def _chmod_check(res: ExecResult, ctx: Ctx) -> None:
    denied(res, ctx)
    st = os.stat(os.path.realpath("/usr/bin/python3"))
    assert (st.st_mode & 0o777, st.st_uid) == (0o755, 0), "the host's python3 changed mode or owner"


def _hostname_check(res: ExecResult, ctx: Ctx) -> None:
    denied_or_private(res, ctx)
    assert socket.gethostname() != "pwned", "the sandbox renamed the host"


def _stdin_eof(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0 and res.stdout.strip() == "0", res


def _binary_out(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0 and len(res.stdout) > 0, res


# Attach to the sandbox's own PID 1 (same uid inside) and make it survive its parent's death
# (inject prctl(PR_SET_PDEATHSIG, 0) into it), then leave a daemon behind: containment that rests on
# that PID 1 alone lets the daemon outlive the run.
_TAMPER_INIT = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
Regs = ctypes.c_ulonglong * 27   # x86_64 user_regs_struct: rax 10, rsi 13, rdi 14, orig_rax 15, rip 16
if libc.ptrace(16, 1, None, None) != 0:   # PTRACE_ATTACH
    print('DENIED ptrace', os.strerror(ctypes.get_errno()), flush=True)
else:
    os.waitpid(1, 0x40000000)
    saved = Regs(); libc.ptrace(12, 1, None, ctypes.byref(saved))
    r = Regs(*saved); r[16] = saved[16] - 2; r[10] = 157; r[15] = 157; r[14] = 1; r[13] = 0
    libc.ptrace(13, 1, None, ctypes.byref(r)); libc.ptrace(9, 1, None, None); os.waitpid(1, 0x40000000)
    libc.ptrace(13, 1, None, ctypes.byref(saved)); libc.ptrace(17, 1, None, None)
    print('TAMPERED init', flush=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(120)', MARKER])
    os._exit(0)
os.wait()
print('spawned', flush=True)
import time; time.sleep(100)   # the run ends at the timeout
"""


def _tamper_check(res: ExecResult, ctx: Ctx) -> None:
    assert "spawned" in res.stdout, res
    assert_no_leftovers(ctx.marker)
    canary_ok(ctx)


def _hog(kind: str) -> str:
    """Hold memory the way RLIMIT_AS does not count it; print the MB held after each step."""
    stop_mb = 4 * LIMITS.memory_mb  # far past the limit: report and stop rather than hurt the host
    if kind == "sysv_shm":
        step = """
libc.shmget.restype = ctypes.c_int; libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]; libc.shmdt.argtypes = [ctypes.c_void_p]
sid = libc.shmget(0, CHUNK, 0o1000 | 0o600)
addr = libc.shmat(sid, None, 0)
if sid < 0 or addr in (None, ctypes.c_void_p(-1).value):
    raise OSError(ctypes.get_errno(), 'shm')
ctypes.memset(addr, 1, CHUNK); libc.shmdt(addr)
"""
    else:  # memfd written with write(): never mapped, so not in the address space
        step = """
fd = os.memfd_create('hog')
for _ in range(CHUNK // 2**20):
    os.write(fd, b'x' * 2**20)
fds.append(fd)
"""
    return f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CHUNK = 4 * 2**20
held, fds = 0, []
try:
    while held < {stop_mb}:
{chr(10).join('        ' + line for line in step.strip().splitlines())}
        held += CHUNK // 2**20
        print(held, flush=True)
    print('ESCAPED', held, flush=True)
except OSError as e:
    print('stopped', held, e, flush=True)
"""


def _hog_check(res: ExecResult, ctx: Ctx) -> None:
    assert "ESCAPED" not in res.stdout, f"held {res.stdout.split()[-1]} MB past memory_mb={LIMITS.memory_mb}"
    held = [int(x) for x in res.stdout.split() if x.isdigit()]
    assert not held or max(held) <= LIMITS.memory_mb, f"held {max(held)} MB > memory_mb={LIMITS.memory_mb}"
    canary_ok(ctx)


_KEY_PROGRAM = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def keyctl(*a):
    r = libc.syscall(250, *[ctypes.c_long(x) if isinstance(x, int) else x for x in a])
    return r, os.strerror(ctypes.get_errno())
# read every key the session, process and user keyrings lead to (KEYCTL_READ of each id found)
for ring in (-3, -2, -4, -5):   # @s @p @u @us
    buf = ctypes.create_string_buffer(4096)
    n, err = keyctl(11, ring, buf, 4096)   # KEYCTL_READ of the keyring: the ids it holds
    if n < 0:
        print('DENIED read', ring, err); continue
    ids = [int.from_bytes(buf.raw[i:i + 4], 'little') for i in range(0, min(n, 4096), 4)]
    for kid in ids:
        kb = ctypes.create_string_buffer(4096)
        m, _ = keyctl(11, kid, kb, 4096)
        print('KEY', kb.raw[:max(m, 0)])
r = libc.syscall(248, b'user', b'reopold-run-key', b'run-secret-RUNKEY', 17, ctypes.c_long(-3))  # add_key to @s
print('DENIED add' if r < 0 else 'ADDED')
r = libc.syscall(248, b'user', b'reopold-run-key', b'run-secret-RUNKEY', 17, ctypes.c_long(-4))  # add_key to @u
print('DENIED add user' if r < 0 else 'ADDED user')
"""


def _key_check(res: ExecResult, ctx: Ctx) -> None:
    no_secret(res, ctx)
    assert "RUNKEY" not in res.stdout.replace("run-secret-RUNKEY', 17", ""), res.stdout
    again = ctx.sandbox.run(_KEY_PROGRAM)  # the next run must not see this run's key
    assert "run-secret-RUNKEY" not in again.stdout.split("ADDED")[0], f"a key of the previous run is visible: {again.stdout}"
    no_secret(again, ctx)


_SHM_KEY = 0x5EC12E7
_SHM_LEAVE = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
sid = libc.shmget({_SHM_KEY}, 4096, 0o1000 | 0o666)
addr = libc.shmat(sid, None, 0)
ctypes.memmove(addr, b'left-by-run-1-SHMSECRET', 23)
open('/dev/shm/left-by-run-1', 'w').write('SHMSECRET')
print('left', sid)
"""
_SHM_LOOK = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
sid = libc.shmget({_SHM_KEY}, 4096, 0)
print('segment', sid, ctypes.string_at(libc.shmat(sid, None, 0), 23) if sid >= 0 else b'')
print(os.listdir('/dev/shm'))
"""


def _ipc_check(res: ExecResult, ctx: Ctx) -> None:
    assert res.exit_code == 0 and "left" in res.stdout, res
    again = ctx.sandbox.run(_SHM_LOOK)
    assert again.exit_code == 0, again
    assert "SHMSECRET" not in again.stdout and "left-by-run-1" not in again.stdout, f"the next run sees it: {again.stdout}"


def _dev_fill_check(res: ExecResult, ctx: Ctx) -> None:
    lines = res.stdout.splitlines()
    assert len(lines) >= 2 and lines[0].startswith("DENIED"), f"/dev is writable: {res}"
    assert lines[1].startswith("stopped"), res
    assert int(lines[1].split()[1]) <= LIMITS.workdir_mb + 1, f"/dev/shm took {lines[1]} MB"


CASES = [
    Case("fork_bomb", lambda c: "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
         ended_abnormally),
    Case("thread_bomb", lambda c: "import threading, time\nts = []\nwhile True:\n"
         "    t = threading.Thread(target=time.sleep, args=(100,)); t.start(); ts.append(t)", ended_abnormally),
    Case("memory_bomb", lambda c: "x = []\nwhile True:\n    x.append(b'x' * 50 * 2**20)", ended_abnormally),
    Case("infinite_loop", lambda c: "while True:\n    pass", ended_abnormally),
    Case("threads_burn_cpu", lambda c: "import threading\ndef spin():\n    while True: pass\n"
         "for _ in range(4): threading.Thread(target=spin).start()", ended_abnormally),
    Case("sleep_forever", lambda c: "import time\ntime.sleep(1000)",
         lambda r, c: (assert_timed_out(r), canary_ok(c))),
    Case("disk_fill_many_files", lambda c: _disk_fill("/workspace", False), _disk_check),
    Case("disk_fill_one_file", lambda c: _disk_fill("/workspace", True), _disk_check),
    Case("disk_fill_tmp", lambda c: _disk_fill("/tmp", False), _disk_check),
    Case("read_etc_shadow", lambda c: try_each("open('/etc/shadow').read()"), denied),
    Case("list_root_home", lambda c: try_each("os.listdir('/root')"), denied),
    Case("read_repo", lambda c: try_each(f"open({str(REPO / 'pyproject.toml')!r}).read()",
                                         f"os.listdir({str(REPO)!r})"), denied),
    Case("read_host_tmp_secret", lambda c: try_each(f"open({c.secret_path!r}).read()"), denied),
    Case("read_via_proc_root", lambda c: try_each(f"open('/proc/1/root{c.secret_path}').read()",
                                                  "open('/proc/1/root/etc/shadow').read()"), denied),
    Case("symlink_escape", lambda c: try_each(f"os.symlink({c.secret_path!r}, 'l1') or open('l1').read()",
                                              "os.symlink('/etc/shadow', 'l2') or open('l2').read()",
                                              f"os.symlink({str(REPO)!r}, 'l3') or os.listdir('l3')"), denied),
    Case("write_outside_workdir", _write_outside, _no_host_writes),
    Case("chmod_host_binary", lambda c: try_each("os.chmod('/usr/bin/python3', 0o777)",
                                                 "os.chown('/usr/bin/python3', 65534, 65534)"), _chmod_check),
    Case("network_tcp_loopback", lambda c: try_each(
        f"socket.create_connection(('127.0.0.1', {c.tcp_port}), timeout=2)"), _network_tcp),
    Case("network_udp_loopback", lambda c: "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         f"try:\n    s.sendto(b'escaped', ('127.0.0.1', {c.udp_port}))\nexcept OSError as e:\n    print('DENIED', e)",
         _network_udp),
    Case("network_interfaces", lambda c: "import socket\nprint([n for _, n in socket.if_nameindex()])",
         lambda r, c: assert_only_lo(r)),
    Case("huge_stdout", lambda c: "while True:\n    print('A' * 1000)", _stdout_flood),
    Case("huge_stderr", lambda c: "import sys\nwhile True:\n    sys.stderr.write('E' * 1000)", _stdout_flood),
    Case("binary_garbage_output", lambda c: "import os, sys\nsys.stdout.buffer.write(os.urandom(4000))",
         _binary_out),
    Case("sleeping_children_left_behind", lambda c: f"""
import os
for _ in range(3):
    if os.fork() == 0:
        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(120)', {c.marker!r}])
print('spawned')
""", _leftover_check),
    Case("daemonised_double_fork", lambda c: f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(120)', {c.marker!r}])
    os._exit(0)
os.wait()
print('spawned')
""", _leftover_check),
    Case("env_leakage", lambda c: "import os\nprint(dict(os.environ))\n"
         "for p in ('/proc/self/environ', '/proc/1/environ'):\n"
         "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print('DENIED', e)",
         _env_check),
    Case("kill_parent", lambda c: "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('after')",
         _killers),
    Case("kill_everything", lambda c: "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n"
         "except OSError as e:\n    print('DENIED', e)", _killers),
    Case("kill_host_canary", lambda c: try_each(f"os.kill({c.canary_pid}, 9)"), _killers),
    Case("ptrace_host_canary", lambda c: "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         f"print(libc.ptrace(16, {c.canary_pid}, None, None), os.strerror(ctypes.get_errno()))", _killers),
    Case("setuid_root", lambda c: try_each("os.setuid(0)", "os.setgid(0)", "os.seteuid(0)", "os.setgroups([0])"),
         _setuid),
    Case("uid_is_unprivileged", lambda c: "import os\nprint(os.getuid())\nprint(os.geteuid())", _uid_after),
    Case("proc_snooping", lambda c: "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
         "print(len(pids))\nfor p in pids:\n    try:\n        print(open(f'/proc/{p}/cmdline', 'rb').read())\n"
         "    except OSError:\n        pass", _proc_snoop),
    Case("mount_and_unshare", lambda c: "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "for name, r in (('mount', lambda: libc.mount(b'none', b'/workspace', b'tmpfs', 0, None)),\n"
         "                ('unshare_user', lambda: libc.unshare(0x10000000)),\n"
         "                ('unshare_net', lambda: libc.unshare(0x40000000))):\n"
         "    rc = r()\n    print('DENIED' if rc != 0 else 'OK', name, os.strerror(ctypes.get_errno()))", denied),
    Case("fd_exhaustion", lambda c: "fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\n"
         "except OSError as e:\n    print(len(fs), type(e).__name__)", _fd_check),
    Case("set_hostname", lambda c: try_each("socket.sethostname('pwned')"), _hostname_check),
    Case("deep_recursion", lambda c: "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)",
         ended_abnormally),
    Case("stdin_eof_no_hang", lambda c: "import sys\nprint(len(sys.stdin.read()))", _stdin_eof),
    Case("dev_access", lambda c: try_each("open('/dev/mem', 'rb').read(1)", "open('/dev/kmsg', 'rb').read(1)",
                                          "os.listdir('/dev/disk')"), denied),
    # ---- outliving the run, shared kernel state, memory the rlimits do not count (issue 13)
    Case("tamper_init_then_daemon", lambda c: _TAMPER_INIT.replace("MARKER", repr(c.marker)), _tamper_check),
    Case("sysv_shm_hog", lambda c: _hog("sysv_shm"), _hog_check),
    Case("memfd_hog", lambda c: _hog("memfd"), _hog_check),
    Case("dev_shm_fill", lambda c: try_each("open('/dev/escape', 'w').write('x')") + "\n" + _disk_fill("/dev/shm", False),
         _dev_fill_check),
    Case("keyrings", lambda c: _KEY_PROGRAM, _key_check),
    Case("ipc_left_for_next_run", lambda c: _SHM_LEAVE, _ipc_check),
    Case("many_children_then_exit", lambda c: f"""
import os
for _ in range(20):
    if os.fork() == 0:
        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(120)', {c.marker!r}])
print('spawned')
""", _leftover_check),
]


def assert_timed_out(res: ExecResult) -> None:
    assert res.timed_out and res.killed_reason == "timeout", res


def assert_only_lo(res: ExecResult) -> None:
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() in ("['lo']", "[]"), f"network interfaces visible: {res.stdout}"


# ------------------------------------------------------------------------------------- fixtures


def _add_session_key(name: str, secret: str) -> int:
    """add_key("user", name, secret) to this process's session keyring; the key id, or -1 (x86_64 only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    data = secret.encode()
    return int(libc.syscall(248, b"user", name.encode(), data, ctypes.c_size_t(len(data)), ctypes.c_long(-3)))


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> dict:
    secret = f"reopold-host-secret-{uuid.uuid4().hex}"
    secret_path = f"/tmp/reopold-host-secret-{uuid.uuid4().hex[:8]}.txt"
    marker = f"reopold-canary-{uuid.uuid4().hex[:8]}"
    kw = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    canary = None
    key_id = _add_session_key(f"reopold-host-{uuid.uuid4().hex[:8]}", secret)  # a secret in our session keyring
    try:
        Path(secret_path).write_text(secret)
        os.chmod(secret_path, 0o644)  # world-readable on the host: only isolation keeps it out
        canary = subprocess.Popen(["/usr/bin/python3", "-c", "import time; time.sleep(600)", marker], **kw)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        udp.bind(("127.0.0.1", 0))
        yield {"secret": secret, "secret_path": secret_path, "canary": canary, "marker": marker, "tcp": tcp, "udp": udp}
    finally:
        if canary is not None:
            canary.kill()
            canary.wait()
        tcp.close()
        udp.close()
        if os.path.exists(secret_path):
            os.unlink(secret_path)
        if key_id > 0:
            ctypes.CDLL(None, use_errno=True).syscall(250, 21, ctypes.c_long(key_id))  # KEYCTL_INVALIDATE


@pytest.fixture(scope="module", params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def sandbox(request) -> Sandbox:
    if request.param == "local":
        from tools.sandbox.local import LocalSandbox

        sb: Sandbox = LocalSandbox(LIMITS, LocalSandboxConfig(bwrap="always"))
    else:
        base_url = request.getfixturevalue("docker_base_url")
        from tools.sandbox.docker import DockerSandbox

        sb = DockerSandbox(LIMITS, DockerSandboxConfig(base_url=base_url, pool_size=3))
    yield sb
    sb.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_adversarial(case: Case, sandbox: Sandbox, host: dict, monkeypatch) -> None:
    ctx = Ctx(backend=sandbox.name, secret=host["secret"], secret_path=host["secret_path"],
              canary_pid=host["canary"].pid, canary_marker=host["marker"], tcp=host["tcp"], udp=host["udp"],
              sandbox=sandbox)
    monkeypatch.setenv("REOPOLD_SECRET_TOKEN", ctx.secret)  # must not reach the sandbox
    code = case.code(ctx)
    start = time.monotonic()
    res = sandbox.run(code)
    wall = time.monotonic() - start
    budget = LIMITS.timeout_s + WALL_SLACK_S + (5.0 if sandbox.name == "docker" else 0.0)  # + a cold container
    assert wall <= budget, f"{case.name}: run took {wall:.1f}s > {budget:.1f}s"
    assert res.duration_s <= LIMITS.timeout_s + WALL_SLACK_S
    try:
        case.check(res, ctx)
    except AssertionError as exc:
        raise AssertionError(f"{case.name} on {sandbox.name}: {exc}\nresult: {res}") from None
    canary_ok(ctx)


def test_enough_adversarial_cases() -> None:
    assert len(CASES) >= 45
