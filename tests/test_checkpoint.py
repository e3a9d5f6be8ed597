"""Checkpoint/resume: bit-identical parameters and losses vs an uninterrupted run; atomic, keep-last-N."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from reopold_agents.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import Learner
from reopold_agents.logprobs import model_token_logprobs
from reopold_agents.tiny import tiny_qwen2
from reopold_agents.trajectory import Batch

TOTAL = 6


pytestmark = pytest.mark.usefixtures("one_thread")


def _make_batch(tok, student, teacher, data_pos):
    """A batch that depends on every RNG the run uses (python, numpy, torch) and on the data position."""
    bsz, length = 4, 16
    ids = torch.randint(10, len(tok), (bsz, length))
    ids[:, 1] = data_pos * 7 + random.randint(10, 20) + int(np.random.randint(0, 5))
    am = torch.ones_like(ids)
    lm = torch.zeros(bsz, length)
    lm[:, 5:] = 1
    with torch.no_grad():
        old, _ = model_token_logprobs(student, ids, am)
        tea, _ = model_token_logprobs(teacher, ids, am)
    return Batch(ids, am, lm, old * lm, tea * lm, torch.rand(bsz), torch.tensor([0, 0, 1, 1]))


def _trainer():
    return TrainerConfig(lr=2e-3, warmup_steps=2, lr_schedule="cosine", total_steps=TOTAL, ppo_epochs=2, num_minibatches=2)


def _run(tok, teacher, start, stop, ckpt_dir=None, save_at=None, resume_from=None):
    student = tiny_qwen2(tok, seed=0)
    learner = Learner(student, AlgoConfig(name="reopold"), _trainer())
    data_pos = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, student, learner.optimizer, learner.scheduler)
        assert state.step == start
        data_pos = state.data_state["pos"]
    losses = []
    for step in range(start, stop):
        batch = _make_batch(tok, student, teacher, data_pos)
        data_pos += 1
        losses.append(learner.step(batch, step)["loss"])
        if save_at is not None and step + 1 == save_at:
            save_checkpoint(ckpt_dir, step + 1, student, learner.optimizer, learner.scheduler, tokenizer=tok,
                            data_state={"pos": data_pos})
            # whatever the process does after saving must not leak into the resumed run
            torch.rand(100), random.random(), np.random.rand()
    return student, losses


def test_resume_is_bit_identical(tok, tmp_path):
    teacher = tiny_qwen2(tok, seed=1)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    full, full_losses = _run(tok, teacher, 0, TOTAL)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    _, first_losses = _run(tok, teacher, 0, 3, ckpt_dir=tmp_path, save_at=3)
    torch.manual_seed(999), random.seed(999), np.random.seed(999)  # a fresh process has other RNG states
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step_00000003"
    resumed, rest_losses = _run(tok, teacher, 3, TOTAL, resume_from=ckpt)
    assert first_losses + rest_losses == full_losses
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_layout_keep_last_and_atomicity(tok, tmp_path):
    model = tiny_qwen2(tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in (1, 2, 3):
        path = save_checkpoint(tmp_path, step, model, opt, tokenizer=tok, data_state={"epoch": 0, "pos": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert (path / "model" / "model.safetensors").is_file() and (path / "model" / "tokenizer.json").is_file()
    assert json.loads((path / "state.json").read_text())["data_state"] == {"epoch": 0, "pos": 3}
    assert not list(tmp_path.glob(".tmp-*"))
    # a half-written folder (no state.json) is never picked
    (tmp_path / "step_00000009" / "model").mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_checkpoint(tmp_path / "step_00000009")
    # the saved folder is a normal HF model directory
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(path / "model"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_failed_save_leaves_no_checkpoint(tok, tmp_path):
    model = tiny_qwen2(tok, seed=0)

    class Broken:
        def state_dict(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 5, model, scheduler=Broken())
    assert latest_checkpoint(tmp_path) is None and not list(tmp_path.iterdir())


def test_load_into_wrong_model_fails_naming_weights(tok, tmp_path):
    path = save_checkpoint(tmp_path, 1, tiny_qwen2(tok, seed=0))
    other = tiny_qwen2(tok, seed=0, num_layers=3)
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(path, other)
