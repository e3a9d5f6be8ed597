"""Config section `eval`: an evaluation *suite* (a named set of benchmarks), plus the evaluate CLI's keys.

Two uses of one schema:
- training (``configs/config.yaml`` group ``eval``, default ``none`` = no benchmarks): every
  ``trainer.eval_every`` steps the run CLI calls ``reopold_agents.evaluation.evaluate_suite`` on
  ``cfg.eval`` (e.g. ``python -m reopold_agents.run eval=math_tiny trainer.eval_every=20``);
- the evaluate CLI (``configs/evaluate.yaml``, schema ``EvaluateConfig``): ``suite=<name>`` loads
  ``configs/eval/<name>.yaml`` (or a YAML path) into the same ``EvalConfig``.

A benchmark = an env config (same schema as training's ``env`` group: env name, task source for
``tasks.load_tasks``, episode limits) + sampling settings. Benchmarks are a mapping keyed by name so
single keys can be overridden: ``eval.benchmarks.gsm8k.env.tasks=/data/gsm8k/test.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.env import EnvConfig
from reopold_agents.config.sampling import SamplingConfig


@dataclass
class BenchmarkConfig:
    """One benchmark: an env with its task source (the training ``env`` schema, built by
    ``envs.factory.build_env``) plus how to sample from the model."""

    # env name, task source (tasks: synthetic | file | $REOPOLD_DATA name), split, size (0 = all rows of a
    # file), seed, difficulty, max_turns, tools...: see reopold_agents/config/env.py
    env: EnvConfig = field(default_factory=EnvConfig)
    n: int = 4  # samples per task (the evaluate CLI's k= overrides it)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.8))
    max_total_tokens: int = 2048  # prompt + all turns of an episode

    def check(self) -> None:
        try:
            self.env.check()
        except ValueError as exc:
            raise ValueError(f"env.{exc}") from None
        for key in ("n", "max_total_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        try:
            self.sampling.check()
        except ValueError as exc:
            raise ValueError(f"sampling.{exc}") from None


@dataclass
class EvalConfig:
    """A suite. ``benchmarks`` empty (``eval=none``) disables in-training evaluation."""

    name: str = "none"
    seed: int = 0  # base sampling seed; each chunk of episodes derives its own from it
    batch_size: int = 16  # episodes per lock-step generation chunk (also the resume granularity)
    benchmarks: Dict[str, BenchmarkConfig] = field(default_factory=dict)

    def check(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        for name, bench in self.benchmarks.items():
            if not name or "/" in name:
                raise ValueError(f"benchmarks: bad benchmark name {name!r}")
            try:
                bench.check()
            except ValueError as exc:
                raise ValueError(f"benchmarks.{name}.{exc}") from None


@dataclass
class EvaluateConfig:
    """Root config of ``python -m reopold_agents.evaluate`` (configs/evaluate.yaml)."""

    suite: str = "math_tiny"  # name in configs/eval/ or a path to a suite YAML
    k: Optional[int] = None  # samples per task for every benchmark (overrides each benchmark's n)
    limit: Optional[int] = None  # cap on tasks per benchmark (min with each benchmark's own limit)
    model: str = "tiny"  # tiny | tiny_toolqa | tiny_vl | HF id | local path (reopold_agents.models.load_model)
    role: str = "student"  # which tiny weights `model` names (student | teacher); ignored for HF ids/paths
    compare: Optional[str] = None  # a second model, loaded as the teacher/reference, evaluated and compared
    dtype: str = "float32"
    device: str = "auto"
    out_dir: Optional[str] = None  # default outputs/eval/<suite>
    resume: bool = True  # reuse samples already in out_dir (same settings only)
    overwrite: bool = False  # delete earlier records in out_dir first
    max_samples: Optional[int] = None  # stop after this many new samples (a deliberate interruption)
    plots: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)  # the loaded suite (filled from `suite`)
    # engine name/batching; sampling comes from the suite, except engine.sampling.* / engine.max_total_tokens
    # named on the command line, which evaluation.suite.compose_evaluate applies to every benchmark
    engine: EngineConfig = field(default_factory=EngineConfig)

    def check(self) -> None:
        if self.k is not None and self.k < 1:
            raise ValueError(f"k: must be >= 1, got {self.k}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: must be >= 1, got {self.limit}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples: must be >= 1, got {self.max_samples}")
        if self.role not in ("student", "teacher"):
            raise ValueError(f"role: {self.role!r}; use student or teacher")
        if not self.model:
            raise ValueError("model: empty; use tiny, tiny_toolqa, tiny_vl, an HF id or a path")
        from reopold_agents.config.model import DTYPES

        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {DTYPES}")
        for section in ("eval", "engine"):
            try:
                getattr(self, section).check()
            except ValueError as exc:
                raise ValueError(f"{section}.{exc}") from None
