"""The project's own roles, built from the run config: what both backends place by default.

Rollout = student engine (``engine.name``) + ``reopold_agents.rollout.Rollout`` over this worker's own
envs (and sandboxes), and the held-out evaluation; teacher = ``reopold_agents.teacher.build_teacher``
(none when the objective learns without one); learner = ``Learner`` (``AccelerateLearner`` when
several ranks, mixed precision, accumulation or FSDP ask for accelerate), checkpointed with
``reopold_agents.checkpoint``. Tasks are what ``Rollout.run`` takes as prompts: env reset seeds (int)
or ``env.reset`` keyword dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reopold_agents.distributed.roles import RoleFactories, StateDict
from reopold_agents.trajectory import Batch, Trajectory


class DefaultRollout:
    """One student engine, a pool of this worker's envs (each env owns its tools/sandbox) and the
    held-out evaluation set (a mix run: one env pool and held-out set per entry, ``reopold_agents.mix``);
    ``student`` shares an in-process learner's module instead of loading one."""

    def __init__(self, cfg: Any, index: int, student: Any = None) -> None:
        from envs.factory import build_env, load_env_tasks
        from reopold_agents.engines import make_engine
        from reopold_agents.models import load_student, load_tokenizer_and_processor
        from reopold_agents.rollout import Rollout

        self.cfg = cfg
        self.index = index
        if student is None:
            loaded = load_student(cfg.model)
            model, tok, processor, path = loaded.model, loaded.tokenizer, loaded.processor, loaded.path
        else:
            model = student
            tok, processor, path = load_tokenizer_and_processor(cfg.model.student, "student")
        self.tokenizer, self.processor = tok, processor
        self.pad_token_id = int(tok.pad_token_id)
        self.engine = make_engine(cfg.engine, model=model, tokenizer=tok, processor=processor, model_path=path)
        if cfg.mix:  # multi-task: one Rollout per entry, tasks routed by their entry (reopold_agents/mix.py)
            from reopold_agents.mix import MixRollout

            self.rollout: Any = MixRollout.from_config(cfg, self.engine, tok, processor)
        else:
            tasks = load_env_tasks(cfg.env)
            self.rollout = Rollout.from_config(cfg.engine, cfg.env, self.engine, tok,
                                               lambda: build_env(cfg.env, tasks=tasks, sandbox=cfg.sandbox),
                                               processor=processor)
        self._heldout: Any = None
        self.group_size = int(cfg.trainer.group_size)

    @property
    def stats(self) -> Any:
        return self.rollout.stats

    def run(self, tasks: list[Any], seed: int, max_new_tokens: int | None = None,
            group_size: int | None = None) -> list[Trajectory]:
        sampling = self.cfg.engine.sampling.params(seed=seed)
        if max_new_tokens is not None:  # a preflight probe: shorter turns
            sampling.max_new_tokens = min(sampling.max_new_tokens, int(max_new_tokens))
        return self.rollout.run(list(tasks), sampling, group_size=group_size or self.group_size)

    def evaluate(self, step: int) -> dict[str, float]:
        from reopold_agents.evaluation.heldout import HeldoutSet

        if self.cfg.mix:
            from reopold_agents.mix import MixHeldout

            if self._heldout is None:
                self._heldout = MixHeldout.from_config(self.cfg, self.engine, self.tokenizer, self.processor)
            found = self._heldout.evaluate()
        else:
            if self._heldout is None:
                self._heldout = HeldoutSet.from_config(self.cfg, self.engine, self.tokenizer, self.processor)
            found = {"eval/success": self._heldout.success()}
        if self.cfg.eval.benchmarks:
            from reopold_agents.evaluation import evaluate_suite, flatten_for_logging

            results = evaluate_suite(self.engine, self.tokenizer, self.cfg.eval, processor=self.processor,
                                     engine_cfg=self.cfg.engine, sandbox=self.cfg.sandbox, label=f"step-{step}",
                                     out_dir=None, progress=False, plots=False)
            for key, value in flatten_for_logging(results).items():
                found["suite/" + key.removeprefix("eval/")] = value
        return found

    def load_weights(self, state_dict: StateDict) -> None:
        self.engine.load_weights(state_dict)

    def close(self) -> None:
        self.rollout.close()
        if self._heldout is not None:
            self._heldout.close()
        self.engine.close()


class DefaultTeacher:
    """The teacher behind ``model.teacher_engine`` (a mix run: a ``TeacherRouter`` over each entry's
    teacher); none when the objective needs no teacher (GRPO)."""

    def __init__(self, cfg: Any) -> None:
        from reopold_agents.models import load_tokenizer_and_processor
        from reopold_agents.objectives import make_objective
        from reopold_agents.teacher import build_teacher

        objective = make_objective(cfg.algo, cfg.trainer.total_steps)
        self.teacher = None
        if objective.needs_teacher:
            student_tok = load_tokenizer_and_processor(cfg.model.student, "student")[0]
            if cfg.mix:  # one teacher per distinct mix teacher, each row scored by its own
                from reopold_agents.teacher_router import TeacherRouter

                self.teacher = TeacherRouter.from_config(cfg, student_tok, top_k=objective.teacher_topk)
            else:
                self.teacher = build_teacher(cfg.model, student_tok, top_k=objective.teacher_topk, engine_cfg=cfg.engine)

    def score(self, batch: Batch, trajectories: list[Trajectory]) -> Batch:
        return batch if self.teacher is None else self.teacher.score(batch, trajectories)


class DefaultLearner:
    """The student's learner; ``save``/``load`` are HF-format resumable checkpoints."""

    def __init__(self, cfg: Any) -> None:
        from reopold_agents.learner import Learner
        from reopold_agents.models import load_student

        self.cfg = cfg
        loaded = load_student(cfg.model)
        self.tokenizer = loaded.tokenizer
        chunk = cfg.model.logprob_chunk_size
        recompute = cfg.recomputes_old_logprobs
        if cfg.distributed.uses_accelerate:
            from reopold_agents.distributed.accelerate_learner import AccelerateLearner

            self.learner: Any = AccelerateLearner(loaded.model, cfg.algo, cfg.trainer, cfg.distributed,
                                                  logprob_chunk_size=chunk, recompute_old_logprobs=recompute)
            self.is_main = bool(self.learner.accelerator.is_main_process)
        else:
            self.learner = Learner(loaded.model, cfg.algo, cfg.trainer, logprob_chunk_size=chunk,
                                   recompute_old_logprobs=recompute)
            self.is_main = True
        self.model = self.learner.unwrapped

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        metrics = dict(self.learner.step(batch, step))
        metrics.setdefault("learner_ranks", 1.0)
        return metrics

    def logprobs(self, batch: Batch, temperature: float = 1.0) -> Any:
        return self.learner.token_logprobs(batch, temperature)

    def close(self) -> None:
        close = getattr(self.learner, "close", None)
        if callable(close):
            close()

    def state_dict(self) -> StateDict:
        full = getattr(self.learner, "full_state_dict", None)
        if callable(full):
            return full()
        return {k: v.detach().to("cpu") for k, v in self.learner.model.state_dict().items()}

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        from reopold_agents.checkpoint import save_checkpoint

        if self.is_main:
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
