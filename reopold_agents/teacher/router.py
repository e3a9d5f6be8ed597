"""Teacher routing: each env entry of a run names its teacher; every row is scored by its entry's teacher.

``collate`` copies each trajectory's entry into ``Batch.entries``. ``TeacherRouter`` holds one scorer per
distinct teacher name (loaded once, however many entries share it; each built by ``build_teacher``, so
text or VL, same tokenizer or cross-tokenizer, any ``model.teacher_engine``), scores each teacher's rows
as a ``Batch.select`` sub-batch and gathers the results with ``TeacherScores.put``, labelling each row
with its teacher and timing each teacher. A single-env run is a run of one entry, routed the same way.

A label is the teacher's name made safe for a metric key (``Qwen/Qwen2.5-7B`` -> ``Qwen_Qwen2.5-7B``):
metrics are ``teacher/<label>/*``.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Protocol

import torch

from reopold_agents.config.mix import MixEntry, entry_teacher
from reopold_agents.config.model import ModelConfig
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.trajectory import Batch


class RowScorer(Protocol):
    def score(self, batch: Batch) -> TeacherScores: ...


def teacher_label(name: str) -> str:
    """``name`` as a metric-key segment: characters other than letters, digits, '_', '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "_"


def teacher_routes(entries: dict[str, MixEntry], model_cfg: ModelConfig) -> dict[str, str]:
    """Env entry -> the label of its teacher."""
    return {name: teacher_label(entry_teacher(entry, model_cfg)) for name, entry in entries.items()}


def routed_teachers(entries: dict[str, MixEntry], model_cfg: ModelConfig) -> dict[str, str]:
    """Label -> teacher name, one per distinct teacher of the run, in the entries' order. Two names with one
    label (``a/b`` and ``a_b``) are refused: their metrics would merge."""
    out: dict[str, str] = {}
    for name, entry in entries.items():
        teacher = entry_teacher(entry, model_cfg)
        label = teacher_label(teacher)
        if out.setdefault(label, teacher) != teacher:
            raise ValueError(f"mix.{name}.teacher: {teacher!r} and {out[label]!r} share the metric label {label!r}")
    return out


class TeacherRouter:
    """Scores each row of a batch with the teacher its entry routes to."""

    def __init__(self, teachers: dict[str, RowScorer], routes: dict[str, str]) -> None:
        if not teachers:
            raise ValueError("TeacherRouter needs at least one teacher")
        missing = sorted(set(routes.values()) - set(teachers))
        if missing:
            raise ValueError(f"entries route to teachers {missing} that are not loaded (loaded: {sorted(teachers)})")
        self.teachers = dict(teachers)  # label -> scorer
        self.routes = dict(routes)  # entry -> label

    @classmethod
    def from_config(cls, entries: dict[str, MixEntry], model_cfg: ModelConfig, student_tokenizer: object,
                    top_k: int = 0, engine_cfg: object = None,
                    self_model: torch.nn.Module | None = None) -> "TeacherRouter":
        """One ``build_teacher`` per distinct teacher of ``entries`` (``model.*`` settings shared, the name swapped in);
        ``self_model``: the module a ``self`` teacher scores with instead of loading a copy (``build_teacher``)."""
        from reopold_agents.teacher.build import build_teacher

        teachers = {label: build_teacher(replace(model_cfg, teacher=name), student_tokenizer, top_k=top_k,
                                         engine_cfg=engine_cfg, self_model=self_model)  # type: ignore[arg-type]
                    for label, name in routed_teachers(entries, model_cfg).items()}
        return cls(teachers, teacher_routes(entries, model_cfg))

    def score(self, batch: Batch) -> TeacherScores:
        """Each row scored by its entry's teacher, labelled with it; ``seconds`` per teacher."""
        entries = batch.entries
        if entries is None or len(entries) != len(batch):
            raise ValueError("routed scoring needs Batch.entries (each trajectory's entry)")
        unknown = sorted(set(entries) - set(self.routes))
        if unknown:
            raise ValueError(f"rows of unknown entries {unknown} (routed: {sorted(self.routes)})")
        labels = [self.routes[e] for e in entries]
        scores = TeacherScores.empty(batch.loss_mask)
        for label in dict.fromkeys(labels):  # first-appearance order: deterministic
            rows = [i for i, t in enumerate(labels) if t == label]
            sub = batch.select(torch.tensor(rows, dtype=torch.long))
            if sub is batch:  # every row has this teacher: score a shallow copy
                sub = replace(batch)
            start = time.perf_counter()
            part = self.teachers[label].score(sub)
            part.seconds = {label: part.seconds.get(label, 0.0) + time.perf_counter() - start}
            part.labels = [label] * len(rows)
            scores.put(rows, part)
        return scores
