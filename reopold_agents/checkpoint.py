"""Checkpoints that resume bit-identically: HF-format model + optimizer, scheduler, RNG, step, data position.

Layout of one checkpoint ``<dir>/step_00000042/``::

    model/              save_pretrained (safetensors) + tokenizer files when a tokenizer is given
    trainer_state.pt    optimizer and scheduler state dicts, RNG states (python, numpy, torch, cuda)
    state.json          {"step": 42, "data_state": {...}, "format": 1} - written last: marks it complete

Each checkpoint is written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written ``step_*`` folder that ``latest_checkpoint`` would pick.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class ResumeState:
    """What a caller needs to continue a run: the next step counter and its own data position."""

    step: int
    data_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    tokenizer: Any | None = None,
    data_state: dict[str, Any] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``directory`` atomically and prune to the newest ``keep_last``."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        target = model.module if hasattr(model, "module") else model  # DDP/accelerate wrappers
        target.save_pretrained(str(tmp / "model"), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "model"))
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
            },
            tmp / "trainer_state.pt",
        )
        state = {"format": FORMAT, "step": int(step), "data_state": data_state or {}}
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (those with a state.json) under ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / "state.json").is_file():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> ResumeState:
    """Restore what is given from checkpoint ``path``; returns the step and the caller's data position.

    The model's weights are loaded in place (a model built from the same config); to build the model
    from the checkpoint instead, call ``from_pretrained(path / "model")`` and pass ``model=None``.
    """
    ckpt = Path(path)
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no state.json)")
    state = json.loads(state_file.read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"{ckpt}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
    if model is not None:
        load_model_weights(model, ckpt / "model")
    # Our own file, written by save_checkpoint: it holds numpy RNG state, so it needs full unpickling.
    trainer_state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
    if optimizer is not None:
        if trainer_state["optimizer"] is None:
            raise ValueError(f"{ckpt}: no optimizer state was saved")
        optimizer.load_state_dict(trainer_state["optimizer"])
    if scheduler is not None:
        if trainer_state["scheduler"] is None:
            raise ValueError(f"{ckpt}: no scheduler state was saved")
        scheduler.load_state_dict(trainer_state["scheduler"])
    if restore_rng:
        set_rng_state(trainer_state["rng"])
    return ResumeState(step=int(state["step"]), data_state=dict(state.get("data_state", {})), path=ckpt)


def load_model_weights(model: nn.Module, model_dir: str | os.PathLike) -> None:
    """Load safetensors weights saved by ``save_pretrained`` into ``model`` in place.

    Keys missing from the files are allowed only for tied parameters (``lm_head`` tied to the
    embeddings is not written by save_pretrained); anything else missing or unexpected is an error.
    """
    from safetensors.torch import load_file

    target = model.module if hasattr(model, "module") else model
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    loaded: dict[str, torch.Tensor] = {}
    for f in files:
        loaded.update(load_file(str(f)))
    result = target.load_state_dict(loaded, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"unexpected weights in {model_dir}: {result.unexpected_keys[:5]}")
    params = dict(target.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in loaded if k in params}
    untied = [k for k in result.missing_keys if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"weights missing from {model_dir}: {untied[:5]}")
