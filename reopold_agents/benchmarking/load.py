"""The machine's load beside each measured ratio (benchmarks run on shared machines: docs/BENCHMARKS.md).

A run logs ``perf/load_1min`` every step (reopold_agents/step.py, read by ``metrics.load_1min``), so a
benchmark that compares whole runs reports the load *during* them (``load_during``), not only the load when
its report is printed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from reopold_agents.metrics import load_1min


def load_average() -> str:
    """``load_1min`` as a report prints it ("n/a" where there is none)."""
    load = load_1min()
    return "n/a" if load is None else f"{load:.2f}"


def load_during(records: Iterable[Mapping[str, float]]) -> str:
    """Median (range) of ``perf/load_1min`` over metrics records (the steps of one or more runs): the load a
    run's step times were measured under; "not logged" for runs older than the metric."""
    loads = [r["perf/load_1min"] for r in records if "perf/load_1min" in r]
    if not loads:
        return "not logged"
    return f"median {statistics.median(loads):.2f} ({min(loads):.2f}-{max(loads):.2f}) over {len(loads)} steps"
