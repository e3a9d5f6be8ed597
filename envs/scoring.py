"""Answer checking: math-verify for math, numeric tolerance, normalised exact match, multiple choice.

`score_answer(pred, task)` dispatches on ``task.answer_type`` (``meta["answer_type"]``); ``auto`` picks
``choice`` when the task has choices, ``math`` when the reference looks numeric or like LaTeX, else
``exact``. Every verdict carries a ``why`` so a failed episode says what was compared. Tasks whose
``meta["scorer"]`` is ``reasoning_gym`` are scored by that dataset's own scorer instead (`score` in [0, 1]).
"""

from __future__ import annotations

import logging
import math
import re
import string
import threading
from dataclasses import dataclass

from tasks.record import Task

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


@dataclass
class Verdict:
    success: bool
    why: str
    score: float | None = None  # a graded score in [0, 1] (the reward when set), e.g. reasoning-gym's


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns on every call made without a timeout; off the main thread that is our
    documented choice (see `_verify_timeout`), so the notice is noise in the rollout logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())


def _verify_timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may install (Ray actors,
    # rollout threads and web servers call us from elsewhere): there, run without a timeout.
    return 5 if threading.current_thread() is threading.main_thread() else None


def verify_math(pred: str, gold: str) -> Verdict:
    """Symbolic equivalence with math-verify (fractions, LaTeX, decimals, sets, intervals)."""
    from math_verify import parse, verify

    timeout = _verify_timeout()
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
        if not pred_parsed:
            return Verdict(False, f"could not parse the answer {pred!r} as math")
        if not gold_parsed:
            return match_exact(pred, gold)
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=timeout)
    except Exception as exc:  # noqa: BLE001 - a verifier crash must not crash the episode
        return Verdict(False, f"math-verify failed on {pred!r}: {type(exc).__name__}")
    return Verdict(bool(ok), f"{pred!r} {'is' if ok else 'is not'} equivalent to {gold!r} (math-verify)")


def normalize_text(s: str) -> str:
    """Lower-case, unwrap ``\\text{}``, drop articles, punctuation and extra spaces."""
    s = _TEXT_WRAP.sub(r"\1", s).strip().lower()
    s = s.strip(string.punctuation + " ")
    words = [w for w in re.split(r"\s+", s) if w not in ("a", "an", "the")]
    return " ".join(words)


def _to_number(s: str) -> float | None:
    t = _TEXT_WRAP.sub(r"\1", s).strip().replace(",", "").rstrip(".").strip("$ ")
    if t.endswith("%"):
        t = t[:-1]
    return float(t) if _NUMBER.match(t) else None


def match_numeric(pred: str, gold: str, rel_tol: float = 1e-6) -> Verdict:
    """Numbers equal within ``rel_tol`` (thousands separators, ``$`` and ``%`` ignored); else math-verify."""
    p, g = _to_number(pred), _to_number(gold)
    if g is None or p is None:
        return verify_math(pred, gold)
    ok = math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9)
    return Verdict(ok, f"{pred!r} {'==' if ok else '!='} {gold!r} (numeric)")


def match_exact(pred: str, gold: str) -> Verdict:
    ok = normalize_text(pred) == normalize_text(gold)
    return Verdict(ok, f"{pred!r} {'matches' if ok else 'does not match'} {gold!r} (exact)")


def _choice_index(text: str, choices: list[str]) -> int | None:
    t = text.strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?(\s.*)?", t)
    if m and len(m.group(1)) == 1 and m.group(1).isupper() and ord(m.group(1)) - ord("A") < len(choices):
        return ord(m.group(1)) - ord("A")
    norm = normalize_text(t)
    hits = [i for i, c in enumerate(choices) if normalize_text(c) == norm]
    return hits[0] if len(hits) == 1 else None


def match_choice(pred: str, gold: str, choices: list[str]) -> Verdict:
    """Accept the option letter (``B``, ``(B)``, ``B. text``) or the option text; the gold may be either."""
    gi = _choice_index(gold, choices)
    if gi is None:
        return match_exact(pred, gold)
    pi = _choice_index(pred, choices)
    if pi is None:
        return Verdict(False, f"{pred!r} names none of the options {choices}")
    ok = pi == gi
    letter = chr(ord("A") + gi)
    return Verdict(ok, f"picked option {chr(ord('A') + pi)}, correct is {letter} ({choices[gi]!r})")


def resolve_answer_type(task: Task, default: str = "auto") -> str:
    kind = task.answer_type if task.answer_type != "auto" else default
    if kind != "auto":
        return kind
    if task.choices:
        return "choice"
    gold = task.answer.strip()
    if _to_number(gold) is not None or any(c in gold for c in "\\^/{}"):
        return "math"
    return "exact"


def score_answer(pred: str, task: Task, default_type: str = "auto") -> Verdict:
    """Score an extracted final answer against the task's reference answer."""
    if task.meta.get("scorer") == "reasoning_gym":
        return score_reasoning_gym(pred, task)
    kind = resolve_answer_type(task, default_type)
    if kind == "choice":
        if not task.choices:
            return match_exact(pred, task.answer)
        return match_choice(pred, task.answer, task.choices)
    if kind == "numeric":
        return match_numeric(pred, task.answer)
    if kind == "math":
        return verify_math(pred, task.answer)
    return match_exact(pred, task.answer)


def score_reasoning_gym(pred: str, task: Task) -> Verdict:
    """reasoning-gym's ``score_answer`` for the task's dataset; solved only at a full score of 1.0."""
    from tasks.reasoning_gym_tasks import score

    try:
        value = score(pred, task)
    except Exception as exc:  # noqa: BLE001 - a dataset's scorer crashing on odd text must not crash the episode
        return Verdict(False, f"reasoning-gym scorer failed on {pred!r}: {type(exc).__name__}: {exc}", score=0.0)
    ok = value >= 1.0
    return Verdict(ok, f"{pred!r} scores {value:.3g} against {task.answer!r} (reasoning-gym {task.meta['rg_dataset']})", score=value)
