"""Arithmetic and short word problems with exact answers (math env).

Difficulty 1: one operation on numbers up to 10 (or a one-step word problem); 2: two operations on
numbers up to 20; 3: fraction arithmetic with answers in lowest terms (``\\frac{a}{b}`` in LaTeX).
Each task carries a short worked solution ending in ``\\boxed{answer}`` as its demonstration.

``make_math_mul_task`` (kind ``math_mul``) draws only difficulty 1's multiplication family, worded and
numbered exactly as in ``math`` (``What is 7 * 8?``, factors 1..9): the held-out family of the
``tiny_math_know`` knowledge bed, whose student never saw a correct product.
"""

from __future__ import annotations

import random
from fractions import Fraction

from tasks.record import Task

NAMES = ["Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Leo", "Zoe"]
ITEMS = ["apples", "books", "coins", "pens", "cookies", "marbles", "tickets", "boxes"]


def latex_number(x: Fraction) -> str:
    """LaTeX of a rational: ``7``, ``-3`` or ``\\frac{5}{6}`` / ``-\\frac{1}{2}``."""
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _one_op(rng: random.Random, hi: int) -> tuple[str, int]:
    op = rng.choice("+-*")
    a, b = rng.randint(1, hi), rng.randint(1, hi)
    if op == "-" and b > a:
        a, b = b, a
    if op == "*":
        a, b = rng.randint(1, min(hi, 9)), rng.randint(1, min(hi, 9))
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"{a} {op} {b}", value


def _word_problem(rng: random.Random, hi: int) -> tuple[str, str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, hi), rng.randint(1, hi)
    if rng.random() < 0.5:
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return q, f"{a} + {b} = {a + b}.", a + b
    a, b = max(a, b), min(a, b)
    q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
    return q, f"{a} - {b} = {a - b}.", a - b


def _two_ops(rng: random.Random) -> tuple[str, str, int]:
    a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(2, 5)
    if rng.random() < 0.5:
        expr, value = f"({a} + {b}) * {c}", (a + b) * c
        steps = f"{a} + {b} = {a + b}, {a + b} * {c} = {value}."
    else:
        a, b = max(a, b), min(a, b)
        expr, value = f"{a} - {b} + {c}", a - b + c
        steps = f"{a} - {b} = {a - b}, {a - b} + {c} = {value}."
    return f"What is {expr}?", steps, value


def _fractions(rng: random.Random) -> tuple[str, str, Fraction]:
    (a, b), (c, d) = [(rng.randint(1, den - 1), den) for den in (rng.randint(2, 6), rng.randint(2, 6))]
    op = rng.choice("+*")
    value = Fraction(a, b) + Fraction(c, d) if op == "+" else Fraction(a, b) * Fraction(c, d)
    expr = f"{a}/{b} {op} {c}/{d}"
    q = f"What is {expr}? Give the answer as a fraction in lowest terms."
    return q, f"{expr} = {value}.", value


def make_math_task(rng: random.Random, difficulty: int, task_id: str) -> Task:
    """One math task; see the module docstring for the difficulty levels."""
    if difficulty == 1:
        if rng.random() < 0.5:
            expr, value = _one_op(rng, 10)
            question, steps, answer = f"What is {expr}?", f"{expr} = {value}.", Fraction(value)
        else:
            question, steps, v = _word_problem(rng, 10)
            answer = Fraction(v)
    elif difficulty == 2:
        if rng.random() < 0.5:
            question, steps, v = _two_ops(rng)
        else:
            question, steps, v = _word_problem(rng, 20)
        answer = Fraction(v)
    else:
        question, steps, answer = _fractions(rng)
    gold = latex_number(answer)
    return Task(
        id=task_id,
        question=question,
        answer=gold,
        meta={"answer_type": "math", "difficulty": difficulty, "source": "synthetic"},
        demonstration=[f"{steps} \\boxed{{{gold}}}"],
    )


MUL_FAMILY = "mul"


def make_math_mul_task(rng: random.Random, difficulty: int, task_id: str) -> Task:
    """One task of difficulty 1's one-step multiplication family (the only difficulty this kind has)."""
    if difficulty != 1:
        raise ValueError(f"difficulty: synthetic kind math_mul has difficulty 1 only, got {difficulty}")
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    expr, value = f"{a} * {b}", a * b
    return Task(
        id=task_id,
        question=f"What is {expr}?",
        answer=str(value),
        meta={"answer_type": "math", "difficulty": 1, "source": "synthetic", "family": MUL_FAMILY},
        demonstration=[f"{expr} = {value}. \\boxed{{{value}}}"],
    )
