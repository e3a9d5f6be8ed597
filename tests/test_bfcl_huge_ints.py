"""BFCL calls with huge integers get a clear verdict where they are handled (parser, matcher), never the env's
last-resort guard (which logs a traceback): bare JSON with an integer past Python's int-string limit, and an
integer too large for a float in a ``float`` parameter."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest

from envs.bfcl_match import check_call
from envs.tool_parsing import ToolCall, parse_json_calls

BIG_DIGITS = "9" * 5000  # past sys.get_int_max_str_digits() (4300)
FLOAT_DOC = {"name": "f", "parameters": {"type": "dict", "required": ["x"], "properties": {"x": {"type": "float"}}}}


def test_bare_json_with_a_huge_integer_is_a_parse_error() -> None:
    parsed = parse_json_calls('{"name": "f", "arguments": {"x": %s}}' % BIG_DIGITS)
    assert parsed.calls == [] and parsed.has_markup
    assert parsed.error is not None and "cannot be parsed" in parsed.error and "4300" in parsed.error
    assert parse_json_calls("[not json at all").error is None  # prose that starts with a bracket stays prose


@pytest.mark.parametrize("value", [10**400, -(10**400), int("9" * 4000)], ids=["1e400", "-1e400", "4000_nines"])
def test_an_integer_too_large_for_a_float_is_a_type_error(value: int) -> None:
    match = check_call(FLOAT_DOC, ToolCall("f", {"x": value}), {"f": {"x": [1.5]}})
    assert not match.valid and match.error_type == "type_error"
    assert "too large for a float" in match.error and "digits" in match.error


def test_a_float_parameter_still_accepts_an_ordinary_integer() -> None:
    assert check_call(FLOAT_DOC, ToolCall("f", {"x": 2}), {"f": {"x": [2.0]}}).valid


@pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None, reason="the bench extra is not installed")
def test_env_gives_a_verdict_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from envs.factory import build_env
    from reopold_agents.config.env import EnvConfig

    env = build_env(EnvConfig(name="bfcl", tasks="bfcl:simple_python", size=0, max_turns=1))
    index = next(i for i, t in enumerate(env.tasks)
                 if any(p.get("type") == "float" for f in t.meta["functions"]
                        for p in f["parameters"].get("properties", {}).values()))
    function = env.tasks[index].meta["functions"][0]
    float_param = next(k for k, p in function["parameters"]["properties"].items() if p.get("type") == "float")
    truth = env.tasks[index].meta["ground_truth"][0][function["name"]]
    args = {k: v[0] for k, v in truth.items() if v and v[0] != ""}  # a correct call, but for the huge float
    texts = {
        "bare_json_past_the_int_limit": '{"name": "%s", "arguments": {"%s": %s}}' % (function["name"], float_param, BIG_DIGITS),
        "float_overflow": "<tool_call>" + json.dumps({"name": function["name"], "arguments": {**args, float_param: 10**400}})
                          + "</tool_call>",
    }
    for name, text in texts.items():
        caplog.clear()
        env.reset(options={"task_index": index})
        with caplog.at_level(logging.ERROR):
            _, reward, terminated, _, info = env.step(text)
        assert terminated and reward == 0.0, name
        assert "env_error" not in info, (name, info)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], name
        assert "cannot be parsed" in info["why"] or "too large for a float" in info["why"], (name, info["why"])
