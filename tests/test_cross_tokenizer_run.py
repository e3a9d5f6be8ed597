"""A cross-tokenizer run end to end: ``python -m reopold_agents.run`` with a teacher whose tokenizer differs.

Nothing is configured for it: ``build_teacher`` detects the mismatch and returns the cross-tokenizer
scorer; two toolqa steps train through the one training step (``reopold_agents/step.py``), the rewards
of every scored turn sum to the teacher's minus the student's log-prob of that turn's text, and the
run's checkpoint comes out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _second_tokenizer import second_tokenizer  # noqa: E402

import reopold_agents.run as run_mod  # noqa: E402
from reopold_agents.config import compose  # noqa: E402


def _save(model, tok, path: Path) -> str:
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def test_run_with_a_teacher_of_another_tokenizer(tmp_path, monkeypatch):
    # A Llama-type teacher: transformers 5 loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer whatever was
    # saved, which rebuilds byte-level pre-tokenization and drops every space of this SentencePiece-style one
    # (the preflight's chat-template check fails on it); a llama checkpoint keeps the saved tokenizer.
    from transformers import LlamaConfig, LlamaForCausalLM

    import reopold_agents.teacher.build as build_mod
    from reopold_agents.teacher import CrossTokenizerTeacher, teacher_label
    from reopold_agents.tiny.load import load_tiny

    torch.set_num_threads(1)
    student, tok, _, _ = load_tiny("tiny_toolqa", "student")
    tok2 = second_tokenizer()
    torch.manual_seed(3)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok2), hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                           eos_token_id=tok2.eos_token_id, pad_token_id=tok2.pad_token_id))
    student_dir, teacher_dir = _save(student, tok, tmp_path / "student"), _save(teacher, tok2, tmp_path / "teacher")

    seen = []
    built = []
    original_build = build_mod.build_teacher  # the router builds each teacher through it
    monkeypatch.setattr(build_mod, "build_teacher", lambda *a, **k: built.append(original_build(*a, **k)) or built[-1])
    cfg = compose(["env=toolqa", f"model.student={student_dir}", f"model.teacher={teacher_dir}",
                   "trainer.total_steps=2", "trainer.prompts_per_step=2", "trainer.group_size=2",
                   "trainer.heldout_tasks=2", "trainer.eval_every=0", "trainer.save_every=0",
                   "engine.sampling.max_new_tokens=16", "env.max_turns=2", f"trainer.output_dir={tmp_path / 'run'}"])
    result = run_mod.train(cfg, progress=False, on_step=seen.append)
    assert isinstance(built[0], CrossTokenizerTeacher)
    assert (Path(result.output_dir) / "checkpoints" / "step_00000002").is_dir()
    assert len(seen) == 2
    scored_turns = 0
    for res in seen:
        batch = res.batch
        reward = (batch.teacher_logprobs - batch.old_logprobs) * batch.loss_mask
        assert torch.isfinite(reward).all()
        assert batch.teachers == [teacher_label(teacher_dir)] * len(batch)  # every row scored by the teacher
        masked = res.metrics["teacher/masked_turns"]  # turns the teacher could not align (out of the loss)
        assert masked == int(masked) and 0 <= masked <= sum(len(t.turns) for t in res.trajectories)
        assert len(res.trajectories) == len(batch)
        for row in range(len(batch)):
            if batch.loss_mask[row].sum() > 0:
                scored_turns += 1
                # off the student's (unmasked) tokens the teacher wrote nothing
                off = batch.loss_mask[row] == 0
                assert (batch.teacher_logprobs[row][off] == 0).all()
        assert res.metrics["num_tokens"] == float(batch.loss_mask.sum())
    assert scored_turns > 0
