"""The project's own roles, built from the run config: what both backends place by default.

Rollout = student engine (``engine.name``) + ``reopold_agents.rollout.Rollout`` over this worker's own
envs (and sandboxes); teacher = ``reopold_agents.teacher.build_teacher``; learner =
``AccelerateLearner`` over the student, checkpointed with ``reopold_agents.checkpoint``. Tasks are what
``Rollout.run`` takes as prompts: env reset seeds (int) or ``env.reset`` keyword dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reopold_agents.distributed.roles import RoleFactories, StateDict
from reopold_agents.trajectory import Trajectory, collate


def _student_tokenizer(model_cfg: Any) -> Any:
    from reopold_agents.config.model import TINY_NAMES

    if model_cfg.student in TINY_NAMES:
        from reopold_agents.testing import build_tokenizer

        return build_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_cfg.student)


class DefaultRollout:
    """One student engine and a pool of this worker's envs (each env owns its tools/sandbox)."""

    def __init__(self, cfg: Any, index: int) -> None:
        from envs.factory import build_env, load_env_tasks
        from reopold_agents.engines import make_engine
        from reopold_agents.models import load_student
        from reopold_agents.rollout import Rollout

        self.cfg = cfg
        self.index = index
        loaded = load_student(cfg.model)
        self.engine = make_engine(cfg.engine, model=loaded.model, tokenizer=loaded.tokenizer,
                                  processor=loaded.processor, model_path=loaded.path)
        tasks = load_env_tasks(cfg.env)
        self.rollout = Rollout.from_config(
            cfg.engine, self.engine, loaded.tokenizer,
            lambda: build_env(cfg.env, tasks=tasks, sandbox=cfg.sandbox),
            processor=loaded.processor,
        )
        self.group_size = int(cfg.trainer.group_size)

    def run(self, tasks: list[Any], seed: int) -> list[Trajectory]:
        sampling = self.cfg.engine.sampling(seed=seed)
        return self.rollout.run(list(tasks), sampling, group_size=self.group_size)

    def load_weights(self, state_dict: StateDict) -> None:
        self.engine.load_weights(state_dict)

    def close(self) -> None:
        self.rollout.close()
        self.engine.close()


class DefaultTeacher:
    """The teacher behind ``model.teacher_engine``; GRPO learns from outcome rewards alone (no teacher)."""

    def __init__(self, cfg: Any) -> None:
        from reopold_agents.teacher import build_teacher

        self.teacher = None
        if cfg.algo.name != "grpo":
            top_k = cfg.algo.gkd_topk if cfg.algo.name == "gkd" else 0
            self.teacher = build_teacher(cfg.model, _student_tokenizer(cfg.model), top_k=top_k, engine_cfg=cfg.engine)

    def score(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        return trajectories if self.teacher is None else self.teacher.score(trajectories)


class DefaultLearner:
    """AccelerateLearner over the student; ``save``/``load`` are HF-format resumable checkpoints."""

    def __init__(self, cfg: Any) -> None:
        from reopold_agents.distributed.accelerate_learner import AccelerateLearner
        from reopold_agents.models import load_student

        self.cfg = cfg
        loaded = load_student(cfg.model)
        self.tokenizer = loaded.tokenizer
        self.learner = AccelerateLearner(loaded.model, cfg.algo, cfg.trainer, cfg.distributed)

    def update(self, trajectories: list[Trajectory], step: int) -> dict[str, float]:
        return self.learner.step(collate(trajectories, self.tokenizer.pad_token_id), step)

    def close(self) -> None:
        self.learner.close()

    def state_dict(self) -> StateDict:
        return self.learner.full_state_dict()

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        from reopold_agents.checkpoint import save_checkpoint

        if self.learner.accelerator.is_main_process:
            save_checkpoint(directory, step, self.learner.unwrapped, self.learner.optimizer, self.learner.scheduler,
                            tokenizer=self.tokenizer, data_state=data_state,
                            keep_last=self.cfg.trainer.keep_checkpoints)

    def load(self, directory: str) -> Any:
        """Restore the newest checkpoint under ``directory`` (or that checkpoint itself); a ResumeState."""
        from reopold_agents.checkpoint import latest_checkpoint, load_checkpoint

        path = Path(directory) if (Path(directory) / "state.json").is_file() else latest_checkpoint(directory)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint under {directory}")
        return load_checkpoint(path, self.learner.unwrapped, self.learner.optimizer, self.learner.scheduler)


def default_factories() -> RoleFactories:
    """RoleFactories of the project's own roles (module-level classes: picklable for Ray)."""
    return RoleFactories(rollout=DefaultRollout, teacher=DefaultTeacher, learner=DefaultLearner)


__all__ = ["DefaultLearner", "DefaultRollout", "DefaultTeacher", "default_factories"]
