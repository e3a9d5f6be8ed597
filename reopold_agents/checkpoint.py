"""Checkpoints that resume bit-identically: HF-format model + optimizer, scheduler, RNG, step, data position.

Layout of one checkpoint ``<dir>/step_00000042/``::

    model/              save_pretrained (safetensors) + tokenizer files when a tokenizer is given; a LoRA
                        student (``model.lora``) saves peft's adapter files only (adapter_config.json,
                        adapter_model.safetensors): its base is the unchanged ``model.student``
    trainer_state.pt    optimizer and scheduler state dicts, RNG states (python, numpy, torch, cuda)
    state.json          {"step": 42, "data_state": {...}, "format": 1, "files": {path: size},
                        "sha256": {path: hex digest}} - written last: marks it complete and lists the
                        size and content checksum of every other file

``trainer.keep_best`` adds ``<dir>/best/``, a whole checkpoint (hard links) of the best held-out step,
outside the rotation (`keep_best`).

Each checkpoint is written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written ``step_*`` folder that ``latest_checkpoint`` would pick. Temporary folders of a
writer that was killed mid-save are removed by the next `save_checkpoint` / `latest_checkpoint`.
A checkpoint damaged after the fact (truncated or deleted files, unreadable state, or same-size damage
such as NaN written over the weights, which only the sha256 finds) is caught by `verify_checkpoint`:
`latest_checkpoint` logs which file and why and falls back to the newest one that verifies (and raises
`CheckpointError` listing every reason when checkpoints exist but none verifies), and `load_checkpoint`
names the damaged file instead of surfacing a library error. A checkpoint written before checksums
existed (no ``sha256`` in state.json) is accepted with a warning: its sizes and headers are checked,
its content cannot be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^\.tmp-(?:step_\d+|best)-(?:(?P<host>.+)-)?(?P<pid>\d+)$")
BEST_DIR = "best"  # keep_best's copy: not a step_* name, so neither rotation nor latest_checkpoint sees it
STALE_FOREIGN_TMP_S = 24 * 3600  # a temp folder of another host is removed once this old
log = logging.getLogger(__name__)
# a LoRA student's checkpoint (model.lora): peft's adapter files, written by PeftModel.save_pretrained
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_KEYS = (("r", "model.lora.rank"), ("lora_alpha", "model.lora.alpha"),
                 ("target_modules", "model.lora.target_modules"))


class CheckpointError(ValueError):
    """A checkpoint is incomplete or damaged; the message names the file."""


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
    from reopold_agents.lora import is_peft

    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        target = model.module if hasattr(model, "module") else model  # DDP/accelerate wrappers
        if is_peft(target):  # the adapters only; embeddings are never adapted (and peft would ask the hub)
            target.save_pretrained(str(tmp / "model"), safe_serialization=True, save_embedding_layers=False)
        else:
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
        saved = [f for f in sorted(tmp.rglob("*")) if f.is_file()]
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in saved}
        digests = {str(f.relative_to(tmp)): file_sha256(f) for f in saved}
        state = {"format": FORMAT, "step": int(step), "data_state": data_state or {}, "files": files,
                 "sha256": digests}
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


def best_step(evals: list[tuple[int, float]]) -> tuple[int, float] | None:
    """The ``(step, held-out success)`` ``trainer.keep_best`` keeps: the highest success of the evaluations
    after step 0 (step 0 is the untrained student), the earliest on a tie; None before any."""
    trained = [(step, score) for step, score in evals if step >= 1]
    return max(trained, key=lambda e: e[1]) if trained else None  # max keeps the first of equals


def keep_best(directory: str | os.PathLike, step: int) -> Path:
    """Make ``<directory>/best`` a copy of checkpoint ``step`` and return it (``trainer.keep_best``).

    Files are hard-linked where the file system allows (no second copy on disk; rotation deleting the
    ``step_*`` folder later leaves the links intact), else copied. The copy is built in a temporary
    folder and renamed over the previous best, so ``best`` is always a whole checkpoint; it verifies and
    loads like any other (``load_checkpoint(directory / "best")``, ``export_lora``).
    """
    root = Path(directory)
    source = root / f"step_{step:08d}"
    if not (source / "state.json").is_file():
        raise CheckpointError(f"{source}: no complete checkpoint to keep as the best (trainer.keep_best)")
    tag = f"{socket.gethostname()}-{os.getpid()}"
    tmp, old = root / f".tmp-{BEST_DIR}-{tag}", root / f".old-{BEST_DIR}-{tag}"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    final = root / BEST_DIR
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (another device, some network file systems)
        shutil.copy2(src, dst)


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


def remove_stale_temp_dirs(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary save folders whose writer is gone (killed mid-save); returns what was removed.

    A folder of this host is stale when its writer's pid is dead; one of another host (shared
    storage) once it is `STALE_FOREIGN_TMP_S` old; one in the old name format (no host) always.
    """
    root = Path(directory)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    here = socket.gethostname()
    for child in root.iterdir():
        m = _TMP_DIR.match(child.name)
        if m is None or not child.is_dir():
            continue
        host, pid = m.group("host"), int(m.group("pid"))
        if host == here:
            stale = pid != os.getpid() and not _pid_alive(pid)
        elif host is None:
            stale = True
        else:
            stale = time.time() - child.stat().st_mtime > STALE_FOREIGN_TMP_S
        if stale:
            shutil.rmtree(child, ignore_errors=True)
            log.info("removed %s, left by an interrupted checkpoint save", child)
            removed.append(child)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(f: Path) -> str:
    with f.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise `CheckpointError` naming the first damaged file of checkpoint ``path`` and what was wrong.

    Checks: state.json parses and names this step and format; every file it lists exists with its
    recorded size and sha256 (reads every byte: about a second per GB); each ``*.safetensors`` has a
    consistent header; trainer_state.pt is a readable zip. A checkpoint saved without checksums (older
    versions) gets the other checks and a warning.
    """
    ckpt = Path(path)
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{state_file}: missing (incomplete checkpoint)")
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{state_file}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{state_file}: not a format-{FORMAT} checkpoint state ({str(state)[:200]})")
    m = _STEP_DIR.match(ckpt.name)
    if m and int(m.group(1)) != state["step"]:
        raise CheckpointError(f"{state_file}: says step {state['step']}, but the folder is {ckpt.name}")
    for rel, size in (state.get("files") or {}).items():
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, {size} were saved (truncated or overwritten)")
    _check_digests(ckpt, state)
    weights = sorted((ckpt / "model").glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"{ckpt / 'model'}: no *.safetensors weights")
    for f in weights:
        _check_safetensors(f)
    trainer = ckpt / "trainer_state.pt"
    try:
        with zipfile.ZipFile(trainer) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{trainer}: unreadable ({type(exc).__name__}: {exc})") from None


def _check_digests(ckpt: Path, state: dict[str, Any]) -> None:
    """Every file's sha256 against the one recorded at save (`CheckpointError`: file, expected, got)."""
    digests = state.get("sha256")
    if digests is None:
        log.warning("checkpoint %s was saved without checksums (an older version): its sizes and headers are "
                    "checked, its content is not", ckpt)
        return
    if not isinstance(digests, dict):
        raise CheckpointError(f"{ckpt / 'state.json'}: 'sha256' is not a mapping")
    for rel, expected in sorted(digests.items()):
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        got = file_sha256(f)
        if got != expected:
            raise CheckpointError(f"{f}: content differs from the save (sha256 now {got}, at save {expected})")


def _check_safetensors(f: Path) -> None:
    """The header parses and the tensors' byte ranges end exactly at the end of the file."""
    from reopold_agents.model_files import ModelInputError, safetensors_header

    try:
        safetensors_header(f)
    except ModelInputError as exc:
        raise CheckpointError(str(exc)) from None


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``directory`` that verifies; None when there is none at all.

    A newer one that fails `verify_checkpoint` is skipped with a warning naming the damaged file and
    what was wrong. When complete checkpoints exist but none verifies, `CheckpointError` lists each
    one's reason (rather than None, which a caller would take as "start from scratch").
    Temporary folders of interrupted saves are removed first.
    """
    remove_stale_temp_dirs(directory)
    reasons: list[str] = []
    for ckpt in reversed(list_checkpoints(directory)):
        try:
            verify_checkpoint(ckpt)
        except CheckpointError as exc:
            log.warning("checkpoint %s is damaged, falling back to an older one: %s", ckpt, exc)
            reasons.append(f"{ckpt.name}: {exc}")
            continue
        return ckpt
    if reasons:
        raise CheckpointError(f"{directory}: every checkpoint is damaged, none to resume from "
                              f"(move them away to start from scratch): " + "; ".join(reasons))
    return None


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
    verify_checkpoint(ckpt)
    state = json.loads(state_file.read_text())
    if model is not None:
        try:
            load_model_weights(model, ckpt / "model")
        except (OSError, RuntimeError) as exc:  # safetensors' errors do not say which file
            raise CheckpointError(f"{ckpt / 'model'}: cannot load the weights ({type(exc).__name__}: {exc})") from None
    # Our own file, written by save_checkpoint: it holds numpy RNG state, so it needs full unpickling.
    trainer_file = ckpt / "trainer_state.pt"
    try:
        trainer_state = torch.load(trainer_file, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of every kind: name the file
        raise CheckpointError(f"{trainer_file}: cannot be loaded ({type(exc).__name__}: {exc})") from None
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
    A LoRA student (a peft ``PeftModel``) loads its adapters (`load_adapter_weights`).
    """
    from safetensors.torch import load_file

    from reopold_agents.lora import is_peft

    target = model.module if hasattr(model, "module") else model
    adapters = Path(model_dir) / ADAPTER_CONFIG
    if is_peft(target):
        load_adapter_weights(target, model_dir)
        return
    if adapters.is_file():
        raise CheckpointError(f"{adapters}: this checkpoint holds LoRA adapters, not full weights; resume with "
                              "model.lora.enabled=true (and the run's model.lora.*), or export a merged model "
                              "first: python -m reopold_agents.export_lora <checkpoint> <out>")
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


def load_adapter_weights(model: nn.Module, model_dir: str | os.PathLike) -> None:
    """Load the LoRA adapters a checkpoint holds into ``model`` (a ``PeftModel``) in place.

    The checkpoint's adapter shape and scaling (rank, alpha, target modules) must be the run's: a
    different alpha would load without complaint and scale every update differently. Every adapter
    tensor of the model must come from the file and every tensor of the file must land.
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(model_dir)
    config_file, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder}: no LoRA adapters ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS}); it holds full "
                              "weights (a run without model.lora), so resume with model.lora.enabled=false")
    saved = json.loads(config_file.read_text())
    current = model.peft_config["default"]  # type: ignore[index]
    for key, name in _ADAPTER_KEYS:
        want, got = getattr(current, key), saved.get(key)
        if key == "target_modules":
            want, got = sorted(want or []), sorted(got or [])
        if want != got:
            raise CheckpointError(f"{config_file}: {name} is {got!r} in the checkpoint, {want!r} in this run")
    result = set_peft_model_state_dict(model, load_file(str(weights)))
    if result.unexpected_keys:
        raise CheckpointError(f"{weights}: unexpected adapter weights {result.unexpected_keys[:5]}")
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing:
        raise CheckpointError(f"{weights}: adapter weights missing {missing[:5]}")
