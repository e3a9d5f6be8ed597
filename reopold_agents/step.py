"""The one training step: rollout -> collate -> teacher scoring -> mask check -> learner update -> weight sync.

``train_step`` is the step, written once; ``run_steps`` drives it synchronously or asynchronously
(the rollout of step k+1 submitted with the weights of step k before step k's update, so it overlaps
scoring and the update: every batch after the first is one policy version old, which the importance
ratio against the rollout's own log-probs corrects; ``policy_lag`` reports the gap). Where the roles
run (this process or Ray actors) is the ``Backend``'s business (reopold_agents/distributed/); the step,
its seeds and its metrics do not change with it.

Non-finite steps: the learner skips an update whose inputs (teacher or old log-probs, rewards) or loss
are NaN/inf and leaves the weights as they were (``skipped_nonfinite``). ``run_steps`` logs a warning
naming the step and what was non-finite for every such step, and stops the run with
``NonFiniteStepsError`` after ``max_skipped_steps`` of them in a row (a teacher that only gives -inf
would otherwise "train" to the end without changing the model). The step that hits the limit is not
yielded, so no checkpoint or metrics are written for it; every checkpoint before it holds the weights
of the last step that did update (a skipped step changes none).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from reopold_agents.metrics import load_1min, summarize
from reopold_agents.distributed.backend import Backend, RolloutHandle
from reopold_agents.entry_metrics import entry_metrics, episode_means, log_ratios
from reopold_agents.objectives.outcome import mixed_groups
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.trajectory import Batch, Trajectory, collate

log = logging.getLogger(__name__)


class NonFiniteStepsError(RuntimeError):
    """``trainer.max_skipped_steps`` steps in a row were skipped for non-finite inputs: the run stops."""


@dataclass
class StepResult:
    """One training step: the episodes, the scored batch the learner consumed, and the step's metrics."""

    step: int
    trajectories: list[Trajectory]
    batch: Batch
    metrics: dict[str, float] = field(default_factory=dict)


def check_batch(batch: Batch) -> None:
    """Fail loudly before an update if the teacher scored positions it must not (env tokens) or another shape."""
    if batch.teacher_logprobs is None:
        return
    if batch.teacher_logprobs.shape != batch.loss_mask.shape:
        raise RuntimeError(f"teacher scored {tuple(batch.teacher_logprobs.shape)} positions for a "
                           f"{tuple(batch.loss_mask.shape)} batch")
    off = (batch.teacher_logprobs != 0) & (batch.loss_mask.to(batch.teacher_logprobs.device) == 0)
    if bool(off.any()):
        rows = sorted(set(off.nonzero()[:, 0].tolist()))
        raise RuntimeError(f"teacher log-probs on env tokens in rows {rows[:5]}")


def rollout_metrics(trajectories: list[Trajectory], batch: Batch, scores: TeacherScores | None) -> dict[str, float]:
    """Outcome reward/success, lengths, and the teacher log-ratio r_t = log pi_T - log pi_old on student tokens."""
    out = episode_means("rollout", trajectories)
    out["rollout/seq_len"] = sum(len(t) for t in trajectories) / len(trajectories)
    # the share of episodes whose prompt group scored unalike: all an outcome advantage (grpo, dapo,
    # algo.outcome_coef) can act on
    out["rollout/mixed_groups"] = float(mixed_groups(batch.rewards, batch.group_ids).float().mean())
    out.update(summarize("teacher/log_ratio", log_ratios(batch).tolist()))
    out.update(entry_metrics(trajectories, batch, scores))  # env/<entry>/*, teacher/<label>/*
    return out


def train_step(backend: Backend, handle: RolloutHandle, step: int, t_submit: float) -> StepResult:
    """Finish the rollout ``handle`` of ``step`` and train on it; weights are synced when this returns."""
    trajectories = handle.result()
    t_rollout = time.perf_counter()
    batch = collate(trajectories, backend.pad_token_id)
    scores = backend.score(batch)
    if scores is not None:
        scores.apply_to(batch)
    check_batch(batch)
    t_score = time.perf_counter()
    learner_metrics, learner_version = backend.update(batch, step)
    backend.sync_weights()
    t_update = time.perf_counter()
    versions = [int(t.info.get("policy_version", learner_version)) for t in trajectories]
    metrics = {k: v for k, v in learner_metrics.items() if k != "step"}
    metrics.update(rollout_metrics(trajectories, batch, scores))
    stats = handle.stats
    metrics.update({
        "policy_lag": float(learner_version - min(versions)),
        "perf/step_time_s": t_update - t_submit,
        "perf/rollout_s": t_rollout - t_submit,
        "perf/teacher_s": t_score - t_rollout,
        "perf/learner_s": t_update - t_score,
        "perf/tokens_per_s": stats.generated_tokens / max(1e-9, stats.generate_s),
        "rollout/episodes": float(len(trajectories)),
        "rollout/redone_chunks": float(stats.redone_chunks),
        "rollout/worker_restarts": float(stats.worker_restarts),
    })
    load = load_1min()  # what the step times were measured under (a shared machine is slower)
    if load is not None:
        metrics["perf/load_1min"] = load
    return StepResult(step=step, trajectories=trajectories, batch=batch, metrics=metrics)


def _nonfinite(name: str, values: torch.Tensor, mask: torch.Tensor, teachers: list[str] | None) -> str | None:
    """``values`` (per token, or per row with a per-row ``mask``) that are not finite where ``mask`` is set:
    how many, which kinds, which rows (and their teachers in a multi-teacher run); None if all are finite."""
    values, mask = values.detach().float().cpu(), mask.detach().cpu() > 0
    bad = ~torch.isfinite(values) & mask
    if not bool(bad.any()):
        return None
    kinds = [k for k, hit in (("NaN", torch.isnan(values) & bad), ("-inf", (values == float("-inf")) & bad),
                              ("+inf", (values == float("inf")) & bad)) if bool(hit.any())]
    rows = sorted(set(bad.nonzero()[:, 0].tolist()))
    labels = sorted({teachers[r] for r in rows}) if teachers else []
    unit = "trained tokens" if values.dim() > 1 else "rows"
    return (f"non-finite {name} on {int(bad.sum())} of {int(mask.sum())} {unit} ({'/'.join(kinds)}) in rows {rows[:8]}"
            + (f" (teacher {', '.join(labels)})" if labels else ""))


def describe_nonfinite(batch: Batch) -> str:
    """What made the learner skip ``batch``: the non-finite inputs on its trained tokens, or else its loss
    or gradient norm (the inputs were finite, the update was not)."""
    found = [d for d in (
        _nonfinite("teacher log-probs", batch.teacher_logprobs, batch.loss_mask, batch.teachers)
        if batch.teacher_logprobs is not None else None,
        _nonfinite("old (rollout) log-probs", batch.old_logprobs, batch.loss_mask, batch.teachers),
        _nonfinite("rewards", batch.rewards, batch.loss_mask.sum(dim=1), batch.teachers),
    ) if d is not None]
    return "; ".join(found) if found else "a non-finite loss or gradient norm in a minibatch (the inputs were finite)"


@dataclass
class SkipGuard:
    """Counts consecutive steps the learner skipped for non-finite inputs (``skipped_nonfinite`` > 0): each
    one is logged as a warning; the ``limit``-th in a row raises NonFiniteStepsError (0: never)."""

    limit: int
    in_row: int = 0
    first: int | None = None  # the first step of the current run of skipped steps

    def observe(self, result: StepResult) -> None:
        if result.metrics.get("skipped_nonfinite", 0.0) <= 0:
            self.in_row, self.first = 0, None
            return
        self.in_row += 1
        self.first = result.step if self.first is None else self.first
        what = describe_nonfinite(result.batch)
        limit = f"of trainer.max_skipped_steps={self.limit}" if self.limit else "(trainer.max_skipped_steps=0)"
        log.warning("step %d skipped for %s; the weights are unchanged (%d in a row %s)",
                    result.step + 1, what, self.in_row, limit)
        if self.limit and self.in_row >= self.limit:
            raise NonFiniteStepsError(
                f"steps {self.first + 1}..{result.step + 1}: {self.in_row} steps in a row were skipped for non-finite "
                f"inputs (trainer.max_skipped_steps={self.limit}); the last one for {what}. No update has changed "
                f"the weights since step {self.first} (a checkpoint written since holds them); check the teacher "
                f"(e.g. a served teacher answering -inf) and the rewards")


def run_steps(backend: Backend, tasks_for_step: Callable[[int], list[Any]], start_step: int, end_step: int,
              async_rollout: bool = False, max_skipped_steps: int = 0) -> Iterator[StepResult]:
    """Steps ``start_step..end_step-1``; ``tasks_for_step(step)`` must be deterministic in ``step`` (resume
    and the async look-ahead both rely on it). Yields after each update with weights synced, so the
    caller may evaluate or checkpoint between steps. Async: the first step after (re)starting has lag 0,
    later ones lag 1; a caller that stops early still has the look-ahead rollout finished, not leaked.
    A step skipped for non-finite inputs is logged; the ``max_skipped_steps``-th in a row raises
    NonFiniteStepsError instead of being yielded (``SkipGuard``; 0: never)."""
    guard = SkipGuard(max_skipped_steps)
    pending: tuple[Any, float] | None = None
    try:
        for step in range(start_step, end_step):
            if pending is None:
                t_submit = time.perf_counter()  # before submitting: an in-process rollout runs inside the call
                pending = (backend.submit_rollout(tasks_for_step(step), step), t_submit)
            handle, t_submit = pending
            pending = None
            if async_rollout and step + 1 < end_step:
                handle.result()  # step k's episodes first, then k+1 is sampled with step k's weights
                t_next = time.perf_counter()
                pending = (backend.submit_rollout(tasks_for_step(step + 1), step + 1), t_next)
            result = train_step(backend, handle, step, t_submit)
            guard.observe(result)
            yield result
    finally:
        if pending is not None:
            pending[0].result()

