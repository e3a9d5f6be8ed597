"""Questions that need a tool: a lookup in the shipped corpus, a computation, or both (toolqa env).

Difficulty 1: one ``search`` lookup of a fact, or one ``calculator`` computation; 2: a lookup followed
by a computation on the fact; 3: two lookups and a computation combining them. The demonstration is the
ideal sequence of assistant turns: one ``<tool_call>`` per turn, then ``\\boxed{answer}``.

``make_toolqa_population_task`` (kind ``toolqa_population``) draws only difficulty 1's population
lookups, worded exactly as in ``toolqa`` (``What is the population of Tirivil in thousands?``): the
held-out family of the ``tiny_toolqa_know`` knowledge bed.
"""

from __future__ import annotations

import functools
import json
import random
from importlib import resources

from tasks.record import Task

REFERENCE_YEAR = 2025


@functools.lru_cache(maxsize=1)
def corpus_facts() -> tuple[dict, ...]:
    """The structured facts behind ``tasks/data/toolqa_corpus.jsonl`` (see tasks/build_corpus.py)."""
    text = resources.files("tasks").joinpath("data/toolqa_facts.json").read_text(encoding="utf-8")
    return tuple(json.loads(text))


def corpus_path() -> str:
    """Filesystem path of the shipped lookup corpus (JSONL of ``id``, ``title``, ``text``)."""
    return str(resources.files("tasks").joinpath("data/toolqa_corpus.jsonl"))


def tool_call(name: str, **arguments: object) -> str:
    """A Qwen/Hermes-style tool call exactly as a demonstration turn writes it."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def _lookup(rng: random.Random, fact: dict) -> tuple[str, str]:
    city = fact["city"]
    field = rng.choice(["country", "founded", "population", "river"])
    question = {
        "country": f"In which country is the city {city}?",
        "founded": f"In what year was {city} founded?",
        "population": population_question(city),
        "river": f"Which river flows through {city}?",
    }[field]
    return question, str(fact[field])


def population_question(city: str) -> str:
    return f"What is the population of {city} in thousands?"


def make_toolqa_population_task(rng: random.Random, difficulty: int, task_id: str) -> Task:
    """One population lookup of difficulty 1 (the only difficulty this kind has; one question per city)."""
    if difficulty != 1:
        raise ValueError(f"difficulty: synthetic kind toolqa_population has difficulty 1 only, got {difficulty}")
    fact = rng.choice(corpus_facts())
    answer = str(fact["population"])
    return Task(
        id=task_id,
        question=population_question(fact["city"]),
        answer=answer,
        meta={"answer_type": "numeric", "kind": "lookup", "tools": ["search", "calculator"], "difficulty": 1,
              "source": "synthetic", "family": "population"},
        demonstration=[tool_call("search", query=fact["city"]), f"\\boxed{{{answer}}}"],
    )


def make_toolqa_task(rng: random.Random, difficulty: int, task_id: str) -> Task:
    facts = corpus_facts()
    tools = ["search", "calculator"]
    if difficulty == 1 and rng.random() < 0.3:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        op = rng.choice(["+", "*", "-"])
        expr = f"{a} {op} {b}"
        answer = str(a + b if op == "+" else a * b if op == "*" else a - b)
        question = f"Use the calculator to compute {expr}."
        demo = [tool_call("calculator", expression=expr), f"\\boxed{{{answer}}}"]
        kind = "calc"
    elif difficulty == 1:
        fact = rng.choice(facts)
        question, answer = _lookup(rng, fact)
        demo = [tool_call("search", query=fact["city"]), f"\\boxed{{{answer}}}"]
        kind = "lookup"
    elif difficulty == 2:
        fact = rng.choice(facts)
        city = fact["city"]
        if rng.random() < 0.5:
            question = f"How many years before {REFERENCE_YEAR} was {city} founded?"
            expr = f"{REFERENCE_YEAR} - {fact['founded']}"
            answer = str(REFERENCE_YEAR - fact["founded"])
        else:
            question = f"What is twice the population of {city} in thousands?"
            expr = f"2 * {fact['population']}"
            answer = str(2 * fact["population"])
        demo = [tool_call("search", query=city), tool_call("calculator", expression=expr), f"\\boxed{{{answer}}}"]
        kind = "lookup+calc"
    else:
        fa, fb = rng.sample(list(facts), 2)
        if rng.random() < 0.5:
            question = f"How many years apart were {fa['city']} and {fb['city']} founded?"
            hi, lo = max(fa["founded"], fb["founded"]), min(fa["founded"], fb["founded"])
            expr, answer = f"{hi} - {lo}", str(hi - lo)
        else:
            question = f"What is the total population of {fa['city']} and {fb['city']} in thousands?"
            expr = f"{fa['population']} + {fb['population']}"
            answer = str(fa["population"] + fb["population"])
        demo = [
            tool_call("search", query=fa["city"]),
            tool_call("search", query=fb["city"]),
            tool_call("calculator", expression=expr),
            f"\\boxed{{{answer}}}",
        ]
        kind = "2lookup+calc"
    answer_type = "numeric" if answer.lstrip("-").isdigit() else "exact"
    return Task(
        id=task_id,
        question=question,
        answer=answer,
        meta={"answer_type": answer_type, "kind": kind, "tools": tools, "difficulty": difficulty, "source": "synthetic"},
        demonstration=demo,
    )
