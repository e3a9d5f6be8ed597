"""Padding-free batches: the real tokens of a right-padded ``[B, T]`` batch laid out as packed rows.

A padded batch pays for ``B x T`` tokens in every layer; the packed layout pays for the real ones. Each
sequence keeps its own position ids (its offset in the padded row) and attends only to itself, so a
model's per-token outputs are the padded path's (docs/run.md, "Padding-free batches").

Two layouts, one type:

- one row ``[1, N]`` (``capacity=None``): what flash-attn's varlen kernel takes, with ``cu_seqlens``;
- bins ``[R, C]`` (``capacity=C``): sequences first-fit into rows of at most ``C`` tokens, the rest of a
  bin a pad tail. An attention that needs a dense mask (sdpa, eager) then costs ``R x C^2`` rather than
  ``N^2``: on CPU the bins are the fast choice, at most as many rows as the padded batch.

``index`` maps every real token of the padded batch to its slot in the flattened layout, so any
per-token output comes back to ``[B, T]`` (``unpack``) or is gathered at chosen positions directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """A packed layout of some rows' tokens ``[start, length)`` (``start`` > 0: the suffixes after a
    shared prefix, whose positions go on from ``start``)."""

    input_ids: torch.Tensor  # [R, C] packed token ids; pad tails hold the pad id
    position_ids: torch.Tensor  # [R, C] each token's position in its padded row; pad tails count from 0
    segment_ids: torch.Tensor  # [R, C] which segment (sequence, or a bin's pad tail) holds each slot
    cu_seqlens: torch.Tensor  # [S + 1] int32 segment boundaries in the flattened [R * C] layout
    max_seqlen: int  # the longest segment
    index: torch.Tensor  # [B, T] long: the flattened slot of each packed token, -1 elsewhere
    start: int = 0  # positions before this were not packed (a shared prefix)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.input_ids.shape[0]), int(self.input_ids.shape[1])

    def pack(self, values: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """A per-token tensor ``[B, T, ...]`` of the padded batch in the packed layout ``[R, C, ...]``."""
        rows, width = self.shape
        real = self.index >= 0
        out = values.new_full((rows * width,) + tuple(values.shape[2:]), fill)
        out[self.index[real]] = values[real]
        return out.view((rows, width) + tuple(values.shape[2:]))

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """Packed per-token outputs ``[R, C, ...]`` back to ``[B, T, ...]``, 0 on what was not packed."""
        flat = values.reshape((-1,) + tuple(values.shape[2:]))
        out = flat.new_zeros(tuple(self.index.shape) + tuple(values.shape[2:]))
        real = self.index >= 0
        out[real] = flat[self.index[real]]
        return out

    def attention_mask(self, dtype: torch.dtype, prefix: int = 0) -> torch.Tensor:
        """Dense ``[R, 1, C, prefix + C]`` mask: causal inside each segment, nothing across segments, and
        ``prefix`` leading key columns (a shared prefix's KV cache) visible to every slot. ``torch.bool``:
        True where attended (sdpa); a float dtype: 0 there and the dtype's minimum elsewhere (eager)."""
        seg = self.segment_ids
        width = seg.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
        allowed = (seg[:, :, None] == seg[:, None, :]) & causal
        if prefix:
            allowed = torch.cat([allowed.new_ones(seg.shape[0], width, prefix), allowed], dim=-1)
        allowed = allowed[:, None]
        if dtype == torch.bool:
            return allowed
        zero = torch.zeros((), dtype=dtype, device=seg.device)
        return torch.where(allowed, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype, device=seg.device))


def right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row's real tokens are a prefix of it (the layout ``collate`` makes): packing keeps
    positions ``0..L-1``, which a left-padded or holed row would not have had."""
    lengths = attention_mask.sum(dim=1, keepdim=True)
    ar = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool(((ar[None, :] < lengths) == attention_mask.bool()).all())


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, start: int = 0, capacity: int | None = None,
              keep_order: bool = False, pad_id: int = 0) -> Packing:
    """Pack each row's tokens ``[start, length)`` (right padding; every row longer than ``start``).

    ``capacity`` None: one row of all ``N`` tokens, in row order (flash-attn varlen). Else bins of
    ``max(capacity, longest segment)`` tokens, filled first-fit by decreasing length, or in row order with
    ``keep_order`` (a VL batch: the image features are placed in token order, so rows keep theirs).
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} / attention_mask {tuple(attention_mask.shape)} mismatch")
    if not right_padded(attention_mask):
        raise ValueError("pack_rows needs right-padded rows (real tokens first, then padding)")
    device = input_ids.device
    lengths = attention_mask.sum(dim=1).tolist()
    sizes = [int(n) - start for n in lengths]
    if any(s < 1 for s in sizes):
        raise ValueError(f"every row needs a token past start={start}; lengths {lengths}")
    bins, offsets, width = _place(sizes, capacity, keep_order)
    base = torch.tensor([b * width + o for b, o in zip(bins, offsets)], dtype=torch.long, device=device)
    ar = torch.arange(input_ids.shape[1], device=device)
    lens = torch.tensor(lengths, dtype=torch.long, device=device)
    real = (ar[None, :] >= start) & (ar[None, :] < lens[:, None])
    index = torch.where(real, base[:, None] + ar[None, :] - start, torch.full_like(real, -1, dtype=torch.long))
    rows = max(bins) + 1
    slots = rows * width
    flat_ids = input_ids.new_full((slots,), pad_id)
    flat_ids[index[real]] = input_ids[real]
    positions = torch.zeros(slots, dtype=torch.long, device=device)
    positions[index[real]] = ar.expand_as(real)[real]
    # Segments: the rows' own ids, then one per bin for its pad tail (it attends to itself only).
    segments = torch.arange(rows, device=device).repeat_interleave(width) + len(sizes)
    segments[index[real]] = torch.arange(len(sizes), device=device)[:, None].expand_as(real)[real]
    tail = segments >= len(sizes)
    if bool(tail.any()):  # a tail's positions count from 0, like any other sequence's
        first = torch.zeros(slots, dtype=torch.long, device=device)
        first[1:] = (segments[1:] != segments[:-1]).long()
        first[0] = 1
        seg_start = torch.cummax(torch.where(first.bool(), torch.arange(slots, device=device), 0), 0).values
        positions = torch.where(tail, torch.arange(slots, device=device) - seg_start, positions)
    change = torch.ones(slots, dtype=torch.bool, device=device)
    change[1:] = segments[1:] != segments[:-1]
    change[::width] = True  # a segment never spans two bins
    cu = torch.cat([change.nonzero().flatten(), torch.tensor([slots], device=device)]).to(torch.int32)
    return Packing(input_ids=flat_ids.view(rows, width), position_ids=positions.view(rows, width),
                   segment_ids=segments.view(rows, width), cu_seqlens=cu, max_seqlen=int(cu.diff().max()),
                   index=index, start=start)


def _place(sizes: list[int], capacity: int | None, keep_order: bool) -> tuple[list[int], list[int], int]:
    """(bin, offset) of each segment and the bin width."""
    if capacity is None:
        offsets, total = [], 0
        for s in sizes:
            offsets.append(total)
            total += s
        return [0] * len(sizes), offsets, total
    width = max(capacity, max(sizes))
    order = range(len(sizes)) if keep_order else sorted(range(len(sizes)), key=lambda i: -sizes[i])
    fill: list[int] = []
    bins, offsets = [0] * len(sizes), [0] * len(sizes)
    for i in order:
        candidates = [len(fill) - 1] if (keep_order and fill) else range(len(fill))
        b = next((j for j in candidates if fill[j] + sizes[i] <= width), None)
        if b is None:
            fill.append(0)
            b = len(fill) - 1
        bins[i], offsets[i] = b, fill[b]
        fill[b] += sizes[i]
    return bins, offsets, max(fill)  # no bin is wider than its fullest
