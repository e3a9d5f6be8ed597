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

from reopold_agents.logprobs import MIN_SHARED_PREFIX
from reopold_agents.trajectory import Trajectory, collate

# The engine stops a turn at these (besides EOS); a demonstration turn ending in one gets no EOS.
STOP_TOKENS = ("</tool_call>",)


@dataclass
class SFTExample:
    """One tokenised demonstration; ``loss_mask[i] == 1`` iff token i belongs to an assistant turn."""

    input_ids: list[int]
    loss_mask: list[int]
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # VL: pixel_values, image_grid_thw
    group: str = ""  # batches never mix groups (e.g. one env per batch keeps the shared prompt prefix)

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
    # Keep a VL model's (randomly initialised) vision tower fixed: trained from scratch together with a
    # tiny text model it collapses to image-independent features within a few hundred steps (the text
    # side learns the answer prior first and the image features only add noise), while its random
    # features already separate colours, digits and shapes. See docs/run.md, "The tiny VL pair".
    freeze_vision: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


def _split_turns(messages: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Group a conversation into ("env", [messages...]) and ("assistant", [message]) runs, in order."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for m in messages:
        kind = "assistant" if m.get("role") == "assistant" else "env"
        if runs and kind == "env" and runs[-1][0] == "env":
            runs[-1][1].append(m)
        else:
            runs.append((kind, [m]))
    return runs


def tokenize_demonstration(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    processor: Any = None,
    images: Sequence[Any] | None = None,
) -> SFTExample:
    """Tokenise a conversation exactly as a rollout of it would be; loss only on assistant ids.

    The prompt and every env turn go through ``reopold_agents.chat`` (the rollout's incremental
    encoder, ``loss_mask`` 0); an assistant turn is its text's ids, plus ``<|im_end|>`` unless it ends in
    a stop token such as ``</tool_call>`` (the engine stops there, and the env turn closes it).
    """
    from reopold_agents.chat import count_images, encode_env_turn, encode_prompt

    runs = _split_turns(messages)
    if not any(kind == "assistant" for kind, _ in runs):
        raise ValueError("demonstration has no assistant turn to learn from")
    if runs[0][0] != "env":
        raise ValueError("demonstration must start with a system/user prompt, not an assistant turn")
    tools_list = list(tools) if tools else None
    image_iter = iter(list(images or []))
    eos = tokenizer.eos_token_id
    stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS}
    ids: list[int] = []
    mask: list[int] = []
    inputs: dict[str, list[torch.Tensor]] = {}
    closed = True
    for n, (kind, msgs) in enumerate(runs):
        if kind == "assistant":
            content = msgs[0].get("content")
            if not isinstance(content, str):
                raise ValueError(f"assistant turn {n} must be text, got {type(content).__name__}")
            turn = list(tokenizer(content, add_special_tokens=False)["input_ids"])
            if not turn or turn[-1] not in stop_ids:
                turn.append(eos)
            ids.extend(turn)
            mask.extend([1] * len(turn))
            closed = turn[-1] == eos
            continue
        imgs = [next(image_iter) for _ in range(count_images(msgs))]
        if n == 0:
            enc = encode_prompt(tokenizer, msgs, tools_list, processor, imgs)
        else:
            enc = encode_env_turn(tokenizer, msgs, closed, tools_list, processor, imgs)
        ids.extend(enc.ids)
        mask.extend([0] * len(enc.ids))
        for k, v in enc.model_inputs.items():
            inputs.setdefault(k, []).append(v)
    model_inputs = {k: torch.cat(v, dim=0) for k, v in inputs.items()}
    return SFTExample(ids, mask, model_inputs)


def common_prefix_len(examples: Sequence[SFTExample]) -> int:
    """Length of the token prefix all examples share (the fixed system prompt and tool schemas)."""
    first = examples[0].input_ids
    n = min(len(e.input_ids) for e in examples)
    for p in range(n):
        tok = first[p]
        if any(e.input_ids[p] != tok for e in examples):
            return p
    return n




def sft_loss(model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int) -> torch.Tensor:
    """Token-mean cross-entropy on assistant tokens (target-aligned masks, as in the Batch contract).

    Text examples that share a long prompt prefix (toolqa's tool schemas: ~600 of ~750 tokens) run the
    prefix once and attend to its KV cache from every row: the same loss and gradients (the cache
    stays in the autograd graph) for a fraction of the compute.
    """
    shared = common_prefix_len(examples) - 1  # keep >= 1 token of every row in the suffix pass
    if shared >= MIN_SHARED_PREFIX and len(examples) > 1 and not any(e.model_inputs for e in examples):
        return _shared_prefix_loss(model, examples, pad_id, shared)
    trajs = [Trajectory(token_ids=list(e.input_ids), loss_mask=list(e.loss_mask),
                        rollout_logprobs=[0.0] * len(e.input_ids), model_inputs=e.model_inputs) for e in examples]
    batch = collate(trajs, pad_id)
    from reopold_agents.models import forward_inputs

    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                **forward_inputs(model, batch.input_ids, batch.model_inputs))
    return _masked_nll(out.logits[:, :-1], batch.input_ids[:, 1:], batch.loss_mask[:, 1:])


def _masked_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return (nll.view_as(mask) * mask).sum() / mask.sum().clamp_min(1.0)


def _shared_prefix_loss(model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int, p: int) -> torch.Tensor:
    bsz = len(examples)
    head = model(input_ids=torch.tensor([examples[0].input_ids[:p]]), use_cache=True)
    cache = head.past_key_values
    cache.batch_repeat_interleave(bsz)
    width = max(len(e.input_ids) for e in examples) - p
    ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    attn = torch.zeros((bsz, p + width), dtype=torch.long)
    attn[:, :p] = 1
    mask = torch.zeros((bsz, width), dtype=torch.float32)
    for i, e in enumerate(examples):
        n = len(e.input_ids) - p
        ids[i, :n] = torch.tensor(e.input_ids[p:], dtype=torch.long)
        attn[i, p : p + n] = 1
        mask[i, :n] = torch.tensor(e.loss_mask[p:], dtype=torch.float32)
    tail = model(input_ids=ids, attention_mask=attn, past_key_values=cache)
    # Position p is predicted by the prefix's last logits; the rest by the suffix pass.
    logits = torch.cat([head.logits[:, -1:].expand(bsz, 1, -1), tail.logits[:, :-1]], dim=1)
    return _masked_nll(logits, ids, mask)


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
    frozen = _frozen_parameters(model, cfg)
    fixed = {id(p) for p in frozen}
    trained = [p for p in model.parameters() if id(p) not in fixed]
    opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.group, []).append(i)
    names = sorted(groups)
    orders: dict[str, list[int]] = {g: [] for g in names}
    losses: list[float] = []
    bar = _progress(desc, cfg.steps, progress)
    with bar as (advance):
        for step in range(cfg.steps):
            g = names[step % len(names)]  # groups take turns
            members, order = groups[g], orders[g]
            if len(order) < cfg.batch_size:
                fresh = list(members)
                rng.shuffle(fresh)
                order.extend(fresh)
            picked = [examples[order.pop()] for _ in range(min(cfg.batch_size, len(members)))]
            loss = sft_loss(model, picked, pad_id)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.item()))
            advance(losses[-1])
    for p in frozen:
        p.requires_grad_(True)
    model.eval()
    return losses


def _frozen_parameters(model: torch.nn.Module, cfg: SFTConfig) -> list[torch.nn.Parameter]:
    """Parameters ``cfg`` keeps fixed (switched to ``requires_grad=False`` until training ends)."""
    if not cfg.freeze_vision:
        return []
    from reopold_agents.models import freeze_vision_tower, vision_tower

    if vision_tower(model) is None:
        raise ValueError("freeze_vision: the model has no vision tower (text-only model)")
    return freeze_vision_tower(model)


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
