"""Teacher scoring equals a naive full forward on the student's exact ids; tokenizer mismatch fails loudly."""

from __future__ import annotations

import random

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.teacher import Teacher, TokenizerMismatchError, build_teacher, check_same_tokenizer
from reopold_agents.tiny import build_tokenizer, tiny_qwen2
from reopold_agents.tiny.tokenizer import train_tokenizer
from reopold_agents.trajectory import Trajectory

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


def _naive(model, traj):
    x = torch.tensor([traj.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1).gather(-1, x[0, 1:, None])[:, 0]
    full = torch.cat([torch.zeros(1, dtype=torch.float64), lp])
    return full * torch.tensor(traj.loss_mask, dtype=torch.float64)


def test_teacher_equals_naive_forward(tok):
    teacher_model = tiny_qwen2(tok, seed=3, hidden_size=96, num_layers=3)  # bigger than the student
    trajs = _trajectories(tok)
    ids_before = [list(t.token_ids) for t in trajs]
    Teacher(tok, model=teacher_model, batch_size=2, chunk_size=7).score(trajs)
    for t, before in zip(trajs, ids_before):
        assert t.token_ids == before
        assert len(t.teacher_logprobs) == len(t)
        got = torch.tensor(t.teacher_logprobs, dtype=torch.float64)
        assert torch.allclose(got, _naive(teacher_model, t), atol=1e-4)
        assert all(lp == 0.0 for lp, m in zip(t.teacher_logprobs, t.loss_mask) if not m)
        assert any(lp < 0 for lp in t.teacher_logprobs)


def test_teacher_topk_for_gkd(tok):
    model = tiny_qwen2(tok, seed=3)
    trajs = _trajectories(tok, n=2)
    Teacher(tok, model=model, top_k=4).score(trajs)
    for t in trajs:
        assert len(t.teacher_topk_ids) == len(t) and all(len(r) == 4 for r in t.teacher_topk_ids)
        x = torch.tensor([t.token_ids])
        with torch.no_grad():
            lsm = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        for pos, m in enumerate(t.loss_mask):
            if m and pos > 0:
                want = torch.topk(lsm[pos - 1], 4)
                assert t.teacher_topk_ids[pos] == want.indices.tolist()
                assert torch.allclose(torch.tensor(t.teacher_topk_logprobs[pos], dtype=torch.float64), want.values, atol=1e-4)
            else:
                assert t.teacher_topk_ids[pos] == [0] * 4


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
    trajs = teacher.score(_trajectories(tok, n=2))
    assert all(t.teacher_logprobs is not None for t in trajs)
    with pytest.raises(TokenizerMismatchError):
        build_teacher(cfg, train_tokenizer(vocab_size=900))


def test_teacher_needs_one_backend(tok):
    with pytest.raises(ValueError, match="exactly one"):
        Teacher(tok)
