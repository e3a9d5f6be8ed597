"""`make_sandbox(cfg)`: the backend named by ``sandbox.backend`` (local | docker | sandbox_fusion)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from reopold_agents.config.sandbox import SandboxConfig
from tools.sandbox.base import Sandbox


def _as_config(cfg: Any) -> SandboxConfig:
    if cfg is None:
        return SandboxConfig()
    if isinstance(cfg, SandboxConfig):
        return cfg
    if hasattr(cfg, "sandbox") and isinstance(getattr(cfg, "sandbox"), SandboxConfig):  # a RunConfig
        return cfg.sandbox
    if isinstance(cfg, (dict, DictConfig)):
        merged = OmegaConf.merge(OmegaConf.structured(SandboxConfig), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    raise TypeError(f"make_sandbox: expected SandboxConfig, RunConfig or dict, got {type(cfg).__name__}")


def make_sandbox(cfg: Any = None) -> Sandbox:
    """Build the configured sandbox. ``cfg``: SandboxConfig, a RunConfig, a dict, or None (defaults)."""
    conf = _as_config(cfg)
    conf.check()
    if conf.backend == "local":
        from tools.sandbox.local import LocalSandbox

        return LocalSandbox(conf.limits, conf.local)
    if conf.backend == "docker":
        from tools.sandbox.docker import DockerSandbox

        return DockerSandbox(conf.limits, conf.docker)
    from tools.sandbox.fusion import FusionSandbox

    return FusionSandbox(conf.limits, conf.sandbox_fusion)
