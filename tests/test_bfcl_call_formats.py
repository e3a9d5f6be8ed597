"""The call formats real models write, read by the one parser of BFCL evaluation and training
(`envs.bfcl.parse_calls`): tagged, bare JSON, fenced JSON, several objects one after another (bare or in one
fence), several fences. The reward is the AST match of what was parsed, on every held-out entry."""

from __future__ import annotations

import importlib.util
import json

import pytest

from envs.bfcl import BFCLEnv, parse_calls
from envs.bfcl_match import calls_from_ground_truth, match_calls
from envs.tool_parsing import ToolCall, parse_json_calls

A = {"name": "spotify.play", "arguments": {"artist": "Taylor Swift", "duration": 20}}
B = {"name": "spotify.play", "arguments": {"artist": "Maroon 5", "duration": 15}}


def _j(call: dict) -> str:
    return json.dumps(call)


def _tagged(calls: list[dict]) -> str:
    return "".join(f"<tool_call>\n{_j(c)}\n</tool_call>\n" for c in calls)


def _fence(body: str, tag: str = "json") -> str:
    return f"```{tag}\n{body}\n```"


FORMATS = {
    "tagged": _tagged,
    "bare_object_or_list": lambda calls: _j(calls[0]) if len(calls) == 1 else json.dumps(calls),
    "bare_consecutive_objects": lambda calls: "\n".join(_j(c) for c in calls),
    "fenced_list": lambda calls: _fence(json.dumps(calls, indent=2)),
    # Qwen2.5-Coder-1.5B-Instruct's parallel answer: consecutive objects in one ```json fence
    "one_fence_consecutive_objects": lambda calls: _fence("\n".join(_j(c) for c in calls)),
    "prose_then_fence": lambda calls: "Here are the calls:\n" + _fence("\n".join(_j(c) for c in calls)) + "\nDone.",
    "one_fence_per_call": lambda calls: "\n\nand\n\n".join(_fence(_j(c)) for c in calls),
    "comma_separated_objects": lambda calls: ",\n".join(_j(c) for c in calls),
    "untagged_fence": lambda calls: _fence("\n".join(_j(c) for c in calls), tag=""),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_gives_the_calls_in_order(fmt):
    parsed = parse_calls(FORMATS[fmt]([A, B]))
    assert parsed.error is None and parsed.has_markup
    assert [(c.name, c.arguments) for c in parsed.calls] == [(A["name"], A["arguments"]), (B["name"], B["arguments"])]
    one = parse_calls(FORMATS[fmt]([A]))
    assert [(c.name, c.arguments) for c in one.calls] == [(A["name"], A["arguments"])]


def test_consecutive_objects_in_one_fence_were_rejected_before():
    """The 1.5B's parallel format: the old parser (one json.loads of the fence body) read 0 calls."""
    text = _fence(_j(A) + "\n" + _j(B))
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.split("\n", 1)[1].rsplit("```", 1)[0])
    assert len(parse_json_calls(text).calls) == 2


@pytest.mark.parametrize("text", [
    "Call spotify.play twice, for [Taylor Swift] and {Maroon 5}.",  # prose with brackets
    _j(A) + "\nThis plays Taylor Swift.",  # bare JSON then prose: not all JSON, so prose
    _fence("spotify.play(artist='Taylor Swift', duration=20)", tag="python"),  # not JSON
    "```json",  # a fence with nothing after it
    "{" * 100_000,  # unterminated nesting
    "[" * 100_000 + "]" * 100_000,  # nesting past the recursion limit
])
def test_prose_and_non_json_are_no_call(text):
    parsed = parse_calls(text)
    assert parsed.calls == [] and parsed.error is None and not parsed.has_markup


def test_json_that_is_not_a_call_says_why():
    parsed = parse_calls(_fence('{"artist": "Taylor Swift"}') + "\n" + _fence(_j(A)))
    assert parsed.calls == [] and parsed.has_markup and 'has no "name"' in parsed.error
    parsed = parse_calls(_fence(_j(A) + "\n42"))
    assert parsed.calls == [] and "tool call 2 must be a JSON object, got a number" in parsed.error


def test_a_non_json_fence_beside_json_fences_is_skipped():
    text = _fence("play(artist)", tag="python") + "\n" + _fence(_j(A)) + "\n" + _fence(_j(B))
    assert [c.arguments["artist"] for c in parse_calls(text).calls] == ["Taylor Swift", "Maroon 5"]


def test_an_unterminated_last_fence_is_read_to_the_end():
    """A reply cut by max_new_tokens right after its last call still holds its calls."""
    assert len(parse_calls(_fence(_j(A)) + "\n```json\n" + _j(B)).calls) == 2


def test_an_empty_json_list_is_said_no_call():
    parsed = parse_calls("[]")
    assert parsed.calls == [] and parsed.error is None and parsed.has_markup


def test_limits_still_hold_inside_fences():
    huge = '{"name": "f", "arguments": {"x": %s}}' % ("9" * 5000)
    for text in (_fence(_j(A) + "\n" + huge), _fence(_j(A)) + _fence(huge)):
        parsed = parse_calls(text)
        assert parsed.calls == [] and parsed.has_markup and "cannot be parsed" in parsed.error
    deep = _fence(_j(A) + "\n" + '{"name": "f", "arguments": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001)
    assert parse_calls(deep).error is None  # the deep body is unreadable, as prose; nothing raises


def test_tags_take_precedence_over_json():
    text = _tagged([A]) + _fence(_j(B))
    assert [c.arguments["artist"] for c in parse_calls(text).calls] == ["Taylor Swift"]


needs_bfcl = pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None,
                                reason="the bench extra is not installed (bash scripts/setup.sh)")


def _as_json(calls: list[ToolCall]) -> list[dict]:
    return [{"name": c.name, "arguments": c.arguments} for c in calls]


@needs_bfcl
@pytest.mark.parametrize("split", ["heldout", "train"])
def test_reward_is_the_ast_match_in_every_format(split):
    """Every held-out entry (and every 5th train entry): the ground truth written in each format earns 1.0,
    the reward always equals `match_calls` of the parsed calls, and a wrong answer earns 0.0."""
    from tasks.bfcl import load_bfcl

    tasks = load_bfcl("core", split=split)
    tasks = tasks if split == "heldout" else tasks[::5]
    env = BFCLEnv(tasks, max_turns=1)
    for index, task in enumerate(tasks):
        meta = task.meta
        truth = [] if meta["ground_truth"] is None else _as_json(calls_from_ground_truth(meta["ground_truth"],
                                                                                          meta["functions"]))
        wrong = truth[:-1] if len(truth) > 1 else [{"name": meta["functions"][0]["name"] + "_x", "arguments": {}}]
        for fmt, render in FORMATS.items():
            for calls, expected in ((truth, 1.0), (wrong, 0.0)):
                text = render(calls) if calls else "None of the functions can answer this."
                env.reset(options={"task_index": index})
                _, reward, terminated, _, info = env.step(text)
                parsed = parse_calls(text)
                verdict = match_calls(meta["bfcl_category"], meta["functions"], parsed.calls, meta["ground_truth"])
                assert terminated and reward == float(verdict.valid), (task.id, fmt)
                assert reward == expected, (task.id, fmt, info["why"])
