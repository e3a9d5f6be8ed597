"""Parse Qwen/Hermes-style tool calls out of an assistant message, never raising.

Format: ``<tool_call>{"name": "search", "arguments": {"query": "Paris"}}</tool_call>``. Text before the
call (reasoning) is allowed and ignored; ``arguments`` may be an object or a JSON-encoded object string
(OpenAI style), and may be omitted for tools without parameters. Everything else the model can get wrong
(unterminated or stray tags, nesting, empty or non-JSON bodies, a non-object, a missing or non-string
name, non-object arguments) is reported as one readable ``error`` that the env sends back as a ``tool``
message. Whether several calls in one message are allowed is the env's decision (`ParsedCalls.calls`).
`parse_json_calls` reads calls written as JSON without tags (bfcl accepts both) with the same checks: bare
or in ```` ```json ```` fences, one object, a list, or several one after another (how real models write
parallel calls: Qwen2.5-Coder-1.5B puts consecutive objects in one fence).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FORMAT_HINT = 'Call a tool as <tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call>.'


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedCalls:
    """Result of parsing one message: ``has_markup`` is True when any tool-call tag appears."""

    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None
    has_markup: bool = False


def _parse_body(body: str, index: int) -> tuple[ToolCall | None, str | None]:
    where = f"tool call {index + 1}"
    if not body.strip():
        return None, f"{where} is empty. {FORMAT_HINT}"
    obj, problem = _load_json(body)
    if problem is not None:
        return None, f"{where} {problem}. {FORMAT_HINT}"
    return call_from_object(obj, index)


def call_from_object(obj: Any, index: int = 0) -> tuple[ToolCall | None, str | None]:
    """One decoded JSON value as a `ToolCall` ``{"name", "arguments"}``, or the reason it is not one."""
    where = f"tool call {index + 1}"
    if not isinstance(obj, dict):
        return None, f"{where} must be a JSON object, got {_json_type(obj)}. {FORMAT_HINT}"
    if "name" not in obj:
        return None, f"{where} has no \"name\" (keys: {sorted(obj)}). {FORMAT_HINT}"
    name = obj["name"]
    if not isinstance(name, str) or not name.strip():
        return None, f"{where}: \"name\" must be a non-empty string, got {_json_type(name)}."
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args, problem = _load_json(args) if args.strip() else ({}, None)
        if problem is not None:
            return None, f"{where}: \"arguments\" is a string but {problem}."
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, f"{where}: \"arguments\" must be a JSON object, got {_json_type(args)}."
    return ToolCall(name=name.strip(), arguments=args), None


def _load_json(text: str) -> tuple[Any, str | None]:
    """``json.loads`` that reports, instead of raising, every way model text can fail to parse.

    Besides malformed JSON: integers longer than Python's int-string limit (ValueError), nesting
    deeper than the recursion limit (RecursionError) and absurd sizes (MemoryError).
    """
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except RecursionError:
        return None, "is nested too deeply to parse"
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        return None, f"cannot be parsed ({str(exc)[:120]})"
    except MemoryError:
        return None, "is too large to parse"


def _json_type(v: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if v is None else names.get(type(v), type(v).__name__)


def parse_tool_calls(text: str) -> ParsedCalls:
    """All ``<tool_call>`` blocks in ``text``, or the first problem found with them."""
    if not isinstance(text, str):
        return ParsedCalls(error=f"expected text, got {type(text).__name__}")
    if OPEN not in text and CLOSE not in text:
        return ParsedCalls()
    calls: list[ToolCall] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        stray = text.find(CLOSE, pos)
        if stray != -1 and (start == -1 or stray < start):
            return ParsedCalls(error=f"found {CLOSE} without a matching {OPEN}. {FORMAT_HINT}", has_markup=True)
        if start == -1:
            break
        body_start = start + len(OPEN)
        end = text.find(CLOSE, body_start)
        nested = text.find(OPEN, body_start)
        if end == -1:
            return ParsedCalls(error=f"unterminated {OPEN}: missing {CLOSE}. {FORMAT_HINT}", has_markup=True)
        if nested != -1 and nested < end:
            return ParsedCalls(error=f"nested {OPEN} inside a tool call. {FORMAT_HINT}", has_markup=True)
        call, error = _parse_body(text[body_start:end], len(calls))
        if error is not None:
            return ParsedCalls(error=error, has_markup=True)
        assert call is not None
        calls.append(call)
        pos = end + len(CLOSE)
    return ParsedCalls(calls=calls, has_markup=True)


FENCE = "```"
_SEPARATOR = re.compile(r"\s*,?\s*")  # between JSON values written one after another


def json_bodies(text: str) -> list[str]:
    """Where calls written as bare JSON may sit: the body of every ```` ``` ```` fence of the message (its
    language tag line dropped; an unterminated last fence runs to the end; text between fences is prose),
    else the whole message."""
    if FENCE not in text:
        return [text.strip()]
    bodies = []
    pos = text.find(FENCE)
    while pos != -1:
        line_end = text.find("\n", pos + len(FENCE))
        if line_end == -1:
            break  # a fence with nothing after its tag line
        close = text.find(FENCE, line_end + 1)
        bodies.append(text[line_end + 1 : len(text) if close == -1 else close].strip())
        pos = -1 if close == -1 else text.find(FENCE, close + len(FENCE))
    return bodies


def decode_json_values(body: str) -> list[Any] | None:
    """The JSON values ``body`` consists of, written one after another (whitespace or one comma between
    them); None when anything else is in it. Raises what ``json`` raises on huge integers (ValueError),
    deep nesting (RecursionError) and absurd sizes (MemoryError)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while pos < len(body):
        try:
            value, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return None
        values.append(value)
        pos = _SEPARATOR.match(body, pos).end()  # type: ignore[union-attr]  # the pattern matches ""
    return values


def parse_json_calls(text: str) -> ParsedCalls:
    """Calls written as JSON without tags: one call object, a list of them, or several of either one
    after another, as the whole message or inside one or more ```` ```json ```` fences (`json_bodies`;
    a body that is not all JSON is prose). ``has_markup`` is True when some body is JSON, so a JSON value
    that is not a call reports why; prose gives an empty result."""
    if not isinstance(text, str):
        return ParsedCalls(error=f"expected text, got {type(text).__name__}")
    items: list[Any] = []
    found = False  # some body is JSON (an empty list is "no call", said in JSON)
    for body in json_bodies(text):
        if not body.startswith(("{", "[")):
            continue
        try:
            values = decode_json_values(body)
        except RecursionError:
            continue  # as for prose: nothing readable
        except (ValueError, MemoryError) as exc:  # JSON all right, but an integer past the int-string limit, or absurd size
            return ParsedCalls(error=f"the JSON call cannot be parsed ({str(exc)[:120] or type(exc).__name__}). "
                                     f"{FORMAT_HINT}", has_markup=True)
        if values is None:
            continue  # prose that happens to start with a bracket
        found = True
        for value in values:
            items.extend(value if isinstance(value, list) else [value])
    if not found:
        return ParsedCalls()
    calls: list[ToolCall] = []
    for i, item in enumerate(items):
        call, error = call_from_object(item, i)
        if error is not None:
            return ParsedCalls(error=error, has_markup=True)
        assert call is not None
        calls.append(call)
    return ParsedCalls(calls=calls, has_markup=True)
