"""The root config and its validation against the typed sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.distributed import DistributedConfig
from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.env import EnvConfig
from reopold_agents.config.eval import EvalConfig
from reopold_agents.config.model import ModelConfig
from reopold_agents.config.sandbox import SandboxConfig
from reopold_agents.config.trainer import TrainerConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range; the message names the key."""


@dataclass
class RunConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def validate(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Merge ``cfg`` onto the schema and run each section's range checks; raise ConfigError naming the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run_cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"bad config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    for name in ("env", "algo", "model", "engine", "sandbox", "trainer", "eval", "distributed"):
        section = getattr(run_cfg, name)
        check = getattr(section, "check", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                raise ConfigError(f"{name}.{exc}") from None
    return run_cfg


def compose(overrides: list[str] | None = None, config_name: str = "config") -> RunConfig:
    """Compose ``configs/`` with Hydra overrides outside of ``@hydra.main`` (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    return validate(cfg)
