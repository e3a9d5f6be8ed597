"""Drawing held-out success curves (median and range over seeds) with the gap targets and the teacher."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from reopold_agents.benchmarking.learning_runs import RunCurve

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def draw(ax: Axes, groups: dict[str, list[RunCurve]], targets: dict[str, float], teacher: float | None,
         title: str) -> None:
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
