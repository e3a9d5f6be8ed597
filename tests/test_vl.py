"""Qwen2.5-VL path: image-pad expansion matches the HF processor, generation log-probs and teacher
scores match a naive forward with the image, and an image returned by a tool mid-episode stays
consistent (pads in the ids == features from pixel_values/image_grid_thw)."""

from __future__ import annotations

import pytest
import torch

import reopold_agents as ra
from reopold_agents.chat import encode_prompt
from reopold_agents.engines import Engine, Generation, GenerationRequest, SamplingParams
from reopold_agents.engines.hf import HFEngine
from reopold_agents.models import forward_inputs
from reopold_agents.rollout import Rollout
from reopold_agents.teacher import Teacher
from reopold_agents.trajectory import collate
from reopold_agents.tiny.vl import color_image, tiny_qwen2_5_vl, tiny_vl_processor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def proc(tok):
    return tiny_vl_processor(tok)


@pytest.fixture(scope="module")
def student(tok):
    return tiny_qwen2_5_vl(tok, seed=0)


def naive_logprobs(model, ids: list[int], model_inputs: dict) -> torch.Tensor:
    """Full-vocab log-softmax of one unpadded forward; [len(ids)] target-aligned, entry 0 = 0."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x, **forward_inputs(model, x, model_inputs)).logits[0, :-1].double()
    lp = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]
    return torch.cat([torch.zeros(1, dtype=torch.float64), lp])


def test_image_pad_expansion_matches_hf_processor(tok, proc):
    img = color_image(size=(60, 90))
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "What colour?"}]}]
    enc = encode_prompt(tok, msgs, processor=proc, images=[img])
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    from qwen_vl_utils import fetch_image

    resized = fetch_image({"image": img, "min_pixels": proc.image_processor.size["shortest_edge"],
                           "max_pixels": proc.image_processor.size["longest_edge"]})
    ref = proc(text=[text], images=[resized], return_tensors="pt")
    assert enc.ids == ref["input_ids"][0].tolist()
    assert torch.equal(enc.model_inputs["image_grid_thw"], ref["image_grid_thw"])
    assert torch.allclose(enc.model_inputs["pixel_values"], ref["pixel_values"])
    n_pad = sum(1 for t in enc.ids if t == proc.image_token_id)
    assert n_pad == int(ref["image_grid_thw"].prod()) // 4 > 1


def test_generate_and_score_with_image_prompt(tok, proc, student):
    env = ra.make_env("vqa", seed=0)
    reqs = []
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        enc = encode_prompt(tok, obs["messages"], processor=proc, images=obs["images"])
        reqs.append(GenerationRequest(enc.ids, enc.images, enc.model_inputs))
    engine = HFEngine(student, tok, processor=proc)
    gens = engine.generate(reqs, SamplingParams(max_new_tokens=10, seed=0))
    for req, gen in zip(reqs, gens):
        ref = naive_logprobs(student, req.prompt_ids + gen.token_ids, req.model_inputs)[len(req.prompt_ids) :]
        assert torch.allclose(torch.tensor(gen.logprobs, dtype=torch.float64), ref, atol=1e-4)
    # raw images (no pre-processed tensors) give the same result; batching does not change greedy output
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    batched = engine.generate(reqs, greedy)
    raw = [engine.generate([GenerationRequest(r.prompt_ids, r.images)], greedy)[0] for r in reqs]
    assert [g.token_ids for g in batched] == [g.token_ids for g in raw]
    for req, lps in zip(reqs, engine.score(reqs)):
        assert torch.allclose(torch.tensor(lps, dtype=torch.float64), naive_logprobs(student, req.prompt_ids, req.model_inputs), atol=1e-4)


def test_vl_engine_never_samples_image_pads(tok, proc, student):
    """Make <|image_pad|> the argmax: it is still never sampled (it would break image/feature alignment)."""
    engine = HFEngine(student, tok, processor=proc)
    assert engine.banned_token_ids == [proc.image_token_id, proc.video_token_id]
    req = GenerationRequest(tok("hi", add_special_tokens=False)["input_ids"])
    free = HFEngine(student, tok, banned_token_ids=[]).generate([req], SamplingParams(max_new_tokens=6, temperature=0))[0]
    first = free.token_ids[0]
    banned = HFEngine(student, tok, processor=proc, banned_token_ids=[first])
    gen = banned.generate([req], SamplingParams(max_new_tokens=6, temperature=0))[0]
    assert first not in gen.token_ids and gen.token_ids[0] != free.token_ids[0]
    # the recorded log-prob is still the raw one (the banned token keeps its mass)
    ref = naive_logprobs(student, req.prompt_ids + gen.token_ids, {})[len(req.prompt_ids) :]
    assert torch.allclose(torch.tensor(gen.logprobs, dtype=torch.float64), ref, atol=1e-4)


class FirstTurnScript(Engine):
    """Plays a fixed first assistant turn (log-probs from the real model), then generates for real."""

    def __init__(self, inner: HFEngine, first_turn: list[int]) -> None:
        self.inner, self.first_turn, self.calls = inner, first_turn, 0

    def generate(self, requests, sampling):
        self.calls += 1
        if self.calls > 1:
            return self.inner.generate(requests, sampling)
        scored = self.inner.score([GenerationRequest(r.prompt_ids + self.first_turn, r.images, r.model_inputs) for r in requests])
        return [Generation(list(self.first_turn), s[-len(self.first_turn) :], "stop") for s in scored]

    def load_weights(self, m):
        self.inner.load_weights(m)


def test_tool_returns_image_mid_episode(tok, proc, student):
    call = '<tool_call>{"name": "bar_chart", "arguments": {"values": [3, 1, 2]}}</tool_call>'
    first = tok(call, add_special_tokens=False)["input_ids"]
    engine = FirstTurnScript(HFEngine(student, tok, processor=proc), first)
    rollout = Rollout(
        engine, tok, lambda: ra.make_env("toolqa", seed=0, tools=("calculator", "bar_chart")),
        processor=proc, max_turns=2, max_total_tokens=4096,
    )
    (traj,) = rollout.run([0], SamplingParams(max_new_tokens=12, seed=0))
    assert traj.turns[0]["info"]["tool_name"] == "bar_chart" and traj.turns[0]["info"]["tool_error"] is None
    assert len(traj.turns) == 2 and len(traj.images) == 1  # the chart arrived from the tool
    grid = traj.model_inputs["image_grid_thw"]
    assert grid.shape == (1, 3)
    pads = sum(1 for t in traj.token_ids if t == proc.image_token_id)
    assert pads == int(grid.prod()) // 4 and traj.model_inputs["pixel_values"].shape[0] == int(grid.prod())
    assert all(m == 0 for t, m in zip(traj.token_ids, traj.loss_mask) if t == proc.image_token_id)
    # the image sits after the first generated turn and before the second one
    gen_pos = [i for i, m in enumerate(traj.loss_mask) if m]
    img_pos = [i for i, t in enumerate(traj.token_ids) if t == proc.image_token_id]
    assert gen_pos[0] < img_pos[0] and img_pos[-1] < gen_pos[-1]
    # second-turn rollout log-probs == a naive forward of the whole episode with the tool's image
    ref = naive_logprobs(student, traj.token_ids, traj.model_inputs)
    got = torch.tensor(traj.rollout_logprobs, dtype=torch.float64)
    mask = torch.tensor(traj.loss_mask, dtype=torch.bool)
    assert torch.allclose(got[mask], ref[mask], atol=1e-4)
    # a bigger VL teacher scores the same ids with the same image
    teacher = tiny_qwen2_5_vl(tok, seed=1, hidden_size=96, num_layers=3)
    batch = collate([traj], tok.pad_token_id)
    Teacher(tok, model=teacher).score(batch).apply_to(batch)
    tref = naive_logprobs(teacher, traj.token_ids, traj.model_inputs) * mask
    # (collate never trains on position 0, so the teacher does not score it either)
    assert torch.allclose(batch.teacher_logprobs[0].double(), tref * (torch.arange(len(tref)) > 0), atol=1e-4)
    rollout.close()
