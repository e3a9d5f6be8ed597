"""In-process generation with ``transformers.generate`` (the CPU default; also the teacher's scorer).

Guarantees (tested in tests/test_engines.py):

* Requests are left-padded into micro-batches and decoded with the KV cache; results do not depend on
  which requests share a batch (up to float noise).
* Generation stops at EOS (``<|im_end|>``) or any ``SamplingParams.stop_token_ids`` (``</tool_call>``).
  The stop token is the last returned id and **nothing is appended after it**: in particular a turn
  that ends in ``</tool_call>`` has no ``<|im_end|>``; the rollout closes the turn with an env token
  (loss_mask 0) so the student is never trained on a token it did not sample.
* ``Generation.logprobs`` are log-probs of the sampled ids under the *raw* model distribution
  (temperature 1, before top-k/top-p), i.e. exactly what the learner recomputes for pi_old, captured
  from the logits during generation (no second forward, no [steps x vocab] buffer).
* Only ``SamplingParams`` decides how to sample: the model's own ``generation_config`` (repetition
  penalty, default top_k, ...) is ignored, so rollouts mean the same thing for every checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from reopold_agents.engines.base import Engine, Generation, GenerationRequest, SamplingParams
from reopold_agents.models import forward_inputs


class _SampledLogprobs(LogitsProcessor):
    """Records log p(sampled token) from the raw logits without keeping every step's distribution.

    ``generate`` calls custom processors before its temperature/top-k/top-p warpers, so ``scores`` here
    are the raw logits. The token sampled from step t is visible as ``input_ids[:, -1]`` at step t + 1;
    the last step is resolved by ``finish``.
    """

    def __init__(self, banned: list[int]) -> None:
        self.prev: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []
        self.banned = banned

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        if self.banned:  # after recording the raw distribution: these ids are never sampled
            scores = scores.clone()
            scores[:, self.banned] = -float("inf")
        return scores

    def finish(self, last_ids: torch.Tensor) -> torch.Tensor:
        """[B, steps] log-probs, given the ids sampled at the final step."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, last_ids[:, None]).squeeze(-1))
            self.prev = None
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(last_ids.shape[0], 0)


def _image_inputs(requests: list[GenerationRequest], processor: Any) -> dict[str, torch.Tensor]:
    """Concatenate the requests' processed images (Qwen-VL layout: patches and grid rows along dim 0)."""
    parts: list[dict[str, torch.Tensor]] = []
    for req in requests:
        if req.model_inputs:
            parts.append(req.model_inputs)
        elif req.images:
            if processor is None:
                raise ValueError("a request has images but the engine was built without a processor")
            from reopold_agents.chat import process_images

            parts.append(process_images(processor, req.images))
    keys = sorted(set().union(*(p.keys() for p in parts))) if parts else []
    return {k: torch.cat([p[k] for p in parts if k in p], dim=0) for k in keys}


class HFEngine(Engine):
    """Generates with an in-process transformers model (shared with the learner or a copy of it)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        processor: Any = None,
        max_batch_size: int = 64,
        banned_token_ids: list[int] | None = None,
    ):
        """``banned_token_ids`` are never sampled (default for VL processors: the image/video pad ids,
        which would otherwise desynchronise image tokens and image features); their probability mass
        stays in the recorded raw log-probs, which is what the learner recomputes."""
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before building HFEngine")
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.max_batch_size = max_batch_size
        if banned_token_ids is None:
            banned_token_ids = [
                int(i) for i in (getattr(processor, "image_token_id", None), getattr(processor, "video_token_id", None))
                if i is not None
            ]
        self.banned_token_ids = list(banned_token_ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        greedy = sampling.temperature == 0
        stops = [self.tokenizer.eos_token_id, *[s for s in sampling.stop_token_ids if s != self.tokenizer.eos_token_id]]
        return GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_k=None if greedy or sampling.top_k == 0 else sampling.top_k,
            top_p=None if greedy or sampling.top_p == 1.0 else sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=stops,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
        )

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], sampling: SamplingParams) -> list[Generation]:
        sampling.check()
        for i, req in enumerate(requests):
            if not req.prompt_ids:
                raise ValueError(f"request {i} has an empty prompt")
        out: list[Generation] = []
        was_training = self.model.training
        saved_config = getattr(self.model, "generation_config", None)
        self.model.eval()
        try:
            # A clean config, so the checkpoint's own defaults (top_k=50, penalties) cannot leak in.
            self.model.generation_config = GenerationConfig()
            for start in range(0, len(requests), self.max_batch_size):
                chunk = requests[start : start + self.max_batch_size]
                seed = None if sampling.seed is None else sampling.seed + start
                out.extend(self._generate_batch(chunk, sampling, seed))
        finally:
            if saved_config is not None:
                self.model.generation_config = saved_config
            self.model.train(was_training)
        return out

    def _generate_batch(self, requests: list[GenerationRequest], sampling: SamplingParams, seed: int | None):
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, req in enumerate(requests):
            ids[i, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids, dtype=torch.long)
            mask[i, width - len(req.prompt_ids) :] = 1
        device = self.device
        extra = {k: v.to(device) for k, v in _image_inputs(requests, self.processor).items()}
        extra = forward_inputs(self.model, ids.to(device), extra)
        capture = _SampledLogprobs(self.banned_token_ids)
        config = self._generation_config(sampling)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            seqs = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([capture]),
                **extra,
            )
        new = seqs[:, width:].cpu()
        logps = capture.finish(seqs[:, -1]).cpu() if new.shape[1] else torch.zeros(len(requests), 0)
        stops = set(config.eos_token_id)
        results = []
        for i in range(len(requests)):
            row = new[i].tolist()
            end = next((j for j, t in enumerate(row) if t in stops), None)
            n = len(row) if end is None else end + 1
            results.append(
                Generation(
                    token_ids=row[:n],
                    logprobs=logps[i, :n].tolist(),
                    finish_reason="length" if end is None else "stop",
                )
            )
        return results

    def load_weights(self, model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> None:
        """Shared module: nothing to do. Another module or a state dict: copy its tensors in place."""
        if model_or_state_dict is self.model:
            return
        state = (
            model_or_state_dict.state_dict()
            if isinstance(model_or_state_dict, torch.nn.Module)
            else model_or_state_dict
        )
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        # Tied weights (lm_head = embed_tokens) may be absent from a state dict; anything else is a bug.
        tied = {k for k in missing if "lm_head" in k}
        if set(missing) - tied or unexpected:
            raise ValueError(f"load_weights: missing keys {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")

    @torch.no_grad()
    def score(self, requests: list[GenerationRequest]) -> list[list[float]]:
        from reopold_agents.logprobs import model_token_logprobs

        out: list[list[float]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(requests), self.max_batch_size):
                chunk = requests[start : start + self.max_batch_size]
                width = max(len(r.prompt_ids) for r in chunk)
                ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, req in enumerate(chunk):  # right padding: positions start at 0 for every row
                    ids[i, : len(req.prompt_ids)] = torch.tensor(req.prompt_ids, dtype=torch.long)
                    mask[i, : len(req.prompt_ids)] = 1
                device = self.device
                extra = {k: v.to(device) for k, v in _image_inputs(chunk, self.processor).items()}
                extra = forward_inputs(self.model, ids.to(device), extra)
                logps, _ = model_token_logprobs(self.model, ids.to(device), mask.to(device), model_inputs=extra or None)
                logps = logps.float().cpu()
                out.extend(logps[i, : len(r.prompt_ids)].tolist() for i, r in enumerate(chunk))
        finally:
            self.model.train(was_training)
        return out
