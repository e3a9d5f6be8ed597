"""Tool protocol: schema derivation, argument validation, result conversion, registry and plugins, docs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Literal, Optional

import pytest
from PIL import Image

import reopold_agents as ra
from reopold_agents.registry import Registry
from tools import base
from tools.base import FunctionTool, Tool, ToolResult, get_tool, register_tool, schema_from_function, to_result

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry(monkeypatch) -> Registry:
    """A fresh tool registry (built-ins loaded) so tests can register names freely."""
    from reopold_agents.registry import TOOLS

    fresh = Registry("tool", "tools", "reopold_agents.tools")
    fresh._items = {name: TOOLS.get(name) for name in TOOLS.names()}
    monkeypatch.setattr(base, "TOOLS", fresh)
    return fresh


def _kitchen_sink(
    text: str,
    count: int,
    ratio: float,
    flag: bool,
    items: list[int],
    table: dict[str, float],
    mode: Literal["fast", "slow"] = "fast",
    note: Optional[str] = None,
    limit: int | None = 5,
) -> str:
    """Do everything at once.

    A longer explanation on a second paragraph.

    Args:
        text: some text.
        count: how many.
        ratio: a fraction.
        flag: on or off.
        items: integers.
        table: name to value.
        mode: speed.
        note: optional note.
        limit: optional cap.
    """
    return f"{text}|{count}|{ratio!r}|{flag}|{items}|{table}|{mode}|{note}|{limit}"


# --------------------------------------------------------------------------------- schema


def test_schema_from_signature_and_google_docstring() -> None:
    name, desc, params = schema_from_function(_kitchen_sink)
    assert name == "_kitchen_sink"
    assert desc == "Do everything at once.\n\nA longer explanation on a second paragraph."
    props = params["properties"]
    assert props["text"] == {"type": "string", "description": "some text."}
    assert props["count"] == {"type": "integer", "description": "how many."}
    assert props["ratio"]["type"] == "number" and props["flag"]["type"] == "boolean"
    assert props["items"] == {"type": "array", "items": {"type": "integer"}, "description": "integers."}
    assert props["table"]["type"] == "object" and props["table"]["additionalProperties"] == {"type": "number"}
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"], "description": "speed.", "default": "fast"}
    assert props["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}] and props["note"]["default"] is None
    assert props["limit"]["anyOf"] == [{"type": "integer"}, {"type": "null"}] and props["limit"]["default"] == 5
    assert params["required"] == ["text", "count", "ratio", "flag", "items", "table"]
    assert params["additionalProperties"] is False


def test_numpy_and_rest_docstrings() -> None:
    def np_style(x: int) -> str:
        """Double it.

        Parameters
        ----------
        x : int
            the number.
        """
        return str(2 * x)

    def rest_style(x: int) -> str:
        """Double it.

        :param x: the number.
        """
        return str(2 * x)

    for fn in (np_style, rest_style):
        _, desc, params = schema_from_function(fn)
        assert desc == "Double it." and params["properties"]["x"]["description"] == "the number."


def test_bad_signatures_fail_at_registration() -> None:
    def no_hint(x) -> str:
        """Doc."""

    def star(*args: int) -> str:
        """Doc."""

    def weird(x: complex) -> str:
        """Doc."""

    def wrong_doc(x: int) -> str:
        """Doc.

        Args:
            y: not a parameter.
        """

    def no_doc(x: int) -> str:
        return ""

    with pytest.raises(TypeError, match="parameter 'x': missing type annotation"):
        FunctionTool(no_hint)
    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):
        FunctionTool(star)
    with pytest.raises(TypeError, match="parameter 'x': cannot express type"):
        FunctionTool(weird)
    with pytest.raises(TypeError, match=r"documents unknown parameter\(s\) \['y'\]"):
        FunctionTool(wrong_doc)
    with pytest.raises(TypeError, match="give it a docstring"):
        FunctionTool(no_doc)


def test_spec_is_openai_function_format() -> None:
    tool = FunctionTool(_kitchen_sink, name="sink")
    spec = tool.spec()
    assert spec["type"] == "function" and spec["function"]["name"] == "sink"
    assert spec["function"]["parameters"] is tool.parameters


# ----------------------------------------------------------------------------- validation


GOOD = {"text": "t", "count": 2, "ratio": 0.5, "flag": True, "items": [1, 2], "table": {"a": 1.5}}


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({k: v for k, v in GOOD.items() if k != "count"}, "missing required argument(s): 'count'"),
        ({**GOOD, "bogus": 1}, "unexpected argument(s): 'bogus' (accepted: 'text', 'count',"),
        ({**GOOD, "count": "2"}, "argument 'count': '2' (string) is not of type integer"),
        ({**GOOD, "count": True}, "argument 'count': True (boolean) is not of type integer"),
        ({**GOOD, "count": 2.5}, "argument 'count': 2.5 (number) is not of type integer"),
        ({**GOOD, "ratio": "half"}, "argument 'ratio': 'half' (string) is not of type number"),
        ({**GOOD, "flag": "yes"}, "argument 'flag': 'yes' (string) is not of type boolean"),
        ({**GOOD, "items": [1, "x"]}, "argument 'items[1]': 'x' (string) is not of type integer"),
        ({**GOOD, "items": 3}, "argument 'items': 3 (integer) is not of type array"),
        ({**GOOD, "table": {"a": "b"}}, "argument 'table['a']': 'b' (string) is not of type number"),
        ({**GOOD, "mode": "medium"}, "argument 'mode': 'medium' (string) is not one of 'fast', 'slow'"),
        ({**GOOD, "note": 7}, "argument 'note': 7 (integer)"),
    ],
)
def test_validation_errors_are_results_not_exceptions(kwargs: dict, expected: str) -> None:
    res = FunctionTool(_kitchen_sink, name="sink")(**kwargs)
    assert res.is_error and res.text.startswith("invalid arguments for tool 'sink': ")
    assert expected in res.text, res.text


def test_several_problems_reported_together() -> None:
    res = FunctionTool(_kitchen_sink, name="sink")(count="x", zzz=1)
    assert res.is_error
    for part in ("missing required argument(s): 'text', 'ratio'", "unexpected argument(s): 'zzz'",
                 "argument 'count': 'x' (string) is not of type integer"):
        assert part in res.text


def test_valid_call_coerces_json_numbers() -> None:
    res = FunctionTool(_kitchen_sink, name="sink")(**{**GOOD, "ratio": 1, "count": 3.0, "note": None, "limit": None})
    assert not res.is_error
    assert res.text == "t|3|1.0|True|[1, 2]|{'a': 1.5}|fast|None|None"


def test_exceptions_inside_tools_become_error_results() -> None:
    def explode(x: int) -> str:
        """Fail."""
        raise RuntimeError(f"kaboom {x}")

    res = FunctionTool(explode)(x=1)
    assert res == ToolResult(text="tool 'explode' failed: RuntimeError: kaboom 1", is_error=True)


def test_result_conversion() -> None:
    img = Image.new("RGB", (4, 4))
    assert to_result("hi") == ToolResult("hi")
    assert to_result({"a": [1, 2]}).text == '{"a": [1, 2]}'
    assert to_result(None).text == ""
    assert to_result(img).images == [img]
    assert to_result(("look", img)) == ToolResult("look", [img])
    assert to_result(("look", [img, img])).images == [img, img]
    assert to_result({1, 2}).text == "{1, 2}"  # not a JSON type: str()
    assert to_result(3.5).text == "3.5" and to_result(True).text == "true"
    assert to_result(ToolResult("x", is_error=True)).is_error


# ------------------------------------------------------------------------------- registry


def test_register_function_and_get_tool(registry: Registry) -> None:
    @register_tool("shout")
    def shout(text: str, times: int = 1) -> str:
        """Upper-case text.

        Args:
            text: input.
            times: repetitions.
        """
        return text.upper() * times

    assert shout("a", 2) == "AA"  # still a plain function
    tool = get_tool("shout")
    assert tool is shout.tool and isinstance(tool, FunctionTool) and tool.name == "shout"
    assert tool(text="hey").text == "HEY"
    assert "shout" in registry.names() and {"python", "calculator", "search", "bar_chart"} <= set(registry.names())
    def other(text: str) -> str:
        """Another tool under a taken name."""
        return text

    with pytest.raises(ValueError, match="already registered"):
        register_tool("shout")(other)
    with pytest.raises(TypeError, match="not configurable"):
        get_tool("shout", corpus="x")
    with pytest.raises(KeyError, match="unknown tool 'nope'; registered: .*shout"):
        get_tool("nope")


def test_register_class_and_instance(registry: Registry) -> None:
    @register_tool("echo")
    class Echo(Tool):
        description = "Echo."
        parameters = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"],
                      "additionalProperties": False}

        def __init__(self, prefix: str = "") -> None:
            self.prefix = prefix

        def run(self, s: str) -> str:
            return self.prefix + s

    assert Echo.name == "echo"
    assert get_tool("echo", prefix="> ")(s="x").text == "> x"
    assert get_tool("echo") is not get_tool("echo")  # classes build a new tool per call
    inst = Echo(prefix="!")
    inst.name = "bang"
    register_tool("bang")(inst)
    assert get_tool("bang") is inst
    with pytest.raises(TypeError, match="expected a function, Tool subclass or Tool"):
        register_tool("bad")(42)


def test_public_api_is_reexported_lazily() -> None:
    assert ra.register_tool is register_tool and ra.get_tool is get_tool
    assert ra.Tool is Tool and ra.ToolResult is ToolResult
    assert {"python", "calculator", "search", "bar_chart"} <= set(ra.TOOLS.names())


def test_entry_point_plugin(tmp_path: Path, monkeypatch) -> None:
    """A pip-installed plugin (dist-info with an entry point) registers its tools with no import."""
    (tmp_path / "reopold_plugin_demo.py").write_text(textwrap.dedent('''
        import reopold_agents as ra

        def reverse(text: str) -> str:
            """Reverse a string.

            Args:
                text: the string.
            """
            return text[::-1]

        @ra.register_tool("plugin_upper")
        def upper(text: str) -> str:
            """Upper-case a string."""
            return text.upper()
    '''))
    dist = tmp_path / "reopold_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: reopold-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[reopold_agents.tools]\nplugin_reverse = reopold_plugin_demo:reverse\n"
        "plugin_module = reopold_plugin_demo\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = Registry("tool", "tools", "reopold_agents.tools")
    monkeypatch.setattr(base, "TOOLS", fresh)
    tool = get_tool("plugin_reverse")  # a plain function from an entry point: wrapped on first use
    assert isinstance(tool, FunctionTool) and tool.description == "Reverse a string."
    assert tool(text="abc").text == "cba"
    assert get_tool("plugin_reverse") is tool
    assert get_tool("plugin_upper")(text="abc").text == "ABC"  # registered by importing the module


# ----------------------------------------------------------------------------------- docs


def test_docs_custom_tool_example(registry: Registry, capsys) -> None:
    doc = (REPO / "docs/tools.md").read_text()
    blocks = re.findall(r"<!-- tested: [^>]+ -->\n```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 2
    func_block, class_block = blocks
    assert len(func_block.strip().splitlines()) <= 15  # "a custom tool in under 15 lines"
    exec(compile(func_block, "docs/tools.md", "exec"), {})
    assert capsys.readouterr().out == "'banana' has 3 vowels\n"
    spec = get_tool("word_length").spec()["function"]
    assert spec["parameters"]["required"] == ["word"]
    assert spec["parameters"]["properties"]["unit"]["description"] == '"letters" or "vowels".'
    exec(compile(class_block, "docs/tools.md", "exec"), {})
    assert capsys.readouterr().out == "Tokyo\n"
    assert get_tool("capital_of")(country="Spain").text == "unknown country 'Spain'"
