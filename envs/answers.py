"""The final-answer format shared by all envs: the last ``\\boxed{...}``, else the last ``<answer>...</answer>``."""

from __future__ import annotations

from tasks.loaders import last_boxed

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


def extract_final_answer(text: str) -> str | None:
    """The answer an assistant message commits to, or None when it gives none in the required format."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return last_answer_tag(text)
