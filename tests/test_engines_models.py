"""Model loading: tiny names (shipped weights, else a local build in the cache dir, else random), paths,
VL detection."""

from __future__ import annotations

import pytest
import torch

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.models import forward_inputs, load_model, load_student, load_teacher, load_tokenizer_and_processor
from reopold_agents.tiny import load as tiny_load
from reopold_agents.tiny.load import TINY_SIZES, is_vl_pair, load_tiny, shipped_dir, tiny_model_dir, weights_dir

torch.set_num_threads(1)


@pytest.fixture
def no_shipped(tmp_path, monkeypatch):
    """A package without shipped tiny weights and an empty model cache."""
    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny_load, "SHIPPED_DIR", tmp_path / "shipped")
    return tmp_path


def test_tiny_pair_random_fallback_and_cached_weights(no_shipped):
    tmp_path = no_shipped
    cfg = compose(["model=tiny", "model.device=cpu"]).model
    assert weights_dir("tiny", "student") is None and weights_dir("tiny", "teacher") is None
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


def test_shipped_weights_load_before_a_local_build(no_shipped):
    cfg = compose(["model=tiny", "model.device=cpu"]).model
    random_student = load_student(cfg).model
    local, shipped = tiny_model_dir("tiny", "student"), shipped_dir("tiny", "student")
    assert shipped == no_shipped / "shipped" / "tiny-student" and local.is_relative_to(no_shipped / "cache")
    with torch.no_grad():
        random_student.model.embed_tokens.weight.mul_(3)
    random_student.save_pretrained(local)
    assert weights_dir("tiny", "student") == local  # only the local build so far
    with torch.no_grad():
        random_student.model.embed_tokens.weight.mul_(2)
    random_student.save_pretrained(shipped)
    assert weights_dir("tiny", "student") == shipped  # shipped first
    model, tok, processor, path = load_tiny("tiny", "student")
    assert path == str(shipped) and processor is None
    assert torch.equal(model.model.embed_tokens.weight, random_student.model.embed_tokens.weight)
    assert load_tokenizer_and_processor("tiny", "student")[2] == str(shipped)
    assert load_tokenizer_and_processor("tiny", "teacher")[2] is None  # no teacher weights anywhere
    assert weights_dir("tiny", "teacher") is None


def test_random_tiny_models_have_the_recipe_sizes(no_shipped):
    for (name, role), size in TINY_SIZES.items():
        if is_vl_pair(name):
            continue  # the VL pairs: test_tiny_vl_pair
        model, _, _, path = load_tiny(name, role)
        assert path is None
        c = model.config
        assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                c.intermediate_size) == (size["hidden_size"], size["num_layers"], size["num_heads"],
                                         size["num_kv_heads"], size["intermediate_size"])


@pytest.mark.parametrize("name,role", sorted(TINY_SIZES))
def test_the_package_ships_every_tiny_pair(name, role):
    """The trained pairs ship inside the package (scripts/build_tiny_models.py --ship) and are what loads."""
    assert (shipped_dir(name, role) / "config.json").exists(), f"{shipped_dir(name, role)} has no shipped weights"
    assert weights_dir(name, role) == shipped_dir(name, role)


def test_tiny_vl_pair(no_shipped):
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
    with pytest.raises(ValueError, match="not a tiny pair"):
        load_model("nonexistent_model_name", "student")
