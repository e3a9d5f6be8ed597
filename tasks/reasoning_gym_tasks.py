"""reasoning-gym's procedural generators as a task source, scored by each dataset's own ``score_answer``.

``load_tasks("reasoning_gym:chain_sum", size=100, seed=0)`` generates 100 entries of reasoning-gym's
``chain_sum`` dataset; dataset config keys follow a ``?``, URL-style, values read as YAML scalars:
``reasoning_gym:countdown?min_numbers=3&max_numbers=4``. ``size`` and ``seed`` come from the env config
(``env.size``, ``env.seed``), not from the query. In a Hydra command-line override, quote the value
(``"env.tasks='reasoning_gym:countdown?min_numbers=3'"``): Hydra does not accept a bare ``=`` in it.

Each task keeps the generated entry and the dataset config in ``meta`` (``scorer: reasoning_gym``), so
`envs.scoring.score_answer` hands the extracted final answer to the same dataset's
``score_answer(answer, entry)``: the reward is its score in [0, 1] (some datasets give partial credit),
and an episode counts as solved at 1.0. Generation is offline and deterministic for a seed.

Scoring never happens in this process: several of these scorers ``eval`` the answer (``sympy.parse_expr``),
so `envs.scoring.score_reasoning_gym` refuses answers outside the dataset's answer grammar
(`envs.answer_guard`) and runs the scorer in the contained scoring worker (`envs.scoring_kernel`).
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

import yaml

from tasks.errors import TaskLoadError
from tasks.record import Task

SCORER = "reasoning_gym"
RESERVED = ("size", "seed")


def parse_source(spec: str) -> tuple[str, dict[str, Any]]:
    """``"countdown?min_numbers=3&max_numbers=4"`` -> ``("countdown", {"min_numbers": 3, "max_numbers": 4})``."""
    name, _, query = spec.partition("?")
    if not name.strip():
        raise TaskLoadError("reasoning_gym: name a dataset, e.g. reasoning_gym:chain_sum")
    options: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):  # not urllib's parse_qsl: it would read "+" as a space
        key, eq, raw = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise TaskLoadError(f"reasoning_gym:{spec}: expected key=value pairs after '?', got {pair!r}")
        if key in RESERVED:
            raise TaskLoadError(f"reasoning_gym:{name}: set {key} with env.{key}, not in the task source")
        try:
            options[key] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            options[key] = raw
    return name.strip(), options


def _registry() -> dict[str, Any]:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError as exc:
        raise TaskLoadError(f"reasoning_gym tasks need the reasoning-gym package (pip install '.[bench]'): {exc}") from None
    return DATASETS


@lru_cache(maxsize=64)
def _dataset(name: str, config_json: str) -> Any:
    """The dataset object for (name, config), cached: every load of the same source reuses it."""
    from reasoning_gym import create_dataset

    return create_dataset(name, **json.loads(config_json))


def dataset_for(name: str, config: dict[str, Any]) -> Any:
    """reasoning-gym's dataset ``name`` built with ``config``; a bad name or key raises TaskLoadError naming the valid ones."""
    datasets = _registry()
    if name not in datasets:
        raise TaskLoadError(f"reasoning_gym: unknown dataset {name!r}; e.g. {', '.join(sorted(datasets)[:12])}, ... "
                            f"({len(datasets)} in all)")
    config_cls = datasets[name][1]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TaskLoadError(f"reasoning_gym:{name}: unknown config key(s) {unknown}; keys: {', '.join(sorted(known - set(RESERVED)))}")
    try:
        return _dataset(name, json.dumps(config, sort_keys=True))
    except (AssertionError, ValueError, TypeError) as exc:  # the config's own validate()
        raise TaskLoadError(f"reasoning_gym:{name}: invalid config {config}: {exc or type(exc).__name__}") from None


def load_reasoning_gym(spec: str, *, size: int, seed: int) -> list[Task]:
    """``size`` entries of the dataset named by ``spec`` (see the module docstring), generated with ``seed``."""
    if size < 1:
        raise TaskLoadError(f"reasoning_gym:{spec}: size must be >= 1 (env.size), got {size}")
    name, options = parse_source(spec)
    config = {**options, "size": size, "seed": seed}
    dataset = dataset_for(name, config)
    tasks = []
    for i in range(size):
        entry = dataset[i]
        answer = entry.get("answer")
        tasks.append(Task(
            id=f"rg-{name}-{seed}-{i}",
            question=str(entry["question"]),
            answer="" if answer is None else str(answer),
            meta={"answer_type": "exact", "scorer": SCORER, "rg_dataset": name, "rg_config": config,
                  "rg_entry": entry, "source": "reasoning_gym"},
        ))
    return tasks

