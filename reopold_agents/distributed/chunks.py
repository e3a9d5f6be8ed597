"""Splitting a step's tasks into chunks: the unit of load balancing, of seeding and of redo.

A chunk's seed depends only on (run seed, step, chunk index), never on which worker runs it or how
many workers there are, so 1 worker, 2 workers and the single-process backend sample the same
episodes. A chunk whose worker crashed is rerun whole with the same seed: its episodes are redone
exactly once and never counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reopold_agents.seeding import chunk_seed
from reopold_agents.trajectory import Trajectory


@dataclass(frozen=True)
class Chunk:
    index: int  # chunk order = task order
    start: int  # position of tasks[0] in the step's task list (offsets group ids to be step-global)
    tasks: list[Any]
    seed: int


def make_chunks(tasks: list[Any], chunk_size: int, seed: int, step: int) -> list[Chunk]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not tasks:
        raise ValueError("cannot roll out an empty task list")
    return [
        Chunk(index=i, start=start, tasks=list(tasks[start : start + chunk_size]), seed=chunk_seed(seed, step, i))
        for i, start in enumerate(range(0, len(tasks), chunk_size))
    ]


def join_chunks(results: dict[int, list[Trajectory]], num_chunks: int) -> list[Trajectory]:
    """Concatenate chunk results in chunk order; a missing or extra chunk is a bug, not a retry."""
    if sorted(results) != list(range(num_chunks)):
        missing = sorted(set(range(num_chunks)) - set(results))
        raise RuntimeError(f"rollout lost chunks {missing} (got {sorted(results)})")
    return [traj for i in range(num_chunks) for traj in results[i]]


def shard_by_group(group_ids: list[int], n: int) -> list[list[int]]:
    """Split rows into ``n`` contiguous shards (row indices) of near-equal size without cutting a group
    (GRPO normalises within a group, so a group must live on one learner rank). Every shard is non-empty."""
    groups: list[list[int]] = []
    for row, gid in enumerate(group_ids):
        if groups and group_ids[groups[-1][0]] == gid:
            groups[-1].append(row)
        else:
            groups.append([row])
    if len(groups) < n:
        raise ValueError(f"{len(groups)} trajectory groups cannot feed {n} learner ranks; lower num_learner_workers")
    shards: list[list[int]] = [[] for _ in range(n)]
    total, done, rank = len(group_ids), 0, 0
    for i, group in enumerate(groups):
        left_groups, left_ranks = len(groups) - i, n - rank
        # move on once this shard has its share, but never leave a later rank without a group
        if shards[rank] and rank < n - 1 and (done >= total * (rank + 1) / n or left_groups <= left_ranks - 1):
            rank += 1
        shards[rank].extend(group)
        done += len(group)
    return shards
