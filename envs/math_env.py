"""Math problems checked by math-verify: the agent answers with ``\\boxed{...}``.

One answer ends the episode (reward 1.0 if math-verify finds it equivalent to the reference, e.g.
``\\frac{1}{2}`` = ``0.5`` = ``\\dfrac12``). A reply without a boxed answer gets a one-line nudge while
turns remain (``max_turns``, default 2), then the episode is truncated.
"""

from __future__ import annotations

from envs.base import TextEnv
from reopold_agents.registry import register_env


@register_env("math")
class MathEnv(TextEnv):
    task_kind = "math"
    default_max_turns = 2
    default_answer_type = "math"  # benchmark rows without an answer_type are verified symbolically
    default_system_prompt = (
        "You are a helpful assistant. Solve the problem briefly and give the final answer as \\boxed{...}."
    )
