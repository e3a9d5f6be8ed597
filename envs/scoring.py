"""Answer checking: math-verify for math, numeric tolerance, normalised exact match, multiple choice.

`score_answer(pred, task)` dispatches on ``task.answer_type`` (``meta["answer_type"]``); ``auto`` picks
``choice`` when the task has choices, ``math`` when the reference looks numeric or like LaTeX, else
``exact``. Every verdict carries a ``why`` so a failed episode says what was compared. Tasks whose
``meta["scorer"]`` is ``reasoning_gym`` are scored by that dataset's own scorer instead (`score` in [0, 1]).

Scoring time is bounded for any answer, on any thread: a prediction longer than `answer_char_limit`
scores 0 unread, and every third-party scorer (math-verify, reasoning-gym's) runs in a contained worker
process (`envs.scoring_worker`, `envs.scoring_sandbox`) killed after ``timeout_s`` (default
`SCORING_TIMEOUT_S`); a timed-out answer scores 0 with ``timed_out`` set. No model text is evaluated in
this process: answers a scorer would evaluate are first checked by `envs.answer_guard` (a refused answer
scores 0, saying which rule), and where no containment is available they score 0 with the reason.
The cheap matchers (exact, choice, numeric) run inline: they are our own code, linear in the capped answer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from envs import answer_guard
from envs.scoring_kernel import TEXT_WRAP as _TEXT_WRAP
from envs.scoring_kernel import exact_match, normalize_text
from tasks.record import Task

MAX_ANSWER_CHARS = 1000  # longer predictions are not scored (their parse time is unbounded)
SCORING_TIMEOUT_S = 10.0
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class Verdict:
    success: bool
    why: str
    timed_out: bool = False
    score: float | None = None  # a graded score in [0, 1] (the reward when set), e.g. reasoning-gym's


def answer_char_limit(gold: str) -> int:
    """Longest prediction scored against ``gold``: `MAX_ANSWER_CHARS`, or twice a longer reference."""
    return max(MAX_ANSWER_CHARS, 2 * len(gold))


def verify_math(pred: str, gold: str, timeout_s: float = SCORING_TIMEOUT_S) -> Verdict:
    """Symbolic equivalence with math-verify (fractions, LaTeX, decimals, sets, intervals), computed by
    `scoring_kernel.verify_math_here` in a killable worker process: at most ``timeout_s`` seconds."""
    from envs import scoring_kernel
    from envs.scoring_worker import shared_pool

    refused = answer_guard.check_math(pred)
    if refused is not None:
        return Verdict(False, f"the answer {_short(pred)} was refused before scoring: {refused}; scored 0")
    ok, out = shared_pool().call(scoring_kernel.__file__, "verify_math_here", pred, gold, timeout_s=timeout_s)
    if ok and isinstance(out, list) and len(out) == 2 and isinstance(out[0], bool) and isinstance(out[1], str):
        return Verdict(out[0], out[1])
    if ok:
        return Verdict(False, f"math-verify on {_short(pred)}: a malformed result; scored 0")
    timed_out = out.startswith("timed out")
    return Verdict(False, f"math-verify on {_short(pred)}: {out}; scored 0", timed_out=timed_out)


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _to_number(s: str) -> float | None:
    t = _TEXT_WRAP.sub(r"\1", s).strip().replace(",", "").rstrip(".").strip("$ ")
    if t.endswith("%"):
        t = t[:-1]
    return float(t) if _NUMBER.match(t) else None


def match_numeric(pred: str, gold: str, rel_tol: float = 1e-6, timeout_s: float = SCORING_TIMEOUT_S) -> Verdict:
    """Numbers equal within ``rel_tol`` (thousands separators, ``$`` and ``%`` ignored); else math-verify."""
    p, g = _to_number(pred), _to_number(gold)
    if g is None or p is None:
        return verify_math(pred, gold, timeout_s)
    ok = math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9)
    return Verdict(ok, f"{pred!r} {'==' if ok else '!='} {gold!r} (numeric)")


def match_exact(pred: str, gold: str) -> Verdict:
    return Verdict(*exact_match(pred, gold))


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


def score_answer(pred: str, task: Task, default_type: str = "auto", timeout_s: float = SCORING_TIMEOUT_S) -> Verdict:
    """Score an extracted final answer against the task's reference answer, in bounded time."""
    limit = answer_char_limit(task.answer)
    if len(pred) > limit:
        return Verdict(False, f"the answer is {len(pred)} characters long, over the scoring limit of {limit}; scored 0")
    if task.meta.get("scorer") == "reasoning_gym":
        return score_reasoning_gym(pred, task, timeout_s)
    kind = resolve_answer_type(task, default_type)
    if kind == "choice":
        if not task.choices:
            return match_exact(pred, task.answer)
        return match_choice(pred, task.answer, task.choices)
    if kind == "numeric":
        return match_numeric(pred, task.answer, timeout_s=timeout_s)
    if kind == "math":
        return verify_math(pred, task.answer, timeout_s)
    return match_exact(pred, task.answer)


def score_reasoning_gym(pred: str, task: Task, timeout_s: float = SCORING_TIMEOUT_S) -> Verdict:
    """reasoning-gym's ``score_answer`` for the task's dataset, run in the contained scoring worker after
    `answer_guard.check_reasoning_gym`; solved only at a full score of 1.0."""
    from envs import scoring_kernel
    from envs.scoring_worker import shared_pool

    name, entry = task.meta["rg_dataset"], task.meta["rg_entry"]
    refused = answer_guard.check_reasoning_gym(pred, name, entry)
    if refused is not None:
        return Verdict(False, f"the answer {_short(pred)} was refused before scoring: {refused}; scored 0", score=0.0)
    config_json = json.dumps(task.meta["rg_config"], sort_keys=True)
    ok, out = shared_pool().call(scoring_kernel.__file__, "score_reasoning_gym_here", name, config_json, entry, pred,
                                 timeout_s=timeout_s, prepare=("prepare_reasoning_gym", (name, config_json)))
    if not ok or not isinstance(out, (int, float)) or isinstance(out, bool) or not 0.0 <= out <= 1.0:
        reason = out if not ok else f"the scorer returned {out!r}, not a score in [0, 1]"
        timed_out = not ok and out.startswith("timed out")
        return Verdict(False, f"reasoning-gym {name} scorer on {_short(pred)}: {reason}; scored 0", timed_out=timed_out,
                       score=0.0)
    value = float(out)
    return Verdict(value >= 1.0, f"{pred!r} scores {value:.3g} against {task.answer!r} (reasoning-gym {name})", score=value)
