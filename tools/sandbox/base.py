"""One interface for running untrusted (model-written) code: `Sandbox.run(code) -> ExecResult`.

Backends (`local`, `docker`, `sandbox_fusion`) differ in isolation strength, not in this contract:
``run`` never raises for anything the *code* does (crash, timeout, memory/process/disk exhaustion,
huge output); those come back as fields of `ExecResult`. It raises `SandboxError` only when the
backend itself is unusable (daemon down, server unreachable, misconfiguration).
"""

from __future__ import annotations

from dataclasses import dataclass


class SandboxError(RuntimeError):
    """The sandbox backend cannot run code at all (not: the code failed)."""


@dataclass
class ExecResult:
    """Outcome of one run. ``exit_code`` is negative -N when killed by signal N (POSIX style)."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    killed_reason: str | None = None  # "timeout", "memory", "cpu", "output", "signal N"...; None if exited
    duration_s: float = 0.0
    truncated: bool = False  # stdout or stderr was cut to the output limit

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def summary(self, max_chars: int | None = None) -> str:
        """Model-facing text: stdout, stderr and the exit status (what the `python` tool returns)."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.timed_out:
            parts.append("[timed out]")
        elif self.killed_reason:
            parts.append(f"[killed: {self.killed_reason}]")
        if self.truncated:
            parts.append("[output truncated]")
        parts.append(f"[exit code {self.exit_code}]")
        text = "\n".join(parts)
        if max_chars is not None and len(text) > max_chars:
            text = text[: max_chars - 20] + "\n...[truncated]"
        return text


class Sandbox:
    """Base class: run Python source ``code`` with optional ``stdin``; ``timeout_s`` is wall-clock."""

    name = "base"

    def run(self, code: str, stdin: str | None = None, timeout_s: float | None = None) -> ExecResult:
        raise NotImplementedError

    def close(self) -> None:
        """Release backend resources (containers, sessions). Idempotent."""

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def truncate(data: bytes, limit: int) -> tuple[str, bool]:
    """Decode at most ``limit`` bytes (replacing invalid UTF-8); flag whether anything was cut."""
    cut = len(data) > limit
    return data[:limit].decode("utf-8", errors="replace"), cut
