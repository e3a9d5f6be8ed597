"""Structure the code keeps (docs/ARCHITECTURE.md): no import cycle, a config layer that knows no behaviour,
a run that is a list of env entries (no single-env/multi-env branches), one place that reads
``model.teacher_engine``, typed config arguments, and the tiny pairs named once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("reopold_agents", "envs", "tools", "tasks")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (top level or inside functions). ``from pkg import sub``
    of submodules counts as importing the submodules only (the package is merely their folder)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            names = subs if len(subs) == len(node.names) else [node.module, *subs]
        out |= {n for n in names if n in known}
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
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


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert "reopold_agents.teacher.build" in graph and "reopold_agents.roles" in graph
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_config_imports_no_behaviour():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("reopold_agents.config"):
            bad = {m for m in _imports(path, set(modules))
                   if m.startswith(("reopold_agents.objectives", "reopold_agents.engines", "reopold_agents.teacher"))}
            assert not bad, f"{name} imports {sorted(bad)}"


def _code_lines(pattern: str, skip_config: bool = True) -> list[str]:
    hits = []
    for path in (ROOT / "reopold_agents").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if skip_config and rel.startswith("reopold_agents/config/"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    return hits


def test_a_run_is_a_list_of_entries_without_mix_branches():
    assert _code_lines(r"cfg\.mix\b") == []


def test_teacher_engine_is_read_in_one_place():
    hits = _code_lines(r"teacher_engine\s*(==|!=|in\b|not in\b)", skip_config=False)
    assert {h.split(":")[0] for h in hits} == {"reopold_agents/config/model.py"}, hits


def test_functions_take_typed_config_sections():
    assert _code_lines(r"\bcfg: Any\b|_cfg: Any\b", skip_config=False) == []


def test_tiny_pairs_are_named_once():
    from reopold_agents.config.tiny_pairs import ENV_TINY, TINY_NAMES, TINY_PAIRS
    from reopold_agents.tiny.load import TINY_SIZES, is_vl_pair
    from reopold_agents.tiny.recipes import RECIPES

    assert set(RECIPES) == set(TINY_NAMES) and all(r.name == n for n, r in RECIPES.items())
    assert set(ENV_TINY.values()) <= set(TINY_NAMES)
    assert {name for name, _ in TINY_SIZES} == set(TINY_NAMES)
    assert [n for n in TINY_NAMES if is_vl_pair(n)] == [n for n, p in TINY_PAIRS.items() if p.vl] == ["tiny_vl", "tiny_vl_bed", "tiny_vqa_know"]
