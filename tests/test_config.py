"""algo/trainer config: presets compose, unknown keys and bad values fail naming the key."""

from __future__ import annotations

import pytest

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError


@pytest.mark.parametrize("name", ["reopold", "opd", "grpo", "gkd", "opd_outcome"])
def test_algo_presets_compose(name):
    cfg = compose([f"algo={name}"])
    assert cfg.algo.name == name


def test_reopold_defaults_and_ablation_one_liners():
    cfg = compose([])
    assert (cfg.algo.clip_lambda, cfg.algo.beta, cfg.algo.stage_switch) == (0.2, 0.5, 0.5)
    assert (cfg.algo.stage1_rule, cfg.algo.stage2_rule, cfg.algo.reward_clip) == ("reward_floor", "entropy", True)
    abl = compose(["algo.reward_clip=false", "algo.stage2_rule=all", "algo.stage_switch=0"])
    assert (abl.algo.reward_clip, abl.algo.stage2_rule, abl.algo.stage_switch) == (False, "all", 0.0)
    assert compose(["trainer.total_steps=7", "trainer.resume=true"]).trainer.total_steps == 7


@pytest.mark.parametrize(
    "override, key",
    [
        ("+algo.clip_lamda=0.3", "clip_lamda"),
        ("+trainer.learning_rate=1e-3", "learning_rate"),
    ],
)
def test_unknown_key_fails_naming_it(override, key):
    with pytest.raises(ConfigError, match=key):
        compose([override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("algo.clip_lambda=1.0", "algo.clip_lambda"),
        ("algo.beta=0", "algo.beta"),
        ("algo.stage_switch=2", "algo.stage_switch"),
        ("algo.stage1_rule=random", "algo.stage1_rule"),
        ("algo.aggregation=sum", "algo.aggregation"),
        ("algo.name=ppo", "algo.name"),
        ("trainer.lr=0", "trainer.lr"),
        ("trainer.lr_schedule=step", "trainer.lr_schedule"),
        ("trainer.betas=[0.9]", "trainer.betas"),
        ("trainer.num_minibatches=0", "trainer.num_minibatches"),
        ("trainer.lr=abc", "lr"),
    ],
)
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _started(override)


def _started(*overrides: str):
    """``compose`` (the schema) then the run's start-up checks (objective names and keys live with the
    objectives, not in ``config/``)."""
    import reopold_agents.run as run_mod

    cfg = compose(list(overrides))
    run_mod.check_startup(cfg)
    return cfg


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="algo.stage1_rule"):
        _started("algo=grpo", "algo.stage1_rule=entropy")  # grpo has no stage rules: the key is not read
    with pytest.raises(ConfigError, match="algo.outcome_coef"):
        _started("algo=opd_outcome", "algo.outcome_coef=0")
    with pytest.raises(ConfigError, match="algo.teacher_on"):
        _started("algo=opd", "algo.teacher_on=failed")  # opd does not read it (reopold does)
    with pytest.raises(ConfigError, match="algo.teacher_on"):
        _started("algo=reopold", "algo.teacher_on=solved")
    assert _started("algo=reopold_topk_forward", "algo.teacher_on=failed").algo.teacher_on == "failed"


def test_env_preset_sets_the_demo_knobs_and_the_command_line_wins():
    # configs/experiment/vqa.yaml: the CPU demo's knobs (docs/run.md, "Test bed: vqa")
    vqa = compose(["env=vqa"])
    assert (vqa.algo.stage_switch, vqa.trainer.lr, vqa.trainer.total_steps) == (0.5, 2e-4, 100)
    assert compose(["env=vqa", "algo=grpo"]).algo.name == "grpo"  # the preset sets no objective-only key
    assert all(compose([f"env={e}"]).trainer.heldout_tasks == 256 for e in ("math", "toolqa", "vqa"))  # the test beds
    assert compose(["env=vqa", "algo.stage_switch=1.0"]).algo.stage_switch == 1.0
    assert compose(["env=math"]).algo.stage_switch == 0.5  # the other presets keep both stages
