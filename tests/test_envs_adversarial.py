"""Adversarial model text against `env.step`: it never raises, returns in bounded time, and every
observation is valid text within the configured size (docs/envs.md, "The step contract").

Each input is what a careless or hostile policy could write: integers past Python's int-string limit,
nesting past the recursion limit, lone surrogates, calculator expressions whose results or costs are
astronomical, 10 MB arguments, tags repeated to make a lazy regex quadratic, answers that make
math-verify compute forever. The checks run from a worker thread, as rollouts do.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from envs.base import DEFAULT_MAX_ACTION_CHARS, MAX_ENV_MESSAGE_CHARS
from envs.math_env import MathEnv
from envs.toolqa import ToolQAEnv

MAX_TOOL_CHARS = 300
SCORING_TIMEOUT_S = 2.0
STEP_BOUND_S = SCORING_TIMEOUT_S + 4.0  # a killed scoring worker is replaced; a loaded 2-core machine


def call(name: Any, **arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def raw_call(body: str) -> str:
    return f"<tool_call>{body}</tool_call>"


BIG_INT = "9" * 5000  # past sys.get_int_max_str_digits() (4300)
DEEP = 5000

TOOL_INPUTS: dict[str, str] = {
    "huge_int_argument": raw_call('{"name": "search", "arguments": {"query": "paris", "k": ' + BIG_INT + "}}"),
    "huge_int_top_level": raw_call('{"name": "calculator", "arguments": {"expression": "1"}, "id": ' + BIG_INT + "}"),
    "huge_int_in_string_arguments": raw_call(json.dumps({"name": "search", "arguments": '{"query": "x", "k": ' + BIG_INT + "}"})),
    "huge_float_exponent": raw_call('{"name": "search", "arguments": {"query": "x", "k": 1e' + BIG_INT[:400] + "}}"),
    "deep_nested_body": raw_call('{"a": ' * DEEP + "1" + "}" * DEEP),
    "deep_nested_string_arguments": raw_call(json.dumps({"name": "calculator", "arguments": "[" * DEEP + "]" * DEEP})),
    "deep_nested_argument_value": raw_call('{"name": "search", "arguments": {"query": ' + "[" * 900 + "]" * 900 + "}}"),
    "deep_nested_unexpected_argument": raw_call('{"name": "search", "arguments": {"query": "x", "extra": '
                                                + '{"a": ' * 900 + "1" + "}" * 900 + "}}"),
    "lone_surrogate_tool_name": raw_call('{"name": "sea\\ud800rch", "arguments": {"query": "x"}}'),
    "lone_surrogate_low_tool_name": raw_call('{"name": "\\udfff", "arguments": {}}'),
    "lone_surrogate_query_echoed": call("search", query="zzqx \ud800"),
    "lone_surrogate_raw_text": "I think \ud800 so " + call("calculator", expression="1+1"),
    "lone_surrogate_argument_key": raw_call('{"name": "calculator", "arguments": {"\\ud800": 1}}'),
    "surrogate_pair_escaped": raw_call('{"name": "search", "arguments": {"query": "\\ud83d\\ude00 paris"}}'),
    "calc_round_huge_ndigits": call("calculator", expression="round(5, -10**9)"),
    "calc_round_huge_positive": call("calculator", expression="round(2.5, 10**18)"),
    "calc_tower": call("calculator", expression="9**9**9**9"),
    "calc_big_division": call("calculator", expression="10**1200 / 3"),
    "calc_factorial_products": call("calculator", expression="factorial(400)*factorial(400)*factorial(400)"),
    "calc_float_overflow": call("calculator", expression="1e308 * 10 + exp(1000)"),
    "calc_deep_parens": call("calculator", expression="(" * 400 + "1" + ")" * 400),
    "calc_nul_byte": call("calculator", expression="1\x00+1"),
    "calc_gcd_huge": call("calculator", expression="gcd(2**4000, 3**2000) + min()"),
    "calc_unicode_digits": call("calculator", expression="\u0661\u0662 + 1"),
    "search_10mb_query": call("search", query="paris " * (10 * 2**20 // 6)),
    "search_query_many_tokens": call("search", query="a1 " * 330),
    "unknown_tool_1mb_name": call("x" * 2**20),
    "unexpected_argument_1mb_key": raw_call(json.dumps({"name": "calculator", "arguments": {"k" * 2**20: 1, "expression": "1"}})),
    "many_unexpected_arguments": raw_call(json.dumps({"name": "calculator", "arguments": {f"a{i}": i for i in range(3000)}})),
    "missing_name_many_keys": raw_call(json.dumps({f"key{i}": i for i in range(3000)})),
    "nan_and_infinity": raw_call('{"name": "search", "arguments": {"query": "x", "k": NaN, "z": Infinity}}'),
    "answer_tag_repeated": "<answer>" * 4000,
    "boxed_repeated_unclosed": "\\boxed{" * 5000,
    "tool_call_open_repeated": "<tool_call>" * 2900,
    "null_bytes_everywhere": "\x00" * 1000 + call("calculator", expression="2*3") + "\x00",
    "over_max_action_chars": call("search", query="q" * DEFAULT_MAX_ACTION_CHARS),
}

MATH_INPUTS: dict[str, str] = {
    "power_tower_9": "\\boxed{9^{9^{9^{9}}}}",
    "power_tower_10": "\\boxed{10^{10^{10^{10}}}}",
    "power_tower_2": "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "huge_factorial": "\\boxed{99999999!}",
    "factorial_of_power": "\\boxed{(10^{100000})!}",
    "answer_1mb": "<answer>" + "1+" * (2**19) + "1</answer>",
    "boxed_1mb_within_action_limit": "\\boxed{" + "x" * 30000 + "}",
    "lone_surrogate_answer": "\\boxed{\ud800}",
    "deep_braces": "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",
    "answer_tag_repeated": "<answer>" * 4000 + "x",
    "empty_boxed": "\\boxed{}",
    "division_by_zero": "\\boxed{\\frac{1}{0}}",
}


def _texts(message: dict[str, Any]) -> list[str]:
    content = message["content"]
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content if p.get("type") == "text"]


@dataclass
class StepOutcome:
    result: tuple | None = None
    error: BaseException | None = None
    wall_s: float = 0.0


def step_in_thread(env: Any, text: str) -> StepOutcome:
    """``env.step(text)`` from a worker thread (as the rollout's pool does), bounded by STEP_BOUND_S."""
    out = StepOutcome()

    def target() -> None:
        start = time.monotonic()
        try:
            out.result = env.step(text)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            out.error = exc
        out.wall_s = time.monotonic() - start

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(STEP_BOUND_S + 30)
    assert not t.is_alive(), "env.step hung"
    return out


def check_contract(env: Any, text: str, before: int) -> tuple:
    out = step_in_thread(env, text)
    assert out.error is None, f"env.step raised {type(out.error).__name__}: {str(out.error)[:300]}"
    assert out.wall_s <= STEP_BOUND_S, f"env.step took {out.wall_s:.1f} s > {STEP_BOUND_S} s"
    obs, reward, terminated, truncated, info = out.result
    assert env.observation_space.contains(obs)
    for m in obs["messages"]:
        for t in _texts(m):
            t.encode("utf-8")  # a lone surrogate raises here, as it would in a tokenizer
    for m in obs["messages"][before + 1 :]:  # the env's replies
        limit = MAX_TOOL_CHARS if m["role"] == "tool" else MAX_ENV_MESSAGE_CHARS
        for t in _texts(m):
            assert len(t) <= limit, f"{m['role']} reply of {len(t)} characters > {limit}"
        if "name" in m:
            m["name"].encode("utf-8")
    for key, value in info.items():
        if isinstance(value, str):
            value.encode("utf-8")
            assert len(value) <= MAX_ENV_MESSAGE_CHARS, f"info[{key!r}] has {len(value)} characters"
    return reward, terminated, truncated, info


@pytest.fixture(scope="module", autouse=True)
def scoring_workers_started() -> None:
    """Step times are bounded once the scoring worker is up; its first start (a sympy import) is not."""
    from envs.scoring_worker import shared_pool

    shared_pool().warm_up_all()


@pytest.fixture(scope="module")
def toolqa() -> ToolQAEnv:
    return ToolQAEnv(size=4, seed=0, max_turns=4, max_tool_chars=MAX_TOOL_CHARS, scoring_timeout_s=SCORING_TIMEOUT_S)


@pytest.fixture(scope="module")
def math_env() -> MathEnv:
    return MathEnv(size=4, seed=0, max_turns=3, scoring_timeout_s=SCORING_TIMEOUT_S)


@pytest.mark.parametrize("name", list(TOOL_INPUTS))
def test_toolqa_step_contract(toolqa: ToolQAEnv, name: str) -> None:
    before = len(toolqa.reset(seed=1)[0]["messages"])
    reward, terminated, truncated, info = check_contract(toolqa, TOOL_INPUTS[name], before)
    if not (terminated or truncated):  # the episode goes on: a correct answer still scores
        _, reward, terminated, _, _ = toolqa.step(f"\\boxed{{{toolqa.task.answer}}}")
        assert terminated and reward == 1.0


@pytest.mark.parametrize("name", list(MATH_INPUTS))
def test_math_step_contract(math_env: MathEnv, name: str) -> None:
    before = len(math_env.reset(seed=2)[0]["messages"])
    reward, terminated, truncated, info = check_contract(math_env, MATH_INPUTS[name], before)
    assert reward == 0.0  # none of these is the right answer
    if terminated:
        assert info["success"] is False and info["why"]


@pytest.mark.parametrize("name", ["power_tower_9", "huge_factorial"])
def test_timed_out_answer_scores_zero_with_reason(math_env: MathEnv, name: str) -> None:
    math_env.reset(seed=2)
    reward, terminated, _, info = check_contract(math_env, MATH_INPUTS[name], 2)
    assert terminated and reward == 0.0 and info["success"] is False
    assert info.get("scoring_timed_out") is True and "timed out" in info["why"], info
    # the pool recovered: the next answer is scored normally
    math_env.reset(seed=2)
    _, reward, terminated, _, info = math_env.step(f"\\boxed{{{math_env.task.answer}}}")
    assert terminated and reward == 1.0, info


def test_over_long_answer_is_not_scored(math_env: MathEnv) -> None:
    math_env.reset(seed=2)
    gold = math_env.task.answer
    _, reward, terminated, _, info = math_env.step(f"<answer>{gold}{' ' * 5000}+0</answer>")
    assert terminated and reward == 0.0 and "over the scoring limit" in info["why"]


def test_suite_size() -> None:
    assert len(TOOL_INPUTS) + len(MATH_INPUTS) >= 45
