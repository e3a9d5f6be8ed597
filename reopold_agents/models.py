"""Loading the student and the teacher: the project's tiny pairs or anything ``from_pretrained`` reads.

``tiny`` / ``tiny_toolqa`` / ``tiny_math`` / ``tiny_vl`` name project-built Qwen2 / Qwen2.5-VL pairs that share the
project tokenizer; they load through ``reopold_agents.tiny.load`` (imported only for those names).
Any other name is an HF id or local path and goes through ``AutoModel*.from_pretrained``.

Weights load whole or not at all: every name is checked before a library reads it (`check_model_name`:
a local input must pass ``model_files.check_model_path``, a name that looks local is never sent to the
hub) and a load with a missing or unexpected tensor is an error naming the source and the tensors
(``model_files.from_pretrained_whole``), never a partly random model.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from reopold_agents.config.model import SELF_TEACHER, ModelConfig
from reopold_agents.config.tiny_pairs import TINY_NAMES
from reopold_agents.model_files import ModelInputError

log = logging.getLogger(__name__)
Role = Literal["student", "teacher"]


@dataclass
class LoadedModel:
    """A model with what it needs to read and write tokens. ``path`` is a directory or HF id
    ``from_pretrained`` (and vLLM) can load, or None for a random tiny model that exists only in memory."""

    model: torch.nn.Module
    tokenizer: Any
    processor: Any
    name: str
    path: str | None

    @property
    def is_vl(self) -> bool:
        return getattr(self.model.config, "image_token_id", None) is not None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".json", ".pt", ".pth")
HUB_PROBE_TIMEOUT_S = 10.0  # one look-up of a hub id that is not cached (instead of the loaders' ~30 s of retries)


def check_model_name(name: str) -> None:
    """Fail at once, naming ``name``, unless it is a tiny pair, a packaged GGUF, a local model input that
    passes `check_model_path`, or an ``owner/name`` hub id that is cached or known to the hub.

    A name that looks local (`local_path_reason`) is never sent to the hub: a missing ``./ckpts/x`` or
    ``ckpts/x`` next to an existing ``ckpts/`` fails here instead of after the loaders' hub retries.
    """
    from reopold_agents.gguf import PACKAGED
    from reopold_agents.model_files import check_model_path

    if name in TINY_NAMES or name == SELF_TEACHER or name in PACKAGED:
        return
    if os.path.lexists(os.path.expanduser(name)):  # lexists: a dangling link or a symlink loop is checked, not looked up
        check_model_path(name)
        return
    why = local_path_reason(name)
    if why == _NOT_HUB_ID:
        raise ModelInputError(f"{name!r} is not a tiny pair ({', '.join(TINY_NAMES)}), not an existing path "
                              "and not an HF id (owner/name)")
    if why is not None:
        raise ModelInputError(f"{name!r} is not an existing path ({why}, so it is a local path and is never "
                              f"looked up on the hub){_deepest_existing_note(name)}")
    _check_hub_id(name)


_NOT_HUB_ID = "it is not an owner/name hub id"


def local_path_reason(name: str) -> str | None:
    """Why ``name`` can only be a local path, or None when it may be an ``owner/name`` hub id: it starts
    with ``/``, ``.`` or ``~``, has a backslash, its first component exists here (``ckpts/missing`` with a
    ``ckpts/`` folder in the working directory), it names a weights/GGUF/JSON file, or it is not of the
    hub-id form."""
    if name.startswith(("/", ".", "~")):
        return f"it starts with {name[0]!r}"
    if "\\" in name or (os.altsep is not None and os.altsep in name):
        return "it contains a backslash"
    first = name.split("/", 1)[0]
    if "/" in name and os.path.lexists(first):
        return f"{first}/ exists in the working directory {os.getcwd()}"
    if name.lower().endswith(_FILE_SUFFIXES):
        return f"it names a {Path(name).suffix} file"
    if not _HUB_ID.match(name):
        return _NOT_HUB_ID
    return None


def _deepest_existing_note(name: str) -> str:
    for parent in Path(name).expanduser().parents:
        if str(parent) not in ("", ".") and parent.is_dir():
            return f"; {parent} exists, nothing below it by that name"
    return ""


def _offline() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _check_hub_id(name: str) -> None:
    """A hub id loads when it is in the HF cache; otherwise one quick look-up (no retries) says whether
    the hub has it, so an unknown id or an unreachable hub fails in seconds, naming the id."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if _offline():
        raise ModelInputError(f"{name!r}: no such local path, and this hub id is not in the HF cache "
                              "(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)")
    try:
        HfApi().model_info(name, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        return  # it exists; the loader uses the user's token
    except RepositoryNotFoundError:
        raise ModelInputError(f"{name!r}: no such local path, and no such model on the hub") from None
    except Exception as exc:  # noqa: BLE001 - any transport error: the loaders could not fetch it either
        raise ModelInputError(f"{name!r}: no such local path, not in the HF cache, and the hub cannot be reached "
                              f"({type(exc).__name__}: {exc})") from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_student(cfg: ModelConfig) -> LoadedModel:
    """The student named by ``cfg.student`` (a ``ModelConfig``), on ``cfg.device`` in ``cfg.dtype``."""
    return load_model(cfg.student, "student", cfg.dtype, cfg.device)


def load_teacher(cfg: ModelConfig) -> LoadedModel:
    """The teacher named by ``cfg.teacher`` (``self``: the initial student's weights); frozen (eval, no grad)."""
    if cfg.teacher == SELF_TEACHER:
        loaded = load_model(cfg.student, "student", cfg.dtype, cfg.device)
    else:
        loaded = load_model(cfg.teacher, "teacher", cfg.dtype, cfg.device)
    loaded.model.requires_grad_(False)
    return loaded


def load_model(name: str, role: Role, dtype: str = "float32", device: str = "auto") -> LoadedModel:
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if name in TINY_NAMES:
        from reopold_agents.tiny.load import load_tiny

        model, tokenizer, processor, path = load_tiny(name, role)
        loaded = LoadedModel(model=model, tokenizer=tokenizer, processor=processor, name=name, path=path)
    else:
        check_model_name(name)  # before a GGUF is converted or anything reaches a loader
        loaded = _load_pretrained(_hf_name(name, torch_dtype), torch_dtype)
    loaded.model.to(device=dev, dtype=torch_dtype)
    loaded.model.eval()
    return loaded


def _hf_name(name: str, torch_dtype: torch.dtype | str = "float32") -> str:
    """A GGUF checkpoint (a ``.gguf`` file or a packaged real model, reopold_agents/gguf.py) becomes its
    cached HF folder, converted on first use; any other name is returned as it is."""
    from reopold_agents.gguf import is_gguf, resolve_gguf

    return str(resolve_gguf(name, torch_dtype)) if is_gguf(name) else name


def _load_pretrained(name: str, torch_dtype: torch.dtype) -> LoadedModel:
    """Config, tokenizer, processor and the weights -- all of them (`from_pretrained_whole`) -- of ``name``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from reopold_agents.model_files import from_pretrained_whole

    tokenizer, processor, is_vl = _tokenizer_processor(name)
    tokenizer.padding_side = "left"
    auto = AutoModelForImageTextToText if is_vl else AutoModelForCausalLM
    model = from_pretrained_whole(auto.from_pretrained, name, dtype=torch_dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, processor=processor, name=name, path=name)


def _tokenizer_processor(name: str) -> tuple[Any, Any, bool]:
    """``(tokenizer, processor or None, is_vl)`` of a checked model name; a library error names ``name``."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    check_model_name(name)
    try:
        is_vl = getattr(AutoConfig.from_pretrained(name), "vision_config", None) is not None
        tokenizer = AutoTokenizer.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name) if is_vl else None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelInputError(f"{name}: cannot load its config, tokenizer or processor ({type(exc).__name__}: {exc})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, processor, is_vl


def load_tokenizer_and_processor(name: str, role: Role = "teacher") -> tuple[Any, Any, str | None]:
    """Tokenizer, processor and loadable path of a model without loading its weights (for engines
    such as vLLM that load the weights themselves). The path is None for a random tiny model."""
    if name in TINY_NAMES:
        from reopold_agents.tiny.load import tokenizer_and_processor, weights_dir

        tok, processor = tokenizer_and_processor(name)
        folder = weights_dir(name, role)
        return tok, processor, (None if folder is None else str(folder))
    check_model_name(name)
    name = _hf_name(name)
    tok, processor, _ = _tokenizer_processor(name)
    return tok, processor, name


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The image encoder (patch embedding, vision blocks and merger) of a VL model; None for text models.

    transformers puts it at ``model.model.visual`` (Qwen2-VL / Qwen2.5-VL) or ``model.visual`` (older
    layouts); other VL families use ``vision_tower``. A LoRA student (peft) is looked into, so
    ``trainer.freeze_vision`` also freezes the adapters peft put into the tower's projections.
    """
    from reopold_agents.lora import hf_module

    model = hf_module(model)
    for owner in (getattr(model, "model", None), model):
        for attr in ("visual", "vision_tower"):
            module = getattr(owner, attr, None) if owner is not None else None
            if isinstance(module, torch.nn.Module):
                return module
    return None


def freeze_vision_tower(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Stop updating a VL model's image encoder (``requires_grad=False``, so no gradient is computed
    through it either) and return the parameters this switched off; a text model is left as is ([]).
    The common default for RL of VLMs (prime-rl, EasyR1); on the tiny models a trained tower collapses
    to image-independent features (docs/run.md)."""
    tower = vision_tower(model)
    if tower is None:
        return []
    params = [p for p in tower.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    return params


def mm_token_type_ids(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Qwen-VL token types (0 text, 1 image, 2 video) that switch on 3-D mrope positions for vision
    tokens; None for text-only models. Every forward of a VL model (engine, teacher, learner) must pass
    the same, or positions (and log-probs) differ between rollout and training."""
    cfg = getattr(model, "config", None)
    image_id = getattr(cfg, "image_token_id", None)
    if image_id is None:
        return None
    types = (input_ids == image_id).to(torch.int32)
    video_id = getattr(cfg, "video_token_id", None)
    if video_id is not None:
        types = types + 2 * (input_ids == video_id).to(torch.int32)
    return types


def forward_inputs(model: torch.nn.Module, input_ids: torch.Tensor, model_inputs: dict[str, Any] | None) -> dict[str, Any]:
    """``model_inputs`` plus ``mm_token_type_ids`` when the model is a VL model and images are present."""
    extra = dict(model_inputs or {})
    if "image_grid_thw" in extra or "video_grid_thw" in extra:
        types = mm_token_type_ids(model, input_ids)
        if types is not None:
            extra.setdefault("mm_token_type_ids", types)
    return extra
