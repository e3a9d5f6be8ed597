"""A tiny Qwen2 GGUF written with the ``gguf`` package, small enough to craft per test (16 KB): complete,
missing a tensor, or with an untied output matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_gguf(path: Path, drop: tuple[str, ...] = (), tie: bool = True, chat_template: str | None = None) -> Path:
    """A 1-layer Qwen2 (vocab 64, hidden 16) with a gpt2-style tokenizer; ``drop`` leaves tensors out,
    ``tie=False`` adds an ``output.weight`` of its own, ``chat_template`` is stored in the metadata."""
    import gguf

    vocab, hidden, ffn, heads, kv_heads = 64, 16, 32, 2, 1
    head_dim = hidden // heads
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    tokens = [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(vocab - 2)] + ["<|im_start|>", "<|im_end|>"]
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 2) + [3, 3])
    w.add_token_merges(["a a"])
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = np.ones(hidden, np.float32)
    tensors = {"token_embd.weight": rand(vocab, hidden), "output_norm.weight": ones}
    if not tie:
        tensors["output.weight"] = rand(vocab, hidden)
    tensors.update({
        "blk.0.attn_norm.weight": ones, "blk.0.ffn_norm.weight": ones,
        "blk.0.attn_q.weight": rand(hidden, hidden), "blk.0.attn_q.bias": rand(hidden),
        "blk.0.attn_k.weight": rand(kv_heads * head_dim, hidden), "blk.0.attn_k.bias": rand(kv_heads * head_dim),
        "blk.0.attn_v.weight": rand(kv_heads * head_dim, hidden), "blk.0.attn_v.bias": rand(kv_heads * head_dim),
        "blk.0.attn_output.weight": rand(hidden, hidden), "blk.0.ffn_gate.weight": rand(ffn, hidden),
        "blk.0.ffn_up.weight": rand(ffn, hidden), "blk.0.ffn_down.weight": rand(hidden, ffn),
    })
    for name, value in tensors.items():
        if name not in drop:
            w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
