"""Config section `engine`: which generator runs the student and how it samples.

Read by ``reopold_agents.engines.make_engine`` (name, max_batch_size, vllm keys), the rollout
(``sampling``, ``max_total_tokens``, ``env_workers``). The turn limit of an episode is the env's
(``env.max_turns``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reopold_agents.config.sampling import SamplingConfig


@dataclass
class EngineConfig:
    name: str = "hf"  # hf | vllm
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_total_tokens: int = 2048  # prompt + all turns; an episode is truncated when it would exceed this
    env_workers: int = 8  # threads stepping envs (tool calls) concurrently
    # hf engine
    max_batch_size: int = 64  # requests per transformers.generate call
    # vllm engine (read by reopold_agents/engines/vllm.py)
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    max_model_len: int = 4096

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        if self.name not in ("hf", "vllm"):
            raise ValueError(f"name: unknown engine {self.name!r}; choose hf or vllm")
        try:
            self.sampling.check()
        except ValueError as exc:
            raise ValueError(f"sampling.{exc}") from None
        for key in ("max_total_tokens", "env_workers", "max_batch_size", "tensor_parallel_size", "max_model_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
