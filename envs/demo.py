"""Replay a task's expert demonstration through an env: the conversation an SFT teacher trains on.

The demonstration holds only the assistant turns; the env supplies everything in between (tool results,
nudges), so the replayed conversation is exactly what the agent would see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envs.base import TextEnv
from tasks.record import Task


@dataclass
class Demonstration:
    messages: list[dict[str, Any]]
    images: list[Any]
    tools: list[dict[str, Any]]
    reward: float
    info: dict[str, Any] = field(default_factory=dict)


def play_demonstration(env: TextEnv, task: Task) -> Demonstration:
    """Step ``env`` through ``task.demonstration``; raise if the task has none or it ends too early."""
    if not task.demonstration:
        raise ValueError(f"task {task.id!r} has no demonstration")
    obs, reset_info = env.reset(options={"task": task})
    reward, info = 0.0, {}
    for n, turn in enumerate(task.demonstration, 1):
        obs, reward, terminated, truncated, info = env.step(turn)
        if (terminated or truncated) and n < len(task.demonstration):
            raise ValueError(f"task {task.id!r}: the episode ended after demonstration turn {n} of {len(task.demonstration)} ({info.get('why')})")
    return Demonstration(messages=obs["messages"], images=obs["images"], tools=reset_info["tools"], reward=reward, info=info)
