"""Memory-lean per-token log-probs and entropy: logits are built chunk by chunk, never as one tensor.

A full fp32 log-softmax over ``[tokens, vocab]`` costs ``4 * N * V`` bytes (8k tokens x 151,657 vocab is
~5 GB), and autograd would keep it alive for the backward. Here the forward walks over chunks of
``chunk_size`` tokens, computes their logits from the hidden states and the ``lm_head`` weight, keeps
only the gathered log-probs, the entropy and the log-sum-exp per token, and the backward recomputes
each chunk's logits to form its gradient. Peak extra memory is one ``chunk_size * V`` buffer both ways
(reused across chunks, worked on in place); the backward skips rows whose gradient is 0 (tokens a
stage rule does not train on). docs/BENCHMARKS.md section 1 has the measurements.

All ``[B, T]`` outputs are *target-aligned* (docs/ARCHITECTURE.md): entry ``t`` is
``log p(input_ids[t] | input_ids[<t])`` computed from the hidden state at ``t - 1``; entry 0 and
padding positions are 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reopold_agents.packed_forward import VARLEN, TokenStates, attention_layout, packed_text, packed_vl


class _ChunkedGatherLogprobs(torch.autograd.Function):
    """``logp[n, k] = log_softmax(hidden[n] @ W.T + b)[targets[n, k]]`` (+ entropy), chunked over n.

    Gradients flow to ``hidden``, ``weight`` and ``bias`` through the log-probs only; the entropy is
    a non-differentiable by-product (it is used for token selection and metrics, never trained on).
    The backward runs the head only for rows whose log-prob gets a non-zero gradient: the tokens a
    stage rule drops (REOPOLD stage 2 trains on the top-beta by entropy) cost nothing there.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int, with_entropy: bool):  # type: ignore[override]
        logp, lse_all, entropy = _head_forward(hidden, weight, bias, targets, chunk_size, with_entropy)
        ctx.save_for_backward(hidden, weight, bias if bias is not None else hidden.new_zeros(0), targets, lse_all)
        ctx.has_bias = bias is not None
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):  # type: ignore[override]
        hidden, weight, bias, targets, lse_all = ctx.saved_tensors
        bias_t = bias if ctx.has_bias else None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.zeros_like(hidden) if need_h else None
        acc = lse_all.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        # Rows with an all-zero upstream gradient contribute exactly nothing: leave them out.
        rows = (grad_logp != 0).any(dim=1).nonzero(as_tuple=True)[0]
        n = int(rows.numel())
        buf = _logits_buffer(min(ctx.chunk_size, n), weight) if n else None
        for start in range(0, n, ctx.chunk_size):
            idx = rows[start : start + ctx.chunk_size]
            h = hidden.index_select(0, idx)
            g = grad_logp.index_select(0, idx).to(acc).t()  # [K, c]
            # d logp[k] / d z = onehot(target_k) - softmax(z); summed over k with weights g[k], in place
            # on the vocab-major [V, c] logits.
            grad_z = _chunk_logits_into(buf, h, weight, bias_t)
            grad_z.sub_(lse_all.index_select(0, idx)[None, :]).exp_().mul_(-g.sum(dim=0, keepdim=True))
            grad_z.scatter_add_(0, targets.index_select(0, idx).t(), g)
            if need_h:
                grad_h.index_copy_(0, idx, (grad_z.t().to(weight.dtype) @ weight).to(hidden.dtype))
            if need_w:
                grad_w.addmm_(grad_z, h.to(acc))
            if need_b:
                grad_b += grad_z.sum(dim=1)
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
            None,
        )


# exp(z) elements alive at once while the entropy is reduced: on CPU 1 MiB of fp32 (cache-sized); on an
# accelerator 64 MiB, so a chunk takes a handful of kernel launches rather than hundreds.
ENTROPY_BLOCK_ELEMENTS = {"cpu": 1 << 18, "other": 1 << 24}


def _head_forward(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                  chunk_size: int, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gathered log-probs ``[n, K]``, log-sum-exp ``[n]`` and (optionally) entropy ``[n]`` in one pass.

    One logits buffer is reused for every chunk and worked on in place (a fresh ``[chunk, V]`` tensor
    per op costs its page faults on CPU and its bandwidth everywhere). It is vocab-major, ``[V, chunk]``
    (``W @ h.T``): on CPU that matmul is ~25% faster than ``h @ W.T`` for a hidden size of 64-128.
    The entropy needs ``exp(z)`` next to ``z``, so that exp lives in a small block of vocabulary rows.
    With ``z' = z - max z``, ``s = sum exp(z')``: ``lse = max z + log s`` and
    ``H = lse - sum_v p_v z_v = log s - sum_v exp(z'_v) z'_v / s``, so one exp per logit serves both.
    """
    n, k = hidden.shape[0], targets.shape[1]
    acc = _acc_dtype(weight)
    logp = hidden.new_empty((n, k), dtype=acc)
    lse_all = hidden.new_empty((n,), dtype=acc)
    entropy = hidden.new_zeros((n,), dtype=acc) if with_entropy else hidden.new_zeros((0,))
    if n == 0:
        return logp, lse_all, entropy
    with torch.no_grad():
        buf = _logits_buffer(min(chunk_size, n), weight)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            z = _chunk_logits_into(buf, hidden[start:end], weight, bias)  # [V, c]
            top = z.amax(dim=0)
            picked = z.gather(0, targets[start:end].t()).t()  # [c, K]
            z.sub_(top[None, :])
            if not with_entropy:
                log_s = z.exp_().sum(dim=0).log_()
            else:
                s = top.new_zeros(end - start)
                dot = top.new_zeros(end - start)  # sum_v exp(z') z' per row
                block_elements = ENTROPY_BLOCK_ELEMENTS["cpu" if z.device.type == "cpu" else "other"]
                step = max(1, block_elements // (end - start))
                block = buf.new_empty(min(step, z.shape[0]) * (end - start))
                for v in range(0, z.shape[0], step):
                    zb = z[v : v + step]
                    eb = torch.exp(zb, out=block[: zb.numel()].view(zb.shape))
                    s += eb.sum(dim=0)
                    dot += eb.mul_(zb).sum(dim=0)
                log_s = s.log()
                entropy[start:end] = log_s - dot / s
            lse = top + log_s
            lse_all[start:end] = lse
            logp[start:end] = picked - lse[:, None]
    return logp, lse_all, entropy


def _logits_buffer(rows: int, weight: torch.Tensor) -> torch.Tensor:
    """One reusable flat buffer (accumulation dtype) for up to ``rows`` rows of logits."""
    return torch.empty(rows * weight.shape[0], dtype=_acc_dtype(weight), device=weight.device)


def _chunk_logits_into(buf: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """Vocab-major fp32 logits ``[V, c]`` of one chunk of ``c`` rows, written into ``buf`` (contiguous for
    any ``c``); the matmul runs in the weight's dtype (bf16 on GPU), then upcasts."""
    out = buf[: weight.shape[0] * hidden.shape[0]].view(weight.shape[0], hidden.shape[0])
    h = hidden.to(weight.dtype)
    if weight.dtype == out.dtype:
        torch.mm(weight, h.t(), out=out)
    else:
        out.copy_(weight @ h.t())
    if bias is not None:
        out.add_(bias[:, None])
    return out


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 logits of one chunk; the matmul runs in the weight's dtype (bf16 on GPU), then upcasts."""
    logits = hidden.to(weight.dtype) @ weight.t()
    if bias is not None:
        logits = logits + bias
    return logits.to(_acc_dtype(weight))


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: fp32 for fp32/bf16/fp16 weights, fp64 kept for exact reference checks."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def chunked_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` under ``softmax(hidden @ weight.T + bias)`` without a full logits tensor.

    ``hidden`` is ``[N, H]``, ``weight`` ``[V, H]``, ``targets`` ``[N]`` or ``[N, K]`` (several ids per
    position, e.g. a teacher's top-k). Returns fp32 log-probs shaped like ``targets`` and, if asked,
    the fp32 entropy ``[N]`` (no gradient).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not match")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    squeeze = targets.dim() == 1
    tgt = targets[:, None] if squeeze else targets
    if tgt.shape[0] != hidden.shape[0]:
        raise ValueError(f"{tgt.shape[0]} targets for {hidden.shape[0]} hidden states")
    tgt = tgt.long()
    if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= weight.shape[0]):
        raise ValueError(f"target ids must lie in [0, {weight.shape[0]}), got [{int(tgt.min())}, {int(tgt.max())}]")
    logp, entropy = _ChunkedGatherLogprobs.apply(hidden, weight, bias, tgt, int(chunk_size), bool(with_entropy))
    return (logp[:, 0] if squeeze else logp), (entropy if with_entropy else None)


def chunked_logprobs_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same as :func:`chunked_logprobs` for callers that already hold ``[N, V]`` logits.

    The logits themselves exist, but the fp32 log-softmax is only ever built for one chunk: each chunk
    is upcast, reduced and (with grad) checkpointed, so autograd keeps no ``[N, V]`` fp32 copy.
    """
    from torch.utils.checkpoint import checkpoint

    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got {tuple(logits.shape)}")
    squeeze = targets.dim() == 1
    tgt = (targets[:, None] if squeeze else targets).long()
    outs, ents = [], []

    def one(chunk: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = chunk.to(_acc_dtype(chunk))
        lse = torch.logsumexp(z, dim=-1)
        lp = z.gather(1, t) - lse[:, None]
        with torch.no_grad():
            ent = lse - (torch.softmax(z, dim=-1) * z).sum(-1) if with_entropy else lse.new_zeros(0)
        return lp, ent

    for start in range(0, logits.shape[0], chunk_size):
        end = min(start + chunk_size, logits.shape[0])
        if logits.requires_grad:
            lp, ent = checkpoint(one, logits[start:end], tgt[start:end], use_reentrant=False)
        else:
            lp, ent = one(logits[start:end], tgt[start:end])
        outs.append(lp)
        ents.append(ent.detach())
    logp = torch.cat(outs) if outs else logits.new_zeros((0, tgt.shape[1]), dtype=torch.float32)
    entropy = torch.cat(ents) if (with_entropy and ents) else (logits.new_zeros(0) if with_entropy else None)
    return (logp[:, 0] if squeeze else logp), entropy


def _hidden_and_head(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, model_inputs: dict[str, Any] | None,
    pack: bool = False,
) -> tuple[TokenStates, nn.Linear]:
    """Last hidden states of the base model (no logits) and the LM head that maps them to the vocab.

    Works for Qwen2ForCausalLM and Qwen2.5-VL (``model_inputs`` carries ``pixel_values`` and
    ``image_grid_thw``; the base model builds the multimodal rope positions itself). ``pack``: padding-free
    (``reopold_agents/packed_forward.py``) where the model's attention allows it, else the padded pass.
    A LoRA student (peft ``PeftModel``) is read through its transformers model, whose layers carry the adapters.
    """
    from reopold_agents.lora import hf_module

    model = hf_module(model)  # a PeftModel's own ``model.model`` is the transformers model, not its body
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__}: need a base model and a Linear lm_head for chunked log-probs")
    if getattr(getattr(model, "config", None), "final_logit_softcapping", None):
        raise NotImplementedError("final_logit_softcapping is not supported by the chunked log-prob path")
    # Same extra inputs as the engine and the teacher (VL: mm_token_type_ids switches on 3-D rope positions),
    # so the learner's log-probs match the rollout's.
    from reopold_agents.models import forward_inputs

    extra = forward_inputs(model, input_ids, model_inputs)
    # VL models place rope positions by image layout (mrope): never the shared-prefix pass (packed, their rope
    # positions are the padded batch's, packed_forward.packed_vl).
    is_vl = getattr(getattr(model, "config", None), "image_token_id", None) is not None
    if pack:
        states = _packed_states(base, input_ids, attention_mask, extra, is_vl)
        if states is not None:
            return states, head
    plan = None if (extra or is_vl) else _padded_plan(input_ids, attention_mask)
    if plan is not None:
        return TokenStates.padded(_grouped_hidden(base, input_ids, attention_mask, plan)), head
    out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return TokenStates.padded(hidden), head


def _packed_states(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, extra: dict[str, Any],
                   is_vl: bool) -> TokenStates | None:
    """The padding-free pass, or None where the padded one must run (see ``packed_forward``): attention
    other than sdpa/eager/flash-attn, rows that are not right-padded, unknown extra inputs, VL videos, and
    under flash-attn a shared prefix that saves more tokens than packing (the two do not combine there)."""
    layout = attention_layout(base, attention_mask)
    if layout is None:
        return None
    if is_vl:
        return packed_vl(base, input_ids, attention_mask, layout, extra)
    if extra:
        return None
    if layout == VARLEN:
        if _prefix_cost(input_ids, attention_mask) < int(attention_mask.sum()):
            return None
        return packed_text(base, input_ids, attention_mask, layout, [(list(range(input_ids.shape[0])), 0)])
    return packed_text(base, input_ids, attention_mask, layout, _packed_groups(input_ids, attention_mask))


def _packed_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[list[int], int]]:
    """``(rows, shared)`` for the packed pass: the prefix groups of ``_row_groups`` (a batch-wide prompt,
    each prompt's group of samples, each env's rows in a multi-task batch), then the other rows with 0.
    Packed, a shared prefix always saves its ``(rows - 1) x shared`` tokens, so there is no cost threshold."""
    return _row_groups(input_ids, attention_mask)


def _padded_plan(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[list[int], int, int]] | None:
    """The padded pass's plan (``_grouped_hidden``) that computes the fewest tokens: the batch-wide prefix
    (one group, every row) or the per-group prefixes (``_prefix_groups``); None: the plain pass."""
    bsz, length = input_ids.shape
    options = []
    shared = _shared_prefix_len(input_ids, attention_mask)
    if shared:
        options.append([(list(range(bsz)), length, shared)])
    grouped = _prefix_groups(input_ids, attention_mask)
    if grouped is not None:
        options.append(grouped)
    return min(options, key=_plan_cost) if options else None  # a tie keeps the batch-wide prefix (one group)


def _prefix_cost(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Tokens the padded pass computes with its shared-prefix plan (inf: no plan)."""
    plan = _padded_plan(input_ids, attention_mask)
    return float("inf") if plan is None else float(_plan_cost(plan))


def _plan_cost(plan: list[tuple[list[int], int, int]]) -> int:
    """Tokens a padded plan computes: each group's prefix once, then its rows up to its cut."""
    return sum(shared + len(rows) * (cut - shared) for rows, cut, shared in plan)


MIN_SHARED_PREFIX = 64  # below this, running the prefix once saves too little to bother (SFT uses it too)


def _shared_prefix_len(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Length of the real-token prefix every row shares (an agent's system prompt and tool schemas), keeping
    at least one token of each row for the suffix pass; 0 when it is too short to be worth sharing."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    n = int(same.long().cumprod(0).sum())
    shortest = int(attention_mask.sum(dim=1).min())
    n = min(n, shortest - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def _shared_prefix_hidden(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int) -> torch.Tensor | None:
    """Hidden states of the whole batch with the shared prefix run once (one row) and attended to from
    every row through its KV cache. Same values and gradients as the full pass (the cache stays in the
    autograd graph), for a fraction of the compute when the prefix is most of each row (toolqa: ~640 of
    ~715 tokens). None when the model returns no cache (e.g. gradient checkpointing turns it off)."""
    bsz = input_ids.shape[0]
    head = base(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], use_cache=True)
    cache = getattr(head, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(bsz)
    tail = base(input_ids=input_ids[:, p:], attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    prefix = head.last_hidden_state.expand(bsz, -1, -1)
    return torch.cat([prefix, tail.last_hidden_state], dim=1)


GROUPED_MAX_COST = 0.5  # the grouped pass must cost at most this share of the plain pass's tokens


def _prefix_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[list[int], int, int]] | None:
    """The padded plan of ``_row_groups``: ``(rows, cut, shared)`` for each group of rows that share a
    prefix, and one more for every other row (``shared`` 0: plain pass), ``cut`` the group's longest row.
    None when no rows share a prefix or the plan would process more than ``GROUPED_MAX_COST`` of the plain
    pass's ``B x T`` tokens (a batch of many small groups is faster in one call)."""
    bsz, length = input_ids.shape
    groups = _row_groups(input_ids, attention_mask)
    if not any(shared for _, shared in groups):
        return None
    real = attention_mask.bool()
    plan = []
    for rows, shared in groups:
        idx = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
        cut = int(real.index_select(0, idx).any(dim=0).nonzero().max()) + 1  # right padding past every row
        plan.append((rows, cut, shared))
    return plan if _plan_cost(plan) <= GROUPED_MAX_COST * bsz * length else None


def _row_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[list[int], int]]:
    """``(rows, shared)``: the rows split into groups whose common prefix runs once, chosen to compute the
    fewest tokens (``shared + sum(length - shared)`` a group), then one group of every other row with 0.

    The rows are sorted by their tokens, so any run of neighbours shares the smallest of their adjacent
    common prefixes. A run is planned whole (its common prefix once, if >= ``MIN_SHARED_PREFIX``, else
    nothing shared) or split wherever two neighbours share fewer than ``MIN_SHARED_PREFIX`` tokens beyond
    what the whole run would share, each part planned the same way; the cheaper is kept. So a batch-wide prompt (toolqa's tool schemas) is one group,
    and a batch whose rows share a generic system header and then each prompt's own function docs (BFCL:
    ``trainer.group_size`` samples a prompt) is one group per prompt. A prefix keeps >= 1 token of each row;
    groups come in the order of their first row, each in row order."""
    bsz = input_ids.shape[0]
    if bsz < 2:
        return [(list(range(bsz)), 0)] if bsz else []
    real = attention_mask.bool()
    lengths = attention_mask.sum(dim=1).tolist()
    lead = real.long().cumprod(dim=1).sum(dim=1).tolist()  # each row's real tokens before its first padding
    keys = [input_ids[b, : lead[b]].tolist() for b in range(bsz)]
    order = sorted(range(bsz), key=keys.__getitem__)
    left = torch.tensor(order[:-1], device=input_ids.device)
    right = torch.tensor(order[1:], device=input_ids.device)
    same = input_ids.index_select(0, left) == input_ids.index_select(0, right)
    same &= real.index_select(0, left) & real.index_select(0, right)
    common = same.long().cumprod(dim=1).sum(dim=1).tolist()
    # adjacent common prefixes, each leaving a token of both rows
    lcp = [min(n, lengths[i] - 1, lengths[j] - 1) for n, i, j in zip(common, order[:-1], order[1:])]

    def plan(lo: int, hi: int) -> tuple[int, list[tuple[list[int], int]]]:
        rows = order[lo:hi]
        tokens = sum(lengths[r] for r in rows)
        if hi - lo == 1:
            return tokens, [(rows, 0)]
        shared = min(lcp[lo : hi - 1])
        if shared < MIN_SHARED_PREFIX:
            shared = 0  # too short to run once: its parts need MIN_SHARED_PREFIX of their own
        whole = (tokens - (len(rows) - 1) * shared, [(rows, shared)])
        cuts = [k + 1 for k in range(lo, hi - 1) if lcp[k] < shared + MIN_SHARED_PREFIX]  # never empty
        parts = [plan(s, e) for s, e in zip([lo, *cuts], [*cuts, hi])]
        split = sum(cost for cost, _ in parts)
        return (split, [g for _, groups in parts for g in groups]) if split < whole[0] else whole

    _, groups = plan(0, bsz)
    shared_groups = sorted(((sorted(rows), n) for rows, n in groups if n), key=lambda g: g[0][0])
    rest = sorted(r for rows, n in groups if not n for r in rows)
    return shared_groups + ([(rest, 0)] if rest else [])


def _grouped_hidden(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    plan: list[tuple[list[int], int, int]]) -> torch.Tensor:
    """Hidden states of the whole batch computed group by group (``_padded_plan``): each group cut to
    its longest row with its shared prefix run once (``_shared_prefix_hidden``), then put back in row
    order, zero past each group's length (padding: never a target). Same values and gradients as the
    full pass. A plan of one group of every row in order (a batch-wide prefix) runs on the batch as is."""
    bsz, length = input_ids.shape
    if len(plan) == 1 and plan[0][0] == list(range(bsz)) and plan[0][1] == length:
        hidden = _shared_prefix_hidden(base, input_ids, attention_mask, plan[0][2]) if plan[0][2] else None
        return hidden if hidden is not None else _last_hidden(base(input_ids=input_ids, attention_mask=attention_mask,
                                                                   use_cache=False))
    parts, order = [], []
    for rows, cut, shared in plan:
        idx = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
        ids, mask = input_ids.index_select(0, idx)[:, :cut], attention_mask.index_select(0, idx)[:, :cut]
        hidden = _shared_prefix_hidden(base, ids, mask, shared) if shared else None
        if hidden is None:
            hidden = _last_hidden(base(input_ids=ids, attention_mask=mask, use_cache=False))
        parts.append(nn.functional.pad(hidden, (0, 0, 0, length - cut)))
        order.extend(rows)
    inverse = torch.empty(bsz, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(bsz)
    return torch.cat(parts, dim=0).index_select(0, inverse.to(input_ids.device))


def _last_hidden(out: Any) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _valid_targets(attention_mask: torch.Tensor, target_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, T-1]`` bool: target positions 1..T-1 that are real tokens (and selected by ``target_mask``)."""
    valid = attention_mask[:, 1:].bool()
    if target_mask is not None:
        if target_mask.shape != attention_mask.shape:
            raise ValueError(f"target_mask {tuple(target_mask.shape)} must match input_ids {tuple(attention_mask.shape)}")
        valid = valid & target_mask[:, 1:].bool()
    return valid


def _predictors(rows: torch.Tensor, length: int) -> torch.Tensor:
    """Flattened ``[B, T]`` positions ``b * T + t`` of the hidden states that predict target entries
    ``rows`` of the ``[B, T - 1]`` layout (target ``t + 1`` is predicted from position ``t``)."""
    width = max(length - 1, 1)
    return rows // width * length + rows % width


def model_token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    model_inputs: dict[str, Any] | None = None,
    with_entropy: bool = False,
    chunk_size: int = 1024,
    target_ids: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    pack: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target-aligned log-probs ``[B, T]`` of ``input_ids`` (and student entropy ``[B, T]``) from ``model``.

    Entry ``[b, t]`` is ``log p(input_ids[b, t] | input_ids[b, <t])``; entry 0 and padded positions
    (``attention_mask == 0``) are 0. With ``target_ids`` ``[B, T, K]`` the log-probs of those ids at
    each position are returned instead (``[B, T, K]``; used for GKD's teacher top-k support).
    Differentiable w.r.t. the model's parameters through the log-probs; entropy carries no gradient.
    ``target_mask`` ``[B, T]`` (e.g. the loss mask) restricts the LM head to the positions that are
    used: prompts and tool outputs, often most of an agent episode, never pay for the vocab-wide matmul;
    masked-out entries are 0. ``temperature`` T gives those of ``softmax(logits / T)`` (the preflight asks
    which distribution an engine's log-probs are of); training always uses T = 1. ``pack``: run the model
    padding-free (``model.pack_sequences``; same values and gradients, docs/run.md "Padding-free batches").
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} / attention_mask {tuple(attention_mask.shape)} mismatch")
    bsz, length = input_ids.shape
    hidden, head = _hidden_and_head(model, input_ids, attention_mask, model_inputs, pack)
    # Positions 1..T-1 whose token is real are predicted by hidden states 0..T-2.
    valid = _valid_targets(attention_mask, target_mask)
    rows = valid.reshape(-1).nonzero(as_tuple=True)[0]
    h = hidden.at(_predictors(rows, length))
    if target_ids is None:
        tgt = input_ids[:, 1:].reshape(-1).index_select(0, rows)
    else:
        if target_ids.shape[:2] != input_ids.shape:
            raise ValueError(f"target_ids {tuple(target_ids.shape)} must be [B, T, K] with [B, T] = {(bsz, length)}")
        tgt = target_ids[:, 1:].reshape(-1, target_ids.shape[-1]).index_select(0, rows)
    bias = head.bias
    if temperature != 1.0:  # (h W^T + b) / T without a scaled copy of the [V, H] head weight
        h, bias = h / temperature, (None if bias is None else bias / temperature)
    logp_flat, ent_flat = chunked_logprobs(h, head.weight, tgt, bias, chunk_size, with_entropy)
    out_shape = (bsz, length) if target_ids is None else (bsz, length, target_ids.shape[-1])
    logp = logp_flat.new_zeros((bsz * (length - 1),) + out_shape[2:]).index_copy(0, rows, logp_flat)
    logp = torch.cat([logp_flat.new_zeros((bsz, 1) + out_shape[2:]), logp.view((bsz, length - 1) + out_shape[2:])], 1)
    entropy = None
    if ent_flat is not None:
        ent = ent_flat.new_zeros(bsz * (length - 1)).index_copy(0, rows, ent_flat)
        entropy = torch.cat([ent_flat.new_zeros((bsz, 1)), ent.view(bsz, length - 1)], dim=1)
    return logp, entropy


@torch.no_grad()
def model_topk_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    k: int,
    model_inputs: dict[str, Any] | None = None,
    chunk_size: int = 1024,
    target_mask: torch.Tensor | None = None,
    pack: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-aligned top-``k`` log-probs and ids ``[B, T, k]`` of ``model``'s next-token distribution.

    Entry ``[b, t]`` describes the distribution that predicts position ``t`` (from the hidden state at
    ``t - 1``), the support GKD's supervised top-k KL is taken over. Entry 0 and padding hold id 0 and
    log-prob 0. Ties among equal logits resolve to the smaller id (``torch.topk`` on CPU/GPU is not
    guaranteed stable, so ids are re-sorted by (value desc, id asc)).
    """
    _, vals, ids = model_token_and_topk_logprobs(model, input_ids, attention_mask, k, model_inputs, chunk_size,
                                                 target_mask, pack)
    return vals, ids


@torch.no_grad()
def model_token_and_topk_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    k: int,
    model_inputs: dict[str, Any] | None = None,
    chunk_size: int = 1024,
    target_mask: torch.Tensor | None = None,
    pack: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``model_token_logprobs`` (``[B, T]``) and ``model_topk_logprobs`` (``[B, T, k]`` twice) from one pass
    of the model's body: a teacher that serves both (top-k objectives) pays for its forward once."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bsz, length = input_ids.shape
    hidden, head = _hidden_and_head(model, input_ids, attention_mask, model_inputs, pack)
    valid = _valid_targets(attention_mask, target_mask)
    rows = valid.reshape(-1).nonzero(as_tuple=True)[0]
    h = hidden.at(_predictors(rows, length))
    targets = input_ids[:, 1:].reshape(-1).index_select(0, rows)
    tok_l, vals_l, ids_l = [], [], []
    for start in range(0, h.shape[0], chunk_size):
        logits = _chunk_logits(h[start : start + chunk_size], head.weight, head.bias)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        tok_l.append((logits.gather(1, targets[start : start + chunk_size, None]) - lse)[:, 0])
        v, i = torch.topk(logits, k=min(k, logits.shape[-1]), dim=-1)
        # Deterministic order: by value desc, then id asc.
        order = torch.argsort(i, dim=-1, stable=True)
        v, i = v.gather(1, order), i.gather(1, order)
        order = torch.argsort(-v, dim=-1, stable=True)
        vals_l.append((v.gather(1, order) - lse))
        ids_l.append(i.gather(1, order))
    kk = min(k, head.weight.shape[0])
    tok = torch.cat(tok_l) if tok_l else h.new_zeros((0,), dtype=torch.float32)
    vals = torch.cat(vals_l) if vals_l else h.new_zeros((0, kk), dtype=torch.float32)
    ids = torch.cat(ids_l) if ids_l else torch.zeros((0, kk), dtype=torch.long, device=h.device)
    out_t = tok.new_zeros(bsz * (length - 1)).index_copy(0, rows, tok)
    out_v = vals.new_zeros((bsz * (length - 1), kk)).index_copy(0, rows, vals)
    out_i = ids.new_zeros((bsz * (length - 1), kk)).index_copy(0, rows, ids)
    return (torch.cat([tok.new_zeros((bsz, 1)), out_t.view(bsz, length - 1)], 1),
            torch.cat([vals.new_zeros((bsz, 1, kk)), out_v.view(bsz, length - 1, kk)], 1),
            torch.cat([ids.new_zeros((bsz, 1, kk)), out_i.view(bsz, length - 1, kk)], 1))
