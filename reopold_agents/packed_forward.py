"""The base model's last hidden states over a padding-free layout (``reopold_agents/packing.py``).

Which attention keeps packed sequences apart decides the layout (``attention_layout``):

- flash-attn (``flash_attention_2``/``_3``, GPU): one row ``[1, N]`` and position ids that restart at each
  sequence; transformers derives ``cu_seqlens`` from them and calls the varlen kernel, so no compute
  crosses sequences;
- sdpa or eager (CPU, or a GPU without flash-attn): bins ``[R, C]`` with a dense block-diagonal causal
  mask (a float one for eager), ``C`` the longest row;
- anything else (flex attention, a custom kernel): no packing, the caller takes the padded pass.

A shared prefix (an agent's system prompt and tool schemas) runs once and every packed suffix attends to
its KV cache through the same mask, so packing and the shared-prefix pass combine (dense layouts only).
Values and gradients equal the padded pass's; ``TokenStates`` says where each padded position landed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reopold_agents.packing import Packing, pack_rows, right_padded

VARLEN, DENSE = "varlen", "dense"
PER_TOKEN_INPUTS = ("mm_token_type_ids",)  # model inputs laid out like input_ids (Batch.truncate cuts the same)


@dataclass(frozen=True)
class TokenStates:
    """Last hidden states as rows ``flat [M, H]``, and the row of each position of the padded batch."""

    flat: torch.Tensor
    index: torch.Tensor | None  # [B, T] long (-1: padding); None: ``flat`` is the padded [B * T, H]

    @classmethod
    def padded(cls, hidden: torch.Tensor) -> "TokenStates":
        return cls(hidden.reshape(-1, hidden.shape[-1]), None)

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[n, H]`` at flattened padded positions ``b * T + t``."""
        rows = positions if self.index is None else self.index.reshape(-1).index_select(0, positions)
        return self.flat.index_select(0, rows)


def attention_layout(base: nn.Module, attention_mask: torch.Tensor) -> str | None:
    """``VARLEN``, ``DENSE`` or None (no packing: unknown attention, or rows that are not right-padded)."""
    config = getattr(base, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    impl = str(getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", ""))
    if not right_padded(attention_mask):
        return None
    if "flash" in impl:
        return VARLEN
    return DENSE if impl in ("sdpa", "eager") else None


def packed_text(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layout: str,
                groups: list[tuple[list[int], int]]) -> TokenStates:
    """A text batch: each ``(rows, shared)`` group packed on its own, its first ``shared`` tokens (common
    to its rows; 0: none) run once. ``VARLEN`` takes one group without a prefix."""
    bsz, length = input_ids.shape
    index = torch.full((bsz, length), -1, dtype=torch.long, device=input_ids.device)
    parts: list[torch.Tensor] = []
    offset = 0
    for rows, shared in groups:
        idx = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
        ids, mask = input_ids.index_select(0, idx), attention_mask.index_select(0, idx)
        cut = int(mask.sum(dim=1).max())
        ids, mask = ids[:, :cut], mask[:, :cut]
        found = _with_prefix(base, ids, mask, shared) if shared else None
        flat, local = found if found is not None else _plain(base, ids, mask, layout)
        index[idx, :cut] = torch.where(local >= 0, local + offset, local)
        parts.append(flat)
        offset += flat.shape[0]
    return TokenStates(parts[0] if len(parts) == 1 else torch.cat(parts), index)


def packed_vl(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layout: str,
              extra: dict[str, Any]) -> TokenStates | None:
    """A Qwen2.5-VL batch: rows keep their order (image features are placed in token order), the 3-D
    rope positions are the padded batch's (``get_rope_index``), packed beside restarting text positions
    (``[4, R, C]``, what the model reads as packed input). None for videos or a model without
    ``get_rope_index``."""
    if "video_grid_thw" in extra or "pixel_values_videos" in extra:
        return None
    grid = extra.get("image_grid_thw")
    types = extra.get("mm_token_type_ids")
    if grid is not None and (types is None or not hasattr(base, "get_rope_index")):
        return None
    packing = pack_rows(input_ids, attention_mask, capacity=None if layout == VARLEN else 0, keep_order=True)
    text = packing.position_ids
    if grid is not None:
        rope, _ = base.get_rope_index(input_ids, types, image_grid_thw=grid, attention_mask=attention_mask)
        rope = packing.pack(rope.permute(1, 2, 0)).permute(2, 0, 1)
    else:
        rope = text[None].expand(3, -1, -1)
    inputs = {k: (packing.pack(v) if k in PER_TOKEN_INPUTS else v) for k, v in extra.items()}
    out = base(input_ids=packing.input_ids, position_ids=torch.cat([text[None], rope]), use_cache=False,
               attention_mask=_mask(base, packing) if layout == DENSE else None, **inputs)
    return TokenStates(_last(out).reshape(-1, _last(out).shape[-1]), packing.index)


def _plain(base: nn.Module, ids: torch.Tensor, mask: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows without a shared prefix: ``(flat hidden [M, H], index [n, T])``.

    ``VARLEN``: all rows in one packed row. ``DENSE``: the rows longer than half the longest run as one
    batch under the plain causal mask, without a padding mask (right padding: a real token never sees
    the padding after it), which lets sdpa skip the masked-out half of every row's attention; the other
    rows are packed into bins as wide as the longest of them, under the block-diagonal mask."""
    if layout == VARLEN:
        return _packed(base, pack_rows(ids, mask), dense=False)
    lengths = mask.sum(dim=1)
    solo = lengths * 2 > lengths.max()
    if int(solo.sum()) == ids.shape[0] - 1:
        solo[:] = True  # one row left over: it has nothing to share a bin with
    index = torch.full_like(ids, -1)
    parts: list[torch.Tensor] = []
    rows = solo.nonzero().flatten()
    if rows.numel():
        width = int(lengths[rows].max())
        hidden = _last(base(input_ids=ids.index_select(0, rows)[:, :width], use_cache=False))
        parts.append(hidden.reshape(-1, hidden.shape[-1]))
        local = torch.arange(rows.numel() * width, device=ids.device).view(-1, width)
        index[rows, :width] = torch.where(mask.index_select(0, rows)[:, :width].bool(), local, -1)
    rest = (~solo).nonzero().flatten()
    if rest.numel():
        flat, local = _packed(base, pack_rows(ids.index_select(0, rest), mask.index_select(0, rest), capacity=0),
                              dense=True)
        offset = parts[0].shape[0] if parts else 0
        index[rest] = torch.where(local >= 0, local + offset, -1)
        parts.append(flat)
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), index


def _packed(base: nn.Module, packing: Packing, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over a packed layout: ``(flat hidden [R * C, H], index)``."""
    out = base(input_ids=packing.input_ids, position_ids=packing.position_ids, use_cache=False,
               attention_mask=_mask(base, packing) if dense else None)
    hidden = _last(out)
    return hidden.reshape(-1, hidden.shape[-1]), packing.index


def _with_prefix(base: nn.Module, ids: torch.Tensor, mask: torch.Tensor, shared: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The shared prefix run once (one row, its KV cache kept in the autograd graph), then every row's
    suffix packed into bins that attend to it. None when the model returns no cache (e.g. gradient
    checkpointing)."""
    if getattr(base, "gradient_checkpointing", False) and base.training:
        return None  # transformers turns the cache off then: no prefix to attend to
    head = base(input_ids=ids[:1, :shared], attention_mask=mask[:1, :shared], use_cache=True)
    cache = getattr(head, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    packing = pack_rows(ids, mask, start=shared, capacity=0)
    rows = packing.shape[0]
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    tail = base(input_ids=packing.input_ids, position_ids=packing.position_ids, past_key_values=cache,
                use_cache=True, attention_mask=_mask(base, packing, prefix=shared))
    prefix, suffix = _last(head)[0], _last(tail)
    flat = torch.cat([prefix, suffix.reshape(-1, suffix.shape[-1])])
    ar = torch.arange(ids.shape[1], device=ids.device).expand_as(packing.index)
    index = torch.where(packing.index >= 0, packing.index + shared, torch.where(ar < shared, ar, -1))
    return flat, index


def _mask(base: nn.Module, packing: Packing, prefix: int = 0) -> torch.Tensor:
    """The dense mask in the form the model's attention takes: bool for sdpa, additive for eager."""
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    eager = getattr(config, "_attn_implementation", "sdpa") == "eager"
    dtype = next(base.parameters()).dtype if eager else torch.bool
    return packing.attention_mask(dtype, prefix=prefix)


def _last(out: Any) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
