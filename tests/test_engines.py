"""HF engine: sampled ids/log-probs match a forward pass, stop tokens, batching invariance, seeding,
weight sync, and that only SamplingParams decide how to sample."""

from __future__ import annotations

import copy

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.engines import GenerationRequest, SamplingParams, make_engine
from reopold_agents.engines.hf import HFEngine
from reopold_agents.tiny import tiny_qwen2

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_qwen2(tok, seed=0)


def _prompts(tok):
    texts = ["What is 12 + 7?", "Count the apples in the box and give the answer", "hi"]
    return [GenerationRequest(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]


def _forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Brute force: full-vocab log-softmax of one unpadded forward, target-aligned from position 1."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]


def test_sampled_logprobs_match_forward(tok, model):
    engine = HFEngine(model, tok)
    reqs = _prompts(tok)
    gens = engine.generate(reqs, SamplingParams(max_new_tokens=16, temperature=1.0, seed=3))
    for req, gen in zip(reqs, gens):
        assert len(gen.token_ids) == len(gen.logprobs) > 0
        ref = _forward_logprobs(model, req.prompt_ids + gen.token_ids)[len(req.prompt_ids) - 1 :]
        assert torch.allclose(torch.tensor(gen.logprobs, dtype=torch.float64), ref, atol=1e-4)


def test_logprobs_are_raw_not_tempered(tok, model):
    """At temperature 0.5 the recorded log-probs are still the temperature-1 model log-probs."""
    engine = HFEngine(model, tok)
    req = _prompts(tok)[0]
    gen = engine.generate([req], SamplingParams(max_new_tokens=8, temperature=0.5, seed=1))[0]
    ref = _forward_logprobs(model, req.prompt_ids + gen.token_ids)[len(req.prompt_ids) - 1 :]
    assert torch.allclose(torch.tensor(gen.logprobs, dtype=torch.float64), ref, atol=1e-4)


def test_stop_token_ends_generation_and_nothing_is_appended(tok, model):
    engine = HFEngine(model, tok)
    req = _prompts(tok)[1]
    free = engine.generate([req], SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    stop = free.token_ids[4]
    first = free.token_ids.index(stop)
    stopped = engine.generate([req], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[stop]))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: first + 1]  # ends with the stop id, nothing after it
    assert stopped.token_ids[-1] == stop and tok.eos_token_id not in stopped.token_ids[:-1]


def test_eos_stop(tok, model):
    """Force EOS by making it the argmax: the generation ends with <|im_end|> and reason 'stop'."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.lm_head.weight[tok.eos_token_id] = m.lm_head.weight.sum(0) * 0 + 5.0 * m.model.norm.weight.sign()
    m.config.tie_word_embeddings = False
    engine = HFEngine(m, tok)
    gen = engine.generate(_prompts(tok)[:1], SamplingParams(max_new_tokens=10, temperature=0))[0]
    if gen.token_ids[-1] != tok.eos_token_id:
        pytest.fail(f"expected EOS to be greedy, got {gen.token_ids}")
    assert gen.finish_reason == "stop"


def test_batching_and_padding_invariance(tok, model):
    engine = HFEngine(model, tok)
    reqs = _prompts(tok)
    sp = SamplingParams(max_new_tokens=10, temperature=0)
    batched = engine.generate(reqs, sp)
    single = [engine.generate([r], sp)[0] for r in reqs]
    engine_small = HFEngine(model, tok, max_batch_size=2)
    micro = engine_small.generate(reqs, sp)
    for a, b, c in zip(batched, single, micro):
        assert a.token_ids == b.token_ids == c.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_seeded_sampling(tok, model):
    engine = HFEngine(model, tok)
    reqs = _prompts(tok)
    a = engine.generate(reqs, SamplingParams(max_new_tokens=12, seed=7))
    b = engine.generate(reqs, SamplingParams(max_new_tokens=12, seed=7))
    c = engine.generate(reqs, SamplingParams(max_new_tokens=12, seed=8))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_checkpoint_generation_config_does_not_leak(tok):
    """A model whose generation_config says top_k=1 must still sample from the full distribution."""
    m = tiny_qwen2(tok, seed=0)
    m.generation_config.top_k = 1
    m.generation_config.repetition_penalty = 2.0
    engine = HFEngine(m, tok)
    req = _prompts(tok)[:1]
    outs = {tuple(engine.generate(req, SamplingParams(max_new_tokens=8, seed=s))[0].token_ids) for s in range(4)}
    assert len(outs) > 1
    assert m.generation_config.top_k == 1  # restored afterwards


def test_top_k_one_is_greedy(tok, model):
    engine = HFEngine(model, tok)
    req = _prompts(tok)[:1]
    greedy = engine.generate(req, SamplingParams(max_new_tokens=8, temperature=0))[0]
    topk1 = engine.generate(req, SamplingParams(max_new_tokens=8, top_k=1, seed=5))[0]
    assert greedy.token_ids == topk1.token_ids


def test_load_weights_syncs_a_copy(tok, model):
    learner = tiny_qwen2(tok, seed=11)
    engine = HFEngine(tiny_qwen2(tok, seed=0), tok)
    reqs = _prompts(tok)
    sp = SamplingParams(max_new_tokens=8, temperature=0)
    target = HFEngine(learner, tok).generate(reqs, sp)
    assert [g.token_ids for g in engine.generate(reqs, sp)] != [g.token_ids for g in target]
    engine.load_weights(learner)
    assert [g.token_ids for g in engine.generate(reqs, sp)] == [g.token_ids for g in target]
    engine.load_weights({k: v.clone() for k, v in model.state_dict().items()})
    assert [g.token_ids for g in engine.generate(reqs, sp)] == [g.token_ids for g in HFEngine(model, tok).generate(reqs, sp)]
    with pytest.raises(ValueError, match="unexpected"):
        engine.load_weights({"nonsense.weight": torch.zeros(1)})


def test_engine_restores_training_mode(tok):
    m = tiny_qwen2(tok, seed=0).train()
    HFEngine(m, tok).generate(_prompts(tok)[:1], SamplingParams(max_new_tokens=2))
    assert m.training


def test_score_matches_forward(tok, model):
    engine = HFEngine(model, tok, max_batch_size=2)
    reqs = _prompts(tok)
    for req, lps in zip(reqs, engine.score(reqs)):
        ref = _forward_logprobs(model, req.prompt_ids)
        assert lps[0] == 0.0 and len(lps) == len(req.prompt_ids)
        assert torch.allclose(torch.tensor(lps[1:], dtype=torch.float64), ref, atol=1e-4)


def test_make_engine_and_bad_input(tok, model):
    cfg = compose(["engine=hf"]).engine
    engine = make_engine(cfg, model=model, tokenizer=tok)
    assert isinstance(engine, HFEngine) and engine.max_batch_size == cfg.max_batch_size
    bad = copy.copy(cfg)
    bad.name = "nope"
    with pytest.raises(ValueError, match="engine.name"):
        make_engine(bad, model=model, tokenizer=tok)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([GenerationRequest([])], SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(_prompts(tok)[:1], SamplingParams(top_p=0))


def test_engine_config_validation():
    from reopold_agents.config.schema import ConfigError

    with pytest.raises(ConfigError, match="engine.sampling.temperature"):
        compose(["engine.sampling.temperature=-1"])
    with pytest.raises(ConfigError, match="engine.name"):
        compose(["engine.name=sglang"])
    with pytest.raises(ConfigError):
        compose(["+engine.not_a_key=1"])
    cfg = compose(["engine=vllm"]).engine
    assert cfg.name == "vllm" and SamplingParams.from_config(cfg.sampling, stop_token_ids=[5]).stop_token_ids == [5]
