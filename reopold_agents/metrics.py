"""Training metrics: one JSONL line per step (machine-readable, resumable) mirrored to TensorBoard.

JSONL is the source of truth (plots and tests read it back); TensorBoard is for humans. On resume the
logger truncates the JSONL to steps <= the checkpoint's step, so replayed steps are not duplicated.
"""

from __future__ import annotations

import json
import math
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
    """All records of a metrics JSONL file, in order (skips a torn last line after a crash)."""
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
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


class MetricsLogger:
    """Append ``{"step": k, ...scalars}`` records to ``<dir>/metrics.jsonl`` and TensorBoard."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METRICS_FILE
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._fh = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Keep records up to and including ``step``: steps after a checkpoint will be re-run."""
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Write the numeric entries of ``metrics`` for ``step``; non-numeric entries are dropped."""
        record: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            scalar = _scalar(value)
            if scalar is not None and math.isfinite(scalar):
                record[key] = scalar
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in record.items():
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
