"""``max_action_chars``: the longest assistant message an env reads. The default is sized for long reasoning
replies (it used to be 32768 characters, which refused a long thinking reply unread); it is an env config
key; every env's step stays fast at the bound."""

from __future__ import annotations

import time

import pytest

import reopold_agents as ra
from envs.base import DEFAULT_MAX_ACTION_CHARS, TextEnv
from envs.factory import build_env
from envs.math_env import MathEnv
from envs.toolqa import ToolQAEnv
from reopold_agents.config.env import EnvConfig


def _long_reasoning(answer: str, chars: int) -> str:
    thought = "Let me think about this step by step, checking each partial result again. "
    body = (thought * (chars // len(thought) + 1))[: chars - 40]
    return f"<think>{body}</think> So the answer is \\boxed{{{answer}}}."


def test_default_fits_a_long_reasoning_reply() -> None:
    assert DEFAULT_MAX_ACTION_CHARS >= 200_000  # a 64K-token reply is ~260K characters
    env = ra.make_env("math", seed=0)
    assert env.action_space.max_length == DEFAULT_MAX_ACTION_CHARS
    env.reset(seed=0)
    text = _long_reasoning(env.task.answer, 150_000)  # past the old 32768 limit
    _, reward, terminated, _, info = env.step(text)
    assert terminated and reward == 1.0 and "action_too_long" not in info, info


@pytest.mark.parametrize("name", ["math", "toolqa", "vqa"])
def test_env_config_key_sets_the_bound(name: str) -> None:
    env = build_env(EnvConfig(name=name, max_action_chars=5000, max_turns=2))
    assert env.action_space.max_length == 5000
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step("x" * 5001)
    assert info.get("action_too_long") is True and reward == 0.0 and not terminated
    assert "over the limit of 5000" in obs["messages"][-1]["content"]
    unset = build_env(EnvConfig(name=name, max_turns=2))
    assert unset.action_space.max_length == type(unset).default_max_action_chars


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ValueError, match="max_action_chars: must be >= 1"):
        EnvConfig(name="math", max_action_chars=0).check()
    with pytest.raises(ValueError, match="max_action_chars must be an integer >= 1"):
        MathEnv(size=2, max_action_chars=0)


def test_a_subclass_picks_its_own_default() -> None:
    class ShortReplies(MathEnv):
        default_max_action_chars = 1000

    env = ShortReplies(size=2, seed=0)
    assert env.action_space.max_length == 1000
    assert isinstance(env, TextEnv)


@pytest.mark.parametrize("text", ["<tool_call>" * (DEFAULT_MAX_ACTION_CHARS // 11), "\\boxed{" * (DEFAULT_MAX_ACTION_CHARS // 7),
                                  "[" * DEFAULT_MAX_ACTION_CHARS, "<answer>" * (DEFAULT_MAX_ACTION_CHARS // 8),
                                  ('<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
                                   * (DEFAULT_MAX_ACTION_CHARS // 80))[:DEFAULT_MAX_ACTION_CHARS]],
                         ids=["tool_call_tags", "boxed_opens", "brackets", "answer_tags", "many_calls"])
def test_step_stays_fast_at_the_bound(text: str) -> None:
    for env in (MathEnv(size=2, seed=0, max_turns=3), ToolQAEnv(size=2, seed=0, max_turns=3)):
        env.reset(seed=0)
        start = time.monotonic()
        env.step(text)
        assert time.monotonic() - start < 3.0, type(env).__name__
