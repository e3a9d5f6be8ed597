"""Human-readable outputs: Markdown tables of a results dict (printed and saved as results.md)."""

from __future__ import annotations

from typing import Any


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_markdown(results: dict[str, Any]) -> str:
    """Summary table (accuracy in %, behaviour, speed) plus the test-time scaling table."""
    benches = results["benchmarks"]
    header = ["benchmark", "tasks", "n", "pass@1", "pass@n", "maj@n", "answered", "turns", "tool calls",
              "out tokens", "tok/s", "latency s"]
    rows = []
    for name, b in benches.items():
        n = b["n"]
        rows.append([
            name, str(b["tasks"]), str(n), _pct(b["pass@1"]), _pct(b[f"pass@{n}"]), _pct(b[f"maj@{n}"]),
            _pct(b["answer_rate"]), f"{b['mean_turns']:.2f}", f"{b['mean_tool_calls']:.2f}",
            f"{b['mean_output_tokens']:.1f}", f"{b['speed']['tokens_per_s']:.1f}", f"{b['speed']['latency_s_mean']:.2f}",
        ])
    title = f"### {results['suite']} — {results['model']} (accuracy in %)"
    parts = [title, "", _table(header, rows)]
    ks = sorted({int(k) for b in benches.values() for k in b["pass@k"]})
    if ks and max(ks) > 1:
        scale_rows = []
        for name, b in benches.items():
            for metric in ("pass@k", "maj@k"):
                scale_rows.append([name, metric] + [_pct(b[metric][str(k)]) if str(k) in b[metric] else "" for k in ks])
        parts += ["", "Test-time scaling (accuracy in % vs k samples):", "",
                  _table(["benchmark", "metric"] + [f"k={k}" for k in ks], scale_rows)]
    return "\n".join(parts) + "\n"
