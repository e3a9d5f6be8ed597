"""Test-time scaling and speed-up: teacher vs distilled student through the evaluation harness.

1. A distilled student: ``--student PATH`` (a checkpoint's ``model/`` folder), or else the tiny student is
   distilled here with ``algo=reopold`` through the run CLI's loop (``reopold_agents.run.train``,
   ``--steps`` steps on ``--env``) and its final checkpoint is used.
2. The harness (``reopold_agents.evaluate.evaluate_model``, suite ``--suite`` with ``k`` samples per task)
   evaluates the tiny teacher, the tiny student before distillation and the distilled student, in a
   rotating order, ``--repeats`` times. Accuracy (pass@k, maj@k for k = 1, 2, 4, ..., k) is identical in
   every repeat (seeded sampling); the wall-clock numbers (tokens/s, seconds/sample) are medians.
3. ``reopold_agents.evaluation.compare.compare_results`` on the median-speed results gives, per model
   vs the teacher: k* = the fewest samples whose majority vote matches the teacher's pass@1, and the
   speed-up at matched accuracy = teacher s/sample / (k* x student s/sample).

    python benchmarks/tts_speedup.py --quick        # 8 distillation steps, 8 tasks x k=4, 2 repeats
    python benchmarks/tts_speedup.py                # 30 steps, math_tiny (16 tasks) x k=8, 3 repeats

The last line is the distilled student's speed-up at matched accuracy over the teacher (first benchmark).
The tiny pair is 2 vs 4 layers on CPU, where HF generation is mostly per-token Python overhead, so the
throughput gap is far smaller than a 1.5B student vs a 7B teacher on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def distill(args: argparse.Namespace, work: Path) -> str:
    """Train the tiny student with REOPOLD via the run loop; returns its final ``model/`` folder."""
    from reopold_agents.config import compose
    from reopold_agents.run import train

    out = work / f"distill-{args.env}"
    cfg = compose([f"env={args.env}", "algo=reopold", "model=tiny", f"trainer.total_steps={args.steps}",
                   f"trainer.output_dir={out}", f"trainer.save_every={args.steps}", "trainer.keep_checkpoints=1",
                   "trainer.eval_every=0", f"trainer.seed={args.seed}",
                   *([f"trainer.lr={args.lr}"] if args.lr is not None else []), *args.override])
    train(cfg, progress=True)
    from reopold_agents.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(out / "checkpoints")
    if ckpt is None:
        raise RuntimeError(f"the distillation run wrote no checkpoint under {out / 'checkpoints'}")
    return str(Path(ckpt) / "model")


def evaluate_all(models: dict[str, tuple[str, str]], args: argparse.Namespace, work: Path,
                 emit: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Evaluate each (name, role) ``repeats`` times in a rotating order; results with median speed."""
    from dataclasses import replace

    from reopold_agents.evaluate import evaluate_model
    from reopold_agents.evaluation.suite import compose_evaluate, resolve_suite

    overrides = [f"suite={args.suite}", f"k={args.k}", "plots=false", "resume=false", "overwrite=true"]
    if args.limit:
        overrides.append(f"limit={args.limit}")
    cfg = compose_evaluate(overrides)
    cfg = replace(cfg, eval=resolve_suite(cfg.eval, cfg.k, cfg.limit))
    labels = list(models)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in labels}
    for r in range(args.repeats):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            name, role = models[label]
            out = work / "eval" / f"{label}-r{r}"
            runs[label].append(evaluate_model(cfg, name, role, out, label))
            bench = next(iter(runs[label][-1]["benchmarks"].values()))
            emit(f"repeat {r} {label:<18} pass@1 {bench['pass@1']:.3f}  tokens/s {bench['speed']['tokens_per_s']:.1f}")
    return {label: _median_speed(rs) for label, rs in runs.items()}


def _median_speed(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The first result with every benchmark's wall-clock numbers replaced by medians over repeats."""
    out = copy.deepcopy(results[0])
    for name, bench in out["benchmarks"].items():
        for key in ("tokens_per_s", "seconds_per_sample"):
            bench["speed"][key] = statistics.median(r["benchmarks"][name]["speed"][key] for r in results)
        accs = {r["benchmarks"][name]["pass@1"] for r in results}
        if len(accs) > 1:  # seeded sampling: a difference means the harness lost determinism
            raise RuntimeError(f"{name}: pass@1 differs between repeats ({sorted(accs)})")
    return out


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Accuracy vs k (pass@k solid, maj@k dashed) per model, and tokens/s bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench = next(iter(next(iter(results.values()))["benchmarks"]))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(8.4, 3.0), dpi=80)
    for i, (label, res) in enumerate(results.items()):
        b = res["benchmarks"][bench]
        ks = sorted(int(k) for k in b["pass@k"])
        color = f"C{i}"
        ax.plot(ks, [b["pass@k"][str(k)] for k in ks], "-o", ms=3, color=color, label=f"{label} pass@k")
        ax.plot(ks, [b["maj@k"][str(k)] for k in ks], "--s", ms=3, color=color, label=f"{label} maj@k")
        bx.bar(i, b["speed"]["tokens_per_s"], color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per task)", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_title(f"test-time scaling ({bench})", fontsize=9)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    bx.set_xticks(range(len(results)), list(results), fontsize=7)
    bx.set_ylabel("generated tokens/s (median)", fontsize=8)
    bx.set_title("generation throughput", fontsize=9)
    bx.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(results: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]],
           emit: Callable[[str], None] = print) -> float:
    bench = next(iter(next(iter(results.values()))["benchmarks"]))
    emit(f"\n{bench}: accuracy vs k (pass@k / maj@k), medians of speed")
    ks = sorted(int(k) for k in next(iter(results.values()))["benchmarks"][bench]["pass@k"])
    emit(f"{'model':<18} " + " ".join(f"{'k=' + str(k):>11}" for k in ks) + f" {'tok/s':>7} {'s/sample':>9}")
    for label, res in results.items():
        b = res["benchmarks"][bench]
        cells = " ".join(f"{b['pass@k'][str(k)]:.2f}/{b['maj@k'][str(k)]:.2f}".rjust(11) for k in ks)
        emit(f"{label:<18} {cells} {b['speed']['tokens_per_s']:>7.1f} {b['speed']['seconds_per_sample']:>9.4f}")
    for label, cmp in comparisons.items():
        row = cmp["benchmarks"][bench]
        sp = row["speedup_at_matched_accuracy"]
        emit(f"{label} vs teacher: throughput {row['throughput_ratio']:.2f}x, teacher pass@1 {row['target_pass@1']:.3f}, "
             f"k* {row['matched_k'] if row['matched_k'] is not None else 'none'}, "
             f"speed-up at matched accuracy {'n/a' if sp is None else f'{sp:.2f}x'}")
    row = comparisons["student-distilled"]["benchmarks"][bench]
    sp = row["speedup_at_matched_accuracy"]
    emit(f"ratio speed-up at matched accuracy, distilled student vs teacher ({bench}): "
         f"{'n/a (maj@k never reaches the teacher pass@1; raise --k)' if sp is None else f'{sp:.2f}x'}")
    return float("nan") if sp is None else float(sp)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 distillation steps, 8 tasks, k=4, 2 repeats")
    p.add_argument("--student", default=None, help="distilled student (checkpoint model/ folder); default: distil here")
    p.add_argument("--env", default="math", choices=["math", "toolqa"], help="env of the distillation run")
    p.add_argument("--steps", type=int, default=None, help="distillation steps (default 30; quick 8)")
    p.add_argument("--suite", default="math_tiny", help="evaluation suite (configs/eval/)")
    p.add_argument("--k", type=int, default=None, help="samples per task (default 8; quick 4)")
    p.add_argument("--limit", type=int, default=None, help="tasks per benchmark (default all; quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="evaluations per model (default 3; quick 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="trainer.lr of the distillation run (default: the env preset's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default=None, help="file stem (default tts_speedup[_quick])")
    p.add_argument("--work-dir", default=None, help="runs and eval outputs (default: a temporary folder)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for the distillation run")
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (8 if q else 30)
    args.k = args.k or (4 if q else 8)
    args.limit = args.limit or (8 if q else None)
    args.repeats = args.repeats or (2 if q else 3)
    args.name = args.name or ("tts_speedup_quick" if q else "tts_speedup")
    for key in ("steps", "k", "repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from reopold_agents.evaluation.compare import compare_results

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        student = args.student or distill(args, work)
        models = {"teacher": ("tiny", "teacher"), "student-before": ("tiny", "student"),
                  "student-distilled": (student, "student")}
        results = evaluate_all(models, args, work)
    comparisons = {label: compare_results(results[label], results["teacher"]) for label in results if label != "teacher"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.name}.png"
    plot(results, png)
    with open(out / f"{args.name}.json", "w") as f:
        json.dump({"args": vars(args), "results": results, "compare": comparisons}, f, indent=1, default=str)
    print(f"plot: {png}")
    ratio = report(results, comparisons)
    return ratio if math.isfinite(ratio) else float("nan")


if __name__ == "__main__":
    main()
