"""BFCL distillation runs side by side (issue 25, item 5): train, merge, evaluate each category, compare.

For every ``--algos`` x ``--seeds`` pair, one heavy process at a time:

1. ``python -m reopold_agents.run env=bfcl model=qwen_coder algo=<algo> trainer.seed=<seed>
   trainer.output_dir=<root>/<algo>_s<seed> trainer.heldout_cache=<root>/heldout_success.json`` (skipped
   once its summary.json exists; a stopped run resumes from its last checkpoint, the run CLI's own resume;
   the runs share the base student's step-0 held-out score, measured once: evaluation/heldout_cache.py);
2. ``python -m reopold_agents.export_lora <run>/checkpoints/best <run>/merged`` (the keep-best checkpoint's
   adapters merged into a plain HF folder);
3. ``python -m reopold_agents.evaluate`` of that folder on the held-out split of ``--categories`` with the
   ``bfcl_heldout`` suite's settings (greedy; out_dir ``<run>/heldout``, resumable; skipped when complete).

Then, per category, against the student before training (``--student``, an evaluate samples.jsonl of the
base model) and the teacher (``--teacher``, the same for the 1.5B; it may hold fewer entries):

    gap        = p_teacher - p_before          on the entries both answered, SE = sqrt(sum p(1-p)/N)
    leads      = gap > 2 SE                    (the categories the issue asks a run to close)
    closed     = (p_after - p_before) / gap    on the entries all three answered
    fell       = p_after < p_before - SE(p_before)   on the entries before and after both answered

and, from each run's summary.json, whether an in-run held-out evaluation fell more than one standard error
below the start. Medians and ranges over seeds per algo; the last line is each algo's median gap closed in
every category the teacher leads.

    python benchmarks/bfcl_runs.py --algos reopold_topk_forward --seeds 0 1 2 --root /work/runs/grid \\
        --student /work/bfcl_eval/qwen2.5-coder-0.5b-instruct/samples.jsonl \\
        --teacher /work/bfcl_eval/qwen2.5-coder-1.5b-instruct/samples.jsonl --categories parallel multiple

``--report-only`` skips steps 1-3 (tables from what is on disk); ``--plot PNG`` draws every run's in-run
curves side by side (held-out success, each ``--categories``' in-run success, reply length, grad norm; one
colour per algo). About an hour a run plus 10-20 minutes of evaluation per category on 2 CPU cores
(docs/run.md "BFCL runs").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from reopold_agents.benchmarking.load import load_average, load_during
from reopold_agents.benchmarking.run_curves import (add_report_options, binomial_se, evals_fell, plot_runs_on_disk,
                                                    train_run)
from reopold_agents.evaluation.compare import gap_with_se
from reopold_agents.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "configs" / "eval" / "bfcl_heldout.yaml"
Outcomes = dict[str, dict[str, bool]]  # category -> task_id -> correct


def read_outcomes(samples: Path) -> Outcomes:
    """Greedy (sample 0) outcome of each task in an evaluate samples.jsonl, by category (= benchmark)."""
    found: Outcomes = {}
    for line in samples.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["sample"] == 0:
                found.setdefault(rec["benchmark"], {})[rec["task_id"]] = bool(rec["correct"])
    return found


def rate(outcomes: dict[str, bool], ids: set[str]) -> float:
    return sum(outcomes[i] for i in ids) / max(1, len(ids))


@dataclass
class CategoryResult:
    """One run on one category."""

    category: str
    after: float  # on the entries before and after share (n_fell of them)
    before: float
    n_fell: int
    fell: bool  # after < before - SE(before)
    teacher: float | None  # on the entries all three answered (n_gap of them)
    before_matched: float | None
    after_matched: float | None
    n_gap: int
    gap: float | None
    gap_se: float | None
    leads: bool
    closed: float | None  # (after - before) / (teacher - before), matched; None where the teacher does not lead


def compare_category(category: str, before: dict[str, bool], after: dict[str, bool],
                     teacher: dict[str, bool] | None) -> CategoryResult:
    """The before/after/teacher numbers of one category (see the module docstring for each definition)."""
    shared = set(before) & set(after)
    p_b, p_a = rate(before, shared), rate(after, shared)
    fell = p_a < p_b - binomial_se(p_b, len(shared))
    if not teacher:
        return CategoryResult(category, p_a, p_b, len(shared), fell, None, None, None, 0, None, None, False, None)
    matched = shared & set(teacher)
    n = len(matched)
    p_t, p_bm, p_am = rate(teacher, matched), rate(before, matched), rate(after, matched)
    gap, gap_se = gap_with_se({"pass@1": p_bm, "tasks": n}, {"pass@1": p_t, "tasks": n})
    leads = n > 0 and gap > 2 * gap_se
    closed = (p_am - p_bm) / gap if leads else None
    return CategoryResult(category, p_a, p_b, len(shared), fell, p_t, p_bm, p_am, n, gap, gap_se, leads, closed)


def sub_suite(categories: list[str], path: Path) -> Path:
    """The bfcl_heldout suite restricted to ``categories`` (same settings), written to ``path``."""
    suite = yaml.safe_load(SUITE.read_text())
    unknown = [c for c in categories if c not in suite["benchmarks"]]
    if unknown:
        raise SystemExit(f"--categories: {unknown} not in {SUITE.name} ({sorted(suite['benchmarks'])})")
    suite["benchmarks"] = {c: suite["benchmarks"][c] for c in categories}
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def heldout_sizes(categories: list[str]) -> dict[str, int]:
    from tasks.bfcl import load_bfcl

    return {c: len(load_bfcl(c, split="heldout")) for c in categories}


def run_outcomes(run_dir: Path) -> Outcomes:
    """The trained student's outcomes from every ``heldout*/<model>/samples.jsonl`` under a run (step 3 writes
    ``heldout/``; a category measured separately may sit in ``heldout_<name>/``)."""
    found: Outcomes = {}
    for samples in sorted(run_dir.glob("heldout*/*/samples.jsonl")):
        for category, outcomes in read_outcomes(samples).items():
            found.setdefault(category, {}).update(outcomes)
    return found


def step(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def train_merge_evaluate(run_dir: Path, algo: str, seed: int, categories: list[str], overrides: list[str]) -> None:
    """Steps 1-3 for one run, each skipped where its output is complete."""
    train_run(run_dir, ["env=bfcl", "model=qwen_coder", f"algo={algo}", f"trainer.seed={seed}",
                        f"trainer.heldout_cache={run_dir.parent / 'heldout_success.json'}", *overrides], REPO)
    merged = run_dir / "merged"
    if not (merged / "config.json").exists():
        step([sys.executable, "-m", "reopold_agents.export_lora", str(run_dir / "checkpoints" / "best"), str(merged)])
    have = run_outcomes(run_dir)
    sizes = heldout_sizes(categories)
    if all(len(have.get(c, {})) >= sizes[c] for c in categories):
        return
    suite = sub_suite(categories, run_dir / "heldout_suite.yaml")
    step([sys.executable, "-m", "reopold_agents.evaluate", f"suite={suite}", f"model={merged}",
          f"out_dir={run_dir / 'heldout'}"])


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(root: Path, algos: list[str], seeds: list[int], categories: list[str], student: Outcomes,
           teacher: Outcomes, heldout_tasks: int) -> dict:
    """Per algo and category: after, gap closed and falls over the seeds on disk; printed and returned."""
    out: dict = {"algos": {}, "load": load_average()}
    steps: list[dict] = []  # every run's metrics records, for the load they ran under
    for algo in algos:
        runs = []
        for seed in seeds:
            run_dir = root / f"{algo}_s{seed}"
            after = run_outcomes(run_dir)
            if not after or not (run_dir / "summary.json").exists():
                continue
            summary = json.loads((run_dir / "summary.json").read_text())
            records = read_metrics(run_dir)
            steps += records
            rows = [compare_category(c, student.get(c, {}), after.get(c, {}), teacher.get(c)) for c in categories
                    if after.get(c)]
            runs.append({"seed": seed, "seconds": summary.get("seconds"), "evals": summary["evals"],
                         "inrun_fell": evals_fell(summary["evals"], heldout_tasks), "load": load_during(records),
                         "categories": [asdict(r) for r in rows]})
        out["algos"][algo] = runs
        print(f"\n{algo}: {len(runs)} run(s) (seeds {[r['seed'] for r in runs]})")
        print("| category | before | after, median (range) | teacher (matched n) | gap closed, median (range) | fell > 1 SE |")
        print("|---|---|---|---|---|---|")
        for c in categories:
            rows = [row for r in runs for row in r["categories"] if row["category"] == c]
            if not rows:
                continue
            closed = [row["closed"] for row in rows if row["closed"] is not None]
            teacher_cell = (f"{rows[0]['teacher']:.2f} (n={rows[0]['n_gap']}, gap {rows[0]['gap']:+.2f} "
                            f"SE {rows[0]['gap_se']:.2f})" if rows[0]["gap_se"] is not None else "-")
            print(f"| {c} | {rows[0]['before']:.2f} (n={rows[0]['n_fell']}) | {spread([row['after'] for row in rows])} "
                  f"| {teacher_cell} | {spread(closed)} | {sum(row['fell'] for row in rows)}/{len(rows)} |")
        if runs:
            print(f"in-run held-out fell > 1 SE below start: {sum(r['inrun_fell'] for r in runs)}/{len(runs)}; "
                  f"wall {spread([r['seconds'] / 60 for r in runs if r['seconds']])} min")
    last = []
    for algo, runs in out["algos"].items():
        for c in categories:
            closed = [row["closed"] for r in runs for row in r["categories"] if row["category"] == c and row["leads"]]
            if closed:
                last.append(f"{algo} {c} {statistics.median(closed):.0%} of the gap ({len(closed)} seeds)")
    out["load_during_runs"] = load_during(steps)
    print(f"load during the runs {out['load_during_runs']}; now {out['load']}")
    print("median gap closed where the teacher leads: " + ("; ".join(last) if last else "no run evaluated yet"))
    return out


def curve_keys(categories: list[str]) -> list[str]:
    """The panels of ``--plot``: in-run held-out overall and per category, reply length, grad norm."""
    return ["eval/success", *(f"eval/bfcl/{c}/success" for c in categories), "rollout/response_tokens",
            "grad_norm"]


def plot_runs(root: Path, algos: list[str], seeds: list[int], categories: list[str], path: Path) -> list[str]:
    """Every run's in-run curves on shared panels against the step (one colour per algo, one line style per
    seed), from each run's metrics.jsonl, saved to ``path``; returns the panels drawn."""
    return plot_runs_on_disk(root, algos, seeds, curve_keys(categories), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", nargs="+", default=["reopold_topk_forward"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", type=Path, required=True, help="one folder per run: <root>/<algo>_s<seed>")
    p.add_argument("--student", type=Path, required=True, help="evaluate samples.jsonl of the student before training")
    p.add_argument("--teacher", type=Path, required=True, help="evaluate samples.jsonl of the teacher")
    p.add_argument("--categories", nargs="+", default=["parallel", "multiple"])
    p.add_argument("--heldout-tasks", type=int, default=50, help="the runs' trainer.heldout_tasks (for the in-run SE)")
    p.add_argument("--override", nargs="*", default=[], help="extra run overrides, e.g. trainer.total_steps=40")
    add_report_options(p)
    args = p.parse_args(argv)
    if not args.report_only:
        for algo in args.algos:
            for seed in args.seeds:
                train_merge_evaluate(args.root / f"{algo}_s{seed}", algo, seed, args.categories, args.override)
    if args.plot is not None:  # before the report, whose last line is the result
        panels = plot_runs(args.root, args.algos, args.seeds, args.categories, args.plot)
        print(f"curves: {args.plot} ({', '.join(panels)})")
    found = report(args.root, args.algos, args.seeds, args.categories, read_outcomes(args.student),
                   read_outcomes(args.teacher), args.heldout_tasks)
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
