"""Multi-task runs (the ``mix`` config section): a step's prompts drawn from several envs by weight.

* ``MixSampler``: the tasks of a step. Each prompt draws its entry by the weights
  (``seeding.mix_draw``: a function of (trainer.seed, step) only), then the next task of that entry's
  own seeded permutation (``seeding.mix_task_index``), so no task repeats within a pass over an entry's
  tasks. The position in each entry's stream is a count of earlier draws, replayed from step 0 (cheap:
  RNG draws only), so a resumed run and the async look-ahead get exactly the same tasks. A task is
  ``{"env": <entry>, "options": {"task_index": i}}``.
* ``MixRollout``: one ``Rollout`` per entry (its env factory, task source, turn limit, tools and stop
  tokens) on one shared student engine; a chunk's tasks are routed to their entry's rollout (each
  entry one lock-step batch, sampled from ``seeding.mix_rollout_seed``), the trajectories come back in
  task order with step-global group ids, stamped ``info["env"]`` and (when a teacher scores)
  ``info["teacher"]`` (its label, ``teacher_router.teacher_label``).
* ``MixHeldout``: one ``HeldoutSet`` per entry: ``eval/<entry>/success``, and ``eval/success`` averaged
  with the mix's weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reopold_agents.config.mix import mix_weights
from reopold_agents.rollout import RolloutStats
from reopold_agents.seeding import mix_draw, mix_rollout_seed, mix_task_index
from reopold_agents.trajectory import Trajectory

ENTRY_KEY = "env"  # the key of a mix task (and of Trajectory.info) that names its entry


class MixSampler:
    """The tasks of each step of a mix run; deterministic in (seed, step), whatever was asked before."""

    def __init__(self, num_tasks: dict[str, int], weights: dict[str, float], prompts_per_step: int, seed: int) -> None:
        if list(num_tasks) != list(weights):
            raise ValueError(f"entries differ: tasks {list(num_tasks)}, weights {list(weights)}")
        empty = [name for name, n in num_tasks.items() if n < 1]
        if empty:
            raise ValueError(f"mix entries {empty} have no tasks")
        self.names = list(num_tasks)
        self.num_tasks = [num_tasks[n] for n in self.names]
        self.weights = [float(weights[n]) for n in self.names]
        self.prompts_per_step, self.seed = int(prompts_per_step), int(seed)
        self._counts: list[list[int]] = [[0] * len(self.names)]  # _counts[s][j]: draws of entry j before step s

    def draws(self, step: int) -> list[int]:
        """Entry index of each prompt of ``step``."""
        return mix_draw(step, self.prompts_per_step, self.weights, self.seed)

    def _before(self, step: int) -> list[int]:
        while len(self._counts) <= step:
            counts = list(self._counts[-1])
            for j in self.draws(len(self._counts) - 1):
                counts[j] += 1
            self._counts.append(counts)
        return self._counts[step]

    def tasks(self, step: int) -> list[dict[str, Any]]:
        """``{"env": entry, "options": {"task_index": i}}`` for each prompt of ``step``."""
        position = list(self._before(step))
        out = []
        for j in self.draws(step):
            name = self.names[j]
            index = mix_task_index(position[j], self.num_tasks[j], self.seed, name)
            position[j] += 1
            out.append({ENTRY_KEY: name, "options": {"task_index": index}})
        return out

    @classmethod
    def from_config(cls, cfg: Any) -> "MixSampler":
        from envs.factory import load_env_tasks

        return cls({name: len(load_env_tasks(e.env)) for name, e in cfg.mix.items()}, mix_weights(cfg.mix),
                   cfg.trainer.prompts_per_step, cfg.trainer.seed)


class MixRollout:
    """``Rollout.run`` over mix tasks: each task runs in its entry's ``Rollout``; results in task order."""

    def __init__(self, rollouts: dict[str, Any], teachers: dict[str, str] | None = None) -> None:
        self.rollouts = dict(rollouts)  # entry -> Rollout
        self.teachers = dict(teachers or {})  # entry -> teacher label ({}: no teacher scores)
        self.stats = RolloutStats()

    def run(self, prompts: list[dict[str, Any]], sampling: Any, group_size: int = 1) -> list[Trajectory]:
        by_entry: dict[str, list[int]] = {}
        for pos, task in enumerate(prompts):
            name = task.get(ENTRY_KEY) if isinstance(task, dict) else None
            if name not in self.rollouts:
                raise ValueError(f"task {pos} names mix entry {name!r}; entries: {sorted(self.rollouts)}")
            by_entry.setdefault(name, []).append(pos)
        out: list[Trajectory | None] = [None] * (len(prompts) * group_size)
        parts = []
        for j, name in enumerate(self.rollouts):  # the mix's order: deterministic
            positions = by_entry.get(name)
            if not positions:
                continue
            resets = [{k: v for k, v in prompts[p].items() if k != ENTRY_KEY} for p in positions]
            seed = None if sampling.seed is None else mix_rollout_seed(sampling.seed, j)
            rollout = self.rollouts[name]
            trajs = rollout.run(resets, replace(sampling, seed=seed), group_size=group_size)
            parts.append(rollout.stats)
            for i, traj in enumerate(trajs):
                g, k = divmod(i, group_size)
                traj.group_id = positions[g]  # the task's position in the list, as one Rollout.run numbers it
                traj.info[ENTRY_KEY] = name
                if name in self.teachers:
                    traj.info["teacher"] = self.teachers[name]
                out[positions[g] * group_size + k] = traj
        self.stats = RolloutStats.total(parts)
        assert all(t is not None for t in out)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for rollout in self.rollouts.values():
            rollout.close()

    @classmethod
    def from_config(cls, cfg: Any, engine: Any, tokenizer: Any, processor: Any = None) -> "MixRollout":
        """One ``Rollout`` per entry over its own env config; teachers routed when the objective has one."""
        from envs.factory import build_env, load_env_tasks
        from reopold_agents.objectives import make_objective
        from reopold_agents.rollout import Rollout
        from reopold_agents.teacher_router import teacher_routes

        rollouts = {}
        for name, entry in cfg.mix.items():
            env_cfg = entry.env
            tasks = load_env_tasks(env_cfg)
            factory = (lambda e, t: (lambda: build_env(e, tasks=t, sandbox=cfg.sandbox)))(env_cfg, tasks)
            rollouts[name] = Rollout.from_config(cfg.engine, env_cfg, engine, tokenizer, factory, processor=processor)
        needs_teacher = make_objective(cfg.algo, cfg.trainer.total_steps).needs_teacher
        return cls(rollouts, teacher_routes(cfg) if needs_teacher else None)


class MixHeldout:
    """One held-out set per entry (``trainer.heldout_tasks`` tasks each, as a single-env run's)."""

    def __init__(self, sets: dict[str, Any], weights: dict[str, float]) -> None:
        self.sets, self.weights = dict(sets), dict(weights)

    @classmethod
    def from_config(cls, cfg: Any, engine: Any, tokenizer: Any, processor: Any = None) -> "MixHeldout":
        from reopold_agents.evaluation.heldout import HeldoutSet

        sets = {name: HeldoutSet.from_config(replace(cfg, env=entry.env), engine, tokenizer, processor)
                for name, entry in cfg.mix.items()}
        return cls(sets, mix_weights(cfg.mix))

    def evaluate(self) -> dict[str, float]:
        """``eval/<entry>/success`` per entry and their weight-averaged ``eval/success``."""
        found = {f"eval/{name}/success": s.success() for name, s in self.sets.items()}
        found["eval/success"] = sum(self.weights[n] * found[f"eval/{n}/success"] for n in self.sets)
        return found

    def close(self) -> None:
        for s in self.sets.values():
            s.close()


def check_mix_startup(cfg: Any) -> None:
    """What ``config.mix.check_mix`` cannot see, before any model loads: env keys an entry's env does not
    take, teacher names that do not exist, a teacher set for an objective without one, two teachers
    sharing a metric label. Raise ValueError('mix.<entry>.<key>: why')."""
    from envs.factory import env_kwargs
    from reopold_agents.models import check_model_name
    from reopold_agents.objectives import make_objective
    from reopold_agents.registry import ENVS
    from reopold_agents.teacher_router import routed_teachers

    needs_teacher = make_objective(cfg.algo, cfg.trainer.total_steps).needs_teacher
    for name, entry in cfg.mix.items():
        if entry.env.name not in ENVS:
            raise ValueError(f"mix.{name}.env.name: unknown env {entry.env.name!r}; registered: {', '.join(ENVS.names())}")
        try:
            env_kwargs(entry.env, tasks=None, sandbox=None)
        except ValueError as exc:
            raise ValueError(f"mix.{name}.env.{exc}") from None
        if entry.teacher is None:
            continue
        if not needs_teacher:
            raise ValueError(f"mix.{name}.teacher: algo={cfg.algo.name} learns without a teacher; leave it unset")
        try:
            check_model_name(entry.teacher)
        except ValueError as exc:
            raise ValueError(f"mix.{name}.teacher: {exc}") from None
    routed_teachers(cfg)
