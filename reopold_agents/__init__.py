"""reopold-agents: on-policy distillation (REOPOLD) of language and vision-language agents.

Public API (see README): ``make_env``, ``register_env``, ``register_tool``, ``TextEnv``, ``Trajectory``.
Environment and tool classes live in the top-level ``envs`` and ``tools`` packages and are imported
lazily here, so ``import reopold_agents`` stays light and free of import cycles.
"""

from __future__ import annotations

from typing import Any

from reopold_agents.threads import set_env_defaults

set_env_defaults()  # OMP_WAIT_POLICY before torch loads (reopold_agents/threads.py); the user's value wins

from reopold_agents.registry import ENVS, TOOLS, make_env, register_env  # noqa: E402
from reopold_agents.trajectory import Batch, Trajectory, collate  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "TextEnv": ("envs.base", "TextEnv"),
    "register_tool": ("tools.base", "register_tool"),
    "Tool": ("tools.base", "Tool"),
    "ToolResult": ("tools.base", "ToolResult"),
    "get_tool": ("tools.base", "get_tool"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'reopold_agents' has no attribute {name!r}")


__all__ = ["ENVS", "TOOLS", "Batch", "Trajectory", "collate", "make_env", "register_env", *_LAZY]
