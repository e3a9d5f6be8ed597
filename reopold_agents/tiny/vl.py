"""Tiny Qwen2.5-VL fixtures built offline: a processor around the project tokenizer and a tiny model.

The model is a real ``Qwen2_5_VLForConditionalGeneration`` (vision tower + merger + mrope text model)
made small enough for CPU tests. Its image/video/vision-start ids are the project tokenizer's
``<|image_pad|>`` / ``<|video_pad|>`` / ``<|vision_start|>`` ids, and the processor's image processor
uses the same patch/merge sizes, so one ``<|image_pad|>`` token is expanded to
``grid_t * grid_h * grid_w / merge_size**2`` tokens exactly as the model expects features.
"""

from __future__ import annotations

import torch
from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # image sides are resized to multiples of 28
# Small images keep the CPU tests fast: 28x28 .. 112x112 pixels -> 1 .. 16 image tokens per image.
MIN_PIXELS = FACTOR * FACTOR
MAX_PIXELS = 4 * FACTOR * 4 * FACTOR


def tiny_vl_processor(
    tokenizer: PreTrainedTokenizerBase, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor around ``tokenizer`` with small min/max pixels (no hub access)."""
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    common = dict(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE, size=size)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**common),
        chat_template=tokenizer.chat_template,
    )


def tiny_qwen2_5_vl_config(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
) -> Qwen2_5_VLConfig:
    head_dim = hidden_size // num_heads
    if head_dim % 2 or head_dim // 2 < 3:
        raise ValueError(f"hidden_size/num_heads = {head_dim} must be even and >= 6 for 3-axis mrope")
    half = head_dim // 2  # mrope splits the rotary half-dim over (temporal, height, width)
    section = [half - 2 * (half // 3), half // 3, half // 3]
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_heads=2,
            patch_size=PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
            window_size=2 * FACTOR,
            fullatt_block_indexes=[vision_depth - 1],
            out_hidden_size=hidden_size,  # the merger projects straight into the text width
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def tiny_qwen2_5_vl(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **config_kwargs) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised tiny Qwen2.5-VL whose vocabulary and vision ids match ``tokenizer``."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config(tokenizer, **config_kwargs))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def color_image(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (56, 56)):
    """A solid-colour PIL image (test input that needs no files)."""
    from PIL import Image

    return Image.new("RGB", size, color)
