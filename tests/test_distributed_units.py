"""Placement-independent pieces of reopold_agents.distributed: config, chunking, group sharding."""

from __future__ import annotations

import pytest

from reopold_agents.config import compose
from reopold_agents.config.schema import ConfigError
from reopold_agents.distributed.chunks import chunk_seed, join_chunks, make_chunks, shard_by_group
from reopold_agents.trajectory import Trajectory


@pytest.mark.parametrize("preset", ["single", "ray", "ray_7b_32b"])
def test_presets_compose(preset):
    d = compose([f"distributed={preset}"]).distributed
    assert d.backend == ("single" if preset == "single" else "ray")


@pytest.mark.parametrize(
    "override,key",
    [
        ("distributed.backend=mpi", "distributed.backend"),
        ("distributed.mixed_precision=fp8", "distributed.mixed_precision"),
        ("distributed.grad_accumulation=0", "distributed.grad_accumulation"),
        ("distributed.num_rollout_workers=0", "distributed.num_rollout_workers"),
        ("distributed.cpus_per_teacher=-1", "distributed.cpus_per_teacher"),
        ("distributed.num_learner_workers=2", "distributed.num_learner_workers"),  # single backend
        ("distributed.learner_strategy=zero3", "distributed.learner_strategy"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override])


def test_unknown_key_fails():
    with pytest.raises(Exception, match="num_gpus_total"):
        compose(["+distributed.num_gpus_total=8"])


def test_chunks_cover_tasks_in_order_with_placement_free_seeds():
    tasks = list(range(10))
    chunks = make_chunks(tasks, 4, seed=3, step=5)
    assert [c.tasks for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c.start for c in chunks] == [0, 4, 8]
    # seeds depend on (seed, step, index) only, and differ between chunks, steps and run seeds
    assert [c.seed for c in chunks] == [chunk_seed(3, 5, i) for i in range(3)]
    assert len({c.seed for c in chunks} | {chunk_seed(3, 6, 0), chunk_seed(4, 5, 0)}) == 5
    assert all(0 <= c.seed < 2**31 for c in chunks)
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
    trajs = [Trajectory(group_id=g) for g in groups]
    shards = shard_by_group(trajs, n)
    assert len(shards) == n and all(shards)
    assert [t for s in shards for t in s] == trajs  # order kept, nothing lost or doubled
    owners = {}
    for r, shard in enumerate(shards):
        for t in shard:
            assert owners.setdefault(t.group_id, r) == r, "a group straddles ranks"


def test_shard_by_group_needs_enough_groups():
    with pytest.raises(ValueError, match="num_learner_workers"):
        shard_by_group([Trajectory(group_id=0)] * 4, 2)
