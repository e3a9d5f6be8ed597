"""The machine's load beside each measured ratio (benchmarks run on shared machines: docs/BENCHMARKS.md)."""

from __future__ import annotations


def load_average() -> str:
    """The 1-minute load average as /proc/loadavg gives it ("n/a" where there is none)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"
