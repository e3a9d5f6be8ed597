"""A run is a list of env entries (``RunConfig.entries``): a single-env run is a list of one.

* ``TaskSampler``: the tasks of a step. With one entry, ``seeding.step_prompts`` reads a seeded
  permutation of its tasks; with several, each prompt draws its entry by the weights
  (``seeding.mix_draw``: a function of (trainer.seed, step) only), then the next task of that entry's
  own seeded permutation (``seeding.mix_task_index``), so no task repeats within a pass over an entry's
  tasks. The position in each entry's stream is a count of earlier draws, replayed from step 0 (cheap:
  RNG draws only), so a resumed run and the async look-ahead get exactly the same tasks. A task is
  ``{"env": <entry>, "options": {"task_index": i}}``.
* ``EntryRollout``: one ``Rollout`` per entry (its env factory, task source, turn limit, tools and stop
  tokens) on one shared student engine; a chunk's tasks are routed to their entry's rollout (each
  entry one lock-step batch, sampled from ``seeding.entry_rollout_seed``), the trajectories come back in
  task order with step-global group ids, each stamped with its entry (teachers are routed by it).
* ``EntryHeldout``: one ``HeldoutSet`` per entry: ``eval/<entry>/success``, and ``eval/success`` averaged
  with the entries' weights; an entry whose held-out tasks mix families (BFCL categories, reasoning-gym
  datasets) also gets ``eval/<entry>/<family>/success``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping

from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.mix import MixEntry, mix_weights
from reopold_agents.config.sandbox import SandboxConfig
from reopold_agents.engines.base import Engine, SamplingParams
from reopold_agents.evaluation.heldout import HeldoutScore, HeldoutSet
from reopold_agents.evaluation.progress import eval_bar
from reopold_agents.rollout import Rollout, RolloutStats
from reopold_agents.seeding import entry_rollout_seed, mix_draw, mix_task_index, step_prompts
from reopold_agents.teacher.tokenizers import Tokenizer
from reopold_agents.trajectory import Trajectory

ENTRY_KEY = "env"  # the key of a task that names its entry
Task = dict[str, Any]  # {"env": entry, "options": {"task_index": i}}


class TaskSampler:
    """The tasks of each step; deterministic in (seed, step), whatever was asked before."""

    def __init__(self, num_tasks: dict[str, int], weights: dict[str, float], prompts_per_step: int, seed: int) -> None:
        if list(num_tasks) != list(weights):
            raise ValueError(f"entries differ: tasks {list(num_tasks)}, weights {list(weights)}")
        empty = [name for name, n in num_tasks.items() if n < 1]
        if empty:
            raise ValueError(f"env entries {empty} have no tasks")
        self.names = list(num_tasks)
        self.num_tasks = [num_tasks[n] for n in self.names]
        self.weights = [float(weights[n]) for n in self.names]
        self.prompts_per_step, self.seed = int(prompts_per_step), int(seed)
        self._counts: list[list[int]] = [[0] * len(self.names)]  # _counts[s][j]: draws of entry j before step s

    def draws(self, step: int) -> list[int]:
        """Entry index of each prompt of ``step``."""
        if len(self.names) == 1:
            return [0] * self.prompts_per_step
        return mix_draw(step, self.prompts_per_step, self.weights, self.seed)

    def _before(self, step: int) -> list[int]:
        while len(self._counts) <= step:
            counts = list(self._counts[-1])
            for j in self.draws(len(self._counts) - 1):
                counts[j] += 1
            self._counts.append(counts)
        return self._counts[step]

    def tasks(self, step: int) -> list[Task]:
        """``{"env": entry, "options": {"task_index": i}}`` for each prompt of ``step``."""
        if len(self.names) == 1:
            indices = step_prompts(step, self.prompts_per_step, self.num_tasks[0], self.seed)
            return [{ENTRY_KEY: self.names[0], "options": {"task_index": i}} for i in indices]
        position = list(self._before(step))
        out = []
        for j in self.draws(step):
            name = self.names[j]
            index = mix_task_index(position[j], self.num_tasks[j], self.seed, name)
            position[j] += 1
            out.append({ENTRY_KEY: name, "options": {"task_index": index}})
        return out

    @classmethod
    def from_config(cls, entries: dict[str, MixEntry], prompts_per_step: int, seed: int) -> "TaskSampler":
        from envs.factory import load_env_tasks

        return cls({name: len(load_env_tasks(e.env)) for name, e in entries.items()}, mix_weights(entries),
                   prompts_per_step, seed)


class EntryRollout:
    """``Rollout.run`` over tasks of several entries: each task runs in its entry's ``Rollout``; results in task order."""

    def __init__(self, rollouts: dict[str, Rollout]) -> None:
        self.rollouts = dict(rollouts)  # entry -> Rollout
        self.stats = RolloutStats()

    def run(self, prompts: list[Task], sampling: SamplingParams, group_size: int = 1) -> list[Trajectory]:
        by_entry: dict[str, list[int]] = {}
        for pos, task in enumerate(prompts):
            name = task.get(ENTRY_KEY) if isinstance(task, dict) else None
            if name not in self.rollouts:
                raise ValueError(f"task {pos} names env entry {name!r}; entries: {sorted(self.rollouts)}")
            by_entry.setdefault(name, []).append(pos)
        out: list[Trajectory | None] = [None] * (len(prompts) * group_size)
        parts = []
        for j, name in enumerate(self.rollouts):  # the entries' order: deterministic
            positions = by_entry.get(name)
            if not positions:
                continue
            resets = [{k: v for k, v in prompts[p].items() if k != ENTRY_KEY} for p in positions]
            seed = None if sampling.seed is None else entry_rollout_seed(sampling.seed, j, len(self.rollouts))
            rollout = self.rollouts[name]
            trajs = rollout.run(resets, replace(sampling, seed=seed), group_size=group_size)
            parts.append(rollout.stats)
            for i, traj in enumerate(trajs):
                g, k = divmod(i, group_size)
                traj.group_id = positions[g]  # the task's position in the list, as one Rollout.run numbers it
                traj.entry = name
                out[positions[g] * group_size + k] = traj
        self.stats = RolloutStats.total(parts)
        assert all(t is not None for t in out)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for rollout in self.rollouts.values():
            rollout.close()

    @classmethod
    def from_config(cls, entries: dict[str, MixEntry], engine_cfg: EngineConfig, sandbox_cfg: SandboxConfig,
                    engine: Engine, tokenizer: Tokenizer, processor: Any = None) -> "EntryRollout":
        """One ``Rollout`` per entry over its own env config."""
        from envs.factory import build_env, load_env_tasks

        rollouts = {}
        for name, entry in entries.items():
            env_cfg = entry.env
            tasks = load_env_tasks(env_cfg)
            factory = (lambda e, t: (lambda: build_env(e, tasks=t, sandbox=sandbox_cfg)))(env_cfg, tasks)
            rollouts[name] = Rollout.from_config(engine_cfg, env_cfg, engine, tokenizer, factory, processor=processor)
        return cls(rollouts)


class EntryHeldout:
    """One held-out set per entry (``trainer.heldout_tasks`` tasks each)."""

    def __init__(self, sets: dict[str, HeldoutSet], weights: dict[str, float]) -> None:
        self.sets, self.weights = dict(sets), dict(weights)

    @classmethod
    def from_config(cls, entries: dict[str, MixEntry], engine_cfg: EngineConfig, sandbox_cfg: SandboxConfig, size: int,
                    engine: Engine, tokenizer: Tokenizer, processor: Any = None) -> "EntryHeldout":
        sets = {name: HeldoutSet.from_config(entry.env, engine_cfg, sandbox_cfg, size, engine, tokenizer, processor)
                for name, entry in entries.items()}
        return cls(sets, mix_weights(entries))

    @property
    def num_tasks(self) -> int:
        """Held-out tasks over all entries."""
        return sum(s.num_tasks for s in self.sets.values())

    def scores(self, label: str = "held-out", known: Mapping[str, HeldoutScore] | None = None
               ) -> dict[str, tuple[HeldoutScore, float]]:
        """Each entry's ``(score, seconds measuring it)``; an entry in ``known`` (a remembered score:
        ``evaluation.heldout_cache``) is not measured again (0 seconds). One progress bar ``label`` over the
        tasks measured, where this context shows one (``evaluation.progress``)."""
        known = dict(known or {})
        found: dict[str, tuple[HeldoutScore, float]] = {name: (score, 0.0) for name, score in known.items()}
        todo = {name: s for name, s in self.sets.items() if name not in known}
        if todo:
            with eval_bar(label, sum(s.num_tasks for s in todo.values())) as advance:
                for name, held in todo.items():
                    start = time.perf_counter()
                    found[name] = (held.score(advance), time.perf_counter() - start)
        return {name: found[name] for name in self.sets}

    def metrics(self, scores: Mapping[str, HeldoutScore], prefix: str = "eval") -> dict[str, float]:
        """``<prefix>/<entry>/success`` per entry (and ``<prefix>/<entry>/<family>/success`` per task family
        of a mixed set) and their weight-averaged ``<prefix>/success``."""
        found = {}
        for name, score in scores.items():
            found[f"{prefix}/{name}/success"] = score.success
            found.update({f"{prefix}/{name}/{family}/success": v for family, v in score.by_family.items()})
        found[f"{prefix}/success"] = sum(self.weights[n] * found[f"{prefix}/{n}/success"] for n in self.sets)
        return found

    def evaluate(self, prefix: str = "eval", label: str = "held-out") -> dict[str, float]:
        """Every entry measured, as ``metrics``."""
        return self.metrics({name: score for name, (score, _) in self.scores(label).items()}, prefix)

    def close(self) -> None:
        for s in self.sets.values():
            s.close()
