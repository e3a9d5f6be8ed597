"""Config section `model`: which student and teacher to load and where they run.

Read by ``reopold_agents.models`` (student, teacher, dtype, device) and ``reopold_agents.teacher``
(teacher_engine, teacher_batch_size), the teacher and the learner (logprob_chunk_size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

TINY_NAMES = ("tiny", "tiny_toolqa", "tiny_vl")
SELF_TEACHER = "self"  # model.teacher=self: a frozen copy of the initial student (self-distillation)
# `model=tiny` resolves to the pair made for the env (reopold_agents.run.resolve_tiny)
ENV_TINY = {"math": "tiny", "toolqa": "tiny_toolqa", "vqa": "tiny_vl"}
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    # "tiny" / "tiny_toolqa" / "tiny_vl" (project-built pairs, reopold_agents/tiny/) or an HF id / path
    student: str = "tiny"
    teacher: str = "tiny"  # or "self": a frozen copy of the initial student
    dtype: str = "float32"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda if available, else cpu
    teacher_engine: str = "hf"  # hf: in-process forward | vllm: prompt log-probs through the vLLM engine
    logprob_chunk_size: int = 1024  # tokens per chunk of the memory-lean log-prob pass (learner and teacher)
    teacher_batch_size: int = 8  # sequences per teacher forward
    # Privileged context (self-distillation): a system turn put in front of the conversation the teacher
    # scores, formatted from the task record, e.g. "The correct final answer is {answer}." (None: off)
    teacher_context: Optional[str] = None

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        for key in ("student", "teacher"):
            if not getattr(self, key):
                raise ValueError(f"{key}: empty; use {', '.join(TINY_NAMES)}, an HF id or a path")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {DTYPES}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device: {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.teacher_engine not in ("hf", "vllm"):
            raise ValueError(f"teacher_engine: {self.teacher_engine!r}; use hf or vllm")
        if self.teacher_context is not None:
            try:
                self.teacher_context.format(answer="", question="", id="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"teacher_context: fields are {{answer}}, {{question}}, {{id}}; got {exc!r}") from None
        if self.teacher == SELF_TEACHER:
            return
        if (self.student in TINY_NAMES or self.teacher in TINY_NAMES) and self.student != self.teacher:
            raise ValueError(
                f"student/teacher: tiny models come in pairs (student={self.student!r}, teacher={self.teacher!r});"
                " use the same tiny name for both"
            )
        for key in ("logprob_chunk_size", "teacher_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
