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
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        self.params().check()

    def params(self, stop_token_ids: list[int] | None = None, seed: int | None = None):
        """The engine's ``SamplingParams`` (stop ids come from the tokenizer, seeds from reopold_agents.seeding)."""
        from reopold_agents.engines.base import SamplingParams

        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, stop_token_ids=list(stop_token_ids or []), seed=seed)
