"""BFCL function calling as a single-turn Gymnasium env: reward 1.0 when the calls pass BFCL's AST rules.

The task's functions are offered as the tools schema of our chat format (``info["tools"]``, rendered by
the chat template, BFCL's types mapped to JSON Schema: ``dict`` -> ``object``, ``float`` -> ``number``,
``tuple`` -> ``array``, ``any`` -> ``string``). The agent answers once with zero or more
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, or with the calls as JSON without tags
(one object, a list, or several one after another; bare or in ```` ```json ```` fences, one or several:
`envs.tool_parsing.parse_json_calls`); `envs.bfcl_match` scores them against the ground truth (reward 1.0
when they pass its AST rules, else 0.0) and the episode terminates.
Nothing is executed, and generation does not stop at the first ``</tool_call>`` (``stop_at_tool_call =
False``), so one reply can hold parallel calls. A reply without a valid call counts as "no call" (right
for the irrelevance categories, wrong elsewhere), as on the leaderboard; malformed markup never raises.

Tasks: ``tasks="bfcl:<category>"`` in the env config (`tasks.bfcl`); single-turn Python categories only
(multi_turn_base and the other multi-turn sets are left out: they need BFCL's API state machines).
Training runs ``bfcl:core`` with ``split=train`` (configs/env/bfcl.yaml); the run's held-out evaluation
reads ``split=heldout`` of the same categories, a fixed set no run trains on (`tasks.bfcl`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from envs.base import Message, Outcome, TextEnv
from envs.bfcl_match import match_calls
from envs.tool_parsing import ParsedCalls, parse_json_calls, parse_tool_calls
from reopold_agents.registry import register_env
from tasks.record import Task

JSON_SCHEMA_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}
FLOAT_NOTE = " This is a float type value."  # BFCL adds it for models that see "number" only


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A BFCL parameter schema with its type names turned into JSON Schema's (a new dict, recursively)."""
    out = copy.deepcopy(schema)
    kind = out.get("type")
    if kind == "float":
        out["description"] = str(out.get("description", "")) + FLOAT_NOTE
    if kind is not None:
        out["type"] = JSON_SCHEMA_TYPES.get(kind, kind)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = to_json_schema(out["items"])
    return out


def tool_spec(function: dict[str, Any]) -> dict[str, Any]:
    """One BFCL function doc as an OpenAI/Qwen function spec (what `TextEnv.tool_specs` returns)."""
    return {"type": "function", "function": {
        "name": function["name"], "description": function.get("description", ""),
        "parameters": to_json_schema(function.get("parameters") or {"type": "dict", "properties": {}}),
    }}


def parse_calls(text: str) -> ParsedCalls:
    """``<tool_call>`` blocks, else the calls written as JSON (`envs.tool_parsing.parse_json_calls`): the
    one parser of evaluation and training alike."""
    parsed = parse_tool_calls(text)
    return parsed if parsed.has_markup else parse_json_calls(text)


@register_env("bfcl")
class BFCLEnv(TextEnv):
    """One BFCL entry per episode (category in ``task.meta``); tasks default to ``bfcl:simple_python``.

    Args:
        tasks: BFCL tasks (`tasks.bfcl.load_bfcl`); None loads ``category``.
        category: what is loaded when ``tasks`` is None: a category, ``core`` or ``a+b`` (`tasks.bfcl`).
        split: with ``category``: None (every entry), ``train`` or ``heldout`` (the fixed split).
    """

    default_max_turns = 1
    stop_at_tool_call = False  # parallel answers are several calls in one message
    default_system_prompt = (
        "You are an expert in composing functions. Given a question and a set of functions, make the "
        "function call(s) that achieve the purpose, each as <tool_call>{\"name\": ..., \"arguments\": {...}}"
        "</tool_call>. If none of the functions can be used, or the question lacks the parameters they "
        "need, say so and call nothing."
    )

    def __init__(self, tasks: Sequence[Task] | None = None, *, category: str = "simple_python",
                 split: str | None = None, **kwargs: Any) -> None:
        if tasks is None:
            from tasks.bfcl import load_bfcl

            tasks = load_bfcl(category, split=split)
        for t in tasks[:1]:
            if "bfcl_category" not in t.meta:
                raise ValueError(f"task {t.id!r} is not a BFCL task (load them with tasks='bfcl:<category>')")
        super().__init__(tasks, **kwargs)

    def tool_specs(self) -> list[dict[str, Any]]:
        if self.task is None:
            return []
        return [tool_spec(f) for f in self.task.meta["functions"]]

    def initial_messages(self, task: Task) -> list[Message]:
        """The entry's own messages; our system prompt leads (merged into the entry's system message)."""
        msgs = [dict(m) for m in task.meta["messages"]]
        if self.system_prompt:
            if msgs and msgs[0].get("role") == "system":
                msgs[0]["content"] = f"{self.system_prompt}\n\n{msgs[0]['content']}"
            else:
                msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs

    def respond(self, text: str) -> Outcome:
        assert self.task is not None
        meta = self.task.meta
        parsed = parse_calls(text)
        calls = [] if parsed.error is not None else parsed.calls  # malformed markup = no valid call
        verdict = match_calls(meta["bfcl_category"], meta["functions"], calls, meta["ground_truth"])
        pred = json.dumps([{c.name: c.arguments} for c in calls], ensure_ascii=False, sort_keys=True)
        why = "calls match the ground truth" if verdict.valid else verdict.error
        if parsed.error is not None:
            why += f" (unparsed calls: {parsed.error})"
        return Outcome(
            reward=1.0 if verdict.valid else 0.0, terminated=True, success=verdict.valid, why=why,
            info={"pred": pred, "num_calls": len(calls), "error_type": verdict.error_type, "parse_error": parsed.error},
        )
