"""Name -> factory registries for environments and tools.

Built-ins register themselves when `envs` / `tools` are imported; third-party packages register through
the entry-point groups ``reopold_agents.envs`` and ``reopold_agents.tools`` (loaded lazily, once), so a
``pip install`` is all a plugin needs.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Registry:
    """A named mapping with lazy loading of built-ins and entry-point plugins."""

    def __init__(self, kind: str, builtin_module: str, entry_point_group: str) -> None:
        self.kind = kind
        self._builtin_module = builtin_module
        self._group = entry_point_group
        self._items: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""

        def _add(item: Any) -> Any:
            if name in self._items and self._items[name] is not item and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
            self._items[name] = item
            return item

        return _add if obj is None else _add(obj)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self._builtin_module)
        for ep in entry_points(group=self._group):
            if ep.name not in self._items:
                loaded = ep.load()
                # An entry point may name the object itself or a module that registers on import.
                if not isinstance(loaded, type(importlib)):
                    self._items.setdefault(ep.name, loaded)

    def get(self, name: str) -> Any:
        if name not in self._items:
            self._load()
        if name not in self._items:
            known = ", ".join(sorted(self.names())) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


ENVS = Registry("env", "envs", "reopold_agents.envs")
TOOLS = Registry("tool", "tools", "reopold_agents.tools")


def register_env(name: str) -> Callable[[T], T]:
    """Class decorator: make ``ra.make_env(name)`` build this environment."""
    return ENVS.register(name)


def make_env(name: str, **kwargs: Any):
    """Build a registered environment by name (a ``gymnasium.Env``)."""
    return ENVS.get(name)(**kwargs)
