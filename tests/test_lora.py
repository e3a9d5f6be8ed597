"""LoRA students (``model.lora``, reopold_agents/lora.py): fresh adapters compute the base model, gradients
and the optimiser reach the adapters only, merged weights (export, vLLM sync) equal the adapted model,
checkpoints hold the adapters and resume bit-identically, ``model.teacher=self`` scores with the frozen
base of the one student module (adapters disabled), and config errors name the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import reopold_agents.run as run_mod
from reopold_agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reopold_agents.config import compose
from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.lora import LoraConfig
from reopold_agents.config.schema import ConfigError, resolve_tiny
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import Learner
from reopold_agents.logprobs import model_token_logprobs, model_topk_logprobs
from reopold_agents.lora import adapters_disabled, apply_lora, hf_module, is_peft, merged_state_dict
from reopold_agents.metrics import read_metrics
from reopold_agents.tiny import tiny_qwen2
from reopold_agents.trajectory import Batch

pytestmark = pytest.mark.usefixtures("one_thread")

LORA = LoraConfig(enabled=True, rank=4, alpha=8.0)


def _ids(tok, bsz=3, length=18, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, len(tok), (bsz, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0
    return ids, mask


def _logprobs(model, ids, mask):
    with torch.no_grad():
        return model_token_logprobs(model, ids, mask)[0]


def _perturb_adapters(model, seed=0, scale=0.02):
    """Non-zero B matrices, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _batch(tok, student, teacher, seed=0):
    ids, am = _ids(tok, bsz=4, length=20, seed=seed)
    ids[am == 0] = tok.pad_token_id
    lm = torch.zeros(ids.shape)
    lm[:, 6:] = 1
    lm = lm * am
    old, tea = _logprobs(student, ids, am), _logprobs(teacher, ids, am)
    return Batch(ids, am, lm, old * lm, tea * lm, torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1]))


def test_zero_initialised_adapters_give_the_base_models_logprobs(tok):
    base = tiny_qwen2(tok, seed=0)
    ids, mask = _ids(tok)
    ref = _logprobs(base, ids, mask)
    ref_top = model_topk_logprobs(base, ids, mask, 3)
    model = apply_lora(base, LORA, "tiny")
    assert is_peft(model) and hf_module(model) is base  # adapters injected into the same module
    assert torch.equal(_logprobs(model, ids, mask), ref)  # B = 0: exactly the base, through the chunked path
    top = model_topk_logprobs(model, ids, mask, 3)
    assert torch.equal(top[0], ref_top[0]) and torch.equal(top[1], ref_top[1])
    _perturb_adapters(model)
    assert (_logprobs(model, ids, mask) - ref).abs().max() > 1e-3  # the adapters are on the log-prob path
    with adapters_disabled(model):
        assert torch.equal(_logprobs(model, ids, mask), ref)
    assert (_logprobs(model, ids, mask) - ref).abs().max() > 1e-3  # and back on after the block


def test_gradients_and_the_optimiser_reach_adapter_weights_only(tok):
    student = apply_lora(tiny_qwen2(tok, seed=0), LORA, "tiny")
    teacher = tiny_qwen2(tok, seed=1)
    base_before = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_" not in n}
    learner = Learner(student, AlgoConfig(name="opd"), TrainerConfig(lr=1e-2, total_steps=2))
    adapters = [p for n, p in student.named_parameters() if "lora_" in n]
    assert adapters and {id(p) for p in learner.params} == {id(p) for p in adapters}
    in_optimiser = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    assert in_optimiser == {id(p) for p in adapters}
    lora_b_before = [p.detach().clone() for n, p in student.named_parameters() if "lora_B" in n]

    batch = _batch(tok, student, teacher)
    logp = model_token_logprobs(student, batch.input_ids, batch.attention_mask)[0]
    (logp * batch.loss_mask).sum().backward()
    for name, p in student.named_parameters():
        if "lora_B" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif "lora_" not in name:
            assert p.grad is None, name  # no gradient is even computed for the frozen base
    student.zero_grad(set_to_none=True)

    metrics = learner.step(batch, 0)
    assert metrics["num_selected"] > 0
    lora_b_after = [p for n, p in student.named_parameters() if "lora_B" in n]
    assert any(not torch.equal(a, b) for a, b in zip(lora_b_before, lora_b_after))  # the adapters moved
    for name, p in student.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_before[name]), name  # the base did not


def test_vision_tower_adapters_follow_freeze_vision(tok):
    """peft also adapts the VL tower's MLP projections (same names); ``trainer.freeze_vision`` freezes them
    like the tower's own weights, so only the language model's adapters train."""
    from reopold_agents.tiny.vl import tiny_qwen2_5_vl

    model = apply_lora(tiny_qwen2_5_vl(tok, seed=0), LORA, "tiny_vl")
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("visual" in n and "lora_" in n for n in names.values())
    trained = [names[id(p)] for p in Learner(model, AlgoConfig(name="opd"), TrainerConfig()).params]
    assert trained and all("lora_" in n and "visual" not in n for n in trained)
    unfrozen = apply_lora(tiny_qwen2_5_vl(tok, seed=0), LORA, "tiny_vl")
    names = {id(p): n for n, p in unfrozen.named_parameters()}
    trained = [names[id(p)] for p in Learner(unfrozen, AlgoConfig(name="opd"), TrainerConfig(freeze_vision=False)).params]
    assert any("visual" in n for n in trained) and all("lora_" in n for n in trained)


def test_merged_weights_and_the_export_equal_the_adapted_model(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from reopold_agents.engines.vllm import _state_items, write_model_dir
    from reopold_agents.export_lora import main as export_main
    from reopold_agents.models import load_model

    model = apply_lora(tiny_qwen2(tok, seed=0), LORA, "tiny")
    _perturb_adapters(model)
    ids, mask = _ids(tok)
    adapted = _logprobs(model, ids, mask)

    # the vLLM sync (and a Ray rollout worker) load plain names with the adapters folded in
    state = merged_state_dict(model)
    assert not any("lora_" in k or "base_layer" in k for k in state)
    assert dict(_state_items(hf_module(model))).keys() == state.keys()
    plain = tiny_qwen2(tok, seed=5)
    plain.load_state_dict(state, strict=True)
    assert (_logprobs(plain, ids, mask) - adapted).abs().max() < 1e-5
    assert (_logprobs(model, ids, mask) - adapted).abs().max() == 0  # merging left the live model alone
    vllm_dir = write_model_dir(hf_module(model), tok, None)  # what vLLM starts from, for an in-memory student
    try:
        assert (_logprobs(AutoModelForCausalLM.from_pretrained(vllm_dir), ids, mask) - adapted).abs().max() < 1e-5
    finally:
        shutil.rmtree(vllm_dir)

    ckpt = save_checkpoint(tmp_path / "ckpts", 3, model, tokenizer=tok)
    assert {f.name for f in (ckpt / "model").glob("*.safetensors")} == {"adapter_model.safetensors"}
    out = tmp_path / "merged"
    # the base the run trained is recorded in the adapter config ("tiny" here would load the shipped pair,
    # not this random one, so it is named explicitly: --student with a saved folder)
    base_dir = tmp_path / "base"
    tiny_qwen2(tok, seed=0).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    assert export_main([str(tmp_path / "ckpts"), str(out), "--student", str(base_dir)]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    merged = load_model(str(out), "student", device="cpu")  # as model.student=<out> loads it
    assert (_logprobs(merged.model, ids, mask) - adapted).abs().max() < 1e-5
    assert export_main([str(ckpt), str(out)]) == 1  # refuses to write into a non-empty folder


def test_lora_checkpoint_errors_name_the_mismatch(tok, tmp_path):
    model = apply_lora(tiny_qwen2(tok, seed=0), LORA, "tiny")
    _perturb_adapters(model)
    ckpt = save_checkpoint(tmp_path, 1, model)
    saved = json.loads((ckpt / "model" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "tiny" and saved["r"] == 4

    fresh = apply_lora(tiny_qwen2(tok, seed=0), LORA, "tiny")
    load_checkpoint(ckpt, fresh)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(CheckpointError, match="model.lora.alpha"):
        load_checkpoint(ckpt, apply_lora(tiny_qwen2(tok, seed=0), LoraConfig(enabled=True, rank=4, alpha=4.0), "tiny"))
    with pytest.raises(CheckpointError, match="model.lora.rank"):
        load_checkpoint(ckpt, apply_lora(tiny_qwen2(tok, seed=0), LoraConfig(enabled=True, rank=2, alpha=8.0), "tiny"))
    with pytest.raises(CheckpointError, match="LoRA adapters, not full weights"):
        load_checkpoint(ckpt, tiny_qwen2(tok, seed=0))
    full = save_checkpoint(tmp_path / "full", 1, tiny_qwen2(tok, seed=0))
    with pytest.raises(CheckpointError, match="no LoRA adapters"):
        load_checkpoint(full, apply_lora(tiny_qwen2(tok, seed=0), LORA, "tiny"))


def test_config_errors_name_the_key(tok):
    for override, key in (("model.lora.rank=0", "model.lora.rank"), ("model.lora.alpha=-1", "model.lora.alpha"),
                          ("model.lora.dropout=1.5", "model.lora.dropout"),
                          ("model.lora.target_modules=[]", "model.lora.target_modules"),
                          ("model.lora.target_modules=[q_proj,q_proj]", "model.lora.target_modules"),
                          ("+model.lora.ranks=8", "model.lora.ranks")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            compose([override])
    cfg = compose(["model.lora.enabled=true", "model.lora.rank=8", "model.lora.target_modules=[q_proj,v_proj]"])
    assert cfg.model.lora == LoraConfig(enabled=True, rank=8, target_modules=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules: 'qkv' matches no linear layer"):
        apply_lora(tiny_qwen2(tok, seed=0), LoraConfig(enabled=True, target_modules=["q_proj", "qkv"]), "tiny")
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules: 'lm_head' is the LM head"):
        apply_lora(tiny_qwen2(tok, seed=0), LoraConfig(enabled=True, target_modules=["lm_head"]), "tiny")


SMALL = ["env=math", "trainer.prompts_per_step=2", "trainer.group_size=2", "engine.sampling.max_new_tokens=12",
         "env.max_turns=2", "trainer.heldout_tasks=4", "model.lora.enabled=true", "model.lora.rank=4",
         "trainer.lr=1e-2"]


def test_teacher_self_scores_with_the_frozen_base_of_the_one_student_module(tmp_path):
    from reopold_agents.distributed.local import LocalBackend

    cfg = resolve_tiny(compose([*SMALL, "model.teacher=self", f"trainer.output_dir={tmp_path}"]))
    backend = LocalBackend(cfg)
    try:
        student = backend.learner.model
        assert is_peft(student)
        (scorer,) = backend.teacher.router.teachers.values()
        assert scorer.model is hf_module(student)  # no second copy: the learner's own module
        assert backend.worker.engine.model is hf_module(student)  # the rollout shares it too
        ptrs = lambda m: {p.data_ptr() for p in m.parameters()}  # noqa: E731
        assert ptrs(scorer.model) <= ptrs(student)

        _perturb_adapters(student, scale=0.05)  # as after training
        tok = backend.learner.tokenizer
        ids, mask = _ids(tok)
        lm = mask.clone().float()
        lm[:, :4] = 0
        batch = Batch(ids, mask, lm, torch.zeros(lm.shape), None, torch.zeros(3), torch.arange(3),
                      entries=["math"] * 3)
        with adapters_disabled(student):
            base = _logprobs(student, ids, mask)
        adapted = _logprobs(student, ids, mask)
        assert (adapted - base).abs().max() > 1e-3
        scores = backend.score(batch)
        want = torch.where(lm > 0, base, torch.zeros(()))
        assert torch.allclose(scores.logprobs, want, atol=1e-6, rtol=0)  # the frozen base
        assert (scores.logprobs - torch.where(lm > 0, adapted, torch.zeros(()))).abs().max() > 1e-3
        assert torch.equal(_logprobs(student, ids, mask), adapted)  # adapters back on for the learner
        # the teacher's held-out success is the base student's (greedy, same tasks), adapters back on after
        teacher_success = backend.teacher.heldout_success()["eval/teacher/success"]
        with adapters_disabled(student):
            assert backend.worker.evaluate(0)["eval/success"] == teacher_success
        assert torch.equal(_logprobs(student, ids, mask), adapted)
    finally:
        backend.shutdown()


def _adapters(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model" / "adapter_model.safetensors"))


def test_lora_checkpoint_resumes_bit_identically(tmp_path):
    """Two LoRA steps in one go == one step, a crash, a resume from the step-1 checkpoint and one more step."""
    extra = ["trainer.total_steps=2", "trainer.save_every=1", "trainer.keep_checkpoints=5", "trainer.eval_teacher=false"]
    full = run_mod.train(compose([*SMALL, *extra, f"trainer.output_dir={tmp_path / 'full'}"]), progress=False)

    class Crash(RuntimeError):
        pass

    def crash(result):
        if result.step + 1 == 2:
            raise Crash("simulated crash after step 2 (last checkpoint: step 1)")

    crash_cfg = [*SMALL, *extra, f"trainer.output_dir={tmp_path / 'crash'}"]
    with pytest.raises(Crash):
        run_mod.train(compose(crash_cfg), progress=False, on_step=crash)
    ran: list[int] = []
    resumed = run_mod.train(compose([*crash_cfg, "trainer.resume=true"]), progress=False,
                            on_step=lambda result: ran.append(result.step))
    assert ran == [1]  # it resumed from the step-1 checkpoint (adapters, optimiser, RNG), not from scratch

    ckpts = Path(full.output_dir) / "checkpoints"
    step2 = ckpts / "step_00000002"
    assert not list((step2 / "model").glob("model*.safetensors"))  # adapters only, no full weights
    a, b = _adapters(step2), _adapters(Path(resumed.output_dir) / "checkpoints" / "step_00000002")
    first = _adapters(ckpts / "step_00000001")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], first[k]) for k in a)  # step 2 trained the adapters
    timing = lambda k: k.startswith("perf/") or k.endswith("/score_s")  # noqa: E731
    strip = lambda recs: [{k: v for k, v in r.items() if not timing(k)} for r in recs]  # noqa: E731
    assert strip(read_metrics(full.output_dir)) == strip(read_metrics(resumed.output_dir))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vllm_engine_loads_lora_adapters_merged(tok):
    """vLLM serves the plain architecture; ``load_weights`` of a LoRA student folds the adapters in, so its
    scores follow the adapted model (bf16 tolerances, as tests/test_gpu.py)."""
    pytest.importorskip("vllm")
    from reopold_agents.config.engine import EngineConfig
    from reopold_agents.engines import GenerationRequest, make_engine
    from reopold_agents.engines.hf import HFEngine

    base = tiny_qwen2(tok, seed=0, num_heads=2, num_kv_heads=1).to("cuda", torch.bfloat16)
    model = apply_lora(base, LORA, "tiny")  # fresh adapters: vLLM starts from the merged (= base) weights
    engine = make_engine(EngineConfig(name="vllm", gpu_memory_utilization=0.25, max_model_len=2048, max_new_tokens=8),
                         model=hf_module(model), tokenizer=tok)
    try:
        _perturb_adapters(model, scale=0.1)
        ids, _ = _ids(tok, bsz=3, length=40)
        reqs = [GenerationRequest(row.tolist()) for row in ids]
        adapted = HFEngine(hf_module(model), tok).score(reqs)
        with adapters_disabled(model):
            plain = HFEngine(hf_module(model), tok).score(reqs)

        def diff(x, y):
            pairs = [(a, b) for ra, rb in zip(x, y) for a, b in zip(ra[1:], rb[1:])]
            return sum(abs(a - b) for a, b in pairs) / len(pairs)

        before = diff(engine.score(reqs), plain)
        engine.load_weights(hf_module(model))
        after = diff(engine.score(reqs), adapted)
        assert before < 0.05 and after < 0.05, (before, after)
        assert diff(adapted, plain) > 4 * 0.05  # the adapters matter, so the sync is seen
    finally:
        engine.close()
