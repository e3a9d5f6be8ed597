"""Padding-free batches: the packed layout itself, and brute force against the padded pass (per-token
log-probs, entropies, top-k and gradients; text, shared prefixes, Qwen2.5-VL), the cases that fall back
to the padded pass, and the learner / teacher / config that switch it on."""

from __future__ import annotations

import copy

import pytest
import torch

import reopold_agents.logprobs as lp_mod
import reopold_agents.packed_forward as pf
from reopold_agents.logprobs import model_token_logprobs, model_topk_logprobs
from reopold_agents.packing import pack_rows, right_padded
from reopold_agents.tiny import tiny_qwen2

ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], am[i, : len(r)] = r, 1
    return ids, am


def _random_rows(lengths: list[int], seed: int = 0, prefix: torch.Tensor | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    head = prefix if prefix is not None else torch.zeros(0, dtype=torch.long)
    return [torch.cat([head, torch.randint(10, 500, (n,), generator=g)]) for n in lengths]


def _both(model, ids, am, **kw):
    """(padded, packed) outputs of model_token_logprobs with entropy, and their parameter gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for pack in (False, True):
        lp, ent = model_token_logprobs(model, ids, am, with_entropy=True, pack=pack, **kw)
        weights = torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)  # not a plain sum: position errors show
        grads = torch.autograd.grad((lp * weights).sum(), params, allow_unused=True)
        out.append((lp.detach(), ent, grads))
    return out


def _assert_same(out, model):
    (lp0, ent0, g0), (lp1, ent1, g1) = out
    torch.testing.assert_close(lp1, lp0, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=ATOL, rtol=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(g is not None for g in g0)
    for name, a, b in zip(names, g0, g1):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-4, msg=name)


class _Spy:
    """Records each call of a function (and whether it returned something) and passes it through."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args):
        result = self.fn(*args)
        self.calls.append((args, result is not None))
        return result


# ------------------------------------------------------------------ the layout
def test_one_row_layout_positions_cu_seqlens_and_round_trip():
    ids, am = _batch(_random_rows([4, 6, 2]))
    p = pack_rows(ids, am)
    assert p.shape == (1, 12)
    assert p.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1]
    assert p.cu_seqlens.tolist() == [0, 4, 10, 12] and p.cu_seqlens.dtype == torch.int32 and p.max_seqlen == 6
    assert torch.equal(p.input_ids[0], torch.cat([ids[0, :4], ids[1, :6], ids[2, :2]]))
    assert torch.equal(p.index < 0, am == 0)
    values = torch.randn(3, 6, 2)
    assert torch.equal(p.unpack(p.pack(values)), values * am[..., None])


def test_bins_first_fit_decreasing_with_pad_tails_and_block_mask():
    ids, am = _batch(_random_rows([5, 2, 3, 6], seed=1))
    p = pack_rows(ids, am, capacity=0, pad_id=7)
    # longest first: 6 fills bin 0; 5 opens bin 1; 3 opens bin 2; 2 joins bin 2 (5 + 2 > 6)
    assert p.shape == (3, 6)
    assert p.segment_ids.tolist() == [[3, 3, 3, 3, 3, 3], [0, 0, 0, 0, 0, 5], [2, 2, 2, 1, 1, 6]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]
    assert p.input_ids[1, 5] == 7 and p.input_ids[2, 5] == 7  # pad tails hold the pad id
    assert p.cu_seqlens.tolist() == [0, 6, 11, 12, 15, 17, 18]
    values = torch.randn(4, 6)
    assert torch.equal(p.unpack(p.pack(values)), values * am)
    mask = p.attention_mask(torch.bool)[:, 0]
    seg = p.segment_ids
    for r in range(3):
        for q in range(6):
            for k in range(6):
                assert bool(mask[r, q, k]) == (seg[r, q] == seg[r, k] and k <= q), (r, q, k)
    with_prefix = p.attention_mask(torch.bool, prefix=4)
    assert with_prefix.shape == (3, 1, 6, 10) and bool(with_prefix[..., :4].all())
    assert torch.equal(with_prefix[..., 4:], p.attention_mask(torch.bool))
    additive = p.attention_mask(torch.float32)
    assert torch.equal(additive == 0, p.attention_mask(torch.bool)) and additive.min() == torch.finfo(torch.float32).min


def test_keep_order_start_and_errors():
    ids, am = _batch(_random_rows([3, 5, 2, 3], seed=2))
    kept = pack_rows(ids, am, capacity=0, keep_order=True)
    slots = [int(kept.index[b, 0]) for b in range(4)]
    assert slots == sorted(slots) == [0, 5, 10, 12]  # row order kept, next-fit: 3 | 5 | 2 + 3
    assert kept.shape == (3, 5)
    suffix = pack_rows(ids, am, start=1)  # positions go on from the (unpacked) prefix
    assert suffix.position_ids[0].tolist() == [1, 2, 1, 2, 3, 4, 1, 1, 2]
    assert bool((suffix.index[:, :1] == -1).all()) and suffix.cu_seqlens.tolist() == [0, 2, 6, 7, 9]
    with pytest.raises(ValueError, match="past start=2"):
        pack_rows(ids, am, start=2)  # the 2-token row has nothing after the prefix
    left = am.flip(1)
    assert right_padded(am) and not right_padded(left)
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(ids, left)


# ------------------------------------------------------------ brute force, text
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_text_packed_equals_padded_logprobs_entropy_and_grads(tok, impl):
    model = tiny_qwen2(tok, seed=3).float().train()
    model.set_attn_implementation(impl)
    ids, am = _batch(_random_rows([17, 40, 5, 33, 2, 40, 1]))
    target = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.6).long() * am
    spy = _Spy(pf.packed_text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lp_mod, "packed_text", spy)
        out = _both(model, ids, am, target_mask=target, chunk_size=7)
    assert len(spy.calls) == 1 and spy.calls[0][1]  # the packed pass ran (once: the padded side does not)
    _assert_same(out, model)
    keep = target.bool().clone()
    keep[:, 0] = False
    assert bool((out[1][0][~keep] == 0).all()) and bool((out[1][1][~keep] == 0).all())  # untargeted: 0


def test_text_packed_target_ids_and_topk_equal_padded(tok):
    model = tiny_qwen2(tok, seed=4)
    ids, am = _batch(_random_rows([9, 30, 3, 21], seed=5))
    extra = torch.randint(0, len(tok), ids.shape + (4,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, _ = model_token_logprobs(model, ids, am, target_ids=extra, chunk_size=8)
        b, _ = model_token_logprobs(model, ids, am, target_ids=extra, chunk_size=8, pack=True)
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    va, ia = model_topk_logprobs(model, ids, am, k=5, chunk_size=4)
    vb, ib = model_topk_logprobs(model, ids, am, k=5, chunk_size=4, pack=True)
    torch.testing.assert_close(vb, va, atol=ATOL, rtol=0)
    assert torch.equal(ib, ia)


def test_shared_prefix_runs_once_and_suffixes_pack_behind_it(tok):
    model = tiny_qwen2(tok, seed=3).float().train()
    prefix = torch.randint(10, 500, (80,), generator=torch.Generator().manual_seed(9))
    ids, am = _batch(_random_rows([12, 30, 1, 25, 4], seed=3, prefix=prefix))
    target = am.clone()
    target[:, :80] = 0
    spy = _Spy(pf._with_prefix)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pf, "_with_prefix", spy)
        out = _both(model, ids, am, target_mask=target)
    assert [(args[3], ok) for args, ok in spy.calls] == [(80, True)]
    _assert_same(out, model)
    # without a KV cache (gradient checkpointing) the rows are packed whole: still equal
    model.gradient_checkpointing_enable()
    spy = _Spy(pf._with_prefix)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pf, "_with_prefix", spy)
        out = _both(model, ids, am, target_mask=target)
    assert [ok for _, ok in spy.calls] == [False]
    _assert_same(out, model)


def test_each_group_of_a_mixed_batch_packs_behind_its_own_prefix(tok):
    model = tiny_qwen2(tok, seed=4).float().train()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(10, 500, (100,), generator=g), torch.randint(10, 500, (70,), generator=g)
    rows = [*_random_rows([5, 9], seed=11, prefix=b), *_random_rows([40, 3, 17], seed=12, prefix=a),
            *_random_rows([20, 90], seed=13)]
    ids, am = _batch(rows)
    assert lp_mod._packed_groups(ids, am) == [([0, 1], 70), ([2, 3, 4], 100), ([5, 6], 0)]
    spy = _Spy(pf._with_prefix)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pf, "_with_prefix", spy)
        out = _both(model, ids, am)
    assert [(tuple(args[1].shape), args[3]) for args, _ in spy.calls] == [((2, 79), 70), ((3, 140), 100)]
    _assert_same(out, model)


# --------------------------------------------------------------- brute force, VL
def test_qwen2_5_vl_packs_with_its_rope_positions(tok):
    from reopold_agents.tiny.vl import color_image, tiny_qwen2_5_vl, tiny_vl_processor

    proc, model = tiny_vl_processor(tok), tiny_qwen2_5_vl(tok, seed=2).train()
    texts = ["look <|vision_start|><|image_pad|><|vision_end|> red square here and more words and yet more words",
             "no image here",
             "two <|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|> x"]
    imgs = [color_image(), color_image((0, 0, 200), (28, 56)), color_image((0, 200, 0), (56, 28))]
    enc = proc(text=texts, images=imgs, padding=True, return_tensors="pt")
    ids, am = enc["input_ids"], enc["attention_mask"]
    mi = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
    spy = _Spy(pf.packed_vl)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lp_mod, "packed_vl", spy)
        out = _both(model, ids, am, model_inputs=mi, chunk_size=5)
    assert [ok for _, ok in spy.calls] == [True]
    # the layout it ran: rows in order, the text row and the two-image row share the second bin
    assert pack_rows(ids, am, capacity=0, keep_order=True).segment_ids[1].unique().tolist()[:2] == [1, 2]
    _assert_same(out, model)
    # the images still matter on the packed path
    with torch.no_grad():
        other, _ = model_token_logprobs(model, ids, am, dict(mi, pixel_values=torch.randn_like(mi["pixel_values"])),
                                        pack=True)
    assert (other - out[1][0]).abs().max() > 1e-4


# ------------------------------------------------------------------ fall-backs
def test_unpackable_batches_take_the_padded_pass(tok):
    model = tiny_qwen2(tok, seed=5)
    ids, am = _batch(_random_rows([6, 14, 9], seed=6))
    assert pf.attention_layout(model.model, am) == pf.DENSE
    left_ids, left_am = ids.clone(), am.clone()  # left padding: positions would differ, so no packing
    for b in range(3):
        n = int(am[b].sum())
        left_ids[b] = torch.cat([ids[b, n:], ids[b, :n]])
        left_am[b] = torch.cat([am[b, n:], am[b, :n]])
    assert pf.attention_layout(model.model, left_am) is None
    spy = _Spy(pf.packed_text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lp_mod, "packed_text", spy)
        with torch.no_grad():
            a, _ = model_token_logprobs(model, left_ids, left_am, pack=True)
            b, _ = model_token_logprobs(model, left_ids, left_am)
    assert spy.calls == []
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    model.config._attn_implementation = "flex_attention"  # an attention packing does not know: padded
    assert pf.attention_layout(model.model, am) is None
    # VL videos keep the padded pass (no packed rope positions for them here)
    assert pf.packed_vl(model.model, ids, am, pf.DENSE, {"video_grid_thw": torch.ones(1, 3, dtype=torch.long)}) is None


def test_flash_attention_packs_one_row_unless_the_shared_prefix_saves_more(tok):
    """flash-attn (GPU): one [1, N] row, position ids restarting per sequence (the varlen kernel); a shared
    prefix cannot join it there, so whichever pass computes fewer tokens runs (scripts/gpu_check.sh runs it)."""
    model = tiny_qwen2(tok, seed=5)
    model.config._attn_implementation = "flash_attention_2"
    ids, am = _batch(_random_rows([6, 40, 9], seed=7))
    assert pf.attention_layout(model.model, am) == pf.VARLEN
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lp_mod, "packed_text", lambda base, i, a, layout, groups: seen.append((layout, groups)) or "packed")
        assert lp_mod._packed_states(model.model, ids, am, {}, False) == "packed"
        assert seen == [(pf.VARLEN, [([0, 1, 2], 0)])]
        prefix = torch.randint(10, 500, (200,), generator=torch.Generator().manual_seed(3))
        pids, pam = _batch(_random_rows([5, 30, 8], seed=8, prefix=prefix))
        assert lp_mod._prefix_cost(pids, pam) < int(pam.sum())
        assert lp_mod._packed_states(model.model, pids, pam, {}, False) is None  # the padded prefix pass runs
    packing = pack_rows(ids, am)
    assert packing.cu_seqlens.tolist() == [0, 6, 46, 55] and packing.max_seqlen == 40


@pytest.fixture
def varlen_reference():
    """A CPU stand-in for flash-attn's varlen kernel, registered as an attention named like flash-attn:
    it reads the sequence boundaries from the position ids exactly as transformers' flash path does
    (``prepare_fa_kwargs_from_position_ids``) and runs causal attention inside each. So the one-row
    layout and its position ids are checked here; scripts/gpu_check.sh runs the real kernel."""
    from transformers import AttentionInterface
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    def attend(module, query, key, value, attention_mask, scaling=None, position_ids=None, **kwargs):
        assert attention_mask is None and query.shape[0] == 1 and position_ids is not None
        (cu, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        bounds = cu.tolist()
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling)
            for a, b in zip(bounds[:-1], bounds[1:])], dim=2)
        return out.transpose(1, 2).contiguous(), None

    name = "flash_reference_varlen"
    AttentionInterface.register(name, attend)
    yield name
    AttentionInterface._global_mapping.pop(name, None)


def test_varlen_layout_through_a_flash_style_attention(tok, varlen_reference):
    model = tiny_qwen2(tok, seed=7).float().train()
    ids, am = _batch(_random_rows([17, 40, 5, 33, 2], seed=12))
    params = list(model.parameters())
    out = []
    for impl, pack in (("sdpa", False), (varlen_reference, True)):
        model.config._attn_implementation = impl
        if pack:
            assert pf.attention_layout(model.model, am) == pf.VARLEN
        lp, ent = model_token_logprobs(model, ids, am, with_entropy=True, pack=pack)
        out.append((lp.detach(), ent, torch.autograd.grad(lp.sum(), params)))
    _assert_same(out, model)


def test_varlen_layout_for_qwen2_5_vl(tok, varlen_reference):
    from reopold_agents.tiny.vl import color_image, tiny_qwen2_5_vl, tiny_vl_processor

    proc, model = tiny_vl_processor(tok), tiny_qwen2_5_vl(tok, seed=3)
    texts = ["a <|vision_start|><|image_pad|><|vision_end|> red square here and more words", "plain text row",
             "b <|vision_start|><|image_pad|><|vision_end|> c"]
    enc = proc(text=texts, images=[color_image(), color_image((0, 0, 200), (28, 56))], padding=True,
               return_tensors="pt")
    mi = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
    text_config = model.config.get_text_config()
    out = []
    with torch.no_grad():
        for impl, pack in (("sdpa", False), (varlen_reference, True)):
            text_config._attn_implementation = impl  # the language model only; the vision tower keeps sdpa
            out.append(model_token_logprobs(model, enc["input_ids"], enc["attention_mask"], mi, with_entropy=True,
                                            pack=pack))
    torch.testing.assert_close(out[1][0], out[0][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1][1], out[0][1], atol=ATOL, rtol=0)


# ------------------------------------------------------- learner, teacher, config
def _scored_batch(tok, student, teacher):
    from reopold_agents.trajectory import Batch

    ids, am = _batch(_random_rows([30, 8, 22, 3, 30, 15], seed=4))
    lm = am.float().clone()
    lm[:, :4] = 0
    with torch.no_grad():
        old, _ = model_token_logprobs(student, ids, am)
        tea, _ = model_token_logprobs(teacher, ids, am)
    return Batch(ids, am, lm, old * lm, tea * lm, torch.tensor([1.0, 0.0] * 3), torch.tensor([0, 0, 1, 1, 2, 2]))


@pytest.mark.parametrize("minibatches", [1, 2])
def test_learner_step_is_the_same_packed_or_padded(tok, minibatches):
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner

    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _scored_batch(tok, student, teacher)
    results = []
    for pack in (False, True):
        model = copy.deepcopy(student)
        learner = Learner(model, AlgoConfig(name="reopold", stage_switch=0.0),
                          TrainerConfig(lr=1e-3, num_minibatches=minibatches), pack_sequences=pack)
        assert learner.pack_sequences is pack
        # plain SGD: the update is the (clipped) gradient itself (AdamW's first step is its sign, which
        # turns a 1e-9 difference on a near-zero gradient into a full step)
        learner.optimizer = torch.optim.SGD(learner.params, lr=1.0)
        results.append((learner.step(batch, 0), learner.token_logprobs(batch), model))
    (m0, lp0, a), (m1, lp1, b) = results
    assert m0["skipped"] == 0.0 and m0["num_selected"] == m1["num_selected"]
    for key in ("loss", "grad_norm", "entropy_mean"):
        assert m1[key] == pytest.approx(m0[key], rel=1e-4, abs=1e-6), key
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=ATOL, rtol=1e-4, msg=name)
    torch.testing.assert_close(lp1, lp0, atol=ATOL, rtol=0)


def test_teacher_scores_the_same_packed_or_padded(tok):
    from reopold_agents.teacher import Teacher

    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _scored_batch(tok, student, teacher)
    scores = [Teacher(tok, model=teacher, batch_size=4, top_k=3, chunk_size=16, pack=pack).score(batch)
              for pack in (False, True)]
    torch.testing.assert_close(scores[1].logprobs, scores[0].logprobs, atol=ATOL, rtol=0)
    torch.testing.assert_close(scores[1].topk_logprobs, scores[0].topk_logprobs, atol=ATOL, rtol=0)
    assert torch.equal(scores[1].topk_ids, scores[0].topk_ids)


def test_model_pack_sequences_key_reaches_teacher_and_learner(tok):
    from reopold_agents.config import compose
    from reopold_agents.teacher import build_teacher

    cfg = compose(["model=tiny"]).model
    assert cfg.pack_sequences is True  # packed is the default (docs/run.md: equal and faster on CPU)
    assert build_teacher(cfg, tok).pack is True
    off = compose(["model=tiny", "model.pack_sequences=false"]).model
    assert off.pack_sequences is False and build_teacher(off, tok).pack is False
    from reopold_agents.roles import LearnerRole

    assert LearnerRole(compose(["env=math"])).learner.pack_sequences is True
    assert LearnerRole(compose(["env=math", "model.pack_sequences=false"])).learner.pack_sequences is False


# ------------------------------------------------------------------ GPU (scripts/gpu_check.sh)
def _gpu_case(tok, dtype, impl):
    model = tiny_qwen2(tok, seed=6).to(device="cuda", dtype=dtype).train()
    model.set_attn_implementation(impl)
    ids, am = _batch(_random_rows([300, 37, 512, 5, 128, 260], seed=10))
    return model, ids.cuda(), am.cuda()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_packed_equals_padded_sdpa(tok):
    """On the GPU with sdpa: the dense bin layout, fp32, same log-probs, entropies and gradients."""
    model, ids, am = _gpu_case(tok, torch.float32, "sdpa")
    assert pf.attention_layout(model.model, am) == pf.DENSE
    out = _both(model, ids, am)
    (lp0, ent0, g0), (lp1, ent1, g1) = out
    torch.testing.assert_close(lp1, lp0, atol=1e-4, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=1e-4, rtol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_packed_flash_varlen_equals_padded(tok):
    """flash-attn: one packed row through the varlen kernel (position ids restart per sequence) against
    flash-attn's own padded path, in bf16 (flash-attn has no fp32)."""
    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    model, ids, am = _gpu_case(tok, torch.bfloat16, "flash_attention_2")
    assert pf.attention_layout(model.model, am) == pf.VARLEN
    spy = _Spy(pf.packed_text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lp_mod, "packed_text", spy)
        out = _both(model, ids, am)
    assert len(spy.calls) == 1 and spy.calls[0][0][3] == pf.VARLEN
    (lp0, ent0, g0), (lp1, ent1, g1) = out
    torch.testing.assert_close(lp1, lp0, atol=5e-2, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=5e-2, rtol=0)
    for a, b in zip(g0, g1):
        if a is not None:
            assert float((b.float() - a.float()).norm()) <= 0.05 * float(a.float().norm()) + 1e-3
