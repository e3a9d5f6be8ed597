"""The fused, in-place LM-head pass: rows without an upstream gradient are skipped in backward, and the
log-probs, entropy and gradients still equal a float64 brute force (1e-5); the REOPOLD stage-2 step,
which trains on the top-beta tokens by entropy only, gives the brute-force policy gradient."""

from __future__ import annotations

import copy

import pytest
import torch

import reopold_agents.logprobs as lp_mod
from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import Learner
from reopold_agents.logprobs import chunked_logprobs, model_token_logprobs
from reopold_agents.objectives.reopold import clip_reward, select_top_entropy
from reopold_agents.tiny import tiny_qwen2
from reopold_agents.trajectory import Batch

ATOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


def _naive(h, w, b, t):
    h, w, b = h.double(), w.double(), (b.double() if b is not None else None)
    logp = torch.log_softmax(h @ w.t() + (b if b is not None else 0), dim=-1)
    return logp.gather(1, t), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 4, 7, 4096])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("keep", [0.0, 0.3, 1.0])
def test_rows_without_gradient_are_skipped_and_grads_stay_exact(chunk, k, with_bias, keep, monkeypatch):
    g = torch.Generator().manual_seed(chunk * 100 + k * 10 + int(keep * 10))
    n, hdim, vocab = 37, 16, 211  # 37 rows: not a multiple of the chunk or the entropy block
    h = torch.randn(n, hdim, generator=g, requires_grad=True)
    w = torch.randn(vocab, hdim, generator=g).requires_grad_()  # logits with std ~4: peaked rows
    b = torch.randn(vocab, generator=g, requires_grad=True) if with_bias else None
    t = torch.randint(0, vocab, (n, k), generator=g)
    rows = torch.rand(n, generator=g) < keep
    upstream = torch.randn(n, k, generator=g) * rows[:, None]
    calls = []
    real = lp_mod._chunk_logits_into
    monkeypatch.setattr(lp_mod, "_chunk_logits_into", lambda buf, hh, *a: calls.append(hh.shape[0]) or real(buf, hh, *a))
    lp, ent = chunked_logprobs(h, w, t, b, chunk_size=chunk, with_entropy=True)
    forward_rows = sum(calls)
    ref_lp, ref_ent = _naive(h, w, b, t)
    torch.testing.assert_close(lp.double(), ref_lp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent.detach(), atol=ATOL, rtol=0)
    params = [h, w] + ([b] if b is not None else [])
    got = torch.autograd.grad((lp * upstream).sum(), params)
    want = torch.autograd.grad((ref_lp * upstream.double()).sum(), params)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e.double(), atol=ATOL, rtol=0)
    assert forward_rows == n
    assert sum(calls) - forward_rows == int(rows.sum())  # the backward ran the head on those rows only


@pytest.mark.parametrize("block", [1, 50, 211 * 7])
def test_entropy_over_several_vocabulary_blocks(block, monkeypatch):
    """The entropy is reduced over blocks of vocabulary rows (a partial last block included); any block
    size gives the brute-force values."""
    monkeypatch.setitem(lp_mod.ENTROPY_BLOCK_ELEMENTS, "cpu", block)
    g = torch.Generator().manual_seed(block)
    h, w = torch.randn(23, 8, generator=g), torch.randn(211, 8, generator=g)
    b = torch.randn(211, generator=g)
    t = torch.randint(0, 211, (23,), generator=g)
    for chunk in (1, 6, 64):
        lp, ent = chunked_logprobs(h, w, t, b, chunk_size=chunk, with_entropy=True)
        ref_lp, ref_ent = _naive(h, w, b, t[:, None])
        torch.testing.assert_close(lp.double(), ref_lp[:, 0], atol=ATOL, rtol=0)
        torch.testing.assert_close(ent.double(), ref_ent, atol=ATOL, rtol=0)


def test_entropy_of_nearly_one_hot_and_uniform_rows():
    """Extremes of the fused entropy: a row whose max logit dominates (H ~ 0) and a flat row (H = log V)."""
    vocab = 1000
    h = torch.tensor([[1.0], [0.0]])
    w = torch.zeros(vocab, 1)
    w[3, 0] = 200.0
    lp, ent = chunked_logprobs(h, w, torch.tensor([3, 5]), with_entropy=True)
    torch.testing.assert_close(ent, torch.tensor([0.0, float(torch.log(torch.tensor(float(vocab))))]), atol=ATOL, rtol=0)
    torch.testing.assert_close(lp, torch.tensor([0.0, -float(torch.log(torch.tensor(float(vocab))))]), atol=ATOL, rtol=0)


def test_bf16_head_matches_the_upcast_reference():
    """bf16 weights: the matmul runs in bf16 and is upcast, as before the buffer was reused."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(19, 8, generator=g).bfloat16().requires_grad_()
    w = torch.randn(97, 8, generator=g).bfloat16().requires_grad_()
    t = torch.randint(0, 97, (19,), generator=g)
    lp, ent = chunked_logprobs(h, w, t, chunk_size=5, with_entropy=True)
    ref = torch.log_softmax((h @ w.t()).float(), -1)
    torch.testing.assert_close(lp, ref.gather(1, t[:, None])[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1).detach(), atol=ATOL, rtol=0)
    gh, gw = torch.autograd.grad(lp.sum(), [h, w])
    rh, rw = torch.autograd.grad(ref.gather(1, t[:, None]).sum(), [h, w])
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    torch.testing.assert_close(gh.float(), rh.float(), atol=1e-2, rtol=1e-2)  # bf16 rounding of the result
    torch.testing.assert_close(gw.float(), rw.float(), atol=1e-2, rtol=1e-2)


def test_reopold_stage2_step_is_the_brute_force_gradient_on_the_top_entropy_tokens(tok, monkeypatch):
    """One single-pass stage-2 step: the gradient equals -(1/M) sum_{top-beta by entropy} r_hat grad log pi from
    full logits, and the head's backward ran on the selected rows only."""
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, len(tok), (4, 18), generator=g)
    am = torch.ones_like(ids)
    lm = torch.zeros(4, 18)
    lm[:, 6:] = 1
    with torch.no_grad():
        old, _ = model_token_logprobs(student, ids, am)
        tea, _ = model_token_logprobs(teacher, ids, am)
    tea[0, 9] = -60.0  # below the clip floor
    batch = Batch(ids, am, lm, old * lm, tea * lm, torch.zeros(4), torch.arange(4))
    algo = AlgoConfig(name="reopold", beta=0.3, stage_switch=0.0)
    # brute force from the model's full fp32 logits
    ref = copy.deepcopy(student)
    logits = ref(input_ids=ids, attention_mask=am).logits.float()
    logp_full = torch.log_softmax(logits[:, :-1], -1)
    logp = torch.cat([torch.zeros(4, 1), logp_full.gather(-1, ids[:, 1:, None])[..., 0]], 1)
    ent = torch.cat([torch.zeros(4, 1), -(logp_full.exp() * logp_full).sum(-1)], 1).detach()
    sel = select_top_entropy(ent, lm, 0.3)
    r_hat, _ = clip_reward((batch.teacher_logprobs - batch.old_logprobs) * lm, algo.clip_lambda)
    loss = -(r_hat.detach() * torch.exp(logp - logp.detach()) * sel).sum() / sel.sum()
    loss.backward()
    probe = copy.deepcopy(student)
    learner = Learner(probe, algo, TrainerConfig(lr=1e-12, max_grad_norm=0.0, total_steps=2), logprob_chunk_size=4)
    grads = {}
    for p in probe.parameters():
        p.register_hook(lambda grad, p=p: grads.__setitem__(id(p), grad.clone()))
    head_rows = []
    real = lp_mod._chunk_logits_into
    monkeypatch.setattr(lp_mod, "_chunk_logits_into", lambda buf, hh, *a: head_rows.append(hh.shape[0]) or real(buf, hh, *a))
    m = learner.step(batch, 1)
    trained = int((lm[:, 1:] > 0).sum())
    assert m["num_selected"] == float(sel.sum()) < trained
    assert sum(head_rows) == trained + int(sel.sum())  # forward on every trained row, backward on the selected
    assert m["loss"] == pytest.approx(float(loss.detach()), rel=1e-4, abs=1e-6)
    for (name, p), q in zip(probe.named_parameters(), ref.parameters()):
        torch.testing.assert_close(grads[id(p)], q.grad, atol=ATOL, rtol=1e-4, msg=name)
