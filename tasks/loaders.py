"""Load benchmark suites from local files into `Task` records (nothing is downloaded).

Sources (``load_tasks(path_or_name, ...)``):

- ``synthetic:<kind>`` (math, vqa, toolqa): the seeded generators, ``size``/``seed``/``difficulty``.
- ``bfcl:<category>`` (or ``core``, or ``a+b``; ``split`` train/heldout): BFCL entries from the installed
  bfcl-eval data (`tasks.bfcl`).
- ``reasoning_gym:<dataset>[?key=value&...]``: a reasoning-gym generator with ``size``/``seed`` and its
  own config keys (`tasks.reasoning_gym_tasks`).
- a ``.jsonl`` / ``.json`` / ``.parquet`` file;
- a directory written by ``datasets.Dataset(Dict).save_to_disk`` (needs the ``datasets`` package), or a
  directory holding ``<split>.jsonl`` / ``<split>.parquet`` / ``data/<split>-*.parquet`` files;
- a bare name (``gsm8k``) looked up as such a file or directory under ``$REOPOLD_DATA``.

Rows are mapped field by field (docs/envs.md lists the schemas): GSM8K (``question``, ``answer`` with
``#### final``), MATH-500 / AIME (``problem``, ``answer`` or ``solution`` with ``\\boxed{}``), MathVista
(``pid``, ``question``, ``image``/``decoded_image``, ``choices``, ``question_type``, ``answer_type``),
Geometry3K (``problem`` with ``<image>``, ``images``, ``choices``), tool use (``question``, ``answer``,
``tools``, ``demonstration``). Missing required fields fail with the row number and the fields found.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tasks.bfcl import load_bfcl
from tasks.errors import TaskLoadError
from tasks.reasoning_gym_tasks import load_reasoning_gym
from tasks.record import Task
from tasks.synthetic import generate

__all__ = ["TaskLoadError", "last_boxed", "load_tasks", "row_to_task"]

QUESTION_KEYS = ("question", "problem", "prompt", "query", "input", "Question", "Problem")
ANSWER_KEYS = ("answer", "final_answer", "label", "target", "Answer")
ID_KEYS = ("id", "pid", "unique_id", "problem_id", "idx", "ID", "task_id")
IMAGE_KEYS = ("images", "decoded_image", "image", "image_path")
CHOICE_KEYS = ("choices", "options")
_BOXED = re.compile(r"\\boxed\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start:j].strip()
    return None


def load_tasks(
    path_or_name: str | os.PathLike[str],
    *,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    difficulty: int = 1,
    size: int = 1000,
) -> Sequence[Task]:
    """Tasks from a synthetic generator, a local file/directory or a name under ``$REOPOLD_DATA``."""
    source = str(path_or_name)
    if source.startswith("synthetic:"):
        n = size if limit is None else min(size, limit)
        return generate(source.split(":", 1)[1], size=n, seed=seed, difficulty=difficulty)
    if source.startswith("bfcl:"):
        return load_bfcl(source.split(":", 1)[1], limit=limit, split=split)
    if source.startswith("reasoning_gym:"):
        return load_reasoning_gym(source.split(":", 1)[1], size=size if limit is None else min(size, limit), seed=seed)
    path = _resolve(source)
    rows, base = _read_rows(path, split)
    tasks: list[Task] = []
    for i, row in enumerate(rows):
        if limit is not None and len(tasks) >= limit:
            break
        tasks.append(row_to_task(row, index=i, stem=path.stem, base_dir=base, source=str(path)))
    if not tasks:
        raise TaskLoadError(f"{path}: no tasks found" + (f" in split {split!r}" if split else ""))
    return tasks


def _resolve(source: str) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    tried = [str(path)]
    data_dir = os.environ.get("REOPOLD_DATA")
    if data_dir and os.sep not in source:
        for cand in (Path(data_dir) / source, *(Path(data_dir) / f"{source}{ext}" for ext in (".jsonl", ".json", ".parquet"))):
            tried.append(str(cand))
            if cand.exists():
                return cand
    hint = "" if data_dir else " (set $REOPOLD_DATA to a folder of suites to load them by name)"
    raise TaskLoadError(f"task source {source!r} not found; tried: {', '.join(tried)}{hint}")


def _read_rows(path: Path, split: str | None) -> tuple[Iterable[dict[str, Any]], Path]:
    if path.is_dir():
        if any((path / marker).exists() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return _read_saved_dataset(path, split), path
        files = _split_files(path, split or "test")
        rows: list[dict[str, Any]] = []
        for f in files:
            rows.extend(_read_rows(f, None)[0])
        return rows, path
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path), path.parent
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and split and split in data:
            data = data[split]
        if not isinstance(data, list):
            raise TaskLoadError(f"{path}: expected a JSON list of records (or a dict of splits), got {type(data).__name__}")
        return data, path.parent
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
            raise TaskLoadError(f"{path}: reading parquet needs pyarrow ({exc})") from None
        return pq.read_table(path).to_pylist(), path.parent
    raise TaskLoadError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet or a dataset folder)")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TaskLoadError(f"{path}:{n}: invalid JSON: {exc.msg}") from None
    return rows


def _split_files(folder: Path, split: str) -> list[Path]:
    found = sorted(
        p
        for pattern in (f"{split}.jsonl", f"{split}.parquet", f"{split}.json", f"data/{split}-*.parquet", f"{split}-*.parquet")
        for p in folder.glob(pattern)
    )
    if not found:
        raise TaskLoadError(f"{folder}: no files for split {split!r} (looked for {split}.jsonl, {split}.parquet, data/{split}-*.parquet)")
    return found


def _read_saved_dataset(path: Path, split: str | None) -> Iterable[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise TaskLoadError(f"{path} is a saved `datasets` folder; install the `datasets` package to read it") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "test" if "test" in ds else next(iter(ds))
        if split not in ds:
            raise TaskLoadError(f"{path}: split {split!r} not found; splits: {', '.join(ds)}")
        ds = ds[split]
    return iter(ds)


# ----------------------------------------------------------------------------------- row mapping


def _first(row: dict[str, Any], keys: Sequence[str]) -> tuple[str | None, Any]:
    for k in keys:
        if k in row and row[k] is not None and row[k] != "":
            return k, row[k]
    return None, None


def _answer_text(value: Any, where: str) -> str:
    """The reference answer as text: a string or a finite number (or a one-element list of one)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return _answer_text(value[0], where)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TaskLoadError(f"{where}: the answer must be a string or a number, got {type(value).__name__} {str(value)[:80]!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TaskLoadError(f"{where}: the answer must be a finite number, got {value}")
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def _choices(raw: Any, where: str) -> list[str] | None:
    """Options from a list, a dict keyed by letter, or a JSON string of a list; anything else fails."""
    if isinstance(raw, dict):
        raw = [raw[k] for k in sorted(raw)]
    if isinstance(raw, str):
        if raw.strip().startswith("["):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise TaskLoadError(f"{where}: choices is a string but not a valid JSON list ({exc.msg})") from None
        else:
            raw = [raw]
    if hasattr(raw, "tolist"):  # numpy arrays from parquet / datasets
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)):
        raise TaskLoadError(f"{where}: choices must be a list of options, got {type(raw).__name__}")
    bad = [c for c in raw if isinstance(c, bool) or not isinstance(c, (str, int, float))]
    if bad:
        raise TaskLoadError(f"{where}: every option must be a string or a number, got {type(bad[0]).__name__} {str(bad[0])[:80]!r}")
    return [str(c) for c in raw] or None


def _image(value: Any, base_dir: Path, where: str) -> Any:
    """A PIL image or an absolute path from a path, bytes, an HF ``{"bytes", "path"}`` struct or PIL."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return _image(value["bytes"], base_dir, where)
        if value.get("path"):
            return _image(value["path"], base_dir, where)
        raise TaskLoadError(f"{where}: image struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(value))
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:  # truncated, not an image, bad header
            raise TaskLoadError(f"{where}: the embedded image cannot be decoded ({type(exc).__name__}: {exc})") from None
        return img
    if isinstance(value, str):
        p = Path(value)
        p = p if p.is_absolute() else base_dir / p
        if not p.exists():
            raise TaskLoadError(f"{where}: image file {str(p)!r} not found")
        try:  # decode it now: a truncated file must fail at load time, not mid-training
            with Image.open(p) as img:
                img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise TaskLoadError(f"{where}: image file {str(p)!r} cannot be decoded ({type(exc).__name__}: {exc})") from None
        return str(p)
    raise TaskLoadError(f"{where}: cannot read an image from {type(value).__name__}")


def row_to_task(
    row: dict[str, Any], *, index: int = 0, stem: str = "task", base_dir: Path | str = ".", source: str | None = None
) -> Task:
    """Map one benchmark row onto a `Task` (see the module docstring for the recognised fields).

    Errors name ``source`` (the file; else ``stem``) and the row; ``stem`` also names default task ids.
    """
    where = f"{source or stem} row {index}"
    base_dir = Path(base_dir)
    if not isinstance(row, dict):
        raise TaskLoadError(f"{where}: expected a record (dict), got {type(row).__name__}")
    q_key, question = _first(row, QUESTION_KEYS)
    if question is None:
        raise TaskLoadError(f"{where}: no question field (one of {QUESTION_KEYS}); fields: {sorted(row)}")
    used = {q_key}
    meta: dict[str, Any] = {}
    a_key, answer = _first(row, ANSWER_KEYS)
    if answer is not None:
        used.add(a_key)
        answer = _answer_text(answer, where)
        if "####" in answer:  # GSM8K: reasoning, then '#### final answer'
            meta["solution"] = answer.split("####")[0].strip()
            answer = answer.split("####")[-1].strip().replace(",", "")
    elif isinstance(row.get("solution"), str) and last_boxed(row["solution"]) is not None:
        answer = last_boxed(row["solution"])  # MATH: the final answer is boxed in the solution
        used.add("solution")
        meta["solution"] = row["solution"]
    else:
        raise TaskLoadError(f"{where}: no answer field (one of {ANSWER_KEYS}, or a solution with \\boxed{{}}); fields: {sorted(row)}")
    id_key, task_id = _first(row, ID_KEYS)
    used.add(id_key)
    task_id = str(task_id) if task_id is not None else f"{stem}-{index}"

    images: list[Any] = []
    img_key, img_value = _first(row, IMAGE_KEYS)
    if img_value is not None:
        used.add(img_key)
        values = img_value if isinstance(img_value, list) else [img_value]
        images = [_image(v, base_dir, where) for v in values]
    used.update(k for k in IMAGE_KEYS if k in row)  # e.g. MathVista has both 'image' and 'decoded_image'

    choices = None
    c_key, raw_choices = _first(row, CHOICE_KEYS)
    if raw_choices is not None:
        used.add(c_key)
        choices = _choices(raw_choices, where)

    question = str(question).replace("<image>", "").strip()
    meta["answer_type"] = _answer_type(row, choices, used)
    demo = row.get("demonstration") or []
    if isinstance(demo, str):
        demo = [demo]
    used.add("demonstration")
    for k, v in row.items():
        if k not in used and _jsonable(v):
            meta.setdefault(k, v)
    return Task(id=task_id, question=question, answer=answer, images=images, choices=choices, meta=meta, demonstration=[str(d) for d in demo])


def _answer_type(row: dict[str, Any], choices: list[str] | None, used: set) -> str:
    explicit = row.get("answer_type")
    qtype = row.get("question_type")
    used.update({"answer_type", "question_type"} & set(row))
    if qtype == "multi_choice" or (choices and explicit is None):
        return "choice"
    if explicit in ("integer", "float", "numeric"):
        return "numeric"
    if explicit in ("text", "exact", "string"):
        return "exact"
    if explicit in ("math", "choice", "auto"):
        return explicit
    return "auto"


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True
