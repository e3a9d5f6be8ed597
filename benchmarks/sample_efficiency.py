"""Sample efficiency: student samples needed to close 50 % and 70 % of the teacher-student gap, per objective.

Trains the tiny student against the tiny teacher (``model=tiny``, resolved per env: ``tiny_math`` on math)
with the run CLI's own loop (``reopold_agents.run.train``, in-process, Hydra overrides composed by
``reopold_agents.config.compose``) for every (env, method, seed), with identical budgets:
``trainer.total_steps`` steps of ``prompts_per_step x group_size`` sampled episodes. Methods are
``algo=reopold``, ``opd`` (vanilla reverse-KL OPD), ``grpo`` and ``dapo`` (outcome-reward RL, no teacher),
``gkd`` (supervised top-k KL on student samples), ``dense_kl`` (full-vocabulary reverse KL) and the REOPOLD
ablations of docs/objective.md (one override each):

* ``reopold-noclip``    algo.reward_clip=false
* ``reopold-noentropy`` algo.stage2_rule=all
* ``reopold-1stage``    algo.stage_switch=0   (refinement stage only)

What is measured: greedy success on the env preset's held-out set (``eval/success``; 256 tasks on math)
every ``eval_every`` steps. Targets: ``target_k = start + k * (teacher - start)`` for each ``--gaps`` k
(default 0.5 and 0.7), with ``start`` the median step-0 success of the env's runs (one student) and
``teacher`` the teacher's greedy success on the same held-out set. "Samples to target" = student episodes
consumed (steps x prompts x group) at the first evaluation at or above the target; never reaching it
counts as "> budget". A run is *unstable* when any evaluation after step 0 is below its own step-0
success; the table counts unstable runs per method.

The teacher's success is the run's own measurement (``RunResult.teacher_success``,
``trainer.eval_teacher``): it depends on the env's held-out set only, not on the method or seed, so only
the first run of each env measures it (``trainer.eval_teacher=true``) and every other run passes
``trainer.eval_teacher=false``, saving one teacher evaluation per run.

Budget and resolution: on the math test bed every method measured so far (reopold, opd, grpo, dapo at
the preset lr) passes 70 % of the gap within 5-6 steps (80-96 samples) and plateaus near 0.9 by step 20,
so the default is 40 steps (640 samples) evaluated after every step (16-sample resolution; an evaluation
of the 256 tasks costs ~2.5 s on one core, a run ~2 min). A coarse period (25 steps) would put every
method at its first evaluation and every ratio at 1.00x.

The learning rate is the env preset's (``configs/experiment/<env>.yaml``: 1e-4 on math) unless ``--lr``
is given; the header of each env's table prints the lr the runs used.

The last line gives GRPO/REOPOLD, DAPO/REOPOLD and OPD/REOPOLD median samples to the largest gap target
(70 %) on each env. The paper reports 6.7-12x fewer samples than RL at 1.5B-7B scale; here it is a 2-layer
CPU model and a few hundred samples, so read the ratios as a small-scale comparison.

    python benchmarks/sample_efficiency.py --quick   # math, reopold/opd/grpo/dapo, 1 seed, 8 steps (minutes)
    python benchmarks/sample_efficiency.py           # math, 4 methods + 3 ablations, seeds 0 1 2, 40 steps (~45 min)
    python benchmarks/sample_efficiency.py --from-json benchmarks/results/sample_efficiency.json --gaps 0.25 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, list[str]] = {
    "reopold": ["algo=reopold"],
    "opd": ["algo=opd"],
    "grpo": ["algo=grpo"],
    "gkd": ["algo=gkd"],
    "dapo": ["algo=dapo"],
    "dense_kl": ["algo=dense_kl"],
    "reopold-noclip": ["algo=reopold", "algo.reward_clip=false"],
    "reopold-noentropy": ["algo=reopold", "algo.stage2_rule=all"],
    "reopold-1stage": ["algo=reopold", "algo.stage_switch=0"],
}
MAIN = ("reopold", "opd", "grpo", "dapo", "gkd", "dense_kl")
DEFAULT_METHODS = ("reopold", "opd", "grpo", "dapo", "reopold-noclip", "reopold-noentropy", "reopold-1stage")
QUICK_METHODS = ("reopold", "opd", "grpo", "dapo")
RATIO_AGAINST = ("grpo", "dapo", "opd")  # the last line: each one's samples to the top target / REOPOLD's


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
        f"env={env}", *METHODS[method], "model=tiny",
        f"trainer.seed={seed}", *([f"trainer.lr={args.lr}"] if args.lr is not None else []),
        f"trainer.total_steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        f"trainer.prompts_per_step={args.prompts}", f"trainer.group_size={args.group}",
        f"trainer.output_dir={out_dir}", f"trainer.save_every={args.steps}", "trainer.keep_checkpoints=1",
        *args.override,
    ]


def env_config(env: str, args: argparse.Namespace) -> Any:
    """The composed config every run of ``env`` shares (held-out size, preset lr), before the method."""
    from reopold_agents.config import compose

    return compose(overrides(env, "reopold", 0, args, os.devnull))


def train_one(job: Job, args: argparse.Namespace, out_root: str, eval_teacher: bool = False,
              on_step: Callable[[int, dict], None] | None = None) -> RunCurve:
    """One training run through the run CLI's loop; returns its held-out success curve (and the teacher's
    success when ``eval_teacher``: ``trainer.eval_teacher`` comes last, so the benchmark decides it)."""
    from reopold_agents.config import compose
    from reopold_agents.run import train

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


def gap_key(k: float) -> str:
    return f"{k:.0%}"


def gap_targets(curves: Sequence[RunCurve], env: str, teacher: float, gaps: Sequence[float], heldout: int,
                emit: Callable[[str], None] = print) -> dict[str, float]:
    """``start + k * (teacher - start)`` per gap k, start = the median step-0 success of the env's runs.
    A teacher not above the start leaves nothing to distil towards: every target is then "one more
    held-out task solved" (said so)."""
    start = statistics.median(c.start for c in curves if c.env == env and c.points)
    if teacher <= start:
        emit(f"{env}: teacher held-out success {teacher:.3f} <= student start {start:.3f}; "
             f"every target = start + 1/{heldout} (one more task solved)")
        return {gap_key(k): round(start + 1.0 / heldout, 4) for k in gaps}
    return {gap_key(k): round(start + k * (teacher - start), 4) for k in gaps}


def _median_or_none(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def run_gap_closed(c: RunCurve, teacher: float) -> float | None:
    from reopold_agents.evaluation.heldout import gap_closed

    return gap_closed(c.start, c.final, teacher)


def summarize(curves: Sequence[RunCurve], targets: dict[str, dict[str, float]],
              teachers: dict[str, float]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per env and method: samples to each target (median, min, max over seeds; inf = not reached), final
    success, gap closed at the end, and how many runs were unstable (fell below their start)."""
    groups: dict[str, dict[str, list[RunCurve]]] = {}
    for c in curves:
        groups.setdefault(c.env, {}).setdefault(c.method, []).append(c)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for env, methods in groups.items():
        out[env] = {}
        for method, cs in methods.items():
            to: dict[str, dict[str, float]] = {}
            for key, target in targets[env].items():
                xs = [c.samples_to(target) for c in cs]
                to[key] = {"target": target, "median": statistics.median(xs), "min": min(xs), "max": max(xs),
                           "reached": sum(math.isfinite(x) for x in xs)}
            out[env][method] = {
                "samples_to": to,
                "start_median": statistics.median(c.start for c in cs),
                "final_median": statistics.median(c.final for c in cs),
                "final_min": min(c.final for c in cs),
                "final_max": max(c.final for c in cs),
                "best_median": statistics.median(c.best for c in cs),
                "gap_closed_median": _median_or_none([run_gap_closed(c, teachers[env]) for c in cs]),
                "unstable": sum(c.unstable for c in cs),
                "budget": max(c.points[-1][0] for c in cs),
                "seeds": len(cs),
                "minutes_median": statistics.median(c.seconds for c in cs) / 60,
            }
    return out


def fmt_samples(x: float, budget: float) -> str:
    return f">{int(budget)}" if not math.isfinite(x) else str(int(x))


def fmt_range(r: dict[str, float], budget: float) -> str:
    """Median [min, max] samples over seeds (one seed: just the value)."""
    med = fmt_samples(r["median"], budget)
    return med if r["min"] == r["max"] else f"{med} [{fmt_samples(r['min'], budget)}, {fmt_samples(r['max'], budget)}]"


def fmt_gap(g: float | None) -> str:
    return "n/a" if g is None else f"{g:.0%}"


def ratio(other: dict[str, Any], ours: dict[str, Any], key: str, name: str) -> tuple[float, str]:
    """``other``'s median samples to target ``key`` / REOPOLD's, honest about runs that never got there:
    ">=" when only REOPOLD reached it (the other's budget is a lower bound), "<=" the other way round."""
    a, b = other["samples_to"][key]["median"], ours["samples_to"][key]["median"]
    if b == 0:
        return float("nan"), "n/a (REOPOLD is at the target from the start)"
    if math.isfinite(a) and math.isfinite(b):
        return a / b, f"{a / b:.2f}x"
    if math.isfinite(b):
        r = other["budget"] / b
        return r, f">= {r:.2f}x ({name} did not reach it in {int(other['budget'])} samples)"
    if math.isfinite(a):
        r = a / ours["budget"]
        return r, f"<= {r:.2f}x (REOPOLD did not reach it in {int(ours['budget'])} samples)"
    return float("nan"), "n/a (neither reached it within the budget)"


def report(summary: dict, meta: dict[str, dict[str, Any]], emit: Callable[[str], None] = print) -> dict[str, float]:
    """Print one table per env, then the ratio line per env; returns the first env's ratios by method."""
    first: dict[str, float] = {}
    lines: list[str] = []
    for env, methods in summary.items():
        m = meta[env]
        targets = next(iter(methods.values()))["samples_to"]
        emit(f"\n{env}: teacher {m['teacher']:.3f}, lr {m['lr']:g}, greedy on {m['heldout_tasks']} held-out tasks; targets "
             + ", ".join(f"{k} of the gap {t['target']:.3f}" for k, t in targets.items()))
        emit(f"{'method':<18} " + " ".join(f"{'to ' + k:>20} {'hit':>3}" for k in targets)
             + f" {'start':>6} {'final (min-max)':>20} {'gap':>5} {'unstable':>8} {'min/run':>7}")
        for method, r in methods.items():
            b = r["budget"]
            emit(f"{method:<18} " + " ".join(f"{fmt_range(t, b):>20} {t['reached']:>3}" for t in r["samples_to"].values())
                 + f" {r['start_median']:>6.3f} {r['final_median']:>7.3f} ({r['final_min']:.3f}-{r['final_max']:.3f})"
                 + f" {fmt_gap(r['gap_closed_median']):>5} {str(r['unstable']) + '/' + str(r['seeds']):>8}"
                 + f" {r['minutes_median']:>7.1f}")
        key = list(targets)[-1]
        ours, parts = methods.get("reopold"), []
        for name in RATIO_AGAINST:
            label = f"{name.upper()}/REOPOLD"
            if ours is None or name not in methods:
                parts.append(f"{label} n/a (not run)")
                continue
            value, text = ratio(methods[name], ours, key, name.upper())
            parts.append(f"{label} {text}")
            if env == next(iter(summary)):
                first[name] = value
        lines.append(f"ratios samples-to-{key}-gap vs REOPOLD ({env}): " + ", ".join(parts))
    for line in lines:
        emit(line)
    return first


def draw(ax: Any, groups: dict[str, list[RunCurve]], targets: dict[str, float], teacher: float | None, title: str) -> None:
    """Median success vs samples per group (range shaded over seeds), target and teacher lines."""
    for label, cs in groups.items():
        xs = [s for s, _ in cs[0].points]
        ys = [[c.points[k][1] for c in cs if k < len(c.points)] for k in range(len(xs))]
        ax.plot(xs, [statistics.median(y) for y in ys], marker="o", ms=3, label=label)
        if len(cs) > 1:
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.15)
    for (key, target), ls in zip(targets.items(), (":", "-.", (0, (1, 3)))):
        ax.axhline(target, color="grey", ls=ls, lw=1, label=f"{key} of the gap")
    if teacher is not None:
        ax.axhline(teacher, color="black", ls="--", lw=1, label="teacher")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("student samples", fontsize=8)
    ax.set_ylabel("held-out success (greedy)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)


def plot(curves: Sequence[RunCurve], targets: dict[str, dict[str, float]], path: Path,
         teachers: dict[str, float]) -> None:
    """One column per env; rows: main methods and REOPOLD ablations (median + range over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(targets)
    ran = {c.method for c in curves}
    rows = [("methods", [m for m in METHODS if m in MAIN]), ("REOPOLD ablations", [m for m in METHODS if m not in MAIN or m == "reopold"])]
    rows = [(t, ms) for t, ms in rows if any(m in ran and m != "reopold" for m in ms)] or rows[:1]
    fig, axes = plt.subplots(len(rows), len(envs), figsize=(4.2 * len(envs), 3.0 * len(rows)), squeeze=False, dpi=80)
    for j, env in enumerate(envs):
        for i, (title, methods) in enumerate(rows):
            groups = {m: cs for m in methods if (cs := [c for c in curves if c.env == env and c.method == m])}
            draw(axes[i][j], groups, targets[env], teachers.get(env), f"{env}: {title}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def load_json(path: str) -> tuple[list[RunCurve], dict[str, float], dict[str, dict[str, Any]]]:
    """Curves, teachers and per-env run settings of an earlier JSON (this version's, or the older one
    without ``env_config``: its settings are then its saved flags composed with the current configs)."""
    with open(path) as f:
        saved = json.load(f)
    curves = [RunCurve(**{**c, "points": [tuple(p) for p in c["points"]]}) for c in saved["curves"]]
    meta = saved.get("env_config")
    if meta is None:
        old = argparse.Namespace(**saved["args"])
        meta = {env: {"heldout_tasks": (cfg := env_config(env, old)).trainer.heldout_tasks, "lr": cfg.trainer.lr}
                for env in dict.fromkeys(c.env for c in curves)}
    return curves, {e: float(v) for e, v in saved["teacher_success"].items()}, meta


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The run-shaping flags ``overrides`` reads (shared with benchmarks/sweep.py)."""
    p.add_argument("--steps", type=int, default=None, help="learner steps per run (default 40; quick 8)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation period (default 1; quick 2)")
    p.add_argument("--lr", type=float, default=None, help="trainer.lr (default: the env preset's, 1e-4 on math)")
    p.add_argument("--prompts", type=int, default=8, help="trainer.prompts_per_step")
    p.add_argument("--group", type=int, default=2, help="trainer.group_size")
    p.add_argument("--gaps", type=float, nargs="+", default=[0.5, 0.7],
                   help="targets as fractions of the start-to-teacher gap; the ratio line uses the largest")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="JSON + PNG go here")
    p.add_argument("--work-dir", default=None, help="run outputs (default: a temporary folder)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")


def finish_run_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.steps = args.steps or (8 if args.quick else 40)
    args.eval_every = args.eval_every or (2 if args.quick else 1)
    args.gaps = sorted(args.gaps)
    if not all(0.0 < k <= 1.0 for k in args.gaps):
        p.error("--gaps must lie in (0, 1]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reopold/opd/grpo/dapo, 1 seed, 8 steps")
    p.add_argument("--envs", nargs="+", default=["math"])
    p.add_argument("--methods", nargs="+", default=None, choices=sorted(METHODS),
                   help=f"default: {' '.join(DEFAULT_METHODS)} (quick: {' '.join(QUICK_METHODS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    p.add_argument("--from-json", default=None, help="re-summarise and re-plot the curves of an earlier run's JSON")
    p.add_argument("--name", default=None, help="file stem (default sample_efficiency[_quick])")
    add_run_args(p)
    args = p.parse_args(argv)
    finish_run_args(p, args)
    q = args.quick
    args.methods = args.methods or list(QUICK_METHODS if q else DEFAULT_METHODS)
    args.seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1, 2])
    args.name = args.name or ("sample_efficiency_quick" if q else "sample_efficiency")
    if "reopold" not in args.methods:
        p.error("--methods must include reopold (the ratios are against it)")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.from_json:
        curves, teachers, meta = load_json(args.from_json)
        args.envs = list(meta)
    else:
        runs = [Job(e, m, s) for s in args.seeds for e in args.envs for m in args.methods]  # seeds outermost
        curves = train_all(runs, args)
        teachers = teachers_of(curves)
        meta = {env: {"heldout_tasks": (cfg := env_config(env, args)).trainer.heldout_tasks, "lr": cfg.trainer.lr}
                for env in args.envs}
    for env in args.envs:
        meta[env]["teacher"] = teachers[env]
    targets = {env: gap_targets(curves, env, teachers[env], args.gaps, meta[env]["heldout_tasks"]) for env in args.envs}
    summary = summarize(curves, targets, teachers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.name}.png"
    plot(curves, targets, png, teachers)
    with open(out / f"{args.name}.json", "w") as f:
        json.dump({"args": dict(vars(args)), "teacher_success": teachers, "env_config": meta, "targets": targets,
                   "summary": summary, "curves": [asdict(c) for c in curves]}, f, indent=1, default=str)
    per_run = {c.points[-1][0] for c in curves}
    print(f"budget per run: {sorted(per_run)} student samples; curves: {png}")
    return report(summary, meta)


if __name__ == "__main__":
    main()
