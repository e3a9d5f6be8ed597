"""`python`: run model-written Python in the configured sandbox and return stdout/stderr/exit status."""

from __future__ import annotations

from typing import Any

from tools.base import Tool, ToolResult, register_tool
from tools.sandbox.base import Sandbox


@register_tool("python")
class PythonTool(Tool):
    """Execute Python code in a sandbox (no network, limited CPU/memory/time; state is not kept between calls).

    ``get_tool("python", sandbox=make_sandbox(cfg.sandbox))``; without a sandbox the default `local`
    backend is built on first use. The model sees stdout, stderr (marked), the exit code and whether the
    run timed out or its output was truncated, cut to ``max_chars``.
    """

    name = "python"
    description = (
        "Run a self-contained Python 3 program and return its printed output (stdout, stderr and exit code). "
        "Use print() to see results. No network access; each call starts fresh."
    )
    parameters = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "the complete Python program to run"},
            "stdin": {"type": "string", "description": "optional text fed to the program's standard input"},
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(self, sandbox: Sandbox | None = None, timeout_s: float | None = None, max_chars: int = 4000) -> None:
        if max_chars < 100:
            raise ValueError(f"python tool: max_chars must be >= 100, got {max_chars}")
        self.sandbox = sandbox
        self.timeout_s = timeout_s
        self.max_chars = max_chars

    def run(self, code: str, stdin: str | None = None, **_: Any) -> ToolResult:
        if not code.strip():
            return ToolResult.error("python: 'code' is empty")
        if self.sandbox is None:
            from tools.sandbox.factory import make_sandbox

            self.sandbox = make_sandbox()
        res = self.sandbox.run(code, stdin=stdin, timeout_s=self.timeout_s)
        return ToolResult(text=res.summary(self.max_chars), is_error=not res.ok)
