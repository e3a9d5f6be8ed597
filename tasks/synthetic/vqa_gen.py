"""Rendered images with counting, reading and comparison questions (vqa env).

Images are small (``SIZE`` px square, a 4x4 grid of 28-px cells, matching Qwen-VL's 28-px patches after
merging) so a tiny VL model sees only a few visual tokens. Kinds: count shapes of one colour and type,
read a number, name a shape's colour, pick the tallest bar (multiple choice). Difficulty raises counts,
distractors and number length.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageFont

from tasks.record import Task

SIZE = 112
CELL = 28
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 60), "yellow": (230, 200, 20)}
SHAPES = ["circle", "square", "triangle"]
BARS_QUESTION = "Which bar is the tallest?"
BARS_FAMILY = "bars"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cell: int, color: tuple[int, int, int], rng: random.Random) -> None:
    row, col = divmod(cell, SIZE // CELL)
    pad = rng.randint(3, 6)
    x0, y0 = col * CELL + pad, row * CELL + pad
    x1, y1 = (col + 1) * CELL - pad, (row + 1) * CELL - pad
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    return img, ImageDraw.Draw(img)


def _count(rng: random.Random, difficulty: int) -> tuple[Image.Image, str, str]:
    img, draw = _canvas()
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    n = rng.randint(1, {1: 4, 2: 6, 3: 9}[difficulty])
    n_distract = {1: 0, 2: rng.randint(1, 3), 3: rng.randint(2, 5)}[difficulty]
    cells = rng.sample(range((SIZE // CELL) ** 2), n + n_distract)
    for c in cells[:n]:
        _draw_shape(draw, shape, c, COLORS[color], rng)
    for c in cells[n:]:
        # A distractor differs in shape or colour (or both), never matches the asked-about pair.
        while True:
            s, k = rng.choice(SHAPES), rng.choice(list(COLORS))
            if (s, k) != (shape, color):
                break
        _draw_shape(draw, s, c, COLORS[k], rng)
    return img, f"How many {color} {shape}s are in the image?", str(n)


def _read_number(rng: random.Random, difficulty: int) -> tuple[Image.Image, str, str]:
    img, draw = _canvas()
    lo, hi = {1: (0, 9), 2: (10, 99), 3: (100, 999)}[difficulty]
    value = rng.randint(lo, hi)
    font = ImageFont.load_default(size=48 if difficulty < 3 else 40)
    draw.text((SIZE / 2, SIZE / 2), str(value), fill=(0, 0, 0), font=font, anchor="mm")
    return img, "What number is written in the image?", str(value)


def _color(rng: random.Random, difficulty: int) -> tuple[Image.Image, str, str]:
    img, draw = _canvas()
    shapes = rng.sample(SHAPES, min(difficulty, len(SHAPES)))
    colors = rng.sample(list(COLORS), len(shapes))
    cells = rng.sample(range((SIZE // CELL) ** 2), len(shapes))
    for s, k, c in zip(shapes, colors, cells):
        _draw_shape(draw, s, c, COLORS[k], rng)
    return img, f"What color is the {shapes[0]}?", colors[0]


def _tallest_bar(rng: random.Random, difficulty: int) -> tuple[Image.Image, str, str, list[str], str]:
    """A bar chart; returns the image, question, tallest colour, the choices and the shortest colour (what
    the vqa knowledge bed's student answers instead, ``reopold_agents/tiny/procedures.py``)."""
    img, draw = _canvas()
    n = difficulty + 1
    colors = rng.sample(list(COLORS), n)
    min_gap = {1: 30, 2: 15, 3: 6}[difficulty]
    while True:
        heights = [rng.randint(15, 100) for _ in range(n)]
        top = sorted(heights)
        if top[-1] - top[-2] >= min_gap:
            break
    width = SIZE // n
    for i, (k, h) in enumerate(zip(colors, heights)):
        draw.rectangle((i * width + 4, SIZE - h, (i + 1) * width - 4, SIZE - 1), fill=COLORS[k])
    winner = colors[heights.index(max(heights))]
    shortest = colors[heights.index(min(heights))]
    return img, BARS_QUESTION, winner, sorted(colors), shortest


def make_vqa_task(rng: random.Random, difficulty: int, task_id: str) -> Task:
    """One image question; the demonstration is the boxed answer (the option letter for choices)."""
    kind = rng.choice(["count", "number", "color", "bars"])
    if kind == "bars":
        return _bars_task(rng, difficulty, task_id)
    if kind == "count":
        img, q, answer = _count(rng, difficulty)
        answer_type = "numeric"
    elif kind == "number":
        img, q, answer = _read_number(rng, difficulty)
        answer_type = "numeric"
    else:
        img, q, answer = _color(rng, difficulty)
        answer_type = "exact"
    return Task(
        id=task_id,
        question=q,
        answer=answer,
        images=[img],
        meta={"answer_type": answer_type, "kind": kind, "difficulty": difficulty, "source": "synthetic"},
        demonstration=[f"\\boxed{{{answer}}}"],
    )


def _bars_task(rng: random.Random, difficulty: int, task_id: str, family: dict[str, str] | None = None) -> Task:
    """A tallest-bar question (multiple choice: the demonstration boxes the option letter)."""
    img, q, answer, choices, shortest = _tallest_bar(rng, difficulty)
    letter = lambda color: chr(ord("A") + choices.index(color))  # noqa: E731
    return Task(
        id=task_id,
        question=q,
        answer=answer,
        images=[img],
        choices=choices,
        meta={"answer_type": "choice", "kind": "bars", "difficulty": difficulty, "source": "synthetic",
              "shortest_letter": letter(shortest), **(family or {})},
        demonstration=[f"\\boxed{{{letter(answer)}}}"],
    )


def make_vqa_bars_task(rng: random.Random, difficulty: int, task_id: str) -> Task:
    """One task of the tallest-bar family alone, worded as the vqa kind words it (the vqa knowledge bed)."""
    return _bars_task(rng, difficulty, task_id, {"family": BARS_FAMILY})
