"""Suites and the evaluate CLI's config: every shipped suite loads, unknown keys fail naming the key,
k/limit apply to every benchmark, and training's `eval` group reads the same suite files."""

from __future__ import annotations

import pytest

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.evaluation.suite import compose_evaluate, load_suite, resolve_suite, suite_names

BUILTIN = {"math_tiny", "vqa_tiny", "toolqa_tiny", "gsm8k", "math500", "aime", "mathvista", "geometry3k", "tooluse"}


def test_every_shipped_suite_loads():
    assert BUILTIN | {"none"} <= set(suite_names())
    for name in BUILTIN:
        suite = load_suite(name)
        assert suite.name == name and suite.benchmarks
    assert load_suite("none").benchmarks == {}


def test_cli_config_as_documented():
    cfg = compose_evaluate(["suite=math_tiny", "k=8"])
    assert (cfg.suite, cfg.k, cfg.eval.name) == ("math_tiny", 8, "math_tiny")
    resolved = resolve_suite(cfg.eval, cfg.k, limit=3)
    assert all(b.n == 8 and b.env.size == 3 for b in resolved.benchmarks.values())
    # file suites use size 0 (= every row); limit caps them too
    gsm = compose_evaluate(["suite=gsm8k", "eval.benchmarks.gsm8k.env.tasks=/data/gsm8k.jsonl"])
    assert gsm.eval.benchmarks["gsm8k"].env.tasks == "/data/gsm8k.jsonl"
    assert resolve_suite(gsm.eval, None, 7).benchmarks["gsm8k"].env.size == 7
    assert resolve_suite(gsm.eval, None, None).benchmarks["gsm8k"].env.size == 0


@pytest.mark.parametrize("override,key", [
    ("kk=3", "kk"),
    ("engine.bogus=1", "engine.bogus"),
    ("eval.benchmarks.arith.nn=3", "eval.benchmarks.arith.nn"),
    ("eval.benchmarks.arith.env.colour=red", "eval.benchmarks.arith.env.colour"),
    ("eval.benchmarks.arith.n=0", "eval.benchmarks.arith.n"),
    ("eval.benchmarks.arith.sampling.top_p=0", "eval.benchmarks.arith.sampling.top_p"),
    ("k=0", "k"),
    ("role=boss", "role"),
    ("suite=no_such_suite", "suite"),
])
def test_bad_keys_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_evaluate([override])


def test_engine_sampling_and_token_limit_apply_to_every_benchmark():
    cfg = compose_evaluate(["suite=rg_arith", "engine.sampling.temperature=0", "engine.max_total_tokens=512"])
    assert len(cfg.eval.benchmarks) > 1
    for bench in cfg.eval.benchmarks.values():
        assert bench.sampling.temperature == 0.0 and bench.max_total_tokens == 512
    # keys not named on the command line keep the suite's values
    arith = compose_evaluate(["suite=math_tiny", "engine.sampling.top_k=5"]).eval.benchmarks["arith"]
    assert (arith.sampling.top_k, arith.sampling.temperature, arith.sampling.max_new_tokens) == (5, 0.8, 48)
    assert arith.max_total_tokens == 2048


def test_engine_sampling_reaches_a_benchmark_added_on_the_command_line():
    cfg = compose_evaluate(["suite=math_tiny", "eval.benchmarks.extra.env.name=math", "engine.sampling.temperature=0"])
    assert {name: b.sampling.temperature for name, b in cfg.eval.benchmarks.items()} == {"arith": 0.0, "extra": 0.0}


def test_a_benchmark_own_override_wins_over_engine_sampling():
    for order in (1, -1):
        overrides = ["engine.sampling.temperature=0", "eval.benchmarks.arith.sampling.temperature=0.3"][::order]
        cfg = compose_evaluate(["suite=math_tiny", *overrides])
        assert cfg.eval.benchmarks["arith"].sampling.temperature == 0.3


def test_engine_group_file_does_not_change_suite_sampling():
    # configs/engine/vllm.yaml sets max_new_tokens 512 / max_total_tokens 4096 for training; the suite keeps its own
    arith = compose_evaluate(["suite=math_tiny", "engine=vllm"]).eval.benchmarks["arith"]
    assert (arith.sampling.max_new_tokens, arith.max_total_tokens) == (48, 2048)


@pytest.mark.parametrize("override,key", [
    ("engine.sampling.top_p=0", "engine.sampling.top_p"),
    ("engine.sampling.tempreature=0", "engine.sampling.tempreature"),
    ("engine.max_total_tokens=0", "engine.max_total_tokens"),
])
def test_bad_engine_sampling_keys_fail_naming_the_engine_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_evaluate(["suite=math_tiny", override])


def test_suite_from_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nbenchmarks:\n  a:\n    env: {name: math, size: 3}\n    n: 2\n")
    cfg = compose_evaluate([f"suite={path}", "eval.benchmarks.a.n=5"])
    assert cfg.eval.name == "mine" and cfg.eval.benchmarks["a"].n == 5


def test_training_eval_group_reads_the_same_suites():
    assert compose([]).eval.benchmarks == {}  # eval=none: no in-training evaluation
    run_cfg = compose(["eval=math_tiny", "trainer.eval_every=10"])
    assert run_cfg.eval == load_suite("math_tiny") and run_cfg.trainer.eval_every == 10
    with pytest.raises(ConfigError, match="eval.benchmarks.arith.n"):
        compose(["eval=math_tiny", "eval.benchmarks.arith.n=0"])


def test_cli_main_reports_config_errors(capsys):
    from reopold_agents.evaluate import main

    assert main(["suite=math_tiny", "temperature=0.5"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "math_tiny" in capsys.readouterr().out


def test_missing_benchmark_file_fails_before_loading_a_model(capsys, tmp_path):
    from reopold_agents.evaluate import main

    assert main(["suite=gsm8k", f"eval.benchmarks.gsm8k.env.tasks={tmp_path / 'absent.jsonl'}"]) == 2
    err = capsys.readouterr().err
    assert "eval.benchmarks.gsm8k.env.tasks" in err and "absent.jsonl" in err
