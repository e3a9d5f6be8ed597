"""Answer extraction and normalisation for majority voting.

Extraction is the envs' own (``envs.answers``), so a vote uses exactly what the env scored. Voting
needs a key per sample such that equivalent answers collide. Samples the environment verified as
correct are all equivalent to the gold answer, so they vote for the gold key (math-verify decides
equivalence, e.g. "0.5" vs "\\frac{1}{2}"). Other samples vote for their normalised extracted answer;
a sample with no extractable answer abstains.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any


def extract_answer(text: str) -> str | None:
    """The final answer an assistant message commits to, in the envs' format (last ``\\boxed{}``, else
    last ``<answer>`` tag); None if it gives none. Same function the envs score with."""
    from envs.answers import extract_final_answer

    return extract_final_answer(text)


def _latex_to_plain(s: str) -> str:
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\\text\{([^{}]*)\}|\\mathrm\{([^{}]*)\}", lambda m: m.group(1) or m.group(2) or "", s)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "$", "\\%", "%", "^\\circ", "^{\\circ}", "°"):
        s = s.replace(token, "")
    return s


def normalize_answer(answer: Any) -> str | None:
    """A canonical string for voting: numbers become reduced fractions ("0.50" -> "1/2", "1,000" ->
    "1000"), LaTeX fractions/text wrappers are unwrapped, case and whitespace are ignored."""
    if answer is None:
        return None
    s = _latex_to_plain(str(answer)).strip().rstrip(".").strip()
    s = re.sub(r"\s+", "", s).lower()
    if not s:
        return None
    plain = s.replace("(", "").replace(")", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", plain):
        plain = plain.replace(",", "")
    try:
        value = Fraction(plain)
    except (ValueError, ZeroDivisionError):
        return s
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def vote_key(extracted: str | None, correct: bool, gold: Any) -> str | None:
    """The key a sample votes for: the gold key if verified correct, else its normalised answer."""
    if correct and gold is not None:
        return normalize_answer(gold)
    return normalize_answer(extracted)
