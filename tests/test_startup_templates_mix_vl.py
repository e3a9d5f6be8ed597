"""Start-up catches what used to fail only at the first scoring or after the models loaded (issue 24, item 5):
``model.teacher_context`` templates beyond plain task fields, mix weights whose sum overflows, and a vision
env (a mix entry or the run's env) with a text-only student."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.config.vision import VL_TINY_NAMES, model_is_vl, vl_from_config

ROOT = Path(__file__).resolve().parents[1]
SELF = ["model.teacher=self"]


def _ctx(template: str) -> str:
    return f"model.teacher_context='{template}'"


# ------------------------------------------------------------------------------- teacher_context


@pytest.mark.parametrize(("template", "why"), [
    ("{answer:{question}}", "format specs"),
    ("{answer:>10}", "format specs"),
    ("Answer: {answer:d}", "format specs"),
    ("{answer!r}", "conversions"),
    ("{answer!s}", "conversions"),
    ("{answer.x}", "attribute access and indexing"),
    ("{answer.__class__}", "attribute access and indexing"),
    ("{answer[0]}", "attribute access and indexing"),
    ("{question[0].x}", "attribute access and indexing"),
    ("{nope}", "not a task field"),
    ("{}", "not a task field"),
    ("{0}", "not a task field"),
    ("{ answer}", "not a task field"),
    ("{answer", "not a valid template"),
    ("answer}", "not a valid template"),
])
def test_bad_teacher_context_fails_at_start_up_naming_key_and_field(template, why):
    with pytest.raises(ConfigError, match=r"^model\.teacher_context: ") as err:
        compose([*SELF, _ctx(template)])
    assert why in str(err.value)
    if why != "not a valid template":
        assert f"field {template[template.index('{'):]}" in str(err.value)  # the bad field, as written


@pytest.mark.parametrize("template", [
    "The correct final answer is {answer}.",  # README, docs/run.md, docs/cross_tokenizer.md
    "Question: {question} Answer: {answer} (task {id})",
    "Literal braces {{like this}} and {answer}",
    "No fields at all.",
])
def test_good_teacher_context_still_passes(template):
    cfg = compose([*SELF, _ctx(template)])
    assert cfg.model.teacher_context == template


# ------------------------------------------------------------------------------- mix weights


MIX = ["experiment=mix_math_toolqa"]


def test_mix_weights_whose_sum_overflows_fail_naming_the_keys():
    with pytest.raises(ConfigError, match=r"^mix: the entries' weights sum to inf") as err:
        compose([*MIX, "mix.math.weight=1e308", "mix.toolqa.weight=1e308"])
    assert "mix.math.weight=1e+308" in str(err.value) and "mix.toolqa.weight=1e+308" in str(err.value)


def test_mix_weight_whose_share_underflows_to_zero_fails():
    with pytest.raises(ConfigError, match=r"^mix\.math\.weight: .*share of 0"):
        compose([*MIX, "mix.math.weight=5e-324", "mix.toolqa.weight=10"])


@pytest.mark.parametrize(("value", "why"), [("inf", "finite"), ("nan", "finite"), ("0", "> 0"), ("-1", "> 0")])
def test_mix_weight_must_be_finite_and_positive(value, why):
    with pytest.raises(ConfigError, match=rf"^mix\.math\.weight: must be (a )?{re.escape(why)}"):
        compose([*MIX, f"mix.math.weight={value}"])


def test_shipped_mix_and_large_finite_weights_pass():
    from reopold_agents.config.mix import mix_weights

    assert set(compose(MIX).mix) == {"math", "toolqa"}
    cfg = compose([*MIX, "mix.math.weight=1e307", "mix.toolqa.weight=3e307"])
    assert mix_weights(cfg.mix) == pytest.approx({"math": 0.25, "toolqa": 0.75})


# ------------------------------------------------------------------------------- VL entries need a VL student


def test_vl_tiny_names_match_the_tiny_pairs():
    from reopold_agents.tiny.load import TINY_SIZES, is_vl_pair

    VL_PAIRS = {name for name, _ in TINY_SIZES if is_vl_pair(name)}

    assert set(VL_TINY_NAMES) == set(VL_PAIRS)


def test_vqa_env_with_a_text_student_fails_naming_env_and_model():
    with pytest.raises(ConfigError, match=r"^model\.student: env=vqa .*model\.student='tiny_math' is a text-only"):
        compose(["env=vqa", "model=tiny_math"])


def test_vqa_mix_entry_with_a_text_student_fails_naming_entry_and_model():
    with pytest.raises(ConfigError, match=r"^mix\.vqa: mix entry 'vqa' \(env vqa\) .*model\.student='tiny' is a "
                                          r"text-only"):
        compose([*MIX, "+env@mix.vqa.env=vqa"])


def test_vl_students_still_pass():
    assert compose(["env=vqa"]).model.student == "tiny"  # resolved to tiny_vl_bed by the run
    assert compose(["env=vqa", "model=tiny_vl"]).env.name == "vqa"
    assert set(compose([*MIX, "+env@mix.vqa.env=vqa", "model=tiny_vl"]).mix) == {"math", "toolqa", "vqa"}
    assert compose(["env=math", "model=tiny_math"]).model.student == "tiny_math"  # a text env: any student


def _model_dir(tmp_path: Path, config: dict[str, object]) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_text_checkpoint_directory_fails_for_vqa(tmp_path):
    folder = _model_dir(tmp_path, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    with pytest.raises(ConfigError, match=rf"^model\.student: env=vqa .*{re.escape(str(folder))}.* text-only"):
        compose(["env=vqa", f"model.student={folder}", "model.teacher=self"])


@pytest.mark.parametrize("config", [
    {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "vision_config": {"depth": 2}},
    {"model_type": "something_new"},  # says neither: left to the loader
])
def test_a_vl_or_unknown_checkpoint_directory_passes_for_vqa(tmp_path, config):
    folder = _model_dir(tmp_path, config)
    assert compose(["env=vqa", f"model.student={folder}", "model.teacher=self"]).model.student == str(folder)


def test_model_is_vl_reads_only_what_it_can_tell(tmp_path):
    assert model_is_vl("tiny_vl_bed") is True and model_is_vl("tiny") is False
    assert model_is_vl(str(tmp_path)) is None  # a directory without config.json
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert model_is_vl(str(tmp_path / "m.gguf")) is None
    assert model_is_vl("no-such-owner-24/no-such-model") is None  # a hub id not in the cache: no network
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert model_is_vl(str(bad)) is None
    assert vl_from_config({"architectures": ["LlamaForCausalLM", "Qwen2VLForConditionalGeneration"]}) is None


def test_cli_fails_before_any_model_loads(tmp_path):
    """``python -m reopold_agents.run`` stops with a config error at once, creating no output directory."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "reopold_agents.run", "experiment=mix_math_toolqa",
                           "+env@mix.vqa.env=vqa", f"trainer.output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "config error: mix.vqa: mix entry 'vqa' (env vqa)" in proc.stderr
    assert "model.student='tiny'" in proc.stderr
    assert not out.exists()
