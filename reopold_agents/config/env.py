"""Config section `env`: which environment, its task source and its knobs (read by envs/factory.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EnvConfig:
    """``configs/env/{math,vqa,toolqa}.yaml``; `envs.factory.build_env` turns it into an env.

    tasks: ``synthetic`` (the seeded generator of this env's kind), ``synthetic:<kind>``, or a file,
        dataset folder or ``$REOPOLD_DATA`` name for `tasks.load_tasks`.
    split: split of a dataset folder or JSON dict of splits (None: the loader's default, ``test``).
    size: number of synthetic tasks; for files, the most rows to load (0: all).
    seed: seeds the synthetic tasks and each env's reset RNG (env i of a batch gets seed + i).
    difficulty: synthetic difficulty, 1 (tiny-model friendly) to 3.
    max_turns: assistant turns before truncation.
    system_prompt: replaces the env's default system prompt when set ("" for none).
    max_pixels, min_pixels: image size bounds for vqa (qwen-vl-utils smart_resize).
    tools: tool names for toolqa.
    max_tool_chars: toolqa cuts longer tool output.
    """

    name: str = "math"
    tasks: str = "synthetic"
    split: str | None = None
    size: int = 1000
    seed: int = 0
    difficulty: int = 1
    max_turns: int = 2
    system_prompt: str | None = None
    max_pixels: int = 12544
    min_pixels: int = 3136
    tools: list[str] = field(default_factory=lambda: ["search", "calculator"])
    max_tool_chars: int = 2000

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        if not self.name:
            raise ValueError("name: must name a registered env (math, vqa, toolqa or a plugin)")
        if not self.tasks:
            raise ValueError("tasks: must be 'synthetic', 'synthetic:<kind>' or a task file/name")
        if self.size < 0:
            raise ValueError(f"size: must be >= 0, got {self.size}")
        if self.tasks.startswith("synthetic") and self.size < 1:
            raise ValueError("size: synthetic tasks need size >= 1")
        if not 1 <= self.difficulty <= 3:
            raise ValueError(f"difficulty: must be 1, 2 or 3, got {self.difficulty}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns: must be >= 1, got {self.max_turns}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"max_pixels: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.max_tool_chars < 1:
            raise ValueError(f"max_tool_chars: must be >= 1, got {self.max_tool_chars}")
