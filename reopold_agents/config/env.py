"""Config section `env`: which environment, its task source and its knobs (read by envs/factory.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class EnvConfig:
    """``configs/env/{math,vqa,toolqa}.yaml``; `envs.factory.build_env` turns it into an env.

    tasks: ``synthetic`` (the seeded generator of this env's kind), ``synthetic:<kind>``, or a file,
        dataset folder or ``$REOPOLD_DATA`` name for `tasks.load_tasks`.
    split: split of a dataset folder or JSON dict of splits (None: the loader's default, ``test``); for
        ``bfcl:`` sources BFCL's fixed ``train`` / ``heldout`` split (None: every entry; a run trains on
        ``train`` and evaluates ``heldout``, `tasks.bfcl`).
    size: number of synthetic tasks; for files, the most rows to load (0: all).
    seed: seeds the synthetic tasks and each env's reset RNG (env i of a batch gets seed + i).
    difficulty: synthetic difficulty, 1 (tiny-model friendly) to 3.
    max_turns: assistant turns before truncation.
    system_prompt: replaces the env's default system prompt when set ("" for none).
    max_pixels, min_pixels: image size bounds for vqa (qwen-vl-utils smart_resize).
    tools: tool names for toolqa.
    max_tool_chars: toolqa cuts longer tool output.
    max_action_chars: the longest assistant message the env reads; a longer one is answered with an error,
        unread (None: the env's default, 262144 characters, room for a 64K-token reasoning reply).

    scoring_timeout_s: seconds an answer may take to score (the env's default: 10).
    answer_format: ``boxed`` (the env's default: the last ``\\boxed{}`` or ``<answer>`` tag) or ``flexible``
        (else the last number of the reply, lm-eval's GSM8K "flexible-extract"; for real instruct models).

    Keys an env may not take (system_prompt, max_pixels, min_pixels, tools, max_tool_chars,
    scoring_timeout_s, answer_format, max_action_chars) default to
    None, meaning "the env's own default"; setting one the chosen env's constructor does not accept fails
    at start-up naming it (``envs.factory.env_kwargs``).
    """

    name: str = ""  # the env=<group> choice sets it; empty only in a run whose envs are mix entries
    tasks: str = "synthetic"
    split: str | None = None
    size: int = 1000
    seed: int = 0
    difficulty: int = 1
    max_turns: int = 2
    system_prompt: str | None = None
    max_pixels: Optional[int] = None
    min_pixels: Optional[int] = None
    tools: Optional[list[str]] = None
    max_tool_chars: Optional[int] = None
    max_action_chars: Optional[int] = None  # longest assistant message read; None: the env's default (262144)
    scoring_timeout_s: Optional[float] = None  # answer scoring in a killable worker; a timed-out answer scores 0
    answer_format: Optional[str] = None  # boxed | flexible (envs/answers.py)

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        if not self.name:
            raise ValueError("name: choose an env (env=math, vqa, toolqa, bfcl or a plugin), or give mix entries "
                             "(experiment=mix +env@mix.<name>.env=...)")
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
        if self.min_pixels is not None and self.min_pixels <= 0:
            raise ValueError(f"min_pixels: must be > 0, got {self.min_pixels}")
        if self.max_pixels is not None and self.min_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"max_pixels: need min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.scoring_timeout_s is not None and self.scoring_timeout_s <= 0:
            raise ValueError(f"scoring_timeout_s: must be > 0, got {self.scoring_timeout_s}")
        if self.answer_format is not None and self.answer_format not in ("boxed", "flexible"):
            raise ValueError(f"answer_format: {self.answer_format!r}; use boxed or flexible")
        if self.max_tool_chars is not None and self.max_tool_chars < 1:
            raise ValueError(f"max_tool_chars: must be >= 1, got {self.max_tool_chars}")
        if self.max_action_chars is not None and self.max_action_chars < 1:
            raise ValueError(f"max_action_chars: must be >= 1, got {self.max_action_chars}")
