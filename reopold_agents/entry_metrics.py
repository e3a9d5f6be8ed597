"""Per-entry and per-teacher metrics of a step.

``env/<entry>/*`` groups the step's episodes by ``Trajectory.entry``; ``teacher/<label>/*`` groups the
batch rows by ``Batch.teachers`` (the label of the teacher that scored them, written with the scores)
and reads each teacher's scoring time from ``TeacherScores.seconds``. The learner adds
``teacher/<label>/frac_selected`` and ``frac_clipped`` (``learner._Accumulator``), from its own token
masks, since only it knows which tokens the objective selected.
"""

from __future__ import annotations

import torch

from reopold_agents.metrics import summarize
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.trajectory import Batch, Trajectory

QUANTILES = (0.1, 0.5, 0.9)


def log_ratios(batch: Batch, rows: list[int] | None = None) -> torch.Tensor:
    """``log pi_T - log pi_old`` on the trained tokens of ``rows`` (None: every row; empty without teacher
    scores): the token reward before clipping."""
    if batch.teacher_logprobs is None or rows == []:
        return torch.zeros(0)
    idx = torch.arange(len(batch)) if rows is None else torch.tensor(rows, dtype=torch.long)
    trained = batch.loss_mask.cpu()[idx] > 0
    diff = batch.teacher_logprobs.cpu()[idx] - batch.old_logprobs.cpu()[idx]
    return diff[trained].float()


def episode_means(prefix: str, trajectories: list[Trajectory]) -> dict[str, float]:
    """``<prefix>/{reward,success,response_tokens,turns}``: means over ``trajectories`` (non-empty)."""
    n = len(trajectories)
    return {
        f"{prefix}/reward": sum(t.reward for t in trajectories) / n,
        f"{prefix}/success": sum(t.success for t in trajectories) / n,
        f"{prefix}/response_tokens": sum(t.num_generated for t in trajectories) / n,
        f"{prefix}/turns": sum(len(t.turns) for t in trajectories) / n,
    }


def env_metrics(trajectories: list[Trajectory], batch: Batch) -> dict[str, float]:
    """``env/<entry>/{episodes,reward,success,response_tokens,turns,log_ratio_mean}`` per mix entry."""
    groups: dict[str, list[int]] = {}
    for row, traj in enumerate(trajectories):
        if traj.entry:
            groups.setdefault(traj.entry, []).append(row)
    out: dict[str, float] = {}
    for name, rows in groups.items():
        key = f"env/{name}"
        out[f"{key}/episodes"] = float(len(rows))
        out.update(episode_means(key, [trajectories[r] for r in rows]))
        ratios = log_ratios(batch, rows)
        if ratios.numel():
            out[f"{key}/log_ratio_mean"] = float(ratios.mean())
    return out


def teacher_metrics(batch: Batch, scores: TeacherScores | None) -> dict[str, float]:
    """``teacher/<label>/{rows,tokens,score_s,log_ratio/{mean,std,min,max,p10,p50,p90}}`` per routed teacher."""
    if batch.teachers is None:
        return {}
    groups: dict[str, list[int]] = {}
    for row, label in enumerate(batch.teachers):
        groups.setdefault(label, []).append(row)
    out: dict[str, float] = {}
    for label, rows in groups.items():
        key = f"teacher/{label}"
        ratios = log_ratios(batch, rows)
        out[f"{key}/rows"] = float(len(rows))
        out[f"{key}/tokens"] = float(ratios.numel())
        out[f"{key}/score_s"] = 0.0 if scores is None else float(scores.seconds.get(label, 0.0))
        out.update(summarize(f"{key}/log_ratio", ratios.tolist()))
        if ratios.numel():
            qs = torch.quantile(ratios.double(), torch.tensor(QUANTILES, dtype=torch.float64))
            for q, v in zip(QUANTILES, qs.tolist()):
                out[f"{key}/log_ratio/p{round(q * 100):02d}"] = float(v)
    return out


def entry_metrics(trajectories: list[Trajectory], batch: Batch, scores: TeacherScores | None) -> dict[str, float]:
    """Both groups, and ``teacher/masked_turns`` (turns a teacher could not score, e.g. unalignable text)."""
    out = {**env_metrics(trajectories, batch), **teacher_metrics(batch, scores)}
    if scores is not None:
        out["teacher/masked_turns"] = float(sum(len(m) for m in scores.masked_turns))
    return out
