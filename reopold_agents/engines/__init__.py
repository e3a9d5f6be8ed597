"""Student/teacher generation engines behind one interface (``Engine``); ``make_engine`` picks one.

``vllm`` is imported only when asked for, so the CPU default never needs it installed.
"""

from __future__ import annotations

from typing import Any

import torch

from reopold_agents.config.engine import EngineConfig

from reopold_agents.engines.base import Engine, Generation, GenerationRequest, SamplingParams

ENGINE_NAMES = ("hf", "vllm")


def make_engine(
    cfg: EngineConfig,
    *,
    model: torch.nn.Module | None,
    tokenizer: Any,
    processor: Any = None,
    model_path: str | None = None,
) -> Engine:
    """Build the engine named by ``cfg.name`` (an ``EngineConfig``).

    ``model`` is the in-process module (the HF engine generates with it; vLLM uses it only for weight
    sync), ``model_path`` an HF id or directory (what vLLM loads), ``processor`` the VL processor.
    """
    if cfg.name == "hf":
        from reopold_agents.engines.hf import HFEngine

        if model is None:
            raise ValueError("engine.name=hf needs an in-process model")
        return HFEngine(model, tokenizer, processor=processor, max_batch_size=cfg.max_batch_size)
    if cfg.name == "vllm":
        from reopold_agents.engines.vllm import VLLMEngine  # lazy: vllm is optional

        return VLLMEngine(cfg, model=model, tokenizer=tokenizer, processor=processor, model_path=model_path)
    raise ValueError(f"engine.name: unknown engine {cfg.name!r}; choose one of {', '.join(ENGINE_NAMES)}")


__all__ = ["ENGINE_NAMES", "Engine", "Generation", "GenerationRequest", "SamplingParams", "make_engine"]
