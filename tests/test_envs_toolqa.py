"""ToolQA episodes with the real built-in tools: demonstrations, wrong answers, truncation, bad calls."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import reopold_agents as ra
from envs.demo import play_demonstration
from envs.toolqa import ToolQAEnv
from tasks import Task, generate
from tools.base import FunctionTool


@pytest.fixture(scope="module")
def env() -> ToolQAEnv:
    return ra.make_env("toolqa", seed=0, max_turns=50)


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_demonstrations_solve_their_tasks(env, difficulty):
    for task in generate("toolqa", size=25, seed=7, difficulty=difficulty):
        demo = play_demonstration(env, task)
        assert demo.reward == 1.0, (task.question, demo.info)
        assert demo.info["success"] is True
        tool_msgs = [m for m in demo.messages if m["role"] == "tool"]
        assert len(tool_msgs) == len(task.demonstration) - 1
        assert all(not m["content"].startswith("Error") for m in tool_msgs)
        assert [t["function"]["name"] for t in demo.tools] == ["search", "calculator"]


def test_search_result_reaches_the_agent(env):
    task = next(t for t in generate("toolqa", size=50, seed=1) if t.meta["kind"] == "lookup")
    obs, info = env.reset(options={"task": task})
    assert info["answer"] == task.answer and info["tools"]
    obs, r, term, trunc, info = env.step(task.demonstration[0])
    assert (r, term, trunc) == (0.0, False, False)
    assert obs["messages"][-1]["role"] == "tool" and task.answer in obs["messages"][-1]["content"]
    assert info["tool_name"] == "search" and info["tool_error"] is None and info["num_calls"] == 1


def test_wrong_answer_terminates_with_zero(env):
    task = generate("toolqa", size=1, seed=2)[0]
    env.reset(options={"task": task})
    obs, r, term, trunc, info = env.step("\\boxed{definitely wrong}")
    assert (r, term, trunc, info["success"]) == (0.0, True, False, False)
    assert "does not match" in info["why"] or "not" in info["why"]


def test_truncation_after_max_turns_without_answer():
    env = ra.make_env("toolqa", seed=0, max_turns=3)
    env.reset(seed=0)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
    for turn in range(1, 4):
        obs, r, term, trunc, info = env.step(call if turn != 2 else "hmm, let me think")
        if turn < 3:
            assert not term and not trunc
    assert trunc and not term and r == 0.0 and info["success"] is False
    assert "max_turns (3)" in info["why"]
    assert obs["messages"][-1]["role"] == "assistant"  # nothing after the last turn
    assert [m["role"] for m in obs["messages"]] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert "\\boxed" in obs["messages"][5]["content"] and "<tool_call>" in obs["messages"][5]["content"]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("again")


# ------------------------------------------------------------------------------- malformed calls

_BODIES = [
    "", "   ", "{", "}", "not json", "[1, 2]", '"just a string"', "42", "null", "true", "{}",
    '{"name": 1}', '{"name": ""}', '{"name": null}', '{"name": ["calculator"]}', '{"arguments": {}}',
    '{"name": "nope", "arguments": {}}', '{"name": "Calculator", "arguments": {"expression": "1"}}',
    '{"name": "calculator", "arguments": []}', '{"name": "calculator", "arguments": "x"}',
    '{"name": "calculator", "arguments": 5}', '{"name": "calculator", "arguments": {}}',
    '{"name": "calculator", "arguments": {"expression": 5}}', '{"name": "calculator", "arguments": {"expression": null}}',
    '{"name": "calculator", "arguments": {"expression": "1+1", "extra": 2}}', '{"name": "calculator", "arguments": {"expr": "1+1"}}',
    '{"name": "search", "arguments": {"query": ["a"]}}', '{"name": "search", "arguments": {"query": "x", "k": "three"}}',
    '{"name": "search", "arguments": {"query": "x", "k": 99}}', '{"name": "search", "arguments": {"query": {"q": 1}}}',
    '{"name": "calculator", "arguments": {"expression": "1/0"}}', '{"name": "calculator", "arguments": {"expression": "__import__(\'os\')"}}',
    '{"name": "calculator", "arguments": {"expression": "1+1"}', '{"name": "calculator", "arguments": {"expression": "1+1",}}',
    "{'name': 'calculator', 'arguments': {'expression': '1'}}", "[" * 30000,  # under max_action_chars
    '{"name": "calculator", "arguments": {"expression": "9**9**9**9"}}',
]
_STRUCTURAL = [
    '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}',
    '{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>',
    '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call><tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>',
    '<tool_call><tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call></tool_call>',
    '</tool_call><tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>',
    "<tool_call>",
    "</tool_call>",
    "<tool_call></tool_call><tool_call></tool_call>",
    'The answer is \\boxed{4} <tool_call>{"name": "nope"}</tool_call>',
]
MALFORMED = (
    [f"<tool_call>{b}</tool_call>" for b in _BODIES]
    + [f"I will use a tool.\n<tool_call>\n{b}\n</tool_call>" for b in _BODIES]
    + _STRUCTURAL
)


def test_there_are_at_least_50_variants():
    assert len(set(MALFORMED)) >= 50


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_call_gives_error_observation(env, text):
    env.reset(seed=3)
    before = len(env.reset(seed=3)[0]["messages"])
    obs, r, term, trunc, info = env.step(text)
    assert (r, term, trunc) == (0.0, False, False)
    msgs = obs["messages"]
    assert len(msgs) == before + 2 and msgs[-2] == {"role": "assistant", "content": text}
    assert msgs[-1]["role"] == "tool" and msgs[-1]["content"].startswith("Error: ")
    assert info["tool_error"] == msgs[-1]["content"] and len(info["tool_error"]) > len("Error: ")
    assert info["num_calls"] == 1  # a failed call is still a call the model made (eval's tool_calls)
    # the episode goes on: a correct answer afterwards still scores
    obs, r, term, trunc, info = env.step(f"\\boxed{{{env.task.answer}}}")
    assert r == 1.0 and term


def test_error_messages_name_the_problem(env):
    env.reset(seed=0)
    cases = {
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>': "unknown tool 'nope'; available tools: search, calculator",
        '<tool_call>{"name": "calculator", "arguments": {"expression": 5}}</tool_call>': "'expression'",
        '<tool_call>{"name": "calculator", "arguments": {}}</tool_call>': "missing",
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>' * 2: "2 tool calls",
        "<tool_call>{bad</tool_call>": "not valid JSON",
    }
    for text, fragment in cases.items():
        env.reset(seed=0)
        _, _, _, _, info = env.step(text)
        assert fragment in info["tool_error"], (text, info["tool_error"])


def test_tool_images_join_the_observation():
    def draw(color: str) -> tuple:
        """Draw a square.

        Args:
            color: fill colour.
        """
        return f"a {color} square", [Image.new("RGB", (28, 28), color)]

    def boom(x: int) -> str:
        """Always fails.

        Args:
            x: ignored.
        """
        raise RuntimeError("kaput")

    task = Task(id="t", question="What colour?", answer="red")
    env = ToolQAEnv([task], tools=[FunctionTool(draw, name="draw"), FunctionTool(boom, name="boom")], max_turns=5)
    obs, info = env.reset()
    assert obs["images"] == [] and [t["function"]["name"] for t in info["tools"]] == ["draw", "boom"]
    obs, *_ = env.step('<tool_call>{"name": "draw", "arguments": {"color": "red"}}</tool_call>')
    msg = obs["messages"][-1]
    assert msg["role"] == "tool" and [p["type"] for p in msg["content"]] == ["image", "text"]
    assert msg["content"][1]["text"] == "a red square"
    assert len(obs["images"]) == 1 and obs["images"][0] is msg["content"][0]["image"]
    obs, *_ = env.step('<tool_call>{"name": "draw", "arguments": {"color": "blue"}}</tool_call>')
    assert [im.getpixel((0, 0)) for im in obs["images"]] == [(255, 0, 0), (0, 0, 255)]
    obs, r, term, trunc, info = env.step('<tool_call>{"name": "boom", "arguments": {"x": 1}}</tool_call>')
    assert "kaput" in info["tool_error"] and not term
    obs, r, term, trunc, info = env.step("<answer>red</answer>")
    assert r == 1.0 and term


def test_python_tool_runs_in_the_configured_sandbox():
    from envs.factory import build_env
    from reopold_agents.config import compose

    cfg = compose(["env=toolqa", "env.tools=[python]", "env.size=4"])
    env = build_env(cfg.env, sandbox=cfg.sandbox)
    env.reset(seed=0)
    code = json.dumps({"name": "python", "arguments": {"code": "print(6 * 7)"}})
    obs, r, term, trunc, info = env.step(f"<tool_call>{code}</tool_call>")
    assert info["tool_error"] is None, info
    assert "42" in obs["messages"][-1]["content"]
