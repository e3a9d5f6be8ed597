"""The engine interface: what the rollout needs from a generator (HF in-process, vLLM on GPU).

An engine turns token-id prompts (plus images for VL models) into sampled continuations and returns
the *exact* ids it sampled with their log-probs, so the rollout never re-tokenises text. Log-probs are
those of the raw model distribution (temperature 1, no top-k/top-p renormalisation): that is what the
learner recomputes as pi_old / pi_theta, so the importance ratio is 1 on-policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from reopold_agents.config.sampling import SamplingConfig

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy; ``top_k == 0`` and ``top_p == 1`` disable them.

    Generation stops at the tokenizer's EOS (``<|im_end|>``) or at any id in ``stop_token_ids``
    (typically the ``</tool_call>`` id). ``seed`` makes sampling reproducible (None: unseeded).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None

    def check(self) -> None:
        SamplingConfig(self.max_new_tokens, self.temperature, self.top_p, self.top_k).check()

    @classmethod
    def from_config(cls, cfg: SamplingConfig, seed: int | None = None,
                    stop_token_ids: list[int] | None = None) -> "SamplingParams":
        """A turn's sampling from ``engine.sampling.*`` (stop ids come from the tokenizer, seeds from
        ``reopold_agents.seeding``)."""
        return cls(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                   stop_token_ids=list(stop_token_ids or []), seed=seed)


@dataclass
class GenerationRequest:
    """One prompt as token ids. For VL models ``prompt_ids`` already holds every image's expanded
    ``<|image_pad|>`` run (see ``reopold_agents.chat``) and ``images`` the PIL images in order of
    appearance. ``model_inputs`` may carry the already processed tensors of those images
    (``pixel_values``, ``image_grid_thw``) so an in-process engine does not process them twice;
    engines that take raw images (vLLM) use ``images``.
    """

    prompt_ids: list[int]
    images: list[Any] = field(default_factory=list)
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Generation:
    """The sampled continuation: ``token_ids`` exactly as sampled (a stop token, if hit, is the last
    id; nothing is appended after it) and ``logprobs[i] = log p(token_ids[i] | prompt, token_ids[:i])``
    under the raw model distribution."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.token_ids)} token ids but {len(self.logprobs)} log-probs")


class Engine(ABC):
    """A student (or teacher) generator. Implementations: ``hf`` (in-process), ``vllm`` (GPU)."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], sampling: SamplingParams) -> list[Generation]:
        """Sample one continuation per request (same order)."""

    @abstractmethod
    def load_weights(self, model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> None:
        """Sync the generator's weights from the learner (a module or a state dict) after an update."""

    def score(self, requests: list[GenerationRequest]) -> list[list[float]]:
        """Log-probs of each request's own ``prompt_ids`` (teacher scoring), *target-aligned*:
        entry ``t`` is ``log p(prompt_ids[t] | prompt_ids[:t])`` and entry 0 is 0.0."""
        raise NotImplementedError(f"{type(self).__name__} cannot score sequences")

    def close(self) -> None:
        """Release resources (GPU memory, worker processes)."""


class Scorer(Protocol):
    """What the teacher needs from a back end: ``Engine.score``'s contract (an ``Engine`` is one; so is
    the remote ``HTTPTeacherClient``, which cannot generate or load weights)."""

    def score(self, requests: list[GenerationRequest]) -> list[list[float]]: ...


@dataclass
class TopKRow:
    """One sequence scored with the teacher's top-k (``TopKScorer.score_topk``), target-aligned like
    ``Engine.score``: entry ``t`` describes the distribution that predicts ``prompt_ids[t]``, so entry 0
    (nothing predicts it) is 0.0 with k zero ids and log-probs. ``topk_ids[t]`` are the k most likely ids,
    ordered by log-prob descending, ties by id ascending (``logprobs.model_topk_logprobs``'s order)."""

    logprobs: list[float]  # [T]: log p(prompt_ids[t] | prompt_ids[:t])
    topk_ids: list[list[int]]  # [T][k]
    topk_logprobs: list[list[float]]  # [T][k]

    def __post_init__(self) -> None:
        n = len(self.logprobs)
        if len(self.topk_ids) != n or len(self.topk_logprobs) != n:
            raise ValueError(f"{n} log-probs but {len(self.topk_ids)} top-k id and {len(self.topk_logprobs)} "
                             "top-k log-prob positions")
        widths = {len(x) for x in self.topk_ids} | {len(x) for x in self.topk_logprobs}
        if len(widths) > 1:
            raise ValueError(f"top-k positions of different widths {sorted(widths)}")

    @property
    def k(self) -> int:
        return len(self.topk_ids[0]) if self.topk_ids else 0


@runtime_checkable
class TopKScorer(Scorer, Protocol):
    """A ``Scorer`` that also gives the teacher's top-k at every position (dense objectives: ``gkd``,
    ``dense_kl``, ``reopold_topk``): the served vLLM teacher (``prompt_logprobs=k``). The in-process HF
    teacher computes it itself (``logprobs.model_topk_logprobs``); an engine without ``score_topk`` is
    refused by ``Teacher(engine=..., top_k=k)``."""

    def score_topk(self, requests: list[GenerationRequest], k: int) -> list[TopKRow]: ...
