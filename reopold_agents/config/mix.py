"""Config section `mix`: a run over several envs, one entry per env, each with its weight and its teacher.

A run is a list of env entries (``RunConfig.entries``). ``mix`` maps an entry name (``math``, ``toolqa``,
... : the label of its metrics, ``env/<name>/*`` and ``eval/<name>/success``) to a ``MixEntry``. Empty
(the default), the run's one entry is the top-level ``env`` section, named after its env. Non-empty, each
entry's ``env`` is a full env section (its own task source, turn limit and tools), usually filled from
the env group YAMLs by an experiment config's defaults list (``/env@mix.math.env: math``, see
``configs/experiment/mix_math_toolqa.yaml``, which also drops the top-level env group with
``override /env: null``); the top-level ``env`` must then stay at its defaults: nothing reads it, so a
key set there fails instead of being silently ignored.

Each prompt of a step draws its entry by ``weight`` (``reopold_agents.entries``, seeds in
``reopold_agents.seeding.mix_draw``); each trajectory is scored by its entry's ``teacher`` (None: the
run's ``model.teacher``), several teachers loaded once each by ``reopold_agents.teacher.router``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Optional

from reopold_agents.config.env import EnvConfig
from reopold_agents.config.model import ModelConfig

_ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class MixEntry:
    """One env of a mix: its share of each step's prompts, its routed teacher and its env section."""

    weight: float = 1.0  # relative: a step's prompts draw this entry with probability weight / sum(weights)
    teacher: Optional[str] = None  # a tiny pair name, "self", an HF id or path; None: model.teacher
    env: EnvConfig = field(default_factory=EnvConfig)

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        if not self.weight > 0:
            raise ValueError(f"weight: must be > 0, got {self.weight}")
        if self.teacher is not None and not self.teacher:
            raise ValueError("teacher: empty; leave it unset (null) for model.teacher")
        try:
            self.env.check()
        except ValueError as exc:
            raise ValueError(f"env.{exc}") from None


def check_mix(mix: dict[str, MixEntry], env: EnvConfig) -> None:
    """The run's entries: the top-level env (no mix entries), or the mix entries and a top-level env left
    unselected; raise ValueError('<key>: why') with the key relative to the root (``mix.toolqa.weight``,
    ``env.max_turns``)."""
    if not mix:
        try:
            env.check()
        except ValueError as exc:
            raise ValueError(f"env.{exc}") from None
        return
    for name, entry in mix.items():
        if not _ENTRY_NAME.match(str(name)):
            raise ValueError(f"mix.{name}: entry names are letters, digits, '_', '.', '-' (they label metrics)")
        try:
            entry.check()
        except ValueError as exc:
            raise ValueError(f"mix.{name}.{exc}") from None
    _check_weight_sum(mix)
    default = EnvConfig()
    for f in fields(EnvConfig):
        if getattr(env, f.name) != getattr(default, f.name):
            raise ValueError(f"env.{f.name}: not used in a run with mix entries (set mix.<name>.env.{f.name} "
                             "instead; leave the top-level env unselected, as experiment configs do with "
                             "`override /env: null`)")


def _check_weight_sum(mix: dict[str, MixEntry]) -> None:
    """Each weight is finite and > 0 (``MixEntry.check``, ``check_finite``), but ``mix_weights`` divides
    by their sum: a sum that overflows (1e308 + 1e308) turns every share into 0 or NaN, and a share that
    underflows to 0 (5e-324 beside 1.0) is an entry never drawn."""
    total = sum(e.weight for e in mix.values())
    if not math.isfinite(total):
        weights = ", ".join(f"mix.{n}.weight={e.weight:g}" for n, e in mix.items())
        raise ValueError(f"mix: the entries' weights sum to {total} ({weights}); scale them down "
                         "(only their ratios matter)")
    for name, share in mix_weights(mix).items():
        if not share > 0:
            raise ValueError(f"mix.{name}.weight: {mix[name].weight:g} is a share of 0 of the sum {total:g} "
                             "(never drawn); raise it or scale the others down")


def mix_weights(mix: dict[str, MixEntry]) -> dict[str, float]:
    """Each entry's normalised weight (sums to 1), in the mix's order."""
    total = sum(e.weight for e in mix.values())
    return {name: e.weight / total for name, e in mix.items()}


def entry_teacher(entry: MixEntry, model_cfg: ModelConfig) -> str:
    """The teacher name that scores ``entry``'s trajectories."""
    return entry.teacher if entry.teacher is not None else model_cfg.teacher
