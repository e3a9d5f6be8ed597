"""The composition root: the run config becomes the three roles, one class each.

* ``RolloutRole``: the student engine, one ``Rollout`` per env entry (``entries.EntryRollout``) and the
  held-out sets; runs a chunk of tasks in an RNG fork seeded by the chunk and stamps each episode with
  the weights version that produced it.
* ``TeacherRole``: the teachers of the run's entries behind one ``TeacherRouter`` (none when the
  objective learns without a teacher); scores batches and measures the teachers' own held-out success
  (so the driver never loads a teacher).
* ``LearnerRole``: the student being trained (``Learner`` or ``AccelerateLearner``), its weights
  version, checkpoints.

Where each role lives (this process or a Ray actor) is ``distributed/``'s choice; the classes are the same
code either way. ``cpus`` (a Ray actor's reservation) caps its torch threads (``reopold_agents/threads.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reopold_agents.config.schema import RunConfig
from reopold_agents.distributed.chunks import Chunk
from reopold_agents.engines.base import SamplingParams
from reopold_agents.entries import EntryHeldout, EntryRollout
from reopold_agents.evaluation.heldout import HeldoutScore
from reopold_agents.rollout import RolloutStats
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.trajectory import Batch, Trajectory

StateDict = dict[str, torch.Tensor]

log = logging.getLogger(__name__)


def _limit_threads(cpus: float | None) -> None:
    """Actors share a node's cores: torch's threads become the CPUs the actor reserved, capped by the cores
    it may run on (``threads.actor_plan``). None: an in-process role, whose process ``run.train`` set."""
    if cpus is not None:
        from reopold_agents.threads import actor_plan, apply

        apply(actor_plan(cpus))


def objective_needs(cfg: RunConfig) -> tuple[bool, int]:
    """(whether the objective reads a teacher, the teacher top-k it asks for)."""
    from reopold_agents.objectives import make_objective

    objective = make_objective(cfg.algo, cfg.trainer.total_steps)
    return objective.needs_teacher, objective.teacher_topk


class RolloutRole:
    """One student engine with its own envs; ``student`` shares an in-process learner's module instead of
    loading a copy (a LoRA student's transformers model, adapters active: ``lora.hf_module``)."""

    def __init__(self, cfg: RunConfig, index: int, cpus: float | None = None,
                 student: torch.nn.Module | None = None) -> None:
        from reopold_agents.engines import make_engine
        from reopold_agents.lora import hf_module
        from reopold_agents.models import load_student, load_tokenizer_and_processor

        _limit_threads(cpus)
        self.cfg, self.index = cfg, index
        if student is None:
            loaded = load_student(cfg.model)
            model, tok, processor, path = loaded.model, loaded.tokenizer, loaded.processor, loaded.path
        else:
            model = hf_module(student)
            tok, processor, path = load_tokenizer_and_processor(cfg.model.student, "student")
        self.tokenizer, self.processor = tok, processor
        self.engine = make_engine(cfg.engine, model=model, tokenizer=tok, processor=processor, model_path=path)
        self.rollout = EntryRollout.from_config(cfg.entries, cfg.engine, cfg.sandbox, self.engine, tok, processor)
        self._heldout: EntryHeldout | None = None
        self.version = -1  # no learner weights loaded yet

    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def ready(self) -> int:
        """The process id (also a liveness probe after a restart)."""
        return os.getpid()

    def load_weights(self, state_dict: StateDict | torch.nn.Module, version: int) -> int:
        """A state dict (plain names; a LoRA learner ships its adapters merged) or the learner's module
        (the one this engine shares: nothing to copy; vLLM merges a LoRA module's adapters itself)."""
        from reopold_agents.lora import hf_module

        self.engine.load_weights(hf_module(state_dict) if isinstance(state_dict, torch.nn.Module) else state_dict)
        self.version = int(version)
        return self.version

    def run(self, chunk: Chunk, max_new_tokens: int | None = None,
            group_size: int | None = None) -> tuple[list[Trajectory], RolloutStats]:
        """Episodes of ``chunk`` stamped with the weights version that produced them, and the chunk's stats.
        ``max_new_tokens`` / ``group_size`` cap a preflight probe's episodes; a training chunk passes none.

        The RNG fork keeps a chunk's sampling a function of its seed alone (not of earlier chunks on this
        worker) and leaves the process's own RNG streams untouched for whatever else runs here."""
        sampling = SamplingParams.from_config(self.cfg.engine.sampling, seed=chunk.seed)
        if max_new_tokens is not None:
            sampling.max_new_tokens = min(sampling.max_new_tokens, int(max_new_tokens))
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(chunk.seed)
            random.seed(chunk.seed)
            np.random.seed(chunk.seed)
            try:
                trajectories = self.rollout.run(list(chunk.tasks), sampling,
                                                group_size=group_size or int(self.cfg.trainer.group_size))
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        for traj in trajectories:
            # Groups are numbered by task position in the chunk; make it the step's position, as one call
            # over the whole list would (GRPO normalises within a group).
            traj.group_id += chunk.start
            traj.info["policy_version"] = self.version
            traj.info["rollout_chunk"] = chunk.index
        return trajectories, self.rollout.stats

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out greedy success per entry and overall, plus the configured eval suite, if any."""
        if self._heldout is None:
            self._heldout = EntryHeldout.from_config(self.cfg.entries, self.cfg.engine, self.cfg.sandbox,
                                                     self.cfg.trainer.heldout_tasks, self.engine, self.tokenizer,
                                                     self.processor)
        label = f"held-out student (step {step})"
        found = (self._heldout.metrics(self._initial_scores(label)) if step == 0 else
                 self._heldout.evaluate(label=label))
        if self.cfg.eval.benchmarks:
            from reopold_agents.evaluation import evaluate_suite, flatten_for_logging

            results = evaluate_suite(self.engine, self.tokenizer, self.cfg.eval, processor=self.processor,
                                     engine_cfg=self.cfg.engine, sandbox=self.cfg.sandbox, label=f"step-{step}",
                                     out_dir=None, progress=False, plots=False)
            for key, value in flatten_for_logging(results).items():
                found["suite/" + key.removeprefix("eval/")] = value
        return found

    def _initial_scores(self, label: str) -> dict[str, HeldoutScore]:
        """The initial student's held-out scores per entry: read from ``trainer.heldout_cache`` where a run
        from the same weights, held-out set, sampling and code measured them (``evaluation.heldout_cache``;
        sibling seeds and objectives share this number), else measured and stored there. Only for the HF
        engine (whose weights this process holds) with inert adapters; otherwise simply measured."""
        from reopold_agents.evaluation.heldout import heldout_env_config
        from reopold_agents.evaluation.heldout_cache import SuccessCache, heldout_key, model_identity
        from reopold_agents.lora import adapters_inert

        assert self._heldout is not None
        model = getattr(self.engine, "model", None)
        if self.cfg.engine.name != "hf" or not isinstance(model, torch.nn.Module) or not adapters_inert(model):
            return {name: score for name, (score, _) in self._heldout.scores(label).items()}
        cache = SuccessCache.for_run(self.cfg.trainer)
        identity = model_identity("student", self.cfg.engine.name, model, self.tokenizer, self.processor,
                                  self.cfg.engine, self.cfg.sandbox)
        keys = {name: heldout_key(identity, heldout_env_config(self.cfg.entries[name].env,
                                                               self.cfg.trainer.heldout_tasks), held.tasks)
                for name, held in self._heldout.sets.items()}
        known = {name: score for name, key in keys.items() if (score := cache.get(key)) is not None}
        for name, score in known.items():
            log.info("student held-out success of %s at step 0: %.3f, from %s", name, score.success, cache.path)
        measured = self._heldout.scores(label, known)
        for name, (score, seconds) in measured.items():
            if name not in known:
                cache.put(keys[name], score, seconds)
        return {name: score for name, (score, _) in measured.items()}

    def close(self) -> None:
        self.rollout.close()
        if self._heldout is not None:
            self._heldout.close()
        self.engine.close()


class TeacherRole:
    """The run's teachers (one per distinct name, routed by entry); stateless between calls, so a retry is safe.

    ``student``: the in-process learner's module. With a LoRA student (``model.lora.enabled``) its frozen
    base *is* the initial student, so ``model.teacher=self`` scores with that module, adapters disabled
    for the call, instead of loading a second copy. Anywhere else (no LoRA, or a teacher actor of its
    own under Ray) ``self`` loads a frozen copy of the initial student."""

    def __init__(self, cfg: RunConfig, cpus: float | None = None, student: torch.nn.Module | None = None) -> None:
        from reopold_agents.lora import hf_module, is_peft
        from reopold_agents.models import load_tokenizer_and_processor
        from reopold_agents.teacher.router import TeacherRouter

        _limit_threads(cpus)
        self.cfg = cfg
        needs_teacher, top_k = objective_needs(cfg)
        self.router: TeacherRouter | None = None
        # the LoRA student whose base scores for teacher=self (its adapters are off during each call)
        self.frozen_base_of: torch.nn.Module | None = (
            student if student is not None and cfg.model.lora.enabled and is_peft(student) else None)
        if needs_teacher:
            student_tok = load_tokenizer_and_processor(cfg.model.student, "student")[0]
            base = None if self.frozen_base_of is None else hf_module(self.frozen_base_of)
            self.router = TeacherRouter.from_config(cfg.entries, cfg.model, student_tok, top_k=top_k,
                                                    engine_cfg=cfg.engine, self_model=base)

    def _teacher_weights(self) -> contextlib.AbstractContextManager[None]:
        """While scoring: a shared LoRA student computes its frozen base (adapters disabled)."""
        from reopold_agents.lora import adapters_disabled

        return contextlib.nullcontext() if self.frozen_base_of is None else adapters_disabled(self.frozen_base_of)

    def ready(self) -> int:
        return os.getpid()

    def score(self, batch: Batch) -> TeacherScores | None:
        """The teachers' scores of ``batch`` (None: the objective learns without a teacher)."""
        if self.router is None:
            return None
        with self._teacher_weights():
            return self.router.score(batch)

    def heldout_success(self) -> dict[str, float] | None:
        """Each entry's teacher on that entry's held-out set, greedy through the HF engine, as
        ``eval/teacher/<entry>/success`` and their weighted ``eval/teacher/success``; None where a teacher has
        no weights in this process (served over HTTP, or run by vLLM) or no objective reads one."""
        from reopold_agents.config.mix import mix_weights
        from reopold_agents.teacher.router import teacher_routes

        if self.router is None:
            return None
        routes = teacher_routes(self.cfg.entries, self.cfg.model)
        scorers = {entry: self.router.teachers[label] for entry, label in routes.items()}
        if any(getattr(s, "model", None) is None for s in scorers.values()):
            return None
        found: dict[str, float] = {}
        weights = mix_weights(self.cfg.entries)
        with self._teacher_weights():
            found.update(self._heldout(scorers))
        found["eval/teacher/success"] = sum(weights[e] * found[f"eval/teacher/{e}/success"] for e in scorers)
        return found

    def _heldout(self, scorers: dict[str, Any]) -> dict[str, float]:
        """Each entry's teacher's greedy held-out success, ``eval/teacher/<entry>/success``: read from
        ``trainer.heldout_cache`` when that holds it for the same weights, held-out set, sampling and code
        (``evaluation.heldout_cache``), else measured (with a progress bar where this process shows one) and
        stored there."""
        from reopold_agents.engines.hf import HFEngine
        from reopold_agents.evaluation.heldout import HeldoutSet, heldout_env_config
        from reopold_agents.evaluation.heldout_cache import SuccessCache, heldout_key, model_identity

        found: dict[str, float] = {}
        cache = SuccessCache.for_run(self.cfg.trainer)
        identities: dict[tuple[int, int, int], dict[str, Any]] = {}  # one weights hash per teacher, any entries
        for entry, scorer in scorers.items():
            model, tok = scorer.model, scorer.tokenizer  # type: ignore[union-attr]
            processor = getattr(scorer, "processor", None)
            engine = HFEngine(model, tok, processor=processor, max_batch_size=max(1, self.cfg.engine.max_batch_size))
            env_cfg = self.cfg.entries[entry].env
            held = HeldoutSet.from_config(env_cfg, self.cfg.engine, self.cfg.sandbox, self.cfg.trainer.heldout_tasks,
                                          engine, tok, processor)
            try:
                who = (id(model), id(tok), id(processor))
                if who not in identities:
                    identities[who] = model_identity("teacher", "hf", model, tok, processor, self.cfg.engine,
                                                     self.cfg.sandbox)
                key = heldout_key(identities[who], heldout_env_config(env_cfg, self.cfg.trainer.heldout_tasks),
                                  held.tasks)
                remembered = cache.get(key)
                if remembered is None:
                    start = time.perf_counter()
                    success = held.success_shown(f"held-out teacher ({entry})" if len(scorers) > 1 else
                                                 "held-out teacher")
                    cache.put(key, HeldoutScore(success), time.perf_counter() - start)
                else:
                    success = remembered.success
                    log.info("teacher held-out success of %s: %.3f, from %s", entry, success, cache.path)
                found[f"eval/teacher/{entry}/success"] = success
            finally:
                held.close()
                engine.close()
        return found

    def close(self) -> None:
        """Nothing to release: the teachers' models go with the role."""


class LearnerRole:
    """The learner (one rank of it) and its weights version (number of updates applied), which stamps every
    broadcast. With several ranks the learner is built in a second phase (``build``), once rank 0's address
    is known, so ``torch.distributed`` can rendezvous there."""

    def __init__(self, cfg: RunConfig, cpus: float | None = None, defer: bool = False) -> None:
        _limit_threads(cpus)
        self.cfg = cfg
        self.learner: Any = None
        self.is_main = True
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
        """Set the rank's torch.distributed env (RANK, WORLD_SIZE, MASTER_ADDR, ...) and build the learner.
        With ``model.lora.enabled`` the student is wrapped here (the one place): only its adapters train."""
        from reopold_agents.learner import Learner
        from reopold_agents.models import load_student

        os.environ.update(env or {})
        cfg = self.cfg
        loaded = load_student(cfg.model)
        self.tokenizer = loaded.tokenizer
        student = loaded.model
        if cfg.model.lora.enabled:
            from reopold_agents.lora import apply_lora

            student = apply_lora(student, cfg.model.lora, cfg.model.student)
        chunk = cfg.model.logprob_chunk_size
        recompute = cfg.recomputes_old_logprobs
        if cfg.distributed.uses_accelerate:
            from reopold_agents.accelerate_learner import AccelerateLearner

            self.learner = AccelerateLearner(student, cfg.algo, cfg.trainer, cfg.distributed,
                                             logprob_chunk_size=chunk, recompute_old_logprobs=recompute,
                                             pack_sequences=cfg.model.pack_sequences)
            self.is_main = bool(self.learner.accelerator.is_main_process)
            if cfg.model.lora.enabled and self.learner.fsdp:
                raise ValueError("model.lora.enabled: LoRA students are not supported by the FSDP learner (its "
                                 "flattened shards hide the adapters); use distributed.learner_strategy=ddp")
        else:
            self.learner = Learner(student, cfg.algo, cfg.trainer, logprob_chunk_size=chunk,
                                   recompute_old_logprobs=recompute, pack_sequences=cfg.model.pack_sequences)
        return os.getpid()

    @property
    def model(self) -> torch.nn.Module:
        """The student as the learner trains it (an in-process rollout shares it; with LoRA a peft
        ``PeftModel``, and an in-process ``model.teacher=self`` scores its base)."""
        return self.learner.unwrapped

    def ready(self) -> int:
        return os.getpid()

    def update(self, batch: Batch, step: int) -> tuple[dict[str, float], int]:
        """Apply one step; return its metrics and the learner version the update started from."""
        started_at = self.version
        metrics = dict(self.learner.step(batch, step))
        metrics.setdefault("learner_ranks", 1.0)
        self.version += 1
        return metrics, started_at

    def logprobs(self, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """The learner's log-probs ``[B, T]`` of ``batch``'s trained tokens (0 elsewhere), on CPU."""
        return self.learner.token_logprobs(batch, temperature).detach().float().cpu()

    def weights(self, ship: bool = True) -> tuple[StateDict | None, int]:
        """Full CPU weights for broadcast, with their version. Every rank must call it (FSDP gathers the full
        state collectively); only the shipping rank returns the tensors. A LoRA student ships its adapters
        merged into plain HF-named weights (what a rollout worker's own plain student or vLLM loads)."""
        full = getattr(self.learner, "full_state_dict", None)
        if self.cfg.model.lora.enabled:
            from reopold_agents.lora import merged_state_dict

            state = merged_state_dict(self.learner.unwrapped)
        else:
            state = full() if callable(full) else self.learner.model.state_dict()
        if not ship:
            return None, self.version
        return {k: v.detach().to("cpu") for k, v in state.items()}, self.version

    def save(self, directory: str, step: int, data_state: dict[str, Any] | None = None) -> None:
        """A resumable HF-format checkpoint for ``step`` (rank 0 writes; FSDP gathers on all ranks)."""
        from reopold_agents.checkpoint import save_checkpoint

        if self.is_main:
            save_checkpoint(directory, step, self.learner.unwrapped, self.learner.optimizer, self.learner.scheduler,
                            tokenizer=self.tokenizer, data_state=data_state, keep_last=self.cfg.trainer.keep_checkpoints)

    def load(self, directory: str) -> Any:
        """Restore the newest checkpoint under ``directory`` (or that checkpoint itself); a ResumeState. The
        weights version becomes the checkpoint's step."""
        from reopold_agents.checkpoint import latest_checkpoint, load_checkpoint

        path = Path(directory) if (Path(directory) / "state.json").is_file() else latest_checkpoint(directory)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint under {directory}")
        state = load_checkpoint(path, self.learner.unwrapped, self.learner.optimizer, self.learner.scheduler)
        self.version = int(getattr(state, "step", state))
        return state

    def close(self) -> None:
        close = getattr(self.learner, "close", None)
        if callable(close):
            close()
