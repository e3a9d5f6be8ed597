"""Config section `model` (owned by the model issue; every key here must be read by code)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Placeholder until the owning issue adds its keys."""

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
