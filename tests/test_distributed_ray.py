"""distributed=ray on a local 2-worker Ray cluster the tests start and stop themselves.

The same run placed in-process (LocalBackend, what ``distributed=single`` runs) and on Ray (RayBackend)
must train on the same episodes and report the same metrics, step for step through the one training
step (``reopold_agents.step.run_steps``); a rollout worker SIGKILLed mid-rollout must be restarted and its chunk
redone, with no episode lost or counted twice; async mode must report a policy lag of 1.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
import torch

pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install -e '.[ray]')")

from reopold_agents.config import compose  # noqa: E402
from reopold_agents.distributed import make_backend  # noqa: E402
from reopold_agents.step import run_steps  # noqa: E402

OVERRIDES = [
    "env=math",
    "env.max_turns=1",
    "engine.sampling.max_new_tokens=12",
    "trainer.group_size=2",
    "trainer.total_steps=8",
    "trainer.lr=1e-3",
    "distributed.rollout_chunk_size=1",
    "algo.stage_switch=1.0",  # reward_floor selection throughout: exact under any split over learner ranks
]
METRIC_KEYS = ("loss", "grad_norm", "num_tokens", "num_selected", "reward_mean", "entropy_mean", "lr")


def _tasks(seeds: list[int]) -> list[dict]:
    """Tasks of the run's one entry (math), each an env reset seed."""
    return [{"env": "math", "seed": s} for s in seeds]


def tasks_for_step(step: int) -> list[dict]:
    """Env reset seeds: deterministic in the step, as run_steps requires."""
    return _tasks([1000 * step + i for i in range(4)])


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """A LocalBackend and a RayBackend over a private model cache (the project tokenizer copied in)."""
    import os
    import shutil

    from reopold_agents.tiny import build_tokenizer, cache_dir

    torch.set_num_threads(1)
    tok_dir = cache_dir()
    build_tokenizer()  # make sure the shared tokenizer exists before copying it
    private = tmp_path_factory.mktemp("reopold_cache")
    for entry in tok_dir.glob("tokenizer-*"):
        if entry.is_dir() and not entry.name.count(".tmp"):
            shutil.copytree(entry, private / entry.name)
    old = os.environ.get("REOPOLD_CACHE")
    os.environ["REOPOLD_CACHE"] = str(private)  # read by this process and passed to the Ray workers
    local = make_backend(compose(OVERRIDES + ["distributed=single"]))
    ray_keys = ["distributed.ray.local_num_cpus=2", "distributed.ray.num_rollout_workers=2",
                "distributed.ray.restart_timeout_s=180"]  # a restart reloads models: slow on a loaded 2-core box
    # two rollout workers and two learner ranks (data parallel over gloo) against one process
    remote = make_backend(compose(OVERRIDES + ["distributed=ray", "distributed.ray.num_learner_workers=2", *ray_keys]))
    yield local, remote
    remote.shutdown()
    local.shutdown()
    if old is None:
        os.environ.pop("REOPOLD_CACHE", None)
    else:
        os.environ["REOPOLD_CACHE"] = old
    import ray

    assert not ray.is_initialized(), "the backend started the local cluster, so it must also stop it"


def _ids(trajs):
    return [t.token_ids for t in trajs]


def _assert_same_steps(a, b):
    assert [r.step for r in a] == [r.step for r in b]
    for ra, rb in zip(a, b):
        assert _ids(ra.trajectories) == _ids(rb.trajectories), f"step {ra.step}: different episodes"
        for key in METRIC_KEYS:
            assert ra.metrics[key] == pytest.approx(rb.metrics[key], rel=1e-4, abs=1e-6), key
        assert ra.metrics["policy_lag"] == rb.metrics["policy_lag"]


def test_ray_run_matches_single_process(backends):
    local, remote = backends
    from reopold_agents.distributed.ray_backend import RayBackend

    assert isinstance(remote, RayBackend) and len(remote.workers) == 2 and len(remote.learners) == 2
    loc = list(run_steps(local, tasks_for_step, 0, 2, async_rollout=False))
    ray_steps = list(run_steps(remote, tasks_for_step, 0, 2, async_rollout=False))
    _assert_same_steps(loc, ray_steps)
    assert all(r.metrics["policy_lag"] == 0.0 for r in ray_steps)
    # both chunks-of-one workers took part, and weights moved (version 2 after two updates)
    assert {t.info["policy_version"] for t in ray_steps[1].trajectories} == {1}
    assert len(ray_steps[0].trajectories) == 8
    assert ray_steps[0].metrics["loss"] != ray_steps[1].metrics["loss"]
    assert ray_steps[0].metrics["learner_ranks"] == 2.0 and loc[0].metrics["learner_ranks"] == 1.0


def test_async_mode_reports_policy_lag_one(backends):
    local, remote = backends
    start = 2
    loc = list(run_steps(local, tasks_for_step, start, start + 3, async_rollout=True))
    ray_steps = list(run_steps(remote, tasks_for_step, start, start + 3, async_rollout=True))
    # the first step after (re)starting the pipeline has nothing to overlap with
    assert [r.metrics["policy_lag"] for r in ray_steps] == [0.0, 1.0, 1.0]
    # rollouts of step k+1 were sampled with the weights of step k, not k+1
    learner_version = {r.step: r.step for r in ray_steps}  # one update per step since version 0
    for r in ray_steps[1:]:
        assert {t.info["policy_version"] for t in r.trajectories} == {learner_version[r.step] - 1}
    _assert_same_steps(loc, ray_steps)  # the lag is deterministic, not a race


def test_learner_checkpoint_resumes_the_job(backends, tmp_path):
    """Save the Ray learner, train a step, restore, train the same step again: identical (resume)."""
    _, remote = backends
    remote.save(str(tmp_path), step=20, data_state={"position": 80})
    first = list(run_steps(remote, tasks_for_step, 20, 21, async_rollout=False))
    state = remote.load(str(tmp_path))  # restores model, optimizer, scheduler, RNG on every rank; re-broadcasts
    assert state.step == 20 and state.data_state == {"position": 80}
    again = list(run_steps(remote, tasks_for_step, 20, 21, async_rollout=False))
    _assert_same_steps(first, again)
    assert {t.info["policy_version"] for t in again[0].trajectories} == {20}  # the loaded step's weights


def test_sigkill_rollout_worker_mid_rollout_is_redone(backends):
    _, remote = backends
    tasks = _tasks([7000 + i for i in range(8)])  # 8 chunks of 1 prompt x 2 samples
    expected = remote.rollout(tasks, step=7)  # undisturbed reference with the same weights and seeds
    expected_next = remote.rollout(tasks[:2], step=8)
    for attempt in range(3):  # a chunk can finish between choosing the victim and the kill: try again
        pids = remote.worker_pids()
        handle = remote.submit_rollout(tasks, step=7)
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline:
            inflight = dict(handle.supervisor.inflight)
            if handle.completed >= 1 and inflight:
                victim = next(iter(inflight))
            else:
                time.sleep(0.01)
        assert victim is not None, "rollout never had a chunk in flight after the first result"
        os.kill(pids[victim], signal.SIGKILL)
        trajs = handle.result()
        # nothing lost, nothing doubled, and the redone episodes are the very same episodes
        assert len(trajs) == len(expected) == 16
        assert Counter(t.info["task_id"] for t in trajs) == Counter(t.info["task_id"] for t in expected)
        assert all(n == 2 for n in Counter(t.info["task_id"] for t in trajs).values())
        assert _ids(trajs) == _ids(expected)
        assert sorted(t.info["rollout_chunk"] for t in trajs) == sorted([i for i in range(8)] * 2)
        new_pids = remote.worker_pids()  # waits for a worker that is still restarting
        assert new_pids[victim] != pids[victim], "the killed worker was not restarted"
        if handle.stats.redone_chunks >= 1:  # (the redo may run on the other worker while it restarts)
            break
    else:
        pytest.fail("three kills in a row all landed between chunks")
    # the restarted worker got the current weights back: the next rollout still matches
    assert _ids(remote.rollout(tasks[:2], step=8)) == _ids(expected_next)
