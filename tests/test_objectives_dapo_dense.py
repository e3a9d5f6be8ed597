"""DAPO and dense full-vocabulary KL: the objectives against brute-force references, and a real step."""

from __future__ import annotations

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.objectives import OBJECTIVES, make_objective
from reopold_agents.objectives.dapo import overlong_penalty
from reopold_agents.objectives.outcome import mixed_groups
from reopold_agents.trajectory import Batch


def _batch(rewards, groups, lengths, T=6):
    B = len(rewards)
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, T - n:] = 1.0
    return Batch(input_ids=torch.ones(B, T, dtype=torch.long), attention_mask=torch.ones(B, T, dtype=torch.long),
                 loss_mask=mask, old_logprobs=torch.full((B, T), -1.0), teacher_logprobs=None,
                 rewards=torch.tensor(rewards, dtype=torch.float32), group_ids=torch.tensor(groups))


def test_overlong_penalty_matches_the_dapo_formula():
    lengths = torch.tensor([0, 6, 7, 8, 9, 10, 11, 50])
    got = overlong_penalty(lengths, max_tokens=10, buffer=4).tolist()
    want = [0.0 if n <= 6 else ((6 - n) / 4 if n <= 10 else -1.0) for n in lengths.tolist()]
    assert got == pytest.approx(want)
    assert overlong_penalty(lengths, 0, 0).abs().sum() == 0  # off by default


def test_dynamic_sampling_drops_groups_with_one_outcome():
    keep = mixed_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert keep.tolist() == [False, False, True, True, False, False]


def test_dapo_terms_mask_and_clip_higher():
    cfg = AlgoConfig(name="dapo", ppo_clip_high=0.28, overlong_max_tokens=4, overlong_buffer=2)
    cfg.check()
    obj = make_objective(cfg, 10)
    assert not obj.needs_teacher
    batch = _batch([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], [2, 4, 3, 1])
    terms = obj.token_terms(batch)
    # brute force: reward + penalty (len 2 -> 0, len 4 -> -1, len 3 -> -0.5, len 1 -> 0), then group z-score
    r = torch.tensor([1.0, -1.0, 0.5, 1.0])
    for g in ([0, 1], [2, 3]):
        x = r[g]
        adv = (x - x.mean()) / (x.std(correction=1) + 1e-6)
        for b, a in zip(g, adv):
            assert torch.allclose(terms.advantages[b][batch.loss_mask[b] > 0], a.expand(int(batch.loss_mask[b].sum())))
    mask = obj.select(0, batch.loss_mask, terms, None)
    assert torch.equal(mask, batch.loss_mask > 0)  # both groups mixed after the penalty
    # a ratio of 1.25 is inside DAPO's [0.8, 1.28] but outside PPO's [0.8, 1.2]
    from reopold_agents.objectives.base import Forward

    logp = (batch.old_logprobs + torch.log(torch.tensor(1.25))).requires_grad_()
    loss, stats = obj.loss(Forward(logp, batch.old_logprobs, terms, mask))
    assert stats["ratio_clip_frac"] == 0.0
    loss.backward()
    assert logp.grad[mask].abs().sum() > 0


def test_dense_kl_equals_brute_force_full_vocab_reverse_kl():
    torch.manual_seed(0)
    V = 7
    s_logits, t_logits = torch.randn(2, 3, V), torch.randn(2, 3, V)
    obj = make_objective(AlgoConfig(name="dense_kl"), 10)
    from reopold_agents.objectives.base import Forward, TokenTerms

    mask = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    s_lp = torch.log_softmax(s_logits, -1).requires_grad_()
    t_lp = torch.log_softmax(t_logits, -1)
    zeros = torch.zeros(2, 3)
    loss, _ = obj.loss(Forward(zeros, zeros, TokenTerms(zeros, None, zeros.bool()), mask, s_lp, t_lp))
    ps = s_lp.exp()
    brute = (ps * (s_lp - t_lp)).sum(-1)[mask].mean()
    assert loss.item() == pytest.approx(brute.item(), rel=1e-6)


def test_dense_kl_trains_a_tiny_student_against_the_real_teacher(tok):
    """The teacher returns its whole distribution; one learner step lowers the dense KL."""
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner
    from reopold_agents.teacher import Teacher
    from reopold_agents.tiny import tiny_qwen2
    from reopold_agents.trajectory import Trajectory, collate

    torch.manual_seed(0)
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1).eval()
    trajs = []
    for i in range(2):
        t = Trajectory(group_id=i)
        t.append_env([5, 6, 7])
        t.append_generated([8 + i, 9, 10], [-2.0, -2.0, -2.0])
        trajs.append(t)
    batch = collate(trajs, tok.pad_token_id)
    Teacher(tok, model=teacher, top_k=10**9).score(batch).apply_to(batch)
    assert batch.teacher_topk_logprobs.shape[-1] == student.config.vocab_size  # the whole vocabulary
    learner = Learner(student, AlgoConfig(name="dense_kl"), TrainerConfig(lr=1e-2, total_steps=2))
    first = learner.step(batch, 0)["dense_kl"]
    second = learner.step(batch, 1)["dense_kl"]
    assert second < first


def test_registry_names_every_preset():
    from pathlib import Path

    import yaml

    files = list((Path(__file__).resolve().parents[1] / "configs" / "algo").glob("*.yaml"))
    names = {p.stem: yaml.safe_load(p.read_text())["name"] for p in files}
    assert set(OBJECTIVES) <= set(names)  # every objective has its own preset
    for stem, name in names.items():  # and every preset is an objective, or a named variant of one
        assert name in OBJECTIVES and (stem == name or stem.startswith(f"{name}_")), (stem, name)
