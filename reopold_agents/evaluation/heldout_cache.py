"""Held-out successes that cannot change, remembered so a repeated, resumed or sibling run does not measure
them again: the teacher's (the "gap closed" target) and the initial student's at step 0.

Why: each costs a full held-out evaluation (minutes with 256 tasks; 6-7 minutes of every hour-long BFCL
LoRA run) and, for given weights, held-out set and sampling, never changes. Seeds and objectives of one
study start from the same student, so its step-0 score is the same in each of their runs. Results live
in one JSON file, ``trainer.heldout_cache`` (runs that name the same file share it; default
``<trainer.output_dir>/heldout_success.json``), under a key made of everything the number depends on, so
a stored value is reused only when each of these is the same:

* who is evaluated and by which engine (the teacher through the HF engine; the student through the run's
  ``engine.name``);
* the weights: a sha256 over every parameter and buffer as it sits in memory (names, dtypes, shapes and
  bytes), LoRA adapter tensors left out: a LoRA student's ``model.teacher=self`` scores with them
  disabled, and a student is looked up only while its adapters are inert (``lora.adapters_inert``: every
  delta exactly zero, as peft initialises them), when it computes exactly its base; and the device;
* its tokenizer (vocabulary, special tokens, chat template) and processor (VL);
* the held-out set: the entry's env config as the held-out set builds it (seed, size, tools, turn limit,
  ...), and a sha256 of the tasks themselves (questions, answers, images);
* the sampling: greedy, ``engine.sampling.max_new_tokens``, ``engine.max_total_tokens``,
  ``engine.max_batch_size`` (the batch pads rows together), the sandbox config;
* the code: a sha256 of the project's Python sources (envs, parsers, engines, tasks) as they were when this
  module was imported, and the torch and transformers versions.

The file keeps the newest ``KEEP`` results; a missing or unreadable file is a miss.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from reopold_agents.evaluation.heldout import HeldoutScore

if TYPE_CHECKING:
    from reopold_agents.config.engine import EngineConfig
    from reopold_agents.config.env import EnvConfig
    from reopold_agents.config.sandbox import SandboxConfig
    from reopold_agents.config.trainer import TrainerConfig
    from tasks.record import Task

log = logging.getLogger(__name__)

CACHE_FILE = "heldout_success.json"
KEEP = 64  # newest results kept in the file
SOURCE_PACKAGES = ("reopold_agents", "envs", "tasks", "tools")  # whose code a held-out score depends on
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SKIPPED_PARAMETERS = ("lora_",)  # names containing these are adapters, not the base weights


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of ``model``'s state (names, dtypes, shapes, bytes), LoRA adapter tensors left out and a LoRA
    layer's base weight named as in the plain model (``q_proj.base_layer.weight`` is ``q_proj.weight``)."""
    h = hashlib.sha256()
    state = {name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
             if not any(part in name for part in SKIPPED_PARAMETERS)}
    for name, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().data)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def tokenizer_digest(tokenizer: Any, processor: Any = None) -> str:
    """sha256 of what a tokenizer (and a VL processor) renders with: its full serialisation where it has
    one (fast tokenizers), else its vocabulary; its special tokens; its chat template."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(_jsonable(getattr(tokenizer, "special_tokens_map", {})), sort_keys=True).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    if processor is not None:
        to_json = getattr(processor, "to_json_string", None)
        h.update((to_json() if callable(to_json) else repr(processor)).encode())
    return h.hexdigest()


def _image_digest(image: Any, h: Any) -> None:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        h.update(str(path).encode())
        if path.is_file():
            with path.open("rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
        return
    tobytes = getattr(image, "tobytes", None)
    h.update(f"{getattr(image, 'mode', '')}|{getattr(image, 'size', '')}|".encode())
    h.update(tobytes() if callable(tobytes) else repr(image).encode())


def tasks_digest(tasks: Sequence[Task]) -> str:
    """sha256 of the held-out tasks as the env sees them (id, question, answer, choices, meta, images)."""
    h = hashlib.sha256()
    for task in tasks:
        h.update(json.dumps([task.id, task.question, task.answer, task.choices, _jsonable(task.meta)],
                            sort_keys=True).encode())
        for image in task.images:
            _image_digest(image, h)
    return h.hexdigest()


def code_digest(root: Path = PROJECT_ROOT, packages: Sequence[str] = SOURCE_PACKAGES) -> str:
    """sha256 of the project's Python sources (``packages`` under ``root``): a changed parser, env or engine
    is a different key, not a stale score."""
    h = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def loaded_code_digest() -> str:
    """`code_digest` of the project once per process, taken when this module is imported (below; a run
    imports it at its first held-out lookup, step 0): a source edit later in the run does not relabel
    the scores it stores."""
    return code_digest()


def model_identity(evaluated_as: str, engine: str, model: torch.nn.Module, tokenizer: Any, processor: Any,
                   engine_cfg: EngineConfig, sandbox_cfg: SandboxConfig) -> dict[str, Any]:
    """The part of a key that does not depend on the held-out set: who is evaluated (``evaluated_as``,
    "teacher" / "student") through which ``engine``, its weights, tokenizer, sampling, sandbox and code.
    Hashing a model's weights takes seconds: compute this once per model and reuse it for every entry."""
    import transformers

    first = next(iter(model.parameters()), None)
    return {
        "evaluated_as": evaluated_as,
        "engine": engine,
        "weights_sha256": weights_digest(model),
        "device": str(first.device) if first is not None else "cpu",
        "tokenizer_sha256": tokenizer_digest(tokenizer, processor),
        "sampling": {"greedy": True, "max_new_tokens": engine_cfg.sampling.max_new_tokens,
                     "max_total_tokens": engine_cfg.max_total_tokens, "max_batch_size": engine_cfg.max_batch_size},
        "sandbox": _jsonable(dataclasses.asdict(sandbox_cfg)),
        "code_sha256": loaded_code_digest(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def heldout_key(identity: dict[str, Any], env_cfg: EnvConfig, tasks: Sequence[Task]) -> dict[str, Any]:
    """Everything a held-out success depends on: the `model_identity` evaluated on ``tasks`` (``env_cfg``:
    the held-out set's own config)."""
    return {**identity, "heldout_env": _jsonable(dataclasses.asdict(env_cfg)), "heldout_tasks": len(tasks),
            "heldout_tasks_sha256": tasks_digest(tasks)}


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class SuccessCache:
    """One JSON file of held-out scores (``HeldoutScore``: overall and per task family) by key digest."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def for_run(cls, trainer_cfg: TrainerConfig) -> "SuccessCache":
        """``trainer.heldout_cache``, or ``heldout_success.json`` beside the run's outputs."""
        return cls(trainer_cfg.heldout_cache or Path(trainer_cfg.output_dir) / CACHE_FILE)

    def _records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            records = json.loads(self.path.read_text()).get("results", [])
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); held-out successes are measured again", self.path, exc)
            return []
        return [r for r in records if isinstance(r, dict) and isinstance(r.get("key_sha256"), str)]

    def get(self, key: dict[str, Any]) -> HeldoutScore | None:
        """The stored score for ``key``, or None."""
        digest = key_digest(key)
        for record in reversed(self._records()):
            if record["key_sha256"] == digest and isinstance(record.get("success"), (int, float)):
                by_family = record.get("by_family") or {}
                return HeldoutScore(float(record["success"]), {str(k): float(v) for k, v in by_family.items()})
        return None

    def put(self, key: dict[str, Any], score: HeldoutScore, seconds: float) -> None:
        """Store ``score`` for ``key`` (atomically: a reader sees the old or the new file; two runs writing
        at once may drop one result, which is then measured again)."""
        digest = key_digest(key)
        records = [r for r in self._records() if r["key_sha256"] != digest]
        records.append({"key_sha256": digest, "success": float(score.success), "by_family": dict(score.by_family),
                        "seconds": round(float(seconds), 3), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "key": key})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"results": records[-KEEP:]}, indent=1))
        tmp.replace(self.path)


loaded_code_digest()  # the sources as this process imported them
