"""Checkpoints verify content: a sha256 per file is written at save and checked at resume.

Before: same-size damage (NaN written over the newest weights) passed verification, and resume loaded
it; with every checkpoint damaged `latest_checkpoint` returned None, which a run takes as "start over".
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch

from reopold_agents.checkpoint import CheckpointError, file_sha256, latest_checkpoint, load_checkpoint, save_checkpoint
from reopold_agents.tiny import tiny_qwen2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def two_checkpoints(tok, tmp_path):
    model = tiny_qwen2(tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    old = save_checkpoint(tmp_path, 1, model, opt, tokenizer=tok, data_state={"pos": 1}, keep_last=3)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    new = save_checkpoint(tmp_path, 2, model, opt, tokenizer=tok, data_state={"pos": 2}, keep_last=3)
    return tmp_path, old, new, model, opt


def _nan_over_weights(ckpt: Path) -> Path:
    """Overwrite the first tensor's bytes with float32 NaN: same size, header intact."""
    f = ckpt / "model" / "model.safetensors"
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    nan = struct.pack("<f", float("nan"))
    for i in range(8 + n, 8 + n + 4096, 4):
        data[i:i + 4] = nan
    size = f.stat().st_size
    f.write_bytes(bytes(data))
    assert f.stat().st_size == size
    return f


def test_every_file_has_its_sha256_in_state_json(two_checkpoints):
    _, _, new, *_ = two_checkpoints
    state = json.loads((new / "state.json").read_text())
    assert set(state["sha256"]) == set(state["files"]) and "model/model.safetensors" in state["sha256"]
    assert "trainer_state.pt" in state["sha256"] and "model/tokenizer.json" in state["sha256"]
    for rel, digest in state["sha256"].items():
        assert file_sha256(new / rel) == digest


def test_nan_over_the_newest_weights_falls_back_naming_the_file(two_checkpoints, caplog):
    root, old, new, model, opt = two_checkpoints
    damaged = _nan_over_weights(new)
    with caplog.at_level(logging.WARNING, logger="reopold_agents.checkpoint"):
        assert latest_checkpoint(root) == old
    warning = next(r.getMessage() for r in caplog.records if str(new) in r.getMessage())
    assert str(damaged) in warning and "sha256" in warning
    assert json.loads((new / "state.json").read_text())["sha256"]["model/model.safetensors"] in warning
    state = load_checkpoint(latest_checkpoint(root), model, opt)
    assert state.step == 1 and state.data_state == {"pos": 1}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(CheckpointError, match="content differs from the save") as info:
        load_checkpoint(new, model, opt)  # asked for by path: named, not loaded
    assert str(damaged) in str(info.value)


def test_same_size_damage_to_trainer_state_or_tokenizer_is_found(two_checkpoints):
    root, old, new, *_ = two_checkpoints
    f = new / "model" / "tokenizer.json"
    text = f.read_text()
    f.write_text(text.replace('"', "'", 1))  # same length, different bytes
    assert latest_checkpoint(root) == old


def test_both_damaged_is_a_clear_error(two_checkpoints):
    root, old, new, *_ = two_checkpoints
    _nan_over_weights(old)
    _nan_over_weights(new)
    with pytest.raises(CheckpointError, match="every checkpoint is damaged") as info:
        latest_checkpoint(root)
    msg = str(info.value)
    assert str(root) in msg and msg.count("model.safetensors: content differs from the save") == 2


def test_checkpoint_without_checksums_is_accepted_with_a_warning(two_checkpoints, caplog):
    """Saved before checksums existed: the other checks still run, and a warning says content is unchecked."""
    root, old, new, model, opt = two_checkpoints
    state_file = new / "state.json"
    state = json.loads(state_file.read_text())
    del state["sha256"]
    state_file.write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="reopold_agents.checkpoint"):
        assert latest_checkpoint(root) == new
    assert any("without checksums" in r.getMessage() and str(new) in r.getMessage() for r in caplog.records)
    assert load_checkpoint(new, model, opt).step == 2
