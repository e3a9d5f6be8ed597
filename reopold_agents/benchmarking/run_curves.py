"""Runs side by side: each trained once (resumed if stopped), whether its held-out success ever fell below
its start, and its in-run curves drawn.

Shared by the benchmarks that compare whole training runs (``benchmarks/bfcl_runs.py``,
``benchmarks/stabilisers.py``); each run is a ``trainer.output_dir`` ``<root>/<group>_s<seed>`` with its
``metrics.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from reopold_agents.metrics import read_metrics


def train_run(run_dir: Path, overrides: Sequence[str], cwd: Path) -> None:
    """``python -m reopold_agents.run <overrides> trainer.output_dir=<run_dir>``, skipped once the run wrote
    its summary.json; a stopped run resumes from its last checkpoint (the run CLI's own resume)."""
    if (run_dir / "summary.json").exists():
        return
    resume = ["trainer.resume=true"] if any((run_dir / "checkpoints").glob("step_*")) else []
    cmd = [sys.executable, "-m", "reopold_agents.run", *overrides, f"trainer.output_dir={run_dir}", *resume]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd)


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """The options every runs-side-by-side script shares: report from disk only, JSON and curves out."""
    parser.add_argument("--report-only", action="store_true", help="tables from the runs on disk; train nothing")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="draw the runs' in-run curves side by side to this PNG")


def binomial_se(p: float, n: int) -> float:
    """Standard error of a success rate ``p`` measured on ``n`` tasks."""
    return math.sqrt(p * (1 - p) / max(1, n))


def evals_fell(evals: Sequence[Sequence[float]], heldout_tasks: int) -> bool:
    """Whether any held-out evaluation after the first ``[step, success]`` fell more than one standard
    error (of the start, on ``heldout_tasks`` tasks) below the start: the issues' "never below start - 1 SE"."""
    start = evals[0][1]
    return any(v < start - binomial_se(start, heldout_tasks) for _, v in evals[1:])


def plot_runs_on_disk(root: Path, groups: Sequence[str], seeds: Sequence[int], keys: Sequence[str],
                      path: Path) -> list[str]:
    """``plot_run_curves`` of the runs ``<root>/<group>_s<seed>`` that logged metrics."""
    runs = {(g, s): read_metrics(root / f"{g}_s{s}") for g in groups for s in seeds}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        raise SystemExit(f"--plot: no metrics.jsonl under {root} for {list(groups)} x seeds {list(seeds)}")
    return plot_run_curves(runs, keys, path)


def plot_run_curves(runs: Mapping[tuple[str, int], Sequence[Mapping[str, float]]], keys: Sequence[str],
                    path: Path) -> list[str]:
    """Each run's ``keys`` against the step on shared panels (one colour per group, one line style per seed;
    ``runs`` maps (group, seed) to a run's metrics records) saved to ``path``; returns the panels drawn (a key
    no run logged is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("no run to draw")
    drawn = [k for k in keys if any(k in r for records in runs.values() for r in records)]
    groups = list(dict.fromkeys(g for g, _ in runs))
    seeds = sorted({s for _, s in runs})
    fig, axes = plt.subplots(1, len(drawn), figsize=(3.6 * len(drawn), 3.2), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, key in zip(axes[0], drawn):
        for (group, seed), records in runs.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), color=f"C{groups.index(group)}", ls=styles[seeds.index(seed) % len(styles)],
                        marker="o" if key.startswith("eval/") else None, ms=3, lw=1, label=f"{group} s{seed}")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
