"""Learner on tiny real Qwen2 / Qwen2.5-VL models: OPD gradient = policy gradient with the stop-gradient
log-ratio reward, one step = AdamW on that gradient, KL to a fixed teacher goes down, NaN guard, modes."""

from __future__ import annotations

import copy

import pytest
import torch

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import Learner
from reopold_agents.logprobs import model_token_logprobs, model_topk_logprobs
from reopold_agents.objectives import Forward
from reopold_agents.tiny import tiny_qwen2
from reopold_agents.trajectory import Batch

OPD = dict(name="opd")
# REOPOLD with its clipping and its token selection switched off: the same objective as OPD
REOPOLD_AS_OPD = dict(name="reopold", reward_clip=False, stage1_rule="all", stage2_rule="all")


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_batch(tok, student, teacher, seed=0, bsz=4, length=20, prompt=6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, len(tok), (bsz, length), generator=g)
    am = torch.ones_like(ids)
    am[1, -4:] = 0
    ids[am == 0] = tok.pad_token_id
    lm = torch.zeros(bsz, length)
    lm[:, prompt:] = 1
    lm = lm * am
    with torch.no_grad():
        old, _ = model_token_logprobs(student, ids, am)
        tea, _ = model_token_logprobs(teacher, ids, am)
    return Batch(ids, am, lm, old * lm, tea * lm, torch.tensor([1.0, 0.0, 1.0, 0.0][:bsz]), torch.tensor([0, 0, 1, 1][:bsz]))


def _naive_pg_loss(model, batch):
    """-(1/N) sum_t sg(log pi_T - log pi_old) log pi_theta(y_t), from the model's full logits."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.loss_mask[:, 1:]
    reward = (batch.teacher_logprobs[:, 1:] - batch.old_logprobs[:, 1:]).detach()
    return -(reward * logp * mask).sum() / mask.sum()


def test_opd_gradient_is_policy_gradient_with_stop_gradient_reward(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    obj = Learner(student, AlgoConfig(**OPD), TrainerConfig()).objective
    logp, ent = model_token_logprobs(student, batch.input_ids, batch.attention_mask, with_entropy=True, chunk_size=7)
    terms = obj.token_terms(batch)
    mask = obj.select(0, batch.loss_mask, terms, ent)
    assert torch.equal(mask, batch.loss_mask > 0)  # OPD trains on every student token
    loss, _ = obj.loss(Forward(logprobs=logp, old_logprobs=batch.old_logprobs, terms=terms, mask=mask))
    params = list(student.parameters())
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(_naive_pg_loss(student, batch), params)
    assert sum(float(g.abs().sum()) for g in want) > 0
    for (name, _), a, e in zip(student.named_parameters(), got, want):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4, msg=name)


def test_opd_equals_reopold_without_clipping_and_selection(tok):
    """algo=opd is algo=reopold algo.reward_clip=false algo.stage1_rule=all algo.stage2_rule=all: same loss,
    same gradient, same step, in either stage."""
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=2)
    batch = _toy_batch(tok, student, teacher, seed=3)
    batch.teacher_logprobs[0, 8] = -50.0  # a reward far below the clip floor: clipping would change it
    batch.teacher_logprobs[2, 12] = -30.0
    params = list(student.parameters())
    opd = Learner(student, AlgoConfig(**OPD), TrainerConfig(total_steps=4)).objective
    reo = Learner(student, AlgoConfig(**REOPOLD_AS_OPD), TrainerConfig(total_steps=4)).objective
    logp, ent = model_token_logprobs(student, batch.input_ids, batch.attention_mask, with_entropy=True)
    for step in (0, 3):  # stage 1 and stage 2 of the reopold schedule
        assert reo.stage(step) == step // 2 + 1
        out = []
        for obj in (opd, reo):
            terms = obj.token_terms(batch)
            mask = obj.select(step, batch.loss_mask, terms, ent)
            loss, stats = obj.loss(Forward(logprobs=logp, old_logprobs=batch.old_logprobs, terms=terms, mask=mask))
            out.append((loss, stats, torch.autograd.grad(loss, params, retain_graph=True), mask))
        (l1, s1, g1, m1), (l2, s2, g2, m2) = out
        assert torch.equal(m1, m2) and torch.equal(m1, batch.loss_mask > 0)
        assert torch.equal(l1, l2) and s1 == s2
        assert sum(float(g.abs().sum()) for g in g1) > 0
        assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    # and one learner step of each moves the same student to the same parameters, with the same metrics
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    trainer = TrainerConfig(lr=1e-3, total_steps=4)
    ma = Learner(a, AlgoConfig(**OPD), trainer).step(batch, 3)
    mb = Learner(b, AlgoConfig(**REOPOLD_AS_OPD), trainer).step(batch, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), student.parameters()))
    ma.pop("stage"), mb.pop("stage")  # opd is single-stage (1); reopold reports its schedule's stage (2)
    assert ma == mb and ma["frac_clipped"] == 0.0 and ma["frac_selected"] == 1.0


def test_logprob_chunk_size_changes_memory_not_the_update(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher, seed=2)
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    trainer = TrainerConfig(lr=1e-3, eps=1.0, total_steps=2)
    la = Learner(a, AlgoConfig(name="reopold", stage_switch=0.0), trainer, logprob_chunk_size=5)
    lb = Learner(b, AlgoConfig(name="reopold", stage_switch=0.0), trainer)
    assert (la.chunk_size, lb.chunk_size) == (5, 1024)
    ma, mb = la.step(batch, 0), lb.step(batch, 0)
    assert ma["num_selected"] == mb["num_selected"] and ma["loss"] == pytest.approx(mb["loss"], rel=1e-5, abs=1e-7)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)


def test_learner_step_applies_adamw_to_that_gradient(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher, seed=1)
    ref = copy.deepcopy(student)
    # eps=1 keeps Adam's first update ~linear in the gradient, so float round-off in near-zero
    # gradients (every vocab row gets one through the tied head) cannot flip an update's sign.
    trainer = TrainerConfig(lr=1e-3, eps=1.0, max_grad_norm=0.0, weight_decay=0.01, total_steps=3)
    metrics = Learner(student, AlgoConfig(**OPD), trainer).step(batch, 0)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, eps=1.0, weight_decay=0.01)
    _naive_pg_loss(ref, batch).backward()
    opt.step()
    for (name, a), b in zip(student.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert metrics["skipped"] == 0.0 and metrics["num_tokens"] == float(batch.loss_mask.sum())
    assert metrics["frac_selected"] == 1.0 and metrics["frac_clipped"] == 0.0
    r = (batch.teacher_logprobs - batch.old_logprobs)[batch.loss_mask > 0]
    assert metrics["reward_mean"] == pytest.approx(float(r.mean()), abs=1e-6)
    assert metrics["reward_min"] == pytest.approx(float(r.min())) and metrics["reward_max"] == pytest.approx(float(r.max()))
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # on-policy: rho = 1
    for key in ("loss", "grad_norm", "entropy_mean", "reward_std", "lr", "stage"):
        assert key in metrics


def _exact_reverse_kl(model, ids, am, lm, logq):
    with torch.no_grad():
        ls = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1], -1)
    per_pos = (ls.exp() * (ls - logq)).sum(-1)
    return float((per_pos * lm[:, 1:]).sum() / lm[:, 1:].sum())


@pytest.mark.parametrize("algo", [OPD, dict(name="reopold")])
def test_learner_lowers_reverse_kl_to_fixed_teacher(tok, algo):
    """On-policy loop: sample from the student, score with a fixed teacher distribution q, step."""
    torch.manual_seed(0)
    student = tiny_qwen2(tok, seed=0)
    vocab = len(tok)
    logq = torch.log_softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(7)), -1)
    prompts = torch.randint(10, vocab, (8, 4), generator=torch.Generator().manual_seed(0))
    learner = Learner(student, AlgoConfig(**algo), TrainerConfig(lr=3e-3, total_steps=8))
    kls = []
    for step in range(8):
        torch.manual_seed(100 + step)
        with torch.no_grad():
            ids = student.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                   max_new_tokens=12, min_new_tokens=12, top_k=0, top_p=1.0)
            am = torch.ones_like(ids)
            lm = torch.zeros(ids.shape)
            lm[:, 4:] = 1
            old, _ = model_token_logprobs(student, ids, am)
        kls.append(_exact_reverse_kl(student, ids, am, lm, logq))
        batch = Batch(ids, am, lm, old * lm, logq[ids] * lm, torch.zeros(8), torch.arange(8))
        metrics = learner.step(batch, step)
        assert metrics["skipped"] == 0.0
    assert kls[-1] < kls[0] - 0.005, kls
    assert sum(b < a for a, b in zip(kls, kls[1:])) >= 5, kls


def test_nonfinite_loss_skips_the_step(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    batch.teacher_logprobs[0, 10] = float("nan")
    before = copy.deepcopy(student.state_dict())
    learner = Learner(student, AlgoConfig(**OPD), TrainerConfig(lr=1e-2))
    metrics = learner.step(batch, 0)
    assert metrics["skipped"] == 1.0 and metrics["skipped_nonfinite"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert not learner.optimizer.state  # AdamW never stepped
    batch.teacher_logprobs[0, 10] = 0.0
    assert learner.step(batch, 1)["skipped"] == 0.0  # the next good batch trains normally


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _opt_state(learner):
    return copy.deepcopy(learner.optimizer.state_dict())


def _assert_same_opt_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), (k, name)


def _assert_bit_identical(params, model):
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


@pytest.mark.parametrize("field", ["old_logprobs", "teacher_logprobs"])
def test_nonfinite_input_in_a_later_minibatch_skips_the_whole_step(tok, field):
    """A NaN on a trained token of the 2nd minibatch's rows only: the 1st minibatch does not train either."""
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    learner = Learner(student, AlgoConfig(name="reopold", stage_switch=0.0),
                      TrainerConfig(lr=1e-2, num_minibatches=2, total_steps=4))
    assert learner.step(batch, 0)["skipped"] == 0.0  # AdamW has state now: the skip must leave it alone too
    params, state = _params(student), _opt_state(learner)
    bad = copy.deepcopy(batch)
    getattr(bad, field)[3, 10] = float("nan")  # row 3: the 2nd minibatch (rows 2, 3); a trained token
    assert bad.loss_mask[3, 10] == 1
    m = learner.step(bad, 1)
    assert m["skipped"] == 1.0 and m["skipped_nonfinite"] == 1.0 and m["skipped_empty"] == 0.0
    assert m["loss"] == 0.0 and m["grad_norm"] == 0.0
    _assert_bit_identical(params, student)
    _assert_same_opt_state(state, _opt_state(learner))
    assert all(p.grad is None for p in student.parameters())
    m = learner.step(batch, 2)  # the next good batch trains normally, from the restored optimiser state
    assert m["skipped"] == 0.0
    assert learner.optimizer.state[learner.params[0]]["step"] == 4  # 2 good steps x 2 minibatches


@pytest.mark.parametrize("epochs,minibatches,bad_update", [(1, 2, 2), (2, 2, 3), (2, 2, 4), (2, 1, 2)])
def test_nonfinite_minibatch_rolls_back_the_steps_earlier_minibatches(tok, epochs, minibatches, bad_update):
    """A minibatch whose loss is NaN (here: forced on the ``bad_update``-th optimiser step of the step)
    rolls back every earlier minibatch/epoch of the step: parameters AND optimiser state as before."""
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    learner = Learner(student, AlgoConfig(**OPD), TrainerConfig(lr=1e-2, ppo_epochs=epochs, num_minibatches=minibatches))
    assert learner.step(batch, 0)["skipped"] == 0.0
    params, state = _params(student), _opt_state(learner)
    real_loss, calls = learner.objective.loss, []

    def poisoned(fwd):
        calls.append(1)
        loss, stats = real_loss(fwd)
        return (loss * float("nan"), stats) if len(calls) == bad_update else (loss, stats)

    learner.objective.loss = poisoned
    m = learner.step(batch, 1)
    assert len(calls) == bad_update  # the step stopped at the bad minibatch
    moved = [not torch.equal(a, b) for a, b in zip(params, student.parameters())]
    assert not any(moved), "earlier minibatches of the step were kept"
    _assert_same_opt_state(state, _opt_state(learner))
    assert m["skipped"] == 1.0 and m["skipped_empty"] == 0.0
    assert m["skipped_nonfinite"] == float(bad_update)  # the bad one plus the rolled-back updates
    assert m["loss"] == 0.0 and m["grad_norm"] == 0.0
    learner.objective.loss = real_loss
    assert learner.step(batch, 2)["skipped"] == 0.0
    assert learner.optimizer.state[learner.params[0]]["step"] == 2 * epochs * minibatches


def test_all_nan_batch_is_a_nonfinite_skip(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    for trainer in (TrainerConfig(lr=1e-2), TrainerConfig(lr=1e-2, num_minibatches=2, ppo_epochs=2)):
        batch = _toy_batch(tok, student, teacher)
        batch.teacher_logprobs.fill_(float("nan"))
        params = _params(student)
        learner = Learner(student, AlgoConfig(name="reopold"), trainer)
        m = learner.step(batch, 0)
        assert m["skipped"] == 1.0 and m["skipped_nonfinite"] == 1.0 and m["skipped_empty"] == 0.0
        _assert_bit_identical(params, student)
        assert not learner.optimizer.state


@pytest.mark.parametrize("field,value", [("teacher_logprobs", float("nan")), ("teacher_logprobs", float("-inf")),
                                         ("old_logprobs", float("nan"))])
def test_nonfinite_value_on_an_untrained_token_is_ignored(tok, field, value):
    """The guard is about trained tokens: a prompt/env position (loss_mask 0) never enters the loss."""
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    ref = copy.deepcopy(student)
    want = Learner(ref, AlgoConfig(**OPD), TrainerConfig(lr=1e-3)).step(copy.deepcopy(batch), 0)
    getattr(batch, field)[0, 2] = value  # a prompt token
    assert batch.loss_mask[0, 2] == 0
    m = Learner(student, AlgoConfig(**OPD), TrainerConfig(lr=1e-3)).step(batch, 0)
    assert m["skipped"] == 0.0 and m["skipped_nonfinite"] == 0.0
    assert m["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), ref.parameters()))


def test_no_trainable_tokens_is_an_empty_skip(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    batch.loss_mask.zero_()
    metrics = Learner(student, AlgoConfig(name="reopold"), TrainerConfig(total_steps=2)).step(batch, 1)
    assert metrics["skipped"] == 1.0 and metrics["skipped_empty"] == 1.0 and metrics["num_tokens"] == 0.0


def test_reopold_stages_select_as_configured(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=2)
    batch = _toy_batch(tok, student, teacher)
    batch.teacher_logprobs[0, 8] = -50.0  # one token the teacher rejects outright
    n = float(batch.loss_mask.sum())
    learner = Learner(student, AlgoConfig(name="reopold", beta=0.25), TrainerConfig(lr=1e-4, total_steps=4))
    m1 = learner.step(batch, 0)  # stage 1: reward_floor
    r = (batch.teacher_logprobs - batch.old_logprobs)[batch.loss_mask > 0]
    assert m1["stage"] == 1.0 and m1["num_selected"] == float((r >= -1.3862944).sum()) < n
    assert m1["frac_clipped"] == 0.0  # every kept token is above the floor
    m2 = learner.step(batch, 2)  # stage 2: top-25% by student entropy
    assert m2["stage"] == 2.0 and m2["num_selected"] == float(-(-int(n) // 4))


def test_ppo_epochs_and_minibatches(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    learner = Learner(student, AlgoConfig(name="reopold", stage_switch=0.0), TrainerConfig(lr=1e-3, ppo_epochs=2, num_minibatches=2))
    m = learner.step(batch, 0)
    assert m["skipped"] == 0.0 and m["frac_selected"] == pytest.approx(0.5, abs=0.05)
    assert learner.optimizer.state[learner.params[0]]["step"] == 4  # 2 epochs x 2 minibatches
    assert m["ratio_mean"] != pytest.approx(1.0, abs=1e-7)  # later passes see an updated policy
    with pytest.raises(ValueError, match="num_minibatches"):
        Learner(student, AlgoConfig(), TrainerConfig(num_minibatches=5)).step(batch, 0)


def test_grpo_and_gkd_train(tok):
    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _toy_batch(tok, student, teacher)
    m = Learner(copy.deepcopy(student), AlgoConfig(name="grpo"), TrainerConfig(lr=1e-3)).step(batch, 0)
    assert m["skipped"] == 0.0 and m["grad_norm"] > 0
    assert m["frac_selected"] == 1.0  # grpo has no stage rules: every token trains
    with pytest.raises(ValueError, match="stage1_rule"):  # a key grpo does not read cannot be set
        Learner(copy.deepcopy(student), AlgoConfig(name="grpo", stage1_rule="all"), TrainerConfig())
    vals, ids = model_topk_logprobs(teacher, batch.input_ids, batch.attention_mask, k=4)
    batch.teacher_topk_ids, batch.teacher_topk_logprobs = ids, vals
    gkd = Learner(student, AlgoConfig(name="gkd", gkd_topk=4), TrainerConfig(lr=3e-3))
    steps = [gkd.step(batch, s) for s in range(4)]
    kls = [m["topk_kl"] for m in steps]
    assert kls[-1] < kls[0], kls
    assert all(m["frac_selected"] == 1.0 and m["stage"] == 1.0 for m in steps)
    with pytest.raises(ValueError, match="gkd_topk"):
        Learner(student, AlgoConfig(name="gkd", gkd_topk=8), TrainerConfig()).step(batch, 0)


def _vl_batch(tok):
    """A 3-row batch on tiny Qwen2.5-VL models (images in rows 0 and 2); returns (student, batch)."""
    from reopold_agents.tiny.vl import color_image, tiny_qwen2_5_vl, tiny_vl_processor

    proc, student, teacher = tiny_vl_processor(tok), tiny_qwen2_5_vl(tok, seed=0), tiny_qwen2_5_vl(tok, seed=1)
    texts = ["look <|vision_start|><|image_pad|><|vision_end|> red square here", "no image in this one at all ok",
             "two <|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|> x"]
    imgs = [color_image(), color_image((0, 0, 200), (28, 56)), color_image((0, 200, 0), (56, 28))]
    enc = proc(text=texts, images=imgs, padding=True, return_tensors="pt")
    ids, am = enc["input_ids"], enc["attention_mask"]
    mi = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
    lm = am.float().clone()
    lm[:, :3] = 0
    with torch.no_grad():
        old, _ = model_token_logprobs(student, ids, am, mi)
        tea, _ = model_token_logprobs(teacher, ids, am, mi)
    per_row = torch.tensor([1, 0, 2])  # what collate fills from each row's image_grid_thw
    return student, Batch(ids, am, lm, old * lm, tea * lm, torch.zeros(3), torch.arange(3), model_inputs=mi,
                          images_per_row=per_row)


def test_learner_on_qwen2_5_vl_with_minibatches(tok):
    student, batch = _vl_batch(tok)
    mi = batch.model_inputs
    grid = mi["image_grid_thw"]
    patches = grid.prod(-1).tolist()
    # selecting rows keeps each sequence's own images (Batch.select, the minibatch split)
    part = batch.select(torch.tensor([2])).model_inputs
    assert torch.equal(part["image_grid_thw"], grid[1:])
    assert part["pixel_values"].shape[0] == int(grid[1:].prod(-1).sum())
    assert torch.equal(part["pixel_values"], mi["pixel_values"][patches[0]:])
    both = batch.select(torch.tensor([0, 2]))
    assert torch.equal(both.model_inputs["pixel_values"], mi["pixel_values"])
    assert both.images_per_row.tolist() == [1, 2] and torch.equal(both.input_ids, batch.input_ids[[0, 2]])
    first = batch.select(torch.tensor([0])).model_inputs
    assert torch.equal(first["image_grid_thw"], grid[:1]) and torch.equal(first["pixel_values"], mi["pixel_values"][:patches[0]])
    assert "pixel_values" not in batch.select(torch.tensor([1])).model_inputs  # the text-only row has no images
    unsplit = Batch(**{k: getattr(batch, k) for k in ("input_ids", "attention_mask", "loss_mask", "old_logprobs",
                                                     "teacher_logprobs", "rewards", "group_ids")}, model_inputs=mi)
    with pytest.raises(NotImplementedError, match="num_minibatches"):
        unsplit.select(torch.tensor([0]))  # without images_per_row the rows' images are unknown
    learner = Learner(student, AlgoConfig(name="reopold", stage_switch=0.0), TrainerConfig(lr=1e-3, num_minibatches=3))
    m = learner.step(batch, 0)
    assert m["skipped"] == 0.0 and m["grad_norm"] > 0
    assert any(p.grad is None for p in student.parameters())  # grads cleared after the step


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_vision_leaves_the_image_encoder_untouched(tok, freeze):
    from reopold_agents.models import vision_tower

    student, batch = _vl_batch(tok)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    tower = {id(p) for p in vision_tower(student).parameters()}
    algo = AlgoConfig(**OPD)
    Learner(student, algo, TrainerConfig(lr=1e-2, freeze_vision=freeze)).step(batch, 0)
    moved = {id(p) for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert moved - tower  # the text model learns either way
    assert bool(moved & tower) is not freeze
