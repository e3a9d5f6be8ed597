"""Resume after damage: a corrupt newest checkpoint falls back (logged) or fails naming the file,
temp folders of a save killed midway are cleaned, and metrics stay one record per step."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reopold_agents.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temp_dirs,
    save_checkpoint,
    verify_checkpoint,
)
from reopold_agents.metrics import MetricsLogger, read_metrics
from reopold_agents.tiny import tiny_qwen2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def two_checkpoints(tok, tmp_path):
    model = tiny_qwen2(tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    old = save_checkpoint(tmp_path, 1, model, opt, data_state={"pos": 1}, keep_last=3)
    new = save_checkpoint(tmp_path, 2, model, opt, data_state={"pos": 2}, keep_last=3)
    return tmp_path, old, new, model, opt


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


DAMAGE = {
    "weights_truncated": lambda c: _truncate(c / "model" / "model.safetensors", 1000),
    "weights_header_garbage": lambda c: (c / "model" / "model.safetensors").write_bytes(b"\xff" * 64),
    "weights_deleted": lambda c: (c / "model" / "model.safetensors").unlink(),
    "trainer_state_truncated": lambda c: _truncate(c / "trainer_state.pt", 200),
    "trainer_state_garbage": lambda c: (c / "trainer_state.pt").write_bytes(b"not a zip" * 100),
    "state_json_garbage": lambda c: (c / "state.json").write_text("{not json"),
    "state_json_wrong_step": lambda c: (c / "state.json").write_text(
        json.dumps({**json.loads((c / "state.json").read_text()), "step": 7})),
    "config_deleted": lambda c: (c / "model" / "config.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_with_a_log_line(two_checkpoints, damage, caplog):
    root, old, new, model, opt = two_checkpoints
    DAMAGE[damage](new)
    with caplog.at_level(logging.WARNING, logger="reopold_agents.checkpoint"):
        assert latest_checkpoint(root) == old
    assert any(str(new) in r.getMessage() for r in caplog.records), caplog.text
    state = load_checkpoint(latest_checkpoint(root), model, opt)
    assert state.step == 1 and state.data_state == {"pos": 1}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_loading_a_damaged_checkpoint_names_the_file(two_checkpoints, damage):
    root, old, new, model, opt = two_checkpoints
    DAMAGE[damage](new)
    with pytest.raises((CheckpointError, FileNotFoundError)) as info:
        load_checkpoint(new, model, opt)
    assert str(new) in str(info.value)


def test_bit_flip_in_trainer_state_names_the_file(two_checkpoints):
    """Same size, broken content: only loading finds it, and the error still names the file."""
    root, old, new, model, opt = two_checkpoints
    f = new / "trainer_state.pt"
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        load_checkpoint(new, model, opt)


def test_all_damaged_is_an_error_naming_each(two_checkpoints):
    """Not None (which a run takes as "start from scratch"): an error with every checkpoint's reason."""
    root, old, new, *_ = two_checkpoints
    DAMAGE["weights_truncated"](old)
    DAMAGE["trainer_state_garbage"](new)
    with pytest.raises(CheckpointError, match="every checkpoint is damaged") as info:
        latest_checkpoint(root)
    assert "step_00000001: " in str(info.value) and "model.safetensors" in str(info.value)
    assert "step_00000002: " in str(info.value) and "trainer_state.pt" in str(info.value)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        verify_checkpoint(old)


def test_temp_folder_of_a_killed_save_is_removed(tmp_path):
    """A real writer process killed while saving leaves its temp folder; the next start removes it."""
    script = f"""
import os, signal
from transformers import Qwen2Config, Qwen2ForCausalLM
from reopold_agents.checkpoint import save_checkpoint

class DiesWhenSaved:  # a scheduler whose state is asked for after the weights are written
    def state_dict(self):
        os.kill(os.getpid(), signal.SIGKILL)

model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1, intermediate_size=32))
save_checkpoint({str(tmp_path)!r}, 3, model, scheduler=DiesWhenSaved())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = list(tmp_path.glob(".tmp-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model").is_dir()
    assert latest_checkpoint(tmp_path) is None
    assert not list(tmp_path.glob(".tmp-*")), "the stale temp folder was not removed"


def test_live_writers_temp_folder_is_kept(tmp_path):
    import socket

    live = tmp_path / f".tmp-step_00000004-{socket.gethostname()}-{os.getppid()}"  # a live process
    dead_old_format = tmp_path / ".tmp-step_00000004-999999"
    live.mkdir()
    dead_old_format.mkdir()
    assert remove_stale_temp_dirs(tmp_path) == [dead_old_format]
    assert live.is_dir()


# ------------------------------------------------------------------------------------- metrics


def _steps(path: Path) -> list[int]:
    return [r["step"] for r in read_metrics(path)]


def test_metrics_one_record_per_step_across_resumes(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        m.log(0, {"eval/success": 0.1})
        for s in range(1, 6):
            m.log(s, {"loss": float(s)})
    # crash after step 5, the checkpoint is at step 3: steps 4, 5 are re-run
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=3) as m:
        assert _steps(tmp_path) == [0, 1, 2, 3]
        for s in range(4, 7):
            m.log(s, {"loss": 10.0 + s})
        m.log(6, {"eval/success": 0.9})  # the final evaluation at the last training step
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5, 6]
    assert records[6] == {"step": 6, "loss": 16.0, "eval/success": 0.9}
    # resume again at an older (fallback) checkpoint, and once more with nothing to replay
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=2) as m:
        m.log(3, {"loss": 3.5})
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=3):
        pass
    assert _steps(tmp_path) == [0, 1, 2, 3]


def test_metrics_resume_repairs_duplicates_and_a_torn_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 2, "b": 3}\n[1, 2]\n{"step": 3}\n{"step": 4, "a"')
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=5) as m:
        m.log(6, {"a": 6})
    assert read_metrics(tmp_path) == [{"step": 1, "a": 1}, {"step": 2, "a": 2, "b": 3}, {"step": 6, "a": 6}]
