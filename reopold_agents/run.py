"""``python -m reopold_agents.run``: the on-policy distillation training loop (Hydra CLI).

Each step: the student plays ``prompts_per_step x group_size`` episodes (rollout) -> the teacher scores
the student's exact ids -> collate -> one learner step -> weight sync to the engine -> metrics. The
student's greedy success on a fixed held-out task set is measured before training, every
``trainer.eval_every`` steps and at the end, and printed as a before/after line.

Everything a step depends on is a function of (config, step): the prompts (data position), the
sampling seed and, after a resume, the restored model/optimizer/scheduler/RNG state; so a run resumed
from a checkpoint replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import hydra
import torch
from omegaconf import DictConfig

from reopold_agents.config import RunConfig, validate
from reopold_agents.config.schema import ConfigError
from reopold_agents.metrics import MetricsLogger, summarize
from reopold_agents.trajectory import Trajectory, collate

log = logging.getLogger(__name__)

HELDOUT_TASKS = 64  # size of the fixed held-out success set
HELDOUT_SEED_OFFSET = 100_003  # held-out synthetic tasks use env.seed + this (never the training seed)
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"


@dataclass
class RunResult:
    """What a finished run reports (also written to ``<output_dir>/summary.json``)."""

    output_dir: str
    steps: int
    success_before: float
    success_after: float
    seconds: float
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out success)
    plot: str | None = None


# ----------------------------------------------------------------------------------------- data


def step_prompts(step: int, prompts_per_step: int, num_tasks: int, seed: int) -> list[int]:
    """Task indices of ``step``: a seeded permutation per pass over the tasks, read in order.

    Pure function of its arguments, so the data position after a resume is just the step counter.
    """
    out = []
    for k in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, offset = divmod(k, num_tasks)
        perm = list(range(num_tasks))
        random.Random(f"prompts:{seed}:{epoch}").shuffle(perm)
        out.append(perm[offset])
    return out


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def _heldout_env_config(env_cfg: Any) -> Any:
    """The held-out set: synthetic tasks from a disjoint seed, or the first tasks of a file source."""
    size = HELDOUT_TASKS
    if env_cfg.tasks.startswith("synthetic"):
        return replace(env_cfg, seed=env_cfg.seed + HELDOUT_SEED_OFFSET, size=size)
    return replace(env_cfg, size=size)


# ------------------------------------------------------------------------------------ components


@dataclass
class _Parts:
    student: Any
    teacher: Any
    engine: Any
    learner: Any
    rollout: Any
    eval_rollout: Any
    train_tasks: Sequence[Any]
    stop_ids: list[int]


def resolve_tiny(cfg: RunConfig) -> RunConfig:
    """``model=tiny`` names the tiny pair made for the env (``tiny_models.ENV_TINY``): the Qwen2.5-VL
    pair for vqa, the tool-guessing student for toolqa, the plain pair otherwise."""
    from reopold_agents.tiny_models import ENV_TINY

    want = ENV_TINY.get(cfg.env.name, "tiny")
    if cfg.model.student == "tiny" and cfg.model.teacher == "tiny" and want != "tiny":
        return replace(cfg, model=replace(cfg.model, student=want, teacher=want))
    return cfg


def _build(cfg: RunConfig, build_tiny: bool = True) -> _Parts:
    from envs.factory import build_env, load_env_tasks
    from reopold_agents.config.model import TINY_NAMES
    from reopold_agents.engines import make_engine
    from reopold_agents.learner import Learner
    from reopold_agents.models import load_student
    from reopold_agents.rollout import Rollout
    from reopold_agents.teacher import build_teacher

    if build_tiny and cfg.model.student in TINY_NAMES:
        from reopold_agents.tiny_models import ensure_tiny

        ensure_tiny(cfg.model.student)
    student = load_student(cfg.model)
    student.model.train()
    teacher = None
    placed_elsewhere = cfg.distributed.backend != "single"  # teacher/learner live in the backend's actors
    if cfg.algo.name != "grpo" and not placed_elsewhere:  # GRPO learns from the outcome reward alone
        top_k = cfg.algo.gkd_topk if cfg.algo.name == "gkd" else 0
        teacher = build_teacher(cfg.model, student.tokenizer, top_k=top_k, engine_cfg=cfg.engine)
    engine = make_engine(cfg.engine, model=student.model, tokenizer=student.tokenizer,
                         processor=student.processor, model_path=student.path)
    learner = None if placed_elsewhere else Learner(student.model, cfg.algo, cfg.trainer)
    sandbox = cfg.sandbox if "python" in cfg.env.tools else None
    train_tasks = load_env_tasks(cfg.env)
    heldout_cfg = _heldout_env_config(cfg.env)
    heldout_tasks = load_env_tasks(heldout_cfg)
    rollout = Rollout.from_config(cfg.engine, engine, student.tokenizer,
                                  lambda: build_env(cfg.env, tasks=train_tasks, sandbox=sandbox), student.processor)
    eval_rollout = Rollout.from_config(cfg.engine, engine, student.tokenizer,
                                       lambda: build_env(heldout_cfg, tasks=heldout_tasks, sandbox=sandbox),
                                       student.processor)
    eval_rollout.eval_size = len(heldout_tasks)  # type: ignore[attr-defined]
    return _Parts(student, teacher, engine, learner, rollout, eval_rollout, train_tasks, [])


def heldout_success(parts: _Parts, cfg: RunConfig) -> float:
    """Greedy success of the current student on the held-out tasks."""
    n = parts.eval_rollout.eval_size
    sampling = replace(cfg.engine.sampling(seed=0), temperature=0.0)
    wins = 0
    batch = max(1, cfg.engine.max_batch_size)
    for start in range(0, n, batch):
        prompts = [{"options": {"task_index": i}} for i in range(start, min(n, start + batch))]
        wins += sum(t.success for t in parts.eval_rollout.run(prompts, sampling))
    return wins / n


def rollout_metrics(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Outcome reward/success, lengths, and the teacher log-ratio r_t = log pi_T - log pi_old on student tokens."""
    out: dict[str, float] = {
        "rollout/reward": sum(t.reward for t in trajs) / len(trajs),
        "rollout/success": sum(t.success for t in trajs) / len(trajs),
        "rollout/response_tokens": sum(t.num_generated for t in trajs) / len(trajs),
        "rollout/turns": sum(len(t.turns) for t in trajs) / len(trajs),
        "rollout/seq_len": sum(len(t) for t in trajs) / len(trajs),
    }
    ratios = [tl - ol for t in trajs if t.teacher_logprobs is not None
              for tl, ol, m in zip(t.teacher_logprobs, t.rollout_logprobs, t.loss_mask) if m]
    out.update(summarize("teacher/log_ratio", ratios))
    return out


def check_masks(trajs: Sequence[Trajectory]) -> None:
    """Fail loudly if a trajectory would train on env tokens or the teacher scored other positions."""
    for i, t in enumerate(trajs):
        if not (len(t.token_ids) == len(t.loss_mask) == len(t.rollout_logprobs)):
            raise RuntimeError(f"trajectory {i}: ids/mask/logprob lengths differ")
        if t.teacher_logprobs is not None:
            if len(t.teacher_logprobs) != len(t):
                raise RuntimeError(f"trajectory {i}: teacher scored {len(t.teacher_logprobs)} of {len(t)} positions")
            if any(lp != 0.0 for lp, m in zip(t.teacher_logprobs, t.loss_mask) if not m):
                raise RuntimeError(f"trajectory {i}: teacher log-probs on env tokens")


# ------------------------------------------------------------------------------------------ loop


StepCallback = Callable[[int, dict[str, float]], None]


def train(cfg: RunConfig, progress: bool = True, on_step: StepCallback | None = None, build_tiny: bool = True) -> RunResult:
    """Run (or resume) training as configured; ``on_step(step, metrics)`` runs after every step.

    ``build_tiny=False`` skips building the tiny pair on first use (tests: random tiny models instead).
    """
    from reopold_agents.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    t_start = time.perf_counter()
    cfg = resolve_tiny(cfg)
    tc = cfg.trainer
    out = Path(tc.output_dir)
    ckpt_dir = out / "checkpoints"
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    parts = _build(cfg, build_tiny)
    tok = parts.student.tokenizer
    backend = _make_backend(cfg) if cfg.distributed.backend != "single" else None

    start_step = 0
    data_state: dict[str, Any] = {}
    if tc.resume:
        latest = latest_checkpoint(ckpt_dir)
        if latest is None:
            log.warning("trainer.resume=true but no checkpoint under %s: starting from scratch", ckpt_dir)
        else:
            if backend is not None:
                state = backend.load(str(latest))
                parts.engine.load_weights(backend.state_dict())  # the driver's held-out evaluation engine
            else:
                state = load_checkpoint(latest, parts.student.model, parts.learner.optimizer, parts.learner.scheduler)
                parts.engine.load_weights(parts.student.model)
            start_step, data_state = state.step, dict(state.data_state)
            log.info("resumed from %s at step %d", latest, start_step)
            print(f"resumed from {latest} at step {start_step}")
    logger = MetricsLogger(out, resume_step=start_step if start_step else None)
    evals: list[tuple[int, float]] = [tuple(e) for e in data_state.get("evals", [])]  # type: ignore[misc]

    def save(step: int) -> None:
        data = {"position": step * tc.prompts_per_step, "evals": evals}
        if backend is not None:
            backend.save(str(ckpt_dir), step, data)
        else:
            save_checkpoint(ckpt_dir, step, parts.student.model, parts.learner.optimizer,
                            parts.learner.scheduler, tok, data, tc.keep_checkpoints)

    steps = backend.train(lambda k: _step_tasks(cfg, parts, k), start_step, tc.total_steps) if backend else None

    def evaluate(step: int) -> float:
        found = run_evals(parts, cfg, step)
        evals.append((step, found["eval/success"]))
        logger.log(step, found)
        return found["eval/success"]

    try:
        if start_step == 0:
            evaluate(0)
        before = evals[0][1]
        bar = _Bar(progress, tc.total_steps, start_step)
        with bar:
            for step in range(start_step, tc.total_steps):
                metrics = _train_step(parts, cfg, step) if steps is None else _backend_step(parts, cfg, backend, steps, step)
                done = step + 1
                if tc.eval_every and done % tc.eval_every == 0 and done < tc.total_steps:
                    metrics.update(run_evals(parts, cfg, done))
                    evals.append((done, metrics["eval/success"]))
                if done % tc.log_every == 0 or done == tc.total_steps:
                    logger.log(done, metrics)
                bar.update(metrics)
                if on_step is not None:
                    on_step(done, metrics)
                if tc.save_every and done % tc.save_every == 0 and done < tc.total_steps:
                    save(done)
        after = evaluate(tc.total_steps) if not evals or evals[-1][0] != tc.total_steps else evals[-1][1]
        save(tc.total_steps)
    finally:
        if steps is not None:
            steps.close()
        if backend is not None:
            backend.shutdown()
        logger.close()
        parts.rollout.close()
        parts.eval_rollout.close()
        parts.engine.close()

    plot = None
    try:
        from reopold_agents.plots import plot_metrics

        plot = str(plot_metrics(out, out / PLOT_FILE, title=f"{cfg.env.name} / {cfg.algo.name}"))
    except Exception as exc:  # a broken plot must not lose a finished run
        log.warning("could not draw the curves: %s", exc)
    result = RunResult(str(out), tc.total_steps, before, after, time.perf_counter() - t_start, evals, plot)
    (out / SUMMARY_FILE).write_text(json.dumps(result.__dict__, indent=2))
    print(f"held-out success ({cfg.env.name}, {len(range(parts.eval_rollout.eval_size))} tasks, greedy): "
          f"before {before:.3f} -> after {after:.3f}   [{tc.total_steps} steps, {result.seconds:.0f}s]")
    print(f"metrics: {out / 'metrics.jsonl'}  tensorboard: {out / 'tensorboard'}  plot: {plot}  checkpoints: {ckpt_dir}")
    return result


def run_evals(parts: _Parts, cfg: RunConfig, step: int) -> dict[str, float]:
    """Held-out greedy success (``eval/success``) plus, when an ``eval=<suite>`` is configured, the
    suite's metrics under ``suite/...`` (docs/evaluate.md)."""
    found = {"eval/success": heldout_success(parts, cfg)}
    if cfg.eval.benchmarks:
        from reopold_agents.evaluation import evaluate_suite, flatten_for_logging

        results = evaluate_suite(parts.engine, parts.student.tokenizer, cfg.eval, processor=parts.student.processor,
                                 engine_cfg=cfg.engine, sandbox=cfg.sandbox, label=f"step-{step}", out_dir=None,
                                 progress=False, plots=False)
        for key, value in flatten_for_logging(results).items():
            found["suite/" + key.removeprefix("eval/")] = value
    return found


def _step_tasks(cfg: RunConfig, parts: _Parts, step: int) -> list[dict[str, Any]]:
    """The env resets of step ``step``: a seeded permutation read at ``step * prompts_per_step``."""
    tc = cfg.trainer
    return [{"options": {"task_index": i}} for i in step_prompts(step, tc.prompts_per_step, len(parts.train_tasks), tc.seed)]


def _make_backend(cfg: RunConfig) -> Any:
    """Rollout workers, teacher and learner placed by ``distributed.backend`` (docs/distributed.md)."""
    from reopold_agents.distributed import make_backend
    from reopold_agents.distributed.default_roles import default_factories

    return make_backend(cfg, default_factories())


def _backend_step(parts: _Parts, cfg: RunConfig, backend: Any, steps: Any, step: int) -> dict[str, float]:
    """One step run by the placement backend; the driver keeps an up-to-date copy for held-out evals."""
    t0 = time.perf_counter()
    result = next(steps)
    if result.step != step:
        raise RuntimeError(f"backend returned step {result.step}, expected {step}")
    check_masks(result.trajectories)
    metrics = dict(result.metrics)
    metrics.pop("step", None)
    metrics.update(rollout_metrics(result.trajectories))
    parts.engine.load_weights(backend.state_dict())
    metrics.update({"perf/step_time_s": time.perf_counter() - t0,
                    "data/position": float((step + 1) * cfg.trainer.prompts_per_step)})
    return metrics


def _train_step(parts: _Parts, cfg: RunConfig, step: int) -> dict[str, float]:
    tc = cfg.trainer
    t0 = time.perf_counter()
    prompts = _step_tasks(cfg, parts, step)
    sampling = cfg.engine.sampling(seed=step_seed(cfg.engine.seed + tc.seed, step))
    trajs = parts.rollout.run(prompts, sampling, group_size=tc.group_size)
    t1 = time.perf_counter()
    if parts.teacher is not None:
        parts.teacher.score(trajs)
    t2 = time.perf_counter()
    check_masks(trajs)
    batch = collate(trajs, parts.student.tokenizer.pad_token_id)
    metrics: dict[str, float] = dict(parts.learner.step(batch, step))
    parts.engine.load_weights(parts.student.model)
    t3 = time.perf_counter()
    metrics.pop("step", None)
    metrics.update(rollout_metrics(trajs))
    gen_tokens = parts.rollout.stats.generated_tokens
    metrics.update({
        "perf/step_time_s": t3 - t0,
        "perf/rollout_s": t1 - t0,
        "perf/teacher_s": t2 - t1,
        "perf/learner_s": t3 - t2,
        "perf/tokens_per_s": gen_tokens / max(1e-9, parts.rollout.stats.generate_s),
        "data/position": float((step + 1) * tc.prompts_per_step),
    })
    return metrics


class _Bar:
    """A rich progress bar over training steps showing the latest rollout success and reward."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self._p = None

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("success {task.fields[succ]:.2f} log-ratio {task.fields[lr]:+.2f}"),
                               TimeElapsedColumn(), TimeRemainingColumn())
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.total, completed=self.done, succ=0.0, lr=0.0)
        return self

    def update(self, metrics: dict[str, float]) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, succ=metrics.get("rollout/success", 0.0),
                           lr=metrics.get("teacher/log_ratio/mean", 0.0))

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


# ------------------------------------------------------------------------------------------- CLI


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run_cfg = validate(cfg)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    train(run_cfg)


if __name__ == "__main__":
    main()
