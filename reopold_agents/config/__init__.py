"""Typed schema of every config key, one section per file (the section's owner edits only that file).

``load_config`` / ``validate`` merge Hydra's YAML onto these dataclasses, so a misspelt or unknown key
fails at start-up with its full dotted name instead of being silently ignored.
"""

from reopold_agents.config.schema import RunConfig, compose, validate

__all__ = ["RunConfig", "compose", "validate"]
