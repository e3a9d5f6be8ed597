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
    python benchmarks/sample_efficiency.py --envs math_know --methods reopold_topk-forward opd dense_kl grpo \
        --steps 400 --eval-every 25 --lr 3e-4 --threads 2   # the math knowledge bed (docs/BENCHMARKS.md 2d)
    python benchmarks/sample_efficiency.py           # math, 4 methods + 3 ablations, seeds 0 1 2, 40 steps (~45 min)
    python benchmarks/sample_efficiency.py --from-json benchmarks/results/sample_efficiency.json --gaps 0.25 0.5
    python benchmarks/sample_efficiency.py --from-json s0.json s1.json s2.json --name merged   # one file per seed
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from reopold_agents.benchmarking.curve_plot import draw
from reopold_agents.benchmarking.gap_targets import fmt_gap, fmt_samples, gap_targets, run_gap_closed
from reopold_agents.benchmarking.learning_runs import (
    METHODS, Job, RunCurve, add_run_args, env_config, finish_run_args, teachers_of, train_all,
)

ROOT = Path(__file__).resolve().parents[1]
MAIN = ("reopold", "reopold_topk", "reopold_topk-forward", "opd", "grpo", "dapo", "gkd", "dense_kl")
DEFAULT_METHODS = ("reopold", "opd", "grpo", "dapo", "reopold-noclip", "reopold-noentropy", "reopold-1stage")
QUICK_METHODS = ("reopold", "opd", "grpo", "dapo")
RATIO_AGAINST = ("grpo", "dapo", "opd", "dense_kl")  # the last line: each one's samples to the top target / REOPOLD's
REOPOLD_VARIANTS = ("reopold", "reopold_topk", "reopold_topk-forward")  # the ratio line is against the best of those that ran


def _median_or_none(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


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


def fmt_range(r: dict[str, float], budget: float) -> str:
    """Median [min, max] samples over seeds (one seed: just the value)."""
    med = fmt_samples(r["median"], budget)
    return med if r["min"] == r["max"] else f"{med} [{fmt_samples(r['min'], budget)}, {fmt_samples(r['max'], budget)}]"


def best_variant(methods: dict[str, dict[str, Any]]) -> str | None:
    """The REOPOLD variant that ran and got furthest: fewest median samples to the top target, then to each
    lower one, then the higher final success."""
    ran = [m for m in REOPOLD_VARIANTS if m in methods]
    if not ran:
        return None

    def rank(m: str) -> tuple[float, ...]:
        to = methods[m]["samples_to"]
        return (*(to[k]["median"] for k in reversed(list(to))), -methods[m]["final_median"])

    return min(ran, key=rank)


def ratio(other: dict[str, Any], ours: dict[str, Any], key: str, name: str,
          ours_name: str = "REOPOLD") -> tuple[float, str]:
    """``other``'s median samples to target ``key`` / ours (a REOPOLD variant), honest about runs that never
    got there: ">=" when only ours reached it (the other's budget is a lower bound), "<=" the other way round."""
    a, b = other["samples_to"][key]["median"], ours["samples_to"][key]["median"]
    if b == 0:
        return float("nan"), f"n/a ({ours_name} is at the target from the start)"
    if math.isfinite(a) and math.isfinite(b):
        return a / b, f"{a / b:.2f}x"
    if math.isfinite(b):
        r = other["budget"] / b
        return r, f">= {r:.2f}x ({name} did not reach it in {int(other['budget'])} samples)"
    if math.isfinite(a):
        r = a / ours["budget"]
        return r, f"<= {r:.2f}x ({ours_name} did not reach it in {int(ours['budget'])} samples)"
    return float("nan"), "n/a (neither reached it within the budget)"


def report(summary: dict, meta: dict[str, dict[str, Any]], emit: Callable[[str], None] = print) -> dict[str, float]:
    """Print one table per env, then the ratio line per env against its best REOPOLD variant (``best_variant``);
    returns the first env's ratios by method."""
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
        best = best_variant(methods) or "reopold"
        ours, ours_name, parts = methods.get(best), best.upper(), []
        for name in RATIO_AGAINST:
            label = f"{name.upper()}/{ours_name}"
            if ours is None or name not in methods:
                parts.append(f"{label} n/a (not run)")
                continue
            value, text = ratio(methods[name], ours, key, name.upper(), ours_name)
            parts.append(f"{label} {text}")
            if env == next(iter(summary)):
                first[name] = value
        lines.append(f"ratios samples-to-{key}-gap vs {ours_name}, the best REOPOLD variant ({env}): " + ", ".join(parts))
    for line in lines:
        emit(line)
    return first


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


def merge_json(paths: Sequence[str]) -> tuple[list[RunCurve], dict[str, float], dict[str, dict[str, Any]]]:
    """``load_json`` of each file, curves concatenated (a run an earlier file already holds, same env, method
    and seed, is skipped and said so); fails naming a file whose teacher or settings for an env differ from
    an earlier file's (its runs are then not the same benchmark)."""
    curves: list[RunCurve] = []
    teachers: dict[str, float] = {}
    meta: dict[str, dict[str, Any]] = {}
    for path in paths:
        cs, ts, ms = load_json(path)
        for env, m in ms.items():
            same = {k: v for k, v in m.items() if k != "teacher"}
            if env in meta and ({k: v for k, v in meta[env].items() if k != "teacher"} != same
                                or teachers.get(env) != ts.get(env)):
                raise SystemExit(f"{path}: {env}'s teacher or settings ({ts.get(env)}, {same}) differ from an "
                                 f"earlier file's ({teachers.get(env)}, {meta[env]})")
            meta.setdefault(env, m)
        teachers.update({e: v for e, v in ts.items() if e not in teachers})
        seen = {(c.env, c.method, c.seed) for c in curves}
        for c in cs:
            if (c.env, c.method, c.seed) in seen:
                print(f"{path}: {c.env}/{c.method}/seed {c.seed} is already in an earlier file: skipped")
                continue
            curves.append(c)
    return curves, teachers, meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reopold/opd/grpo/dapo, 1 seed, 8 steps")
    p.add_argument("--envs", nargs="+", default=["math"],
                   help="env names (their test beds, model=tiny) or knowledge beds (learning_runs.BEDS: math_know, toolqa_know, vqa_know)")
    p.add_argument("--methods", nargs="+", default=None, choices=sorted(METHODS),
                   help=f"default: {' '.join(DEFAULT_METHODS)} (quick: {' '.join(QUICK_METHODS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    p.add_argument("--from-json", nargs="+", default=None,
                   help="re-summarise and re-plot the curves of earlier runs' JSONs (several: merged, e.g. one per seed)")
    p.add_argument("--name", default=None, help="file stem (default sample_efficiency[_quick])")
    add_run_args(p, str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    finish_run_args(p, args)
    q = args.quick
    args.methods = args.methods or list(QUICK_METHODS if q else DEFAULT_METHODS)
    args.seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1, 2])
    args.name = args.name or ("sample_efficiency_quick" if q else "sample_efficiency")
    if not set(args.methods) & set(REOPOLD_VARIANTS):
        p.error(f"--methods must include a REOPOLD variant ({', '.join(REOPOLD_VARIANTS)}): the ratios are against it")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.from_json:
        curves, teachers, meta = merge_json(args.from_json)
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
