"""Build envs from the `env` config section (what the run and evaluate CLIs call).

Keys every env takes (tasks, max_turns, seed) are always passed; the optional keys (system_prompt,
max_pixels, min_pixels, tools, max_tool_chars, max_action_chars, and the sandbox) only when set, and setting one the
chosen env's constructor does not accept is an error naming the key, never silently dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from reopold_agents.config.env import EnvConfig
from reopold_agents.registry import ENVS
from reopold_agents.seeding import env_seed
from tasks.record import Task


def load_env_tasks(cfg: EnvConfig) -> Sequence[Task]:
    """The task source named by ``cfg.tasks`` (``synthetic`` means this env's own generator)."""
    from tasks.loaders import load_tasks

    source = cfg.tasks
    if source == "synthetic":
        source = f"synthetic:{ENVS.get(cfg.name).task_kind or cfg.name}"
    limit = cfg.size if cfg.size > 0 else None
    return load_tasks(source, split=cfg.split, limit=limit, seed=cfg.seed, difficulty=cfg.difficulty, size=cfg.size)


OPTIONAL_KEYS = ("system_prompt", "max_pixels", "min_pixels", "tools", "max_tool_chars", "scoring_timeout_s",
                 "answer_format", "max_action_chars")


def _accepted_params(cls: Any) -> set[str]:
    params: set[str] = set()
    for klass in getattr(cls, "__mro__", [cls]):  # subclasses forward **kwargs to TextEnv.__init__
        init = klass.__dict__.get("__init__")
        if init is not None:
            params.update(name for name, p in inspect.signature(init).parameters.items()
                          if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self")
    return params


def env_kwargs(cfg: EnvConfig, *, tasks: Sequence[Task] | None, sandbox: Any, seed_offset: int = 0) -> dict[str, Any]:
    """Constructor kwargs of ``cfg.name`` from ``cfg``; ValueError('key: why') for a set key it cannot take."""
    cls = ENVS.get(cfg.name)
    accepted = _accepted_params(cls)
    kwargs: dict[str, Any] = {"tasks": tasks, "max_turns": cfg.max_turns, "seed": env_seed(cfg.seed, seed_offset)}
    for key in OPTIONAL_KEYS:
        value = getattr(cfg, key)
        if value is None:
            continue
        if key not in accepted:
            raise ValueError(f"{key}: env {cfg.name!r} does not take it (it takes: {', '.join(sorted(accepted))})")
        kwargs[key] = list(value) if key == "tools" else value
    if sandbox is not None and "sandbox" in accepted:
        kwargs["sandbox"] = sandbox
    return kwargs


def build_env(cfg: EnvConfig, *, tasks: Sequence[Task] | None = None, sandbox: Any = None, seed_offset: int = 0) -> Any:
    """One env from ``cfg``; pass ``tasks`` to share an already loaded task source between envs.

    ``sandbox``: a ready `tools.sandbox.Sandbox`, or the `sandbox` config section (or None for its
    defaults) from which one is built when the env's tools include ``python``.
    """
    cfg.check()
    cls = ENVS.get(cfg.name)
    if tasks is None:
        tasks = load_env_tasks(cfg)
    if "python" in (cfg.tools or ()):
        from tools.sandbox.base import Sandbox
        from tools.sandbox.factory import make_sandbox

        if not isinstance(sandbox, Sandbox):  # None, a SandboxConfig or the RunConfig: build the backend
            sandbox = make_sandbox(sandbox)
    else:
        sandbox = None
    return cls(**env_kwargs(cfg, tasks=tasks, sandbox=sandbox, seed_offset=seed_offset))


def build_envs(cfg: EnvConfig, n: int, *, sandbox: Any = None) -> list[Any]:
    """``n`` envs over one shared task source (env ``i`` seeded ``cfg.seed + i``), e.g. for lock-step rollouts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tasks = load_env_tasks(cfg)
    return [build_env(cfg, tasks=tasks, sandbox=sandbox, seed_offset=i) for i in range(n)]
