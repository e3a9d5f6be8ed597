"""Side-by-side comparison of two evaluation results of the same suite (e.g. student vs teacher).

Speed-up at matched accuracy (per benchmark), with A = the evaluated model and B = the reference:
    target  = B's pass@1 (B answering once per task);
    k*      = the smallest k on A's scaling curve (1, 2, 4, ..., n) with maj@k(A) >= target, i.e. how many
              samples A needs, with majority voting and no oracle, to match B's single-sample accuracy;
    speedup = B's generation seconds per sample / (k* x A's seconds per sample).
speedup > 1 means A reaches B's accuracy faster than B itself.

The gap B - A in pass@1 comes with its standard error, sqrt(p_A (1 - p_A) / N_A + p_B (1 - p_B) / N_B) over
the N tasks each side answered (two independent proportions; conservative when n > 1 samples per task
average out), and ``b_leads`` says whether the gap exceeds two standard errors: the categories a
distillation run is asked to close (issue 25). If A never reaches the target within n
samples, k* and speedup are null. Both runs must use the same engine/batch settings on the same machine;
the raw throughput ratio (A tokens/s / B tokens/s) is reported too.

CLI: ``python -m reopold_agents.evaluation.compare A/results.json B/results.json [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from reopold_agents.evaluation.report import _pct, _table

TOLERANCE = 1e-9


def matched_k(candidate: dict[str, Any], target: float) -> int | None:
    """Smallest k with maj@k(candidate) >= target, or None."""
    for k in sorted(int(k) for k in candidate["maj@k"]):
        if candidate["maj@k"][str(k)] >= target - TOLERANCE:
            return k
    return None


def gap_with_se(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float | None]:
    """``(p_B - p_A, its standard error)``; the error is None where a result does not say its task count."""
    pa, pb = a["pass@1"], b["pass@1"]
    if not a.get("tasks") or not b.get("tasks"):
        return pb - pa, None
    return pb - pa, math.sqrt(pa * (1 - pa) / a["tasks"] + pb * (1 - pb) / b["tasks"])


def compare_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-benchmark comparison of results ``a`` (candidate) against ``b`` (reference)."""
    if a["suite"] != b["suite"]:
        raise ValueError(f"suite: cannot compare results of different suites ({a['suite']!r} vs {b['suite']!r})")
    shared = [name for name in a["benchmarks"] if name in b["benchmarks"]]
    if not shared:
        raise ValueError("benchmarks: the two results have no benchmark in common")
    rows: dict[str, Any] = {}
    for name in shared:
        ra, rb = a["benchmarks"][name], b["benchmarks"][name]
        sa, sb = ra["speed"], rb["speed"]
        target = rb["pass@1"]
        k = matched_k(ra, target)
        speedup = None
        if k is not None and sa["seconds_per_sample"] > 0:
            speedup = sb["seconds_per_sample"] / (k * sa["seconds_per_sample"])
        gap, se = gap_with_se(ra, rb)
        rows[name] = {
            "a": {"pass@1": ra["pass@1"], "maj@n": ra[f"maj@{ra['n']}"], "n": ra["n"],
                  "tokens_per_s": sa["tokens_per_s"], "seconds_per_sample": sa["seconds_per_sample"],
                  "mean_output_tokens": ra["mean_output_tokens"]},
            "b": {"pass@1": rb["pass@1"], "maj@n": rb[f"maj@{rb['n']}"], "n": rb["n"],
                  "tokens_per_s": sb["tokens_per_s"], "seconds_per_sample": sb["seconds_per_sample"],
                  "mean_output_tokens": rb["mean_output_tokens"]},
            "pass@1_delta": ra["pass@1"] - rb["pass@1"],
            "gap": gap, "gap_se": se, "b_leads": None if se is None else gap > 2 * se,
            "throughput_ratio": sa["tokens_per_s"] / sb["tokens_per_s"] if sb["tokens_per_s"] > 0 else None,
            "target_pass@1": target,
            "matched_k": k,
            "speedup_at_matched_accuracy": speedup,
        }
    return {"suite": a["suite"], "a": a["model"], "b": b["model"], "benchmarks": rows}


def compare_markdown(cmp: dict[str, Any]) -> str:
    a, b = cmp["a"], cmp["b"]
    header = ["benchmark", f"{a} pass@1", f"{b} pass@1", "gap (SE)", f"{a} maj@n", f"{b} maj@n", f"{a} tok/s",
              f"{b} tok/s", f"{a} s/sample", f"{b} s/sample", "k*", "speed-up"]
    rows = []
    for name, r in cmp["benchmarks"].items():
        ratio = "n/a" if r["speedup_at_matched_accuracy"] is None else f"{r['speedup_at_matched_accuracy']:.2f}x"
        rows.append([
            name, _pct(r["a"]["pass@1"]), _pct(r["b"]["pass@1"]), _gap_cell(r),
            _pct(r["a"]["maj@n"]), _pct(r["b"]["maj@n"]),
            f"{r['a']['tokens_per_s']:.1f}", f"{r['b']['tokens_per_s']:.1f}",
            f"{r['a']['seconds_per_sample']:.3f}", f"{r['b']['seconds_per_sample']:.3f}",
            "none" if r["matched_k"] is None else str(r["matched_k"]), ratio,
        ])
    note = (f"gap = {b} - {a} pass@1 in points (its standard error; * where it exceeds two). "
            f"k* = fewest samples for {a}'s maj@k to reach {b}'s pass@1; speed-up = {b} s/sample / "
            f"(k* x {a} s/sample). Accuracy in %.")
    return f"### {cmp['suite']}: {a} vs {b}\n\n" + _table(header, rows) + f"\n\n{note}\n"


def _gap_cell(row: dict[str, Any]) -> str:
    if row["gap_se"] is None:
        return f"{100 * row['gap']:+.1f}"
    return f"{100 * row['gap']:+.1f} ({100 * row['gap_se']:.1f}){'*' if row['b_leads'] else ''}"


def write_comparison(a: dict[str, Any], b: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write compare.json, compare.md and side-by-side plots to ``out_dir``; returns the comparison."""
    from reopold_agents.evaluation.plots import plot_benchmarks, plot_scaling

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmp = compare_results(a, b)
    (out / "compare.json").write_text(json.dumps(cmp, indent=2) + "\n")
    (out / "compare.md").write_text(compare_markdown(cmp))
    plot_scaling([a, b], out / "compare_scaling.png")
    plot_benchmarks([a, b], out / "compare_benchmarks.png")
    return cmp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compare two results.json files of the same suite.")
    parser.add_argument("a", help="results.json of the candidate (e.g. the student)")
    parser.add_argument("b", help="results.json of the reference (e.g. the teacher)")
    parser.add_argument("--out", default=None, help="write compare.{json,md} and plots here")
    args = parser.parse_args(argv)
    a = json.loads(Path(args.a).read_text())
    b = json.loads(Path(args.b).read_text())
    if args.out:
        cmp = write_comparison(a, b, args.out)
    else:
        cmp = compare_results(a, b)
    print(compare_markdown(cmp))


if __name__ == "__main__":
    main()
