"""`sandbox_fusion` backend: the ``sandbox-fusion`` client against a SandboxFusion server (``/run_code``).

Isolation and process limits are the server's; this side sends the run timeout and the memory limit
(``memory_limit_MB``), retries failed HTTP requests (``sandbox_fusion.max_attempts``), caps output at
``limits.max_output_bytes`` and maps the server's response (``status``, ``compile_result``, ``run_result``) onto `ExecResult`.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

from reopold_agents.config.sandbox import FusionSandboxConfig, SandboxLimits
from tools.sandbox.base import ExecResult, Sandbox, SandboxError, truncate

ENDPOINT_ENV = "SANDBOX_FUSION_ENDPOINT"


@lru_cache(maxsize=1)
def _request_model() -> Any:
    """`RunCodeRequest` plus ``memory_limit_MB``: the server API takes it, client 0.3.x does not model it."""
    from sandbox_fusion import RunCodeRequest

    if "memory_limit_MB" in RunCodeRequest.__fields__:
        return RunCodeRequest

    class RunCodeRequestWithMemory(RunCodeRequest):
        memory_limit_MB: int = -1

    return RunCodeRequestWithMemory


class FusionSandbox(Sandbox):
    """Run code through a SandboxFusion server."""

    name = "sandbox_fusion"

    def __init__(self, limits: SandboxLimits | None = None, fusion: FusionSandboxConfig | None = None) -> None:
        try:
            import sandbox_fusion  # noqa: F401
        except ImportError:
            raise SandboxError(
                "sandbox=sandbox_fusion needs the client: pip install 'reopold-agents[sandbox_fusion]'"
            ) from None
        self.limits = limits or SandboxLimits()
        self.cfg = fusion or FusionSandboxConfig()
        self.limits.check()
        self.cfg.check()
        self.endpoint = (self.cfg.endpoint or os.environ.get(ENDPOINT_ENV, "")).rstrip("/")
        if not self.endpoint:
            raise SandboxError(f"sandbox_fusion.endpoint is empty and ${ENDPOINT_ENV} is not set: no server to use")

    def request(self, code: str, stdin: str | None, timeout: float) -> Any:
        """The `RunCodeRequest` sent for one run (exposed for the contract tests)."""
        return _request_model()(code=code, stdin=stdin, language=self.cfg.language, run_timeout=timeout,
                                compile_timeout=timeout, memory_limit_MB=self.limits.memory_mb)

    def run(self, code: str, stdin: str | None = None, timeout_s: float | None = None) -> ExecResult:
        from sandbox_fusion import run_code

        timeout = float(timeout_s if timeout_s is not None else self.limits.timeout_s)
        if timeout <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        start = time.monotonic()
        try:
            resp = run_code(self.request(code, stdin, timeout), endpoint=self.endpoint,
                            max_attempts=self.cfg.max_attempts,
                            client_timeout=timeout + self.cfg.request_timeout_s)
        except Exception as exc:  # the client raises bare Exceptions (HTTP errors, SandboxError status)
            raise SandboxError(f"SandboxFusion at {self.endpoint} failed: {exc}") from None
        return self.to_result(resp, time.monotonic() - start)

    def to_result(self, resp: Any, wall_s: float) -> ExecResult:
        """Map a `RunCodeResponse` to an `ExecResult` (compile failures count as the run's result)."""
        from sandbox_fusion import CommandRunStatus

        cmd = resp.run_result
        if cmd is None:
            cmd = resp.compile_result
        if cmd is None:
            raise SandboxError(f"SandboxFusion returned no result (status {resp.status.value}: {resp.message})")
        timed_out = cmd.status == CommandRunStatus.TimeLimitExceeded
        if cmd.return_code is not None:
            exit_code = int(cmd.return_code)
        else:  # killed before it returned (time limit) or the server could not start it
            exit_code = -9 if timed_out else 1
        limit = self.limits.max_output_bytes
        stdout, cut_out = truncate((cmd.stdout or "").encode("utf-8", errors="replace"), limit)
        stderr, cut_err = truncate((cmd.stderr or "").encode("utf-8", errors="replace"), limit)
        if resp.run_result is None and exit_code != 0:
            stderr = "[compile error]\n" + stderr
        reason = "timeout" if timed_out else None
        if not timed_out and cmd.status.value == "Error" and exit_code == 0:
            reason = "sandbox error"
        return ExecResult(
            stdout=stdout, stderr=stderr, exit_code=exit_code, timed_out=timed_out, killed_reason=reason,
            duration_s=float(cmd.execution_time) if cmd.execution_time is not None else wall_s,
            truncated=cut_out or cut_err,
        )
