"""The scoring code that runs inside the contained scoring worker: stdlib, math-verify and reasoning-gym only.

The worker loads this file by path (`envs.scoring_worker`), not as part of the ``envs`` package, so a
worker start costs the math-verify/sympy (and reasoning-gym) import and nothing else (the package would
pull in torch). Results are plain data (``(success, why)``, a float): they travel back as JSON.
Everything here that sees model text runs in a forked child of the worker; `prepare_reasoning_gym` and
`warm_up` run in the worker itself and see trusted input only.
"""

from __future__ import annotations

import json
import logging
import math
import re
import string
from typing import Any

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


_RG_DATASETS: dict[tuple[str, str], Any] = {}  # (name, config as JSON) -> the reasoning-gym dataset object
_RG_CACHE_SIZE = 64


def prepare_reasoning_gym(name: str, config_json: str) -> None:
    """Build (once per worker) the dataset object that scores ``name``'s entries; trusted input only."""
    key = (name, config_json)
    if key not in _RG_DATASETS:
        from reasoning_gym import create_dataset

        if len(_RG_DATASETS) >= _RG_CACHE_SIZE:
            _RG_DATASETS.pop(next(iter(_RG_DATASETS)))
        _RG_DATASETS[key] = create_dataset(name, **json.loads(config_json))


def score_reasoning_gym_here(name: str, config_json: str, entry: dict[str, Any], answer: str) -> float:
    """reasoning-gym's own ``score_answer`` for one entry, clamped to [0, 1] (NaN -> 0)."""
    prepare_reasoning_gym(name, config_json)
    value = float(_RG_DATASETS[(name, config_json)].score_answer(answer, entry))
    return 0.0 if math.isnan(value) else min(1.0, max(0.0, value))


def warm_up() -> None:
    """Run once in the worker when it loads this file: pays math-verify's lazy imports and first-call
    costs there, so the forked children that score answers do not each pay them."""
    verify_math_here("\\frac{1}{2}", "0.5")
    verify_math_here("x^2+1", "1+x^2")
