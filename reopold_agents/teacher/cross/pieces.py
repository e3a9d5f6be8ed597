"""The exact UTF-8 bytes each token id stands for, for byte-level BPE and SentencePiece-style tokenizers.

Cross-tokenizer scoring aligns two tokenizations of the same text by where their tokens start and end.
Character offsets cannot say that: a byte-level BPE token may hold half of an emoji (HF offset mappings
then give both halves the whole character), and a byte-fallback tokenizer writes a CJK character as
three ``<0xE4>``-style tokens. Bytes can, so every offset in the cross-tokenizer code is a byte offset
into ``text.encode("utf-8")``, and this module says how many bytes each token contributes.

Supported: the decoders of GPT-2 / Qwen / SmolLM2 / Llama-3 (``ByteLevel``) and of Llama-2 / Mistral /
Gemma (``Replace("▁", " ")`` or ``Metaspace`` with ``ByteFallback`` and ``Fuse``/``Strip``). Added and
special tokens stand for their own text. Anything else raises ``UnsupportedTokenizerError`` rather than
guessing; callers always check that the pieces join to the text they expect.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class UnsupportedTokenizerError(ValueError):
    """The tokenizer's decoder is not one whose per-token bytes this module knows how to read."""


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for every byte, inverted (character -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_steps(tokenizer: Any) -> list[dict]:
    """The backend decoder as a flat list of step configs (a ``Sequence`` unrolled)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizerError(f"{type(tokenizer).__name__} has no fast (tokenizers) backend")
    decoder = json.loads(backend.to_str()).get("decoder")
    if decoder is None:
        return []
    steps = decoder.get("decoders") if decoder.get("type") == "Sequence" else [decoder]
    return list(steps or [])


class TokenPieces:
    """Maps token ids of one tokenizer to their bytes (built once per tokenizer; cheap to call)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        steps = _decoder_steps(tokenizer)
        kinds = [s.get("type") for s in steps]
        self.byte_level = "ByteLevel" in kinds
        self.byte_fallback = "ByteFallback" in kinds
        self.replacements: list[tuple[str, str]] = []
        # Metaspace (prepend) and Strip(start=1) drop the space a SentencePiece tokenizer put before the
        # first word, so a decoded text may lack the first byte of the first piece.
        self.strips_leading_space = False
        for step in steps:
            kind = step.get("type")
            if kind == "Replace":
                pattern = step.get("pattern", {})
                if "String" not in pattern:
                    raise UnsupportedTokenizerError(f"decoder Replace with a regex pattern {pattern!r}")
                self.replacements.append((pattern["String"], step.get("content", "")))
            elif kind == "Metaspace":
                self.replacements.append((step.get("replacement", "▁"), " "))
                self.strips_leading_space |= step.get("prepend_scheme", "always") != "never"
            elif kind == "Strip":
                self.strips_leading_space |= step.get("content") == " " and int(step.get("start", 0)) > 0
            elif kind not in ("ByteLevel", "ByteFallback", "Fuse", "Strip"):
                raise UnsupportedTokenizerError(f"unsupported decoder step {kind!r} (decoder steps: {kinds})")
        if self.byte_level and (self.byte_fallback or self.replacements):
            raise UnsupportedTokenizerError(f"decoder mixes ByteLevel with SentencePiece steps: {kinds}")
        self.added: dict[int, str] = {int(i): t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self.special_ids: set[int] = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.special_ids.update(int(i) for i in tokenizer.all_special_ids)
        self._cache: dict[int, bytes] = {}

    def piece(self, token_id: int, skip_special: bool = False) -> bytes:
        """The bytes of one token; b"" for a special token when ``skip_special`` (as decode skips it)."""
        if skip_special and token_id in self.special_ids:
            return b""
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        if token_id in self.added:
            out = self.added[token_id].encode("utf-8")
        else:
            token = self.tokenizer.convert_ids_to_tokens(int(token_id))
            if token is None:
                raise ValueError(f"token id {token_id} is outside the vocabulary ({len(self.tokenizer)} tokens)")
            out = self._model_piece(token)
        self._cache[token_id] = out
        return out

    def _model_piece(self, token: str) -> bytes:
        if self.byte_level:
            table = _byte_level_decoder()
            try:
                return bytes(table[c] for c in token)
            except KeyError as e:
                raise UnsupportedTokenizerError(f"byte-level token {token!r} holds a non-byte character {e}") from None
        if self.byte_fallback:
            m = _BYTE_TOKEN.match(token)
            if m:
                return bytes([int(m.group(1), 16)])
        for old, new in self.replacements:
            token = token.replace(old, new)
        return token.encode("utf-8")

    def pieces(self, ids: list[int], skip_special: bool = False) -> list[bytes]:
        return [self.piece(int(i), skip_special) for i in ids]


def pieces_of_text(tp: TokenPieces, pieces: list[bytes], text: str) -> list[bytes] | None:
    """``pieces`` made to join to exactly ``text``'s bytes (dropping a SentencePiece prefix space the
    decoder strips), or None when they spell something else (bad UTF-8, a template rewrite, ...)."""
    want = text.encode("utf-8")
    got = b"".join(pieces)
    if got == want:
        return list(pieces)
    if tp.strips_leading_space and got == b" " + want:
        out = list(pieces)
        first = next(i for i, p in enumerate(out) if p)
        out[first] = out[first][1:]
        return out
    return None


def byte_spans(pieces: list[bytes], start: int = 0) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` byte spans of the pieces, beginning at ``start``."""
    out: list[tuple[int, int]] = []
    pos = start
    for p in pieces:
        out.append((pos, pos + len(p)))
        pos += len(p)
    return out
