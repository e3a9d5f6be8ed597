"""The teacher's held-out success, remembered beside the run's outputs so a repeated or resumed run does not
measure it again.

Why: the teacher's greedy success on the held-out set is the "gap closed" target; it costs as much as a
student evaluation (minutes with 256 tasks) and, for a given teacher and held-out set, never changes. It
is stored in ``<trainer.output_dir>/teacher_success.json`` under a key made of everything the number
depends on, so a stored value is reused only when each of these is the same:

* the teacher's weights: a sha256 over every parameter and buffer as it sits in memory (names, dtypes,
  shapes and bytes; a shipped tiny pair, a random tiny model and a real checkpoint alike; LoRA adapter
  tensors are left out because a LoRA student's ``model.teacher=self`` scores with them disabled), and the
  device it runs on;
* its tokenizer (vocabulary, special tokens, chat template) and processor (VL);
* the held-out set: the entry's env config as the held-out set builds it (seed, size, tools, turn limit,
  ...), and a sha256 of the tasks themselves (questions, answers, images);
* the sampling: greedy, ``engine.sampling.max_new_tokens``, ``engine.max_total_tokens``,
  ``engine.max_batch_size`` (the batch pads rows together), the sandbox config;
* the package, torch and transformers versions.

A change in the project's env or engine *code* at the same version is not seen: delete the file to
measure again. The file keeps the newest ``KEEP`` results; a missing or unreadable file is a miss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from reopold_agents.config.engine import EngineConfig
    from reopold_agents.config.env import EnvConfig
    from reopold_agents.config.sandbox import SandboxConfig
    from tasks.record import Task

log = logging.getLogger(__name__)

CACHE_FILE = "teacher_success.json"
KEEP = 64  # newest results kept in the file
SKIPPED_PARAMETERS = ("lora_",)  # names containing these are not part of a teacher's weights


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of ``model``'s state (names, dtypes, shapes, bytes), LoRA adapter tensors left out."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if any(part in name for part in SKIPPED_PARAMETERS):
            continue
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


def heldout_key(model: torch.nn.Module, tokenizer: Any, processor: Any, env_cfg: EnvConfig, tasks: Sequence[Task],
                engine_cfg: EngineConfig, sandbox_cfg: SandboxConfig) -> dict[str, Any]:
    """Everything a teacher's held-out success depends on (``env_cfg``: the held-out set's own config)."""
    import transformers

    import reopold_agents

    first = next(iter(model.parameters()), None)
    return {
        "teacher_weights_sha256": weights_digest(model),
        "device": str(first.device) if first is not None else "cpu",
        "tokenizer_sha256": tokenizer_digest(tokenizer, processor),
        "heldout_env": _jsonable(dataclasses.asdict(env_cfg)),
        "heldout_tasks": len(tasks),
        "heldout_tasks_sha256": tasks_digest(tasks),
        "sampling": {"greedy": True, "max_new_tokens": engine_cfg.sampling.max_new_tokens,
                     "max_total_tokens": engine_cfg.max_total_tokens, "max_batch_size": engine_cfg.max_batch_size},
        "sandbox": _jsonable(dataclasses.asdict(sandbox_cfg)),
        "versions": {"reopold_agents": reopold_agents.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class SuccessCache:
    """``<output_dir>/teacher_success.json``: held-out successes by key digest."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def beside(cls, output_dir: str | os.PathLike) -> "SuccessCache":
        return cls(Path(output_dir) / CACHE_FILE)

    def _records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            records = json.loads(self.path.read_text()).get("results", [])
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); the teacher's success is measured again", self.path, exc)
            return []
        return [r for r in records if isinstance(r, dict) and isinstance(r.get("key_sha256"), str)]

    def get(self, key: dict[str, Any]) -> float | None:
        """The stored success for ``key``, or None."""
        digest = key_digest(key)
        for record in reversed(self._records()):
            if record["key_sha256"] == digest and isinstance(record.get("success"), (int, float)):
                return float(record["success"])
        return None

    def put(self, key: dict[str, Any], success: float, seconds: float) -> None:
        """Store ``success`` for ``key`` (atomically: a reader sees the old or the new file)."""
        digest = key_digest(key)
        records = [r for r in self._records() if r["key_sha256"] != digest]
        records.append({"key_sha256": digest, "success": float(success), "seconds": round(float(seconds), 3),
                        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "key": key})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"results": records[-KEEP:]}, indent=1))
        tmp.replace(self.path)
