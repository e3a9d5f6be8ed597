"""Held-out success per task family (reopold_agents/evaluation/heldout.py, ``Task.family``): a held-out set
that mixes BFCL categories or reasoning-gym datasets reports each one, checked against a naive count."""

from __future__ import annotations

import random
from dataclasses import dataclass

from reopold_agents.entries import EntryHeldout
from reopold_agents.evaluation.heldout import HeldoutScore, HeldoutSet
from tasks.record import Task


@dataclass
class _Episode:
    success: bool


class _Rollout:
    """Stands in for a Rollout: task i succeeds where ``wins[i]``."""

    def __init__(self, wins: list[bool]) -> None:
        self.wins = wins

    def run(self, prompts, sampling):
        return [_Episode(self.wins[p["options"]["task_index"]]) for p in prompts]

    def close(self) -> None:
        pass


def _task(i: int, meta: dict) -> Task:
    return Task(id=f"t{i}", question="q", answer="a", meta=meta)


def test_family_reads_the_loaders_meta_keys():
    assert _task(0, {"bfcl_category": "parallel"}).family == "parallel"
    assert _task(1, {"rg_dataset": "basic_arithmetic"}).family == "basic_arithmetic"
    assert _task(2, {}).family is None


def test_per_family_success_equals_a_naive_count():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 40)
        outcomes = [rng.random() < 0.5 for _ in range(n)]
        families = [rng.choice(["simple", "parallel", "multiple", None]) for _ in range(n)]
        score = HeldoutScore.from_outcomes(outcomes, families)
        assert score.success == sum(outcomes) / n
        named = {f for f in families if f is not None}
        if len(named) < 2:
            assert score.by_family == {}
            continue
        assert set(score.by_family) == named
        for family in named:
            wins = sum(1 for o, f in zip(outcomes, families) if f == family and o)
            total = sum(1 for f in families if f == family)
            assert score.by_family[family] == wins / total


def test_one_family_or_unknown_tasks_report_only_the_overall():
    assert HeldoutScore.from_outcomes([True, False], ["parallel", "parallel"]).by_family == {}
    assert HeldoutScore.from_outcomes([True, False], []).by_family == {}  # tasks not known


def test_a_run_logs_each_bfcl_category_of_its_heldout_set():
    wins = [True, False, False, True, True, False]
    cats = ["parallel", "simple_python", "parallel", "simple_python", "multiple", "multiple"]
    tasks = [_task(i, {"bfcl_category": c}) for i, c in enumerate(cats)]
    held = HeldoutSet(_Rollout(wins), num_tasks=6, max_new_tokens=4, batch_size=4, tasks=tasks)  # type: ignore[arg-type]
    found = EntryHeldout({"bfcl": held}, {"bfcl": 1.0}).evaluate()
    assert found == {"eval/bfcl/success": 0.5, "eval/bfcl/multiple/success": 0.5,
                     "eval/bfcl/parallel/success": 0.5, "eval/bfcl/simple_python/success": 0.5,
                     "eval/success": 0.5}
    wins[0] = False  # parallel now 0/2: only its key and the overall move
    found = EntryHeldout({"bfcl": held}, {"bfcl": 1.0}).evaluate()
    assert found["eval/bfcl/parallel/success"] == 0.0 and found["eval/bfcl/simple_python/success"] == 0.5
    assert abs(found["eval/success"] - 2 / 6) < 1e-12
