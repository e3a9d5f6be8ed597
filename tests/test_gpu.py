"""Paths that need a CUDA GPU: vLLM generation and weight reload after a learner step, a Qwen2.5-VL pair
in vLLM with images, the accelerate FSDP learner on one GPU in bf16. ``scripts/gpu_check.sh`` runs
each test here in its own process (plus the Ray CLI run) and prints a pass/fail table (docs/vllm.md).

Skipped without CUDA. vLLM runs in bf16 (its production dtype), so its log-probs are compared with
transformers' bf16 forward of the same ids at bf16 tolerances (mean |diff| over sampled tokens);
a weight sync that did not happen shows up as differences ~10x larger (measured on the same ids).
The models are tiny ones built from config with head size 32 (vLLM's GPU attention kernels take
head sizes that are multiples of 32 reliably; the shared fixtures use 16).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reopold_agents as ra
from reopold_agents.config.engine import EngineConfig
from reopold_agents.engines import GenerationRequest, SamplingParams, make_engine
from reopold_agents.engines.hf import HFEngine
from reopold_agents.rollout import Rollout
from reopold_agents.tiny import build_tokenizer, tiny_qwen2
from reopold_agents.trajectory import Trajectory, collate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BF16_MEAN_TOL = 0.05  # mean |log-prob difference| vLLM bf16 vs transformers bf16 on the same ids
CUDA = "cuda"


def _engine(model, tok, processor=None):
    pytest.importorskip("vllm")
    cfg = EngineConfig(name="vllm", gpu_memory_utilization=0.25, max_model_len=2048, max_new_tokens=24)
    return make_engine(cfg, model=model, tokenizer=tok, processor=processor)


def _mean_abs_diff(trajs: list[Trajectory], hf: HFEngine) -> tuple[float, int]:
    """Mean |rollout log-prob - transformers log-prob| over every sampled token, and how many."""
    reqs = [GenerationRequest(t.token_ids, list(t.images), dict(t.model_inputs)) for t in trajs]
    total, n = 0.0, 0
    for t, ref in zip(trajs, hf.score(reqs)):
        for lp, r, m in zip(t.rollout_logprobs, ref, t.loss_mask):
            if m:
                total, n = total + abs(lp - r), n + 1
    assert n > 0, "nothing was generated"
    return total / n, n


def _score_diff(a: list[list[float]], b: list[list[float]]) -> float:
    pairs = [(x, y) for ra_, rb in zip(a, b) for x, y in zip(ra_[1:], rb[1:])]
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def test_vllm_text_generation_and_reload_after_learner_step():
    """Multi-turn toolqa rollouts through vLLM match transformers; after a real learner step and
    ``load_weights`` they match the *updated* model (and no stale prefix-cache block survives)."""
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner

    tok = build_tokenizer()
    model = tiny_qwen2(tok, seed=0, num_heads=2, num_kv_heads=1).to(CUDA, torch.bfloat16)
    teacher = tiny_qwen2(tok, seed=1, num_heads=2, num_kv_heads=1).to(CUDA, torch.bfloat16)
    engine = _engine(model, tok)
    rollout = Rollout(engine, tok, lambda: ra.make_env("toolqa", seed=0), max_turns=2, max_total_tokens=2048)
    try:
        sampling = SamplingParams(max_new_tokens=24, seed=0)
        trajs = rollout.run([0, 1], sampling, group_size=2)
        before, n = _mean_abs_diff(trajs, HFEngine(model, tok))
        assert before < BF16_MEAN_TOL, f"vLLM vs transformers before the update: {before:.4f} over {n} tokens"

        # A real learner step (REOPOLD token reward from a teacher that scores the same ids).
        seqs = [GenerationRequest(t.token_ids) for t in trajs]
        batch = _with_teacher(collate(trajs, tok.pad_token_id), HFEngine(teacher, tok).score(seqs))
        old_scores = HFEngine(model, tok).score(seqs)
        learner = Learner(model, AlgoConfig(stage_switch=0.0, stage2_rule="all"), TrainerConfig(lr=3e-2, total_steps=1))
        metrics = learner.step(batch, 0)
        assert metrics["num_selected"] > 0
        new_scores = HFEngine(model, tok).score(seqs)
        moved = _score_diff(old_scores, new_scores)
        assert moved > 4 * BF16_MEAN_TOL, f"the learner step barely changed the model ({moved:.4f})"

        engine.load_weights(model)
        # the same ids (their prompts are in vLLM's prefix cache from before): scored with the new weights
        synced = _score_diff(engine.score(seqs), new_scores)
        assert synced < BF16_MEAN_TOL, f"after load_weights vLLM scores differ from the new model by {synced:.4f}"
        after, n = _mean_abs_diff(rollout.run([2, 3], sampling, group_size=2), HFEngine(model, tok))
        assert after < BF16_MEAN_TOL, f"vLLM vs updated transformers: {after:.4f} over {n} tokens"
    finally:
        rollout.close()
        engine.close()


def test_vllm_vl_pair_with_images():
    """A tiny Qwen2.5-VL student and teacher in vLLM: vqa rollouts with images give the log-probs
    transformers computes with the same pixels, and the teacher scores them as transformers does."""
    from reopold_agents.tiny.vl import tiny_qwen2_5_vl, tiny_vl_processor

    tok = build_tokenizer()
    proc = tiny_vl_processor(tok)
    student = tiny_qwen2_5_vl(tok, seed=0, num_heads=2, num_kv_heads=1, vision_hidden_size=64).to(CUDA, torch.bfloat16)
    teacher = tiny_qwen2_5_vl(tok, seed=1, num_heads=2, num_kv_heads=1, vision_hidden_size=64).to(CUDA, torch.bfloat16)
    engine = _engine(student, tok, proc)
    rollout = Rollout(engine, tok, lambda: ra.make_env("vqa", seed=0), processor=proc, max_turns=1,
                      max_total_tokens=2048)
    try:
        trajs = rollout.run([0, 1, 2], SamplingParams(max_new_tokens=16, seed=3), group_size=2)
        assert all(t.images for t in trajs), "the vqa prompts carry no images"
        diff, n = _mean_abs_diff(trajs, HFEngine(student, tok, processor=proc))
        assert diff < BF16_MEAN_TOL, f"VL vLLM vs transformers: {diff:.4f} over {n} tokens"
    finally:
        rollout.close()
        engine.close()
    t_engine = _engine(teacher, tok, proc)
    try:
        seqs = [GenerationRequest(t.token_ids, list(t.images), dict(t.model_inputs)) for t in trajs]
        sdiff = _score_diff(t_engine.score(seqs), HFEngine(teacher, tok, processor=proc).score(seqs))
        assert sdiff < BF16_MEAN_TOL, f"VL teacher scoring vLLM vs transformers: {sdiff:.4f}"
    finally:
        t_engine.close()


# ---------------------------------------------------------------------------------- FSDP learner


def _learner_batch(tok):
    """Eight trajectories: random prompt ids (mask 0), generated ids with rollout and teacher log-probs."""
    g = torch.Generator().manual_seed(0)
    trajs, teacher = [], []
    for i in range(8):
        t = Trajectory(group_id=i // 2, reward=float(i % 2))
        t.append_env(torch.randint(10, len(tok), (6 + i,), generator=g).tolist())
        n = 8 + 2 * i
        t.append_generated(torch.randint(10, len(tok), (n,), generator=g).tolist(), (-torch.rand(n, generator=g) - 6).tolist())
        teacher.append([float(-torch.rand(1, generator=g) * 8) if m else 0.0 for m in t.loss_mask])
        trajs.append(t)
    return _with_teacher(collate(trajs, tok.pad_token_id), teacher)


def _with_teacher(batch, rows: list[list[float]]):
    """``batch`` with per-row teacher log-probs (0 off the student's tokens), as a teacher's scores write them."""
    lp = torch.zeros(batch.loss_mask.shape, dtype=torch.float32)
    for b, row in enumerate(rows):
        lp[b, : len(row)] = torch.tensor(row, dtype=torch.float32)
    batch.teacher_logprobs = torch.where(batch.loss_mask.cpu() > 0, lp, torch.zeros(()))
    return batch


def _configs():
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig

    return AlgoConfig(stage_switch=0.0, stage2_rule="all"), TrainerConfig(lr=1e-3, total_steps=2)


def fsdp_rank_main(out: str) -> None:
    """The one FSDP rank (run with RANK/WORLD_SIZE/MASTER_* set, as torchrun would)."""
    from reopold_agents.config.distributed import DistributedConfig
    from reopold_agents.accelerate_learner import AccelerateLearner

    tok = build_tokenizer()
    learner = AccelerateLearner(tiny_qwen2(tok, seed=1, num_heads=2, num_kv_heads=1).to(CUDA), *_configs(),
                                DistributedConfig(learner_strategy="fsdp", mixed_precision="bf16"))
    info = {"fsdp": learner.fsdp, "mixed_precision": str(learner.accelerator.mixed_precision),
            "device": str(learner.accelerator.device)}
    batch = _learner_batch(tok)
    metrics = [learner.step(batch, s) for s in range(2)]
    state = learner.full_state_dict()
    torch.save({"info": info, "metrics": metrics, "state": state}, out)
    learner.close()


def test_fsdp_learner_one_gpu_bf16(tmp_path):
    """accelerate FSDP2 over one GPU in bf16 makes the fp32 CPU learner's update (to bf16 rounding)."""
    from reopold_agents.learner import Learner

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    here = Path(__file__).resolve().parent
    code = f"import sys; sys.path.insert(0, {str(here)!r}); import test_gpu; test_gpu.fsdp_rank_main({str(out)!r})"
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    got = torch.load(out)
    assert got["info"]["fsdp"], got["info"]
    assert got["info"]["mixed_precision"] == "bf16" and got["info"]["device"].startswith("cuda"), got["info"]

    tok = build_tokenizer()
    ref_model = tiny_qwen2(tok, seed=1, num_heads=2, num_kv_heads=1)
    start = {k: v.clone() for k, v in ref_model.state_dict().items()}
    ref = Learner(ref_model, *_configs())
    ref_metrics = [ref.step(_learner_batch(tok), s) for s in range(2)]
    for m, r in zip(got["metrics"], ref_metrics):
        assert m["loss"] == pytest.approx(r["loss"], rel=0.05, abs=0.02)  # bf16 autocast, same objective
        assert m["num_selected"] == r["num_selected"]
    state = got["state"]
    assert set(start) - {k for k in start if "lm_head" in k} <= set(state)  # the full (gathered) weights
    moved = [k for k in state if k in start and not torch.allclose(state[k].float(), start[k], atol=1e-6)]
    assert moved, "FSDP made no update"
    for k in moved:  # same direction and size as the fp32 update (lr 1e-3, 2 Adam steps)
        delta_fsdp = state[k].float() - start[k]
        delta_ref = ref_model.state_dict()[k] - start[k]
        assert torch.nn.functional.cosine_similarity(delta_fsdp.flatten(), delta_ref.flatten(), dim=0) > 0.8, k
