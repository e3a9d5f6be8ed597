"""The root config and its validation against the typed sections."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.distributed import DistributedConfig
from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.env import EnvConfig
from reopold_agents.config.eval import EvalConfig
from reopold_agents.config.mix import MixEntry, check_mix
from reopold_agents.config.model import ModelConfig
from reopold_agents.config.sandbox import SandboxConfig
from reopold_agents.config.tiny_pairs import tiny_for_env
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.config.vision import check_vision_student

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
    mix: dict[str, MixEntry] = field(default_factory=dict)  # multi-task run (config/mix.py); empty: one env

    @property
    def entries(self) -> dict[str, MixEntry]:
        """The run's envs: the ``mix`` entries, or the one ``env`` as an entry named after it (weight 1,
        ``model.teacher``). Every path of a run (task draw, rollout, teacher routing, held-out) reads this."""
        return dict(self.mix) if self.mix else {self.env.name: MixEntry(env=self.env)}

    def entry_env_key(self, name: str) -> str:
        """The config key of entry ``name``'s env section, for error messages (``env`` or ``mix.<name>.env``)."""
        return f"mix.{name}.env" if self.mix else "env"

    @property
    def recomputes_old_logprobs(self) -> bool:
        """``trainer.recompute_old_logprobs`` resolved (None: whenever the engine is not the learner's own
        module, i.e. not ``hf``); read by the learner and the preflight."""
        rec = self.trainer.recompute_old_logprobs
        return self.engine.name != "hf" if rec is None else bool(rec)


def resolve_tiny(cfg: RunConfig) -> RunConfig:
    """``model=tiny`` names the env's test-bed pair (``ENV_TINY``): math boxes a guess; toolqa guesses
    instead of calling a tool; vqa answers the question's prior without looking. A run over several envs
    takes its tiny names as they are (``teacher=self`` stays self)."""
    env = next(iter(cfg.entries.values())).env.name if len(cfg.entries) == 1 else ""
    model = replace(cfg.model, student=tiny_for_env(cfg.model.student, env), teacher=tiny_for_env(cfg.model.teacher, env))
    return replace(cfg, model=model)


def register_schemas() -> None:
    """Register the typed roots with Hydra's ConfigStore: ``configs/config.yaml`` and
    ``configs/evaluate.yaml`` start from them, so every default lives in the dataclasses only and the
    YAML files state what differs."""
    from hydra.core.config_store import ConfigStore

    from reopold_agents.config.eval import EvaluateConfig

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)


def check_finite(node: Any, key: str = "") -> None:
    """Every float of a config tree must be finite (NaN passes every range check); raise naming the key."""
    join = lambda name: f"{key}.{name}" if key else str(name)  # noqa: E731
    if is_dataclass(node):
        for f in fields(node):
            check_finite(getattr(node, f.name), join(f.name))
    elif isinstance(node, dict):
        for name, value in node.items():
            check_finite(value, join(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}: must be a finite number, got {node}")


def validate(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Merge ``cfg`` onto the schema and run each section's range checks; raise ConfigError naming the key."""
    try:
        if isinstance(cfg, DictConfig):  # plain data first: a key forced into a typed node must still fail
            cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run_cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"bad config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    check_finite(run_cfg)
    for name in ("algo", "model", "engine", "sandbox", "trainer", "eval", "distributed"):
        section = getattr(run_cfg, name)
        check = getattr(section, "check", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                raise ConfigError(f"{name}.{exc}") from None
    try:
        check_mix(run_cfg.mix, run_cfg.env)
        check_vision_student(run_cfg.model.student, run_cfg.env.name,
                             {name: entry.env.name for name, entry in run_cfg.mix.items()})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return run_cfg


def compose(overrides: list[str] | None = None, config_name: str = "config") -> RunConfig:
    """Compose ``configs/`` with Hydra overrides outside of ``@hydra.main`` (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
        except ConfigCompositionException as exc:  # the typed schema rejected an override's value or key
            cause = exc.__cause__
            key = getattr(cause, "full_key", None)
            why = (getattr(cause, "msg", None) or str(cause or exc)).splitlines()[0]
            raise ConfigError(f"bad config key {key!r}: {why} ({exc})" if key else str(exc)) from None
    return validate(cfg)


register_schemas()
