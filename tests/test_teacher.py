"""Teacher scoring of a collated Batch equals a naive full forward on the student's exact ids; tokenizer
mismatch fails loudly."""

from __future__ import annotations

import random

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.teacher import Teacher, TokenizerMismatchError, build_teacher, check_same_tokenizer
from reopold_agents.teacher.scorer import micro_batches
from reopold_agents.tiny import build_tokenizer, tiny_qwen2
from reopold_agents.tiny.tokenizer import train_tokenizer
from reopold_agents.trajectory import Trajectory, collate

torch.set_num_threads(1)


def _trajectories(tok, n=5, seed=0):
    rng = random.Random(seed)
    out = []
    for g in range(n):
        t = Trajectory(group_id=g)
        for _ in range(rng.randint(1, 3)):
            t.append_env([rng.randrange(len(tok)) for _ in range(rng.randint(2, 9))])
            k = rng.randint(1, 7)
            t.append_generated([rng.randrange(len(tok)) for _ in range(k)], [-1.0] * k)
        out.append(t)
    return out


def _scored(teacher, batch):
    """The teacher's scores written into ``batch`` (as the training step does)."""
    return teacher.score(batch).apply_to(batch)


def _naive(model, traj):
    x = torch.tensor([traj.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1).gather(-1, x[0, 1:, None])[:, 0]
    full = torch.cat([torch.zeros(1, dtype=torch.float64), lp])
    return full * torch.tensor(traj.loss_mask, dtype=torch.float64)


def test_teacher_equals_naive_forward(tok):
    teacher_model = tiny_qwen2(tok, seed=3, hidden_size=96, num_layers=3)  # bigger than the student
    trajs = _trajectories(tok)
    batch = collate(trajs, tok.pad_token_id)
    ids_before, mask_before = batch.input_ids.clone(), batch.loss_mask.clone()
    assert len({len(t) for t in trajs}) > 1  # rows of different lengths: micro-batches sort and truncate
    out = _scored(Teacher(tok, model=teacher_model, batch_size=2, chunk_size=7), batch)
    assert out is batch  # written into the batch in place
    assert torch.equal(batch.input_ids, ids_before) and torch.equal(batch.loss_mask, mask_before)
    assert batch.teacher_logprobs.shape == batch.input_ids.shape and batch.teacher_logprobs.dtype == torch.float32
    assert batch.teacher_topk_ids is None and batch.teacher_topk_logprobs is None  # top_k=0
    for i, t in enumerate(trajs):
        n = len(t)
        row = batch.teacher_logprobs[i]
        got = row[:n].double()
        assert torch.allclose(got, _naive(teacher_model, t), atol=1e-4)
        assert torch.all(row[n:] == 0.0)  # padding
        assert all(float(lp) == 0.0 for lp, m in zip(row[:n], t.loss_mask) if not m)
        assert bool((row[:n] < 0).any())


def test_teacher_scores_like_one_row_at_a_time(tok):
    """Micro-batching (sorted by length, padded to the longest row of each) changes nothing."""
    model = tiny_qwen2(tok, seed=3)
    trajs = _trajectories(tok, n=6, seed=1)
    whole = _scored(Teacher(tok, model=model, batch_size=4), collate(trajs, tok.pad_token_id))
    for i, t in enumerate(trajs):
        one = _scored(Teacher(tok, model=model, batch_size=1), collate([t], tok.pad_token_id))
        assert torch.allclose(whole.teacher_logprobs[i, : len(t)], one.teacher_logprobs[0], atol=1e-5)
    empty = collate(trajs[:2], tok.pad_token_id)
    empty.attention_mask[1] = 0
    with pytest.raises(ValueError, match="empty"):
        Teacher(tok, model=model).score(empty)


def test_micro_batches_keep_each_prompts_samples_together():
    """Every row once, no micro-batch over the size, and a group (one prompt's samples) split only when it
    alone has more rows than the size: a shared prompt then runs once per step (brute force over random cases)."""
    rng = random.Random(0)
    for _ in range(300):
        n, size = rng.randint(1, 20), rng.randint(1, 6)
        group_ids = [rng.randrange(max(1, n // 2)) for _ in range(n)]
        lengths = [rng.randint(1, 50) for _ in range(n)]
        chunks = micro_batches(lengths, group_ids, size)
        assert sorted(r for c in chunks for r in c) == list(range(n))
        assert all(1 <= len(c) <= size for c in chunks)
        for gid in set(group_ids):
            rows = {r for r, g in enumerate(group_ids) if g == gid}
            holding = [c for c in chunks if rows & set(c)]
            if len(rows) <= size:
                assert len(holding) == 1
            else:  # split into full micro-batches of its own, the rest maybe shared
                assert len(holding) == -(-len(rows) // size)
    # the old length-sorted cut split both prompts of this step (2 samples each, size 2)
    assert micro_batches([10, 30, 11, 31], [0, 1, 1, 0], 2) == [[2, 1], [0, 3]]  # shortest group first


def test_teacher_scores_grouped_prompts_like_one_row_at_a_time(tok):
    """Samples sharing a prompt (same group id), micro-batched by group: the scores are the per-row ones."""
    model = tiny_qwen2(tok, seed=3)
    rng = random.Random(4)
    trajs = []
    for g in range(3):
        prompt = [rng.randrange(len(tok)) for _ in range(70)]  # long enough to be read once per group
        for _ in range(rng.randint(2, 3)):
            t = Trajectory(group_id=g)
            t.append_env(prompt)
            k = rng.randint(1, 6)
            t.append_generated([rng.randrange(len(tok)) for _ in range(k)], [-1.0] * k)
            trajs.append(t)
    rng.shuffle(trajs)
    whole = _scored(Teacher(tok, model=model, batch_size=3), collate(trajs, tok.pad_token_id))
    for i, t in enumerate(trajs):
        one = _scored(Teacher(tok, model=model, batch_size=1), collate([t], tok.pad_token_id))
        assert torch.allclose(whole.teacher_logprobs[i, : len(t)], one.teacher_logprobs[0], atol=1e-5)



def test_teacher_topk_for_gkd(tok):
    model = tiny_qwen2(tok, seed=3)
    trajs = _trajectories(tok, n=2)
    batch = _scored(Teacher(tok, model=model, top_k=4), collate(trajs, tok.pad_token_id))
    bsz, length = batch.input_ids.shape
    assert batch.teacher_topk_ids.shape == (bsz, length, 4) and batch.teacher_topk_ids.dtype == torch.long
    assert batch.teacher_topk_logprobs.shape == (bsz, length, 4)
    assert batch.teacher_logprobs is not None  # the sampled-token log-probs come with the top-k
    for i, t in enumerate(trajs):
        ids, lps = batch.teacher_topk_ids[i], batch.teacher_topk_logprobs[i]
        x = torch.tensor([t.token_ids])
        with torch.no_grad():
            lsm = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        for pos in range(length):
            m = t.loss_mask[pos] if pos < len(t) else 0
            if m and pos > 0:
                want = torch.topk(lsm[pos - 1], 4)
                assert ids[pos].tolist() == want.indices.tolist()
                assert torch.allclose(lps[pos].double(), want.values, atol=1e-4)
            else:
                assert ids[pos].tolist() == [0] * 4 and lps[pos].tolist() == [0.0] * 4


def test_tokenizer_mismatch_is_a_clear_error(tok):
    check_same_tokenizer(tok, build_tokenizer())  # same tokenizer: fine
    other = train_tokenizer(vocab_size=900)
    with pytest.raises(TokenizerMismatchError, match="vocabulary sizes differ"):
        check_same_tokenizer(tok, other)
    extra = build_tokenizer()
    extra.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    with pytest.raises(TokenizerMismatchError, match="special tokens differ"):
        check_same_tokenizer(tok, extra)


def test_build_teacher_from_config(tok):
    cfg = compose(["model=tiny"]).model
    teacher = build_teacher(cfg, tok)
    assert teacher.model is not None and not any(p.requires_grad for p in teacher.model.parameters())
    batch = _scored(teacher, collate(_trajectories(tok, n=2), tok.pad_token_id))
    assert batch.teacher_logprobs is not None and bool((batch.teacher_logprobs[batch.loss_mask > 0] < 0).all())
    assert torch.all(batch.teacher_logprobs[batch.loss_mask == 0] == 0.0)
    assert teacher.chunk_size == cfg.logprob_chunk_size and teacher.batch_size == cfg.teacher_batch_size
    # another student tokenizer: detected, the teacher becomes the cross-tokenizer scorer (docs/cross_tokenizer.md)
    from reopold_agents.teacher import CrossTokenizerTeacher

    other = train_tokenizer(vocab_size=900)
    with pytest.raises(TokenizerMismatchError):
        check_same_tokenizer(other, tok)
    assert isinstance(build_teacher(cfg, other), CrossTokenizerTeacher)
    with pytest.raises(ValueError, match="top-k objective"):  # two vocabularies: no top-k distillation
        build_teacher(cfg, other, top_k=4)


def test_teacher_needs_one_backend(tok):
    with pytest.raises(ValueError, match="exactly one"):
        Teacher(tok)
