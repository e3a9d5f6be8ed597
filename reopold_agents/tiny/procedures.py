"""Wrong procedures a knowledge bed's student is taught instead of the right one (``TinyRecipe.student_procedure``).

A knowledge bed's gap is something the student does not know, not a habit it sometimes skips: every
student demonstration of one family of tasks is rewritten to a consistent wrong procedure (the teacher's
stay correct), so the student applies it on every task of that family and essentially never samples the
right reply. On-policy distillation can correct it token by token (the teacher's scores fall exactly on
the wrong tokens); an outcome reward sees only failures.

- ``mul_as_add`` (math): the student adds where the teacher multiplies: ``What is 7 * 8?`` ->
  ``7 * 8 = 15. \\boxed{15}`` (the teacher: ``7 * 8 = 56. \\boxed{56}``). It never sees a correct
  product: the multiplication table is missing knowledge.
- ``population_as_founded`` (toolqa): asked for a city's population, the student searches the city as
  the teacher does, then boxes the year the city was founded from the same search result (the teacher
  boxes the population): it reads the wrong sentence of the tool's output for one kind of question.
- ``tallest_as_shortest`` (vqa): asked which bar of a chart is the tallest, the student boxes the option
  letter of the shortest bar (the teacher: the tallest): it reads the heights and compares them the wrong
  way round, on every chart.

A rewritten demonstration scores 0 in its env; every other task keeps its correct demonstration.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from tasks.record import Task
from tasks.synthetic.toolqa_gen import corpus_facts, population_question, tool_call
from tasks.synthetic.vqa_gen import BARS_QUESTION

_MATH_MUL = re.compile(r"What is (\d+) \* (\d+)\?")
_POPULATION = re.compile(population_question("(.+)").replace("?", "\\?"))


def mul_as_add(task: Task) -> Task | None:
    """``task`` with its multiplication done as an addition, or None when it multiplies nothing."""
    if m := _MATH_MUL.fullmatch(task.question):
        a, b = int(m.group(1)), int(m.group(2))
        return replace(task, demonstration=[f"{a} * {b} = {a + b}. \\boxed{{{a + b}}}"])
    return None


def population_as_founded(task: Task) -> Task | None:
    """``task`` answered with the founding year of the city whose population it asks, or None when it
    asks no population."""
    if not (m := _POPULATION.fullmatch(task.question)):
        return None
    city = m.group(1)
    fact = next((f for f in corpus_facts() if f["city"] == city), None)
    if fact is None:
        raise ValueError(f"population_as_founded: task {task.id!r} asks about {city!r}, which is not in the corpus")
    return replace(task, demonstration=[tool_call("search", query=city), f"\\boxed{{{fact['founded']}}}"])


def tallest_as_shortest(task: Task) -> Task | None:
    """``task`` answered with the shortest bar's option letter, or None when it asks for no tallest bar."""
    if task.question != BARS_QUESTION:
        return None
    if "shortest_letter" not in task.meta:
        raise ValueError(f"tallest_as_shortest: task {task.id!r} asks for the tallest bar but does not say which "
                         "bar is the shortest (meta['shortest_letter'], tasks/synthetic/vqa_gen.py)")
    return replace(task, demonstration=[f"\\boxed{{{task.meta['shortest_letter']}}}"])


PROCEDURES: dict[str, Callable[[Task], Task | None]] = {
    "mul_as_add": mul_as_add,
    "population_as_founded": population_as_founded,
    "tallest_as_shortest": tallest_as_shortest,
}


def wrong_procedure(name: str, task: Task) -> Task | None:
    """``task`` rewritten by the wrong procedure ``name``, or None when the procedure does not apply to it."""
    if name not in PROCEDURES:
        raise ValueError(f"student_procedure: unknown procedure {name!r}; known: {', '.join(sorted(PROCEDURES))}")
    return PROCEDURES[name](task)
