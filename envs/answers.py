"""The final-answer format shared by all envs: the last ``\\boxed{...}``, else the last ``<answer>...</answer>``.

``answer_format="flexible"`` (``env.answer_format``) also takes the last number of a reply that has neither,
as lm-evaluation-harness's GSM8K "flexible-extract" does: for real instruct models that answer in prose
("5 + 4 equals 9.") and rarely write ``\\boxed{}``; the default ``boxed`` is the strict format.
"""

from __future__ import annotations

import re

from tasks.loaders import last_boxed

ANSWER_FORMATS = ("boxed", "flexible")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")  # no nested quantifiers: linear time on any text

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"


def last_answer_tag(text: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>``, in linear time.

    Same pairing as the lazy regex ``<answer>(.*?)</answer>`` (left to right, non-overlapping), which
    rescans the rest of the text from every unclosed ``<answer>``: quadratic on text repeating the tag.
    """
    found, pos = None, 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start == -1:
            return found
        end = text.find(CLOSE_TAG, start + len(OPEN_TAG))
        if end == -1:
            return found
        found, pos = text[start + len(OPEN_TAG) : end].strip(), end + len(CLOSE_TAG)


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands separators dropped, a trailing period not kept)."""
    found = None
    for found in _NUMBER.finditer(text):
        pass
    return None if found is None else found.group(0).replace(",", "").rstrip(".") or None


def extract_final_answer(text: str, answer_format: str = "boxed") -> str | None:
    """The answer an assistant message commits to, or None when it gives none in the required format."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tagged = last_answer_tag(text)
    if tagged is not None or answer_format == "boxed":
        return tagged
    return last_number(text)
