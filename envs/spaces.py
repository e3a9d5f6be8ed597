"""Gymnasium spaces for chat environments: the observation is a conversation, the action a string.

Gymnasium 1.4's `check_env` accepts any `gymnasium.spaces.Space` subclass: it only asks that returned
observations are ``in`` the space, so a conversation needs no array encoding. The observation space is
a stock ``spaces.Dict`` (so ``check_env`` also verifies the ``messages``/``images`` keys) over two custom
spaces. The action space subclasses ``spaces.Text``: stock ``Text.contains`` rejects any character
outside its charset, but an assistant may write any Unicode, so ``contains`` accepts every string up to
``max_length`` while ``sample`` still draws from a printable charset (which is what ``check_env`` steps
with, so every env must handle arbitrary text).
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import Image

ROLES = ("system", "user", "assistant", "tool")
PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " \n"


def _valid_content(content: Any) -> bool:
    if isinstance(content, str):
        return True
    if not isinstance(content, list):
        return False
    for part in content:
        if not isinstance(part, dict):
            return False
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image" and isinstance(part.get("image"), Image.Image):
            continue
        return False
    return True


class Messages(spaces.Space[list]):
    """A list of chat messages ``{"role": ..., "content": str | [parts]}``; parts are text or PIL images."""

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(
            isinstance(m, dict) and m.get("role") in ROLES and _valid_content(m.get("content")) for m in x
        )

    def sample(self, mask: Any = None, probability: Any = None) -> list:
        n = int(self.np_random.integers(1, 20))
        text = "".join(self.np_random.choice(list(PRINTABLE), size=n))
        return [{"role": "user", "content": text}]

    def __repr__(self) -> str:
        return "Messages()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Messages)


class Images(spaces.Space[list]):
    """The list of PIL images that appear in the conversation, in order."""

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(im, Image.Image) for im in x)

    def sample(self, mask: Any = None, probability: Any = None) -> list:
        return []

    def __repr__(self) -> str:
        return "Images()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Images)


class AssistantText(spaces.Text):
    """Any string up to ``max_length`` characters; samples are random printable text."""

    def __init__(self, max_length: int = 32768, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(max_length=max_length, min_length=0, charset=PRINTABLE, seed=seed)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        # Short samples keep check_env fast; length 0 is allowed (an empty reply is a valid action).
        n = int(self.np_random.integers(0, min(self.max_length, 64) + 1))
        return "".join(self.np_random.choice(list(PRINTABLE), size=n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"AssistantText(max_length={self.max_length})"


def chat_observation_space() -> spaces.Dict:
    """``{"messages": Messages(), "images": Images()}``: the observation space of every TextEnv."""
    return spaces.Dict({"messages": Messages(), "images": Images()})
