"""Seeded synthetic task generators that run offline.

Task ``i`` of a set depends only on ``(kind, seed, difficulty, i)``, so a `SyntheticTasks` sequence is
deterministic, random-access and cheap (tasks are built on first access and cached). Difficulty 1 is
meant to be learnable by tiny models (short questions, one-step answers, small numbers).

Besides one kind per env, a family kind draws one family of an env's tasks, worded exactly as the env's
own kind words it (``math_mul``: ``What is a * b?``; ``toolqa_population``: ``What is the population of
<city> in thousands?``; ``vqa_bars``: ``Which bar is the tallest?``), so that a run or a held-out set holds only the tasks where one piece of
knowledge matters (``env.tasks=synthetic:math_mul``; the knowledge beds, docs/run.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import overload

from tasks.record import Task
from tasks.synthetic.math_gen import make_math_mul_task, make_math_task
from tasks.synthetic.toolqa_gen import make_toolqa_population_task, make_toolqa_task
from tasks.synthetic.vqa_gen import make_vqa_bars_task, make_vqa_task

GENERATORS: dict[str, Callable[[random.Random, int, str], Task]] = {
    "math": make_math_task,
    "vqa": make_vqa_task,
    "toolqa": make_toolqa_task,
    "math_mul": make_math_mul_task,
    "toolqa_population": make_toolqa_population_task,
    "vqa_bars": make_vqa_bars_task,
}
MAX_DIFFICULTY = 3


class SyntheticTasks(Sequence[Task]):
    """A lazily generated, deterministic sequence of ``size`` tasks of one kind."""

    def __init__(self, kind: str, size: int = 1000, seed: int = 0, difficulty: int = 1) -> None:
        if kind not in GENERATORS:
            raise ValueError(f"unknown synthetic task kind {kind!r}; known: {', '.join(sorted(GENERATORS))}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 1 <= difficulty <= MAX_DIFFICULTY:
            raise ValueError(f"difficulty must be in 1..{MAX_DIFFICULTY}, got {difficulty}")
        self.kind, self.size, self.seed, self.difficulty = kind, size, seed, difficulty
        self._cache: dict[int, Task] = {}

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, i: int) -> Task: ...
    @overload
    def __getitem__(self, i: slice) -> list[Task]: ...
    def __getitem__(self, i: int | slice) -> Task | list[Task]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.size))]
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"task index {i} out of range for {self.size} tasks")
        if i not in self._cache:
            # String seeds are hashed with SHA-512 by `random`, so this is stable across processes.
            rng = random.Random(f"{self.kind}:{self.seed}:{self.difficulty}:{i}")
            self._cache[i] = GENERATORS[self.kind](rng, self.difficulty, f"{self.kind}-s{self.seed}-d{self.difficulty}-{i}")
        return self._cache[i]

    def __repr__(self) -> str:
        return f"SyntheticTasks({self.kind!r}, size={self.size}, seed={self.seed}, difficulty={self.difficulty})"


def generate(kind: str, size: int = 1000, seed: int = 0, difficulty: int = 1) -> SyntheticTasks:
    """``size`` deterministic tasks of ``kind`` (math, vqa, toolqa, or a family kind: math_mul, toolqa_population,
    vqa_bars)."""
    return SyntheticTasks(kind, size=size, seed=seed, difficulty=difficulty)


__all__ = ["GENERATORS", "MAX_DIFFICULTY", "SyntheticTasks", "generate"]
