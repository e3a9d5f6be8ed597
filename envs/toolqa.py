"""Multi-turn tool use: the agent calls tools with ``<tool_call>`` and ends with ``\\boxed{answer}``.

Each assistant message is exactly one of:

- a tool call ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one per message): the env
  runs the tool and answers with a ``tool`` message (its text, plus image parts when the tool returns
  images, which also join ``obs["images"]``);
- a final answer (no tool-call tags, a ``\\boxed{...}`` or ``<answer>...</answer>``): scored, the
  episode terminates;
- anything else: a ``user`` nudge naming both formats.

A malformed call (bad JSON, unknown tool, wrong or missing arguments, several calls, empty, unterminated
or stray tags) never raises out of `step`: the agent gets a ``tool`` message starting with ``Error:``
and ``info["tool_error"]`` holds the same text. Tool output longer than ``max_tool_chars`` is cut.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from PIL import Image

from envs.base import Message, Outcome, TextEnv
from envs.tool_parsing import parse_tool_calls
from reopold_agents.registry import TOOLS, register_env
from tools.text_bounds import bounded_text

TOOLQA_NUDGE = (
    'Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call> '
    "or give your final answer as \\boxed{...}."
)


def build_tool(name: str, *, sandbox: Any = None, corpus: str | None = None) -> Any:
    """The registered tool ``name``, given the sandbox / corpus when its constructor takes them."""
    from tools.base import get_tool

    obj = TOOLS.get(name)
    kwargs: dict[str, Any] = {}
    if isinstance(obj, type):
        params = inspect.signature(obj.__init__).parameters
        if sandbox is not None and "sandbox" in params:
            kwargs["sandbox"] = sandbox
        if corpus is not None and "corpus" in params:
            kwargs["corpus"] = corpus
    return get_tool(name, **kwargs)


def tool_message(name: str | None, text: str, images: Sequence[Any] = ()) -> Message:
    msg: Message = {"role": "tool", "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}] if images else text}
    if name:
        msg["name"] = name
    return msg


@register_env("toolqa")
class ToolQAEnv(TextEnv):
    """Questions answered with tools (default: ``search`` over the shipped corpus and ``calculator``).

    Args:
        tools: tool names (built with `build_tool`) or ready `tools.base.Tool` objects.
        sandbox: a `tools.sandbox.Sandbox` given to tools that take one (the ``python`` tool).
        corpus: the document file given to tools that take one (default: the shipped toolqa corpus).
        max_tool_chars: longer tool output is cut to this many characters.
    """

    task_kind = "toolqa"
    default_max_turns = 6
    default_system_prompt = (
        "You are a helpful assistant. Use the tools to find facts and compute; "
        "call one tool per message and give the final answer as \\boxed{...}."
    )

    def __init__(
        self,
        tasks: Any = None,
        *,
        tools: Sequence[Any] = ("search", "calculator"),
        sandbox: Any = None,
        corpus: str | None = None,
        max_tool_chars: int = 2000,
        **kwargs: Any,
    ) -> None:
        if max_tool_chars < 1:
            raise ValueError(f"max_tool_chars must be >= 1, got {max_tool_chars}")
        if corpus is None:
            from tasks.synthetic.toolqa_gen import corpus_path

            corpus = corpus_path()
        self.max_tool_chars = max_tool_chars
        self.tools: dict[str, Any] = {}
        for t in tools:
            tool = build_tool(t, sandbox=sandbox, corpus=corpus) if isinstance(t, str) else t
            if tool.name in self.tools:
                raise ValueError(f"tool {tool.name!r} given twice")
            self.tools[tool.name] = tool
        super().__init__(tasks, **kwargs)

    def tool_specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools.values()]

    def respond(self, text: str) -> Outcome:
        parsed = parse_tool_calls(text)
        if not parsed.has_markup:
            out = self.finish_or_nudge(text)
            if not out.terminated:
                out.messages = [{"role": "user", "content": TOOLQA_NUDGE}]
            return out
        if self.turn >= self.max_turns:
            return Outcome(why="tool call on the last turn", info={"tool_skipped": True})
        if parsed.error is not None:
            return self._error(None, parsed.error)
        if len(parsed.calls) > 1:
            names = ", ".join(c.name for c in parsed.calls)
            return self._error(None, f"{len(parsed.calls)} tool calls in one message ({names}); call one tool per message.")
        call = parsed.calls[0]
        tool = self.tools.get(call.name)
        if tool is None:
            return self._error(call.name, f"unknown tool {call.name!r}; available tools: {', '.join(self.tools) or 'none'}.")
        try:
            result = tool(**call.arguments)
        except Exception as exc:  # noqa: BLE001 - plugin tools might raise; the episode must go on
            return self._error(call.name, f"tool {call.name!r} raised {type(exc).__name__}: {exc}")
        from tools.base import to_result

        result = to_result(result)
        images = [im for im in result.images if isinstance(im, Image.Image)]
        if len(images) != len(result.images):
            return self._error(call.name, f"tool {call.name!r} returned images that are not PIL images")
        body = result.text if isinstance(result.text, str) else str(result.text)
        if result.is_error:
            return self._error(call.name, body, images)
        body = bounded_text(body, self.max_tool_chars)
        return Outcome(messages=[tool_message(call.name, body, images)],
                       info={"tool_name": call.name, "tool_error": None, "num_calls": 1})

    def message_limit(self, message: Message) -> int:
        return self.max_tool_chars if message.get("role") == "tool" else super().message_limit(message)

    def _error(self, name: str | None, why: str, images: Sequence[Any] = ()) -> Outcome:
        text = bounded_text(why if why.startswith("Error:") else f"Error: {why}", self.max_tool_chars)
        name = bounded_text(name, 200) if name is not None else None
        return Outcome(messages=[tool_message(name, text, images)], why=text,
                       info={"tool_name": name, "tool_error": text, "num_calls": 1})
