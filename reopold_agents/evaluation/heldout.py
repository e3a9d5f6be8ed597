"""Held-out greedy success: the one number a run reports before, during and after training.

The held-out set is ``trainer.heldout_tasks`` tasks of the run's env: synthetic tasks from a seed disjoint
from training (``env.seed + HELDOUT_SEED_OFFSET``), BFCL's fixed held-out split, or the first rows of a
file source. Every caller
(the run's evaluation, the tiny-model builds, the benchmarks) measures it with ``greedy_success``. A set
that mixes sub-benchmarks (BFCL's categories, reasoning-gym datasets: ``Task.family``) also reports each
one's success (``HeldoutScore.by_family``), since an overall number can hide one category rising while
another falls.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import torch

from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.env import EnvConfig
from reopold_agents.config.sandbox import SandboxConfig
from reopold_agents.evaluation.progress import Advance, eval_bar

if TYPE_CHECKING:
    from reopold_agents.config.schema import RunConfig
    from reopold_agents.engines.base import Engine
    from reopold_agents.rollout import Rollout
    from reopold_agents.teacher.tokenizers import Tokenizer
    from tasks.record import Task

    Processor = Any  # a transformers processor (VL models)

HELDOUT_SEED_OFFSET = 100_003  # held-out synthetic tasks use env.seed + this (never the training seed)


def heldout_env_config(env_cfg: EnvConfig, size: int) -> EnvConfig:
    """The held-out set's env config: synthetic tasks from a disjoint seed, BFCL's fixed held-out split
    (`tasks.bfcl`; the run must train on ``split=train``, else ValueError('split: ...')), or the first
    tasks of a file."""
    if env_cfg.tasks.startswith("synthetic"):
        return replace(env_cfg, seed=env_cfg.seed + HELDOUT_SEED_OFFSET, size=size)
    if env_cfg.tasks.startswith("bfcl:"):
        if env_cfg.split != "train":
            raise ValueError(f"split: a bfcl run trains on split=train, its held-out evaluation reads split=heldout "
                             f"(entries no run trains on); got {env_cfg.split!r}")
        return replace(env_cfg, split="heldout", size=size)
    return replace(env_cfg, size=size)


def greedy_outcomes(rollout: Rollout, task_indices: Sequence[int], max_new_tokens: int, batch_size: int,
                    progress: Advance | None = None) -> list[bool]:
    """Whether a ``Rollout``'s student solves each of ``task_indices`` with greedy decoding, in their order;
    ``progress(n)`` after each batch of ``n`` tasks."""
    from reopold_agents.engines.base import SamplingParams

    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    outcomes: list[bool] = []
    for start in range(0, len(task_indices), batch_size):
        prompts = [{"options": {"task_index": int(i)}} for i in task_indices[start : start + batch_size]]
        outcomes.extend(bool(t.success) for t in rollout.run(prompts, sampling))
        if progress is not None:
            progress(len(prompts))
    return outcomes


def greedy_success(rollout: Rollout, task_indices: Sequence[int], max_new_tokens: int, batch_size: int,
                   progress: Advance | None = None) -> float:
    """Fraction of ``task_indices`` a ``Rollout``'s student solves with greedy decoding; ``progress(n)``
    after each batch of ``n`` tasks."""
    outcomes = greedy_outcomes(rollout, task_indices, max_new_tokens, batch_size, progress)
    return sum(outcomes) / max(1, len(task_indices))


@dataclass(frozen=True)
class HeldoutScore:
    """A held-out evaluation: the overall success and, where the set mixes families, each family's."""

    success: float
    by_family: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_outcomes(cls, outcomes: Sequence[bool], families: Sequence[str | None]) -> "HeldoutScore":
        """Success over ``outcomes``; ``by_family`` only when ``families`` (one per outcome) names two or more."""
        overall = sum(outcomes) / max(1, len(outcomes))
        named = {f for f in families if f is not None}
        if len(families) != len(outcomes) or len(named) < 2:
            return cls(overall)
        by_family = {}
        for family in sorted(named):
            mine = [o for o, f in zip(outcomes, families) if f == family]
            by_family[family] = sum(mine) / len(mine)
        return cls(overall, by_family)


class HeldoutSet:
    """The run's held-out tasks behind their own env pool, evaluated with the run's engine."""

    def __init__(self, rollout: Rollout, num_tasks: int, max_new_tokens: int, batch_size: int,
                 tasks: Sequence[Task] = ()) -> None:
        self.rollout, self.num_tasks = rollout, num_tasks
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.tasks = tuple(tasks)  # the loaded tasks (what a cached result is keyed by), when known

    @classmethod
    def from_config(cls, env_cfg: EnvConfig, engine_cfg: EngineConfig, sandbox_cfg: SandboxConfig, size: int,
                    engine: Engine, tokenizer: Tokenizer, processor: Processor | None = None) -> "HeldoutSet":
        """``size`` held-out tasks of ``env_cfg`` behind their own envs, greedy with ``engine``."""
        from envs.factory import build_env, load_env_tasks
        from reopold_agents.rollout import Rollout

        held = heldout_env_config(env_cfg, size)
        tasks = load_env_tasks(held)
        rollout = Rollout.from_config(engine_cfg, held, engine, tokenizer,
                                      lambda: build_env(held, tasks=tasks, sandbox=sandbox_cfg), processor=processor)
        return cls(rollout, len(tasks), engine_cfg.sampling.max_new_tokens, max(1, engine_cfg.max_batch_size), tasks)

    def success(self, progress: Advance | None = None) -> float:
        """Greedy success over the set; ``progress(n)`` after each batch of ``n`` tasks."""
        return self.score(progress).success

    def score(self, progress: Advance | None = None) -> HeldoutScore:
        """Greedy success over the set and per task family (when the loaded tasks are known and mix
        families); ``progress(n)`` after each batch of ``n`` tasks."""
        outcomes = greedy_outcomes(self.rollout, range(self.num_tasks), self.max_new_tokens, self.batch_size,
                                   progress)
        families = [t.family for t in self.tasks] if len(self.tasks) == self.num_tasks else []
        return HeldoutScore.from_outcomes(outcomes, families)

    def success_shown(self, label: str) -> float:
        """``success`` with a progress bar ``label`` where this context shows one (``evaluation.progress``)."""
        with eval_bar(label, self.num_tasks) as advance:
            return self.success(advance)

    def close(self) -> None:
        self.rollout.close()


def model_success(cfg: RunConfig, model: torch.nn.Module, tokenizer: Tokenizer, processor: Processor | None = None) -> float:
    """Greedy success of an in-process ``model`` on the run's held-out set (HF engine): the teacher's
    target, a test-bed model, another framework's trained student."""
    from reopold_agents.engines.hf import HFEngine

    engine = HFEngine(model, tokenizer, processor=processor, max_batch_size=max(1, cfg.engine.max_batch_size))
    heldout = HeldoutSet.from_config(cfg.env, cfg.engine, cfg.sandbox, cfg.trainer.heldout_tasks, engine, tokenizer,
                                     processor)
    try:
        return heldout.success_shown("held-out")
    finally:
        heldout.close()
        engine.close()


def teacher_success(cfg: RunConfig) -> float:
    """The teacher's greedy success on the run's held-out set, loaded and generated in this process with
    the HF engine (benchmarks and scripts; a training run asks its teacher role instead)."""
    from reopold_agents.models import load_teacher

    loaded = load_teacher(cfg.model)
    return model_success(cfg, loaded.model, loaded.tokenizer, loaded.processor)


def gap_closed(before: float, after: float, teacher: float) -> float | None:
    """(after - before) / (teacher - before); None when the teacher is not above the start."""
    return None if teacher <= before else (after - before) / (teacher - before)
