"""The tool-call parser: valid calls, and every malformed shape reported as an error (never raised)."""

from __future__ import annotations

import json

import pytest

from envs.tool_parsing import parse_tool_calls


def test_no_markup_is_not_a_call():
    p = parse_tool_calls("The answer is \\boxed{3}.")
    assert not p.has_markup and p.calls == [] and p.error is None


def test_valid_call_with_reasoning_before():
    p = parse_tool_calls('Let me look.\n<tool_call>\n{"name": "search", "arguments": {"query": "Paris"}}\n</tool_call>')
    assert p.error is None and len(p.calls) == 1
    assert p.calls[0].name == "search" and p.calls[0].arguments == {"query": "Paris"}


def test_string_encoded_and_missing_arguments():
    p = parse_tool_calls('<tool_call>{"name": "calc", "arguments": "{\\"expression\\": \\"1+1\\"}"}</tool_call>')
    assert p.calls[0].arguments == {"expression": "1+1"}
    p = parse_tool_calls('<tool_call>{"name": "now"}</tool_call>')
    assert p.error is None and p.calls[0].arguments == {}


def test_several_calls_are_all_returned():
    one = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    p = parse_tool_calls(one + "\n" + one.replace('"a"', '"b"'))
    assert [c.name for c in p.calls] == ["a", "b"] and p.error is None


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("<tool_call></tool_call>", "empty"),
        ("<tool_call>   \n </tool_call>", "empty"),
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "a", "arguments": {}}', "unterminated"),
        ('{"name": "a"}</tool_call>', "without a matching"),
        ('<tool_call><tool_call>{"name": "a"}</tool_call></tool_call>', "nested"),
        ("<tool_call>[1, 2]</tool_call>", "JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'no "name"'),
        ('<tool_call>{"name": 3}</tool_call>', "non-empty string"),
        ('<tool_call>{"name": "a", "arguments": [1]}</tool_call>', '"arguments" must be a JSON object'),
        ('<tool_call>{"name": "a", "arguments": "{oops"}</tool_call>', "not valid JSON"),
        ("<tool_call>" + "[" * 100000 + "</tool_call>", "tool call 1"),
    ],
)
def test_malformed_shapes_are_errors(text, fragment):
    p = parse_tool_calls(text)
    assert p.has_markup and p.calls == [] and p.error is not None
    assert fragment in p.error


def test_roundtrip_of_arbitrary_arguments():
    args = {"s": "quote \" and </tool_call-ish", "n": [1, 2.5, None], "d": {"k": True}}
    text = "<tool_call>" + json.dumps({"name": "t", "arguments": args}) + "</tool_call>"
    p = parse_tool_calls(text)
    assert p.error is None and p.calls[0].arguments == args
