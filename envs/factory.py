"""Build envs from the `env` config section (what the run and evaluate CLIs call).

Only the keyword arguments an env's constructor accepts are passed, so plugin envs registered under
another name work with the same config; a config key a plugin cannot take is simply not given to it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from reopold_agents.config.env import EnvConfig
from reopold_agents.registry import ENVS
from tasks.record import Task


def load_env_tasks(cfg: EnvConfig) -> Sequence[Task]:
    """The task source named by ``cfg.tasks`` (``synthetic`` means this env's own generator)."""
    from tasks.loaders import load_tasks

    source = cfg.tasks
    if source == "synthetic":
        source = f"synthetic:{ENVS.get(cfg.name).task_kind or cfg.name}"
    limit = cfg.size if cfg.size > 0 else None
    return load_tasks(source, split=cfg.split, limit=limit, seed=cfg.seed, difficulty=cfg.difficulty, size=cfg.size)


def _accepted(cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, inspect.Parameter] = {}
    for klass in getattr(cls, "__mro__", [cls]):  # subclasses forward **kwargs to TextEnv.__init__
        init = klass.__dict__.get("__init__")
        if init is not None:
            params.update(inspect.signature(init).parameters)
    return {k: v for k, v in kwargs.items() if k in params}


def build_env(cfg: EnvConfig, *, tasks: Sequence[Task] | None = None, sandbox: Any = None, seed_offset: int = 0) -> Any:
    """One env from ``cfg``; pass ``tasks`` to share an already loaded task source between envs.

    ``sandbox``: a ready `tools.sandbox.Sandbox`, or the `sandbox` config section (or None for its
    defaults) from which one is built when the toolqa tools include ``python``.
    """
    cfg.check()
    cls = ENVS.get(cfg.name)
    if tasks is None:
        tasks = load_env_tasks(cfg)
    if "python" in cfg.tools and cfg.name == "toolqa":
        from tools.sandbox.base import Sandbox
        from tools.sandbox.factory import make_sandbox

        if not isinstance(sandbox, Sandbox):  # None, a SandboxConfig or the RunConfig: build the backend
            sandbox = make_sandbox(sandbox)
    kwargs: dict[str, Any] = {
        "tasks": tasks,
        "max_turns": cfg.max_turns,
        "seed": cfg.seed + seed_offset,
        "max_pixels": cfg.max_pixels,
        "min_pixels": cfg.min_pixels,
        "tools": list(cfg.tools),
        "sandbox": sandbox,
        "max_tool_chars": cfg.max_tool_chars,
    }
    if cfg.system_prompt is not None:
        kwargs["system_prompt"] = cfg.system_prompt
    return cls(**_accepted(cls, kwargs))


def build_envs(cfg: EnvConfig, n: int, *, sandbox: Any = None) -> list[Any]:
    """``n`` envs over one shared task source (env ``i`` seeded ``cfg.seed + i``), e.g. for lock-step rollouts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tasks = load_env_tasks(cfg)
    return [build_env(cfg, tasks=tasks, sandbox=sandbox, seed_offset=i) for i in range(n)]
