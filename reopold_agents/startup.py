"""Start-up checks of a run's env entries that need the registries (envs, objectives), before any model loads."""

from __future__ import annotations

from reopold_agents.config.schema import RunConfig


def check_entries(cfg: RunConfig) -> None:
    """Each entry's env is registered and takes its keys; a teacher named for an entry exists and is read by
    the objective; no two teachers share a metric label. Raise ValueError('<key>: why')."""
    from envs.factory import env_kwargs
    from reopold_agents.evaluation.heldout import heldout_env_config
    from reopold_agents.models import check_model_name
    from reopold_agents.registry import ENVS
    from reopold_agents.roles import objective_needs
    from reopold_agents.teacher.router import routed_teachers

    needs_teacher, _ = objective_needs(cfg)
    for name, entry in cfg.entries.items():
        env_key = cfg.entry_env_key(name)
        if entry.env.name not in ENVS:
            raise ValueError(f"{env_key}.name: unknown env {entry.env.name!r}; registered: {', '.join(ENVS.names())}")
        try:
            env_kwargs(entry.env, tasks=None, sandbox=None)
            heldout_env_config(entry.env, cfg.trainer.heldout_tasks)  # bfcl: trains on split=train only
        except ValueError as exc:
            raise ValueError(f"{env_key}.{exc}") from None
        if entry.teacher is None:  # a single-env run's entry always: it has model.teacher
            continue
        key = f"mix.{name}"
        if not needs_teacher:
            raise ValueError(f"{key}.teacher: algo={cfg.algo.name} learns without a teacher; leave it unset")
        try:
            check_model_name(entry.teacher)
        except ValueError as exc:
            raise ValueError(f"{key}.teacher: {exc}") from None
    routed_teachers(cfg.entries, cfg.model)
