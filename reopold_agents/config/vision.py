"""Vision envs need a vision-language student: checked at start-up, without loading a model.

A vision env (``vqa``) puts images in the prompt; a text-only student has no processor to encode them,
and the run used to fail only after every model had loaded. Whether a model is VL is read without its
weights: the tiny pairs by name, an HF directory (or a hub id already in the local HF cache) from its
``config.json`` (a ``vision_config`` block, as ``reopold_agents.models`` decides; a text model lists
only ``*ForCausalLM`` architectures). Anything else (a GGUF file, a hub id not cached, a config that
says neither) is left to the loader: this check refuses only what it knows is text-only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from reopold_agents.config.tiny_pairs import TINY_NAMES, VL_TINY_NAMES, tiny_for_env

VISION_ENVS = ("vqa",)  # envs whose prompts carry images (envs/vqa.py)
_TINY_TEXT = tuple(n for n in TINY_NAMES if n not in VL_TINY_NAMES)  # the Qwen2 pairs
_HINT = f"use a vision-language student ({', '.join(VL_TINY_NAMES)} or a VL checkpoint)"


def vl_from_config(config: dict[str, object]) -> Optional[bool]:
    """True/False when an HF ``config.json`` says VL or text-only; None when it says neither."""
    if config.get("vision_config") is not None:
        return True
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and all(isinstance(a, str) and a.endswith("ForCausalLM") for a in archs):
        return False
    return None


def _config_json(name: str) -> Optional[Path]:
    """The ``config.json`` of a local model directory, or of a hub id already in the HF cache (no network)."""
    local = Path(name).expanduser()
    if local.is_dir():
        found = local / "config.json"
        return found if found.is_file() else None
    if local.exists() or name.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


def model_is_vl(name: str) -> Optional[bool]:
    """Whether model ``name`` (a tiny pair, an HF directory or id) is a vision-language model; None: unknown."""
    if name in VL_TINY_NAMES:
        return True
    if name in _TINY_TEXT:
        return False
    path = _config_json(name)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # unreadable: the loader names the file
        return None
    return vl_from_config(config) if isinstance(config, dict) else None


def student_name(student: str, env_name: str) -> str:
    """``model.student`` as the run resolves it (``model=tiny`` is the env's test-bed pair, ``ENV_TINY``)."""
    return tiny_for_env(student, env_name)


def check_vision_student(student: str, env_name: str, mix_envs: dict[str, str]) -> None:
    """Raise ValueError('<key>: why') when a vision env (the run's env, or a mix entry's, ``mix_envs``:
    entry -> env name) would run on a student known to be text-only."""
    name = student_name(student, env_name)
    needing = [(f"mix.{entry}", f"mix entry {entry!r} (env {env})") for entry, env in mix_envs.items()
               if env in VISION_ENVS]
    if env_name in VISION_ENVS:
        needing.insert(0, ("model.student", f"env={env_name}"))
    if not needing or model_is_vl(name) is not False:
        return
    key, what = needing[0]
    raise ValueError(f"{key}: {what} puts images in the prompt, but model.student={name!r} is a text-only "
                     f"model; {_HINT}")
