"""Bad config fails at start-up naming the key: non-finite floats, env keys the env does not take,
model paths that do not exist, keys the chosen objective does not read."""

from __future__ import annotations

import time
from dataclasses import fields, is_dataclass

import pytest

import reopold_agents.run as run_mod
from reopold_agents.config import RunConfig, compose
from reopold_agents.config.schema import ConfigError


def _float_keys(node, prefix=""):
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            yield from _float_keys(value, key + ".")
        elif isinstance(value, float):
            yield key


FLOAT_KEYS = sorted(_float_keys(RunConfig()))


def test_every_float_key_is_listed():
    assert {"trainer.lr", "trainer.max_grad_norm", "algo.clip_lambda", "engine.sampling.temperature",
            "sandbox.limits.timeout_s"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_nan_fails_naming_the_key(key):
    base = ["distributed=ray"] if key.startswith("distributed.ray.") else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([*base, f"{key}=nan"])


@pytest.mark.parametrize("key", ["trainer.lr", "trainer.max_grad_norm", "sandbox.limits.timeout_s"])
@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_infinity_fails_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": must be a finite number"):
        compose([f"{key}={value}"])


def test_list_of_floats_is_checked_too():
    with pytest.raises(ConfigError, match=r"trainer\.betas\[1\]"):
        compose(["trainer.betas=[0.9,nan]"])


def test_env_key_the_env_does_not_take_fails_at_start_up(tmp_path):
    cfg = compose(["env=math", "env.max_pixels=20000", f"trainer.output_dir={tmp_path}"])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"env\.max_pixels: env 'math' does not take it"):
        run_mod.train(cfg, progress=False)
    assert time.perf_counter() - t0 < 10  # before any model loads
    with pytest.raises(ConfigError, match=r"env\.tools"):
        run_mod.check_startup(compose(["env=vqa", "env.tools=[search]"]))
    run_mod.check_startup(compose(["env=vqa", "env.max_pixels=20000"]))  # vqa takes it


def test_missing_relative_model_path_fails_at_once(tmp_path):
    cfg = compose(["env=math", "model.student=./no/such/model", "model.teacher=./no/such/teacher",
                   f"trainer.output_dir={tmp_path}"])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"model\.student: './no/such/model' is not"):
        run_mod.train(cfg, progress=False)
    assert time.perf_counter() - t0 < 10  # no hub retries


def test_objective_keys_it_does_not_read_fail():
    with pytest.raises(ConfigError, match=r"algo\.gkd_topk: algo=reopold does not read it"):
        run_mod.check_startup(compose(["algo.gkd_topk=4"]))
    with pytest.raises(ConfigError, match=r"algo\.clip_lambda: algo=grpo does not read it"):
        run_mod.check_startup(compose(["algo=grpo", "algo.clip_lambda=0.3"]))
    run_mod.check_startup(compose(["algo=dapo", "algo.overlong_max_tokens=64", "algo.overlong_buffer=16"]))
