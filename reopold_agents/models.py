"""Loading the student and the teacher: the project's tiny pairs or anything ``from_pretrained`` reads.

``tiny`` / ``tiny_toolqa`` / ``tiny_math`` / ``tiny_vl`` name project-built Qwen2 / Qwen2.5-VL pairs that share the
project tokenizer; they load through ``reopold_agents.tiny.load`` (imported only for those names).
Any other name is an HF id or local path and goes through ``AutoModel*.from_pretrained``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from reopold_agents.config.model import SELF_TEACHER, TINY_NAMES

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


def check_model_name(name: str) -> None:
    """Fail at once for a name that is neither a tiny pair, an existing path nor an ``owner/name`` hub
    id: a relative path that does not exist would otherwise be tried as a hub id, with retries."""
    from reopold_agents.gguf import is_gguf

    if name in TINY_NAMES or name == SELF_TEACHER or os.path.exists(name) or (is_gguf(name) and not name.endswith(".gguf")):
        return
    if not _HUB_ID.match(name) or name.startswith("."):
        raise ValueError(f"{name!r} is not a tiny pair ({', '.join(TINY_NAMES)}), not an existing path "
                         "and not an HF id (owner/name)")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_student(cfg: Any) -> LoadedModel:
    """The student named by ``cfg.student`` (a ``ModelConfig``), on ``cfg.device`` in ``cfg.dtype``."""
    return load_model(cfg.student, "student", cfg.dtype, cfg.device)


def load_teacher(cfg: Any) -> LoadedModel:
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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    check_model_name(name)
    config = AutoConfig.from_pretrained(name)
    is_vl = getattr(config, "vision_config", None) is not None
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    auto = AutoModelForImageTextToText if is_vl else AutoModelForCausalLM
    model = auto.from_pretrained(name, dtype=torch_dtype)
    processor = AutoProcessor.from_pretrained(name) if is_vl else None
    return LoadedModel(model=model, tokenizer=tokenizer, processor=processor, name=name, path=name)


def load_tokenizer_and_processor(name: str, role: Role = "teacher") -> tuple[Any, Any, str | None]:
    """Tokenizer, processor and loadable path of a model without loading its weights (for engines
    such as vLLM that load the weights themselves). The path is None for a random tiny model."""
    if name in TINY_NAMES:
        from reopold_agents.tiny.load import tokenizer_and_processor, weights_dir

        tok, processor = tokenizer_and_processor(name)
        folder = weights_dir(name, role)
        return tok, processor, (None if folder is None else str(folder))
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    check_model_name(name)
    name = _hf_name(name)
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    is_vl = getattr(AutoConfig.from_pretrained(name), "vision_config", None) is not None
    return tok, (AutoProcessor.from_pretrained(name) if is_vl else None), name


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The image encoder (patch embedding, vision blocks and merger) of a VL model; None for text models.

    transformers puts it at ``model.model.visual`` (Qwen2-VL / Qwen2.5-VL) or ``model.visual`` (older
    layouts); other VL families use ``vision_tower``.
    """
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
