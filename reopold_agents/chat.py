"""Incremental tokenisation of a conversation with the tokenizer's own chat template.

The rollout keeps the exact ids the engine sampled and appends only the tokens the template puts
*between* the end of the assistant's generation and the start of the next one (closing ``<|im_end|>``
and newline, tool/user turns, the ``<|im_start|>assistant\\n`` generation prompt). Those tokens are
found by rendering a fixed dummy conversation ``[user, assistant(MARK)]`` with and without the new
messages and cutting the text right after ``MARK``; earlier turns are never rendered again, so
templates that rewrite history (Qwen3-style stripping of ``<think>`` blocks from earlier assistant
turns) or BPE merges across turn boundaries cannot change ids the student already produced.

Images: the template renders one ``<|image_pad|>`` per image; here each is expanded to the number of
tokens its processed grid needs (``grid_t * grid_h * grid_w / merge_size**2``), images go through
qwen-vl-utils' resizing, and the processed tensors travel with the ids (``EncodedTurn.model_inputs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_MARK = "reopold-dummy-assistant-turn"
_DUMMY_PREFIX = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]


@dataclass
class EncodedTurn:
    """Token ids of a prompt or env turn, the images they contain (in order) and their tensors."""

    ids: list[int]
    images: list[Any] = field(default_factory=list)
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_grid_thw


def _render(tokenizer: Any, messages: list[dict], tools: list[dict] | None, gen_prompt: bool, kwargs: dict) -> str:
    text = tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=gen_prompt, **kwargs
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(
    tokenizer: Any,
    messages: list[dict],
    tools: list[dict] | None = None,
    processor: Any = None,
    images: list[Any] | None = None,
    **template_kwargs: Any,
) -> EncodedTurn:
    """Ids of the initial conversation (system, user...) up to and including the generation prompt."""
    if not messages:
        raise ValueError("encode_prompt: no messages")
    text = _render(tokenizer, messages, tools, True, template_kwargs)
    return _with_images(tokenizer, _tokenize(tokenizer, text), processor, list(images or []))


def encode_env_turn(
    tokenizer: Any,
    new_messages: list[dict],
    assistant_closed: bool,
    tools: list[dict] | None = None,
    processor: Any = None,
    images: list[Any] | None = None,
    **template_kwargs: Any,
) -> EncodedTurn:
    """Ids the template places after the assistant's generated content and before the next generation.

    ``assistant_closed`` says whether the generation already ended with the EOS token (``<|im_end|>``);
    if not (it stopped at ``</tool_call>`` or ran out of tokens) the closing EOS is part of the env turn
    (loss_mask 0). ``images`` are the PIL images referenced by ``new_messages``, in order.
    """
    if not new_messages:
        raise ValueError("encode_env_turn: no new messages (the env must answer with at least one message)")
    if any(m.get("role") == "assistant" for m in new_messages):
        raise ValueError("encode_env_turn: new messages contain an assistant turn; only env turns belong here")
    full = _render(tokenizer, _DUMMY_PREFIX + list(new_messages), tools, True, template_kwargs)
    cut = full.find(_MARK)
    if cut < 0:
        raise ValueError("the chat template dropped the dummy assistant turn; cannot encode env turns incrementally")
    suffix = full[cut + len(_MARK) :]
    ids = _tokenize(tokenizer, suffix)
    eos = tokenizer.eos_token_id
    if not ids or ids[0] != eos:
        raise ValueError(
            f"the chat template does not close assistant turns with the EOS token {tokenizer.eos_token!r}; "
            "incremental encoding needs it to find the end of the generated content"
        )
    if assistant_closed:
        ids = ids[1:]
    return _with_images(tokenizer, ids, processor, list(images or []))


def process_images(processor: Any, images: list[Any]) -> dict[str, torch.Tensor]:
    """Resize with qwen-vl-utils (multiples of patch*merge within the processor's pixel budget), then
    run the image processor: ``pixel_values`` [patches, C*T*P*P] and ``image_grid_thw`` [n_images, 3]."""
    from qwen_vl_utils import fetch_image

    ip = processor.image_processor
    size = getattr(ip, "size", None) or {}
    min_pixels = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
    max_pixels = size.get("longest_edge") or getattr(ip, "max_pixels", None)
    budget = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    resized = [fetch_image({"image": img, **budget}, image_patch_size=ip.patch_size) for img in images]
    out = ip(images=resized, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def image_token_id(tokenizer: Any, processor: Any = None) -> int:
    if processor is not None and getattr(processor, "image_token_id", None) is not None:
        return int(processor.image_token_id)
    return int(tokenizer.convert_tokens_to_ids("<|image_pad|>"))


def _with_images(tokenizer: Any, ids: list[int], processor: Any, images: list[Any]) -> EncodedTurn:
    pad = image_token_id(tokenizer, processor)
    slots = sum(1 for t in ids if t == pad)
    if slots != len(images):
        raise ValueError(f"the rendered messages hold {slots} image placeholders but {len(images)} images were given")
    if not images:
        return EncodedTurn(ids=ids)
    if processor is None:
        raise ValueError("messages contain images but no processor was given (use a VL model's processor)")
    model_inputs = process_images(processor, images)
    merge = processor.image_processor.merge_size
    counts = (model_inputs["image_grid_thw"].prod(dim=-1) // (merge * merge)).tolist()
    expanded: list[int] = []
    it = iter(counts)
    for t in ids:
        expanded.extend([pad] * int(next(it)) if t == pad else [t])
    return EncodedTurn(ids=expanded, images=list(images), model_inputs=model_inputs)


def count_images(messages: list[dict]) -> int:
    """Number of image parts in chat messages (the template renders one placeholder per part)."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for part in content if isinstance(part, dict) and (part.get("type") == "image" or "image" in part))
    return n
