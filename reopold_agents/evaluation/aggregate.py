"""Per-benchmark metrics from per-sample records: accuracy (pass@k, maj@k, scaling curve), agent
behaviour (turns, tool calls, output length) and speed (tokens/s, latency).

Accuracy and behaviour are pure functions of the records, so they are reproducible bit for bit; the
``speed`` block holds wall-clock measurements and is the only part that varies between machines/runs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from reopold_agents.evaluation.majority import maj_at_k
from reopold_agents.evaluation.passk import pass_at_k, scaling_ks
from reopold_agents.evaluation.records import SampleRecord

SPEED_KEY = "speed"


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return float(ordered[idx])


def group_by_task(records: Sequence[SampleRecord], n: int) -> list[list[SampleRecord]]:
    """Records grouped per task in task order; every task must have samples 0..n-1 exactly once."""
    tasks: dict[int, list[SampleRecord]] = defaultdict(list)
    for rec in records:
        tasks[rec.task_index].append(rec)
    out = []
    for idx in sorted(tasks):
        samples = sorted(tasks[idx], key=lambda r: r.sample)
        if [r.sample for r in samples] != list(range(n)):
            raise ValueError(f"task {idx} of {samples[0].benchmark!r} has samples "
                             f"{[r.sample for r in samples]}, expected 0..{n - 1}")
        out.append(samples)
    return out


def speed_metrics(records: Sequence[SampleRecord]) -> dict[str, float]:
    """Throughput over lock-step chunks (each chunk's wall time counted once) and per-episode latency."""
    chunk_time: dict[int, float] = {}
    for rec in records:
        chunk_time[rec.chunk] = rec.latency_s
    total_time = sum(chunk_time.values())
    tokens = sum(r.output_tokens for r in records)
    latencies = [r.latency_s for r in records]
    return {
        "tokens_per_s": tokens / total_time if total_time > 0 else 0.0,
        "seconds_per_sample": total_time / len(records) if records else 0.0,
        "latency_s_mean": _mean(latencies),
        "latency_s_p50": _quantile(latencies, 0.5) if latencies else 0.0,
        "latency_s_p90": _quantile(latencies, 0.9) if latencies else 0.0,
        "wall_s": total_time,
    }


def benchmark_metrics(records: Sequence[SampleRecord], n: int) -> dict[str, Any]:
    """All metrics of one benchmark (records of every task, n samples each)."""
    if not records:
        raise ValueError("no records to aggregate")
    tasks = group_by_task(records, n)
    ks = scaling_ks(n)
    pass_k = {str(k): _mean([pass_at_k(n, sum(r.correct for r in t), k) for t in tasks]) for k in ks}
    maj_k = {
        str(k): _mean([maj_at_k([r.vote for r in t], [r.correct for r in t], k) for t in tasks]) for k in ks
    }
    flat = [r for t in tasks for r in t]
    return {
        "tasks": len(tasks),
        "n": n,
        "samples": len(flat),
        "pass@1": pass_k["1"],
        f"pass@{n}": pass_k[str(n)],
        f"maj@{n}": maj_k[str(n)],
        "pass@k": pass_k,
        "maj@k": maj_k,
        "answer_rate": _mean([r.vote is not None for r in flat]),
        "mean_reward": _mean([r.reward for r in flat]),
        "mean_turns": _mean([r.turns for r in flat]),
        "mean_tool_calls": _mean([r.tool_calls for r in flat]),
        "mean_output_tokens": _mean([r.output_tokens for r in flat]),
        "unfinished_rate": _mean([r.finish != "terminated" for r in flat]),  # no final answer committed
        SPEED_KEY: speed_metrics(flat),
    }


def overall_metrics(benchmarks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Macro average over benchmarks (each benchmark weighs the same, whatever its size)."""
    if not benchmarks:
        return {"pass@1": 0.0, "samples": 0}
    return {
        "pass@1": _mean([b["pass@1"] for b in benchmarks.values()]),
        "maj@n": _mean([b[f"maj@{b['n']}"] for b in benchmarks.values()]),
        "samples": sum(b["samples"] for b in benchmarks.values()),
    }


def strip_speed(results: dict[str, Any]) -> dict[str, Any]:
    """A copy of a results dict without the wall-clock blocks (what must match across resumed runs)."""
    if isinstance(results, dict):
        return {k: strip_speed(v) for k, v in results.items() if k != SPEED_KEY}
    return results
