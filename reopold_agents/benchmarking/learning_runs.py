"""Training runs for the learning-speed benchmarks (sample_efficiency, sweep, vs_trl_learning).

One run = the run CLI's own loop (``reopold_agents.run.train``) on the tiny pair with the benchmark's budget;
its result is a ``RunCurve``: greedy held-out success against student samples consumed. The scripts differ
in what they run (methods, a sweep's configs, TRL beside it), not in how a run is trained or measured.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

from reopold_agents.config.schema import RunConfig, compose
from reopold_agents.run import StepCallback, train
from reopold_agents.tiny.recipes import RECIPES

METHODS: dict[str, list[str]] = {
    "reopold": ["algo=reopold"],
    "opd": ["algo=opd"],
    "grpo": ["algo=grpo"],
    "gkd": ["algo=gkd"],
    "gkd-forward": ["algo=gkd", "algo.gkd_direction=forward"],
    "dapo": ["algo=dapo"],
    "dense_kl": ["algo=dense_kl"],
    "reopold_topk": ["algo=reopold_topk"],
    "reopold_topk-forward": ["algo=reopold_topk_forward"],
    "reopold-noclip": ["algo=reopold", "algo.reward_clip=false"],
    "reopold-noentropy": ["algo=reopold", "algo.stage2_rule=all"],
    "reopold-1stage": ["algo=reopold", "algo.stage_switch=0"],
}

# Knowledge beds (docs/run.md "Knowledge beds"): a bed name (its pair's, less ``tiny_``) stands where an env
# name would, and runs the recipe's ``bed_env`` on its ``bed_tasks`` with the bed's pair instead of ``model=tiny``.
BEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    pair.removeprefix("tiny_"): (recipe.bed_env, (f"env.tasks={recipe.bed_tasks}", f"model={pair}"))
    for pair, recipe in RECIPES.items() if recipe.bed_env and recipe.bed_tasks
}


def bed_overrides(name: str) -> list[str]:
    """``env=<env>`` and the pair for an env name (``model=tiny``) or a knowledge bed's name."""
    env, extra = BEDS.get(name, (name, ("model=tiny",)))
    return [f"env={env}", *extra]


@dataclass
class RunCurve:
    """Held-out success of one training run, indexed by student samples consumed."""

    env: str
    method: str  # a METHODS key, or a sweep's config label
    seed: int
    samples_per_step: int
    points: list[tuple[int, float]] = field(default_factory=list)  # (samples, held-out success)
    seconds: float = 0.0
    teacher: float | None = None  # the teacher's held-out success, when this run measured it

    def samples_to(self, target: float) -> float:
        """Samples at the first evaluation reaching ``target``; inf if it never does."""
        for samples, success in self.points:
            if success >= target - 1e-9:
                return float(samples)
        return math.inf

    @property
    def start(self) -> float:
        return self.points[0][1] if self.points else float("nan")

    @property
    def final(self) -> float:
        return self.points[-1][1] if self.points else float("nan")

    @property
    def best(self) -> float:
        return max(s for _, s in self.points) if self.points else float("nan")

    @property
    def unstable(self) -> bool:
        """Some evaluation after step 0 is below the step-0 success."""
        return any(s < self.start - 1e-9 for _, s in self.points[1:])


@dataclass
class Job:
    """One run to train: a METHODS entry plus extra overrides (a sweep's config), named ``label``."""

    env: str
    method: str
    seed: int
    label: str | None = None
    extra: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.label or self.method


def overrides(env: str, method: str, seed: int, args: argparse.Namespace, out_dir: str) -> list[str]:
    """The run's Hydra overrides; ``trainer.lr`` only when ``--lr`` is given (else the env preset's)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return [
        *bed_overrides(env), *METHODS[method],
        f"trainer.seed={seed}", *([f"trainer.lr={args.lr}"] if args.lr is not None else []),
        f"trainer.total_steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        f"trainer.prompts_per_step={args.prompts}", f"trainer.group_size={args.group}",
        f"trainer.output_dir={out_dir}", f"trainer.save_every={args.steps}", "trainer.keep_checkpoints=1",
        *args.override,
    ]


def env_config(env: str, args: argparse.Namespace) -> RunConfig:
    """The composed config every run of ``env`` shares (held-out size, preset lr), before the method."""
    return compose(overrides(env, "reopold", 0, args, os.devnull))


def train_one(job: Job, args: argparse.Namespace, out_root: str, eval_teacher: bool = False,
              on_step: StepCallback | None = None) -> RunCurve:
    """One training run through the run CLI's loop; returns its held-out success curve (and the teacher's
    success when ``eval_teacher``: ``trainer.eval_teacher`` comes last, so the benchmark decides it)."""
    out_dir = os.path.join(out_root, re.sub(r"[^\w.-]+", "_", f"{job.env}-{job.name}-s{job.seed}"))
    cfg = compose([*overrides(job.env, job.method, job.seed, args, out_dir), *job.extra,
                   f"trainer.eval_teacher={str(eval_teacher).lower()}"])
    per_step = cfg.trainer.prompts_per_step * cfg.trainer.group_size
    start = time.perf_counter()
    result = train(cfg, progress=False, on_step=on_step)
    return RunCurve(job.env, job.name, job.seed, per_step, [(step * per_step, float(s)) for step, s in result.evals],
                    time.perf_counter() - start, result.teacher_success)


def train_all(jobs: Sequence[Job], args: argparse.Namespace) -> list[RunCurve]:
    """Train ``jobs`` in order under one progress bar; the first job of each env measures the teacher."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    curves: list[RunCurve] = []
    measured: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task("runs", total=len(jobs) * args.steps)
        for job in jobs:
            bar.update(task, description=f"{job.env}/{job.name}/seed {job.seed}")
            curves.append(train_one(job, args, args.work_dir or tmp, eval_teacher=job.env not in measured,
                                    on_step=lambda *_: bar.advance(task)))
            measured.add(job.env)
    return curves


def teachers_of(curves: Sequence[RunCurve]) -> dict[str, float]:
    """Per env, the teacher's held-out success some run measured; fails naming an env none did."""
    out: dict[str, float] = {}
    for c in curves:
        if c.teacher is not None:
            out.setdefault(c.env, float(c.teacher))
    missing = sorted({c.env for c in curves} - set(out))
    if missing:
        raise SystemExit(f"no run measured the teacher's held-out success for {missing} "
                         "(RunResult.teacher_success is None: a mix or http-teacher run?)")
    return out


def add_run_args(p: argparse.ArgumentParser, default_out: str) -> None:
    """The run-shaping flags ``overrides`` and ``train_all`` read; ``--out`` defaults to ``default_out``."""
    p.add_argument("--steps", type=int, default=None, help="learner steps per run (default 40; quick 8)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation period (default 1; quick 2)")
    p.add_argument("--lr", type=float, default=None, help="trainer.lr (default: the env preset's, 1e-4 on math)")
    p.add_argument("--prompts", type=int, default=8, help="trainer.prompts_per_step")
    p.add_argument("--group", type=int, default=2, help="trainer.group_size")
    p.add_argument("--gaps", type=float, nargs="+", default=[0.5, 0.7],
                   help="targets as fractions of the start-to-teacher gap; the ratio line uses the largest")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=default_out, help="JSON + PNG go here")
    p.add_argument("--work-dir", default=None, help="run outputs (default: a temporary folder)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")


def finish_run_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Defaults that depend on ``--quick``; fails (``p.error``) on a gap outside (0, 1]."""
    args.steps = args.steps or (8 if args.quick else 40)
    args.eval_every = args.eval_every or (2 if args.quick else 1)
    args.gaps = sorted(args.gaps)
    if not all(0.0 < k <= 1.0 for k in args.gaps):
        p.error("--gaps must lie in (0, 1]")
