"""The placed roles as plain classes: used in-process by LocalBackend and as Ray actors by RayBackend.

Keeping them Ray-free means the code that runs inside an actor is exactly the code the single-process
path runs; ``ray.remote(cls)`` only changes where an instance lives.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from reopold_agents.distributed.chunks import Chunk
from reopold_agents.distributed.roles import RoleFactories, StateDict
from reopold_agents.trajectory import Batch, Trajectory


def _limit_threads(threads: int | None) -> None:
    """Actors share a node's cores: cap torch's intra-op threads to the CPUs the actor reserved."""
    if threads:
        torch.set_num_threads(int(threads))


class RolloutWorker:
    """One student engine with its own envs; runs chunks in an RNG fork seeded by the chunk."""

    def __init__(self, factories: RoleFactories, cfg: Any, index: int, threads: int | None = None,
                 student: Any = None) -> None:
        _limit_threads(threads)
        self.index = index
        self.role = factories.rollout(cfg, index, student)
        self.version = -1  # no learner weights loaded yet

    def pad_token_id(self) -> int:
        return int(self.role.pad_token_id)

    def evaluate(self, step: int) -> dict[str, float]:
        return self.role.evaluate(step)

    def ready(self) -> int:
        """The worker's pid (also a liveness probe after a restart)."""
        return os.getpid()

    def load_weights(self, state_dict: StateDict, version: int) -> int:
        self.role.load_weights(state_dict)
        self.version = int(version)
        return self.version

    def run(self, chunk: Chunk, **probe: int) -> tuple[list[Trajectory], Any]:
        """Episodes of ``chunk`` stamped with the weights version that produced them, and the chunk's
        ``rollout.RolloutStats``. ``probe`` (``max_new_tokens``, ``group_size``) caps a preflight probe's
        episodes; a training chunk passes none.

        The RNG fork keeps a chunk's sampling a function of its seed alone (not of earlier chunks on
        this worker) and leaves the process's own RNG streams untouched for whatever else runs here.
        """
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(chunk.seed)
            random.seed(chunk.seed)
            np.random.seed(chunk.seed)
            try:
                trajectories = self.role.run(list(chunk.tasks), chunk.seed, **probe)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        for traj in trajectories:
            # Roles number groups by task position in the list they got; make it the step's position,
            # as one call over the whole list would (GRPO normalises within a group).
            traj.group_id += chunk.start
            traj.info["policy_version"] = self.version
            traj.info["rollout_chunk"] = chunk.index
        return trajectories, self.role.stats


class TeacherWorker:
    """Scores trajectories with the teacher (stateless between calls, so a retry is always safe)."""

    def __init__(self, factories: RoleFactories, cfg: Any, threads: int | None = None) -> None:
        _limit_threads(threads)
        self.role = factories.teacher(cfg)

    def ready(self) -> int:
        return os.getpid()

    def score(self, batch: Batch, trajectories: list[Trajectory]) -> tuple[Batch, list[Trajectory]]:
        """The scored batch and the trajectories (a cross-tokenizer teacher records masked turns in them)."""
        return self.role.score(batch, trajectories), trajectories


class LearnerWorker:
    """The learner (one rank of it) and its weights version (number of updates applied), which stamps
    every broadcast. With several ranks the role is built in a second phase (``build``), once rank 0's
    address is known, so ``torch.distributed`` can rendezvous there."""

    def __init__(self, factories: RoleFactories, cfg: Any, threads: int | None = None, defer: bool = False) -> None:
        _limit_threads(threads)
        self.factories, self.cfg = factories, cfg
        self.role: Any = None
        self.version = 0
        if not defer:
            self.build(None)

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port: the rendezvous point when this is rank 0."""
        import socket

        try:
            import ray

            host = ray.util.get_node_ip_address()
        except Exception:  # not inside Ray
            host = "127.0.0.1"
        with socket.socket() as sock:
            sock.bind((host, 0))
            return host, int(sock.getsockname()[1])

    def build(self, env: dict[str, str] | None) -> int:
        """Set the rank's torch.distributed env (RANK, WORLD_SIZE, MASTER_ADDR, ...) and build the role."""
        os.environ.update(env or {})
        self.role = self.factories.learner(self.cfg)
        return os.getpid()

    def ready(self) -> int:
        return os.getpid()

    def update(self, batch: Batch, step: int) -> tuple[dict[str, float], int]:
        """Apply one step; return its metrics and the learner version the update started from."""
        started_at = self.version
        metrics = self.role.update(batch, step)
        self.version += 1
        return dict(metrics), started_at

    def logprobs(self, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """The learner's log-probs of ``batch``'s trained tokens (preflight), on CPU."""
        return self.role.logprobs(batch, temperature).detach().float().cpu()

    def weights(self, ship: bool = True) -> tuple[StateDict | None, int]:
        """Full CPU weights for broadcast, with their version. Every rank must call it (FSDP gathers the
        full state collectively); only the shipping rank returns the tensors."""
        state = self.role.state_dict()
        if not ship:
            return None, self.version
        return {k: v.detach().to("cpu") for k, v in state.items()}, self.version

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        self.role.save(directory, step, data_state)

    def load(self, directory: str) -> Any:
        """The role's resume state; the weights version becomes the checkpoint's step."""
        state = self.role.load(directory)
        self.version = int(getattr(state, "step", state))
        return state
