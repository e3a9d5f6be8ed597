"""The learner under HF accelerate: FSDP on several GPUs, plain on CPU, mixed precision, grad accumulation.

A thin subclass of ``reopold_agents.learner.Learner``: advantages, stage rules, token selection,
the surrogate and the metrics are the Learner's own code. What changes is only *how* one minibatch's
gradient is made and applied: the minibatch is split into ``distributed.grad_accumulation``
micro-batches whose losses are weighted so their summed gradient equals the whole minibatch's
(token-mean: by selected tokens; seq-mean: by sequences with a selected token), backward goes through
``accelerator.backward`` (fp16 loss scaling, FSDP/DDP gradient sync on the last micro-batch only),
and clipping through ``accelerator.clip_grad_norm_`` (unscales fp16 grads; shard-aware under FSDP).

Accelerate keeps one ``AcceleratorState`` per process, so build one AccelerateLearner per process
(the learner actor, or the ``accelerate launch`` rank).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.distributed import DistributedConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import Learner, _Accumulator, _sub_batch
from reopold_agents.logprobs import model_token_logprobs
from reopold_agents.losses import objective_loss, selection_mask
from reopold_agents.losses.objective import TokenAdvantages
from reopold_agents.trajectory import Batch


def learner_strategy(dcfg: DistributedConfig, num_processes: int, cuda: bool) -> str:
    """``auto``: FSDP when several GPU processes share the learner, else plain (CPU or one GPU)."""
    if dcfg.learner_strategy != "auto":
        return dcfg.learner_strategy
    return "fsdp" if cuda and num_processes > 1 else "plain"


def make_accelerator(dcfg: DistributedConfig) -> Any:
    """An Accelerator for this process; FSDP (version 2, full state dict for weight broadcast) if chosen."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import PartialState

    cuda = torch.cuda.is_available()
    strategy = learner_strategy(dcfg, PartialState().num_processes, cuda)
    if strategy == "fsdp" and not cuda:
        raise ValueError("distributed.learner_strategy: fsdp needs CUDA GPUs; use plain or ddp on CPU")
    if dcfg.mixed_precision == "fp16" and not cuda:
        raise ValueError("distributed.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on CPU")
    fsdp = None
    if strategy == "fsdp":
        fsdp = FullyShardedDataParallelPlugin(
            fsdp_version=2, state_dict_type="FULL_STATE_DICT", reshard_after_forward=True,
            auto_wrap_policy="transformer_based_wrap",
        )
    return Accelerator(mixed_precision=dcfg.mixed_precision, cpu=not cuda, fsdp_plugin=fsdp)


class AccelerateLearner(Learner):
    """``Learner`` whose minibatch update runs through accelerate with gradient accumulation."""

    def __init__(self, model: nn.Module, algo: AlgoConfig, trainer: TrainerConfig, dcfg: DistributedConfig,
                 accelerator: Any = None) -> None:
        dcfg.check()
        self.dcfg = dcfg
        self.accelerator = accelerator if accelerator is not None else make_accelerator(dcfg)
        # FSDP shards parameters in place: wrap the model before the optimizer sees its parameters.
        wrapped = self.accelerator.prepare_model(model)
        super().__init__(wrapped, algo, trainer)
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The student's full weights on CPU (gathered from shards under FSDP) for the rollout engines."""
        state = self.accelerator.get_state_dict(self.model)
        return {k: v.detach().to("cpu") for k, v in state.items()}

    def step(self, batch: Batch, step: int) -> dict[str, float]:
        with self.accelerator.autocast():
            metrics = super().step(batch, step)
        metrics["grad_accumulation"] = float(self.dcfg.grad_accumulation)
        return metrics

    def _minibatch(
        self,
        batch: Batch,
        idx: torch.Tensor,
        adv: TokenAdvantages,
        topk: tuple[torch.Tensor, torch.Tensor] | None,
        rule: str,
        select: torch.Tensor | None,
        acc: _Accumulator,
        first_epoch: bool,
    ) -> None:
        if select is None:
            # The entropy rule ranks tokens over the whole minibatch, not per micro-batch.
            select = selection_mask(self.algo, rule, batch.loss_mask, self._entropy(batch, [idx]), adv)
        mask = select.index_select(0, idx)
        if not bool(mask.any()):
            acc.skip(empty=True)
            return
        micro = [m for m in idx.tensor_split(min(self.dcfg.grad_accumulation, idx.numel())) if m.numel()]
        weights = [self._weight(select.index_select(0, m), mask) for m in micro]
        total = 0.0
        stats_sum: dict[str, float] = {}
        for j, (m, w) in enumerate(zip(micro, weights)):
            last = j == len(micro) - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                loss, stats = self._micro_loss(batch, m, adv, topk, select, acc, first_epoch)
                self.accelerator.backward(loss * w)
            total += float(loss.detach()) * w
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * w
        max_norm = self.trainer.max_grad_norm if self.trainer.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.params, max_norm)
        finite = torch.isfinite(torch.tensor(total)) and bool(torch.isfinite(torch.as_tensor(grad_norm)))
        if finite:
            self.optimizer.step()
            acc.update(total, float(grad_norm), stats_sum)
        else:
            acc.skip(empty=False)
        self.optimizer.zero_grad(set_to_none=True)

    def _weight(self, micro_mask: torch.Tensor, mask: torch.Tensor) -> float:
        """Share of the minibatch loss's normaliser that this micro-batch holds (sums to 1)."""
        if self.algo.aggregation == "seq_mean":
            return float((micro_mask.sum(-1) > 0).sum()) / max(float((mask.sum(-1) > 0).sum()), 1.0)
        return float(micro_mask.sum()) / max(float(mask.sum()), 1.0)

    def _micro_loss(
        self,
        batch: Batch,
        idx: torch.Tensor,
        adv: TokenAdvantages,
        topk: tuple[torch.Tensor, torch.Tensor] | None,
        select: torch.Tensor,
        acc: _Accumulator,
        first_epoch: bool,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        mb = _sub_batch(batch, idx, self.unwrapped)
        target_ids = None
        if topk is not None:
            target_ids = torch.cat([mb.input_ids[..., None], topk[0].index_select(0, idx)], dim=-1)
        logp_all, entropy = model_token_logprobs(
            self.model, mb.input_ids, mb.attention_mask, mb.model_inputs, True, self.trainer.logprob_chunk_size,
            target_ids=target_ids,
        )
        logp = logp_all[..., 0] if topk is not None else logp_all
        mask = select.index_select(0, idx)
        if first_epoch:
            assert entropy is not None
            acc.observe_tokens(mb.loss_mask, mask, entropy, adv.clipped.index_select(0, idx))
        return objective_loss(
            self.algo,
            logp.float(),
            mb.old_logprobs,
            adv.advantages.index_select(0, idx),
            mask,
            student_topk=logp_all[..., 1:].float() if topk is not None else None,
            teacher_topk=topk[1].index_select(0, idx) if topk is not None else None,
        )
