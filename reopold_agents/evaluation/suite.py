"""Loading suites and composing the evaluate CLI's config.

``suite=<name>`` selects ``configs/eval/<name>.yaml`` through Hydra's ``eval`` group, so every key of the
suite can be overridden on the command line (``eval.benchmarks.gsm8k.env.tasks=/data/gsm8k.jsonl``);
``suite=<path.yaml>`` reads a suite file from anywhere. ``k=`` and ``limit=`` are applied afterwards.

Sampling is per benchmark. ``engine.sampling.<key>=V`` / ``engine.max_total_tokens=V`` given on the
evaluate command line set that key for every benchmark of the suite; a benchmark's own
``eval.benchmarks.<name>.sampling.<key>`` on the command line wins over it, and both win over the suite file.
An engine group's file (``engine=vllm``) does not change the suite's sampling: only explicit keys do.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.eval import BenchmarkConfig, EvalConfig, EvaluateConfig
from reopold_agents.config.schema import CONFIG_DIR, ConfigError

SUITE_DIR = CONFIG_DIR / "eval"


def suite_names() -> list[str]:
    """Suites shipped in configs/eval/."""
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def _is_path(suite: str) -> bool:
    return suite.endswith((".yaml", ".yml")) or "/" in suite


def _structured(schema: type, cfg: DictConfig | dict[str, Any], prefix: str) -> Any:
    try:
        if isinstance(cfg, DictConfig):  # plain data first: a key forced into a typed node must still fail
            cfg = OmegaConf.to_container(cfg, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
        raise ConfigError(f"bad config key {prefix + key!r}: {msg}") from None
    try:
        obj.check()
    except ValueError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    return obj


def load_suite(suite: str, overrides: list[str] | None = None,
               every_benchmark: dict[str, Any] | None = None) -> EvalConfig:
    """A suite by name (configs/eval/<name>.yaml) or path, with dotted overrides (``benchmarks.x.n=2``).

    ``every_benchmark`` (``{"sampling": {"temperature": 0.0}}``) is merged into each benchmark above the
    suite file and below ``overrides``, so a benchmark's own override still wins.
    """
    path = Path(suite) if _is_path(suite) else SUITE_DIR / f"{suite}.yaml"
    if not path.exists():
        where = f"file {path}" if _is_path(suite) else f"suite {suite!r}; shipped suites: {', '.join(suite_names())}"
        raise ConfigError(f"suite: unknown {where}")
    data = OmegaConf.load(path)
    dotted = OmegaConf.from_dotlist(list(overrides or []))
    data = OmegaConf.merge(data, dotted)
    if every_benchmark:
        names = list((data.get("benchmarks") or {}).keys())  # includes benchmarks the overrides added
        data = OmegaConf.merge(data, {"benchmarks": {name: every_benchmark for name in names}}, dotted)
    return _structured(EvalConfig, data, "eval.")


# EngineConfig keys that are per-benchmark settings in a suite (BenchmarkConfig.sampling / .max_total_tokens)
SUITE_ENGINE_KEYS = ("sampling", "max_total_tokens")


def engine_keys_for_every_benchmark(engine_overrides: list[str], engine: EngineConfig) -> dict[str, Any]:
    """The ``engine.sampling.*`` / ``engine.max_total_tokens`` keys named on the command line, with the
    checked values of ``engine``, shaped as a benchmark's keys (``{"sampling": {"temperature": 0.0}}``)."""
    named = OmegaConf.to_container(OmegaConf.from_dotlist(engine_overrides)).get("engine") or {}
    out: dict[str, Any] = {}
    if isinstance(named.get("sampling"), dict):
        out["sampling"] = {key: getattr(engine.sampling, key) for key in named["sampling"]}
    if "max_total_tokens" in named:
        out["max_total_tokens"] = engine.max_total_tokens
    return out


def compose_evaluate(overrides: list[str] | None = None) -> EvaluateConfig:
    """The evaluate CLI's config from command-line overrides (``suite=math_tiny k=8 ...``).

    Hydra composes ``configs/evaluate.yaml`` with the ``engine`` group (``engine=vllm``). The CLI's own
    scalar keys (``model=`` would otherwise be read as the training ``model`` group), ``engine.*`` and the
    suite's keys (``eval.*``) are merged afterwards and checked against the dataclasses, so each error
    names the full key.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    if any(o.startswith("eval=") for o in overrides):
        raise ConfigError("eval: choose the suite with suite=<name or path>, not eval=")
    own = {f.name for f in fields(EvaluateConfig)} - {"eval", "engine"}
    # merged after composition and checked against the dataclasses (a group's YAML need not list every key)
    own_overrides = [o for o in overrides if o.split("=", 1)[0] in own or o.startswith("engine.")]
    eval_overrides = [o[len("eval."):] for o in overrides if o.startswith("eval.")]
    hydra_overrides = [o for o in overrides if o not in own_overrides and not o.startswith("eval.")]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg: DictConfig = compose(config_name="evaluate", overrides=hydra_overrides)
    except Exception as exc:  # hydra's override/compose errors name the offending key
        match = re.search(r"Could not override '([^']+)'", str(exc))
        if match:
            raise ConfigError(f"unknown config key {match.group(1)!r} (see reopold_agents/config/eval.py)") from None
        raise ConfigError(f"bad override: {exc}") from None
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # plain data: typed by _structured below
    if own_overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(own_overrides))
    engine = _structured(EngineConfig, cfg.engine, "engine.")  # checked first: its errors name engine.<key>
    every = engine_keys_for_every_benchmark([o for o in own_overrides if o.startswith("engine.")], engine)
    cfg.eval = OmegaConf.structured(load_suite(str(cfg.suite), eval_overrides, every))
    return _structured(EvaluateConfig, cfg, "")


def resolve_suite(cfg: EvalConfig, k: int | None = None, limit: int | None = None) -> EvalConfig:
    """The suite with ``k`` samples per task for every benchmark and at most ``limit`` tasks each."""
    benches: dict[str, BenchmarkConfig] = {}
    for name, bench in cfg.benchmarks.items():
        size = bench.env.size
        if limit is not None:
            size = limit if size == 0 else min(size, limit)
        benches[name] = replace(bench, n=k if k is not None else bench.n, env=replace(bench.env, size=size))
    return replace(cfg, benchmarks=benches)
