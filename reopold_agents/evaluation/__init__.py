"""Evaluation harness: suites of benchmarks, accuracy/speed metrics, reports, plots and comparison.

One concern per module: ``passk`` and ``majority`` (estimators), ``answers`` (extraction/normalisation),
``records`` (resumable per-sample JSONL), ``aggregate`` (metrics from records), ``report``/``plots``
(outputs), ``compare`` (two models side by side), ``suite`` (suite files), ``runner`` (generation).
The CLI is ``python -m reopold_agents.evaluate``; training calls ``evaluate_suite``.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "evaluate_suite": ("reopold_agents.evaluation.runner", "evaluate_suite"),
    "flatten_for_logging": ("reopold_agents.evaluation.runner", "flatten_for_logging"),
    "EvaluationStopped": ("reopold_agents.evaluation.runner", "EvaluationStopped"),
    "load_suite": ("reopold_agents.evaluation.suite", "load_suite"),
    "compare_results": ("reopold_agents.evaluation.compare", "compare_results"),
    "pass_at_k": ("reopold_agents.evaluation.passk", "pass_at_k"),
    "maj_at_k": ("reopold_agents.evaluation.majority", "maj_at_k"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'reopold_agents.evaluation' has no attribute {name!r}")


__all__ = list(_LAZY)
