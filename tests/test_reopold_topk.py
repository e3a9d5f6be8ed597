"""``algo=reopold_topk`` (objectives/reopold_topk.py) against a brute-force float64 reference: the loss and
its gradient from full logits, the equations written out position by position."""

from __future__ import annotations

import math

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.objectives import OBJECTIVES, check_algo, make_objective
from reopold_agents.objectives.base import Forward
from reopold_agents.objectives.reopold_topk import ReopoldTopK, dense_topk_term


def _setup(seed: int = 0, b: int = 3, t: int = 6, v: int = 11, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    student_logits = torch.randn(b, t, v, generator=g, dtype=torch.float64) * 2
    teacher_logits = torch.randn(b, t, v, generator=g, dtype=torch.float64) * 2
    sampled = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True
    teacher_lp = torch.log_softmax(teacher_logits, -1)
    top_lp, top_ids = teacher_lp.topk(k, dim=-1)
    return student_logits, teacher_lp, sampled, mask, top_lp, top_ids


def _reference(student_logits, teacher_lp, sampled, mask, top_ids, cfg: AlgoConfig) -> torch.Tensor:
    """REOPOLD (one pass, rho = 1, token mean) + coef x the dense term, each position by hand."""
    floor = math.log(cfg.clip_lambda / (1 - cfg.clip_lambda))
    lp = torch.log_softmax(student_logits, -1)
    total = torch.zeros((), dtype=torch.float64)
    n = int(mask.sum())
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if not mask[b, t]:
                continue
            y = int(sampled[b, t])
            r = float(teacher_lp[b, t, y] - lp[b, t, y].detach())
            rho = torch.exp(lp[b, t, y] - lp[b, t, y].detach())  # 1 in value, grad log pi in gradient
            total = total - max(r, floor) * rho / n
            dense = torch.zeros((), dtype=torch.float64)
            for v in top_ids[b, t].tolist():
                if cfg.gkd_direction == "forward":  # pi_T(v) (log pi_T(v) - log pi_theta(v)), no clipping
                    dense = dense + teacher_lp[b, t, v].exp() * (teacher_lp[b, t, v] - lp[b, t, v])
                    continue
                rv = max(float(teacher_lp[b, t, v] - lp[b, t, v].detach()), floor)
                dense = dense - lp[b, t, v].exp() * rv
            total = total + cfg.topk_coef * dense / n
    return total


@pytest.mark.parametrize("coef,direction", [(1.0, "reverse"), (0.3, "reverse"), (1.0, "forward"), (0.3, "forward")])
def test_loss_and_gradient_match_brute_force(coef, direction):
    student_logits, teacher_lp, sampled, mask, top_lp, top_ids = _setup()
    cfg = AlgoConfig(name="reopold_topk", stage1_rule="all", topk_coef=coef, ppo_clip=False, gkd_direction=direction)
    check_algo(cfg)
    obj = make_objective(cfg, total_steps=4)
    assert isinstance(obj, ReopoldTopK) and obj.teacher_topk == cfg.gkd_topk

    logits = student_logits.clone().requires_grad_(True)
    lp = torch.log_softmax(logits, -1)
    sampled_lp = lp.gather(-1, sampled[..., None])[..., 0]
    old = sampled_lp.detach()
    reward = teacher_lp.gather(-1, sampled[..., None])[..., 0] - old
    floor = math.log(cfg.clip_lambda / (1 - cfg.clip_lambda))
    from reopold_agents.objectives.base import TokenTerms

    terms = TokenTerms(advantages=torch.clamp(reward, min=floor) * mask, reward=reward * mask,
                       clipped=(reward < floor) & mask)
    fwd = Forward(logprobs=sampled_lp, old_logprobs=old, terms=terms, mask=mask,
                  student_topk=lp.gather(-1, top_ids), teacher_topk=top_lp)
    loss, stats = obj.loss(fwd)
    loss.backward()

    ref_logits = student_logits.clone().requires_grad_(True)
    ref = _reference(ref_logits, teacher_lp, sampled, mask, top_ids, cfg)
    ref.backward()
    assert torch.allclose(loss.detach().double(), ref.detach(), atol=1e-5), (float(loss), float(ref))
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-5)
    assert 0.0 < stats["topk_student_mass"] < 1.0


def test_dense_term_over_the_whole_vocabulary_is_the_reverse_kl_gradient():
    """Unclipped and over every id, grad D_t equals the gradient of KL(pi_theta || pi_T) at s_t."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher_lp = torch.log_softmax(torch.randn(2, 7, generator=g, dtype=torch.float64), -1)
    lp = torch.log_softmax(logits, -1)
    dense_topk_term(lp, teacher_lp, floor=None).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref_lp = torch.log_softmax(ref_logits, -1)
    (ref_lp.exp() * (ref_lp - teacher_lp)).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-10)


def test_forward_term_over_the_whole_vocabulary_is_the_forward_kl_gradient():
    """Over every id, grad D_t (3') equals the gradient of KL(pi_T || pi_theta) at s_t; on a top-k it pulls
    the teacher's move up even where the student gives it ~0 mass (the reverse term barely moves it)."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher_lp = torch.log_softmax(torch.randn(2, 7, generator=g, dtype=torch.float64), -1)
    lp = torch.log_softmax(logits, -1)
    dense_topk_term(lp, teacher_lp, floor=None, direction="forward").sum().backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref_lp = torch.log_softmax(ref_logits, -1)
    (teacher_lp.exp() * (teacher_lp - ref_lp)).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)  # the term computes in float32
    # the teacher's move (id 1) has student probability ~e^-20: the forward term raises it, the reverse does not
    student = torch.tensor([[0.0, -20.0, -1.0]], dtype=torch.float64, requires_grad=True)
    teacher = torch.log(torch.tensor([[1e-6, 0.999]], dtype=torch.float64))
    ids = torch.tensor([[0, 1]])
    pulls = {}
    for direction in ("forward", "reverse"):
        s_lp = torch.log_softmax(student, -1)
        grad, = torch.autograd.grad(dense_topk_term(s_lp.gather(-1, ids), teacher, math.log(0.25), direction).sum(),
                                    student)
        pulls[direction] = -float(grad[0, 1])  # descent raises the id-1 logit by this much per unit lr
    assert pulls["forward"] > 0.9 and abs(pulls["reverse"]) < 1e-6
    with pytest.raises(ValueError, match="direction"):
        dense_topk_term(lp, teacher_lp, None, direction="sideways")


def test_clipping_caps_a_rejected_candidate_and_selection_masks_positions():
    lp = torch.log(torch.tensor([[[0.5, 0.3]]], dtype=torch.float64))
    teacher = torch.log(torch.tensor([[[1e-9, 0.6]]], dtype=torch.float64))
    floor = math.log(0.2 / 0.8)
    d = dense_topk_term(lp, teacher, floor)
    assert torch.allclose(d, -(0.5 * floor + 0.3 * math.log(0.6 / 0.3)) * torch.ones_like(d))
    student_logits, teacher_lp, sampled, mask, top_lp, top_ids = _setup(seed=3)
    cfg = AlgoConfig(name="reopold_topk", stage1_rule="all")
    obj = make_objective(cfg, 4)
    lp = torch.log_softmax(student_logits.clone().requires_grad_(True), -1)
    from reopold_agents.objectives.base import TokenTerms

    zero = torch.zeros(mask.shape, dtype=torch.float64)
    fwd = Forward(lp.gather(-1, sampled[..., None])[..., 0], zero, TokenTerms(zero, zero, zero.bool()),
                  torch.zeros_like(mask), lp.gather(-1, top_ids), top_lp)
    loss, _ = obj.loss(fwd)
    assert float(loss.detach()) == 0.0  # nothing selected: nothing trained


def test_it_is_one_config_choice_and_needs_the_teachers_top_k():
    from reopold_agents.config import compose

    cfg = compose(["env=math", "algo=reopold_topk"])
    check_algo(cfg.algo)
    assert cfg.algo.name == "reopold_topk" and cfg.algo.stage1_rule == "all" and "reopold_topk" in OBJECTIVES
    with pytest.raises(ValueError, match="topk_coef"):
        check_algo(AlgoConfig(name="reopold", topk_coef=0.5))  # a key reopold does not read
    with pytest.raises(ValueError, match="topk_coef"):
        AlgoConfig(name="reopold_topk", topk_coef=-1.0).check()
    from reopold_agents.trajectory import Trajectory, collate

    traj = Trajectory()
    traj.append_env([1, 2])
    traj.append_generated([3], [-1.0])
    batch = collate([traj], 0)
    batch.teacher_logprobs = torch.zeros_like(batch.old_logprobs)
    with pytest.raises(ValueError, match="top-k"):
        make_objective(cfg.algo, 4).token_terms(batch)
