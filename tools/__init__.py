"""Tools an agent may call (`base`: Tool protocol and registry) and sandbox backends (`sandbox/`).

Importing the package registers the built-in tools; `reopold_agents.registry.TOOLS` imports it lazily.
"""

from tools.base import FunctionTool, Tool, ToolResult, get_tool, register_tool, tool_names

__all__ = ["FunctionTool", "Tool", "ToolResult", "get_tool", "register_tool", "tool_names"]
