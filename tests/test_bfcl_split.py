"""env=bfcl trains on a fixed split: the held-out entries (50 of each non-live single-turn Python category)
are what the run evaluates and never what it trains on, whatever the run's seeds; the split is pinned."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from collections import Counter

import pytest

from envs.factory import build_env, load_env_tasks
from reopold_agents.config import compose
from reopold_agents.config.env import EnvConfig
from reopold_agents.evaluation.heldout import heldout_env_config
from tasks import TaskLoadError, load_tasks
from tasks.bfcl import CORE, HELDOUT_PER_CATEGORY, load_bfcl

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None,
                                reason="the bench extra is not installed (bash scripts/setup.sh)")

SIZES = {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "irrelevance": 240}
# sha256 of the sorted held-out ids, one per line: the split's definition (SPLIT_SEED, sha256 ranking, 50 per
# category). A change here changes which entries every earlier run was evaluated on.
HELDOUT_DIGEST = "91b29363ea8dcff8f5b25c047d0c6545af050dc48feb36a8034ef542c8665a8a"


def _ids(tasks) -> list[str]:
    return [t.id for t in tasks]


def test_split_sizes_disjoint_and_complete():
    train, held = load_bfcl("core", split="train"), load_bfcl("core", split="heldout")
    assert (len(train), len(held)) == (990, 250)
    assert not set(_ids(train)) & set(_ids(held))
    assert set(_ids(train)) | set(_ids(held)) == set(_ids(load_bfcl("core")))
    assert len(load_bfcl("core")) == sum(SIZES.values()) == 1240
    assert Counter(t.meta["bfcl_category"] for t in held) == {c: HELDOUT_PER_CATEGORY for c in CORE}
    assert Counter(t.meta["bfcl_category"] for t in train) == {c: n - HELDOUT_PER_CATEGORY for c, n in SIZES.items()}
    assert len(set(_ids(train))) == 990 and len(set(_ids(held))) == 250


def test_split_is_pinned():
    held = sorted(_ids(load_bfcl("core", split="heldout")))
    assert hashlib.sha256("\n".join(held).encode()).hexdigest() == HELDOUT_DIGEST
    assert _ids(load_bfcl("core", split="heldout"))[:5] == [
        "simple_python_42", "multiple_10", "parallel_143", "parallel_multiple_1", "irrelevance_24"]


def test_split_is_the_same_in_another_process():
    """sha256 ranking, not Python's salted hash: a fresh interpreter gets the same split."""
    code = "from tasks.bfcl import load_bfcl; print(','.join(t.id for t in load_bfcl('core', split='heldout')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.strip()
    assert out.split(",") == _ids(load_bfcl("core", split="heldout"))


def test_a_category_splits_the_same_alone_or_in_core():
    for category in CORE:
        alone = load_bfcl(category, split="heldout")
        assert _ids(alone) == [t.id for t in load_bfcl("core", split="heldout") if t.meta["bfcl_category"] == category]
    both = load_bfcl("parallel+parallel_multiple", split="train")
    assert set(_ids(both)) == set(_ids(load_bfcl("parallel", split="train"))) | set(
        _ids(load_bfcl("parallel_multiple", split="train")))


def test_categories_interleave_so_a_prefix_stays_balanced():
    held = load_bfcl("core", split="heldout", limit=64)
    assert Counter(t.meta["bfcl_category"] for t in held) == {
        "simple_python": 13, "multiple": 13, "parallel": 13, "parallel_multiple": 13, "irrelevance": 12}
    assert [t.meta["bfcl_category"] for t in held[:5]] == list(CORE)
    train = load_tasks("bfcl:core", split="train", limit=10)
    assert Counter(t.meta["bfcl_category"] for t in train) == {c: 2 for c in CORE}


def test_training_draws_from_train_and_evaluates_heldout_for_any_seed():
    """The run's two task sets come from its config alone: the env=bfcl group trains on split=train and
    `heldout_env_config` (what the run's evaluation loads) reads split=heldout; no seed moves an entry."""
    from reopold_agents.entries import TaskSampler

    seen_train, seen_held = set(), set()
    for seed in (0, 1, 7):
        cfg = compose(["env=bfcl", f"trainer.seed={seed}", f"env.seed={seed}", "trainer.heldout_tasks=250"])
        assert (cfg.env.tasks, cfg.env.split) == ("bfcl:core", "train")
        train = load_env_tasks(cfg.env)
        held = load_env_tasks(heldout_env_config(cfg.env, cfg.trainer.heldout_tasks))
        assert not set(_ids(train)) & set(_ids(held))
        seen_train.add(tuple(_ids(train)))
        seen_held.add(tuple(_ids(held)))
        sampler = TaskSampler.from_config(cfg.entries, prompts_per_step=8, seed=seed)
        drawn = {train[t["options"]["task_index"]].id for step in range(130) for t in sampler.tasks(step)}
        assert len(drawn) == 990  # 130 steps x 8 prompts: every train entry, no other
        assert build_env(cfg.env).tasks[0].id == train[0].id  # the rollout's envs hold the same list
    assert len(seen_train) == 1 and len(seen_held) == 1


def test_a_run_that_would_train_on_heldout_entries_is_refused():
    from reopold_agents.startup import check_entries

    for split in ("null", "heldout"):
        cfg = compose(["env=bfcl", f"env.split={split}"])
        with pytest.raises(ValueError, match="env.split: a bfcl run trains on split=train"):
            check_entries(cfg)
    check_entries(compose(["env=bfcl"]))  # the default trains on split=train


def test_split_errors_name_the_problem():
    with pytest.raises(TaskLoadError, match="'valid' is not one of train, heldout"):
        load_bfcl("core", split="valid")
    with pytest.raises(TaskLoadError, match="live_simple: no train/held-out split"):
        load_bfcl("live_simple", split="train")
    with pytest.raises(TaskLoadError, match="names a category twice"):
        load_bfcl("parallel+parallel")
    with pytest.raises(TaskLoadError, match="simple_cobol"):
        load_bfcl("parallel+simple_cobol", split="train")
    assert len(build_env(EnvConfig(name="bfcl", tasks="bfcl:core", split=None, size=0, max_turns=1)).tasks) == 1240


def test_heldout_suite_is_the_heldout_split():
    from reopold_agents.evaluation.suite import load_suite

    suite = load_suite("bfcl_heldout")
    assert list(suite.benchmarks) == list(CORE)
    held = set(_ids(load_bfcl("core", split="heldout")))
    loaded = [t.id for b in suite.benchmarks.values() for t in load_env_tasks(b.env)]
    assert len(loaded) == 250 and set(loaded) == held
