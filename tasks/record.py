"""The task record every generator and loader produces, and every environment consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANSWER_TYPES = ("auto", "math", "numeric", "exact", "choice")
# The ``meta`` keys that name a task's sub-benchmark (``Task.family``), as the loaders write them.
FAMILY_META_KEYS = ("bfcl_category", "rg_dataset")


@dataclass
class Task:
    """One question with its reference answer.

    ``images`` holds PIL images or local file paths (envs load and resize them lazily), ``choices`` the
    options of a multiple-choice question (the answer is then the correct option's text or its letter),
    ``demonstration`` the ideal assistant turns (for SFT of the teacher; empty for benchmark files), and
    ``meta`` anything else (``answer_type`` in ``meta`` overrides the scorer's guess, see envs/scoring.py).
    """

    id: str
    question: str
    answer: str
    images: list[Any] = field(default_factory=list)
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    demonstration: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Task.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"task {self.id!r}: question must be a non-empty string")
        if not isinstance(self.answer, str):
            raise ValueError(f"task {self.id!r}: answer must be a string, got {type(self.answer).__name__}")
        if self.choices is not None and (
            not isinstance(self.choices, list) or not all(isinstance(c, str) for c in self.choices)
        ):
            raise ValueError(f"task {self.id!r}: choices must be a list of strings or None")
        answer_type = self.meta.get("answer_type", "auto")
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"task {self.id!r}: meta.answer_type {answer_type!r} not in {ANSWER_TYPES}")

    @property
    def answer_type(self) -> str:
        return str(self.meta.get("answer_type", "auto"))

    @property
    def family(self) -> str | None:
        """The sub-benchmark the task comes from (a BFCL category, a reasoning-gym dataset), so a held-out
        set that mixes them reports each one's success; None for a task from a single source."""
        for key in FAMILY_META_KEYS:
            if key in self.meta:
                return str(self.meta[key])
        return None
