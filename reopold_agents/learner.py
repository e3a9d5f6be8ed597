"""One optimisation step of the student over a scored Batch: optimiser mechanics only.

``Learner.step(batch, step)`` asks the objective (reopold_agents/objectives/) for the step's token
terms and token mask, then runs ``ppo_epochs`` x ``num_minibatches`` optimiser steps of student forward
(memory-lean log-probs + entropy), the objective's loss, backward and gradient clipping. NaN guard: a
batch with a non-finite advantage or log-prob on a trained token, or any minibatch whose loss or
gradient norm is NaN/inf, leaves the parameters and optimiser state exactly as they were before the
step (earlier minibatches of the step are rolled back) and is reported as ``skipped_nonfinite``.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.logprobs import model_token_logprobs
from reopold_agents.models import freeze_vision_tower
from reopold_agents.objectives import Forward, Objective, TokenTerms, check_algo, make_objective
from reopold_agents.trajectory import Batch


@dataclass
class LRLambda:
    """Warm-up then constant / cosine / linear decay; a picklable object so LambdaLR can checkpoint it."""

    warmup_steps: int
    total_steps: int
    schedule: str = "constant"
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        if self.schedule == "cosine":
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.schedule == "linear":
            return 1.0 - (1.0 - self.min_lr_ratio) * progress
        raise ValueError(f"unknown lr_schedule {self.schedule!r}")


@dataclass
class StepPlan:
    """What every minibatch of one learner step shares: fixed before the first optimiser step."""

    batch: Batch
    step: int
    terms: TokenTerms
    select: torch.Tensor | None  # [B, T] token mask; None: ranked from each single-pass forward's entropy
    topk: tuple[torch.Tensor, torch.Tensor] | None  # teacher top-k (ids, log-probs) [B, T, K] for GKD
    weights: torch.Tensor | None = None  # [B, T] truncated importance weights (engine/learner mismatch)
    token_norm: float | None = None  # selected tokens of the whole batch (token_mean over minibatches)


class Learner:
    """Owns the optimizer and LR scheduler of ``model``; ``step`` returns a flat metrics dict."""

    def __init__(self, model: nn.Module, algo: AlgoConfig, trainer: TrainerConfig,
                 logprob_chunk_size: int = 1024, recompute_old_logprobs: bool = False,
                 pack_sequences: bool = True) -> None:
        algo.check()
        check_algo(algo)
        trainer.check()
        self.model = model
        self.algo = algo
        self.trainer = trainer
        self.chunk_size = logprob_chunk_size
        self.pack_sequences = pack_sequences  # padding-free forwards (model.pack_sequences, docs/run.md)
        # Engine/learner mismatch: pi_old from the learner's own forward (the engine's log-probs then only
        # enter the truncated importance weight, trainer.tis_cap).
        self.recompute_old_logprobs = recompute_old_logprobs
        self.objective: Objective = make_objective(algo, trainer.total_steps)
        self.model = model = self._prepare_model(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=trainer.lr, betas=tuple(trainer.betas), eps=trainer.eps, weight_decay=trainer.weight_decay
        )
        self.lr_lambda = LRLambda(trainer.warmup_steps, trainer.total_steps, trainer.lr_schedule, trainer.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        """The student as this learner trains it: the vision tower frozen here, the one place
        (``trainer.freeze_vision``); a subclass adds its wrapping (FSDP) after it."""
        if self.trainer.freeze_vision:
            freeze_vision_tower(model)
        return model

    def _ranks_in_forward(self, single_pass: bool) -> bool:
        """Whether the entropy rule may rank tokens from the update's own forward: only when that forward
        sees the whole batch at once (one epoch, one minibatch, no micro-batches)."""
        return single_pass

    # ------------------------------------------------------------------ public
    def step(self, batch: Batch, step: int) -> dict[str, float]:
        """One learner step over ``batch`` at 0-based training ``step`` (the objective's stage)."""
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        obj = self.objective
        mismatch: dict[str, float] = {}
        weights = None
        if self.recompute_old_logprobs or self.trainer.tis_cap > 0:
            batch, weights, mismatch = self._mismatch(batch)
        terms = obj.token_terms(batch)
        bsz = batch.input_ids.shape[0]
        if self.trainer.num_minibatches > bsz:
            raise ValueError(f"trainer.num_minibatches={self.trainer.num_minibatches} exceeds the batch size {bsz}")
        slices = list(torch.arange(bsz, device=device).tensor_split(self.trainer.num_minibatches))
        acc = _Accumulator()
        if not _finite_inputs(batch, terms):
            acc.skip(empty=False)  # NaN guard: a non-finite reward or log-prob never reaches the optimiser
            return self._finish(acc, batch, terms, step)
        single_pass = self.trainer.ppo_epochs == 1 and len(slices) == 1
        # The token mask is fixed for the whole step, decided here once. The entropy rule ranks the batch's
        # tokens by the pre-update student entropy: taken from the forward itself when that forward sees the
        # whole batch, else from one no-grad pass over the whole batch first (every pass trains on the same tokens).
        select = None
        if not obj.needs_entropy(step):
            select = obj.select(step, batch.loss_mask, terms, None)
        elif not self._ranks_in_forward(single_pass):
            select = obj.select(step, batch.loss_mask, terms, self._entropy(batch, slices))
        token_norm = float(select.sum()) if select is not None else None
        plan = StepPlan(batch, step, terms, select, _teacher_topk(batch, obj.teacher_topk), weights, token_norm)
        updates = self.trainer.ppo_epochs * len(slices)
        snapshot = self._snapshot() if updates > 1 else None
        was_training = self.model.training
        self.model.train()
        try:
            for epoch in range(self.trainer.ppo_epochs):
                for idx in slices:
                    self._minibatch(plan, idx, acc, first_epoch=epoch == 0)
                    if acc.nonfinite:
                        break
                if acc.nonfinite:
                    break
        finally:
            self.model.train(was_training)
        if acc.nonfinite and snapshot is not None:
            self._restore(snapshot)  # roll back the step's earlier minibatches too
            acc.discard_updates()
        return {**self._finish(acc, batch, terms, step), **mismatch}

    @torch.no_grad()
    def _mismatch(self, batch: Batch) -> tuple[Batch, torch.Tensor | None, dict[str, float]]:
        """The learner's own log-probs of the sampled tokens (pi_old, when recomputing), the truncated
        importance weights ``min(pi_old / pi_engine, C)`` (``tis_cap`` C > 0) and mismatch metrics."""
        from dataclasses import replace

        learner_lp = self.token_logprobs(batch)
        trained = batch.loss_mask > 0
        engine_lp = batch.old_logprobs
        learner_lp = torch.where(trained, learner_lp.float(), torch.zeros_like(engine_lp))
        delta = (learner_lp - engine_lp)[trained]  # log pi_learner - log pi_engine on sampled tokens
        metrics = {
            "mismatch/mean_abs_logprob_diff": float(delta.abs().mean()) if delta.numel() else 0.0,
            # k3 estimator of KL(engine || learner) on the engine's own samples (non-negative, unbiased)
            "mismatch/kl": float((torch.exp(delta) - 1 - delta).mean()) if delta.numel() else 0.0,
        }
        weights = None
        if self.trainer.tis_cap > 0:
            ratio = torch.exp(torch.where(trained, learner_lp - engine_lp, torch.zeros_like(engine_lp)))
            weights = torch.clamp(ratio, max=self.trainer.tis_cap)
            metrics["mismatch/frac_truncated"] = float((ratio[trained] > self.trainer.tis_cap).float().mean()) \
                if delta.numel() else 0.0
        if self.recompute_old_logprobs:
            batch = replace(batch, old_logprobs=learner_lp)
        return batch, weights, metrics

    @torch.no_grad()
    def token_logprobs(self, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """The learner's log-probs ``[B, T]`` of the batch's trained tokens (0 elsewhere), eval mode, no
        grad: pi_old when recomputing, and what the preflight compares with the engine's (``temperature``
        T: under ``softmax(logits / T)``)."""
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            logps, _ = model_token_logprobs(self.model, batch.input_ids, batch.attention_mask, batch.model_inputs,
                                            False, self.chunk_size, target_mask=batch.loss_mask,
                                            temperature=temperature, pack=self.pack_sequences)
        finally:
            self.model.train(was_training)
        return logps

    def _finish(self, acc: "_Accumulator", batch: Batch, terms: TokenTerms, step: int) -> dict[str, float]:
        with warnings.catch_warnings():  # LambdaLR warns when every optimizer step of the step was skipped
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        totals = self._reduce(acc.totals(batch, terms))
        return acc.metrics(totals, step, self.objective.stage(step), self.optimizer.param_groups[0]["lr"])

    def _reduce(self, totals: dict[str, float]) -> dict[str, float]:
        """The step's token totals over every learner rank (one process: as they are)."""
        return totals

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ----------------------------------------------------------------- helpers
    def _snapshot(self) -> tuple[list[torch.Tensor], dict]:
        """Parameters and optimiser state before a multi-update step (the NaN guard's roll-back point)."""
        return [p.detach().clone() for p in self.params], copy.deepcopy(self.optimizer.state_dict())

    def _restore(self, snapshot: tuple[list[torch.Tensor], dict]) -> None:
        params, opt_state = snapshot
        with torch.no_grad():
            for p, saved in zip(self.params, params):
                p.copy_(saved)
        self.optimizer.load_state_dict(opt_state)

    @torch.no_grad()
    def _entropy(self, batch: Batch, slices: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for idx in slices:
            mb = batch.select(idx)
            _, ent = model_token_logprobs(self.model, mb.input_ids, mb.attention_mask, mb.model_inputs, True,
                                          self.chunk_size, target_mask=mb.loss_mask, pack=self.pack_sequences)
            parts.append(ent)
        return torch.cat(parts, dim=0)

    @property
    def unwrapped(self) -> nn.Module:
        """The bare student (a subclass may wrap ``self.model`` for data parallelism)."""
        return self.model

    def _minibatch_loss(self, plan: StepPlan, idx: torch.Tensor, acc: "_Accumulator",
                        first_epoch: bool) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Student forward on sequences ``idx`` and the objective's loss, stats and token mask.

        The mask is ``plan.select``'s rows or, in a single pass with the entropy rule (``select`` None),
        ranked from this forward's own entropy. Shared by every learner variant (accelerate too).
        """
        mb = plan.batch.select(idx)
        topk = plan.topk
        target_ids = None
        if topk is not None:
            target_ids = torch.cat([mb.input_ids[..., None], topk[0].index_select(0, idx)], dim=-1)
        logp_all, entropy = model_token_logprobs(
            self.model, mb.input_ids, mb.attention_mask, mb.model_inputs, True, self.chunk_size,
            target_ids=target_ids, target_mask=mb.loss_mask,  # the LM head runs on trained tokens only
            pack=self.pack_sequences,
        )
        logp = logp_all[..., 0] if topk is not None else logp_all
        assert entropy is not None
        terms = plan.terms.rows(idx)
        if plan.select is None:
            mask = self.objective.select(plan.step, mb.loss_mask, terms, entropy)
        else:
            mask = plan.select.index_select(0, idx)
        if first_epoch:
            acc.observe_tokens(mb.loss_mask, mask, entropy, terms.clipped, mb.teachers)
        fwd = Forward(
            logprobs=logp.float(),  # mixed precision: the objective is always computed in fp32
            old_logprobs=mb.old_logprobs,
            terms=terms,
            mask=mask,
            student_topk=logp_all[..., 1:].float() if topk is not None else None,
            teacher_topk=topk[1].index_select(0, idx) if topk is not None else None,
            weights=plan.weights.index_select(0, idx) if plan.weights is not None else None,
            token_norm=plan.token_norm,
        )
        loss, stats = self.objective.loss(fwd)
        return loss, stats, mask

    def _minibatch(self, plan: StepPlan, idx: torch.Tensor, acc: "_Accumulator", first_epoch: bool) -> None:
        loss, stats, mask = self._minibatch_loss(plan, idx, acc, first_epoch)
        if not bool(mask.any()):
            acc.skip(empty=True)
            return
        loss.backward()
        max_norm = self.trainer.max_grad_norm if self.trainer.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            acc.update(float(loss.detach()), float(grad_norm), stats)
        else:
            acc.skip(empty=False)
        self.optimizer.zero_grad(set_to_none=True)


def _teacher_topk(batch: Batch, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``k`` teacher top-k ids/log-probs the objective needs (GKD), or None."""
    if not k:
        return None
    assert batch.teacher_topk_ids is not None and batch.teacher_topk_logprobs is not None  # checked in token_terms
    return batch.teacher_topk_ids[..., :k], batch.teacher_topk_logprobs[..., :k]


def _finite_inputs(batch: Batch, terms: TokenTerms) -> bool:
    """Whether every trained token has a finite advantage, old log-prob and (if any) teacher log-prob."""
    trained = batch.loss_mask > 0
    values = [terms.advantages, batch.old_logprobs] + ([batch.teacher_logprobs] if batch.teacher_logprobs is not None else [])
    return all(bool(torch.isfinite(v[trained]).all()) for v in values)


MIN_KEYS = ("reward_min",)  # totals reduced with min over ranks; max for MAX_KEYS; every other total is summed
MAX_KEYS = ("reward_max",)


class _Accumulator:
    """Collects a step's minibatch numbers; ``totals`` are sums (and a min/max) that add over learner ranks,
    so a multi-rank step reduces one dict and reports what one process would on the whole batch."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.stats: dict[str, list[float]] = {}
        self.nonfinite = 0
        self.empty = 0
        self.tokens: dict[str, float] = {"num_tokens": 0.0, "num_selected": 0.0, "num_clipped": 0.0, "entropy_sum": 0.0}

    def observe_tokens(self, loss_mask: torch.Tensor, select: torch.Tensor, entropy: torch.Tensor,
                       clipped: torch.Tensor, teachers: list[str] | None = None) -> None:
        trainable = loss_mask > 0
        counts = {"num_tokens": trainable.sum(-1), "num_selected": select.sum(-1),
                  "num_clipped": (clipped & select).sum(-1)}
        for key, per_row in counts.items():
            self.tokens[key] += float(per_row.sum())
        self.tokens["entropy_sum"] += float((entropy * trainable).sum())
        for row, label in enumerate(teachers or ()):  # the same counts per teacher that scored the row
            for key, per_row in counts.items():
                name = f"teacher/{label}/{key}"
                self.tokens[name] = self.tokens.get(name, 0.0) + float(per_row[row])

    def update(self, loss: float, grad_norm: float, stats: dict[str, float]) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        for k, v in stats.items():
            self.stats.setdefault(k, []).append(v)

    def discard_updates(self) -> None:
        """The step was rolled back: none of its optimiser steps count."""
        self.nonfinite += len(self.losses)
        self.losses.clear()
        self.grad_norms.clear()
        self.stats.clear()

    def skip(self, empty: bool) -> None:
        if empty:
            self.empty += 1
        else:
            self.nonfinite += 1

    def totals(self, batch: Batch, terms: TokenTerms) -> dict[str, float]:
        """This rank's token totals: counts, entropy sum, reward moments and extremes (on trained tokens)."""
        out = dict(self.tokens)
        trainable = batch.loss_mask > 0
        r = terms.reward[trainable].double() if terms.reward is not None else torch.zeros(0, dtype=torch.float64)
        out.update(reward_n=float(r.numel()), reward_sum=float(r.sum()), reward_sumsq=float((r * r).sum()),
                   reward_min=float(r.min()) if r.numel() else math.inf,
                   reward_max=float(r.max()) if r.numel() else -math.inf)
        return out

    def metrics(self, totals: dict[str, float], step: int, stage: int, lr: float) -> dict[str, float]:
        """The step's metrics from (reduced) ``totals`` and this accumulator's losses, norms and stats."""
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
        tok, sel = totals["num_tokens"], totals["num_selected"]
        out = {
            "step": float(step),
            "stage": float(stage),
            "lr": float(lr),
            "loss": mean(self.losses),
            "grad_norm": mean(self.grad_norms),
            "skipped": float(not self.losses),
            "skipped_nonfinite": float(self.nonfinite),
            "skipped_empty": float(self.empty),
            "num_tokens": tok,
            "num_selected": sel,
            "frac_selected": ratio(sel, tok),
            "frac_clipped": ratio(totals["num_clipped"], sel),
            "entropy_mean": ratio(totals["entropy_sum"], tok),
        }
        for k, v in self.stats.items():
            out[k] = mean(v)
        for key in totals:
            if key.startswith("teacher/") and key.endswith("/num_tokens"):
                label = key[len("teacher/"):-len("/num_tokens")]
                t_tok, t_sel = totals[key], totals[f"teacher/{label}/num_selected"]
                out[f"teacher/{label}/frac_selected"] = ratio(t_sel, t_tok)
                out[f"teacher/{label}/frac_clipped"] = ratio(totals[f"teacher/{label}/num_clipped"], t_sel)
        n = totals["reward_n"]
        if n:
            r_mean = totals["reward_sum"] / n
            out.update(reward_mean=r_mean, reward_std=max(totals["reward_sumsq"] / n - r_mean * r_mean, 0.0) ** 0.5,
                       reward_min=totals["reward_min"], reward_max=totals["reward_max"])
        else:
            out.update(reward_mean=0.0, reward_std=0.0, reward_min=0.0, reward_max=0.0)
        return out
