"""The preflight (reopold_agents/preflight.py): each check made to fail by one deliberate fault, and the real
tiny pair passing all of them, through the backend and in a real run's output.

Real tiny models and tokenizers throughout; the faults are the only doubles: a teacher tokenizer with
another EOS, a template that drops tool calls, a stop id the template never writes, a teacher with noise
on its hidden states, a learner with perturbed weights, engine log-probs at the sampling temperature.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import reopold_agents.preflight as pf
import reopold_agents.run as run_mod
from reopold_agents.config.schema import resolve_tiny
from reopold_agents.chat import encode_prompt
from reopold_agents.config import compose
from reopold_agents.config.model import ModelConfig
from reopold_agents.engines.base import GenerationRequest, SamplingParams
from reopold_agents.engines.hf import HFEngine
from reopold_agents.logprobs import model_token_logprobs
from reopold_agents.rollout import tool_call_stop_ids
from reopold_agents.tiny.load import load_tiny
from reopold_agents.trajectory import Batch, Trajectory, collate

SMALL = ["trainer.prompts_per_step=2", "trainer.group_size=2", "engine.sampling.max_new_tokens=12",
         "trainer.heldout_tasks=2", "trainer.save_every=0", "trainer.eval_every=0"]


@pytest.fixture(scope="module")
def pair(one_thread):
    student, tok, _, _ = load_tiny("tiny", "student")
    teacher = load_tiny("tiny", "teacher")[0]
    return student, teacher, tok


def _probe(student, tok, temperature: float = 1.0) -> Batch:
    """Two sampled replies of the real student to a math prompt, as a collated batch with engine log-probs."""
    prompt = encode_prompt(tok, [{"role": "user", "content": "What is 17 + 25? Answer as \\boxed{...}."}]).ids
    engine = HFEngine(student, tok)
    gens = engine.generate([GenerationRequest(prompt), GenerationRequest(prompt)],
                           SamplingParams(max_new_tokens=16, temperature=temperature, seed=3))
    trajs = []
    for gen in gens:
        traj = Trajectory()
        traj.append_env(prompt)
        traj.append_generated(gen.token_ids, gen.logprobs)
        trajs.append(traj)
    return collate(trajs, tok.pad_token_id)


def _scored(teacher, batch: Batch) -> Batch:
    """``batch`` with the teacher's scores written in (as the training step does)."""
    return teacher.score(batch).apply_to(batch)


def _learner_lp(model, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        return model_token_logprobs(model, batch.input_ids, batch.attention_mask, target_mask=batch.loss_mask,
                                    temperature=temperature)[0]


# ------------------------------------------------------------------------------------- tokenizers


def test_tokenizers_with_another_eos_fail_without_the_cross_path(tok):
    other = copy.deepcopy(tok)
    other.eos_token = "<|endoftext|>"  # same vocabulary, another special token
    hf = compose(["env=math"])
    vllm = replace(hf, model=ModelConfig(teacher_engine="vllm"))  # vLLM scores the student's ids: no cross path
    result = pf.check_tokenizers(vllm, tok, other, 0)
    assert result.status == "fail" and "eos_token differs" in result.detail and "teacher_engine=vllm" in result.detail
    gkd = pf.check_tokenizers(hf, tok, other, 4)  # gkd cannot cross either
    assert gkd.status == "fail" and "top-k" in gkd.detail
    crossed = pf.check_tokenizers(hf, tok, other, 0)
    assert crossed.status == "ok" and "cross-tokenizer" in crossed.detail
    other.chat_template = None  # the cross path renders the conversation with the teacher's own template
    assert pf.check_tokenizers(hf, tok, other, 0).status == "fail"
    assert pf.check_tokenizers(vllm, tok, copy.deepcopy(tok), 0).status == "ok"
    assert pf.check_tokenizers(vllm, tok, None, 0).status == "skip"  # no teacher (grpo)


# ---------------------------------------------------------------------------------- chat template


def test_template_that_drops_the_tool_call_fails(tok):
    assert pf.check_chat_template(tok).status == "ok"
    bad = copy.deepcopy(tok)
    assert "{{ text }}" in tok.chat_template
    bad.chat_template = tok.chat_template.replace("{{ text }}", "{{ text.split('<tool_call>')[0] }}")
    result = pf.check_chat_template(bad)
    assert result.status == "fail" and "tool call" in result.detail
    # A cross-tokenizer teacher whose template loses the call would never score the tool-call turn.
    teacher = pf.check_chat_template(tok, teacher=bad)
    assert teacher.status == "fail" and "teacher" in teacher.detail


def test_template_rendering_history_unlike_the_rollout_fails(tok):
    """The rollout encodes turn by turn and never re-renders the prompt; a template whose earlier text
    depends on later turns (here: the system prompt once the conversation goes on) reads back otherwise."""
    bad = copy.deepcopy(tok)
    bad.chat_template = tok.chat_template.replace("{{ system_text }}",
                                                  "{{ system_text }}{% if messages|length > 2 %} (cont.){% endif %}")
    assert bad.chat_template != tok.chat_template
    result = pf.check_chat_template(bad)
    assert result.status == "fail" and "differ at char" in result.detail


def test_template_that_hides_the_tool_schemas_fails(tok):
    prompt, tools, _, _ = pf.probe_conversation()

    def read(t) -> Trajectory:  # the prompt the student reads, as an env's reset gives it
        traj = Trajectory(tools=tools)
        traj.append_env(encode_prompt(t, prompt, tools).ids)
        return traj

    assert pf.check_tool_schemas(tok, read(tok)).status == "ok"
    blind = copy.deepcopy(tok)
    start, end = tok.chat_template.index("{%- if tools %}"), tok.chat_template.index("</tools>")
    rest = tok.chat_template[end + len("</tools>"):].replace("{%- endif %}", "", 1)  # the block's own endif
    blind.chat_template = tok.chat_template[:start] + rest
    result = pf.check_tool_schemas(blind, read(blind))
    assert result.status == "fail" and "calculator" in result.detail
    assert pf.check_tool_schemas(tok, Trajectory(token_ids=[1], loss_mask=[0])).status == "skip"  # no tools


# ------------------------------------------------------------------------------------ stop tokens


def test_stop_token_the_template_never_writes_fails(tok):
    assert pf.check_stop_tokens(tok, tool_call_stop_ids(tok)).status == "ok"
    think = tok.convert_tokens_to_ids("<think>")
    result = pf.check_stop_tokens(tok, [*tool_call_stop_ids(tok), think])
    assert result.status == "fail" and "'<think>'" in result.detail


def test_eos_that_is_not_the_templates_end_of_turn_fails(tok):
    base_like = copy.deepcopy(tok)
    base_like.eos_token = "<|endoftext|>"  # a base model's EOS; the chat template closes turns with <|im_end|>
    result = pf.check_stop_tokens(base_like, tool_call_stop_ids(base_like))
    assert result.status == "fail" and "'<|im_end|>'" in result.detail


# ---------------------------------------------------------------------------- teacher determinism


def test_noisy_teacher_fails_determinism(pair):
    from reopold_agents.teacher import Teacher

    student, teacher_model, tok = pair
    batch = _probe(student, tok)
    teacher = Teacher(tok, model=teacher_model)
    tol = pf.TEACHER_TOL["full"]
    same = pf.check_teacher_determinism(_scored(teacher, copy.deepcopy(batch)), _scored(teacher, copy.deepcopy(batch)), tol)
    assert same.status == "ok" and same.value == 0.0

    def noise(module, args, out):  # dropout left on, in effect: the hidden states differ call to call
        out.last_hidden_state = out.last_hidden_state + 1e-2 * torch.randn_like(out.last_hidden_state)
        return out

    hook = teacher_model.model.register_forward_hook(noise)
    try:
        first, second = _scored(teacher, copy.deepcopy(batch)), _scored(teacher, copy.deepcopy(batch))
        noisy = pf.check_teacher_determinism(first, second, tol)
    finally:
        hook.remove()
    assert noisy.status == "fail" and noisy.value > tol
    assert pf.check_teacher_determinism(batch, batch, tol).status == "skip"  # no teacher scores


def test_non_finite_teacher_scores_fail_naming_it(pair):
    from reopold_agents.teacher import Teacher

    student, teacher_model, tok = pair
    scored = _scored(Teacher(tok, model=teacher_model), _probe(student, tok))
    trained = scored.loss_mask > 0
    scored.teacher_logprobs = torch.where(trained, torch.full_like(scored.teacher_logprobs, float("-inf")),
                                          scored.teacher_logprobs)
    result = pf.check_teacher_determinism(scored, copy.deepcopy(scored), pf.TEACHER_TOL["full"])
    assert result.status == "fail" and "not finite" in result.detail and str(int(trained.sum())) in result.detail


# ------------------------------------------------------------------------------ learner vs engine


def test_learner_with_other_weights_fails_unless_recomputed(pair):
    from reopold_agents.config.algo import AlgoConfig
    from reopold_agents.config.trainer import TrainerConfig
    from reopold_agents.learner import Learner

    student, _, tok = pair
    batch = _probe(student, tok)
    tol = pf.LEARNER_TOL["full"]
    own = Learner(student, AlgoConfig(), TrainerConfig()).token_logprobs(batch)  # the learner's own path
    ok = pf.check_learner_engine(batch, own, recompute=False, tol=tol)
    assert ok.status == "ok" and ok.value < tol
    perturbed = copy.deepcopy(student)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.02 * torch.randn_like(p))
    lp = _learner_lp(perturbed, batch)
    bad = pf.check_learner_engine(batch, lp, recompute=False, tol=tol)
    assert bad.status == "fail" and bad.value > tol and "recompute_old_logprobs" in bad.fix
    assert pf.check_learner_engine(batch, lp, recompute=True, tol=tol).status == "warn"


# ------------------------------------------------------------------------------------ temperature


def test_temperature_scaled_log_probs_match_a_brute_force_reference(pair):
    student, _, tok = pair
    batch = _probe(student, tok)
    with torch.no_grad():
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    ref = torch.log_softmax(logits[:, :-1] / 0.7, dim=-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    got = _learner_lp(student, batch, temperature=0.7)[:, 1:].double()
    mask = batch.loss_mask[:, 1:] > 0
    assert torch.allclose(got[mask], ref[mask], atol=1e-5)
    assert not torch.allclose(got[mask], _learner_lp(student, batch)[:, 1:].double()[mask], atol=1e-3)


def test_engine_log_probs_at_the_sampling_temperature_fail(pair):
    student, _, tok = pair
    t = 0.7
    batch = _probe(student, tok, temperature=t)  # the real engine samples at T but records raw T=1 log-probs
    lp1, lpt = _learner_lp(student, batch), _learner_lp(student, batch, temperature=t)
    ok = pf.check_temperature(batch, lp1, lpt, t, recompute=False, tis_cap=0.0)
    assert ok.status == "ok" and ok.value == t
    scaled = replace(batch, old_logprobs=lpt.clone())  # an engine that returns log-probs at the temperature
    bad = pf.check_temperature(scaled, lp1, lpt, t, recompute=False, tis_cap=0.0)
    assert bad.status == "fail" and "T=0.7 distribution" in bad.detail
    assert pf.check_temperature(scaled, lp1, lpt, t, recompute=True, tis_cap=0.0).status == "warn"
    assert pf.check_temperature(scaled, lp1, lpt, t, recompute=True, tis_cap=2.0).status == "fail"  # TIS weights
    assert pf.check_temperature(batch, lp1, None, 1.0, recompute=False, tis_cap=0.0).status == "ok"


def test_tolerances_follow_the_precision_the_models_run_in():
    def half(*overrides: str, learner: bool = True) -> bool:
        return pf.half_precision(compose(["env=math", *overrides]), learner=learner)

    assert not half("model.dtype=float32") and half("model.dtype=bfloat16")
    assert half("distributed.mixed_precision=bf16") and not half("distributed.mixed_precision=bf16", learner=False)
    assert half("model.dtype=auto", "model.device=cuda") and not half("model.dtype=auto", "model.device=cpu")
    # dtype=auto on Ray GPU roles is bf16 there, whatever the driver has
    assert half("model.dtype=auto", "distributed=ray", "distributed.ray.gpus_per_learner=1")


# -------------------------------------------------------------------------------- the whole thing


def test_tiny_pair_passes_through_the_local_backend(tmp_path, one_thread):
    from reopold_agents.distributed import make_backend
    from reopold_agents.distributed.chunks import make_chunks

    cfg = resolve_tiny(compose([*SMALL, "env=math", "engine.sampling.max_new_tokens=64",
                                        f"trainer.output_dir={tmp_path}"]))
    backend = make_backend(cfg)
    tasks = [{"env": "math", "options": {"task_index": 0}}]
    try:
        chunk = make_chunks(tasks, len(tasks), cfg.trainer.seed, 0)[0]
        probe, _ = backend.ask("rollout", "run", chunk, max_new_tokens=5, group_size=2)
        assert len(probe) == 2 and all(turn["num_generated"] <= 5 for t in probe for turn in t.turns)
        lines: list[str] = []
        results = pf.run_preflight(cfg, backend, tasks, emit=lines.append)
        engine = backend.worker.engine
        assert not engine._kv.entries  # the probe left no cached key/values for step 0 to reuse
    finally:
        backend.shutdown()
    assert [r.name for r in results] == ["tokenizers", "chat template", "stop tokens", "tool schemas",
                                         "teacher determinism", "learner vs engine", "temperature"]
    by_name = {r.name: r for r in results}
    assert by_name.pop("tool schemas").status == "skip"  # math offers no tools
    assert all(r.status == "ok" for r in by_name.values()), pf.format_table(results)
    assert by_name["teacher determinism"].value == 0.0 and by_name["learner vs engine"].value < pf.LEARNER_TOL["full"]
    assert lines and lines[0].startswith("preflight") and "6 ok, 1 skip" in lines[0]


def test_run_prints_the_table_before_training(tmp_path, capsys, one_thread):
    """toolqa: the env's tools reach the prompt, so every check runs and passes."""
    cfg = compose([*SMALL, "env=toolqa", "trainer.total_steps=1", f"trainer.output_dir={tmp_path / 'run'}"])
    run_mod.train(cfg, progress=False)
    out = capsys.readouterr().out
    assert out.index("preflight (") < out.index("held-out success")
    for name in ("tokenizers", "chat template", "stop tokens", "tool schemas", "teacher determinism",
                 "learner vs engine", "temperature"):
        assert f"  {name} " in out
    assert "  7 ok\n" in out


def test_run_with_a_failing_check_stops_before_the_probe(tmp_path, capsys, one_thread):
    """A student saved with a base model's EOS (the template still closes turns with <|im_end|>): the run
    stops at the preflight, naming the checks, before any probe rollout or step."""
    student, tok, _, _ = load_tiny("tiny", "student")
    tok = copy.deepcopy(tok)
    tok.eos_token = "<|endoftext|>"
    student.save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    cfg = compose([*SMALL, "env=math", f"model.student={tmp_path / 'student'}", "model.teacher=self",
                   "trainer.total_steps=1", f"trainer.output_dir={tmp_path / 'run'}"])
    with pytest.raises(pf.PreflightError, match="stop tokens") as info:
        run_mod.train(cfg, progress=False)
    assert {r.name for r in info.value.failed} >= {"stop tokens"}
    out = capsys.readouterr().out
    assert "teacher determinism" not in out  # tokenizer-level failures stop before the model-level probe
    assert not (tmp_path / "run" / "checkpoints").exists()
