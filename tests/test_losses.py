"""Token reward, mixture clipping, token selection, surrogate aggregation, GRPO and GKD vs brute force."""

from __future__ import annotations

import math

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.losses import (
    aggregate,
    batch_advantages,
    clip_floor,
    clip_reward,
    clipped_surrogate,
    group_advantages,
    select_tokens,
    select_top_entropy,
    token_reward,
    topk_kl,
)
from reopold_agents.trajectory import Batch


def test_token_reward_is_log_ratio_without_grad():
    t = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    o = torch.tensor([[0.0, -0.5, -3.0]], requires_grad=True)
    r = token_reward(t, o, torch.tensor([[0.0, 1.0, 1.0]]))
    assert torch.equal(r, torch.tensor([[0.0, -0.5, 1.0]]))
    assert not r.requires_grad


def test_clip_floor_and_clipping():
    assert clip_floor(0.2) == pytest.approx(math.log(0.25))
    assert clip_floor(0.5) == pytest.approx(0.0)
    r = torch.tensor([-5.0, -1.386, -1.0, 0.0, 3.0])
    r_hat, clipped = clip_reward(r, 0.2)
    assert torch.allclose(r_hat, torch.tensor([math.log(0.25), -1.386, -1.0, 0.0, 3.0]))
    assert clipped.tolist() == [True, False, False, False, False]
    assert r_hat.min() >= math.log(0.25) - 1e-7
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="clip_lambda"):
            clip_floor(bad)


def test_entropy_selection_fraction_and_ties():
    ent = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.5], [0.0, 0.5, 0.2, 0.7, 9.0]])
    mask = torch.tensor([[0.0, 1, 1, 1, 1], [0.0, 1, 1, 1, 0]])  # 7 trainable; 9.0 is not trainable
    sel = select_top_entropy(ent, mask, beta=0.5)
    assert int(sel.sum()) == math.ceil(0.5 * 7)  # 4
    # 0.9 and 0.7 first, then the three 0.5 ties: the two earliest in batch-major order win
    assert sel.tolist() == [[False, True, False, True, True], [False, False, False, True, False]]
    assert not sel[1, 4]  # never selects a masked token, however high its entropy
    assert torch.equal(select_top_entropy(ent, mask, beta=1.0), mask.bool())


def test_entropy_selection_matches_brute_force_on_random_input():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        ent = torch.randint(0, 4, (3, 9), generator=g).float()  # many ties
        mask = (torch.rand(3, 9, generator=g) > 0.3).float()
        beta = [0.1, 0.25, 0.5, 0.9][trial % 4]
        sel = select_top_entropy(ent, mask, beta)
        cand = [(-float(ent.view(-1)[i]), i) for i in range(27) if mask.view(-1)[i] > 0]
        keep = {i for _, i in sorted(cand)[: math.ceil(beta * len(cand) - 1e-9)]}
        assert set(sel.view(-1).nonzero().view(-1).tolist()) == keep


def test_selection_edge_cases():
    ent = torch.rand(2, 4)
    none = torch.zeros(2, 4)
    assert not select_top_entropy(ent, none, 0.5).any()
    one = torch.zeros(2, 4)
    one[1, 2] = 1
    assert select_top_entropy(ent, one, 0.01).nonzero().tolist() == [[1, 2]]
    r = torch.tensor([[0.0, -2.0, -1.0, 1.0]])
    m = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert select_tokens("reward_floor", m, reward=r, floor=clip_floor(0.2)).tolist() == [[False, False, True, True]]
    assert select_tokens("all", m).tolist() == [[False, True, True, True]]
    with pytest.raises(ValueError, match="entropy"):
        select_tokens("entropy", m)
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_tokens("random", m)


def test_aggregations():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert aggregate(x, m, "token_mean").item() == pytest.approx(16 / 4)
    assert aggregate(x, m, "seq_mean").item() == pytest.approx((2.0 + 10.0) / 2)
    y = x.clone().requires_grad_()
    out = aggregate(y, torch.zeros_like(m), "token_mean")
    out.backward()
    assert out.item() == 0.0 and torch.all(y.grad == 0)


def test_surrogate_ratio_clipping_against_brute_force():
    lp = torch.tensor([[0.0, -0.1, -2.0, -1.0]], requires_grad=True)
    old = torch.tensor([[0.0, -0.5, -1.0, -1.0]])
    adv = torch.tensor([[0.0, 1.0, -1.0, 2.0]])
    mask = torch.tensor([[False, True, True, True]])
    loss, stats = clipped_surrogate(lp, old, adv, mask, 0.2, 0.2, "token_mean")
    expected = 0.0
    for t in (1, 2, 3):
        rho = math.exp(lp[0, t].item() - old[0, t].item())
        a = adv[0, t].item()
        expected += -min(rho * a, min(max(rho, 0.8), 1.2) * a)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)
    assert stats["ratio_clip_frac"] == pytest.approx(2 / 3)  # token 1 (rho 1.49, A>0) and 2 (rho 0.37, A<0)
    loss.backward()
    assert lp.grad[0, 1] == 0 and lp.grad[0, 2] == 0  # clipped branch has no gradient
    assert lp.grad[0, 3].item() == pytest.approx(-2.0 / 3)


def test_group_advantages_brute_force():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 3.0, 3.0])
    groups = torch.tensor([0, 0, 0, 0, 2, 7, 7, 5])
    adv = group_advantages(rewards, groups, std_norm=True)
    for i in range(8):
        members = [float(rewards[j]) for j in range(8) if groups[j] == groups[i]]
        if len(members) < 2:
            want = 0.0
        else:
            mu = sum(members) / len(members)
            sd = math.sqrt(sum((x - mu) ** 2 for x in members) / (len(members) - 1))
            want = (float(rewards[i]) - mu) / (sd + 1e-6)
        assert adv[i].item() == pytest.approx(want, abs=1e-5)
    centred = group_advantages(rewards, groups, std_norm=False)
    assert centred[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    equal = group_advantages(torch.tensor([1.0, 1.0]), torch.tensor([3, 3]))
    assert equal.tolist() == [0.0, 0.0]


def test_topk_kl_brute_force_and_zero_at_match():
    s = torch.tensor([[-0.5, -1.5, -2.0]])
    t = torch.tensor([[-1.0, -1.0, -3.0]])
    ps, pt = torch.softmax(s, -1), torch.softmax(t, -1)
    rev = float((ps * (ps.log() - pt.log())).sum())
    fwd = float((pt * (pt.log() - ps.log())).sum())
    assert topk_kl(s, t, "reverse").item() == pytest.approx(rev, rel=1e-5)
    assert topk_kl(s, t, "forward").item() == pytest.approx(fwd, rel=1e-5)
    assert topk_kl(t, t, "reverse").item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="direction"):
        topk_kl(s, t, "both")


def _batch(teacher=True):
    lm = torch.tensor([[0.0, 1, 1, 1], [0.0, 0, 1, 1]])
    old = torch.tensor([[0.0, -1.0, -0.5, -3.0], [0.0, 0.0, -1.0, -1.0]]) * lm
    tea = torch.tensor([[0.0, -0.5, -4.0, -3.0], [0.0, 0.0, -1.2, -0.1]]) * lm
    return Batch(
        input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long), loss_mask=lm,
        old_logprobs=old, teacher_logprobs=tea if teacher else None, rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
    )


def test_batch_advantages_per_family():
    b = _batch()
    r = (b.teacher_logprobs - b.old_logprobs) * b.loss_mask
    opd = batch_advantages(AlgoConfig(name="opd", reward_clip=False), b)
    assert torch.allclose(opd.advantages, r) and not opd.clipped.any()
    reo = batch_advantages(AlgoConfig(name="reopold"), b)
    assert torch.allclose(reo.advantages, torch.clamp(r, min=math.log(0.25)) * b.loss_mask)
    assert reo.clipped.tolist() == [[False, False, True, False], [False, False, False, False]]
    mix = batch_advantages(AlgoConfig(name="opd_outcome", reward_clip=False, outcome_coef=0.5), b)
    outcome = group_advantages(b.rewards, b.group_ids)
    assert torch.allclose(mix.advantages, (r + 0.5 * outcome[:, None]) * b.loss_mask)
    grpo = batch_advantages(AlgoConfig(name="grpo", stage1_rule="all"), _batch(teacher=False))
    assert torch.allclose(grpo.advantages, outcome[:, None] * b.loss_mask)
    with pytest.raises(ValueError, match="teacher_logprobs"):
        batch_advantages(AlgoConfig(name="reopold"), _batch(teacher=False))
