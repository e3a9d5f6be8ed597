"""The HF engine's KV-cache store: key/value states of token sequences it already processed, reused.

Why: a multi-turn rollout calls ``generate`` once per turn with the *whole* conversation so far, and
every row of a toolqa batch starts with the same ~640-token system prompt and tool schemas. Without
reuse, each call re-prefills every row from token 0. With it, a row's cache from the previous call
(prompt + the ids it sampled) is reused and only the appended env turn is run, and a prompt prefix
shared by a whole batch is run once, with batch size 1.

Layout of a reused batch (``stitch``): each row is ``[pad][cached c_i tokens] | [pad][new n_i tokens]``,
the cached block right-aligned in ``C = max c_i`` columns and the new block right-aligned in
``N = max n_i`` columns. The attention mask has a hole between the two blocks; ``generate`` derives
position ids from the mask's cumulative sum, so every real token keeps the position it has in its own
unpadded sequence (the one its cached keys were computed at). Padded key slots are zeros and masked.

Entries are keyed by the exact token ids whose states they hold, so a lookup can only return states of
a true prefix of the request; states are only valid for the weights that computed them, so the engine
clears the store when its weights change (``HFEngine.load_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Below this many tokens a batch-shared prefix is not worth a separate forward (one small extra call).
MIN_SHARED_PREFIX = 32

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [batch, kv_heads, seq, head_dim]


@dataclass
class PrefillStats:
    """Prompt tokens an engine ran through the model vs took from cached states (cumulative; the
    tests and benchmarks/rollout_speed.py read them to see that reuse really happened)."""

    prefilled_tokens: int = 0
    reused_tokens: int = 0


@dataclass
class KVEntry:
    """States of ``ids`` for one sequence: row ``row`` of the batch tensors ``layers``, read from the
    seq-dim ``spans`` in order (a generated batch holds a row's tokens in two blocks, see module doc)."""

    ids: np.ndarray
    layers: list[LayerKV]
    row: int
    spans: list[tuple[int, int]]

    def __post_init__(self) -> None:
        if sum(b - a for a, b in self.spans) != len(self.ids):
            raise ValueError(f"KV entry spans cover {sum(b - a for a, b in self.spans)} slots for {len(self.ids)} ids")


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading ids ``a`` and ``b`` share."""
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if len(diff) else m


def batch_prefix_len(prompts: list[np.ndarray]) -> int:
    """Leading ids shared by every prompt, leaving each at least one id to run (it yields the logits)."""
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = min(n, common_prefix_len(prompts[0], p))
    return max(n, 0)


class KVStore:
    """The entries of the last ``generate`` call (one per sequence, plus a batch-shared prefix); each
    call replaces them, so memory stays bounded by one call's caches."""

    def __init__(self) -> None:
        self.entries: list[KVEntry] = []

    def clear(self) -> None:
        self.entries = []

    def best(self, prompt: np.ndarray, candidates: list[KVEntry] | None = None) -> tuple[KVEntry | None, int]:
        """The entry sharing the longest prefix with ``prompt`` and how many of its states are usable
        (at most ``len(prompt) - 1``: the last prompt id must run to give the next-token logits)."""
        best, best_n = None, 0
        for entry in self.entries if candidates is None else candidates:
            n = min(common_prefix_len(entry.ids, prompt), len(prompt) - 1)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n


def _copy_row(dst: torch.Tensor, row: int, end: int, src: torch.Tensor, entry: KVEntry, n: int) -> None:
    """Write the first ``n`` states of ``entry`` (from ``src``) into ``dst[row, :, end - n : end]``."""
    pos = end - n
    for a, b in entry.spans:
        take = min(b - a, n)
        if take <= 0:
            break
        dst[row, :, pos : pos + take] = src[entry.row, :, a : a + take]
        pos, n = pos + take, n - take


def stitch(parts: list[tuple[KVEntry | None, int]], width: int) -> list[LayerKV]:
    """Per-layer ``[len(parts), H, width, D]`` keys/values with row ``i`` holding the first ``n_i``
    states of its entry, right-aligned (zeros elsewhere; the attention mask hides them)."""
    ref = next(e for e, n in parts if e is not None and n > 0)
    out: list[LayerKV] = []
    for layer, (k_ref, v_ref) in enumerate(ref.layers):
        shape = (len(parts), k_ref.shape[1], width, k_ref.shape[3])
        keys = k_ref.new_zeros(shape)
        values = v_ref.new_zeros((len(parts), v_ref.shape[1], width, v_ref.shape[3]))
        for row, (entry, n) in enumerate(parts):
            if entry is not None and n > 0:
                k_src, v_src = entry.layers[layer]
                _copy_row(keys, row, width, k_src, entry, n)
                _copy_row(values, row, width, v_src, entry, n)
        out.append((keys, values))
    return out
