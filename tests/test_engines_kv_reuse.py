"""HF engine KV reuse: with ``reuse_kv_cache`` on (default) the engine samples the same ids with the
same log-probs (1e-5) as the full re-prefill at the same seeds, on real multi-turn toolqa batches of
the project's tiny_toolqa student; cached states are cut and stitched correctly for partial matches,
and dropped when the weights change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reopold_agents as ra
from reopold_agents.engines import GenerationRequest, SamplingParams
from reopold_agents.engines.hf import HFEngine
from reopold_agents.engines.kv_reuse import batch_prefix_len, common_prefix_len
from reopold_agents.models import load_model
from reopold_agents.rollout import Rollout

TOL = 1e-5


@pytest.fixture(scope="module")
def student(one_thread):
    return load_model("tiny_toolqa", "student")


def _same(a, b) -> float:
    """Assert identical ids per generation; return the largest log-prob difference."""
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.finish_reason for g in a] == [g.finish_reason for g in b]
    return max((abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs)), default=0.0)


def _rollout(loaded, reuse: bool, **kw) -> tuple[Rollout, HFEngine]:
    engine = HFEngine(loaded.model, loaded.tokenizer, reuse_kv_cache=reuse, **kw)
    return Rollout(engine, loaded.tokenizer, lambda: ra.make_env("toolqa", seed=0), max_turns=3,
                   max_total_tokens=4096, env_workers=4), engine


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9)])
def test_toolqa_rollout_same_ids_and_logprobs(student, sampling):
    """Two seeded multi-turn toolqa steps (the second reuses nothing stale: weights unchanged, new
    tasks) give the very same trajectories with and without reuse, and reuse really skipped work."""
    (full, _), (fast, engine) = _rollout(student, False, max_batch_size=4), _rollout(student, True, max_batch_size=4)
    try:
        for step, prompts in enumerate(([0, 1, 2], [{"options": {"task_index": 5}}, 7])):
            sp = SamplingParams(max_new_tokens=40, seed=10 + step, **sampling)
            a = full.run(prompts, sp, group_size=2)
            b = fast.run(prompts, sp, group_size=2)
            assert full.stats.turns >= 2 and max(len(t.turns) for t in a) >= 2  # really multi-turn
            assert [t.token_ids for t in a] == [t.token_ids for t in b]
            assert [t.loss_mask for t in a] == [t.loss_mask for t in b]
            diff = max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s.rollout_logprobs, t.rollout_logprobs))
            assert diff < TOL, diff
    finally:
        full.close()
        fast.close()
    stats = engine.prefill_stats
    # the shared ~640-token tool prompt and every earlier turn came from the cache
    assert stats.reused_tokens > 3 * stats.prefilled_tokens, stats


def test_partial_prefix_matches_are_cut_and_stitched(student):
    """Second call: a request continuing a cached sequence past a cut (the rollout trims generations
    to the token budget), one diverging inside the cached prompt, one never seen, one repeated
    verbatim; each row gets exactly the states of its own prefix."""
    tok = student.tokenizer
    env = ra.make_env("toolqa", seed=0)
    from reopold_agents.chat import encode_prompt

    prompts = []
    for i in range(3):
        obs, info = env.reset(options={"task_index": i})
        prompts.append(encode_prompt(tok, obs["messages"], info.get("tools")).ids)
    env.close()
    sp = SamplingParams(max_new_tokens=12, seed=4)
    fast, ref = HFEngine(student.model, tok), HFEngine(student.model, tok, reuse_kv_cache=False)
    first = [GenerationRequest(p) for p in prompts[:2]]
    _same(fast.generate(first, sp), ref.generate(first, sp))
    gen0 = fast.generate(first, sp)[0].token_ids  # same seed: same ids; the store now holds this call
    tail = tok("The answer is 42", add_special_tokens=False)["input_ids"]
    second = [
        GenerationRequest(prompts[0] + gen0[:5] + tail),  # cached sequence cut after 5 generated ids
        GenerationRequest(prompts[1][:-7] + tail),  # diverges 7 ids before the cached prompt's end
        GenerationRequest(prompts[2]),  # new task: only the shared tool prompt is cached
        GenerationRequest(prompts[0] + gen0),  # the cached sequence itself
    ]
    before = fast.prefill_stats.reused_tokens
    diff = _same(fast.generate(second, sp), ref.generate(second, sp))
    assert diff < TOL
    assert fast.prefill_stats.reused_tokens - before >= len(prompts[0]) + len(prompts[1]) - 7


def test_stale_states_are_dropped_when_weights_change(student):
    """After an update the engine must not reuse states of the old weights: via ``load_weights``
    (the contract; here after a change the version counter cannot see) and via an in-place update
    of the shared module without it (the safety net)."""
    import copy

    tok = student.tokenizer
    model = copy.deepcopy(student.model)
    fast = HFEngine(model, tok)
    reqs = [GenerationRequest(tok(f"Question {i}: how many apples are there in the box?", add_special_tokens=False)["input_ids"])
            for i in range(3)]
    sp = SamplingParams(max_new_tokens=8, temperature=0)
    gens = fast.generate(reqs, sp)
    follow = [GenerationRequest(r.prompt_ids + g.token_ids + tok(" ok", add_special_tokens=False)["input_ids"])
              for r, g in zip(reqs, gens)]
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(1.5)  # .data: invisible to the version counter
    fast.load_weights(model)
    _same(fast.generate(follow, sp), HFEngine(model, tok, reuse_kv_cache=False).generate(follow, sp))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # an optimizer-style in-place update, no load_weights
    assert _same(fast.generate(follow, sp), HFEngine(model, tok, reuse_kv_cache=False).generate(follow, sp)) < TOL


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.0)])
def test_a_prompt_repeated_by_its_group_runs_once(student, sampling):
    """BFCL-like batch: a short shared header, then each prompt's own long text, each prompt twice (a
    group's samples). Each prompt runs once (batch size 1) and both rows start from it: the same ids and
    log-probs as the full re-prefill at the same seed, and the prompt tokens prefilled are counted."""
    tok = student.tokenizer
    header = tok("You call functions. " * 4, add_special_tokens=False)["input_ids"]
    docs = [tok(f"Function {i}: " + "compute the area of a shape with a base and a height. " * (4 + i),
                add_special_tokens=False)["input_ids"] for i in range(3)]
    prompts = [header + d for d in docs for _ in range(2)]
    reqs = [GenerationRequest(p) for p in prompts]
    sp = SamplingParams(max_new_tokens=10, seed=3, **sampling)
    fast, ref = HFEngine(student.model, tok, max_batch_size=8), HFEngine(student.model, tok, reuse_kv_cache=False)
    assert _same(fast.generate(reqs, sp), ref.generate(reqs, sp)) < TOL
    unique = sum(len(header + d) - 1 for d in docs)  # each prompt once, less its last id
    assert fast.prefill_stats.prefilled_tokens == unique + len(reqs)  # + each row's last prompt id
    assert fast.prefill_stats.reused_tokens == sum(len(p) - 1 for p in prompts)
    assert ref.prefill_stats.prefilled_tokens == sum(map(len, prompts))


def test_prefix_helpers():
    a = np.array([1, 2, 3, 4])
    assert common_prefix_len(a, np.array([1, 2, 9])) == 2
    assert common_prefix_len(a, a[:2]) == 2
    assert common_prefix_len(a, np.array([7])) == 0
    # at least one id of the shortest prompt stays to be run
    assert batch_prefix_len([a, a.copy()]) == 3
    assert batch_prefix_len([a, np.array([1, 2, 3, 5, 6])]) == 3
    assert batch_prefix_len([a, np.array([1])]) == 0


def test_vl_models_always_prefill_in_full(tok):
    """Qwen2.5-VL keeps rope state from the prefill: its engine never reuses states, even for text."""
    from reopold_agents.tiny.vl import tiny_qwen2_5_vl, tiny_vl_processor

    engine = HFEngine(tiny_qwen2_5_vl(tok), tok, processor=tiny_vl_processor(tok))
    req = GenerationRequest(tok("describe the picture " * 20, add_special_tokens=False)["input_ids"])
    first = engine.generate([req, req], SamplingParams(max_new_tokens=4, temperature=0))[0]
    engine.generate([GenerationRequest(req.prompt_ids + first.token_ids)], SamplingParams(max_new_tokens=4, temperature=0))
    assert engine.prefill_stats.reused_tokens == 0 and engine.prefill_stats.prefilled_tokens > 0


def test_rollout_speed_benchmark_smallest(student, capsys):
    """benchmarks/rollout_speed.py runs end to end (both paths, ids compared) and ends with its ratio."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout_speed.py"
    spec = importlib.util.spec_from_file_location("bench_rollout_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ratio = mod.main(["--prompts", "2", "--group", "2", "--max-turns", "2", "--max-new-tokens", "8", "--repeats", "1"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines[-1].startswith("kv reuse / full prefill: ") and ratio > 0
    assert any(ln.startswith("same token ids on every run") for ln in lines)
