"""Weights load whole or not at all, and every broken model input fails fast naming the file.

Before: a folder missing a tensor (or matching none) loaded with those tensors initialised at random
and the run trained; broken GGUFs, tokenizers, configs and symlink loops ended in library tracebacks;
``model.student=ckpts/missing`` was tried on the hub for ~30 s.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import reopold_agents.models as models_mod
from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.model_files import ModelInputError
from reopold_agents.models import check_model_name, load_model, local_path_reason
from reopold_agents.tiny import load as tiny_load
from reopold_agents.tiny.load import shipped_dir

pytestmark = pytest.mark.usefixtures("one_thread")
FAST_S = 2.0


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """GGUF conversions land in this test's folder, not the shared cache."""
    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path / "cache"))


def _copy_tiny(dest: Path) -> Path:
    """The shipped tiny student (tied embeddings: no lm_head.weight in its file), tokenizer included."""
    shutil.copytree(shipped_dir("tiny", "student"), dest)
    return dest


def _edit_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    f = folder / "model.safetensors"
    save_file(edit(load_file(str(f))), str(f), metadata={"format": "pt"})


def _load(name: str) -> None:
    load_model(name, "student", "float32", "cpu")


# ------------------------------------------------------------------ weights load whole or not at all


def test_missing_tensor_fails_naming_the_folder_and_the_tensor(tmp_path):
    folder = _copy_tiny(tmp_path / "student")
    _edit_weights(folder, lambda sd: {k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ModelInputError) as info:
        _load(str(folder))
    assert str(folder) in str(info.value)
    assert "missing: model.layers.1.mlp.up_proj.weight" in str(info.value)


def test_unexpected_tensor_fails(tmp_path):
    folder = _copy_tiny(tmp_path / "student")
    _edit_weights(folder, lambda sd: {**sd, "model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelInputError, match=r"unexpected: model\.layers\.9\.mlp\.up_proj\.weight") as info:
        _load(str(folder))
    assert str(folder) in str(info.value)


def test_weights_matching_no_tensor_fail(tmp_path):
    folder = _copy_tiny(tmp_path / "student")
    _edit_weights(folder, lambda sd: {f"transformer.{k}": v for k, v in sd.items()})
    with pytest.raises(ModelInputError) as info:
        _load(str(folder))
    msg = str(info.value)
    assert str(folder) in msg and "missing: lm_head.weight, model.embed_tokens.weight" in msg
    assert "unexpected: transformer.model.embed_tokens.weight" in msg


def test_tied_embeddings_need_no_lm_head_but_an_untied_model_does(tmp_path):
    folder = _copy_tiny(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(str(folder / "model.safetensors"))
    model = load_model(str(folder), "student", "float32", "cpu").model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = _copy_tiny(tmp_path / "untied")
    config = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(ModelInputError, match=r"missing: lm_head\.weight"):
        _load(str(untied))


def test_tiny_pair_folder_missing_a_tensor_fails(tmp_path, monkeypatch):
    """The shipped/built tiny folders load through the same check (model=tiny)."""
    folder = _copy_tiny(tmp_path / "shipped" / "tiny-student")
    monkeypatch.setattr(tiny_load, "SHIPPED_DIR", tmp_path / "shipped")
    _edit_weights(folder, lambda sd: {k: v for k, v in sd.items() if k != "model.norm.weight"})
    with pytest.raises(ModelInputError, match=r"missing: model\.norm\.weight") as info:
        load_model("tiny", "student", "float32", "cpu")
    assert str(folder) in str(info.value)
    (folder / "model.safetensors").unlink()  # config.json without weights
    with pytest.raises(ModelInputError, match="no weights") as info:
        load_model("tiny", "student", "float32", "cpu")
    assert str(folder) in str(info.value)


def test_gguf_missing_a_tensor_fails_and_a_tied_gguf_loads(tmp_path):
    pytest.importorskip("gguf")
    from _gguf_craft import write_tiny_gguf

    whole = write_tiny_gguf(tmp_path / "whole.gguf")
    model = load_model(str(whole), "student", "float32", "cpu").model
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: no output.weight in the file
    lacking = write_tiny_gguf(tmp_path / "lacking.gguf", drop=("blk.0.ffn_up.weight",))
    with pytest.raises(ModelInputError, match=r"missing: model\.layers\.0\.mlp\.up_proj\.weight") as info:
        _load(str(lacking))
    assert str(lacking) in str(info.value)


# ------------------------------------------------------------ every broken input fails fast, named


def _gguf(tmp_path: Path, keep: int | None = None, magic: bytes | None = None) -> tuple[str, str]:
    pytest.importorskip("gguf")
    from _gguf_craft import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "model.gguf")
    data = path.read_bytes()
    if keep is not None:
        data = data[:keep]
    if magic is not None:
        data = magic + data[4:]
    path.write_bytes(data)
    return str(path), str(path)


def _folder(tmp_path: Path, edit: Callable[[Path], str | None]) -> tuple[str, str]:
    folder = _copy_tiny(tmp_path / "m")
    named = edit(folder)
    return str(folder), named or str(folder)


def _write(f: Path, text: str) -> str:
    f.write_text(text)
    return str(f)


def _unlink(folder: Path, *names: str) -> None:
    for n in names:
        (folder / n).unlink()


def _symlink_loop(tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    return str(a), str(a)


def _dangling(tmp_path: Path) -> tuple[str, str]:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    return str(link), str(link)


def _below_a_loop(tmp_path: Path) -> tuple[str, str]:
    _symlink_loop(tmp_path)
    return f"{tmp_path}/a/model", f"{tmp_path}/a/model"


def _sharded_missing_shard(folder: Path) -> str:
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return str(folder / "model-00002-of-00002.safetensors")


def _truncate_weights(folder: Path) -> str:
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:5000])
    return str(f)


BROKEN: dict[str, Callable[[Path], tuple[str, str]]] = {
    "gguf_truncated_tensor_data": lambda t: _gguf(t, keep=-100),
    "gguf_truncated_header": lambda t: _gguf(t, keep=20),
    "gguf_truncated_metadata": lambda t: _gguf(t, keep=300),
    "gguf_empty": lambda t: _gguf(t, keep=0),
    "gguf_wrong_magic": lambda t: _gguf(t, magic=b"GGML"),
    "config_without_weights": lambda t: _folder(t, lambda f: _unlink(f, "model.safetensors")),
    "tokenizer_json_not_json": lambda t: _folder(t, lambda f: _write(f / "tokenizer.json", "{not json")),
    "tokenizer_json_not_a_tokenizer": lambda t: _folder(t, lambda f: _write(f / "tokenizer.json", '{"model": 3}')),
    "no_tokenizer": lambda t: _folder(t, lambda f: _unlink(f, "tokenizer.json", "tokenizer_config.json")),
    "config_json_not_json": lambda t: _folder(t, lambda f: _write(f / "config.json", "{")),
    "config_json_no_model_type": lambda t: _folder(t, lambda f: _write(f / "config.json", '{"hidden_size": 8}')),
    "no_config_json": lambda t: _folder(t, lambda f: _unlink(f, "config.json")),
    "weights_truncated": lambda t: _folder(t, _truncate_weights),
    "sharded_index_missing_shard": lambda t: _folder(t, _sharded_missing_shard),
    "empty_folder": lambda t: ((t / "empty").mkdir(), str(t / "empty"), str(t / "empty"))[1:],
    "weights_file_not_folder": lambda t: (str(_copy_tiny(t / "m") / "model.safetensors"),) * 2,
    "symlink_loop": _symlink_loop,
    "dangling_symlink": _dangling,
    "path_below_a_symlink_loop": _below_a_loop,
    "missing_absolute_path": lambda t: (str(t / "no" / "such" / "model"),) * 2,
}


@pytest.mark.parametrize("form", list(BROKEN))
def test_broken_model_input_fails_fast_naming_the_file(form, tmp_path):
    name, named = BROKEN[form](tmp_path)
    for call in (check_model_name, _load):  # start-up check, then the loader itself
        t0 = time.perf_counter()
        with pytest.raises(ModelInputError) as info:
            call(name)
        assert time.perf_counter() - t0 < FAST_S, f"{call.__name__} took {time.perf_counter() - t0:.1f}s"
        assert named in str(info.value), f"{call.__name__}: {info.value}"


# ------------------------------------------------------------------- local paths never go to the hub


@pytest.fixture
def no_hub(monkeypatch):
    def refuse(name: str) -> None:
        raise AssertionError(f"{name!r} was sent to the hub")

    monkeypatch.setattr(models_mod, "_check_hub_id", refuse)


@pytest.mark.parametrize("name", ["ckpts/missing", "./ckpts/missing", "ckpts/a/b", "out/model.gguf",
                                  "~/no-such-reopold-model", "ckpts\\missing"])
def test_missing_local_path_fails_at_once_and_is_never_sent_to_the_hub(name, tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpts").mkdir()
    for call in (check_model_name, _load):
        t0 = time.perf_counter()
        with pytest.raises(ModelInputError, match="is not an existing path") as info:
            call(name)
        assert time.perf_counter() - t0 < FAST_S
        assert repr(name) in str(info.value)


def test_missing_relative_path_fails_at_start_up_naming_the_key(tmp_path, monkeypatch, no_hub):
    import reopold_agents.run as run_mod

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpts").mkdir()
    cfg = compose(["env=math", "model.student=ckpts/missing", "model.teacher=ckpts/missing"])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"model\.student: 'ckpts/missing' is not an existing path"):
        run_mod.check_startup(cfg)
    assert time.perf_counter() - t0 < FAST_S


def test_what_counts_as_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_path_reason("Qwen/Qwen2.5-0.5B-Instruct") is None  # a hub id: nothing named Qwen here
    (tmp_path / "Qwen").mkdir()
    assert "Qwen/ exists" in local_path_reason("Qwen/Qwen2.5-0.5B-Instruct")
    assert local_path_reason("a/b/c") == "it is not an owner/name hub id"
    assert local_path_reason("org/model.safetensors") == "it names a .safetensors file"
    assert local_path_reason("/abs/x") and local_path_reason(".hidden/x") and local_path_reason("~/x")


def test_uncached_hub_id_offline_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(ModelInputError, match="'no-such-org/no-such-model': no such local path.*not in the HF cache"):
        check_model_name("no-such-org/no-such-model")
    assert time.perf_counter() - t0 < FAST_S
