"""Self-distillation: ``model.teacher=self`` (a frozen copy of the initial student) and a privileged-context
teacher (``model.teacher_context``) that reads a system turn with the task's answer before scoring."""

from __future__ import annotations

import torch

import reopold_agents.run as run_mod
from reopold_agents.config import compose


def _run(tmp_path, name, *extra):
    """The run's one step (its episodes and scored batch)."""
    seen = []
    cfg = compose(["env=math", "model.teacher=self", "trainer.total_steps=1", "trainer.prompts_per_step=4",
                   "trainer.group_size=2", "trainer.heldout_tasks=2", "trainer.eval_every=0",
                   "trainer.save_every=0", "engine.sampling.max_new_tokens=16", "env.max_turns=1",
                   f"trainer.output_dir={tmp_path / name}", *extra])
    run_mod.train(cfg, progress=False, on_step=seen.append)
    (result,) = seen
    return result


def test_self_teacher_gives_zero_reward_without_context(tmp_path):
    torch.set_num_threads(1)
    res = _run(tmp_path, "plain")
    b = res.batch
    reward = (b.teacher_logprobs - b.old_logprobs)[b.loss_mask > 0]
    assert reward.numel() > 0 and reward.abs().max() < 1e-3  # the teacher is the sampling policy itself


def test_privileged_context_teacher_scores_with_the_answer_in_front(tmp_path):
    from reopold_agents.config.tiny_pairs import ENV_TINY
    from reopold_agents.logprobs import model_token_logprobs
    from reopold_agents.tiny.load import load_tiny

    torch.set_num_threads(1)
    ctx = "The correct final answer is {answer}."
    res = _run(tmp_path, "ctx", f"model.teacher_context='{ctx}'")
    b = res.batch
    reward = (b.teacher_logprobs - b.old_logprobs)[b.loss_mask > 0]
    assert reward.abs().max() > 1e-3  # the context changed the teacher's view
    model, tok, _, _ = load_tiny(ENV_TINY["math"], "student")  # the run's initial student == the self teacher
    for row, traj in enumerate(res.trajectories[:2]):
        text = tok.apply_chat_template([{"role": "system", "content": ctx.format(answer=traj.info["answer"])}],
                                       tokenize=False, add_generation_prompt=False)
        prefix = tok(text, add_special_tokens=False)["input_ids"]
        assert str(traj.info["answer"]) in tok.decode(prefix)
        n = len(traj)
        ids = torch.tensor([prefix + traj.token_ids])
        with torch.no_grad():
            lp, _ = model_token_logprobs(model.eval(), ids, torch.ones_like(ids))
        ref = lp[0, len(prefix):] * b.loss_mask[row, :n]
        assert torch.allclose(b.teacher_logprobs[row, :n], ref, atol=1e-4)


def test_bad_context_field_fails_at_start_up():
    import pytest

    from reopold_agents.config.schema import ConfigError

    with pytest.raises(ConfigError, match="model.teacher_context"):
        compose(["model.teacher=self", "model.teacher_context='{nope}'"])
