"""The learner under HF accelerate: FSDP on several GPUs, data parallel or plain on CPU, mixed precision,
grad accumulation.

A thin subclass of ``reopold_agents.learner.Learner``: advantages, stage rules, token selection,
the surrogate and the metrics are the Learner's own code. What changes is only *how* one minibatch's
gradient is made and applied: the minibatch is split into ``distributed.grad_accumulation``
micro-batches whose losses are weighted so their summed gradient equals the whole minibatch's
(token-mean: by selected tokens; seq-mean: by sequences with a selected token), backward goes through
``accelerator.backward`` (fp16 loss scaling), and clipping through ``accelerator.clip_grad_norm_``
(unscales fp16 grads; shard-aware under FSDP).

Several processes (``accelerate launch`` ranks, or Ray learner ranks with ``num_learner_workers``)
each take a shard of the batch; the normaliser is summed over ranks, so the update equals the
one-process update on the whole batch (tested with 2 CPU ranks over gloo). Exceptions: the
``entropy`` rule ranks tokens within each rank's shard, and GRPO groups must not straddle ranks.
``ddp`` keeps full replicas and averages gradients with one flat all-reduce (no DDP wrapper, since the
memory-lean log-prob path calls the base model and LM head directly); ``fsdp`` (FSDP2 via accelerate,
GPU only) shards parameters, gradients and optimiser state. The FSDP path is wired but was not run
here (no GPU): verify it on the cluster first.

Accelerate keeps one ``AcceleratorState`` per process, so build one AccelerateLearner per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.distributed import DistributedConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.learner import MAX_KEYS, MIN_KEYS, Learner, StepPlan, _Accumulator
from reopold_agents.trajectory import Batch

try:
    from accelerate.utils import DistributedType
except ImportError:  # pragma: no cover - accelerate is a core dependency
    DistributedType = None  # type: ignore[assignment]


def learner_strategy(dcfg: DistributedConfig, num_processes: int, cuda: bool) -> str:
    """``auto``: FSDP when several GPU processes share the learner, else ddp (plain in one process)."""
    if dcfg.learner_strategy != "auto":
        return dcfg.learner_strategy
    return "fsdp" if cuda and num_processes > 1 else "ddp"


def make_accelerator(dcfg: DistributedConfig) -> Any:
    """An Accelerator for this process; FSDP (version 2, full state dict for weight broadcast) if chosen."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import PartialState

    cuda = torch.cuda.is_available()
    strategy = learner_strategy(dcfg, PartialState(cpu=not cuda).num_processes, cuda)
    if strategy == "fsdp" and not cuda:
        raise ValueError("distributed.learner_strategy: fsdp needs CUDA GPUs; use ddp on CPU")
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
                 accelerator: Any = None, logprob_chunk_size: int = 1024, recompute_old_logprobs: bool = False,
                 pack_sequences: bool = True) -> None:
        dcfg.check()
        self.dcfg = dcfg
        self.accelerator = accelerator if accelerator is not None else make_accelerator(dcfg)
        self.fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        super().__init__(model, algo, trainer, logprob_chunk_size=logprob_chunk_size,
                         recompute_old_logprobs=recompute_old_logprobs, pack_sequences=pack_sequences)
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        model = super()._prepare_model(model)  # the vision tower frozen before FSDP flattens the parameters
        if self.fsdp:
            # FSDP shards parameters in place: wrap the model before the optimizer sees its parameters.
            return self.accelerator.prepare_model(model)
        # No DDP wrapper: the memory-lean log-prob path calls the base model and the LM head directly
        # (bypassing a wrapper's forward), so gradients are averaged by `_sync_grads`.
        return model.to(self.accelerator.device)

    def _ranks_in_forward(self, single_pass: bool) -> bool:
        return False  # micro-batches never see the whole batch: rank from one pre-pass (Learner.step)

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def close(self) -> None:
        """Tear down the process group (``Accelerator.end_training``). A rank that exits with its gloo/NCCL
        group still up can abort in the group's destructor ("terminate called without an active exception")."""
        self.accelerator.end_training()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The student's full weights on CPU (gathered from shards under FSDP) for the rollout engines."""
        state = self.accelerator.get_state_dict(self.model)
        return {k: v.detach().to("cpu") for k, v in state.items()}

    def token_logprobs(self, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        with self.accelerator.autocast():  # the precision the update's own forward runs in
            return super().token_logprobs(batch, temperature)

    def step(self, batch: Batch, step: int) -> dict[str, float]:
        with self.accelerator.autocast():
            metrics = super().step(batch, step)
        metrics["grad_accumulation"] = float(self.dcfg.grad_accumulation)
        metrics["learner_ranks"] = float(self.accelerator.num_processes)
        return metrics

    def _reduce(self, totals: dict[str, float]) -> dict[str, float]:
        """Every rank's token totals, gathered once and combined (sums; min/max for the reward extremes), so
        a multi-rank step reports what one process would on the whole batch, per-teacher counts included
        (ranks may have seen different teachers). Loss and grad norm are global already."""
        if self.accelerator.num_processes == 1:
            return totals
        import torch.distributed as dist

        gathered: list[dict[str, float] | None] = [None] * self.accelerator.num_processes
        dist.all_gather_object(gathered, totals)
        out: dict[str, float] = {}
        for part in gathered:
            assert part is not None
            for key, value in part.items():
                if key not in out:
                    out[key] = value
                elif key in MIN_KEYS:
                    out[key] = min(out[key], value)
                elif key in MAX_KEYS:
                    out[key] = max(out[key], value)
                else:
                    out[key] += value
        return out

    def _minibatch(self, plan: StepPlan, idx: torch.Tensor, acc: _Accumulator, first_epoch: bool) -> None:
        select = plan.select
        assert select is not None  # decided once in Learner.step (``_ranks_in_forward`` is False here)
        batch_norm = plan.token_norm  # this rank's selected tokens of the whole batch (None: one pass)
        # Micro-batch losses are micro-batch means; the shares below carry the normaliser instead.
        plan = dataclasses.replace(plan, select=select, token_norm=None)
        mask = select.index_select(0, idx)
        world = self.accelerator.num_processes
        # The loss normaliser of the minibatch over *all* ranks (selected tokens, or sequences with one):
        # each micro-batch's loss is weighted by its share, times `world` because DDP/FSDP average
        # gradients over ranks; so any split over ranks and micro-batches gives the one-pass gradient.
        # (aggregation=constant's normaliser counts sequences whatever is selected: emptiness is counted apart)
        global_norm, global_selected = self._all_sum(
            torch.tensor([self.objective.normaliser(mask), float(mask.sum())])).tolist()
        if global_selected == 0:
            acc.skip(empty=True)  # every rank agrees (same reduced number), so no rank waits in a collective
            return
        # token_mean over several minibatches: normalised by the whole batch's selected tokens (all ranks),
        # as the plain Learner does, so minibatch gradients add up to the batch mean's.
        denom = global_norm
        if self.objective.batch_normalised and batch_norm is not None:
            denom = self._all_sum(torch.tensor([batch_norm]))[0].item()
        micro = [m for m in idx.tensor_split(min(self.dcfg.grad_accumulation, idx.numel())) if m.numel()]
        shares = [self.objective.normaliser(select.index_select(0, m)) / denom for m in micro]
        stat_keys: list[str] = []
        contrib: list[float] = [0.0]  # [loss, *stats], each weighted by its micro-batch's share
        for j, (m, share) in enumerate(zip(micro, shares)):
            last = j == len(micro) - 1
            sync = contextlib.nullcontext() if (last or not self.fsdp) else self.accelerator.no_sync(self.model)
            with sync:
                # A rank with no selected tokens still runs backward (weight 0): FSDP needs every rank.
                loss, stats, _ = self._minibatch_loss(plan, m, acc, first_epoch)
                self.accelerator.backward(loss * (share * world))
            if not stat_keys:
                stat_keys = sorted(stats)
                contrib.extend(0.0 for _ in stat_keys)
            contrib[0] += float(loss.detach()) * share
            for i, k in enumerate(stat_keys):
                contrib[i + 1] += float(stats.get(k, 0.0)) * share
        totals = self._all_sum(torch.tensor(contrib, dtype=torch.float64)).tolist()
        self._sync_grads()
        max_norm = self.trainer.max_grad_norm if self.trainer.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.params, max_norm)  # of the synced (global) grads
        # Decide on reduced numbers only, so all ranks step or all skip.
        finite = bool(torch.isfinite(torch.tensor(totals[0]))) and bool(torch.isfinite(torch.as_tensor(grad_norm)))
        if finite:
            self.optimizer.step()
            acc.update(totals[0], float(grad_norm), dict(zip(stat_keys, totals[1:])))
        else:
            acc.skip(empty=False)
        self.optimizer.zero_grad(set_to_none=True)

    def _sync_grads(self) -> None:
        """Data parallelism without a wrapper: average the gradients over ranks in one flat all-reduce
        (FSDP reduces its own shards; one process has nothing to do)."""
        if self.fsdp or self.accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in self.params if p.grad is not None]
        if len(grads) != len(self.params):
            raise RuntimeError("a parameter has no gradient on this rank; ranks would diverge")
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.accelerator.num_processes
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over learner ranks (identity in one process)."""
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.reduce(values.to(self.accelerator.device), reduction="sum").cpu()

