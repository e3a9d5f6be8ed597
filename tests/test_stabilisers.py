"""Stabilisers as options (docs/objective.md "Stabilisers"): the constant loss normaliser
(``algo.aggregation=constant``), the stop token's handling (``algo.stop_token``) and the LR warm-up/decay."""

from __future__ import annotations

import math

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import Learner, LRLambda
from reopold_agents.logprobs import model_token_logprobs
from reopold_agents.objectives import check_algo, make_objective
from reopold_agents.objectives.reopold import aggregate
from reopold_agents.tiny import build_tokenizer, tiny_qwen2
from reopold_agents.trajectory import Trajectory, collate, stop_positions

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the constant normaliser ------------------------------------------------------------------------
def test_constant_divides_by_sequences_times_the_constant():
    per_token = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, 5.0, 6.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert float(aggregate(per_token, mask, "constant", norm_tokens=8)) == pytest.approx((1 + 2 + 3 + 4) / (2 * 8))
    assert float(aggregate(per_token, mask, "token_mean")) == pytest.approx(10 / 4)
    with pytest.raises(ValueError, match="norm_tokens >= 1"):
        aggregate(per_token, mask, "constant")


def test_constant_weighs_each_token_the_same_whatever_the_lengths():
    """token_mean gives each token of a batch of short replies a larger weight (1/sum M grows as the replies
    shrink); constant gives every token 1/(B*L) in a batch of long replies and of short ones alike."""
    def grad_at_first_token(how: str, length: int) -> float:
        per_token = torch.ones(4, 16, requires_grad=True)
        mask = torch.zeros(4, 16, dtype=torch.bool)
        mask[:, :length] = True
        aggregate(per_token, mask, how, norm_tokens=16).backward()
        return float(per_token.grad[0, 0])

    assert grad_at_first_token("constant", 16) == grad_at_first_token("constant", 4) == pytest.approx(1 / 64)
    assert grad_at_first_token("token_mean", 4) == pytest.approx(4 * grad_at_first_token("token_mean", 16))


def test_constant_normaliser_counts_sequences_not_selected_tokens():
    obj = make_objective(AlgoConfig(aggregation="constant", loss_norm_tokens=32), total_steps=4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    assert obj.normaliser(mask) == 3 * 32
    assert not obj.batch_normalised  # each minibatch is normalised by its own sequences, as seq_mean


def test_keys_are_checked_naming_them():
    with pytest.raises(ValueError, match="loss_norm_tokens: aggregation=constant divides"):
        AlgoConfig(aggregation="constant").check()
    with pytest.raises(ValueError, match="loss_norm_tokens: only aggregation=constant reads it"):
        AlgoConfig(loss_norm_tokens=64).check()
    with pytest.raises(ValueError, match="stop_token: 'drop' is not one of"):
        AlgoConfig(stop_token="drop").check()
    AlgoConfig(aggregation="constant", loss_norm_tokens=64, stop_token="clip").check()
    for name in ("reopold", "opd", "grpo", "reopold_topk"):
        check_algo(AlgoConfig(name=name, stop_token="mask", aggregation="constant", loss_norm_tokens=8))
    for name in ("gkd", "dense_kl", "dapo", "opd_outcome"):
        check_algo(AlgoConfig(name=name, aggregation="constant", loss_norm_tokens=8,
                              **({"outcome_coef": 1.0} if name == "opd_outcome" else {})))
    for name in ("dapo", "gkd", "opd_outcome"):
        with pytest.raises(ValueError, match=f"stop_token: algo={name} does not read it"):
            check_algo(AlgoConfig(name=name, stop_token="mask"))


# --- where the stop tokens are ----------------------------------------------------------------------
def _episode(turns: list[tuple[int, str]], prompt: int = 3, between: int = 2) -> Trajectory:
    """A trajectory of ``turns`` (generated tokens, finish reason), env tokens before and between them."""
    t = Trajectory()
    t.append_env(list(range(10, 10 + prompt)))
    for k, (n, reason) in enumerate(turns):
        if k:
            t.append_env([7] * between)
        t.append_generated(list(range(20, 20 + n)), [-1.0] * n)
        t.turns.append({"num_generated": n, "finish_reason": reason})
    return t


def test_stop_positions_are_the_last_token_of_turns_that_stopped():
    t = _episode([(4, "stop"), (3, "length"), (2, "stop")])
    assert stop_positions(t) == [3 + 4 - 1, 3 + 4 + 2 + 3 + 2 + 2 - 1]  # not the turn cut by the budget
    assert stop_positions(_episode([(5, "length")])) == []
    bare = Trajectory()  # built by hand: no turns to match
    bare.append_env([1, 2])
    bare.append_generated([3, 4], [0.0, 0.0])
    assert stop_positions(bare) == []
    mismatched = _episode([(4, "stop")])
    mismatched.turns[0]["num_generated"] = 5
    assert stop_positions(mismatched) == []


def test_collate_marks_the_stop_tokens():
    trajs = [_episode([(4, "stop")]), _episode([(6, "length")]), _episode([(2, "stop"), (3, "stop")], prompt=1)]
    batch = collate(trajs, pad_id=0)
    assert batch.stop_mask is not None and batch.stop_mask.dtype == torch.bool
    assert batch.stop_mask.nonzero().tolist() == [[0, 6], [2, 2], [2, 7]]
    assert bool((batch.loss_mask[batch.stop_mask] > 0).all())
    assert batch.select(torch.tensor([2])).stop_mask.nonzero().tolist() == [[0, 2], [0, 7]]
    trajs[1].info["success"] = True  # Trajectory.success: what algo.teacher_on=failed reads
    assert collate(trajs, pad_id=0).successes.tolist() == [False, True, False]


# --- the stop-token rules ---------------------------------------------------------------------------
def _scored_batch(tok, stop_reward: float = 2.0):
    """Four single-turn episodes that stopped, teacher log-probs that reward each stop token by
    ``stop_reward`` and every other token by -0.5."""
    trajs = [_episode([(3 + i, "stop")], prompt=4) for i in range(4)]
    for i, t in enumerate(trajs):
        t.token_ids = [10 + (7 * j + i) % (len(tok) - 10) for j in range(len(t))]
        t.reward = float(i % 2)
        t.group_id = i // 2
    batch = collate(trajs, tok.pad_token_id)
    with torch.no_grad():  # pi_old = the student the learners start from (ratio 1: no PPO clip on the first pass)
        old, _ = model_token_logprobs(tiny_qwen2(tok, seed=3), batch.input_ids, batch.attention_mask)
    batch.old_logprobs = old * batch.loss_mask
    batch.teacher_logprobs = torch.where(batch.loss_mask > 0, batch.old_logprobs - 0.5, torch.zeros_like(batch.old_logprobs))
    batch.teacher_logprobs[batch.stop_mask] = batch.old_logprobs[batch.stop_mask] + stop_reward
    return batch


@pytest.mark.parametrize("name", ["reopold", "opd", "grpo"])
def test_stop_token_rules_on_the_terms_and_the_mask(name):
    tok = build_tokenizer()
    batch = _scored_batch(tok)
    stop = batch.stop_mask
    terms = {rule: make_objective(AlgoConfig(name=name, stop_token=rule, stage_switch=0.0, stage2_rule="all"), 4)
             .token_terms(batch) for rule in ("train", "mask", "clip")}
    assert torch.equal(terms["train"].advantages, terms["mask"].advantages)
    assert torch.equal(terms["train"].stop, stop)
    clip = terms["clip"].advantages
    assert torch.equal(clip[~stop], terms["train"].advantages[~stop])  # only the stop tokens change
    assert bool((clip[stop] <= 0).all())
    assert torch.equal(clip[stop], terms["train"].advantages[stop].clamp(max=0))
    if name != "grpo":
        assert bool((terms["train"].advantages[stop] == 2.0).all())  # a rewarded stop ...
        assert bool((clip[stop] == 0).all())  # ... is not rewarded under clip
    for rule, t in terms.items():
        obj = make_objective(AlgoConfig(name=name, stop_token=rule, stage_switch=0.0, stage2_rule="all"), 4)
        selected = obj.select(0, batch.loss_mask, t, None)
        assert bool(selected[stop].any()) == (rule != "mask")
        assert torch.equal(selected & ~stop, (batch.loss_mask > 0) & ~stop)


def test_mask_trains_as_if_the_stop_tokens_were_not_trainable():
    """Brute force: stop_token=mask gives the very update of a batch whose stop tokens have loss_mask 0."""
    tok = build_tokenizer()
    batch = _scored_batch(tok)
    bare = _scored_batch(tok)
    bare.loss_mask = bare.loss_mask * (~bare.stop_mask).float()
    bare.stop_mask = None
    trainer = TrainerConfig(lr=1e-2, total_steps=4)
    masked, plain = tiny_qwen2(tok, seed=3), tiny_qwen2(tok, seed=3)
    m = Learner(masked, AlgoConfig(stop_token="mask", stage_switch=0.0, stage2_rule="all"), trainer).step(batch, 0)
    p = Learner(plain, AlgoConfig(stage_switch=0.0, stage2_rule="all"), trainer).step(bare, 0)
    assert m["num_selected"] == p["num_selected"] == float(bare.loss_mask.sum())
    assert m["loss"] == pytest.approx(p["loss"], rel=1e-6)
    for a, b in zip(masked.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    assert not torch.allclose(_params(masked), _params(tiny_qwen2(tok, seed=3)))  # the step did move them
    assert m["stop_frac_selected"] == 0.0 and "stop_frac_selected" not in p
    trained = Learner(tiny_qwen2(tok, seed=3), AlgoConfig(stage_switch=0.0, stage2_rule="all"), trainer).step(batch, 0)
    assert trained["stop_frac_selected"] == 1.0 and trained["stop_advantage_mean"] == pytest.approx(2.0)


def test_reward_floor_drops_a_rejected_stop_token_and_the_stat_says_so():
    """The stage-1 rule of REOPOLD leaves out a stop token the teacher rejects below the floor (the
    decisive token of a reply that stops too early): ``stop_frac_selected`` reports it."""
    tok = build_tokenizer()
    batch = _scored_batch(tok, stop_reward=-5.0)
    out = Learner(tiny_qwen2(tok, seed=3), AlgoConfig(stage_switch=1.0), TrainerConfig(lr=1e-3, total_steps=4)).step(batch, 0)
    assert out["stop_frac_selected"] == 0.0 and out["num_selected"] == float(batch.loss_mask.sum() - 4)


# --- constant under minibatches and the accelerate learner ------------------------------------------
def _params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_constant_under_grad_accumulation_matches_one_pass():
    from accelerate.state import AcceleratorState

    from reopold_agents.accelerate_learner import AccelerateLearner
    from reopold_agents.config.distributed import DistributedConfig

    tok = build_tokenizer()
    algo = AlgoConfig(aggregation="constant", loss_norm_tokens=12, stage_switch=0.0, stage2_rule="all")
    trainer = TrainerConfig(lr=1e-2, total_steps=4, max_grad_norm=0.5)
    batch = _scored_batch(tok)
    ref_model = tiny_qwen2(tok, seed=3)
    ref = Learner(ref_model, algo, trainer).step(batch, 0)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        model = tiny_qwen2(tok, seed=3)
        acc = AccelerateLearner(model, algo, trainer, DistributedConfig(grad_accumulation=3)).step(batch, 0)
        assert acc["loss"] == pytest.approx(ref["loss"], rel=1e-4)
        assert torch.allclose(_params(model), _params(ref_model), atol=1e-4, rtol=0)
        assert not torch.allclose(_params(model), _params(tiny_qwen2(tok, seed=3)))
        # nothing selected: the step is skipped (constant's normaliser alone is never 0)
        empty = _scored_batch(tok, stop_reward=-5.0)
        before = _params(model)
        learner = AccelerateLearner(model, AlgoConfig(aggregation="constant", loss_norm_tokens=12, stage_switch=1.0,
                                                      clip_lambda=0.99), trainer, DistributedConfig())
        out = learner.step(empty, 0)
        assert out["skipped_empty"] == 1.0 and torch.equal(_params(model), before)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


# --- LR warm-up and decay (trainer.warmup_steps, lr_schedule, min_lr_ratio) -------------------------
@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_warms_up_then_decays_to_the_floor(schedule):
    f = LRLambda(warmup_steps=4, total_steps=20, schedule=schedule, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    end = {"constant": 1.0, "cosine": 0.1, "linear": 0.1}[schedule]
    assert f(20) == pytest.approx(end) and f(30) == pytest.approx(end)
    values = [f(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never rises after the warm-up
    if schedule == "cosine":
        assert f(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_the_learner_steps_the_schedule():
    tok = build_tokenizer()
    batch = _scored_batch(tok)
    learner = Learner(tiny_qwen2(tok, seed=0), AlgoConfig(), TrainerConfig(lr=1e-3, total_steps=6, warmup_steps=2,
                                                                          lr_schedule="linear", min_lr_ratio=0.0))
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # the first step's lr
    lrs = [learner.step(batch, s)["lr"] for s in range(3)]  # "lr" is the next step's
    assert lrs == pytest.approx([1e-3, 1e-3, 0.75e-3])
