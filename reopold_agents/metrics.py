"""Training metrics: one JSONL line per step (machine-readable, resumable) mirrored to TensorBoard.

JSONL is the source of truth (plots and tests read it back); TensorBoard is for humans. The file holds
exactly one record per step, in step order: on resume the logger keeps the records of steps <= the
checkpoint's step (merging any duplicates a crash or an older version left), and a second `log` call
for the step just written (an evaluation after the last training step) is merged into that record.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

METRICS_FILE = "metrics.jsonl"


def summarize(prefix: str, values: Iterable[float]) -> dict[str, float]:
    """Mean/std/min/max of ``values`` under ``prefix/...``; empty input gives no keys (not NaNs)."""
    vals = [float(v) for v in values]
    if not vals:
        return {}
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / len(vals)
    return {
        f"{prefix}/mean": mean,
        f"{prefix}/std": math.sqrt(var),
        f"{prefix}/min": min(vals),
        f"{prefix}/max": max(vals),
    }


def load_1min() -> float | None:
    """The 1-minute load average (runnable + waiting processes), logged every step as ``perf/load_1min``: the
    load a step's times were measured under. None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # AttributeError: no getloadavg on this platform (Windows)
        return None


def _scalar(value: Any) -> float | None:
    """A plain float for numbers (incl. 0-d tensors and bools); None for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return float(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file, in order (stops at a torn line after a crash)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            break  # not a record this logger wrote: treat like a torn line
        out.append(record)
    return out


def merge_by_step(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, in step order; later records' keys win over earlier ones of the same step."""
    merged: dict[int, dict[str, Any]] = {}
    for r in records:
        merged.setdefault(int(r["step"]), {}).update(r)
    return [merged[k] for k in sorted(merged)]


class MetricsLogger:
    """Append ``{"step": k, ...scalars}`` records to ``<dir>/metrics.jsonl`` and TensorBoard."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METRICS_FILE
        self._records: list[dict[str, Any]] = []
        if resume_step is not None:
            self._records = [r for r in merge_by_step(read_metrics(self.path)) if r["step"] <= resume_step]
        self._rewrite()
        self._fh = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"), purge_step=resume_step)

    def _rewrite(self) -> None:
        """Replace the file with ``self._records`` atomically (a kill leaves the old or the new file)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self._records))
        tmp.replace(self.path)

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Write the numeric entries of ``metrics`` for ``step`` (non-numeric ones are dropped); returns
        the step's record, merged with what was logged for it before."""
        record: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            scalar = _scalar(value)
            if scalar is not None and math.isfinite(scalar):
                record[key] = scalar
        fresh = record
        if self._records and record["step"] <= self._records[-1]["step"]:  # a step already written
            self._records = merge_by_step([*self._records, record])
            record = next(r for r in self._records if r["step"] == fresh["step"])
            self._fh.close()
            self._rewrite()
            self._fh = self.path.open("a")
        else:
            self._records.append(record)
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        if self._tb is not None:
            for key, value in fresh.items():
                if key != "step":
                    self._tb.add_scalar(key, value, global_step=int(step))
            self._tb.flush()
        return record

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
