"""Multi-teacher routing: each mix entry names its teacher; every row is scored by its routed teacher.

The rollout stamps each trajectory with its entry (``info["env"]``) and its teacher's label
(``info["teacher"]``, copied into ``Batch.teachers`` by ``collate``). ``TeacherRouter`` holds one
scorer per distinct teacher name (loaded once, however many entries share it; each built by
``teacher.build_teacher``, so text or VL, same tokenizer or the cross-tokenizer scorer, any
``model.teacher_engine``), scores each teacher's rows as a ``Batch.select`` sub-batch and writes the
results back by row: the log-probs, the loss mask (a cross-tokenizer teacher may mask turns) and the
top-k fields. Each trajectory records its share of its teacher's scoring time
(``info["teacher_score_s"]``), so per-teacher timing travels back from a Ray teacher actor with the
trajectories, as everything else the teacher writes does.

A label is the teacher's name made safe for a metric key (``Qwen/Qwen2.5-7B`` -> ``Qwen_Qwen2.5-7B``):
metrics are ``teacher/<label>/*``.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import torch

from reopold_agents.config.mix import entry_teacher
from reopold_agents.trajectory import Batch, Trajectory


def teacher_label(name: str) -> str:
    """``name`` as a metric-key segment: characters other than letters, digits, '_', '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "_"


def teacher_routes(cfg: Any) -> dict[str, str]:
    """Mix entry -> the label of its teacher (``{}`` for a single-env run)."""
    return {name: teacher_label(entry_teacher(entry, cfg.model)) for name, entry in cfg.mix.items()}


def routed_teachers(cfg: Any) -> dict[str, str]:
    """Label -> teacher name, one per distinct teacher of the mix, in the mix's order. Two names with one
    label (``a/b`` and ``a_b``) are refused: their metrics would merge."""
    out: dict[str, str] = {}
    for name, entry in cfg.mix.items():
        teacher = entry_teacher(entry, cfg.model)
        label = teacher_label(teacher)
        if out.setdefault(label, teacher) != teacher:
            raise ValueError(f"mix.{name}.teacher: {teacher!r} and {out[label]!r} share the metric label {label!r}")
    return out


class TeacherRouter:
    """Scores each row of a batch with the teacher its ``Batch.teachers`` label names."""

    def __init__(self, teachers: dict[str, Any]) -> None:
        if not teachers:
            raise ValueError("TeacherRouter needs at least one teacher")
        self.teachers = dict(teachers)  # label -> Teacher | CrossTokenizerScorer (anything with .score)

    @classmethod
    def from_config(cls, cfg: Any, student_tokenizer: Any, top_k: int = 0) -> "TeacherRouter":
        """One ``build_teacher`` per distinct teacher of ``cfg.mix`` (``model.*`` settings shared, the name
        swapped in)."""
        from reopold_agents.teacher import build_teacher

        return cls({label: build_teacher(replace(cfg.model, teacher=name), student_tokenizer, top_k=top_k,
                                         engine_cfg=cfg.engine)
                    for label, name in routed_teachers(cfg).items()})

    def score(self, batch: Batch, trajectories: list[Trajectory] | None = None) -> Batch:
        """Fill ``batch``'s teacher fields (and its loss mask) row by row from each row's teacher; return it."""
        tags = batch.teachers
        if tags is None or len(tags) != len(batch):
            raise ValueError("routed scoring needs Batch.teachers (each trajectory's info['teacher'])")
        unknown = sorted(set(tags) - set(self.teachers))
        if unknown:
            raise ValueError(f"rows routed to unknown teachers {unknown} (loaded: {sorted(self.teachers)})")
        if trajectories is not None and len(trajectories) != len(batch):
            raise ValueError(f"{len(trajectories)} trajectories for a {len(batch)}-row batch")
        shape = tuple(batch.input_ids.shape)
        teacher_lp = torch.zeros(shape, dtype=torch.float32)
        loss_mask = batch.loss_mask.detach().cpu().clone()
        top_ids = top_lp = None
        topk_rows = 0
        for label in dict.fromkeys(tags):  # first-appearance order: deterministic
            rows = [i for i, t in enumerate(tags) if t == label]
            idx = torch.tensor(rows, dtype=torch.long)
            sub = batch.select(idx)
            if sub is batch:  # every row has this teacher: score a shallow copy, write back below
                sub = replace(batch)
            trajs = None if trajectories is None else [trajectories[i] for i in rows]
            start = time.perf_counter()
            part = self.teachers[label].score(sub, trajs)
            seconds = time.perf_counter() - start
            if part.teacher_logprobs is None or tuple(part.teacher_logprobs.shape) != (len(rows), shape[1]):
                raise RuntimeError(f"teacher {label!r} returned no [{len(rows)}, {shape[1]}] log-probs")
            teacher_lp[idx] = part.teacher_logprobs.detach().float().cpu()
            loss_mask[idx] = part.loss_mask.detach().cpu().to(loss_mask.dtype)
            if part.teacher_topk_ids is not None and part.teacher_topk_logprobs is not None:
                k = part.teacher_topk_ids.shape[-1]
                if top_ids is None or top_lp is None:
                    top_ids = torch.zeros((*shape, k), dtype=torch.long)
                    top_lp = torch.zeros((*shape, k), dtype=torch.float32)
                if top_ids.shape[-1] != k:
                    raise RuntimeError(f"teacher {label!r} gave top-{k}, another top-{top_ids.shape[-1]}")
                top_ids[idx] = part.teacher_topk_ids.cpu()
                top_lp[idx] = part.teacher_topk_logprobs.float().cpu()
                topk_rows += len(rows)
            if trajs is not None:
                for traj in trajs:
                    traj.info["teacher_score_s"] = seconds / len(rows)
        if top_ids is not None and topk_rows != len(batch):
            raise RuntimeError("some teachers gave top-k log-probs and others none")
        device = batch.loss_mask.device
        batch.loss_mask = loss_mask.to(device)
        batch.teacher_logprobs = teacher_lp.to(device)
        batch.teacher_topk_ids, batch.teacher_topk_logprobs = top_ids, top_lp
        return batch
