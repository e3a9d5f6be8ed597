"""Gymnasium chat environments: ``math``, ``vqa``, ``toolqa``, ``bfcl`` (and plugins via ``reopold_agents.envs``).

Importing this package registers the built-ins with the reopold registry (``ra.make_env("math")``) and
with Gymnasium (``gymnasium.make("reopold/Math-v0")``).
"""

import gymnasium as gym

from envs.base import Outcome, TextEnv
from envs.bfcl import BFCLEnv
from envs.math_env import MathEnv
from envs.toolqa import ToolQAEnv
from envs.vqa import VQAEnv

GYM_IDS = {"reopold/Math-v0": "envs.math_env:MathEnv", "reopold/VQA-v0": "envs.vqa:VQAEnv", "reopold/ToolQA-v0": "envs.toolqa:ToolQAEnv",
           "reopold/BFCL-v0": "envs.bfcl:BFCLEnv"}
for _id, _entry in GYM_IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)

__all__ = ["BFCLEnv", "GYM_IDS", "MathEnv", "Outcome", "TextEnv", "ToolQAEnv", "VQAEnv"]
