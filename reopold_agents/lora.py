"""LoRA students (``model.lora``): the learner's student wrapped by peft, and the few views of it others need.

* ``apply_lora``: ``peft.get_peft_model`` on the student the learner trains; every base weight is frozen,
  so only the adapters get gradients and sit in the optimiser.
* ``hf_module``: the transformers model inside a ``PeftModel`` (the adapters are injected into its
  linear layers in place, so it computes the adapted student): the chunked log-prob path and the HF
  engine call the transformers API (``model.model``, the LM head, ``generate``) on it.
* ``merged_state_dict``: plain HF-named weights with ``W + (alpha / r) B A`` folded in, without touching
  the live model: what a rollout engine with weights of its own (vLLM, a Ray worker) loads.
* ``adapters_disabled``: the frozen base inside the same module (``model.teacher=self`` scores with it).

peft is imported only when a LoRA model exists: a module is a ``PeftModel`` (or holds LoRA layers) only
if peft was imported to build it, so the checks below never import peft for a plain student.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn

from reopold_agents.config.lora import LoraConfig

ADAPTER = "default"  # peft's name for the one adapter a run trains


def _peft_loaded() -> bool:
    return "peft" in sys.modules


def is_peft(model: nn.Module) -> bool:
    """``model`` is a peft ``PeftModel`` (the wrapper ``apply_lora`` returns)."""
    if not _peft_loaded():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def has_lora(model: nn.Module) -> bool:
    """``model`` (a ``PeftModel`` or the transformers model inside one) computes with LoRA layers."""
    return bool(lora_layers(model))


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every LoRA layer of ``model``, named as in ``hf_module(model)``."""
    if not _peft_loaded():
        return []
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in hf_module(model).named_modules() if isinstance(m, LoraLayer)]


def hf_module(model: nn.Module) -> nn.Module:
    """The transformers model of a ``PeftModel`` (adapters injected, active unless disabled); others as they are."""
    return model.get_base_model() if is_peft(model) else model  # type: ignore[operator]


def apply_lora(model: nn.Module, cfg: LoraConfig, base_name: str) -> nn.Module:
    """Wrap ``model`` with fresh adapters (A random, B zero: the wrapped model computes exactly the base
    model until the first update) on the ``cfg.target_modules`` linear layers; every base weight frozen.
    ``base_name`` (``model.student``) is recorded in the adapter config, so an export knows the base.
    ValueError('model.lora.target_modules: ...') when a target matches no linear layer or is the LM head
    (the chunked log-prob path reads the head's weight directly, so an adapter there would be ignored)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is head}
    for target in cfg.target_modules:
        if target in head_names:
            raise ValueError(f"model.lora.target_modules: {target!r} is the LM head; LoRA adapts the decoder "
                             "blocks only (the memory-lean log-prob path reads the head's weight directly)")
        if target not in linear:
            raise ValueError(f"model.lora.target_modules: {target!r} matches no linear layer of "
                             f"{type(model).__name__} (its linear layers: {sorted(linear - head_names)})")
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, peft_cfg)
    wrapped.peft_config[ADAPTER].base_model_name_or_path = base_name
    return wrapped


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapted student's weights under the plain model's names (``W + delta`` for each adapted layer,
    as peft's ``merge_and_unload`` computes them), detached; ``model`` itself is left as it is. A model
    without LoRA layers gives its own ``state_dict()``."""
    inner = hf_module(model)
    merged: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(inner):
        if getattr(layer, "lora_variant", None):
            raise NotImplementedError(f"{name}: only plain LoRA adapters merge here (not DoRA or other variants)")
        if layer.merged:  # type: ignore[union-attr]
            raise ValueError(f"{name}: adapters already merged into the base weight in place")
        weight = layer.get_base_layer().weight  # type: ignore[operator]
        adapters = [a for a in layer.active_adapters if a in layer.lora_A]  # type: ignore[union-attr, operator]
        deltas = [layer.get_delta_weight(a).to(weight.dtype) for a in adapters]  # type: ignore[operator]
        merged[f"{name}.weight"] = weight.detach() + sum(deltas)
    state: dict[str, torch.Tensor] = {}
    for key, value in inner.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        state[plain] = merged.get(plain, value.detach())
    return state


def adapters_inert(model: nn.Module) -> bool:
    """Whether ``model``'s LoRA adapters change nothing: every active adapter's delta is exactly zero (peft
    initialises B to zero) and no variant (DoRA) rescales the base, so the model computes exactly its base
    (``base(x) + 0``). A model without LoRA layers is trivially inert."""
    with torch.no_grad():
        for _, layer in lora_layers(model):
            if getattr(layer, "lora_variant", None):
                return False
            for adapter in layer.active_adapters:  # type: ignore[union-attr]
                if adapter in layer.lora_A and bool(layer.get_delta_weight(adapter).any()):  # type: ignore[operator]
                    return False
    return True


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The frozen base inside ``model`` (a ``PeftModel``) while the block runs: every LoRA layer computes
    its base layer only, exactly the initial student; the adapters come back on exit."""
    if not is_peft(model):
        raise TypeError(f"adapters_disabled needs a peft PeftModel, got {type(model).__name__}")
    with model.disable_adapter():  # type: ignore[operator]
        yield
