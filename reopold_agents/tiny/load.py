"""Loading a tiny pair by name (``tiny``, ``tiny_toolqa``, ``tiny_vl``): the only part of the tiny-model
wing the training path imports, and only when ``model=tiny*`` asks for it.

Weights come from the package's shipped folder (``reopold_agents/tiny/assets/<name>-<role>/``, made by
``scripts/build_tiny_models.py --ship``), else from a local build in the cache
(``tiny_model_dir``); when neither exists a randomly initialised model of the same architecture is
built from config (with a warning), so everything still runs. A folder that exists loads whole or not
at all: missing or unexpected tensors, or a config without weights, are an error naming the folder
(``reopold_agents.model_files``), never a partly random model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reopold_agents.config.tiny_pairs import TINY_PAIRS

log = logging.getLogger(__name__)

BUILD_INFO = "build_info.json"
SHIPPED_DIR = Path(__file__).parent / "assets"

# Architecture of each role (the SFT recipes in recipes.py train models of these sizes).
def is_vl_pair(name: str) -> bool:
    """A Qwen2.5-VL pair (image processor, vision tower); the rest are Qwen2 (``config/tiny_pairs.py``)."""
    return TINY_PAIRS[name].vl


TINY_SIZES: dict[tuple[str, str], dict[str, int]] = {
    (name, role): pair.sizes(role) for name, pair in TINY_PAIRS.items() for role in ("student", "teacher")
}


def shipped_dir(name: str, role: str) -> Path:
    """Where the package ships the pre-built ``name`` pair."""
    return SHIPPED_DIR / f"{name}-{role}"


def tiny_model_dir(name: str, role: str) -> Path:
    """Where ``scripts/build_tiny_models.py`` builds a pair (HF format) before shipping it."""
    from reopold_agents.tiny.tokenizer import cache_dir

    return cache_dir() / "models" / f"{name}-{role}"


def weights_dir(name: str, role: str) -> Path | None:
    """The folder the ``name`` ``role`` weights load from (shipped, else built locally), or None."""
    for folder in (shipped_dir(name, role), tiny_model_dir(name, role)):
        if (folder / "config.json").exists():
            return folder
    return None


def tokenizer_and_processor(name: str) -> tuple[Any, Any]:
    """The project tokenizer (shared by every tiny model) and, for a VL pair, its image processor."""
    from reopold_agents.tiny import build_tokenizer
    from reopold_agents.tiny.vl import tiny_vl_processor

    tok = build_tokenizer()
    return tok, (tiny_vl_processor(tok) if is_vl_pair(name) else None)


def load_tiny(name: str, role: str) -> tuple[Any, Any, Any, str | None]:
    """``(model, tokenizer, processor, path)``; ``path`` is None for a random model that exists only in memory."""
    tokenizer, processor = tokenizer_and_processor(name)
    folder = weights_dir(name, role)
    if folder is not None:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        from reopold_agents.model_files import check_model_path, from_pretrained_whole

        check_model_path(folder, need_tokenizer=False)  # the pairs share the project tokenizer
        auto = AutoModelForImageTextToText if is_vl_pair(name) else AutoModelForCausalLM
        return from_pretrained_whole(auto.from_pretrained, str(folder)), tokenizer, processor, str(folder)
    log.warning("no trained %s %s (shipped or built): using a randomly initialised model", name, role)
    from reopold_agents.tiny import tiny_qwen2
    from reopold_agents.tiny.vl import tiny_qwen2_5_vl

    build = tiny_qwen2_5_vl if is_vl_pair(name) else tiny_qwen2
    model = build(tokenizer, seed=0 if role == "student" else 1, **TINY_SIZES[(name, role)])
    return model, tokenizer, processor, None
