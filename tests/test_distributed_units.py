"""Placement-independent pieces of reopold_agents.distributed: config, chunking, group sharding."""

from __future__ import annotations

import pytest

from reopold_agents import seeding
from reopold_agents.config import compose
from reopold_agents.config.distributed import DistributedConfig, RayConfig
from reopold_agents.config.schema import ConfigError
from reopold_agents.distributed.chunks import chunk_seed, join_chunks, make_chunks, shard_by_group
from reopold_agents.trajectory import Trajectory


@pytest.mark.parametrize("preset", ["single", "ray", "ray_7b_32b"])
def test_presets_compose(preset):
    d = compose([f"distributed={preset}"]).distributed
    assert d.backend == ("single" if preset == "single" else "ray")
    assert isinstance(d.ray, RayConfig)
    if preset == "single":  # the ray section is read only with backend=ray, and stays at its defaults
        assert d.ray == RayConfig() and d.learner_ranks == 1
    else:
        assert d.learner_ranks == d.ray.num_learner_workers


def test_ray_section_defaults_and_overrides():
    d = compose(["distributed=ray", "distributed.ray.num_teacher_workers=3", "distributed.ray.address=auto",
                 "distributed.rollout_chunk_size=2"]).distributed
    assert (d.ray.num_teacher_workers, d.ray.address, d.rollout_chunk_size) == (3, "auto", 2)
    assert d.ray.max_chunk_retries == RayConfig().max_chunk_retries
    plain = DistributedConfig(backend="ray")
    plain.check()  # backend=ray without overrides: the RayConfig defaults
    assert plain.ray == RayConfig()
    DistributedConfig(ray=RayConfig()).check()  # single with an untouched section is fine
    with pytest.raises(ValueError, match=r"^ray\.num_teacher_workers:"):
        DistributedConfig(ray=RayConfig(num_teacher_workers=2)).check()


@pytest.mark.parametrize(
    "override,key",
    [
        ("distributed.backend=mpi", "distributed.backend"),
        ("distributed.mixed_precision=fp8", "distributed.mixed_precision"),
        ("distributed.grad_accumulation=0", "distributed.grad_accumulation"),
        ("distributed.rollout_chunk_size=0", "distributed.rollout_chunk_size"),
        ("distributed.learner_strategy=zero3", "distributed.learner_strategy"),
        ("distributed.ray.num_rollout_workers=0", "distributed.ray.num_rollout_workers"),
        ("distributed.ray.num_learner_workers=0", "distributed.ray.num_learner_workers"),
        ("distributed.ray.local_num_cpus=0", "distributed.ray.local_num_cpus"),
        ("distributed.ray.cpus_per_teacher=-1", "distributed.ray.cpus_per_teacher"),
        ("distributed.ray.gpus_per_learner=-1", "distributed.ray.gpus_per_learner"),
        ("distributed.ray.max_chunk_retries=-1", "distributed.ray.max_chunk_retries"),
        ("distributed.ray.restart_timeout_s=0", "distributed.ray.restart_timeout_s"),
        ("distributed.backend=single", "distributed.ray"),  # after distributed=ray: a ray section on single
    ],
)
def test_bad_values_name_the_key(override, key):
    base = ["distributed=ray"] if ".ray" in override or override == "distributed.backend=single" else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose(base + [override])


def test_ray_keys_on_the_single_backend_name_the_section():
    """A Ray-only key with backend=single (the default) fails naming distributed.ray, like any bad key."""
    with pytest.raises(ConfigError, match=r"distributed\.ray"):
        compose(["distributed.ray.num_learner_workers=2"])


@pytest.mark.parametrize("key", ["num_rollout_workers", "num_learner_workers", "cpus_per_teacher", "max_restarts",
                                 "address"])
def test_ray_only_keys_left_the_top_level(key):
    with pytest.raises(Exception, match=key):
        compose([f"distributed.{key}=1"])


@pytest.mark.parametrize("base", [[], ["distributed=ray"]])
def test_unknown_key_fails(base):
    with pytest.raises(Exception, match="num_gpus_total"):
        compose(base + ["+distributed.num_gpus_total=8"])


def test_unknown_ray_key_fails():
    with pytest.raises(Exception, match="num_gpus_total"):
        compose(["distributed=ray", "+distributed.ray.num_gpus_total=8"])


def test_chunks_cover_tasks_in_order_with_placement_free_seeds():
    tasks = list(range(10))
    chunks = make_chunks(tasks, 4, seed=3, step=5)
    assert [c.tasks for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c.start for c in chunks] == [0, 4, 8]
    # seeds depend on (seed, step, index) only, and differ between chunks, steps and run seeds
    assert [c.seed for c in chunks] == [chunk_seed(3, 5, i) for i in range(3)]
    assert len({c.seed for c in chunks} | {chunk_seed(3, 6, 0), chunk_seed(4, 5, 0)}) == 5
    assert all(0 <= c.seed < 2**31 for c in chunks)
    assert chunk_seed is seeding.chunk_seed  # one definition, re-exported by chunks
    with pytest.raises(ValueError, match="empty"):
        make_chunks([], 4, 0, 0)


def test_join_chunks_refuses_lost_chunks():
    a, b = Trajectory(group_id=0), Trajectory(group_id=1)
    assert join_chunks({1: [b], 0: [a]}, 2) == [a, b]
    with pytest.raises(RuntimeError, match=r"lost chunks \[1\]"):
        join_chunks({0: [a]}, 2)


@pytest.mark.parametrize("groups,n", [([0, 0, 1, 1, 2, 2, 3, 3], 2), ([0, 1, 2], 3), ([0] * 6 + [1], 2),
                                      ([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 3), ([5, 5, 5, 9], 2)])
def test_shard_by_group_keeps_groups_whole(groups, n):
    shards = shard_by_group(groups, n)
    assert len(shards) == n and all(shards)
    assert [row for s in shards for row in s] == list(range(len(groups)))  # order kept, nothing lost or doubled
    owners = {}
    for r, shard in enumerate(shards):
        for row in shard:
            assert owners.setdefault(groups[row], r) == r, "a group straddles ranks"
    sizes = [len(s) for s in shards]
    if len(set(groups)) == len(groups):  # singleton groups: near-equal shards
        assert max(sizes) - min(sizes) <= 1


def test_shard_by_group_splits_evenly_when_groups_allow():
    assert shard_by_group([0, 0, 1, 1, 2, 2, 3, 3], 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert shard_by_group([0, 1, 2], 3) == [[0], [1], [2]]
    assert shard_by_group([7, 7, 7], 1) == [[0, 1, 2]]


def test_shard_by_group_needs_enough_groups():
    with pytest.raises(ValueError, match="num_learner_workers"):
        shard_by_group([0] * 4, 2)
