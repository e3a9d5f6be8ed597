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
* KV reuse (``reuse_kv_cache=True``, the default; ``reopold_agents.engines.kv_reuse``): a request that
  extends a sequence of the previous call (the next turn of a conversation) starts from that
  sequence's cached keys/values, a prompt prefix shared by a whole batch runs once, and so does a prompt
  that several rows repeat (a group's samples). Sampled ids
  and log-probs are those of the full re-prefill (to float noise, tested), with the same random
  numbers drawn. Text models only: VL models and batches with images take the full path.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicLayer

from reopold_agents.engines.base import Engine, Generation, GenerationRequest, SamplingParams
from reopold_agents.engines.kv_reuse import MIN_SHARED_PREFIX, KVEntry, KVStore, PrefillStats, batch_prefix_len, stitch
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


def _plain_dynamic(cache: Any) -> bool:
    """A cache whose every layer holds one key/value slot per token (no sliding window or recurrent
    state), the only kind whose rows can be cut out and stitched together."""
    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


class HFEngine(Engine):
    """Generates with an in-process transformers model (shared with the learner or a copy of it)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        processor: Any = None,
        max_batch_size: int = 64,
        banned_token_ids: list[int] | None = None,
        reuse_kv_cache: bool = True,
    ):
        """``banned_token_ids`` are never sampled (default for VL processors: the image/video pad ids,
        which would otherwise desynchronise image tokens and image features); their probability mass
        stays in the recorded raw log-probs, which is what the learner recomputes.
        ``reuse_kv_cache=False`` re-prefills every request from its first token (the reference path)."""
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
        self.reuse_kv_cache = reuse_kv_cache
        self._kv = KVStore()
        self._kv_weights: tuple[tuple[int, int], ...] = ()
        # VL models keep 3-D rope state across a generate call (rope deltas from the prefill), so they
        # always prefill in full; a model whose cache is not plain per-token layers turns reuse off too.
        self._kv_supported = getattr(model.config, "vision_config", None) is None
        self.prefill_stats = PrefillStats()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generation_config(self, sampling: SamplingParams, return_cache: bool = False) -> GenerationConfig:
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
            return_dict_in_generate=return_cache,  # the reuse path keeps the batch's final cache
        )

    def _weights_signature(self) -> tuple[tuple[int, int], ...]:
        """Identity and in-place version counter of every parameter: a safety net that drops cached
        states when the weights were changed without ``load_weights`` (an optimizer step on the shared
        module). Not exhaustive (fused optimizers and ``.data`` writes leave the counter), so
        ``load_weights`` after an update stays the contract."""
        return tuple((id(p), p._version) for p in self.model.parameters())

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], sampling: SamplingParams) -> list[Generation]:
        sampling.check()
        for i, req in enumerate(requests):
            if not req.prompt_ids:
                raise ValueError(f"request {i} has an empty prompt")
        if self.reuse_kv_cache and self._weights_signature() != self._kv_weights:
            self._kv.clear()
        out: list[Generation] = []
        fresh: list[KVEntry] = []  # this call's entries; they replace the store once every chunk is done
        was_training = self.model.training
        saved_config = getattr(self.model, "generation_config", None)
        self.model.eval()
        try:
            # A clean config, so the checkpoint's own defaults (top_k=50, penalties) cannot leak in.
            self.model.generation_config = GenerationConfig()
            for start in range(0, len(requests), self.max_batch_size):
                chunk = requests[start : start + self.max_batch_size]
                seed = None if sampling.seed is None else sampling.seed + start
                if self._reusable(chunk):
                    out.extend(self._generate_batch_reusing(chunk, sampling, seed, fresh))
                else:
                    out.extend(self._generate_batch(chunk, sampling, seed))
        finally:
            if saved_config is not None:
                self.model.generation_config = saved_config
            self.model.train(was_training)
        if self.reuse_kv_cache:
            self._kv.entries = fresh
            self._kv_weights = self._weights_signature()
        return out

    def _reusable(self, requests: list[GenerationRequest]) -> bool:
        """Reuse is for text models and text batches: image features enter at prefill only and VL
        rope indices span the whole sequence."""
        return self.reuse_kv_cache and self._kv_supported and not any(r.images or r.model_inputs for r in requests)

    def _sample(self, ids: torch.Tensor, mask: torch.Tensor, config: GenerationConfig, seed: int | None,
                **kwargs: Any) -> tuple[Any, _SampledLogprobs]:
        """``model.generate`` under ``seed`` (forked RNG, so the caller's random state is untouched)."""
        device = self.device
        capture = _SampledLogprobs(self.banned_token_ids)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([capture]),
                **kwargs,
            )
        return out, capture

    @staticmethod
    def _results(seqs: torch.Tensor, width: int, capture: _SampledLogprobs, stops: set[int]) -> list[Generation]:
        """Cut each row after its first stop id (later columns are padding of finished rows)."""
        new = seqs[:, width:].cpu()
        logps = capture.finish(seqs[:, -1]).cpu() if new.shape[1] else torch.zeros(seqs.shape[0], 0)
        results = []
        for i in range(seqs.shape[0]):
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

    def _generate_batch(self, requests: list[GenerationRequest], sampling: SamplingParams, seed: int | None):
        """The full path: every request left-padded and prefilled from its first token."""
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
        config = self._generation_config(sampling)
        self.prefill_stats.prefilled_tokens += sum(len(r.prompt_ids) for r in requests)
        seqs, capture = self._sample(ids, mask, config, seed, **extra)
        return self._results(seqs, width, capture, set(config.eos_token_id))

    def _generate_batch_reusing(self, requests: list[GenerationRequest], sampling: SamplingParams,
                                seed: int | None, fresh: list[KVEntry]) -> list[Generation]:
        """The reuse path (layout: ``kv_reuse`` module doc). Appends this batch's entries to ``fresh``."""
        prompts = [np.asarray(r.prompt_ids, dtype=np.int64) for r in requests]
        candidates = self._kv.entries + fresh  # earlier chunks of this call count too (same weights)
        shared = batch_prefix_len(prompts) if len(prompts) > 1 else 0
        hits = self._prefill_repeated(prompts, [self._kv.best(p, candidates) for p in prompts], shared, fresh)
        if hits is None:
            return self._generate_batch(requests, sampling, seed)
        if shared >= MIN_SHARED_PREFIX and any(n < shared for _, n in hits):
            entry = self._prefill(prompts[0][:shared])
            if entry is None:
                return self._generate_batch(requests, sampling, seed)
            fresh.append(entry)
            hits = [(e, n) if n >= shared else (entry, shared) for e, n in hits]
            self.prefill_stats.prefilled_tokens += shared
        cached = [n for _, n in hits]
        self.prefill_stats.reused_tokens += sum(cached)
        self.prefill_stats.prefilled_tokens += sum(len(p) for p in prompts) - sum(cached)
        c_width = max(cached)
        n_width = max(len(p) - n for p, n in zip(prompts, cached))
        width = c_width + n_width
        ids = torch.full((len(requests), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, n) in enumerate(zip(prompts, cached)):
            ids[i, c_width - n : c_width] = torch.from_numpy(p[:n])
            mask[i, c_width - n : c_width] = 1
            ids[i, width - (len(p) - n) :] = torch.from_numpy(p[n:])
            mask[i, width - (len(p) - n) :] = 1
        kwargs: dict[str, Any] = {}
        if c_width:
            kwargs["past_key_values"] = DynamicCache(stitch(hits, c_width))
        config = self._generation_config(sampling, return_cache=True)
        out, capture = self._sample(ids, mask, config, seed, **kwargs)
        results = self._results(out.sequences, width, capture, set(config.eos_token_id))
        cache = out.past_key_values
        if not _plain_dynamic(cache):
            self._kv_supported = False
            return results
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        forwarded = cache.get_seq_length() - width  # generated ids whose states are in the cache
        for i, (p, n, gen) in enumerate(zip(prompts, cached, results)):
            g = max(0, min(len(gen.token_ids), forwarded))
            spans = [(a, b) for a, b in ((c_width - n, c_width), (width - (len(p) - n), width + g)) if b > a]
            seq = np.concatenate([p, np.asarray(gen.token_ids[:g], dtype=np.int64)])
            fresh.append(KVEntry(ids=seq, layers=layers, row=i, spans=spans))
        return results

    def _prefill_repeated(self, prompts: list[np.ndarray], hits: list[tuple[KVEntry | None, int]], shared: int,
                          fresh: list[KVEntry]) -> list[tuple[KVEntry | None, int]] | None:
        """A prompt that several rows repeat (a group's samples: ``trainer.group_size``) runs once, batch
        size 1, and each of its rows starts from those states: BFCL's per-prompt function docs are most of
        a prompt, and a batch-wide prefix is only the system header. Only where it runs at least
        ``MIN_SHARED_PREFIX`` fewer tokens than the rows would past the batch-wide prefix (``shared``) and
        their cached states (toolqa's prompts are that prefix plus a short question: no); the prompt runs
        whole (``_prefill`` starts from nothing). None: the model's cache cannot be stitched (reuse off)."""
        batch_shared = shared if shared >= MIN_SHARED_PREFIX else 0
        rows_of: dict[bytes, list[int]] = {}
        for i, p in enumerate(prompts):
            rows_of.setdefault(p.tobytes(), []).append(i)
        out = list(hits)
        for rows in rows_of.values():
            prompt, cached = prompts[rows[0]], min(out[r][1] for r in rows)
            separately = len(rows) * (len(prompt) - max(batch_shared, cached))
            once = len(prompt) - 1 + len(rows)  # the prompt less its last id, then that id in each row
            if len(rows) < 2 or separately - once < MIN_SHARED_PREFIX:
                continue
            entry = self._prefill(prompt[:-1])
            if entry is None:
                return None
            fresh.append(entry)
            self.prefill_stats.prefilled_tokens += len(prompt) - 1
            for r in rows:
                out[r] = (entry, len(prompt) - 1)
        return out

    def _prefill(self, prefix: np.ndarray) -> KVEntry | None:
        """States of one ``prefix`` (batch size 1); None (and reuse off) when the model's cache cannot
        be stitched per row."""
        kwargs: dict[str, Any] = {"use_cache": True}
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = 1  # only the states are wanted, not [len, vocab] logits
        out = self.model(input_ids=torch.from_numpy(prefix)[None].to(self.device), **kwargs)
        cache = getattr(out, "past_key_values", None)
        if not _plain_dynamic(cache):
            self._kv_supported = False
            return None
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        return KVEntry(ids=prefix.copy(), layers=layers, row=0, spans=[(0, len(prefix))])

    def load_weights(self, model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> None:
        """Shared module: nothing to copy. Another module or a state dict: copy its tensors in place.
        Either way the weights changed, so cached key/value states are dropped."""
        self._kv.clear()
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

    def close(self) -> None:
        self._kv.clear()
