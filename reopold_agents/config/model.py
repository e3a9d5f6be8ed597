"""Config section `model`: which student and teacher to load and where they run.

Read by ``reopold_agents.models`` (student, teacher, dtype, device) and ``reopold_agents.teacher``
(teacher_engine, teacher_batch_size), the teacher and the learner (logprob_chunk_size); the
``teacher_url`` .. ``teacher_backoff_s`` keys by ``reopold_agents.teacher.http`` (teacher_engine=http).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from reopold_agents.config.lora import LoraConfig
from reopold_agents.config.teacher_context import check_teacher_context
from reopold_agents.config.teacher_url import parse_teacher_urls
from reopold_agents.config.tiny_pairs import TINY_NAMES

SELF_TEACHER = "self"  # model.teacher=self: a frozen copy of the initial student (self-distillation)
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    # a project-built pair (TINY_NAMES, reopold_agents/tiny/) or an HF id / path
    student: str = "tiny"
    teacher: str = "tiny"  # or "self": a frozen copy of the initial student
    dtype: str = "float32"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda if available, else cpu
    # hf: in-process forward | vllm: prompt log-probs through the vLLM engine | http: a vLLM server (teacher_url)
    teacher_engine: str = "hf"
    logprob_chunk_size: int = 1024  # tokens per chunk of the memory-lean log-prob pass (learner and teacher)
    # learner and in-process teacher forwards padding-free: packed rows, attention kept inside each sequence
    # (docs/run.md, "Padding-free batches"; same log-probs and gradients as the padded pass)
    pack_sequences: bool = True
    teacher_batch_size: int = 8  # sequences per teacher forward (http: per request)
    # teacher_engine=http (docs/distributed.md, "Serving teachers"); model.teacher still names the
    # teacher's tokenizer (checked against the student's and the server's)
    teacher_url: Optional[str] = None  # http://host:port of `vllm serve`; comma-separated for several servers
    teacher_served_model: Optional[str] = None  # the server's model name (None: the one it lists at /v1/models)
    teacher_concurrency: int = 4  # requests in flight at once (over all servers)
    teacher_timeout_s: float = 120.0  # to connect, and for each wait on the server's reply
    teacher_deadline_s: float = 600.0  # for one whole request (connect to last byte), however the bytes trickle
    teacher_max_reply_mb: float = 64.0  # a larger reply is refused while read (vLLM: ~75 bytes per position)
    teacher_retries: int = 3  # resends of a request the server failed (anything but a 4xx), on the next server
    teacher_backoff_s: float = 1.0  # sleep before the first resend; doubles each time (at most 30 s)
    # Privileged context (self-distillation): a system turn put in front of the conversation the teacher
    # scores, formatted from the task record, e.g. "The correct final answer is {answer}." (None: off)
    teacher_context: Optional[str] = None
    # LoRA student (config/lora.py): model.lora.enabled=true trains peft adapters only (docs/run.md, "LoRA students")
    lora: LoraConfig = field(default_factory=LoraConfig)

    @property
    def teacher_in_process(self) -> bool:
        """The teacher is an HF model in the scoring process (the one place ``teacher_engine`` is read)."""
        return self.teacher_engine == "hf"

    @property
    def teacher_in_vllm(self) -> bool:
        """The teacher is scored by a vLLM engine of this run (in the saved dtype)."""
        return self.teacher_engine == "vllm"

    @property
    def teacher_served(self) -> bool:
        """The teacher is a server reached over HTTP: no teacher weights load in any of this run's processes."""
        return self.teacher_engine == "http"

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        for key in ("student", "teacher"):
            if not getattr(self, key):
                raise ValueError(f"{key}: empty; use {', '.join(TINY_NAMES)}, an HF id or a path")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {DTYPES}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device: {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.teacher_engine not in ("hf", "vllm", "http"):
            raise ValueError(f"teacher_engine: {self.teacher_engine!r}; use hf, vllm or http")
        self._check_http()
        self.lora.check()
        if self.teacher_context is not None:
            check_teacher_context(self.teacher_context)  # plain task fields only (config/teacher_context.py)
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

    def _check_http(self) -> None:
        """teacher_url is required with teacher_engine=http and read only then; the transport keys' ranges."""
        if self.teacher_engine != "http":
            for key in ("teacher_url", "teacher_served_model"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only read with teacher_engine=http (it is {self.teacher_engine!r})")
            return
        if not self.teacher_url:
            raise ValueError("teacher_url: teacher_engine=http needs the teacher server's URL, e.g. http://127.0.0.1:8000")
        try:
            parse_teacher_urls(self.teacher_url)
        except ValueError as exc:
            raise ValueError(f"teacher_url: {exc}") from None
        if self.teacher == SELF_TEACHER:
            raise ValueError("teacher: model.teacher=self is the in-process student copy; teacher_engine=http needs "
                             "the served teacher's tokenizer (a tiny name, HF id or path)")
        if self.teacher_served_model is not None and not self.teacher_served_model:
            raise ValueError("teacher_served_model: empty; leave it unset to use the model the server lists")
        for key, ok, why in (("teacher_concurrency", self.teacher_concurrency >= 1, ">= 1"),
                             ("teacher_timeout_s", self.teacher_timeout_s > 0, "> 0"),
                             ("teacher_deadline_s", self.teacher_deadline_s > 0, "> 0"),
                             ("teacher_max_reply_mb", self.teacher_max_reply_mb * 2**20 >= 1, ">= 1e-6 (a byte)"),
                             ("teacher_retries", self.teacher_retries >= 0, ">= 0"),
                             ("teacher_backoff_s", self.teacher_backoff_s >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"{key}: must be {why}, got {getattr(self, key)}")
