"""Supervised fine-tuning (SFT) of tiny models on expert demonstrations: how the project makes its own
teacher and student, so the CPU demo distils a model that actually knows the task into one that half does.

A demonstration is a whole conversation (system, user, assistant turns, tool results). It is tokenised
segment by segment, exactly like a rollout builds a Trajectory: environment text with ``loss_mask`` 0,
each assistant turn (content + ``<|im_end|>``) with ``loss_mask`` 1, so the model learns to write
assistant turns only, in the token boundaries the rollout will later feed back to it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from reopold_agents.trajectory import Trajectory, collate

IM_END = "<|im_end|>"


@dataclass
class SFTExample:
    """One tokenised demonstration; ``loss_mask[i] == 1`` iff token i belongs to an assistant turn."""

    input_ids: list[int]
    loss_mask: list[int]
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # VL: pixel_values, image_grid_thw

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(f"{len(self.input_ids)} ids but {len(self.loss_mask)} mask entries")


@dataclass
class SFTConfig:
    """Hyper-parameters of one SFT run (seeded: same config, same weights)."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


Encoder = Callable[[str, list[Any]], tuple[list[int], dict[str, torch.Tensor]]]


def text_encoder(tokenizer: Any) -> Encoder:
    """Encode a text segment with a plain tokenizer (no images)."""

    def encode(text: str, images: list[Any]) -> tuple[list[int], dict[str, torch.Tensor]]:
        if images:
            raise ValueError("a text-only tokenizer cannot encode images; pass a VL processor encoder")
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), {}

    return encode


def _message_images(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    if isinstance(content, list):
        return [part["image"] for part in content if isinstance(part, dict) and part.get("image") is not None]
    return []


def tokenize_demonstration(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    encode: Encoder | None = None,
) -> SFTExample:
    """Tokenise a conversation turn by turn; loss only on assistant content and its ``<|im_end|>``.

    Each segment is the difference between successive chat-template renderings, so the ids are the
    ones a rollout produces (prompt/env deltas tokenised on their own, assistant ids as generated).
    """
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("demonstration has no assistant turn to learn from")
    encode = encode or text_encoder(tokenizer)
    render_kw: dict[str, Any] = {"tokenize": False}
    if tools:
        render_kw["tools"] = list(tools)

    def render(msgs: Sequence[dict[str, Any]], gen: bool) -> str:
        return tokenizer.apply_chat_template(list(msgs), add_generation_prompt=gen, **render_kw)

    ids: list[int] = []
    mask: list[int] = []
    inputs: dict[str, list[torch.Tensor]] = {}
    done_text = ""
    pending_images: list[Any] = []

    def add(text: str, images: list[Any], trained: int) -> None:
        if not text:
            return
        seg_ids, seg_inputs = encode(text, images)
        ids.extend(seg_ids)
        mask.extend([trained] * len(seg_ids))
        for k, v in seg_inputs.items():
            inputs.setdefault(k, []).append(v)

    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            pending_images.extend(_message_images(msg))
            continue
        prefix = render(messages[:i], gen=True)
        full = render(messages[: i + 1], gen=False)
        if not prefix.startswith(done_text) or not full.startswith(prefix):
            raise ValueError(f"chat template is not incremental at message {i}; cannot segment the demonstration")
        add(prefix[len(done_text):], pending_images, 0)
        pending_images = []
        turn = full[len(prefix):]
        cut = turn.rfind(IM_END)
        if cut < 0:
            raise ValueError(f"rendered assistant message {i} has no {IM_END}")
        cut += len(IM_END)
        add(turn[:cut], _message_images(msg), 1)
        done_text = prefix + turn[:cut]
    model_inputs = {k: torch.cat(v, dim=0) for k, v in inputs.items()}
    return SFTExample(ids, mask, model_inputs)


def sft_loss(model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int) -> torch.Tensor:
    """Token-mean cross-entropy on assistant tokens (target-aligned masks, as in the Batch contract)."""
    trajs = [Trajectory(token_ids=list(e.input_ids), loss_mask=list(e.loss_mask),
                        rollout_logprobs=[0.0] * len(e.input_ids), model_inputs=e.model_inputs) for e in examples]
    batch = collate(trajs, pad_id)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs)
    logits = out.logits[:, :-1].float()
    targets = batch.input_ids[:, 1:]
    mask = batch.loss_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return (nll.view_as(mask) * mask).sum() / mask.sum().clamp_min(1.0)


def sft_train(
    model: torch.nn.Module,
    examples: Sequence[SFTExample],
    cfg: SFTConfig,
    pad_id: int,
    desc: str = "sft",
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place on ``examples`` (seeded sampling, AdamW, warmup + cosine); return losses."""
    if not examples:
        raise ValueError("no SFT examples")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order: list[int] = []
    losses: list[float] = []
    bar = _progress(desc, cfg.steps, progress)
    with bar as (advance):
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                order.extend(fresh)
            picked = [examples[order.pop()] for _ in range(min(cfg.batch_size, len(examples)))]
            loss = sft_loss(model, picked, pad_id)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.item()))
            advance(losses[-1])
    model.eval()
    return losses


class _progress:
    """A rich progress bar showing the running loss; a no-op when disabled (tests, nested bars)."""

    def __init__(self, desc: str, total: int, enabled: bool) -> None:
        self.desc, self.total, self.enabled = desc, total, enabled
        self._bar = None

    def __enter__(self) -> Callable[[float], None]:
        if not self.enabled:
            return lambda loss: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), transient=False)
        self._bar.__enter__()
        task = self._bar.add_task(self.desc, total=self.total, loss=float("nan"))
        bar = self._bar
        return lambda loss: bar.update(task, advance=1, loss=loss)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
