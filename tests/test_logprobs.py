"""Chunked log-probs / entropy vs the naive full log-softmax (forward and gradients, fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from reopold_agents.logprobs import (
    chunked_logprobs,
    chunked_logprobs_from_logits,
    model_token_logprobs,
    model_token_and_topk_logprobs,
    model_topk_logprobs,
)
from reopold_agents.tiny import tiny_qwen2

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _naive(h, w, b, t):
    """Full log-softmax in float64: the ground truth both paths are held to."""
    h, w, b = h.double(), w.double(), (b.double() if b is not None else None)
    logits = h @ w.t() + (b if b is not None else 0)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(1, t), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_matches_naive_forward_and_grads(chunk, k, with_bias):
    g = torch.Generator().manual_seed(chunk * 10 + k)
    n, hdim, vocab = 29, 16, 211
    h = torch.randn(n, hdim, generator=g, requires_grad=True)
    w = (0.5 * torch.randn(vocab, hdim, generator=g)).requires_grad_()  # logits of LM-like scale
    b = torch.randn(vocab, generator=g, requires_grad=True) if with_bias else None
    t = torch.randint(0, vocab, (n, k), generator=g)
    lp, ent = chunked_logprobs(h, w, t, b, chunk_size=chunk, with_entropy=True)
    ref_lp, ref_ent = _naive(h, w, b, t)
    assert lp.shape == (n, k) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), ref_lp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent.detach(), atol=ATOL, rtol=0)
    assert not ent.requires_grad
    upstream = torch.randn(n, k, generator=g)
    params = [h, w] + ([b] if b is not None else [])
    got = torch.autograd.grad((lp * upstream).sum(), params)
    want = torch.autograd.grad((ref_lp * upstream).sum(), params)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e.double(), atol=ATOL, rtol=0)


def test_chunked_1d_targets_and_bad_ids():
    h, w = torch.randn(5, 4), torch.randn(9, 4)
    lp, ent = chunked_logprobs(h, w, torch.tensor([0, 1, 2, 3, 8]))
    assert lp.shape == (5,) and ent is None
    with pytest.raises(ValueError, match="target ids"):
        chunked_logprobs(h, w, torch.tensor([0, 1, 2, 3, 9]))
    with pytest.raises(ValueError, match="do not match"):
        chunked_logprobs(h, torch.randn(9, 5), torch.zeros(5, dtype=torch.long))


def test_chunked_from_logits_matches_naive():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(23, 97, generator=g, requires_grad=True)
    t = torch.randint(0, 97, (23,), generator=g)
    lp, ent = chunked_logprobs_from_logits(z, t, chunk_size=5, with_entropy=True)
    ref = torch.log_softmax(z, -1)
    torch.testing.assert_close(lp, ref.gather(1, t[:, None])[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1).detach(), atol=ATOL, rtol=0)
    (ga,) = torch.autograd.grad(lp.sum(), z)
    (gb,) = torch.autograd.grad(ref.gather(1, t[:, None]).sum(), z)
    torch.testing.assert_close(ga, gb, atol=ATOL, rtol=0)


def _padded_batch(tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, len(tok), (3, 17), generator=g)
    am = torch.ones_like(ids)
    am[1, -6:] = 0
    am[2, -1:] = 0
    ids[am == 0] = tok.pad_token_id
    return ids, am


def test_model_token_logprobs_target_aligned_and_grads(tok):
    model = tiny_qwen2(tok, seed=3).float()
    ids, am = _padded_batch(tok)
    lp, ent = model_token_logprobs(model, ids, am, with_entropy=True, chunk_size=5)
    assert lp.shape == ids.shape and ent.shape == ids.shape
    logits = model(input_ids=ids, attention_mask=am).logits
    ref = torch.log_softmax(logits[:, :-1].float(), -1)
    ref_lp = ref.gather(-1, ids[:, 1:, None])[..., 0] * am[:, 1:]
    ref_ent = -(ref.exp() * ref).sum(-1) * am[:, 1:]
    assert torch.all(lp[:, 0] == 0) and torch.all(lp[am == 0] == 0)
    torch.testing.assert_close(lp[:, 1:], ref_lp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent[:, 1:], ref_ent.detach(), atol=ATOL, rtol=0)
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(lp.sum(), params, allow_unused=True)
    want = torch.autograd.grad(ref_lp.sum(), params, allow_unused=True)
    for (name, _), a, e in zip(model.named_parameters(), got, want):
        assert (a is None) == (e is None), name
        if a is not None:
            torch.testing.assert_close(a, e, atol=ATOL, rtol=1e-4, msg=name)


def test_model_token_logprobs_at_given_ids(tok):
    model = tiny_qwen2(tok, seed=4)
    ids, am = _padded_batch(tok, seed=1)
    extra = torch.randint(0, len(tok), ids.shape + (4,))
    with torch.no_grad():
        lp, _ = model_token_logprobs(model, ids, am, target_ids=extra, chunk_size=8)
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1], -1)
    want = ref.gather(-1, extra[:, 1:]) * am[:, 1:, None]
    assert lp.shape == (3, 17, 4)
    torch.testing.assert_close(lp[:, 1:], want, atol=ATOL, rtol=0)
    assert torch.all(lp[:, 0] == 0)


def test_model_topk_logprobs_matches_naive(tok):
    model = tiny_qwen2(tok, seed=5)
    ids, am = _padded_batch(tok, seed=2)
    vals, top = model_topk_logprobs(model, ids, am, k=5, chunk_size=4)
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1], -1)
    rv, _ = torch.topk(ref, 5, dim=-1)
    valid = am[:, 1:].bool()
    torch.testing.assert_close(vals[:, 1:][valid], rv[valid], atol=ATOL, rtol=0)
    # the ids really carry those log-probs, in descending order
    torch.testing.assert_close(ref.gather(-1, top[:, 1:])[valid], rv[valid], atol=ATOL, rtol=0)
    assert torch.all(vals[:, 0] == 0) and torch.all(top[:, 0] == 0)
    assert torch.all(vals[:, 1:][valid][:, :-1] >= vals[:, 1:][valid][:, 1:])


def test_token_and_topk_in_one_pass_equal_the_two_functions(tok):
    """The teacher's one-pass scorer returns exactly what the two separate passes return (target mask and
    packing included), and its token log-probs match a naive full forward."""
    model = tiny_qwen2(tok, seed=5)
    ids, am = _padded_batch(tok, seed=3)
    sel = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) > 0.4).long() * am
    for pack in (False, True):
        lp, vals, top = model_token_and_topk_logprobs(model, ids, am, 4, chunk_size=3, target_mask=sel, pack=pack)
        want_lp, _ = model_token_logprobs(model, ids, am, chunk_size=3, target_mask=sel, pack=pack)
        want_vals, want_top = model_topk_logprobs(model, ids, am, k=4, chunk_size=5, target_mask=sel, pack=pack)
        torch.testing.assert_close(lp, want_lp.detach(), atol=ATOL, rtol=0)
        torch.testing.assert_close(vals, want_vals, atol=ATOL, rtol=0)
        assert torch.equal(top, want_top)
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1].double(), -1)
    used = (am[:, 1:] * sel[:, 1:]).bool()
    torch.testing.assert_close(lp[:, 1:][used].double(), ref.gather(-1, ids[:, 1:, None])[..., 0][used], atol=ATOL, rtol=0)
    assert torch.all(lp[:, 1:][~used] == 0) and torch.all(lp[:, 0] == 0)


def test_qwen2_5_vl_uses_image_inputs(tok):
    from reopold_agents.tiny.vl import color_image, tiny_qwen2_5_vl, tiny_vl_processor

    proc, model = tiny_vl_processor(tok), tiny_qwen2_5_vl(tok)
    texts = ["what <|vision_start|><|image_pad|><|vision_end|> is this", "a <|vision_start|><|image_pad|><|vision_end|> b"]
    enc = proc(text=texts, images=[color_image(), color_image((0, 0, 200), (28, 56))], padding=True, return_tensors="pt")
    ids, am = enc["input_ids"], enc["attention_mask"]
    mi = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
    lp, ent = model_token_logprobs(model, ids, am, mi, with_entropy=True, chunk_size=3)
    with torch.no_grad():
        # the reference VL forward: with mm_token_type_ids, as the engine, teacher and learner all pass it
        types = (ids == model.config.image_token_id).to(torch.int32)
        ref = torch.log_softmax(
            model(input_ids=ids, attention_mask=am, mm_token_type_ids=types, **mi).logits[:, :-1].float(), -1
        )
    torch.testing.assert_close(lp[:, 1:].detach(), ref.gather(-1, ids[:, 1:, None])[..., 0] * am[:, 1:], atol=ATOL, rtol=0)
    # the image matters: other pixels give other log-probs after the image tokens
    mi2 = dict(mi, pixel_values=torch.randn_like(mi["pixel_values"]))
    with torch.no_grad():
        lp2, _ = model_token_logprobs(model, ids, am, mi2)
    assert (lp2 - lp.detach()).abs().max() > 1e-4


def test_target_mask_restricts_to_selected_positions(tok):
    """With a target mask only selected positions are computed; they equal the unmasked values."""
    model = tiny_qwen2(tok, seed=3)
    ids, am = _padded_batch(tok, seed=4)
    gen = torch.Generator().manual_seed(0)
    sel = (torch.rand(ids.shape, generator=gen) < 0.4).long() * am
    full, ent_full = model_token_logprobs(model, ids, am, with_entropy=True, chunk_size=5)
    part, ent_part = model_token_logprobs(model, ids, am, with_entropy=True, chunk_size=5, target_mask=sel)
    keep = sel.bool().clone()
    keep[:, 0] = False
    torch.testing.assert_close(part[keep], full[keep], atol=ATOL, rtol=0)
    torch.testing.assert_close(ent_part[keep], ent_full[keep], atol=ATOL, rtol=0)
    assert torch.all(part[~keep] == 0) and torch.all(ent_part[~keep] == 0)
    # gradients through the selected positions match too
    g_full = torch.autograd.grad((full * keep).sum(), model.lm_head.weight)[0]
    g_part = torch.autograd.grad((part * keep).sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(g_part, g_full, atol=ATOL, rtol=0)
    vals_full, ids_full = model_topk_logprobs(model, ids, am, k=3)
    vals_part, ids_part = model_topk_logprobs(model, ids, am, k=3, target_mask=sel)
    torch.testing.assert_close(vals_part[keep], vals_full[keep], atol=ATOL, rtol=0)
    assert torch.equal(ids_part[keep], ids_full[keep])


def test_shared_prompt_prefix_runs_once_with_the_same_logprobs_and_grads(tok, monkeypatch):
    """Rows that share a long prompt (an agent's system prompt + tool schemas) run it once and attend to
    its KV cache: log-probs, entropy and gradients equal the naive full forward."""
    import reopold_agents.logprobs as lp_mod

    model = tiny_qwen2(tok, seed=3).float().train()
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(10, 500, (80,), generator=gen)
    rows = [torch.cat([prefix, torch.randint(10, 500, (n,), generator=gen)]) for n in (12, 30, 1, 25)]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], am[i, : len(r)] = r, 1
    target = am.clone()
    target[:, :80] = 0  # the prompt is never trained on
    assert lp_mod._shared_prefix_len(ids, am) == 80
    calls = []
    real = lp_mod._shared_prefix_hidden
    monkeypatch.setattr(lp_mod, "_shared_prefix_hidden", lambda *a: calls.append(a[3]) or real(*a))
    lp, ent = model_token_logprobs(model, ids, am, with_entropy=True, target_mask=target)
    assert calls == [80]
    logits = model(input_ids=ids, attention_mask=am).logits
    ref = torch.log_softmax(logits[:, :-1].float(), -1)
    ref_lp = ref.gather(-1, ids[:, 1:, None])[..., 0] * target[:, 1:]
    ref_ent = -(ref.exp() * ref).sum(-1) * target[:, 1:]
    torch.testing.assert_close(lp[:, 1:], ref_lp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent[:, 1:], ref_ent.detach(), atol=ATOL, rtol=0)
    params = list(model.parameters())
    got = torch.autograd.grad(lp.sum(), params)
    want = torch.autograd.grad(ref_lp.sum(), params)
    for (name, _), a, e in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=1e-4, msg=name)
    # a short common prefix, or one row, takes the plain pass
    assert lp_mod._shared_prefix_len(ids[:, :60], am[:, :60]) == 0
    assert lp_mod._shared_prefix_len(ids[:1], am[:1]) == 0


def test_rows_of_a_mixed_batch_share_their_own_prefixes(tok, monkeypatch):
    """A multi-task batch: no prefix shared by every row, but each env's rows share theirs. Each group
    runs its prefix once, cut to its own length; log-probs, entropy and gradients equal the full pass."""
    import reopold_agents.logprobs as lp_mod

    model = tiny_qwen2(tok, seed=4).float().train()
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randint(10, 500, (200,), generator=gen), torch.randint(10, 500, (150,), generator=gen)
    tail = lambda n: torch.randint(10, 500, (n,), generator=gen)  # noqa: E731
    rows = [torch.cat([b, tail(5)]), torch.cat([a, tail(40)]), tail(20), torch.cat([a, tail(3)]),
            torch.cat([b, tail(9)]), tail(90), torch.cat([a, tail(17)])]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], am[i, : len(r)] = r, 1
    target = am.clone()
    target[:, :10] = 0
    assert lp_mod._shared_prefix_len(ids, am) == 0
    assert lp_mod._prefix_groups(ids, am) == [([0, 4], 159, 150), ([1, 3, 6], 240, 200), ([2, 5], 90, 0)]
    calls = []
    real = lp_mod._shared_prefix_hidden
    monkeypatch.setattr(lp_mod, "_shared_prefix_hidden", lambda *a: calls.append(tuple(a[1].shape) + (a[3],)) or real(*a))
    lp, ent = model_token_logprobs(model, ids, am, with_entropy=True, target_mask=target)
    assert calls == [(2, 159, 150), (3, 240, 200)]  # each group cut to its longest row; the rest takes the plain pass
    logits = model(input_ids=ids, attention_mask=am).logits
    ref = torch.log_softmax(logits[:, :-1].float(), -1)
    ref_lp = ref.gather(-1, ids[:, 1:, None])[..., 0] * target[:, 1:]
    ref_ent = -(ref.exp() * ref).sum(-1) * target[:, 1:]
    torch.testing.assert_close(lp[:, 1:], ref_lp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent[:, 1:], ref_ent.detach(), atol=ATOL, rtol=0)
    params = list(model.parameters())
    got = torch.autograd.grad(lp.sum(), params)
    want = torch.autograd.grad(ref_lp.sum(), params)
    for (name, _), g, e in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=1e-4, msg=name)
    # rows that share nothing take the plain pass, and so does a plan that would save too little
    assert lp_mod._prefix_groups(ids[[2, 5]], am[[2, 5]]) is None
    assert lp_mod._prefix_groups(ids[[1, 3, 6, 2]], am[[1, 3, 6, 2]]) is not None
    monkeypatch.setattr(lp_mod, "GROUPED_MAX_COST", 0.1)
    assert lp_mod._prefix_groups(ids, am) is None
