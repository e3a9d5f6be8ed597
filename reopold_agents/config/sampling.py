"""Config sub-section `sampling`: how the student samples one assistant turn.

One schema for training (``engine.sampling``) and evaluation (``eval.benchmarks.<name>.sampling``).
Seeds are not config: each generate call's seed comes from ``reopold_agents.seeding``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128  # per assistant turn
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key (the engines'
        ``SamplingParams.check`` applies the same rules)."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0 (0 disables), got {self.top_k}")
