"""Config sub-section `model.lora`: train low-rank adapters (peft LoRA) instead of every student weight.

Read by ``reopold_agents.lora`` (which wraps the learner's student with ``peft.get_peft_model``); the
checkpoint, the weight sync to rollout engines and ``model.teacher=self`` follow from the wrapped model
(docs/run.md, "LoRA students"). Plain data here: this module imports nothing outside ``config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Every linear projection of a Qwen2 / Llama decoder block (attention and MLP); the LM head is not adapted.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    enabled: bool = False  # true: only the adapters train (the base stays frozen), see docs/run.md
    rank: int = 16  # r: inner dimension of each adapter pair A [r, in], B [out, r]
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input while training (0 keeps a step deterministic)
    # module names (their last dotted part) that get an adapter; see DEFAULT_TARGETS
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    @property
    def scaling(self) -> float:
        """The factor peft applies to ``B @ A`` (plain LoRA: ``alpha / rank``)."""
        return self.alpha / self.rank

    def check(self) -> None:
        """Range checks; raise ValueError('lora.<key>: why') so the loader can name the key."""
        if self.rank < 1:
            raise ValueError(f"lora.rank: must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha: must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError(f"lora.target_modules: empty; name the projections to adapt, e.g. {list(DEFAULT_TARGETS)}")
        for i, name in enumerate(self.target_modules):
            if not name or not name.strip() or name != name.strip():
                raise ValueError(f"lora.target_modules[{i}]: {name!r} is not a module name")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"lora.target_modules: {self.target_modules} names a module twice")
