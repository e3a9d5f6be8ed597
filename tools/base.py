"""The Tool protocol, `ToolResult`, `FunctionTool` and the tool registry API.

A tool is what an agent may call from a ``<tool_call>``: it has a ``name``, a ``description`` and a JSON
schema of its ``parameters``; calling it with keyword arguments returns a `ToolResult`. Calls are made
with model-written arguments, so `Tool.__call__` validates them against the schema and turns every
failure (bad arguments, an exception inside the tool) into an error `ToolResult` instead of raising:
an environment can pass the text straight back to the model.

Public API (re-exported by ``reopold_agents``)::

    @register_tool("lookup")
    def lookup(query: str, k: int = 3) -> str:
        '''Look a word up.

        Args:
            query: the word.
            k: how many entries.
        '''
    tool = get_tool("lookup")          # a FunctionTool with the derived JSON schema
    tool(query="cat")                  # ToolResult(text=..., images=[], is_error=False)
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

import docstring_parser
import jsonschema

from reopold_agents.registry import TOOLS
from tools.text_bounds import safe_repr

__all__ = [
    "FunctionTool",
    "Tool",
    "ToolResult",
    "get_tool",
    "register_tool",
    "schema_from_function",
    "tool_names",
]


@dataclass
class ToolResult:
    """What a tool returns: text for the model, optional PIL images (a VLM agent sees them)."""

    text: str
    images: list = field(default_factory=list)
    is_error: bool = False

    @classmethod
    def error(cls, text: str) -> "ToolResult":
        return cls(text=text, is_error=True)


class Tool:
    """Base class of tools. Subclasses set ``name``, ``description``, ``parameters`` and implement `run`.

    ``__call__`` validates the keyword arguments against ``parameters`` (missing, unexpected and
    mistyped arguments become a clear error result), calls `run`, and converts its return value
    (str, ToolResult, PIL image, dict/list -> JSON) into a `ToolResult`. Exceptions raised by `run`
    become error results too; a tool never raises out of a call.
    """

    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = {"type": "object", "properties": {}, "required": []}

    def run(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.run")

    def spec(self) -> dict[str, Any]:
        """The OpenAI/Qwen function spec that chat templates render into the system prompt."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, kwargs: dict[str, Any]) -> str | None:
        """Return None if ``kwargs`` match ``parameters``, else a message naming each problem."""
        return validate_arguments(self.name, self.parameters, kwargs)

    def __call__(self, **kwargs: Any) -> ToolResult:
        # Validation walks model-written values too (deep nesting, huge ints): inside the same guard.
        try:
            problem = self.validate(kwargs)
            if problem is not None:
                return ToolResult.error(problem)
            return to_result(self.run(**_coerce_numbers(self.parameters, kwargs)))
        except Exception as exc:  # noqa: BLE001 - the model must see the failure, the env must not crash
            return ToolResult.error(f"tool {self.name!r} failed: {type(exc).__name__}: {_exc_text(exc)}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _exc_text(exc: BaseException, max_chars: int = 500) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure itself
        return "(message unavailable)"
    return text if len(text) <= max_chars else text[:max_chars] + "..."


def to_result(out: Any) -> ToolResult:
    """Convert a tool's return value into a ToolResult (str, ToolResult, PIL image, (text, images), JSON)."""
    if isinstance(out, ToolResult):
        return out
    if isinstance(out, str):
        return ToolResult(text=out)
    if _is_image(out):
        return ToolResult(text="<image>", images=[out])
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str):
        imgs = out[1] if isinstance(out[1], list) else [out[1]]
        return ToolResult(text=out[0], images=list(imgs))
    if out is None:
        return ToolResult(text="")
    if isinstance(out, (dict, list, int, float, bool)):
        try:
            return ToolResult(text=json.dumps(out, ensure_ascii=False, default=str))
        except (TypeError, ValueError, RecursionError):  # circular or absurdly deep structures, huge ints
            pass
    return ToolResult(text=str(out))


def _is_image(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


# ----------------------------------------------------------------------------------- validation


_JSON_TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _describe(value: Any) -> str:
    kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    return f"{safe_repr(value, 63)} ({kind})"


def validate_arguments(tool_name: str, schema: dict[str, Any], kwargs: dict[str, Any]) -> str | None:
    """Check ``kwargs`` against an object schema; None when valid, else one readable message."""
    props: dict[str, Any] = schema.get("properties", {})
    required = list(schema.get("required", []))
    problems: list[str] = []
    missing = [k for k in required if k not in kwargs]
    if missing:
        problems.append("missing required argument(s): " + ", ".join(repr(m) for m in missing))
    if schema.get("additionalProperties", False) is False:
        extra = [k for k in kwargs if k not in props]
        if extra:
            accepted = ", ".join(repr(p) for p in props) or "none"
            problems.append(
                "unexpected argument(s): " + ", ".join(repr(e) for e in extra) + f" (accepted: {accepted})"
            )
    for key, value in kwargs.items():
        if key not in props:
            continue
        validator = jsonschema.Draft202012Validator(props[key])
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            where = key + "".join(f"[{p!r}]" for p in err.path)
            problems.append(f"argument '{where}': {_describe(err.instance)} {_short(err)}")
    if not problems:
        return None
    return f"invalid arguments for tool {tool_name!r}: " + "; ".join(problems)


def _short(err: jsonschema.ValidationError) -> str:
    if err.validator == "type":
        expected = err.validator_value
        if isinstance(expected, list):
            expected = " or ".join(expected)
        return f"is not of type {expected}"
    if err.validator == "enum":
        return "is not one of " + ", ".join(repr(v) for v in err.validator_value)
    return err.message.split("\n")[0]


def _coerce_numbers(schema: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON has one number type: give a ``float`` parameter a float even when the model wrote ``3``."""
    props = schema.get("properties", {})
    out = dict(kwargs)
    for key, value in kwargs.items():
        spec = props.get(key, {})
        if "anyOf" in spec:  # Optional[float] and friends: coerce when exactly one branch is numeric
            numeric = [b for b in spec["anyOf"] if b.get("type") in ("number", "integer")]
            spec = numeric[0] if len(numeric) == 1 else spec
        if spec.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        elif spec.get("type") == "integer" and isinstance(value, float) and value.is_integer():
            out[key] = int(value)
    return out


# ------------------------------------------------------------------------------- schema derivation


def _type_schema(tp: Any, where: str) -> tuple[dict[str, Any], bool]:
    """JSON schema of a type annotation; the flag says whether ``None`` is allowed."""
    if tp is Any or tp is inspect.Parameter.empty:
        return {}, False
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        nullable = len(non_none) < len(args)
        if len(non_none) == 1:
            return _type_schema(non_none[0], where)[0], nullable
        return {"anyOf": [_type_schema(a, where)[0] for a in non_none]}, nullable
    if origin is Literal:
        kinds = {_JSON_TYPE_NAMES.get(type(a)) for a in args}
        schema = {"enum": list(args)}
        if len(kinds) == 1 and None not in kinds:
            schema = {"type": kinds.pop(), "enum": list(args)}
        return schema, False
    if tp in (str, int, float, bool):
        return {"type": _JSON_TYPE_NAMES[tp]}, False
    if tp is list or origin in (list, tuple, set, frozenset, typing.Sequence):
        schema: dict[str, Any] = {"type": "array"}
        if args and origin is not tuple:
            schema["items"] = _type_schema(args[0], where)[0]
        return schema, False
    if tp is dict or origin is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _type_schema(args[1], where)[0]
        return schema, False
    raise TypeError(f"{where}: cannot express type {tp!r} as JSON schema (use str/int/float/bool/list/dict/Literal)")


def schema_from_function(fn: Callable[..., Any], name: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """Derive ``(name, description, parameters)`` from ``fn``'s signature, type hints and docstring.

    Every parameter must be annotated (the model needs to know what to send); parameters with a default
    are optional; ``Optional[X]`` / ``X | None`` parameters accept null. The docstring's summary becomes
    the description, its ``Args:`` entries the parameter descriptions (Google, NumPy, reST styles).
    """
    tool_name = name or fn.__name__
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"tool {tool_name!r}: cannot resolve type hints: {exc}") from None
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    param_docs = {p.arg_name: (p.description or "").strip() for p in doc.params}
    description = "\n\n".join(s for s in (doc.short_description, doc.long_description) if s).strip()
    props: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in inspect.signature(fn).parameters.items():
        where = f"tool {tool_name!r} parameter {pname!r}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{where}: *args/**kwargs cannot be described by a JSON schema")
        if pname not in hints:
            raise TypeError(f"{where}: missing type annotation (needed to derive the JSON schema)")
        schema, nullable = _type_schema(hints[pname], where)
        if nullable:
            schema = {"anyOf": [schema, {"type": "null"}]} if schema else {}
        if param_docs.get(pname):
            schema["description"] = param_docs[pname]
        if param.default is param.empty:
            required.append(pname)
        elif _jsonable(param.default):
            schema["default"] = param.default
        props[pname] = schema
    unknown_doc = set(param_docs) - set(props)
    if unknown_doc:
        raise TypeError(f"tool {tool_name!r}: docstring documents unknown parameter(s) {sorted(unknown_doc)}")
    return tool_name, description, {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class FunctionTool(Tool):
    """A Tool wrapping a plain function; schema derived by `schema_from_function`."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> None:
        self.fn = fn
        self.name, derived, self.parameters = schema_from_function(fn, name)
        self.description = description if description is not None else derived
        if not self.description:
            raise TypeError(f"tool {self.name!r}: give it a docstring (the model reads it as the description)")

    def run(self, **kwargs: Any) -> Any:
        return self.fn(**kwargs)


# ---------------------------------------------------------------------------------------- registry


def register_tool(name: str) -> Callable[[Any], Any]:
    """Register a function (wrapped in `FunctionTool`), a `Tool` subclass or a `Tool` instance.

    Functions are returned unchanged (still plain callables) with the built tool attached as ``.tool``;
    the schema is derived at registration, so a bad signature fails at import, not mid-episode.
    Plugins register through the entry-point group ``reopold_agents.tools`` (the entry point may name a
    function, a Tool class/instance, or a module that registers on import).
    """

    def deco(obj: Any) -> Any:
        if isinstance(obj, type) and issubclass(obj, Tool):
            if not getattr(obj, "name", ""):
                obj.name = name
            TOOLS.register(name, obj)
            return obj
        if isinstance(obj, Tool):
            TOOLS.register(name, obj)
            return obj
        if callable(obj):
            tool = FunctionTool(obj, name=name)
            TOOLS.register(name, tool)
            obj.tool = tool
            return obj
        raise TypeError(f"register_tool({name!r}): expected a function, Tool subclass or Tool, got {obj!r}")

    return deco


def get_tool(name: str, **kwargs: Any) -> Tool:
    """Build the registered tool ``name``; ``kwargs`` go to a Tool class's constructor.

    ``get_tool("python", sandbox=sb)``, ``get_tool("search", corpus="docs.jsonl")``.
    """
    obj = TOOLS.get(name)
    if isinstance(obj, type) and issubclass(obj, Tool):
        tool = obj(**kwargs)
        if not tool.name:
            tool.name = name
        return tool
    if kwargs:
        raise TypeError(f"tool {name!r} is not configurable (got arguments {sorted(kwargs)})")
    if isinstance(obj, Tool):
        return obj
    if callable(obj):  # a plain function from an entry point
        tool = FunctionTool(obj, name=name)
        TOOLS.register(name, tool, overwrite=True)
        return tool
    raise TypeError(f"registered tool {name!r} is neither a Tool nor a function: {obj!r}")


def tool_names() -> list[str]:
    """Names of all registered tools (built-ins and plugins)."""
    return TOOLS.names()
