"""Sample efficiency: student samples needed to reach a target held-out success, per objective.

Trains the tiny student against the tiny teacher (``model=tiny``) with the run CLI's own loop
(``reopold_agents.run.train``, in-process, Hydra overrides composed by ``reopold_agents.config.compose``)
for every (env, method, seed), with identical budgets: ``trainer.total_steps`` steps of
``prompts_per_step x group_size`` sampled episodes. Methods are ``algo=reopold``, ``opd`` (vanilla
reverse-KL OPD), ``grpo`` (outcome-reward RL, no teacher), ``gkd`` (supervised top-k KL on student
samples) and the REOPOLD ablations of docs/objective.md (one override each):

* ``reopold-noclip``    algo.reward_clip=false
* ``reopold-noentropy`` algo.stage2_rule=all
* ``reopold-1stage``    algo.stage_switch=0   (refinement stage only)

What is measured: greedy success on the run's fixed 64-task held-out set (``eval/success``) every
``eval_every`` steps. "Samples to target" = student episodes consumed (steps x prompts x group) at the
first evaluation whose success reaches the target; a run that never reaches it counts as "> budget".
The target is ``--target`` (absolute) or, by default, halfway (``--target-gain``) from the student's
starting success to the tiny teacher's greedy success on the same held-out set. The last line is the GRPO / REOPOLD ratio of median samples
to target on the first env (the paper reports 6.7-12x fewer samples than RL at 1.5B-7B scale; here
it is a 2-layer CPU model and a few hundred samples, so read the ratio as a smoke-level comparison).

    python benchmarks/sample_efficiency.py --quick      # math, 4 methods, 1 seed, tiny budget (minutes)
    python benchmarks/sample_efficiency.py              # math + toolqa, all methods + ablations, 3 seeds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

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


@dataclass
class RunCurve:
    """Held-out success of one training run, indexed by student samples consumed."""

    env: str
    method: str
    seed: int
    samples_per_step: int
    points: list[tuple[int, float]] = field(default_factory=list)  # (samples, held-out success)
    seconds: float = 0.0

    def samples_to(self, target: float) -> float:
        """Samples at the first evaluation reaching ``target``; inf if it never does."""
        for samples, success in self.points:
            if success >= target - 1e-9:
                return float(samples)
        return math.inf

    @property
    def final(self) -> float:
        return self.points[-1][1] if self.points else float("nan")


def overrides(env: str, method: str, seed: int, args: argparse.Namespace, out_dir: str) -> list[str]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return [
        f"env={env}", *METHODS[method], "model=tiny",
        f"trainer.seed={seed}", f"trainer.lr={args.lr}", f"trainer.total_steps={args.steps}", f"trainer.eval_every={args.eval_every}",
        f"trainer.prompts_per_step={args.prompts}", f"trainer.group_size={args.group}",
        f"trainer.output_dir={out_dir}", f"trainer.save_every={args.steps}", "trainer.keep_checkpoints=1",
        *args.override,
    ]


def train_one(env: str, method: str, seed: int, args: argparse.Namespace, out_root: str,
              on_step: Callable[[int, dict], None] | None = None) -> RunCurve:
    """One training run through the run CLI's loop; returns its held-out success curve."""
    from reopold_agents.config import compose
    from reopold_agents.run import train

    out_dir = os.path.join(out_root, f"{env}-{method}-s{seed}")
    cfg = compose(overrides(env, method, seed, args, out_dir))
    per_step = cfg.trainer.prompts_per_step * cfg.trainer.group_size
    start = time.perf_counter()
    result = train(cfg, progress=False, on_step=on_step)
    curve = RunCurve(env, method, seed, per_step, [(step * per_step, float(s)) for step, s in result.evals],
                     time.perf_counter() - start)
    return curve


def teacher_heldout_success(env: str, args: argparse.Namespace) -> float:
    """Greedy success of the *teacher* (``model.teacher``) on the very held-out set the runs evaluate the
    student on, measured by the run's own evaluator (``evaluation.heldout.HeldoutSet``)."""
    from reopold_agents.config import compose
    from reopold_agents.engines import make_engine
    from reopold_agents.evaluation.heldout import HeldoutSet
    from reopold_agents.models import load_model
    from reopold_agents.run import resolve_tiny

    cfg = resolve_tiny(compose([f"env={env}", "model=tiny", *args.override]))
    loaded = load_model(cfg.model.teacher, "teacher", cfg.model.dtype, cfg.model.device)
    engine = make_engine(cfg.engine, model=loaded.model, tokenizer=loaded.tokenizer, processor=loaded.processor,
                         model_path=loaded.path)
    held = HeldoutSet.from_config(cfg, engine, loaded.tokenizer, loaded.processor)
    try:
        return float(held.success())
    finally:
        held.close()
        engine.close()


def summarize(curves: list[RunCurve], target_for: Callable[[str], float]) -> dict[str, dict[str, dict[str, float]]]:
    """Per env and method: median samples to target (inf = not reached by the median run), final success."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for c in curves:
        table.setdefault(c.env, {}).setdefault(c.method, {"_curves": []})["_curves"].append(c)  # type: ignore[arg-type]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for env, methods in table.items():
        target = target_for(env)
        out[env] = {}
        for method, rec in methods.items():
            cs: list[RunCurve] = rec["_curves"]  # type: ignore[assignment]
            to = [c.samples_to(target) for c in cs]
            out[env][method] = {
                "target": target,
                "samples_to_target_median": statistics.median(to),
                "reached": sum(math.isfinite(x) for x in to) / len(to),
                "final_median": statistics.median(c.final for c in cs),
                "final_min": min(c.final for c in cs),
                "final_max": max(c.final for c in cs),
                "start_median": statistics.median(c.points[0][1] for c in cs),
                "budget": max(c.points[-1][0] for c in cs),
                "seeds": len(cs),
                "minutes_median": statistics.median(c.seconds for c in cs) / 60,
            }
    return out


def heldout_tasks(args: argparse.Namespace) -> int:
    """Size of the runs' held-out set (``trainer.heldout_tasks`` after the overrides)."""
    from reopold_agents.config import compose

    return compose(["model=tiny", *args.override]).trainer.heldout_tasks


def default_target(curves: list[RunCurve], env: str, gain: float, teacher: float, heldout: int) -> float:
    """Start success (median over this env's runs: the same student) + ``gain`` of the way to the teacher's."""
    start = statistics.median(c.points[0][1] for c in curves if c.env == env and c.points)
    if teacher <= start:  # nothing to distil towards: fall back to "one more held-out task solved"
        print(f"{env}: teacher held-out success {teacher:.3f} <= student start {start:.3f}; "
              f"target = start + 1/{heldout} (one more task solved)")
        return round(start + 1.0 / heldout, 4)
    return round(start + gain * (teacher - start), 4)


def plot(curves: list[RunCurve], summary: dict, path: Path, teachers: dict[str, float] | None = None) -> None:
    """Success vs samples, one column per env; rows: main methods and REOPOLD ablations (median + range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(summary)
    ran = {c.method for c in curves}
    rows = [("methods", [m for m in METHODS if m in MAIN]), ("REOPOLD ablations", [m for m in METHODS if m not in MAIN or m == "reopold"])]
    rows = [(t, ms) for t, ms in rows if any(m in ran and m != "reopold" for m in ms)] or rows[:1]
    fig, axes = plt.subplots(len(rows), len(envs), figsize=(4.2 * len(envs), 3.0 * len(rows)), squeeze=False, dpi=80)
    for j, env in enumerate(envs):
        for i, (title, methods) in enumerate(rows):
            ax = axes[i][j]
            for method in methods:
                cs = [c for c in curves if c.env == env and c.method == method]
                if not cs:
                    continue
                xs = [s for s, _ in cs[0].points]
                ys = [[c.points[k][1] for c in cs] for k in range(len(xs))]
                ax.plot(xs, [statistics.median(y) for y in ys], marker="o", ms=3, label=method)
                if len(cs) > 1:
                    ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.15)
            target = next(iter(summary[env].values()))["target"]
            ax.axhline(target, color="grey", ls=":", lw=1, label="target")
            if teachers and env in teachers:
                ax.axhline(teachers[env], color="black", ls="--", lw=1, label="teacher")
            ax.set_title(f"{env}: {title}", fontsize=9)
            ax.set_xlabel("student samples", fontsize=8)
            ax.set_ylabel("held-out success (greedy)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _fmt_samples(x: float, budget: float) -> str:
    return f"> {int(budget)}" if not math.isfinite(x) else str(int(x))


def report(summary: dict, heldout: int, emit: Callable[[str], None] = print) -> float:
    """Print the table; the last line is GRPO / REOPOLD median samples to target on the first env."""
    for env, methods in summary.items():
        target = next(iter(methods.values()))["target"]
        emit(f"\n{env}: target held-out success {target:.3f} (greedy, {heldout} held-out tasks)")
        emit(f"{'method':<18} {'samples to target':>18} {'reached':>8} {'start':>6} {'final (min-max)':>18} {'min/run':>8}")
        for method, r in methods.items():
            emit(f"{method:<18} {_fmt_samples(r['samples_to_target_median'], r['budget']):>18} {r['reached']:>8.2f} "
                 f"{r['start_median']:>6.3f} {r['final_median']:>7.3f} ({r['final_min']:.3f}-{r['final_max']:.3f}) "
                 f"{r['minutes_median']:>8.1f}")
    env = next(iter(summary))
    ours, rl = summary[env].get("reopold"), summary[env].get("grpo")
    if ours is None or rl is None:
        emit("ratio: needs both reopold and grpo runs")
        return float("nan")
    a, b = rl["samples_to_target_median"], ours["samples_to_target_median"]
    if math.isfinite(a) and math.isfinite(b):
        ratio, text = a / b, f"{a / b:.2f}x"
    elif math.isfinite(b):
        ratio, text = rl["budget"] / b, f">= {rl['budget'] / b:.2f}x (GRPO did not reach the target in {int(rl['budget'])} samples)"
    elif math.isfinite(a):
        ratio, text = a / ours["budget"], f"<= {a / ours['budget']:.2f}x (REOPOLD did not reach the target)"
    else:
        ratio, text = float("nan"), "n/a (neither reached the target within the budget)"
    emit(f"ratio samples-to-target GRPO/REOPOLD ({env}): {text} (paper: 6.7-12x)")
    return ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="math only, 4 methods, 1 seed, 8 steps x 8 samples")
    p.add_argument("--envs", nargs="+", default=None, help="default: math toolqa (quick: math)")
    p.add_argument("--methods", nargs="+", default=None, choices=sorted(METHODS), help="default: all (quick: the 4 main)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="learner steps per run (default 30; quick 8)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation period (default 5; quick 4)")
    p.add_argument("--lr", type=float, default=3e-4, help="trainer.lr, pinned so results do not follow preset changes")
    p.add_argument("--prompts", type=int, default=8, help="trainer.prompts_per_step")
    p.add_argument("--group", type=int, default=2, help="trainer.group_size")
    p.add_argument("--target", type=float, default=None, help="absolute held-out success target")
    p.add_argument("--target-gain", type=float, default=0.5, help="default target: start + gain * (teacher - start)")
    p.add_argument("--from-json", default=None, help="re-summarise and re-plot the curves of an earlier run's JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="JSON + PNG go here")
    p.add_argument("--name", default=None, help="file stem (default sample_efficiency[_quick])")
    p.add_argument("--work-dir", default=None, help="run outputs (default: a temporary folder)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = p.parse_args(argv)
    q = args.quick
    args.envs = args.envs or (["math"] if q else ["math", "toolqa"])
    args.methods = args.methods or (list(MAIN) if q else list(METHODS))
    args.seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1, 2])
    args.steps = args.steps or (8 if q else 30)
    args.eval_every = args.eval_every or (4 if q else 5)
    args.name = args.name or ("sample_efficiency_quick" if q else "sample_efficiency")
    if "reopold" not in args.methods:
        p.error("--methods must include reopold (the ratio is against it)")
    if not 0.0 < args.target_gain <= 1.0:
        p.error("--target-gain must lie in (0, 1]")
    if args.target is not None and not 0.0 < args.target <= 1.0:
        p.error("--target must lie in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        curves = [RunCurve(**{**c, "points": [tuple(p) for p in c["points"]]}) for c in saved["curves"]]
        teachers = {e: float(v) for e, v in saved["teacher_success"].items()}
        args.envs = list(dict.fromkeys(c.env for c in curves))
    else:
        curves, teachers = _train_all(args)
    heldout = heldout_tasks(args)
    targets = {env: args.target if args.target is not None
               else default_target(curves, env, args.target_gain, teachers[env], heldout) for env in args.envs}
    summary = summarize(curves, targets.__getitem__)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.name}.png"
    plot(curves, summary, png, teachers)
    with open(out / f"{args.name}.json", "w") as f:
        json.dump({"args": dict(vars(args)), "teacher_success": teachers, "summary": summary,
                   "curves": [asdict(c) for c in curves]}, f, indent=1, default=str)
    per_run = {c.points[-1][0] for c in curves}
    print(f"budget per run: {sorted(per_run)} student samples; teacher held-out success: "
          + ", ".join(f"{e} {v:.3f}" for e, v in teachers.items()) + f"; curves: {png}")
    return report(summary, heldout)


def _train_all(args: argparse.Namespace) -> tuple[list[RunCurve], dict[str, float]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    teachers = {env: teacher_heldout_success(env, args) for env in args.envs}
    runs = [(e, m, s) for s in args.seeds for e in args.envs for m in args.methods]  # seeds outermost: early results cover every method
    curves: list[RunCurve] = []
    with tempfile.TemporaryDirectory() as tmp, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        work = args.work_dir or tmp
        task = bar.add_task("runs", total=len(runs) * args.steps)
        for env, method, seed in runs:
            bar.update(task, description=f"{env}/{method}/seed {seed}")
            curves.append(train_one(env, method, seed, args, work, on_step=lambda *_: bar.advance(task)))
    return curves, teachers


if __name__ == "__main__":
    main()
