"""BFCL test entries as `Task` records, read from the files the ``bfcl-eval`` package ships.

``load_tasks("bfcl:simple_python")`` reads ``bfcl_eval/data/BFCL_v4_simple_python.json`` (JSON lines
``{"id", "question": [[messages]], "function": [docs]}``) and its ``possible_answer/`` twin
(``{"id", "ground_truth": [{fn: {arg: [allowed]}}]}``). The package is only located, never imported: its
checker pulls heavy pinned dependencies, so it is installed with ``--no-deps`` for its data
(``pip install .[bench]``, scripts/setup.sh) and scored by `envs.bfcl_match`.

Each task keeps what the env and the matcher need in ``meta``: ``bfcl_category``, ``messages`` (the
single turn's system/user messages), ``functions`` (the docs, BFCL's own schema) and ``ground_truth``
(None for the irrelevance/relevance categories, which have no answer file). ``answer`` is the ground
truth as JSON text (``[]`` when no call is expected), for records and reports.

Training on BFCL needs a fixed split, so that the held-out score is never measured on trained entries:
``split="train" | "heldout"`` (``env.split``) of the five non-live single-turn categories (``CORE``;
``bfcl:core`` loads all five). Each category's entries are ordered by ``sha256(SPLIT_SEED:id)`` and the
first ``HELDOUT_PER_CATEGORY`` are held out: the split depends on the entry ids alone, never on a run's
seed, on the other categories asked for or on ``limit``. A split of several categories interleaves them
one entry at a time, so the first N tasks (``env.size``, ``trainer.heldout_tasks``) keep the categories
balanced. ``split=None`` is every entry in file order (the evaluation suites).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from tasks.errors import TaskLoadError
from tasks.record import Task

PACKAGE = "bfcl-eval==2026.3.23"
FILE_PREFIX = "BFCL_v4_"
# Single-turn Python categories the matcher implements (the leaderboard's AST + relevance categories).
CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "irrelevance",
    "live_irrelevance",
    "live_relevance",
)
NO_ANSWER_FILE = ("irrelevance", "live_irrelevance", "live_relevance")
LEFT_OUT = {
    "simple_java": "Java argument strings need BFCL's Java type converter",
    "simple_javascript": "JavaScript argument strings need BFCL's JS type converter",
    "multi_turn_base": "multi-turn entries need BFCL's API state machines",
    "multi_turn_miss_func": "multi-turn entries need BFCL's API state machines",
    "multi_turn_miss_param": "multi-turn entries need BFCL's API state machines",
    "multi_turn_long_context": "multi-turn entries need BFCL's API state machines",
    "memory": "agentic category scored on model state, not AST",
    "web_search": "agentic category that needs live web search",
    "format_sensitivity": "a prompt-format sweep, not a test set",
}


# The fixed train / held-out split (docs/envs.md "bfcl"): the five non-live single-turn Python categories.
CORE = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
SPLITS = ("train", "heldout")
SPLIT_SEED = 0  # part of the split's definition: changing it changes which entries are held out
HELDOUT_PER_CATEGORY = 50  # held out of each CORE category (400/200/200/200/240 entries: 990 train, 250 held out)


class BFCLDataError(TaskLoadError):
    """The bfcl-eval package or one of its data files is missing, or a category is not supported."""


def data_dir() -> Path:
    """``bfcl_eval/data`` of the installed package, located without importing it."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BFCLDataError(f"the BFCL data needs the bfcl-eval package: pip install --no-deps '{PACKAGE}' "
                            "(or pip install '.[bench]'; scripts/setup.sh does it)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not folder.is_dir():
        raise BFCLDataError(f"{folder}: bfcl-eval is installed but has no data folder (expected {PACKAGE})")
    return folder


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise BFCLDataError(f"{path}: not found (is bfcl-eval the expected version, {PACKAGE}?)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BFCLDataError(f"{path}:{n}: invalid JSON: {exc.msg}") from None
    return rows


def _question_text(messages: list[dict[str, Any]], where: str) -> str:
    users = [m.get("content") for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if not users or not users[-1].strip():
        raise BFCLDataError(f"{where}: the turn has no user message")
    return users[-1]


def category_names(source: str) -> list[str]:
    """The categories a ``bfcl:<source>`` names: one category, ``core`` (the five of ``CORE``) or several
    joined by ``+`` (``parallel+parallel_multiple``)."""
    names = list(CORE) if source == "core" else source.split("+")
    for category in names:
        if category not in CATEGORIES:
            why = LEFT_OUT.get(category)
            extra = f" ({category} is left out: {why})" if why else ""
            raise BFCLDataError(f"BFCL category {category!r} is not supported{extra}; supported: "
                                f"{', '.join(CATEGORIES)}, core ({'+'.join(CORE)}), or several joined by '+'")
    if len(set(names)) != len(names):
        raise BFCLDataError(f"bfcl:{source}: names a category twice")
    return names


def split_rank(task_id: str) -> str:
    """The key that orders a category's entries for the split: sha256 of ``SPLIT_SEED:id`` (stable
    across Python versions and processes, unlike ``hash``)."""
    return hashlib.sha256(f"{SPLIT_SEED}:{task_id}".encode()).hexdigest()


def check_split(categories: list[str], split: str | None) -> None:
    """``split`` is None, or a split name and every category one the split covers."""
    if split is None:
        return
    if split not in SPLITS:
        raise BFCLDataError(f"BFCL split {split!r} is not one of {', '.join(SPLITS)} (or none: every entry)")
    outside = [c for c in categories if c not in CORE]
    if outside:
        raise BFCLDataError(f"BFCL {', '.join(outside)}: no train/held-out split; it covers {', '.join(CORE)}")


def split_tasks(tasks: list[Task], split: str) -> list[Task]:
    """The ``split`` part of one CORE category's entries (all of them): held out are the first
    ``HELDOUT_PER_CATEGORY`` by `split_rank`, the rest train; each part in `split_rank` order."""
    ranked = sorted(tasks, key=lambda t: split_rank(t.id))
    return ranked[:HELDOUT_PER_CATEGORY] if split == "heldout" else ranked[HELDOUT_PER_CATEGORY:]


def interleave(parts: list[list[Task]]) -> list[Task]:
    """One task of each part in turn (parts run out at their own length)."""
    return [part[i] for i in range(max(map(len, parts), default=0)) for part in parts if i < len(part)]


def load_bfcl(source: str, limit: int | None = None, split: str | None = None) -> list[Task]:
    """The entries ``bfcl:<source>`` names (`category_names`), the first ``limit`` of them.

    ``split`` None: every entry, category after category, file order. ``train`` / ``heldout``: that part
    of the fixed split of each category (`split_tasks`), the categories interleaved.
    """
    categories = category_names(source)
    check_split(categories, split)
    parts = [_load_category(c) for c in categories]
    if split is None:
        tasks = [t for part in parts for t in part]
    else:
        tasks = interleave([split_tasks(part, split) for part in parts])
    return tasks[:limit] if limit else tasks


def _load_category(category: str) -> list[Task]:
    """Every entry of one supported category, file order."""
    folder = data_dir()
    entries = _read_lines(folder / f"{FILE_PREFIX}{category}.json")
    answers: dict[str, Any] = {}
    if category not in NO_ANSWER_FILE:
        answers = {row["id"]: row["ground_truth"] for row in _read_lines(folder / "possible_answer" / f"{FILE_PREFIX}{category}.json")}
    tasks = []
    for row in entries:
        where = f"BFCL {category} entry {row.get('id')!r}"
        if len(row.get("question") or []) != 1:
            raise BFCLDataError(f"{where}: expected a single turn, got {len(row.get('question') or [])}")
        messages = row["question"][0]
        ground_truth = None
        if category not in NO_ANSWER_FILE:
            if row["id"] not in answers:
                raise BFCLDataError(f"{where}: no ground truth in possible_answer/")
            ground_truth = answers[row["id"]]
        tasks.append(Task(
            id=row["id"],
            question=_question_text(messages, where),
            answer=json.dumps(ground_truth if ground_truth is not None else [], ensure_ascii=False),
            meta={"answer_type": "exact", "bfcl_category": category, "messages": messages,
                  "functions": row["function"], "ground_truth": ground_truth, "source": "bfcl"},
        ))
    if not tasks:
        raise BFCLDataError(f"BFCL {category}: no entries")
    return tasks
