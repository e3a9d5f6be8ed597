"""Engine/learner mismatch: pi_old recomputed by the learner, truncated importance weights, the ratio
clip switched off, and token_mean normalised by the whole batch over several minibatches."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import Learner
from reopold_agents.logprobs import model_token_logprobs
from reopold_agents.objectives.reopold import aggregate
from reopold_agents.tiny import tiny_qwen2
from reopold_agents.trajectory import Batch

pytestmark = pytest.mark.usefixtures("one_thread")
OPD = AlgoConfig(name="opd")


def _batch(tok, student, teacher, engine_noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, len(tok), (4, 16), generator=g)
    am = torch.ones_like(ids)
    lm = torch.zeros(4, 16)
    lm[:, 5:] = 1
    with torch.no_grad():
        learner_lp, _ = model_token_logprobs(student, ids, am)
        tea, _ = model_token_logprobs(teacher, ids, am)
    # an "engine" whose numerics differ from the learner's (vLLM / bf16): the log-probs it recorded
    engine = learner_lp + engine_noise * torch.randn(learner_lp.shape, generator=g)
    return Batch(ids, am, lm, engine * lm, tea * lm, torch.zeros(4), torch.arange(4)), learner_lp * lm


def _grads(model):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def test_recompute_uses_the_learners_logprobs_in_the_reward(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch, learner_lp = _batch(tok, student, teacher, engine_noise=0.3)
    m = Learner(copy.deepcopy(student), OPD, TrainerConfig(lr=1e-12), recompute_old_logprobs=True).step(batch, 0)
    trained = batch.loss_mask > 0
    want = (batch.teacher_logprobs - learner_lp)[trained]
    assert m["reward_mean"] == pytest.approx(float(want.mean()), abs=1e-5)
    assert m["mismatch/mean_abs_logprob_diff"] == pytest.approx(
        float((learner_lp - batch.old_logprobs)[trained].abs().mean()), rel=1e-4)
    assert m["mismatch/kl"] > 0
    # without recomputing, the reward is against the engine's log-probs
    plain = Learner(copy.deepcopy(student), OPD, TrainerConfig(lr=1e-12)).step(batch, 0)
    assert plain["reward_mean"] == pytest.approx(float((batch.teacher_logprobs - batch.old_logprobs)[trained].mean()),
                                                 abs=1e-5)
    assert "mismatch/kl" not in plain


def test_truncated_importance_weight_matches_brute_force(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch, learner_lp = _batch(tok, student, teacher, engine_noise=0.5)
    cap = 1.2
    model = copy.deepcopy(student)
    learner = Learner(model, OPD, TrainerConfig(lr=1e-12, tis_cap=cap, max_grad_norm=0.0), recompute_old_logprobs=True)
    m = learner.step(batch, 0)
    trained = batch.loss_mask > 0
    ratio = torch.exp(learner_lp - batch.old_logprobs)
    assert m["mismatch/frac_truncated"] == pytest.approx(float((ratio[trained] > cap).float().mean()))
    assert 0 < m["mismatch/frac_truncated"] < 1
    # brute force: -(1/N) sum_t min(ratio_t, C) * sg(r_t) * log pi(y_t), r_t against the learner's log-probs
    ref = copy.deepcopy(student)
    logp, _ = model_token_logprobs(ref, batch.input_ids, batch.attention_mask)
    reward = (batch.teacher_logprobs - learner_lp).detach()
    w = torch.clamp(ratio, max=cap).detach()
    loss = -(w * reward * logp * batch.loss_mask).sum() / batch.loss_mask.sum()
    loss.backward()
    # the learner's gradient is gone after its step; recompute it on a fresh copy through the same step
    probe = copy.deepcopy(student)
    probe_learner = Learner(probe, OPD, TrainerConfig(lr=1e-12, tis_cap=cap, max_grad_norm=0.0),
                            recompute_old_logprobs=True)
    grads = {}
    for p in probe.parameters():
        p.register_hook(lambda g, p=p: grads.__setitem__(id(p), g.clone()))
    probe_learner.step(batch, 0)
    for p, q in zip(probe.parameters(), ref.parameters()):
        if q.grad is not None and id(p) in grads:
            torch.testing.assert_close(grads[id(p)], q.grad, atol=1e-6, rtol=1e-4)


def test_ppo_clip_off_is_the_plain_ratio_objective(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch, _ = _batch(tok, student, teacher)
    trainer = TrainerConfig(lr=5e-2, ppo_epochs=3)
    clipped = Learner(copy.deepcopy(student), OPD, trainer).step(batch, 0)
    unclipped = Learner(copy.deepcopy(student), replace(OPD, ppo_clip=False), trainer).step(batch, 0)
    assert clipped["ratio_clip_frac"] > 0  # big steps: the clip bites in later epochs
    assert unclipped["ratio_clip_frac"] == 0.0


def test_token_mean_over_minibatches_is_normalised_by_the_whole_batch():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    full = aggregate(per_token, mask)
    n = int(mask.sum())
    halves = aggregate(per_token[:1], mask[:1], token_norm=n) + aggregate(per_token[1:], mask[1:], token_norm=n)
    assert halves.item() == pytest.approx(full.item())
    # the old per-minibatch mean would weight the short row up
    assert (aggregate(per_token[:1], mask[:1]) + aggregate(per_token[1:], mask[1:])).item() / 2 != pytest.approx(full.item())


def test_two_minibatch_loss_adds_up_to_the_batch_loss(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch, _ = _batch(tok, student, teacher)
    one = Learner(copy.deepcopy(student), OPD, TrainerConfig(lr=1e-12)).step(batch, 0)
    two = Learner(copy.deepcopy(student), OPD, TrainerConfig(lr=1e-12, num_minibatches=2)).step(batch, 0)
    assert 2 * two["loss"] == pytest.approx(one["loss"], rel=1e-4)  # each minibatch: its share of the batch mean


def test_recompute_defaults_on_when_the_engine_is_not_the_learners_module():
    from reopold_agents.config import compose
    from reopold_agents.roles import LearnerRole

    assert compose([]).trainer.recompute_old_logprobs is None  # auto
    assert LearnerRole(compose(["env=math"])).learner.recompute_old_logprobs is False  # hf shares the module
    assert LearnerRole(compose(["env=math", "engine=vllm"])).learner.recompute_old_logprobs is True
    assert LearnerRole(compose(["env=math", "engine=vllm", "trainer.recompute_old_logprobs=false"])
                          ).learner.recompute_old_logprobs is False
    with pytest.raises(Exception, match="tis_cap"):
        compose(["trainer.tis_cap=-1"])
