"""PNG plots of evaluation results (matplotlib, Agg backend: no display needed).

``scaling.png``: accuracy vs k (log2 axis) per benchmark, pass@k solid and maj@k dashed, one line per
model. ``benchmarks.png``: pass@1 and maj@n per benchmark as grouped bars, one group per model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_scaling(runs: Sequence[dict[str, Any]], out_path: str | Path) -> Path:
    """Test-time scaling curves of one or more results dicts (same suite)."""
    names = list(runs[0]["benchmarks"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, bench in zip(axes[0], names):
        for i, res in enumerate(runs):
            b = res["benchmarks"].get(bench)
            if b is None:
                continue
            color = f"C{i}"
            ks = [int(k) for k in b["pass@k"]]
            ax.plot(ks, [b["pass@k"][str(k)] for k in ks], "o-", color=color, label=f"{res['model']} pass@k")
            ax.plot(ks, [b["maj@k"][str(k)] for k in ks], "s--", color=color, label=f"{res['model']} maj@k")
        ax.set_xscale("log", base=2)
        ticks = sorted({int(k) for res in runs if bench in res["benchmarks"] for k in res["benchmarks"][bench]["pass@k"]})
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("k (samples per task)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(bench)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_benchmarks(runs: Sequence[dict[str, Any]], out_path: str | Path) -> Path:
    """Per-benchmark bars of pass@1 and maj@n for one or more results dicts."""
    names = list(runs[0]["benchmarks"])
    width = 0.8 / (2 * len(runs))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(names) * len(runs)), 3.4))
    for i, res in enumerate(runs):
        p1, mj = [], []
        for bench in names:
            b = res["benchmarks"].get(bench, {})
            p1.append(b.get("pass@1", 0.0))
            mj.append(b.get(f"maj@{b['n']}", 0.0) if b else 0.0)
        base = [x + (2 * i) * width - 0.4 + width / 2 for x in range(len(names))]
        ax.bar(base, p1, width, color=f"C{i}", label=f"{res['model']} pass@1")
        ax.bar([x + width for x in base], mj, width, color=f"C{i}", alpha=0.5, hatch="//", label=f"{res['model']} maj@n")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
