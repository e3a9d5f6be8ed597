"""Model loading: tiny names (trained weights from the cache dir, else random), paths, VL detection."""

from __future__ import annotations

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.models import forward_inputs, load_model, load_student, load_teacher, tiny_model_dir

torch.set_num_threads(1)


def test_tiny_pair_random_fallback_and_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))
    cfg = compose(["model=tiny", "model.device=cpu"]).model
    student, teacher = load_student(cfg), load_teacher(cfg)
    assert student.path is None and not student.is_vl
    assert teacher.model.config.hidden_size > student.model.config.hidden_size
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert student.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    # once the pretraining script saved weights, they are what loads
    with torch.no_grad():
        student.model.model.embed_tokens.weight.mul_(2)
    student.model.save_pretrained(tiny_model_dir("tiny", "student"))
    again = load_student(cfg)
    assert again.path == str(tiny_model_dir("tiny", "student"))
    assert torch.equal(again.model.model.embed_tokens.weight, student.model.model.embed_tokens.weight)
    # a local path goes through from_pretrained too
    path = tmp_path / "saved"
    student.model.save_pretrained(path)
    student.tokenizer.save_pretrained(path)
    by_path = load_model(str(path), "student", "float32", "cpu")
    assert by_path.path == str(path) and torch.equal(by_path.model.model.embed_tokens.weight, student.model.model.embed_tokens.weight)


def test_tiny_vl_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path))
    cfg = compose(["model=tiny_vl", "model.device=cpu"]).model
    student = load_student(cfg)
    assert student.is_vl and student.processor is not None
    ids = torch.tensor([[1, student.processor.image_token_id, 2]])
    extra = forward_inputs(student.model, ids, {"image_grid_thw": torch.tensor([[1, 2, 2]])})
    assert extra["mm_token_type_ids"].tolist() == [[0, 1, 0]]
    assert "mm_token_type_ids" not in forward_inputs(student.model, ids, {})


def test_model_config_errors():
    with pytest.raises(ConfigError, match="model.dtype"):
        compose(["model.dtype=float8"])
    with pytest.raises(ConfigError, match="model.student/teacher"):
        compose(["model.student=tiny", "model.teacher=tiny_vl"])
    with pytest.raises(ValueError, match="not tiny/tiny_vl"):
        load_model("nonexistent_model_name", "student")
