"""``python -m reopold_agents.run``: on-policy distillation training (Hydra CLI).

config -> roles placed by the backend (``distributed=single|ray``) -> ``step.run_steps`` (the one
training step: rollout -> teacher scoring -> learner update -> weight sync) -> metrics, held-out
evaluation, checkpoints. The student's greedy success on a fixed held-out task set is measured before
training, every ``trainer.eval_every`` steps and at the end, and printed as a before/after line.

Everything a step depends on is a function of (config, step): the prompts (``seeding.step_prompts``),
the sampling seeds (``seeding.chunk_seed``) and, after a resume, the restored model/optimizer/
scheduler/RNG state; so a run resumed from a checkpoint replays exactly the steps an uninterrupted run
would have taken.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import hydra
import torch
from omegaconf import DictConfig

from reopold_agents.config import RunConfig, validate
from reopold_agents.config.schema import resolve_tiny
from reopold_agents.config.schema import ConfigError
from reopold_agents.evaluation.heldout import gap_closed
from reopold_agents.evaluation.progress import Host, shown
from reopold_agents.metrics import MetricsLogger
from reopold_agents.step import StepResult, run_steps
from reopold_agents.threads import apply as apply_threads
from reopold_agents.threads import plan as plan_threads

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger(__name__)

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
    by_env: dict[str, tuple[float, float]] = field(default_factory=dict)  # mix runs: entry -> (before, after)
    teacher_success: float | None = None  # the teacher on the same held-out set (trainer.eval_teacher)
    gap_closed: float | None = None  # (after - before) / (teacher - before)
    best: tuple[int, float] | None = None  # trainer.keep_best: (step, held-out success) of checkpoints/best


def check_startup(cfg: RunConfig) -> None:
    """What the schema cannot see, checked before any model loads: each entry's env keys its env does not
    take, teacher names that do not exist or that no objective reads, and model paths that do not exist
    (raise ConfigError naming the key)."""
    from reopold_agents.models import check_model_name
    from reopold_agents.objectives import check_algo
    from reopold_agents.startup import check_entries

    try:
        check_algo(cfg.algo)
    except ValueError as exc:
        raise ConfigError(f"algo.{exc}") from None
    try:
        check_entries(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for role in ("student", "teacher"):
        try:
            check_model_name(getattr(cfg.model, role))
        except ValueError as exc:
            raise ConfigError(f"model.{role}: {exc}") from None


StepCallback = Callable[[StepResult], None]


def train(cfg: RunConfig, progress: bool = True, on_step: StepCallback | None = None) -> RunResult:
    """Run (or resume) training as configured; ``on_step(result)`` runs after every step with the step's
    episodes, scored batch and metrics (``StepResult``; ``result.metrics`` as logged)."""
    from reopold_agents.checkpoint import BEST_DIR, best_step, keep_best, latest_checkpoint
    from reopold_agents.distributed import make_backend
    from reopold_agents.entries import TaskSampler

    t_start = time.perf_counter()
    cfg = resolve_tiny(cfg)
    check_startup(cfg)
    apply_threads(plan_threads(cfg.distributed.threads))  # this process's torch/OpenMP threads (threads.py)
    tc = cfg.trainer
    out = Path(tc.output_dir)
    ckpt_dir = out / "checkpoints"
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    entries = cfg.entries
    tasks_for_step = TaskSampler.from_config(entries, tc.prompts_per_step, tc.seed).tasks
    backend = make_backend(cfg)

    start_step = 0
    data_state: dict[str, Any] = {}
    if tc.resume:
        latest = latest_checkpoint(ckpt_dir)
        if latest is None:
            log.warning("trainer.resume=true but no checkpoint under %s: starting from scratch", ckpt_dir)
        else:
            state = backend.load(str(latest))
            start_step, data_state = state.step, dict(state.data_state)
            log.info("resumed from %s at step %d", latest, start_step)
            print(f"resumed from {latest} at step {start_step}")
    logger = MetricsLogger(out, resume_step=start_step if start_step else None)
    evals: list[tuple[int, float]] = [tuple(e) for e in data_state.get("evals", [])]  # type: ignore[misc]
    # entry -> held-out success at each evaluation (kept in checkpoints, as evals is)
    env_evals: dict[str, list[float]] = {k: list(v) for k, v in data_state.get("env_evals", {}).items()}
    teacher: float | None = data_state.get("teacher_success")

    def save(step: int) -> None:
        backend.save(str(ckpt_dir), step, {"position": step * tc.prompts_per_step, "evals": evals,
                                           **({"env_evals": env_evals} if env_evals else {}),
                                           **({"teacher_success": teacher} if teacher is not None else {})})

    def evaluate(step: int, bars: Host = progress) -> dict[str, float]:
        with shown(bars):  # a bar where the evaluation runs in this process (not in a Ray actor)
            found = backend.evaluate(step)
        evals.append((step, found["eval/success"]))
        for name in entries:
            env_evals.setdefault(name, []).append(found[f"eval/{name}/success"])
        return found

    def keep_if_best(step: int, saved: bool) -> None:
        """trainer.keep_best: an evaluation at ``step`` that beats every earlier one becomes checkpoints/best."""
        if tc.keep_best and evals[-1][0] == step and best_step(evals) == evals[-1]:
            if not saved:
                save(step)
            keep_best(ckpt_dir, step)

    steps = run_steps(backend, tasks_for_step, start_step, tc.total_steps, cfg.distributed.async_rollout,
                      max_skipped_steps=tc.max_skipped_steps)  # raises NonFiniteStepsError at the limit
    try:
        from reopold_agents.preflight import run_preflight

        run_preflight(cfg, backend, tasks_for_step(start_step), start_step)  # prints its table; raises on a fail
        if start_step == 0:
            first = evaluate(0)
            with shown(progress):  # remembered in trainer.heldout_cache (evaluation/heldout_cache.py)
                found = backend.ask("teacher", "heldout_success") if tc.eval_teacher else None
            if found is not None:  # measured by the teacher role: the driver holds no model
                teacher = found["eval/teacher/success"]
                first.update(found)
                first["eval/teacher_success"] = teacher
            logger.log(0, first)
        before = evals[0][1]
        with _Bar(progress, tc.total_steps, start_step) as bar:
            for result in steps:
                metrics = dict(result.metrics)
                done = result.step + 1
                metrics["data/position"] = float(done * tc.prompts_per_step)
                if tc.eval_every and done % tc.eval_every == 0 and done < tc.total_steps:
                    metrics.update(evaluate(done, bar.host))
                if done % tc.log_every == 0 or done == tc.total_steps:
                    logger.log(done, metrics)
                bar.update(metrics)
                if on_step is not None:
                    on_step(replace(result, metrics=metrics))
                if tc.save_every and done % tc.save_every == 0 and done < tc.total_steps:
                    save(done)
                if done < tc.total_steps:
                    keep_if_best(done, saved=bool(tc.save_every) and done % tc.save_every == 0)
        if not evals or evals[-1][0] != tc.total_steps:
            logger.log(tc.total_steps, evaluate(tc.total_steps))
        after = evals[-1][1]
        save(tc.total_steps)
        keep_if_best(tc.total_steps, saved=True)
    finally:
        steps.close()
        backend.shutdown()
        logger.close()

    plot = None
    try:
        from reopold_agents.plots import plot_metrics

        plot = str(plot_metrics(out, out / PLOT_FILE, title=f"{'+'.join(entries)} / {cfg.algo.name}"))
    except Exception as exc:  # a broken plot must not lose a finished run
        log.warning("could not draw the curves: %s", exc)
    by_env = {name: (vals[0], vals[-1]) for name, vals in env_evals.items()} if len(entries) > 1 else {}
    closed = None if teacher is None else gap_closed(before, after, teacher)
    best = best_step(evals) if tc.keep_best else None
    result = RunResult(str(out), tc.total_steps, before, after, time.perf_counter() - t_start, evals, plot, by_env,
                       teacher, closed, best)
    (out / SUMMARY_FILE).write_text(json.dumps(result.__dict__, indent=2))
    envs = "".join(f", {n} {b:.3f} -> {a:.3f}" for n, (b, a) in by_env.items())
    target = ""
    if teacher is not None:
        target = f" (teacher {teacher:.3f}, gap closed " + ("n/a: the teacher is not above the start" if closed is None
                                                        else f"{closed:.0%}") + ")"
    print(f"held-out success ({'+'.join(entries)}, {tc.heldout_tasks} tasks{' per env' if by_env else ''}, greedy): "
          f"before {before:.3f} -> after {after:.3f}{target}{envs}   [{tc.total_steps} steps, {result.seconds:.0f}s]")
    print(f"metrics: {out / 'metrics.jsonl'}  tensorboard: {out / 'tensorboard'}  plot: {plot}  checkpoints: {ckpt_dir}"
          + (f"  best: {ckpt_dir / BEST_DIR} (step {best[0]}, held-out {best[1]:.3f})" if best else ""))
    return result


class _Bar:
    """A rich progress bar over training steps showing the latest rollout success and reward; a periodic
    held-out evaluation shows as a second row of the same display (``host``)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self._p: Progress | None = None

    @staticmethod
    def _info(success: float, log_ratio: float) -> str:
        return f"success {success:.2f} log-ratio {log_ratio:+.2f}"

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from reopold_agents.evaluation.progress import new_progress

            self._p = new_progress()
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.total, completed=self.done, info=self._info(0.0, 0.0))
        return self

    @property
    def host(self) -> Host:
        """Where an evaluation during training draws its bar: this display, or nowhere."""
        return self._p if self._p is not None else False

    def update(self, metrics: dict[str, float]) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, info=self._info(metrics.get("rollout/success", 0.0),
                                                                   metrics.get("teacher/log_ratio/mean", 0.0)))

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
