"""Tools an agent may call (`base`: Tool protocol and registry) and sandbox backends (`sandbox/`).

Importing the package registers the built-in tools (python, calculator, search, bar_chart);
`reopold_agents.registry.TOOLS` imports it lazily on first lookup.
"""

from tools.base import FunctionTool, Tool, ToolResult, get_tool, register_tool, tool_names
from tools import calculator, chart, python_tool, search  # noqa: F401  (register the built-ins)

__all__ = ["FunctionTool", "Tool", "ToolResult", "get_tool", "register_tool", "tool_names"]
