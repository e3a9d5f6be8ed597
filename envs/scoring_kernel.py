"""The scoring code that runs inside the scoring worker process: stdlib and math-verify only.

The worker loads this file by path (`envs.scoring_worker`), not as part of the ``envs`` package, so a
worker start costs the math-verify/sympy import and nothing else (the package would pull in torch).
Results are plain ``(success, why)`` tuples, which need no class to unpickle.
"""

from __future__ import annotations

import logging
import re
import string

TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns on every call made without its own (SIGALRM) timeout; in the worker the
    parent's kill is the timeout, so the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())


def normalize_text(s: str) -> str:
    """Lower-case, unwrap ``\\text{}``, drop articles, punctuation and extra spaces."""
    s = TEXT_WRAP.sub(r"\1", s).strip().lower()
    s = s.strip(string.punctuation + " ")
    words = [w for w in re.split(r"\s+", s) if w not in ("a", "an", "the")]
    return " ".join(words)


def exact_match(pred: str, gold: str) -> tuple[bool, str]:
    ok = normalize_text(pred) == normalize_text(gold)
    return ok, f"{pred!r} {'matches' if ok else 'does not match'} {gold!r} (exact)"


def verify_math_here(pred: str, gold: str) -> tuple[bool, str]:
    """Symbolic equivalence with math-verify, in this process and without a time bound."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
        if not pred_parsed:
            return False, f"could not parse the answer {pred!r} as math"
        if not gold_parsed:
            return exact_match(pred, gold)
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=None)
    except Exception as exc:  # noqa: BLE001 - a verifier crash must not crash the episode
        return False, f"math-verify failed on {pred!r}: {type(exc).__name__}"
    return bool(ok), f"{pred!r} {'is' if ok else 'is not'} equivalent to {gold!r} (math-verify)"
