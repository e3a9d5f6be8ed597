"""Config section `engine`: which generator runs the student, how it samples, episode limits.

Read by ``reopold_agents.engines.make_engine`` (name, max_batch_size, vllm keys),
``EngineConfig.sampling()`` (sampling keys, used by the rollout) and ``reopold_agents.rollout``
(max_turns, max_total_tokens, env_workers).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    name: str = "hf"  # hf | vllm
    # sampling (SamplingParams); temperature 0 = greedy, top_k 0 / top_p 1 = off
    max_new_tokens: int = 128  # per assistant turn
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0  # base seed; the rollout derives one per generate call
    # episode limits (rollout)
    max_turns: int = 4  # assistant turns per episode
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
        self.sampling().check()
        for key in ("max_turns", "max_total_tokens", "env_workers", "max_batch_size", "tensor_parallel_size",
                    "max_model_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")

    def sampling(self, stop_token_ids: list[int] | None = None, seed: int | None = None):
        """The ``SamplingParams`` these keys describe (stop ids come from the tokenizer, not config)."""
        from reopold_agents.engines.base import SamplingParams

        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop_token_ids=list(stop_token_ids or []),
            seed=self.seed if seed is None else seed,
        )
