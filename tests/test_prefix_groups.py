"""Each prompt's prefix runs once for its group of samples. A BFCL-shaped batch: every row starts with the
same generic system header, then its prompt's own function docs (200-350 tokens), then one of the
prompt's ``trainer.group_size`` replies. The grouping itself (``_row_groups`` and the padded / packed
plans built on it), then brute force against the per-sample path: per-token log-probs, entropies, top-k
and gradients, padded and packed, and a teacher's scores and a learner step."""

from __future__ import annotations

import copy

import pytest
import torch
from test_packing import ATOL, _batch, _Spy

import reopold_agents.logprobs as lp_mod
import reopold_agents.packed_forward as pf
from reopold_agents.logprobs import model_token_logprobs, model_topk_logprobs
from reopold_agents.tiny import tiny_qwen2

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = (200, 275, 350)  # each prompt's own tokens after the header
ORDER = [5, 0, 9, 2, 11, 6, 1, 8, 3, 10, 4, 7]  # rows as they might come: not by prompt


def bfcl_rows(header: int, prompts: tuple[int, ...] = PROMPTS, samples: int = 4, reply: tuple[int, int] = (20, 80),
              seed: int = 0) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """Rows (in ``ORDER``), each row's prompt, and each prompt's length with the header. Replies start with a
    token of their own, so a prompt's samples share exactly the prompt."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(10, 400, (header,), generator=g)
    rows, prompt_of = [], []
    for p, n in enumerate(prompts):
        prompt = torch.cat([head, torch.randint(10, 400, (n,), generator=g)])
        for s in range(samples):
            m = int(torch.randint(reply[0], reply[1] + 1, (1,), generator=g))
            tail = torch.randint(10, 400, (m,), generator=g)
            tail[0] = 450 + s
            rows.append(torch.cat([prompt, tail]))
            prompt_of.append(p)
    order = ORDER if len(rows) == len(ORDER) else list(range(len(rows)))
    return [rows[i] for i in order], [prompt_of[i] for i in order], [header + n for n in prompts]


def _expected_groups(prompt_of: list[int], shared: list[int]) -> list[tuple[list[int], int]]:
    groups: dict[int, list[int]] = {}
    for b, p in enumerate(prompt_of):
        groups.setdefault(p, []).append(b)
    return sorted(((rows, shared[p]) for p, rows in groups.items()), key=lambda g: g[0][0])


# ------------------------------------------------------------------ the grouping
@pytest.mark.parametrize("header", [40, 118])  # 40: the brief's; 118: BFCL's real header (Qwen template)
def test_each_prompt_is_a_group_with_its_own_prefix(header):
    rows, prompt_of, shared = bfcl_rows(header)
    ids, am = _batch(rows)
    groups = _expected_groups(prompt_of, shared)
    assert len(groups) == 3 and all(len(r) == 4 for r, _ in groups)
    assert lp_mod._row_groups(ids, am) == groups
    assert lp_mod._packed_groups(ids, am) == groups
    plan = lp_mod._padded_plan(ids, am)
    assert [(r, s) for r, _, s in plan] == groups
    assert [cut for _, cut, _ in plan] == [max(len(rows[b]) for b in r) for r, _ in groups]
    # what the padded pass would have run before: the header batch-wide (>= 64 tokens) or nothing
    assert lp_mod._shared_prefix_len(ids, am) == (header if header >= lp_mod.MIN_SHARED_PREFIX else 0)
    batch_wide = header + len(rows) * (ids.shape[1] - header)
    assert lp_mod._plan_cost(plan) < 0.5 * batch_wide
    assert lp_mod._prefix_cost(ids, am) < int(am.sum())  # flash-attn, too, takes the grouped padded pass


def test_a_batch_wide_prompt_stays_one_group():
    """toolqa: one long prompt for every row and short questions after it; splitting by question would
    run the long prompt once a question, so the batch-wide prefix stays."""
    rows, _, _ = bfcl_rows(300, prompts=(10, 12, 8), reply=(40, 60))
    ids, am = _batch(rows)
    assert lp_mod._row_groups(ids, am) == [(list(range(12)), 300)]
    assert lp_mod._padded_plan(ids, am) == [(list(range(12)), ids.shape[1], 300)]
    one, _, _ = bfcl_rows(30, prompts=(250,))  # one prompt: its samples are the whole batch
    ids, am = _batch(one)
    assert lp_mod._row_groups(ids, am) == [([0, 1, 2, 3], 280)]


def test_nested_groups_unshared_rows_and_duplicates():
    g = torch.Generator().manual_seed(3)
    rand = lambda n: torch.randint(10, 400, (n,), generator=g)  # noqa: E731
    env_a, env_b = rand(150), rand(90)
    p1, p2, p3 = torch.cat([env_a, rand(100)]), torch.cat([env_a, rand(120)]), torch.cat([env_b, rand(200)])
    reply = lambda s: torch.cat([torch.tensor([450 + s]), rand(30)])  # noqa: E731
    rows = [torch.cat([p1, reply(0)]), rand(70), torch.cat([p2, reply(0)]), torch.cat([p1, reply(1)]),
            torch.cat([p3, reply(0)]), torch.cat([p2, reply(1)]), torch.cat([p3, reply(1)]), rand(40)]
    rows.append(rows[0].clone())  # a greedy sample can repeat another one token for token
    ids, am = _batch(rows)
    # each prompt's samples under their env's system prompt; the unrelated rows together, unshared
    assert lp_mod._row_groups(ids, am) == [([0, 3, 8], 250), ([2, 5], 270), ([4, 6], 290), ([1, 7], 0)]
    # a header too short to share (40 tokens) under prompts that reach 64 with it: one group per prompt
    short, prompt_of, shared = bfcl_rows(40, prompts=(30, 45), samples=3, seed=5)
    ids, am = _batch(short)
    assert shared == [70, 85] and lp_mod._row_groups(ids, am) == _expected_groups(prompt_of, shared)
    ids, am = _batch([rand(80), rand(90), rand(5)])
    assert lp_mod._row_groups(ids, am) == [([0, 1, 2], 0)] and lp_mod._padded_plan(ids, am) is None
    assert lp_mod._row_groups(ids[:1], am[:1]) == [([0], 0)]
    # two identical rows share all but their last token (the suffix pass needs one)
    ids, am = _batch([rows[0], rows[0].clone()])
    assert lp_mod._row_groups(ids, am) == [([0, 1], len(rows[0]) - 1)]
    # left padding: no row starts with real tokens everywhere, so nothing is shared
    pad = torch.zeros(5, dtype=torch.long)
    left = torch.stack([torch.cat([pad, rows[0][:-5]]), rows[0]])
    left_am = torch.stack([torch.cat([pad, torch.ones(len(rows[0]) - 5, dtype=torch.long)]), torch.ones_like(rows[0])])
    assert lp_mod._row_groups(left, left_am) == [([0, 1], 0)]


# ------------------------------------------------- brute force vs the per-sample path
def _per_sample(model, ids, am, target, weights, params):
    """Each row alone (one row: no prefix shared with anything): log-probs, entropy, top-3, and the
    gradient of the weighted log-prob sum over all rows."""
    lp, ent = torch.zeros(ids.shape), torch.zeros(ids.shape)
    top_v, top_i = torch.zeros(ids.shape + (3,)), torch.zeros(ids.shape + (3,), dtype=torch.long)
    grads = [torch.zeros_like(p) for p in params]
    for b in range(ids.shape[0]):
        n = int(am[b].sum())
        row = (ids[b : b + 1, :n], am[b : b + 1, :n])
        l, e = model_token_logprobs(model, *row, with_entropy=True, target_mask=target[b : b + 1, :n])
        for acc, g in zip(grads, torch.autograd.grad((l * weights[b : b + 1, :n]).sum(), params)):
            acc += g
        lp[b, :n], ent[b, :n] = l.detach()[0], e[0]
        v, i = model_topk_logprobs(model, *row, k=3, target_mask=target[b : b + 1, :n])
        top_v[b, :n], top_i[b, :n] = v[0], i[0]
    return lp, ent, top_v, top_i, grads


@pytest.mark.parametrize("header", [40, 118])
@pytest.mark.parametrize("pack", [False, True])
def test_grouped_pass_equals_the_per_sample_path(tok, header, pack):
    model = tiny_qwen2(tok, seed=7).float().train()
    params = [p for p in model.parameters() if p.requires_grad]
    rows, prompt_of, shared = bfcl_rows(header, seed=header)
    ids, am = _batch(rows)
    target = am.clone()
    for b, p in enumerate(prompt_of):
        target[b, : shared[p]] = 0  # the replies are scored and trained, never the prompt
    weights = torch.linspace(0.5, 1.5, ids.numel()).view(ids.shape)  # not a plain sum: position errors show
    want = _per_sample(model, ids, am, target, weights, params)
    spy_padded, spy_packed = _Spy(lp_mod._shared_prefix_hidden), _Spy(pf._with_prefix)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lp_mod, "_shared_prefix_hidden", spy_padded)
        mp.setattr(pf, "_with_prefix", spy_packed)
        lp, ent = model_token_logprobs(model, ids, am, with_entropy=True, target_mask=target, pack=pack)
        grads = torch.autograd.grad((lp * weights).sum(), params)
        top_v, top_i = model_topk_logprobs(model, ids, am, k=3, target_mask=target, pack=pack)
    spy = spy_packed if pack else spy_padded
    groups = _expected_groups(prompt_of, shared)
    # each prompt ran once per forward (log-probs, then top-k), for its 4 samples
    assert [(args[1].shape[0], args[3], ok) for args, ok in spy.calls] == [(4, s, True) for _, s in groups] * 2
    assert (spy_padded if pack else spy_packed).calls == []
    torch.testing.assert_close(lp.detach(), want[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, want[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(top_v, want[2], atol=ATOL, rtol=0)
    assert torch.equal(top_i, want[3])
    assert bool((lp[target == 0] == 0).all()) and bool((lp[target > 0] != 0).all())
    for (name, _), a, e in zip(model.named_parameters(), grads, want[4]):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=1e-4, msg=name)


def _scored_batch(student, teacher, header: int):
    from reopold_agents.trajectory import Batch

    rows, prompt_of, shared = bfcl_rows(header, seed=1)
    ids, am = _batch(rows)
    lm = am.float().clone()
    for b, p in enumerate(prompt_of):
        lm[b, : shared[p]] = 0
    with torch.no_grad():
        old, _ = model_token_logprobs(student, ids, am)
        tea, _ = model_token_logprobs(teacher, ids, am)
    rewards = torch.tensor([float(b % 2) for b in range(len(rows))])
    return Batch(ids, am, lm, old * lm, tea * lm, rewards, torch.tensor(prompt_of))


def test_teacher_and_learner_equal_the_unshared_pass(tok):
    """The teacher's scores and one learner step with the prompts run once a group, against the same with
    nothing shared (``MIN_SHARED_PREFIX`` out of reach: every row runs whole)."""
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner
    from reopold_agents.teacher import Teacher

    student, teacher = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    batch = _scored_batch(student, teacher, header=118)
    results = []
    for shared in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            if not shared:
                mp.setattr(lp_mod, "MIN_SHARED_PREFIX", 10**9)
            spy = _Spy(pf._with_prefix)
            mp.setattr(pf, "_with_prefix", spy)
            scores = Teacher(tok, model=teacher, batch_size=12, top_k=3, chunk_size=64).score(batch)
            model = copy.deepcopy(student)
            learner = Learner(model, AlgoConfig(name="reopold", stage_switch=0.0), TrainerConfig(lr=1e-3))
            learner.optimizer = torch.optim.SGD(learner.params, lr=1.0)  # the update is the gradient itself
            metrics = learner.step(batch, 0)
        assert len(spy.calls) == (0 if not shared else 3 + 3)  # teacher (log-probs and top-k in one pass), learner
        results.append((scores, metrics, model))
    (s0, m0, a), (s1, m1, b) = results
    torch.testing.assert_close(s1.logprobs, s0.logprobs, atol=ATOL, rtol=0)
    torch.testing.assert_close(s1.topk_logprobs, s0.topk_logprobs, atol=ATOL, rtol=0)
    assert torch.equal(s1.topk_ids, s0.topk_ids)
    assert m0["skipped"] == 0.0 and m0["num_selected"] == m1["num_selected"] > 0
    for key in ("loss", "grad_norm", "entropy_mean"):
        assert m1[key] == pytest.approx(m0[key], rel=1e-4, abs=1e-6), key
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=ATOL, rtol=1e-4, msg=name)
