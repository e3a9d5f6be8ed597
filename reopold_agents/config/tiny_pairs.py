"""The project's tiny teacher/student pairs, named once: which exist, which are vision-language, their
sizes, and which pair ``model=tiny`` means for each env (its test bed, docs/run.md).

Pure data (no torch, no transformers), so the config layer, the loader (``reopold_agents/tiny/load.py``)
and the SFT recipes (``reopold_agents/tiny/recipes.py``, one recipe per pair) all read the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SMALL = dict(hidden_size=96, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=192)
_BASE = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256)
_VL_SMALL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
_VL_BASE = dict(hidden_size=96, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=192)


@dataclass(frozen=True)
class TinyPair:
    """A tiny pair: Qwen2 (text) or Qwen2.5-VL (``vl``), with each role's architecture sizes."""

    vl: bool
    student: dict[str, int] = field(default_factory=dict)
    teacher: dict[str, int] = field(default_factory=dict)

    def sizes(self, role: str) -> dict[str, int]:
        return dict(self.student if role == "student" else self.teacher)


TINY_PAIRS: dict[str, TinyPair] = {
    "tiny": TinyPair(vl=False, student=_SMALL, teacher=_BASE),
    "tiny_toolqa": TinyPair(vl=False, student=_SMALL, teacher=_BASE),
    "tiny_math": TinyPair(vl=False, student=_SMALL, teacher=_BASE),
    "tiny_vl": TinyPair(vl=True, student=_VL_SMALL, teacher=_VL_BASE),
    "tiny_toolqa_bed": TinyPair(vl=False, student=_BASE, teacher=_BASE),
    "tiny_vl_bed": TinyPair(vl=True, student=_VL_SMALL, teacher=_VL_BASE),
    # knowledge beds (docs/run.md "Knowledge beds"): measured on one family of tasks, not named by ENV_TINY
    "tiny_math_know": TinyPair(vl=False, student=_SMALL, teacher=_BASE),
    "tiny_toolqa_know": TinyPair(vl=False, student=_BASE, teacher=_BASE),
    "tiny_vqa_know": TinyPair(vl=True, student=_VL_SMALL, teacher=_VL_BASE),
}
TINY_NAMES = tuple(TINY_PAIRS)
VL_TINY_NAMES = tuple(name for name, pair in TINY_PAIRS.items() if pair.vl)
# `model=tiny` is the pair made for the env: its test bed (a student with a habit the teacher corrects)
ENV_TINY = {"math": "tiny_math", "toolqa": "tiny_toolqa_bed", "vqa": "tiny_vl_bed"}


def tiny_for_env(name: str, env_name: str) -> str:
    """``name`` as the run resolves it: ``tiny`` is ``env_name``'s test-bed pair, any other name itself."""
    return ENV_TINY.get(env_name, "tiny") if name == "tiny" else name
