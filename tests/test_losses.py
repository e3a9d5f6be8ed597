"""The objectives (reopold_agents/objectives/) vs brute force: token reward, mixture clipping, token
selection, surrogate aggregation, GRPO, GKD, each objective's token terms and the keys it reads."""

from __future__ import annotations

import math

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.objectives import OBJECTIVES, Forward, TokenTerms, check_algo, make_objective
from reopold_agents.objectives.gkd import GKD, topk_kl
from reopold_agents.objectives.grpo import GRPO, group_advantages
from reopold_agents.objectives.opd import OPD
from reopold_agents.objectives.opd_outcome import OPDOutcome
from reopold_agents.objectives.reopold import (
    Reopold,
    aggregate,
    clip_floor,
    clip_reward,
    clipped_surrogate,
    select_reward_floor,
    select_tokens,
    select_top_entropy,
    token_reward,
)
from reopold_agents.trajectory import Batch


def test_token_reward_is_log_ratio_without_grad():
    t = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    o = torch.tensor([[0.0, -0.5, -3.0]], requires_grad=True)
    r = token_reward(t, o, torch.tensor([[0.0, 1.0, 1.0]]))
    assert torch.equal(r, torch.tensor([[0.0, -0.5, 1.0]]))
    assert not r.requires_grad
    with pytest.raises(ValueError, match="shape"):
        token_reward(t, o[:, :2], torch.ones(1, 3))


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
    assert torch.equal(select_reward_floor(r, m, clip_floor(0.2)), select_tokens("reward_floor", m, reward=r,
                                                                                 floor=clip_floor(0.2)))
    assert select_tokens("all", m).tolist() == [[False, True, True, True]]
    with pytest.raises(ValueError, match="entropy"):
        select_tokens("entropy", m)
    with pytest.raises(ValueError, match="reward_floor"):
        select_tokens("reward_floor", m)
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_tokens("random", m)
    with pytest.raises(ValueError, match="beta"):
        select_top_entropy(ent, one, 0.0)


def test_aggregations():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert aggregate(x, m, "token_mean").item() == pytest.approx(16 / 4)
    assert aggregate(x, m, "seq_mean").item() == pytest.approx((2.0 + 10.0) / 2)
    y = x.clone().requires_grad_()
    out = aggregate(y, torch.zeros_like(m), "token_mean")
    out.backward()
    assert out.item() == 0.0 and torch.all(y.grad == 0)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(x, m, "sum")


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
    with pytest.raises(ValueError, match="top-k differ"):
        topk_kl(s, t[:, :2], "reverse")


def _batch(teacher=True):
    lm = torch.tensor([[0.0, 1, 1, 1], [0.0, 0, 1, 1]])
    old = torch.tensor([[0.0, -1.0, -0.5, -3.0], [0.0, 0.0, -1.0, -1.0]]) * lm
    tea = torch.tensor([[0.0, -0.5, -4.0, -3.0], [0.0, 0.0, -1.2, -0.1]]) * lm
    return Batch(
        input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long), loss_mask=lm,
        old_logprobs=old, teacher_logprobs=tea if teacher else None, rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
    )


def _objective(total_steps=4, **algo):
    cfg = AlgoConfig(**algo)
    cfg.check()  # every config used here is one the loader accepts
    return make_objective(cfg, total_steps)


def test_token_terms_per_objective():
    b = _batch()
    r = (b.teacher_logprobs - b.old_logprobs) * b.loss_mask
    opd = _objective(name="opd").token_terms(b)
    assert torch.allclose(opd.advantages, r) and not opd.clipped.any()
    assert torch.allclose(opd.reward, r)
    reo = _objective(name="reopold").token_terms(b)
    assert torch.allclose(reo.advantages, torch.clamp(r, min=math.log(0.25)) * b.loss_mask)
    assert reo.clipped.tolist() == [[False, False, True, False], [False, False, False, False]]
    assert torch.allclose(reo.reward, r)  # the raw reward: what reward_floor selects on and metrics report
    unclipped = _objective(name="reopold", reward_clip=False).token_terms(b)
    assert torch.allclose(unclipped.advantages, r) and not unclipped.clipped.any()
    mix = _objective(name="opd_outcome", outcome_coef=0.5).token_terms(b)
    outcome = group_advantages(b.rewards, b.group_ids)
    assert torch.allclose(mix.advantages, (r + 0.5 * outcome[:, None]) * b.loss_mask)
    assert torch.allclose(mix.reward, r) and not mix.clipped.any()
    grpo = _objective(name="grpo").token_terms(_batch(teacher=False))
    assert torch.allclose(grpo.advantages, outcome[:, None] * b.loss_mask)
    assert grpo.reward is None and not grpo.clipped.any()
    centred = _objective(name="grpo", grpo_std_norm=False).token_terms(_batch(teacher=False))
    assert torch.allclose(centred.advantages, group_advantages(b.rewards, b.group_ids, False)[:, None] * b.loss_mask)
    for terms in (opd, reo, mix, grpo):
        assert not terms.advantages.requires_grad
    for name in ("reopold", "opd", "opd_outcome"):
        algo = dict(name=name, outcome_coef=0.5) if name == "opd_outcome" else dict(name=name)
        with pytest.raises(ValueError, match="teacher_logprobs"):
            _objective(**algo).token_terms(_batch(teacher=False))
    with pytest.raises(ValueError, match="teacher_topk"):
        _objective(name="gkd").token_terms(b)
    with pytest.raises(ValueError, match="gkd_topk"):
        b.teacher_topk_ids, b.teacher_topk_logprobs = torch.zeros(2, 4, 2, dtype=torch.long), torch.zeros(2, 4, 2)
        _objective(name="gkd", gkd_topk=4).token_terms(b)


def test_reopold_outcome_term_brute_force():
    """algo.outcome_coef on reopold / reopold_topk: A_t = r_hat_t + coef * A_group(R) on trainable tokens, from a
    per-episode loop; the raw reward (what reward_floor selects on) and the clipping do not change."""
    g = torch.Generator().manual_seed(3)
    lm = (torch.rand(6, 5, generator=g) > 0.3).float()
    old = -torch.rand(6, 5, generator=g) * 3 * lm
    tea = -torch.rand(6, 5, generator=g) * 6 * lm
    rewards, groups = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.5]), torch.tensor([0, 0, 1, 1, 2, 2])
    b = Batch(torch.ones(6, 5, dtype=torch.long), torch.ones(6, 5, dtype=torch.long), lm, old, tea, rewards, groups)
    b.teacher_topk_ids, b.teacher_topk_logprobs = torch.zeros(6, 5, 8, dtype=torch.long), torch.zeros(6, 5, 8)
    floor = math.log(0.2 / 0.8)
    for name, extra in (("reopold", {}), ("reopold_topk", {"stage1_rule": "all", "gkd_direction": "forward"})):
        for std_norm in (True, False):
            plain = _objective(name=name, **extra, grpo_std_norm=std_norm).token_terms(b)
            mixed = _objective(name=name, **extra, outcome_coef=0.5, grpo_std_norm=std_norm).token_terms(b)
            expected = torch.zeros(6, 5)
            for i in range(6):
                mates = [rewards[j].item() for j in range(6) if groups[j] == groups[i]]
                mean = sum(mates) / len(mates)
                std = (sum((m - mean) ** 2 for m in mates) / (len(mates) - 1)) ** 0.5
                a_i = (rewards[i].item() - mean) / ((std + 1e-6) if std_norm else 1.0)
                for t in range(5):
                    if lm[i, t] > 0:
                        expected[i, t] = max(tea[i, t].item() - old[i, t].item(), floor) + 0.5 * a_i
            assert torch.allclose(mixed.advantages, expected, atol=1e-5), (name, std_norm)
            assert torch.equal(mixed.reward, plain.reward) and torch.equal(mixed.clipped, plain.clipped)
            assert not mixed.advantages.requires_grad
    assert not torch.equal(mixed.advantages, plain.advantages)  # the term did something
    same = _objective(name="reopold", outcome_coef=0.5).token_terms(
        Batch(b.input_ids, b.attention_mask, lm, old, tea, torch.ones(6), groups))
    assert torch.allclose(same.advantages, _objective(name="reopold").token_terms(b).advantages)  # no spread: no term
    capped = _objective(name="reopold", outcome_coef=5.0, stop_token="clip")
    b.stop_mask = lm.bool() & (torch.arange(5) == 4)
    terms = capped.token_terms(b)
    assert (terms.advantages[terms.stop] <= 0).all()  # a stop is never rewarded, even by the outcome


def test_teacher_on_failed_brute_force():
    """algo.teacher_on=failed on reopold / reopold_topk, against a per-episode loop: a solved episode gets no
    teacher reward and no dense top-k term, keeps its outcome advantage, and leaves the selection where that
    is 0; a failed episode is trained as with teacher_on=all. The loss (rho = 1) equals the hand sum."""
    g = torch.Generator().manual_seed(5)
    B, T, K = 6, 5, 4
    lm = (torch.rand(B, T, generator=g) > 0.25).float()
    lm[:, 0] = 1.0  # every row has a token
    old = -torch.rand(B, T, generator=g) * 3 * lm
    tea = -torch.rand(B, T, generator=g) * 6 * lm
    rewards, groups = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1, 2, 2])
    solved = rewards > 0
    b = Batch(torch.ones(B, T, dtype=torch.long), torch.ones(B, T, dtype=torch.long), lm, old, tea, rewards, groups)
    b.teacher_topk_ids = torch.zeros(B, T, K, dtype=torch.long)
    b.teacher_topk_logprobs = torch.log_softmax(torch.randn(B, T, K, generator=g), -1)
    student_topk = torch.log_softmax(torch.randn(B, T, K + 2, generator=g), -1)[..., :K]
    floor = math.log(0.2 / 0.8)
    with pytest.raises(ValueError, match="batch.successes"):
        _objective(name="reopold", teacher_on="failed").token_terms(b)
    b.successes = solved.clone()
    topk = {"stage1_rule": "all", "gkd_direction": "forward", "gkd_topk": K}
    for name, extra in (("reopold", {}), ("reopold_topk", topk)):
        for coef in (0.0, 0.5):
            obj = _objective(name=name, **extra, teacher_on="failed", outcome_coef=coef)
            terms = obj.token_terms(b)
            expected, kept = torch.zeros(B, T), []
            for i in range(B):
                mates = [rewards[j].item() for j in range(B) if groups[j] == groups[i]]
                mean = sum(mates) / len(mates)
                std = (sum((m - mean) ** 2 for m in mates) / (len(mates) - 1)) ** 0.5
                a_i = (rewards[i].item() - mean) / (std + 1e-6)
                for t in range(T):
                    if lm[i, t] > 0:
                        teacher = 0.0 if solved[i] else max(tea[i, t].item() - old[i, t].item(), floor)
                        expected[i, t] = teacher + coef * a_i
                kept.append(not solved[i] or (coef > 0 and abs(a_i) > 0))
            assert torch.allclose(terms.advantages, expected, atol=1e-5), (name, coef)
            assert terms.kept.tolist() == kept and terms.teacher_rows.tolist() == (~solved).tolist()
            assert not terms.clipped[solved].any() and torch.equal(terms.reward, tea - old)  # raw reward kept
            assert _objective(name=name, **extra).token_terms(b).clipped[solved].any()  # all: they were clipped
            mask = obj.select(0, lm, terms, entropy=None)  # reopold's stage 1: reward_floor, on failed rows only
            floor_ok = [[bool(solved[i]) or tea[i, t].item() - old[i, t].item() >= floor or name == "reopold_topk"
                         for t in range(T)] for i in range(B)]
            assert torch.equal(mask, lm.bool() & torch.tensor(kept)[:, None] & torch.tensor(floor_ok)), (name, coef)
            fwd = Forward(logprobs=old.clone(), old_logprobs=old, terms=terms, mask=mask,
                          student_topk=student_topk, teacher_topk=b.teacher_topk_logprobs)
            loss, stats = obj.loss(fwd)
            n = int(mask.sum())
            hand = 0.0
            for i in range(B):
                for t in range(T):
                    if not mask[i, t]:
                        continue
                    hand -= expected[i, t].item() / n  # rho = 1
                    if name == "reopold_topk" and not solved[i]:
                        p_t = b.teacher_topk_logprobs[i, t]
                        hand += sum(p_t[k].exp().item() * (p_t[k].item() - student_topk[i, t, k].item())
                                    for k in range(K)) / n
            assert loss.item() == pytest.approx(hand, abs=1e-5), (name, coef)
            assert stats["teacher_rows_frac"] == pytest.approx(0.5)
    # teacher_on=all is the default and unchanged; every episode failed: the same terms as all
    plain = _objective(name="reopold").token_terms(b)
    assert plain.kept is None and plain.teacher_rows is None
    b.successes = torch.zeros(B, dtype=torch.bool)
    every = _objective(name="reopold", teacher_on="failed").token_terms(b)
    assert torch.equal(every.advantages, plain.advantages) and bool(every.kept.all())
    with pytest.raises(ValueError, match="teacher_on"):
        AlgoConfig(teacher_on="solved").check()


def test_terms_rows_pick_sequences():
    terms = _objective(name="reopold").token_terms(_batch())
    part = terms.rows(torch.tensor([1]))
    assert torch.equal(part.advantages, terms.advantages[1:]) and torch.equal(part.reward, terms.reward[1:])
    assert torch.equal(part.clipped, terms.clipped[1:])
    assert TokenTerms(terms.advantages, None, terms.clipped).rows(torch.tensor([0])).reward is None


def test_registry_and_make_objective():
    known = {"reopold": Reopold, "opd": OPD, "opd_outcome": OPDOutcome, "grpo": GRPO, "gkd": GKD}
    assert {k: OBJECTIVES.get(k) for k in known} == known
    for name, cls in known.items():
        algo = dict(name=name, outcome_coef=0.5) if name == "opd_outcome" else dict(name=name)
        obj = _objective(total_steps=7, **algo)
        assert type(obj) is cls and obj.total_steps == 7
    assert not GRPO.needs_teacher and all(OBJECTIVES[n].needs_teacher for n in ("reopold", "opd", "opd_outcome", "gkd"))
    assert _objective(name="gkd", gkd_topk=5).teacher_topk == 5
    assert all(_objective(name=n).teacher_topk == 0 for n in ("reopold", "opd", "grpo"))
    with pytest.raises(ValueError, match="algo.name"):
        make_objective(AlgoConfig(name="ppo"), 4)
    with pytest.raises(ValueError, match="name"):  # the objective registry checks the name (config imports none)
        check_algo(AlgoConfig(name="ppo"))


def test_only_reopold_has_stage_rules():
    b = _batch()
    for name in ("opd", "grpo", "gkd", "opd_outcome"):
        algo = dict(name=name, outcome_coef=0.5) if name == "opd_outcome" else dict(name=name)
        obj = _objective(total_steps=4, **algo)
        terms = TokenTerms(torch.zeros(2, 4), None, torch.zeros(2, 4, dtype=torch.bool))
        for step in range(6):
            assert obj.stage(step) == 1 and not obj.needs_entropy(step)
            assert torch.equal(obj.select(step, b.loss_mask, terms, None), b.loss_mask > 0)  # every token
    reo = _objective(total_steps=4, name="reopold")  # defaults: reward_floor then entropy, switch at step 2
    terms = reo.token_terms(b)
    assert [reo.stage(s) for s in range(5)] == [1, 1, 2, 2, 2]
    assert [reo.needs_entropy(s) for s in range(4)] == [False, False, True, True]
    floor = reo.select(0, b.loss_mask, terms, None)
    assert floor.tolist() == [[False, True, False, True], [False, False, True, True]]  # r=-3.5 rejected
    ent = torch.tensor([[9.0, 0.1, 0.9, 0.2], [9.0, 9.0, 0.3, 0.8]])
    top = reo.select(2, b.loss_mask, terms, ent)  # ceil(0.5 * 5) = 3 highest trainable
    assert top.tolist() == [[False, False, True, False], [False, False, True, True]]
    with pytest.raises(ValueError, match="entropy"):
        reo.select(2, b.loss_mask, terms, None)


def test_keys_an_objective_does_not_read_must_keep_their_defaults():
    with pytest.raises(ValueError, match="gkd_topk") as err:
        check_algo(AlgoConfig(name="reopold", gkd_topk=4))
    assert str(err.value).startswith("gkd_topk:")
    for algo, key in [(dict(name="opd", reward_clip=False), "reward_clip"),
                      (dict(name="opd", stage1_rule="all"), "stage1_rule"),
                      (dict(name="grpo", stage1_rule="all"), "stage1_rule"),
                      (dict(name="gkd", stage2_rule="all"), "stage2_rule"),
                      (dict(name="gkd", ppo_clip_low=0.1), "ppo_clip_low"),
                      (dict(name="opd", outcome_coef=0.5), "outcome_coef"),
                      (dict(name="opd_outcome", outcome_coef=0.5, clip_lambda=0.3), "clip_lambda")]:
        with pytest.raises(ValueError, match=rf"^{key}:"):
            check_algo(AlgoConfig(**algo))
    for name, cls in OBJECTIVES.items():  # every key an objective declares it reads is accepted
        assert set(cls.keys) <= {f for f in AlgoConfig.__dataclass_fields__}
    check_algo(AlgoConfig(name="reopold", reward_clip=False, stage1_rule="all", stage2_rule="all", beta=0.3))
    check_algo(AlgoConfig(name="gkd", gkd_topk=4, gkd_direction="forward", aggregation="seq_mean"))
    with pytest.raises(ValueError, match="outcome_coef"):
        check_algo(AlgoConfig(name="opd_outcome"))  # 0 would be plain OPD


def test_opd_objective_equals_reopold_without_clip_or_selection():
    g = torch.Generator().manual_seed(0)
    lm = (torch.rand(3, 7, generator=g) > 0.3).float()
    old = -torch.rand(3, 7, generator=g) * 3 * lm
    tea = -torch.rand(3, 7, generator=g) * 8 * lm  # many rewards below the clip floor
    b = Batch(torch.ones(3, 7, dtype=torch.long), torch.ones(3, 7, dtype=torch.long), lm, old, tea,
              torch.zeros(3), torch.arange(3))
    opd = _objective(total_steps=4, name="opd")
    reo = _objective(total_steps=4, name="reopold", reward_clip=False, stage1_rule="all", stage2_rule="all")
    assert bool(((tea - old) * lm < clip_floor(0.2)).any())  # clipping would have changed something
    for step in range(4):
        grads, losses = [], []
        for obj in (opd, reo):
            terms = obj.token_terms(b)
            mask = obj.select(step, b.loss_mask, terms, torch.rand(3, 7, generator=g))
            lp = (old + 0.1 * torch.randn(3, 7, generator=torch.Generator().manual_seed(step))).requires_grad_()
            loss, stats = obj.loss(Forward(logprobs=lp, old_logprobs=old, terms=terms, mask=mask))
            loss.backward()
            grads.append(lp.grad)
            losses.append((loss.item(), stats))
        assert losses[0] == losses[1]
        assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("name", ["reopold", "opd", "opd_outcome", "grpo", "gkd"])
def test_presets_set_only_keys_their_objective_reads(name):
    from dataclasses import fields

    from reopold_agents.config import compose

    algo = compose([f"algo={name}"]).algo
    assert algo.name == name
    reads = set(OBJECTIVES[name].keys) | {"name"}
    default = AlgoConfig()
    assert {f.name for f in fields(algo) if getattr(algo, f.name) != getattr(default, f.name)} <= reads
    if name != "reopold":  # no stage rules outside reopold
        assert (algo.stage1_rule, algo.stage2_rule, algo.stage_switch) == (
            default.stage1_rule, default.stage2_rule, default.stage_switch)
