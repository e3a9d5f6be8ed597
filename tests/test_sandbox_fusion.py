"""`sandbox_fusion` backend: request/response contract against a local stand-in, and a real-server test.

The real test runs when ``SANDBOX_FUSION_ENDPOINT`` points at a SandboxFusion server (none can run here).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from reopold_agents.config.sandbox import FusionSandboxConfig, SandboxLimits
from tools.base import get_tool
from tools.sandbox import SandboxError, make_sandbox
from tools.sandbox.fusion import FusionSandbox

sys.path.insert(0, str(Path(__file__).parent))
from _fusion_standin import FusionStandIn  # noqa: E402

LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=300, max_output_bytes=100)


@pytest.fixture(scope="module")
def server():
    s = FusionStandIn()
    yield s
    s.close()


@pytest.fixture
def sandbox(server: FusionStandIn) -> FusionSandbox:
    server.requests.clear()
    server.canned.clear()
    return FusionSandbox(LIMITS, FusionSandboxConfig(endpoint=server.url, max_attempts=2))


def test_request_fields(sandbox: FusionSandbox, server: FusionStandIn) -> None:
    res = sandbox.run("print(input() * 2)", stdin="ab", timeout_s=2.5)
    assert res.stdout == "abab\n" and res.exit_code == 0 and res.ok
    (req,) = server.requests
    assert req["path"] == "/run_code"
    assert (req["code"], req["stdin"], req["language"]) == ("print(input() * 2)", "ab", "python")
    assert (req["run_timeout"], req["compile_timeout"], req["memory_limit_MB"]) == (2.5, 2.5, 300)


def test_default_timeout_from_limits(sandbox: FusionSandbox, server: FusionStandIn) -> None:
    sandbox.run("print(1)")
    assert server.requests[0]["run_timeout"] == LIMITS.timeout_s and server.requests[0]["stdin"] is None


def test_failed_run_maps_exit_code_and_stderr(sandbox: FusionSandbox) -> None:
    res = sandbox.run("import sys\nprint('out')\nsys.stderr.write('bad\\n')\nsys.exit(4)")
    assert (res.stdout, res.stderr, res.exit_code, res.timed_out, res.killed_reason) == ("out\n", "bad\n", 4, False, None)
    assert res.duration_s > 0


def test_time_limit_maps_to_timed_out(sandbox: FusionSandbox) -> None:
    res = sandbox.run("import time\ntime.sleep(20)", timeout_s=1.0)
    assert res.timed_out and res.killed_reason == "timeout" and res.exit_code == -9 and not res.ok


def test_output_truncated_client_side(sandbox: FusionSandbox) -> None:
    res = sandbox.run("print('z' * 500)")
    assert res.truncated and res.stdout == "z" * LIMITS.max_output_bytes and res.exit_code == 0


def test_compile_error_response(sandbox: FusionSandbox, server: FusionStandIn) -> None:
    server.canned.append((200, {
        "status": "Failed", "message": "", "run_result": None,
        "compile_result": {"status": "Finished", "execution_time": 0.2, "return_code": 1,
                           "stdout": "", "stderr": "main.cpp:1: error: expected ';'"},
    }))
    res = sandbox.run("int main() { return 0 }")
    assert res.exit_code == 1 and res.stderr.startswith("[compile error]\nmain.cpp:1") and res.duration_s == 0.2


def test_sandbox_error_status_raises_after_retries(sandbox: FusionSandbox, server: FusionStandIn) -> None:
    bad = {"status": "SandboxError", "message": "runner crashed", "compile_result": None, "run_result": None}
    server.canned += [(200, bad), (200, bad)]
    with pytest.raises(SandboxError, match="runner crashed"):
        sandbox.run("print(1)")
    assert len(server.requests) == 2  # max_attempts


def test_http_error_is_retried(sandbox: FusionSandbox, server: FusionStandIn) -> None:
    server.canned.append((500, {"detail": "overloaded"}))
    res = sandbox.run("print('second try')")
    assert res.stdout == "second try\n" and len(server.requests) == 2


def test_unreachable_server(server: FusionStandIn) -> None:
    sb = FusionSandbox(LIMITS, FusionSandboxConfig(endpoint="http://127.0.0.1:9", max_attempts=1))
    with pytest.raises(SandboxError, match="127.0.0.1:9"):
        sb.run("print(1)")


def test_endpoint_from_environment(server: FusionStandIn, monkeypatch) -> None:
    monkeypatch.setenv("SANDBOX_FUSION_ENDPOINT", server.url + "/")
    sb = make_sandbox({"backend": "sandbox_fusion"})
    assert isinstance(sb, FusionSandbox) and sb.endpoint == server.url
    assert sb.run("print(6 * 7)").stdout == "42\n"


def test_python_tool_over_fusion(sandbox: FusionSandbox) -> None:
    out = get_tool("python", sandbox=sandbox)(code="print('via fusion')")
    assert out.text == "via fusion\n[exit code 0]" and not out.is_error


@pytest.mark.skipif(not os.environ.get("SANDBOX_FUSION_ENDPOINT"),
                    reason="set SANDBOX_FUSION_ENDPOINT to a SandboxFusion server to run against it")
def test_real_sandbox_fusion_server() -> None:
    sb = make_sandbox({"backend": "sandbox_fusion"})
    res = sb.run("import sys\nprint(sum(range(101)))\nprint(sys.stdin.read().upper())", stdin="hi")
    assert res.exit_code == 0 and res.stdout.split() == ["5050", "HI"]
    res = sb.run("import time\ntime.sleep(30)", timeout_s=1.0)
    assert res.timed_out
    res = sb.run("raise SystemExit(3)")
    assert res.exit_code == 3
