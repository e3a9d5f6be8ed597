"""reasoning-gym as a task source: seeded generation with config keys, the math env scored by the
dataset's own scorer, clear errors, the rg_arith suite."""

from __future__ import annotations

import warnings

import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("reasoning_gym", reason="the bench extra is not installed (bash scripts/setup.sh)")

import reasoning_gym  # noqa: E402

import reopold_agents as ra  # noqa: E402
from envs.factory import build_env, load_env_tasks  # noqa: E402
from reopold_agents.config import compose  # noqa: E402
from tasks import TaskLoadError, load_tasks  # noqa: E402
from tasks.reasoning_gym_tasks import parse_source  # noqa: E402


def test_tasks_are_the_generator_entries():
    tasks = load_tasks("reasoning_gym:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1", size=6, seed=3)
    reference = reasoning_gym.create_dataset("chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1, size=6, seed=3)
    assert [t.question for t in tasks] == [reference[i]["question"] for i in range(6)]
    assert [t.answer for t in tasks] == [reference[i]["answer"] for i in range(6)]
    assert all(t.meta["rg_entry"]["metadata"]["num_terms"] == 2 for t in tasks)  # the config key took effect
    again = load_tasks("reasoning_gym:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1", size=6, seed=3)
    assert [t.question for t in again] == [t.question for t in tasks]
    other = load_tasks("reasoning_gym:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1", size=6, seed=4)
    assert [t.question for t in other] != [t.question for t in tasks]
    assert len({t.id for t in tasks}) == 6


def test_parse_source():
    assert parse_source("countdown") == ("countdown", {})
    assert parse_source("countdown?min_numbers=3&shuffle=false&operators=['+','-']") == (
        "countdown", {"min_numbers": 3, "shuffle": False, "operators": ["+", "-"]})


@pytest.mark.parametrize("source,match", [
    ("reasoning_gym:no_such_set", "unknown dataset 'no_such_set'"),
    ("reasoning_gym:countdown?bogus=1", r"unknown config key\(s\) \['bogus'\]; keys: max_numbers"),
    ("reasoning_gym:countdown?seed=1", "set seed with env.seed"),
    ("reasoning_gym:countdown?min_numbers=5&max_numbers=2", "invalid config"),
    ("reasoning_gym:", "name a dataset"),
])
def test_bad_sources_fail_clearly(source, match):
    with pytest.raises(TaskLoadError, match=match):
        load_tasks(source, size=2)


def test_math_env_scores_with_the_dataset_scorer():
    tasks = load_tasks("reasoning_gym:countdown?min_numbers=3&max_numbers=3", size=4, seed=0)
    env = ra.make_env("math", tasks=tasks, seed=0)
    dataset = reasoning_gym.create_dataset("countdown", min_numbers=3, max_numbers=3, size=4, seed=0)
    for i, task in enumerate(tasks):
        numbers = task.meta["rg_entry"]["metadata"]["numbers"]
        for answer in (task.answer, "+".join(str(n) for n in numbers), "1 + 1"):
            env.reset(options={"task_index": i})
            _, reward, terminated, _, info = env.step(f"So: \\boxed{{{answer}}}")
            expected = dataset.score_answer(answer, dataset[i])
            assert terminated and reward == pytest.approx(expected)
            assert info["success"] == (expected == 1.0)
    env.reset(options={"task_index": 0})
    assert env.step(f"\\boxed{{{tasks[0].answer}}}")[1] == 1.0  # the reference expression itself
    env.reset(options={"task_index": 0})
    _, reward, _, _, info = env.step("\\boxed{((}")  # garbage: the scorer's own low score, no crash
    assert reward < 1.0 and not info["success"]


def test_partial_credit_is_the_reward():
    tasks = load_tasks("reasoning_gym:basic_arithmetic", size=2, seed=1)
    env = ra.make_env("math", tasks=tasks, seed=0)
    env.reset(options={"task_index": 0})
    _, reward, _, _, info = env.step(f"\\boxed{{result {tasks[0].answer}}}")  # reasoning-gym's substring credit
    assert 0.0 < reward < 1.0 and not info["success"]
    assert reward == pytest.approx(len(tasks[0].answer) / len(f"result {tasks[0].answer}"))


def test_env_config_and_check_env():
    cfg = compose(["env=math", "env.tasks='reasoning_gym:leg_counting?min_animals=1&max_animals=2'", "env.size=5",
                   "env.seed=7"])
    tasks = load_env_tasks(cfg.env)
    assert len(tasks) == 5 and tasks[0].id == "rg-leg_counting-7-0"
    env = build_env(cfg.env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert [str(w.message) for w in caught if "render modes" not in str(w.message)] == []


def test_rg_suite_loads():
    from reopold_agents.evaluation.suite import load_suite

    suite = load_suite("rg_arith")
    assert set(suite.benchmarks) == {"basic_arithmetic", "chain_sum", "leg_counting", "gsm_symbolic", "countdown"}
    for bench in suite.benchmarks.values():
        tasks = load_env_tasks(bench.env)
        assert len(tasks) == 32 and bench.env.seed == 1234 and tasks[0].meta["scorer"] == "reasoning_gym"


def test_malformed_query_fails():
    with pytest.raises(TaskLoadError, match="expected key=value"):
        parse_source("countdown?min_numbers")
