"""Model inputs on disk, checked before a library reads them, and weights that must load whole.

transformers, tokenizers and gguf fail on a broken input with their own tracebacks (often not naming
the file), and ``from_pretrained`` *initialises at random* every tensor a checkpoint lacks, with only a
log line. So every local model input is checked here first -- the path resolves (no symlink loop), a
folder has a parseable ``config.json``, weights whose headers are whole and a tokenizer that loads, a
``.gguf`` file has the GGUF magic and every tensor inside the file -- and after loading,
`require_complete` turns any missing or unexpected tensor into an error naming the source and the tensors.
Every failure is a `ModelInputError` (a ValueError) whose message starts with the offending path.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Mapping, Sequence

from torch import nn

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
_GGUF_HEADER_BYTES = 24  # magic, version (u32), tensor count (u64), metadata count (u64)
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_MAX_SAFETENSORS_HEADER = 100_000_000


class ModelInputError(ValueError):
    """A model input (folder, weights, tokenizer, GGUF file) is missing, broken or incomplete; names the path."""


def resolve_existing(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` and symlinks resolved; a missing path, a dangling link or a symlink loop is a
    `ModelInputError` naming it (and the deepest part of it that does exist)."""
    raw = Path(path).expanduser()
    try:
        return raw.resolve(strict=True)
    except FileNotFoundError:
        if raw.is_symlink():
            raise ModelInputError(f"{path}: a symlink to {os.readlink(raw)!r}, which does not exist") from None
        raise ModelInputError(f"{path}: does not exist{_deepest_existing(raw)}") from None
    except (OSError, RuntimeError) as exc:  # ELOOP (OSError) or "Symlink loop" (RuntimeError, Python < 3.13)
        raise ModelInputError(f"{path}: cannot be resolved, a symlink loop? ({type(exc).__name__}: {exc})") from None


def _deepest_existing(path: Path) -> str:
    for parent in path.parents:
        if str(parent) not in ("", ".") and parent.is_dir():
            return f" ({parent} exists, nothing below it by that name)"
    return ""


def check_model_path(path: str | os.PathLike, need_tokenizer: bool = True) -> Path:
    """Check a local model input -- a folder ``from_pretrained`` reads or a ``.gguf`` file -- without loading
    any tensor; returns it resolved. ``need_tokenizer=False`` for folders whose tokenizer comes from
    elsewhere (the tiny pairs share the project tokenizer)."""
    resolved = resolve_existing(path)
    if resolved.is_file():
        if resolved.suffix.lower() != ".gguf":
            raise ModelInputError(f"{path}: a file; a model is a folder (config.json, weights, tokenizer) or a .gguf file")
        check_gguf_file(resolved, shown=str(path))
        return resolved
    if not resolved.is_dir():
        raise ModelInputError(f"{path}: neither a folder nor a .gguf file")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise ModelInputError(f"{path}: not readable")
    _check_config(resolved / "config.json")
    check_weight_files(resolved)
    if need_tokenizer:
        check_tokenizer_files(resolved)
    return resolved


def _read_json(f: Path) -> object:
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelInputError(f"{f}: unreadable JSON ({type(exc).__name__}: {exc})") from None


def _check_config(f: Path) -> None:
    if not f.is_file():
        raise ModelInputError(f"{f}: missing (a model folder needs config.json)")
    config = _read_json(f)
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelInputError(f"{f}: not a transformers config (no 'model_type')")


def check_weight_files(folder: Path) -> list[Path]:
    """The folder's weight files, each present and (safetensors) with a whole header; an index's every
    shard must exist. No weights at all is an error: ``from_pretrained`` would fail or initialise at random."""
    for name in WEIGHT_INDEXES:
        index = folder / name
        if index.exists():
            data = _read_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelInputError(f"{index}: no 'weight_map'")
            for shard in sorted(set(map(str, weight_map.values()))):
                if not (folder / shard).is_file():
                    raise ModelInputError(f"{folder / shard}: missing (listed in {index.name})")
    files = sorted({f for pattern in WEIGHT_GLOBS for f in folder.glob(pattern) if f.is_file()})
    if not files:
        raise ModelInputError(f"{folder}: no weights (model.safetensors, sharded *.safetensors or pytorch_model.bin) "
                              "next to config.json")
    for f in files:
        if f.suffix == ".safetensors":
            safetensors_header(f)
        elif f.stat().st_size == 0:
            raise ModelInputError(f"{f}: empty")
    return files


def safetensors_header(f: Path) -> dict[str, object]:
    """The parsed header of a safetensors file; its tensors' byte ranges must end exactly at the file's end."""
    try:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > _MAX_SAFETENSORS_HEADER:
                raise ValueError(f"header length {n}")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelInputError(f"{f}: damaged safetensors header ({type(exc).__name__}: {exc})") from None
    size = f.stat().st_size
    if 8 + n + end != size:
        raise ModelInputError(f"{f}: {size} bytes, the header describes {8 + n + end} (truncated or overwritten)")
    return header


def check_tokenizer_files(folder: Path) -> None:
    """A tokenizer is there and its JSON files parse; ``tokenizer.json`` is loaded by ``tokenizers`` itself."""
    present = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not present:
        raise ModelInputError(f"{folder}: no tokenizer ({', '.join(TOKENIZER_FILES)})")
    for f in present:
        if f.suffix == ".json":
            _read_json(f)
    fast = folder / "tokenizer.json"
    if fast.is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(fast))
        except Exception as exc:  # noqa: BLE001 - the Rust side raises a bare Exception: name the file
            raise ModelInputError(f"{fast}: not a valid tokenizer ({type(exc).__name__}: {exc})") from None


def check_gguf_file(path: Path, shown: str | None = None) -> None:
    """GGUF magic and version, a header that parses, and every tensor's bytes inside the file (a truncated
    download fails here, not as a numpy reshape error deep in transformers)."""
    name = shown or str(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(_GGUF_HEADER_BYTES)
    if len(head) < _GGUF_HEADER_BYTES and GGUF_MAGIC.startswith(head[:4]):
        raise ModelInputError(f"{name}: truncated ({size} bytes, shorter than the GGUF header)")
    if head[:4] != GGUF_MAGIC:
        raise ModelInputError(f"{name}: not a GGUF file (starts with {head[:4]!r}, expected {GGUF_MAGIC!r})")
    if len(head) < _GGUF_HEADER_BYTES:
        raise ModelInputError(f"{name}: truncated ({size} bytes, shorter than the GGUF header)")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in GGUF_VERSIONS:
        raise ModelInputError(f"{name}: GGUF version {version}; supported: {GGUF_VERSIONS}")
    try:
        end = _gguf_tensor_end(path)
    except ImportError:
        raise ModelInputError(f"{name}: reading GGUF needs the 'gguf' package (pip install -e .[real])") from None
    except (struct.error, ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError) as exc:
        raise ModelInputError(f"{name}: damaged or truncated GGUF header ({type(exc).__name__}: {exc})") from None
    if end > size:
        raise ModelInputError(f"{name}: truncated ({size} bytes, the tensors end at {end})")


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_tensor_end(path: Path) -> int:
    """Where the last tensor's bytes end, from the header alone (gguf's ``GGUFReader`` takes ~10 s on a
    Qwen file, parsing the whole vocabulary; this skips it). Raises struct.error/ValueError when damaged."""
    import mmap

    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        if n_tensors == 0 or n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ValueError(f"{n_tensors} tensors, {n_kv} metadata entries")
        pos, alignment = _GGUF_HEADER_BYTES, 32
        for _ in range(n_kv):
            key, pos = _gguf_string(buf, pos)
            (vtype,), pos = struct.unpack_from("<I", buf, pos), pos + 4
            if key == "general.alignment" and vtype == 4:
                (alignment,) = struct.unpack_from("<I", buf, pos)
            pos = _gguf_skip_value(buf, pos, vtype)
        tensors = []
        for _ in range(n_tensors):
            tname, pos = _gguf_string(buf, pos)
            (n_dims,), pos = struct.unpack_from("<I", buf, pos), pos + 4
            dims, pos = struct.unpack_from(f"<{n_dims}Q", buf, pos), pos + 8 * n_dims
            ttype, offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            n = 1
            for d in dims:
                n *= d
            tensors.append(offset + n // block * type_size)
        if alignment <= 0:
            raise ValueError(f"general.alignment {alignment}")
        data_start = (pos + alignment - 1) // alignment * alignment
        return data_start + max(tensors)


def _gguf_string(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    if pos + 8 + n > len(buf):
        raise ValueError(f"a string of {n} bytes at offset {pos} runs past the end")
    return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8"), pos + 8 + n


def _gguf_skip_value(buf: bytes | memoryview, pos: int, vtype: int) -> int:
    if vtype in _GGUF_SCALARS:
        return pos + struct.calcsize(_GGUF_SCALARS[vtype])
    if vtype == _GGUF_STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + n
    if vtype == _GGUF_ARRAY:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _GGUF_SCALARS:
            return pos + count * struct.calcsize(_GGUF_SCALARS[etype])
        for _ in range(count):
            pos = _gguf_skip_value(buf, pos, etype)
            if pos > len(buf):
                raise ValueError("an array runs past the end")
        return pos
    raise ValueError(f"unknown metadata value type {vtype} at offset {pos}")


def require_complete(source: str, missing: Sequence[str], unexpected: Sequence[str],
                     mismatched: Sequence[object] = (), errors: Sequence[str] = ()) -> None:
    """Raise `ModelInputError` naming ``source`` and the tensors when a load was not whole.

    ``missing`` must already leave out tied parameters (transformers does: a model with
    ``tie_word_embeddings`` legitimately has no ``lm_head.weight`` in its files).
    """
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", mismatched)):
        if keys:
            names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            problems.append(f"{len(names)} tensor(s) {label}: {shown}")
    problems.extend(str(e) for e in errors)
    if problems:
        raise ModelInputError(f"{source}: the weights do not match the model, refusing to initialise any at random; "
                              + "; ".join(problems))


def require_complete_info(source: str, info: Mapping[str, object]) -> None:
    """`require_complete` on the ``loading_info`` dict of ``from_pretrained(..., output_loading_info=True)``."""

    def keys(name: str) -> list[object]:
        value = info.get(name) or ()
        return list(value) if isinstance(value, (list, set, tuple)) else [value]

    require_complete(source, [str(k) for k in keys("missing_keys")], [str(k) for k in keys("unexpected_keys")],
                     keys("mismatched_keys"), [str(e) for e in keys("error_msgs")])


def from_pretrained_whole(load: Callable[..., tuple[nn.Module, dict[str, object]]], source: str,
                          **kwargs: object) -> nn.Module:
    """``load(source, output_loading_info=True, **kwargs)`` (an ``Auto*.from_pretrained``), refusing a
    partial load (`require_complete_info`); a library error while reading is re-raised naming ``source``."""
    try:
        model, info = load(source, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelInputError(f"{source}: cannot load the model ({type(exc).__name__}: {exc})") from exc
    require_complete_info(source, info)
    return model
