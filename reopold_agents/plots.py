"""A PNG of the training curves, drawn at the end of a run from the metrics JSONL (matplotlib, Agg).

Reading the JSONL rather than in-memory state means the plot also covers steps from before a resume.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from reopold_agents.metrics import read_metrics

# Preferred panels, in order; a panel is drawn only if its key was logged.
DEFAULT_KEYS: tuple[str, ...] = (
    "eval/success",
    "rollout/success",
    "rollout/reward",
    "teacher/log_ratio/mean",
    "loss",
    "entropy",
    "frac_clipped",
    "frac_selected",
    "rollout/response_tokens",
    "perf/tokens_per_s",
    "perf/step_time_s",
)
MAX_PANELS = 12


def _pick_keys(records: Sequence[dict[str, Any]], keys: Sequence[str] | None) -> list[str]:
    present: list[str] = []
    for rec in records:
        for k in rec:
            if k != "step" and k not in present:
                present.append(k)
    if keys is not None:
        return [k for k in keys if k in present]
    chosen = [k for k in DEFAULT_KEYS if k in present]
    # Fall back to whatever else was logged (other losses' own metric names) to fill the grid.
    for k in present:
        if len(chosen) >= MAX_PANELS:
            break
        if k not in chosen and not k.endswith(("/std", "/min", "/max")):
            chosen.append(k)
    return chosen[:MAX_PANELS]


def plot_metrics(metrics: str | Path | Sequence[dict[str, Any]], out_path: str | Path,
                 keys: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Draw one panel per metric against the step and save a PNG to ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    if not records:
        raise ValueError(f"no metrics to plot in {metrics!r}")
    chosen = _pick_keys(records, keys)
    if not chosen:
        raise ValueError(f"none of the keys {list(keys or DEFAULT_KEYS)} were logged")
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, chosen):
        pts = [(r["step"], r[key]) for r in records if key in r]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
