"""The real cross-tokenizer pair trained 40 steps with and without the stabilisers (issue 25, item 6).

``model=smol_qwen`` (SmolLM2-135M-Instruct student, Qwen2.5-Coder-0.5B-Instruct teacher, env=math asking for
the number only) rose for 10 steps and then fell back when trained 40 (docs/run.md "Real models"). Each
variant below is the same 40-step run with some of the stabilisers of docs/objective.md switched on;
every variant spells all six keys, so a change of the preset's defaults does not change what it measures:

    plain      none (token-mean loss, constant lr, the stop token trained like any token)
    schedule   lr warm-up over 4 steps, then cosine decay to 0.1 x lr
    constant   the constant loss normaliser (sum over tokens / (sequences x 16), 16 = the reply budget)
    both       schedule and constant
    stop_clip  plain with ``algo.stop_token=clip``: stopping is never rewarded (plain's replies shrink 16 -> 4)
    stop_mask  plain with ``algo.stop_token=mask``: the stop token is never in the loss

For every ``--variants`` x ``--seeds`` pair, one heavy process at a time (skipped once its summary.json
exists): ``python -m reopold_agents.run env=math model=smol_qwen trainer.total_steps=40 trainer.eval_every=10
trainer.save_every=10 trainer.keep_best=true trainer.seed=<seed> trainer.output_dir=<root>/<variant>_s<seed>
trainer.heldout_cache=<root>/heldout_success.json <variant's keys>``. Then, per run, from its summary.json
and metrics.jsonl: the held-out evaluations (128 greedy tasks every 10 steps), whether one fell more than one
standard error below the start, the final and best success, the gap closed at the end, and the mean reply
length and grad norm over the first and the last 10 steps. The last line: per variant, the runs that fell
and the median final success. About 11 minutes a run on 2 CPU cores with nothing else running, and about
4 GB of disk a run (full-weight checkpoints with their AdamW state: the rotation plus ``checkpoints/best``);
the report reads only ``summary.json`` and ``metrics.jsonl``, so ``checkpoints/`` of a finished run can go.

    python benchmarks/stabilisers.py --variants plain both --seeds 0 1 2 --root /work/runs/smol \\
        --plot benchmarks/results/smol_qwen_stabilisers.png --json benchmarks/results/smol_qwen_stabilisers.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from reopold_agents.benchmarking.load import load_average, load_during
from reopold_agents.benchmarking.run_curves import add_report_options, evals_fell, plot_runs_on_disk, train_run
from reopold_agents.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
RUN = ["env=math", "model=smol_qwen", "trainer.total_steps=40", "trainer.eval_every=10", "trainer.save_every=10",
       "trainer.keep_best=true"]
NO_SCHEDULE = ["trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.min_lr_ratio=0.0"]
SCHEDULE = ["trainer.warmup_steps=4", "trainer.lr_schedule=cosine", "trainer.min_lr_ratio=0.1"]
TOKEN_MEAN = ["algo.aggregation=token_mean", "algo.loss_norm_tokens=0"]
CONSTANT = ["algo.aggregation=constant", "algo.loss_norm_tokens=16"]
STOP_TRAIN, STOP_CLIP, STOP_MASK = (["algo.stop_token=train"], ["algo.stop_token=clip"], ["algo.stop_token=mask"])
VARIANTS = {"plain": NO_SCHEDULE + TOKEN_MEAN + STOP_TRAIN, "schedule": SCHEDULE + TOKEN_MEAN + STOP_TRAIN,
            "constant": NO_SCHEDULE + CONSTANT + STOP_TRAIN, "both": SCHEDULE + CONSTANT + STOP_TRAIN,
            "stop_clip": NO_SCHEDULE + TOKEN_MEAN + STOP_CLIP, "stop_mask": NO_SCHEDULE + TOKEN_MEAN + STOP_MASK}
CURVES = ["eval/success", "rollout/response_tokens", "grad_norm", "lr"]


def run_overrides(variant: str, seed: int, root: Path) -> list[str]:
    """The run's overrides but its output folder (``train_run`` adds ``<root>/<variant>_s<seed>``)."""
    return [*RUN, *VARIANTS[variant], f"trainer.seed={seed}", f"trainer.heldout_cache={root / 'heldout_success.json'}"]


def window_mean(records: list[dict], key: str, first: int, last: int) -> float | None:
    values = [r[key] for r in records if key in r and first <= r["step"] <= last]
    return sum(values) / len(values) if values else None


def run_report(run_dir: Path, records: list[dict], heldout_tasks: int) -> dict:
    """One finished run's numbers (module docstring), from its summary and its metrics ``records``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    evals, steps = summary["evals"], summary["steps"]
    start, final, teacher = evals[0][1], evals[-1][1], summary["teacher_success"]
    return {"evals": evals, "fell": evals_fell(evals, heldout_tasks), "final": final, "best": summary.get("best"),
            "closed": (final - start) / (teacher - start) if teacher > start else None, "teacher": teacher,
            "seconds": summary["seconds"], "load": load_during(records),
            **{f"{name}_{edge}": window_mean(records, key, lo, lo + 9)
               for name, key in (("reply_tokens", "rollout/response_tokens"), ("grad_norm", "grad_norm"))
               for edge, lo in (("first", 1), ("last", steps - 9))}}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(root: Path, variants: list[str], seeds: list[int], heldout_tasks: int) -> dict:
    """Per variant the runs on disk, their table and the variant's summary; printed and returned."""
    out: dict = {"variants": {}, "load": load_average()}
    steps: list[dict] = []  # every run's metrics records, for the load they ran under
    print("| variant | seed | held-out at each evaluation | fell > 1 SE | gap closed at the end | reply tokens "
          "(steps 1-10 / last 10) | grad norm (1-10 / last 10) | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in variants:
        runs = {}
        for seed in seeds:
            run_dir = root / f"{variant}_s{seed}"
            if not (run_dir / "summary.json").exists():
                continue
            records = read_metrics(run_dir)
            steps += records
            r = runs[seed] = run_report(run_dir, records, heldout_tasks)
            print(f"| {variant} | {seed} | {' / '.join(f'{v:.3f}' for _, v in r['evals'])} | "
                  f"{'yes' if r['fell'] else 'no'} | {fmt(r['closed'])} | {fmt(r['reply_tokens_first'])} / "
                  f"{fmt(r['reply_tokens_last'])} | {fmt(r['grad_norm_first'])} / {fmt(r['grad_norm_last'])} | "
                  f"{r['seconds'] / 60:.1f} |")
        out["variants"][variant] = runs
    out["load_during_runs"] = load_during(steps)
    print(f"load during the runs {out['load_during_runs']}; now {out['load']}")
    last = []
    for variant, runs in out["variants"].items():
        if runs:
            finals = [r["final"] for r in runs.values()]
            last.append(f"{variant} fell {sum(r['fell'] for r in runs.values())}/{len(runs)}, final "
                        f"{statistics.median(finals):.3f} ({min(finals):.3f}-{max(finals):.3f})")
    print("median over seeds: " + ("; ".join(last) if last else "no run finished yet"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["plain", "both"], choices=sorted(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", type=Path, required=True, help="one folder per run: <root>/<variant>_s<seed>")
    p.add_argument("--heldout-tasks", type=int, default=128, help="the preset's trainer.heldout_tasks (for the SE)")
    add_report_options(p)
    args = p.parse_args(argv)
    if not args.report_only:
        for variant in args.variants:
            for seed in args.seeds:
                train_run(args.root / f"{variant}_s{seed}", run_overrides(variant, seed, args.root), REPO)
    if args.plot is not None:  # before the report, whose last line is the result
        panels = plot_runs_on_disk(args.root, args.variants, args.seeds, CURVES, args.plot)
        print(f"curves: {args.plot} ({', '.join(panels)})")
    found = report(args.root, args.variants, args.seeds, args.heldout_tasks)
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
