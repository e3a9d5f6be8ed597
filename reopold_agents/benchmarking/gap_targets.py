"""Targets at a fraction of the student-to-teacher gap, and the number formats the benchmark tables share."""

from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence

from reopold_agents.benchmarking.learning_runs import RunCurve
from reopold_agents.evaluation.heldout import gap_closed


def gap_key(k: float) -> str:
    return f"{k:.0%}"


def gap_targets(curves: Sequence[RunCurve], env: str, teacher: float, gaps: Sequence[float], heldout: int,
                emit: Callable[[str], None] = print) -> dict[str, float]:
    """``start + k * (teacher - start)`` per gap k, start = the median step-0 success of the env's runs.
    A teacher not above the start leaves nothing to distil towards: every target is then "one more
    held-out task solved" (said so)."""
    start = statistics.median(c.start for c in curves if c.env == env and c.points)
    if teacher <= start:
        emit(f"{env}: teacher held-out success {teacher:.3f} <= student start {start:.3f}; "
             f"every target = start + 1/{heldout} (one more task solved)")
        return {gap_key(k): round(start + 1.0 / heldout, 4) for k in gaps}
    return {gap_key(k): round(start + k * (teacher - start), 4) for k in gaps}


def run_gap_closed(c: RunCurve, teacher: float) -> float | None:
    return gap_closed(c.start, c.final, teacher)


def fmt_samples(x: float, budget: float) -> str:
    return f">{int(budget)}" if not math.isfinite(x) else str(int(x))


def fmt_gap(g: float | None) -> str:
    return "n/a" if g is None else f"{g:.0%}"
