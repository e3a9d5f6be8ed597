"""Which teacher scores a run's rows, decided once: ``teacher_path`` is the rule, ``build_teacher`` applies it.

A teacher with the student's tokenizer scores the student's ids (in-process, through vLLM, or served over
HTTP). A teacher with another tokenizer (detected, no flag) reads the conversation under its own chat
template and its log-probs are aligned to the student's tokens (``teacher/cross/``): in-process only,
without privileged context or a top-k objective. The preflight asks the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from reopold_agents.config.engine import EngineConfig
from reopold_agents.config.model import SELF_TEACHER, ModelConfig
from reopold_agents.teacher.cross.scorer import CrossTokenizerTeacher
from reopold_agents.teacher.scorer import Teacher
from reopold_agents.teacher.tokenizers import Tokenizer, TokenizerMismatchError, check_same_tokenizer

PathKind = Literal["same_ids", "cross_tokenizer"]


class TeacherPathError(ValueError):
    """No scoring path exists for this teacher with this student and objective."""


@dataclass(frozen=True)
class TeacherPath:
    kind: PathKind
    detail: str


def _cross_blocker(model_cfg: ModelConfig, top_k: int) -> str | None:
    if not model_cfg.teacher_in_process:
        return f"model.teacher_engine={model_cfg.teacher_engine} scores the student's ids (no cross-tokenizer path)"
    if model_cfg.teacher_context is not None:
        return "model.teacher_context needs the student's tokenizer"
    if top_k:
        return "a top-k objective (gkd, dense_kl, reopold_topk) compares distributions over one vocabulary"
    return None


def teacher_path(model_cfg: ModelConfig, top_k: int, student: Tokenizer, teacher: Tokenizer) -> TeacherPath:
    """How ``teacher`` scores ``student``'s rows; TeacherPathError naming why when it cannot."""
    try:
        check_same_tokenizer(student, teacher)
    except TokenizerMismatchError as exc:
        blocker = _cross_blocker(model_cfg, top_k)
        if blocker is not None:
            raise TeacherPathError(f"{exc}; and {blocker}") from None
        if not getattr(teacher, "chat_template", None):
            raise TeacherPathError("tokenizers differ and the teacher has no chat template to render the "
                                   "conversation with (cross-tokenizer path)") from None
        return TeacherPath("cross_tokenizer", f"differ (student vocab {len(student)}, teacher {len(teacher)}): "
                                              "cross-tokenizer scorer (docs/cross_tokenizer.md)")
    return TeacherPath("same_ids", f"same vocabulary ({len(student)}) and special tokens "
                                   f"(eos {student.eos_token!r}, pad {student.pad_token!r})")


def build_teacher(model_cfg: ModelConfig, student_tokenizer: Tokenizer, top_k: int = 0,
                  engine_cfg: EngineConfig | None = None,
                  self_model: torch.nn.Module | None = None) -> Teacher | CrossTokenizerTeacher:
    """Load the teacher named by ``model_cfg.teacher`` behind ``model_cfg.teacher_engine`` and return the
    scorer ``teacher_path`` picks. ``top_k`` > 0 also gives the teacher's top-k (``algo.gkd_topk``).

    ``self_model``: a module already holding the initial student's weights (a LoRA student's transformers
    model, whose adapters the caller disables while it scores: ``roles.TeacherRole``); an in-process
    ``model.teacher=self`` scores with it and loads nothing."""
    from reopold_agents.models import LoadedModel, load_teacher, load_tokenizer_and_processor

    if model_cfg.teacher_served:
        from reopold_agents.teacher.http import build_http_teacher

        return build_http_teacher(model_cfg, student_tokenizer, top_k=top_k)
    if model_cfg.teacher_in_vllm:  # vLLM prompt log-probs, same tokenizer only
        from reopold_agents.engines import make_engine

        if engine_cfg is None:
            raise ValueError("model.teacher_engine=vllm needs the engine config (vLLM settings)")
        tok, processor, path = load_tokenizer_and_processor(model_cfg.teacher, "teacher")
        teacher_path(model_cfg, top_k, student_tokenizer, tok)
        if top_k:  # the engine has no score_topk: say so before loading it
            raise ValueError("model.teacher_engine=vllm gives no teacher top-k (algo gkd, dense_kl, reopold_topk): use "
                             "teacher_engine=hf, or a served vLLM teacher (teacher_engine=http, docs/distributed.md)")
        if path is None:
            raise ValueError(f"teacher {model_cfg.teacher!r} has no saved weights for vLLM to load; train/save it first")
        engine = make_engine(replace(engine_cfg, name="vllm"), model=None, tokenizer=tok, processor=processor, model_path=path)
        return Teacher(tok, engine=engine, chunk_size=model_cfg.logprob_chunk_size, batch_size=model_cfg.teacher_batch_size)
    if self_model is not None and model_cfg.teacher == SELF_TEACHER:
        tok, processor, path = load_tokenizer_and_processor(model_cfg.student, "student")
        loaded = LoadedModel(model=self_model, tokenizer=tok, processor=processor, name=model_cfg.student, path=path)
    else:
        loaded = load_teacher(model_cfg)
    if teacher_path(model_cfg, top_k, student_tokenizer, loaded.tokenizer).kind == "cross_tokenizer":
        return CrossTokenizerTeacher(student_tokenizer, loaded.tokenizer, loaded.model,
                                     chunk_size=model_cfg.logprob_chunk_size, batch_size=model_cfg.teacher_batch_size)
    return Teacher(loaded.tokenizer, model=loaded.model, chunk_size=model_cfg.logprob_chunk_size,
                   batch_size=model_cfg.teacher_batch_size, top_k=top_k, context=model_cfg.teacher_context,
                   processor=loaded.processor, pack=model_cfg.pack_sequences)
