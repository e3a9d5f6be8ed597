"""Functional behaviour of the sandboxes (local bwrap, local fallback, docker) and `make_sandbox`."""

from __future__ import annotations

import ast
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from reopold_agents.config import compose
from reopold_agents.config.sandbox import DockerSandboxConfig, LocalSandboxConfig, SandboxConfig, SandboxLimits
from tools.base import get_tool
from tools.sandbox import ExecResult, Sandbox, SandboxError, make_sandbox
from tools.sandbox.containment import EPHEMERAL_UID_BASE, EPHEMERAL_UID_SPAN
from tools.sandbox.local import LocalSandbox

sys.path.insert(0, str(Path(__file__).parent))
from _docker import docker_base_url  # noqa: E402,F401  (session fixture)

LIMITS = SandboxLimits(timeout_s=2.0, cpu_time_s=2, memory_mb=256, max_processes=32, max_file_size_mb=8,
                       max_open_files=32, workdir_mb=16, max_output_bytes=1000)


@pytest.fixture(
    scope="module", params=["local", "local_fallback", pytest.param("docker", marks=pytest.mark.docker)]
)
def sandbox(request) -> Sandbox:
    if request.param == "local":
        sb: Sandbox = LocalSandbox(LIMITS, LocalSandboxConfig(bwrap="always"))
    elif request.param == "local_fallback":
        sb = LocalSandbox(LIMITS, LocalSandboxConfig(bwrap="never"))
    else:
        from tools.sandbox.docker import DockerSandbox

        sb = DockerSandbox(LIMITS, DockerSandboxConfig(base_url=request.getfixturevalue("docker_base_url")))
    yield sb
    sb.close()


def test_runs_code_and_captures_stdout(sandbox: Sandbox) -> None:
    res = sandbox.run("print(sum(i * i for i in range(10)))\nprint('ünïcode ✓')")
    assert res.stdout == "285\nünïcode ✓\n"
    assert (res.exit_code, res.timed_out, res.truncated, res.killed_reason) == (0, False, False, None)
    assert res.ok and 0 < res.duration_s < LIMITS.timeout_s


def test_exit_code_and_traceback(sandbox: Sandbox) -> None:
    res = sandbox.run("import sys\nprint('partial')\nsys.exit(3)")
    assert (res.stdout, res.exit_code) == ("partial\n", 3)
    res = sandbox.run("1 / 0")
    assert res.exit_code == 1 and "ZeroDivisionError" in res.stderr and not res.ok


def test_stdin(sandbox: Sandbox) -> None:
    res = sandbox.run("import sys\nlines = sys.stdin.read().splitlines()\nprint(len(lines), lines[-1][::-1])",
                      stdin="first\nsecond\nnaïve\n")
    assert res.stdout == "3 evïan\n"
    assert sandbox.run("print(input())", stdin="only line").stdout == "only line\n"


def test_timeout_reported(sandbox: Sandbox) -> None:
    start = time.monotonic()
    res = sandbox.run("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout_s=1.0)
    assert time.monotonic() - start < 1.0 + 5.0
    assert res.timed_out and res.killed_reason == "timeout" and not res.ok
    assert res.stdout == "started\n"  # output before the kill is kept
    assert 0.9 < res.duration_s < 3.0


def test_output_truncation_flagged(sandbox: Sandbox) -> None:
    res = sandbox.run(f"print('a' * {LIMITS.max_output_bytes - 1})")  # exactly the limit with the newline
    assert not res.truncated and len(res.stdout) == LIMITS.max_output_bytes and res.exit_code == 0
    res = sandbox.run(f"print('b' * {LIMITS.max_output_bytes * 5})")
    assert res.truncated and res.stdout == "b" * LIMITS.max_output_bytes
    assert res.killed_reason == "output limit"


def test_signal_exit_is_negative(sandbox: Sandbox) -> None:
    res = sandbox.run("import os, signal\nos.kill(os.getpid(), signal.SIGABRT)")
    assert res.exit_code == -6 and res.killed_reason == "signal SIGABRT"


def test_workdir_is_writable_and_not_shared_between_runs(sandbox: Sandbox) -> None:
    res = sandbox.run("open('state.txt', 'w').write('42')\nprint(open('state.txt').read())")
    assert res.stdout == "42\n", res
    for _ in range(2):  # docker reuses containers: the next runs must start clean
        res = sandbox.run("import os\nprint(os.path.exists('state.txt'))")
        assert res.stdout == "False\n", res


def test_concurrent_runs(sandbox: Sandbox) -> None:
    results: dict[int, ExecResult] = {}

    def work(i: int) -> None:
        results[i] = sandbox.run(f"print({i} * 7)")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert {i: r.stdout for i, r in results.items()} == {i: f"{i * 7}\n" for i in range(3)}


def test_python_tool_uses_sandbox(sandbox: Sandbox) -> None:
    # A generous limit for code that must finish (a loaded CI machine can take >1 s to start python),
    # a short one for the code that must time out.
    tool = get_tool("python", sandbox=sandbox, timeout_s=20.0)
    ok = tool(code="print(2 ** 100)")
    assert not ok.is_error and ok.text == f"{2 ** 100}\n[exit code 0]"
    bad = tool(code="raise ValueError('boom')")
    assert bad.is_error and "ValueError: boom" in bad.text and "[exit code 1]" in bad.text
    slow = get_tool("python", sandbox=sandbox, timeout_s=1.0)(code="while True: pass", stdin="")
    assert slow.is_error and "[timed out]" in slow.text


# ----------------------------------------------------------------------- local backend specifics


def test_fallback_warns_and_still_limits(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tools.sandbox.local"):
        sb = LocalSandbox(LIMITS, LocalSandboxConfig(bwrap="never"))
    assert not sb.isolated
    res = sb.run("import os\nprint(os.getuid(), sorted(os.environ))\nx = b'x' * (512 * 2**20)")
    assert res.exit_code == 1 and "MemoryError" in res.stderr and res.killed_reason == "memory limit"
    uid, env = res.stdout.split(" ", 1)
    if os.geteuid() == 0:  # each run has its own unprivileged uid (private files, its own NPROC)
        assert EPHEMERAL_UID_BASE <= int(uid) < EPHEMERAL_UID_BASE + EPHEMERAL_UID_SPAN
    assert env.strip() == str(sorted(["HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING"]))


@pytest.mark.skipif(os.geteuid() != 0, reason="per-run uids need root")
def test_fallback_work_dirs_are_private_between_concurrent_runs() -> None:
    """Without namespaces, two runs at once must not read each other's files (or code, or stdin)."""
    sb = LocalSandbox(LIMITS, LocalSandboxConfig(bwrap="never"))
    secret = f"reopold-run-secret-{os.getpid()}"
    slow = threading.Thread(target=lambda: sb.run(
        f"open('mine.txt', 'w').write({secret!r})\nimport time\ntime.sleep(3)  # {secret}", stdin=secret, timeout_s=5))
    slow.start()
    time.sleep(1.0)
    spy = sb.run(
        "import glob, os\nfound = []\n"
        "for p in glob.glob('/tmp/reopold-sbx-*/**', recursive=True) + glob.glob('/tmp/reopold-sbx-*/*'):\n"
        "    try:\n        found.append(open(p).read())\n    except OSError as e:\n        found.append(type(e).__name__)\n"
        "print(found)", timeout_s=5)
    slow.join()
    assert spy.exit_code == 0, spy
    assert secret not in spy.stdout, f"a concurrent run's files were readable: {spy.stdout}"


def test_bwrap_sandbox_is_isolated() -> None:
    sb = LocalSandbox(LIMITS, LocalSandboxConfig(bwrap="auto"))
    assert sb.isolated
    res = sb.run("import os\nprint(sorted(os.listdir('/')))\nprint(os.getcwd())")
    listing, cwd = res.stdout.splitlines()
    visible = set(ast.literal_eval(listing))
    assert not visible & {"work", "root", "home", "etc", "var"}, visible  # the host's tree is not there
    assert {"usr", "workspace", "tmp", "sandbox"} <= visible and cwd == "/workspace"


def test_bwrap_always_without_bwrap_fails(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxError, match="bubblewrap"):
        LocalSandbox(LIMITS, LocalSandboxConfig(bwrap="always"))


def test_bad_local_settings_fail_clearly() -> None:
    with pytest.raises(SandboxError, match="no such user"):
        LocalSandbox(LIMITS, LocalSandboxConfig(user="no-such-user-xyz"))
    with pytest.raises(SandboxError, match="not under any of local.ro_paths"):
        LocalSandbox(LIMITS, LocalSandboxConfig(python="/opt/python3", ro_paths=["/usr"]))
    with pytest.raises(SandboxError, match="does not exist"):
        LocalSandbox(LIMITS, LocalSandboxConfig(python="/usr/bin/no-such-python"))
    with pytest.raises(ValueError, match="timeout_s"):
        LocalSandbox(LIMITS).run("print(1)", timeout_s=0)


# ------------------------------------------------------------------------- docker pool behaviour


@pytest.mark.docker
def test_docker_pool_reuses_and_replaces(docker_base_url: str) -> None:
    import docker

    from tools.sandbox.docker import LABEL, DockerSandbox

    client = docker.DockerClient(base_url=docker_base_url)
    sb = DockerSandbox(LIMITS, DockerSandboxConfig(base_url=docker_base_url, pool_size=1))

    def pooled() -> list[str]:
        return [slot.container.id for slot in list(sb._pool.queue)]

    try:
        first = pooled()
        assert len(first) == 1 and sb.run("print(1)").ok
        assert pooled() == first  # a clean run gives the container back
        assert sb.run("while True: pass", timeout_s=1.0).timed_out  # a timed-out one is destroyed...
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not pooled():
            time.sleep(0.2)
        second = pooled()
        assert len(second) == 1 and second != first  # ...and replaced by a fresh one
        assert first[0] not in {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
        assert sb.run("print('fresh')").stdout == "fresh\n"
    finally:
        sb.close()
    left = {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
    assert not left & set(first + second), "close() left containers behind"
    with pytest.raises(SandboxError, match="closed"):
        sb.run("print(1)")


@pytest.mark.docker
def test_docker_errors_are_clear(docker_base_url: str) -> None:
    from tools.sandbox.docker import DockerSandbox

    with pytest.raises(SandboxError, match="not found; build it with scripts/docker_sandbox_image.sh"):
        DockerSandbox(LIMITS, DockerSandboxConfig(base_url=docker_base_url, image="reopold-missing:none"))
    with pytest.raises(SandboxError, match="not reachable"):
        DockerSandbox(LIMITS, DockerSandboxConfig(base_url="unix:///nonexistent/docker.sock"))


# --------------------------------------------------------------------------- config and factory


def test_make_sandbox_from_config() -> None:
    sb = make_sandbox(compose(["sandbox=local"]))
    assert isinstance(sb, LocalSandbox) and sb.limits.timeout_s == 10.0
    sb = make_sandbox({"backend": "local", "limits": {"timeout_s": 3}, "local": {"bwrap": "never"}})
    assert isinstance(sb, LocalSandbox) and sb.limits.timeout_s == 3 and not sb.isolated
    assert make_sandbox(None).run("print('default')").stdout == "default\n"


def test_make_sandbox_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="backend: expected one of local, docker, sandbox_fusion"):
        make_sandbox(SandboxConfig(backend="vm"))
    with pytest.raises(ValueError, match="limits.memory_mb"):
        make_sandbox(SandboxConfig(limits=SandboxLimits(memory_mb=8)))
    with pytest.raises(SandboxError, match="SANDBOX_FUSION_ENDPOINT"):
        make_sandbox({"backend": "sandbox_fusion"})
    with pytest.raises(TypeError, match="expected SandboxConfig"):
        make_sandbox(42)


def test_config_unknown_key_fails_naming_it() -> None:
    from reopold_agents.config.schema import ConfigError

    with pytest.raises(ConfigError, match="sandbox.docker.pool"):
        compose(["sandbox=docker", "+sandbox.docker.pool=3"])
    with pytest.raises(ConfigError, match="sandbox.docker.pool_size"):
        compose(["sandbox=docker", "sandbox.docker.pool_size=0"])
    cfg = compose(["sandbox=sandbox_fusion", "sandbox.sandbox_fusion.endpoint=http://127.0.0.1:9"])
    assert cfg.sandbox.backend == "sandbox_fusion" and cfg.sandbox.sandbox_fusion.endpoint == "http://127.0.0.1:9"


def test_exec_result_summary() -> None:
    res = ExecResult(stdout="out\n", stderr="warn\n", exit_code=-9, timed_out=True, killed_reason="timeout",
                     truncated=True)
    assert res.summary() == "out\n[stderr]\nwarn\n[timed out]\n[output truncated]\n[exit code -9]"
    long = ExecResult(stdout="x" * 500, stderr="", exit_code=0).summary(max_chars=100)
    assert len(long) <= 100 and long.endswith("...[truncated]")
