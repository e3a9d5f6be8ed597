"""REOPOLD hyper-parameter sweep on one env: which clip lambda, entropy fraction, stage switch and lr work best.

Every config is a full run of the run CLI's loop (``reopold_agents.run.train``) with ``algo=reopold`` and the
env preset (``model=tiny``: the ``tiny_math`` test bed on math), trained and measured exactly as in
benchmarks/sample_efficiency.py (``reopold_agents.benchmarking``: the same ``train_all``/``RunCurve``/targets): greedy
success on the preset's held-out set every ``--eval-every`` steps, targets at 50 % and 70 % of the
start-to-teacher gap, the teacher measured once by the first run.

Levels: ``algo.clip_lambda`` {0.1, 0.2, 0.3}, ``algo.beta`` {0.2, 0.5}, ``algo.stage_switch`` {0.3, 0.5}
and ``trainer.lr`` (``--lrs``; default the preset's lr and 2x / 0.5x of it). The full product is 36 runs
per seed, too many for two cores, so the default is a one-factor-at-a-time design: the current defaults
(lambda 0.2, beta 0.5, switch 0.5, preset lr) plus every other level of one factor at a time (7 runs);
``--grid`` runs the product. Per config: final held-out success, the best evaluation, samples to 50 % /
70 % of the gap, gap closed at the end (medians over ``--seeds``), as a markdown table for
docs/BENCHMARKS.md; the last line names the best config by final gap closed (ties: fewer samples to the
top target).

    python benchmarks/sweep.py --quick   # one-factor design, 8 steps per run (a few minutes)
    python benchmarks/sweep.py           # one-factor design, 40 steps x 16 samples, seed 0 (~15 min)
    python benchmarks/sweep.py --grid --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from reopold_agents.benchmarking.curve_plot import draw
from reopold_agents.benchmarking.gap_targets import fmt_gap, fmt_samples, gap_targets, run_gap_closed
from reopold_agents.benchmarking.learning_runs import (
    Job, RunCurve, add_run_args, env_config, finish_run_args, teachers_of, train_all,
)

ROOT = Path(__file__).resolve().parents[1]

KEYS = {"clip_lambda": "algo.clip_lambda", "beta": "algo.beta", "stage_switch": "algo.stage_switch", "lr": "trainer.lr"}
Config = dict[str, float]


def one_factor_configs(levels: dict[str, Sequence[float]], base: Config) -> list[Config]:
    """``base`` first, then ``base`` with one factor moved to each of its other levels."""
    out = [dict(base)]
    for key, values in levels.items():
        out += [{**base, key: v} for v in values if v != base[key]]
    return out


def grid_configs(levels: dict[str, Sequence[float]]) -> list[Config]:
    return [dict(zip(levels, combo)) for combo in itertools.product(*levels.values())]


def label(config: Config, base: Config) -> str:
    """What differs from the defaults (``defaults`` when nothing does)."""
    moved = [f"{k}={v:g}" for k, v in config.items() if v != base[k]]
    return " ".join(moved) or "defaults"


def config_overrides(config: Config) -> tuple[str, ...]:
    return tuple(f"{KEYS[k]}={v}" for k, v in config.items())


def rows_of(curves: Sequence[RunCurve], configs: dict[str, Config], targets: dict[str, float],
            teacher: float) -> list[dict[str, Any]]:
    """Per config (curves grouped by label): medians over seeds of final, best, samples to each target and
    gap closed at the end."""
    rows = []
    for name, config in configs.items():
        cs = [c for c in curves if c.method == name]
        if not cs:
            continue
        closed = [g for c in cs if (g := run_gap_closed(c, teacher)) is not None]
        rows.append({
            "label": name, "config": config, "seeds": len(cs),
            "final_median": statistics.median(c.final for c in cs),
            "final_min": min(c.final for c in cs), "final_max": max(c.final for c in cs),
            "best_median": statistics.median(c.best for c in cs),
            "samples_to": {k: statistics.median(c.samples_to(t) for c in cs) for k, t in targets.items()},
            "gap_closed_median": statistics.median(closed) if closed else None,
            "budget": max(c.points[-1][0] for c in cs),
        })
    return rows


def rank(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first: larger final gap closed (n/a last), then fewer samples to the top target (not reached last)."""
    def key(r: dict[str, Any]) -> tuple[float, float]:
        g = r["gap_closed_median"]
        return (-g if g is not None else math.inf, list(r["samples_to"].values())[-1])
    return sorted(rows, key=key)


def table(rows: Sequence[dict[str, Any]], targets: dict[str, float]) -> list[str]:
    """The markdown table, in the order given."""
    out = ["| config | clip_lambda | beta | stage_switch | lr | final (min-max) | best | "
           + " | ".join(f"samples to {k}" for k in targets) + " | gap closed |",
           "|---|---:|---:|---:|---:|---|---:|" + "---:|" * len(targets) + "---:|"]
    for r in rows:
        c = r["config"]
        final = f"{r['final_median']:.3f}" + (f" ({r['final_min']:.3f}-{r['final_max']:.3f})" if r["seeds"] > 1 else "")
        out.append(f"| {r['label']} | {c['clip_lambda']:g} | {c['beta']:g} | {c['stage_switch']:g} | {c['lr']:g} | "
                   f"{final} | {r['best_median']:.3f} | "
                   + " | ".join(fmt_samples(x, r["budget"]) for x in r["samples_to"].values())
                   + f" | {fmt_gap(r['gap_closed_median'])} |")
    return out


def report(rows: Sequence[dict[str, Any]], env: str, targets: dict[str, float], teacher: float, start: float,
           heldout: int, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Print the table (best first) and, last, the best config; returns it."""
    ranked = rank(rows)
    emit(f"\n{env}: start {start:.3f}, teacher {teacher:.3f}, greedy on {heldout} held-out tasks; targets "
         + ", ".join(f"{k} of the gap {t:.3f}" for k, t in targets.items()) + "\n")
    for line in table(ranked, targets):
        emit(line)
    best = ranked[0]
    top = list(targets)[-1]
    emit(f"best config ({env}): " + " ".join(f"{k}={v:g}" for k, v in best["config"].items())
         + f" [{best['label']}]: gap closed {fmt_gap(best['gap_closed_median'])}, "
         f"samples to {top} {fmt_samples(best['samples_to'][top], best['budget'])}")
    return best


def plot(curves: Sequence[RunCurve], configs: dict[str, Config], targets: dict[str, float], teacher: float,
         path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=80)
    draw(ax, {n: cs for n in configs if (cs := [c for c in curves if c.method == n])}, targets, teacher, title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from reopold_agents.config.algo import AlgoConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 steps per run, evaluation every 2")
    p.add_argument("--env", default="math")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--grid", action="store_true", help="the full product of the levels (default: one factor at a time)")
    p.add_argument("--clip-lambdas", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--betas", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--stage-switches", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="default: the preset's lr, 2x and 0.5x of it")
    p.add_argument("--name", default=None, help="file stem (default sweep_<env>[_quick])")
    add_run_args(p, str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    finish_run_args(p, args)
    if args.lr is not None:
        p.error("the sweep sets trainer.lr per config: use --lrs")
    args.name = args.name or f"sweep_{args.env}{'_quick' if args.quick else ''}"
    algo = AlgoConfig()
    args.base = {"clip_lambda": algo.clip_lambda, "beta": algo.beta, "stage_switch": algo.stage_switch,
                 "lr": env_config(args.env, args).trainer.lr}
    lrs = args.lrs or [args.base["lr"], 2 * args.base["lr"], 0.5 * args.base["lr"]]
    args.levels = {"clip_lambda": args.clip_lambdas, "beta": args.betas, "stage_switch": args.stage_switches, "lr": lrs}
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    design = grid_configs(args.levels) if args.grid else one_factor_configs(args.levels, args.base)
    configs = {label(c, args.base): c for c in design}
    jobs = [Job(args.env, "reopold", s, name, config_overrides(c)) for s in args.seeds for name, c in configs.items()]
    curves = train_all(jobs, args)
    teacher = teachers_of(curves)[args.env]
    heldout = env_config(args.env, args).trainer.heldout_tasks
    targets = gap_targets(curves, args.env, teacher, args.gaps, heldout)
    rows = rows_of(curves, configs, targets, teacher)
    start = statistics.median(c.start for c in curves)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.name}.png"
    plot(curves, configs, targets, teacher, png, f"{args.env}: REOPOLD sweep ({'grid' if args.grid else 'one factor at a time'})")
    with open(out / f"{args.name}.json", "w") as f:
        json.dump({"args": dict(vars(args)), "teacher_success": {args.env: teacher}, "targets": {args.env: targets},
                   "rows": rows, "curves": [asdict(c) for c in curves]}, f, indent=1, default=str)
    print(f"{len(jobs)} runs, {args.steps} steps x {curves[0].samples_per_step} samples each; curves: {png}")
    return report(rows, args.env, targets, teacher, start, heldout)


if __name__ == "__main__":
    main()
