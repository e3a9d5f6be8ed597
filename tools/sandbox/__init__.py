"""Sandboxes for model-written code: `make_sandbox(cfg)` picks `local`, `docker` or `sandbox_fusion`."""

from tools.sandbox.base import ExecResult, Sandbox, SandboxError
from tools.sandbox.factory import make_sandbox

__all__ = ["ExecResult", "Sandbox", "SandboxError", "make_sandbox"]
