"""The final-answer format shared by all envs: the last ``\\boxed{...}``, else the last ``<answer>...</answer>``."""

from __future__ import annotations

import re

from tasks.loaders import last_boxed

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_final_answer(text: str) -> str | None:
    """The answer an assistant message commits to, or None when it gives none in the required format."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    return None
