"""The ``tasks`` package has no import cycle (function-level imports counted), and every task source raises
the one ``TaskLoadError`` (``tasks.errors``), however it is imported."""

from __future__ import annotations

import ast
from pathlib import Path

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def _module_name(path: Path) -> str:
    parts = path.relative_to(TASKS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules of ``tasks`` that ``path`` imports anywhere (top level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in TASKS.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_tasks_package_has_no_import_cycle():
    graph = _graph()
    assert "tasks.loaders" in graph and "tasks.bfcl" in graph and "tasks.reasoning_gym_tasks" in graph
    assert "tasks.loaders" not in graph["tasks.bfcl"] | graph["tasks.reasoning_gym_tasks"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_one_task_load_error_for_every_source():
    import tasks
    import tasks.bfcl
    import tasks.loaders
    import tasks.reasoning_gym_tasks
    from tasks.errors import TaskLoadError

    for mod in (tasks, tasks.loaders, tasks.bfcl, tasks.reasoning_gym_tasks):
        assert mod.TaskLoadError is TaskLoadError, mod.__name__
