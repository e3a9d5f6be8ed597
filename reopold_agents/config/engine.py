"""Config section `engine` (owned by the engine issue; every key here must be read by code)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    """Placeholder until the owning issue adds its keys."""

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
