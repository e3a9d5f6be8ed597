"""One optimisation step of the student over a Batch of scored trajectories.

``Learner.step(batch, step)``: token advantages once per batch (teacher reward / outcome), the stage's
selection rule (reopold_agents.schedule), then ``ppo_epochs`` x ``num_minibatches`` optimizer steps of
student forward (memory-lean log-probs + entropy), surrogate loss, backward, grad clipping. A step
whose loss or gradient norm is NaN/inf is skipped (no parameter change) and reported in the metrics,
so one bad batch cannot poison the weights.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from reopold_agents.config.algo import AlgoConfig
from reopold_agents.config.trainer import TrainerConfig
from reopold_agents.logprobs import model_token_logprobs
from reopold_agents.models import freeze_vision_tower
from reopold_agents.losses import batch_advantages, objective_loss, selection_mask
from reopold_agents.losses.objective import TokenAdvantages
from reopold_agents.schedule import StageSchedule
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


class Learner:
    """Owns the optimizer and LR scheduler of ``model``; ``step`` returns a flat metrics dict."""

    def __init__(self, model: nn.Module, algo: AlgoConfig, trainer: TrainerConfig) -> None:
        algo.check()
        trainer.check()
        self.model = model
        self.algo = algo
        self.trainer = trainer
        if trainer.freeze_vision:
            freeze_vision_tower(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=trainer.lr, betas=tuple(trainer.betas), eps=trainer.eps, weight_decay=trainer.weight_decay
        )
        self.lr_lambda = LRLambda(trainer.warmup_steps, trainer.total_steps, trainer.lr_schedule, trainer.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)
        self.schedule = StageSchedule.from_config(algo, trainer.total_steps)

    # ------------------------------------------------------------------ public
    def step(self, batch: Batch, step: int) -> dict[str, float]:
        """One learner step over ``batch`` at 0-based training ``step`` (sets the stage rule)."""
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        rule = self.schedule.rule_at(step)
        adv = batch_advantages(self.algo, batch)
        topk = self._teacher_topk(batch)
        bsz = batch.input_ids.shape[0]
        if self.trainer.num_minibatches > bsz:
            raise ValueError(f"trainer.num_minibatches={self.trainer.num_minibatches} exceeds the batch size {bsz}")
        slices = list(torch.arange(bsz, device=device).tensor_split(self.trainer.num_minibatches))
        single_pass = self.trainer.ppo_epochs == 1 and len(slices) == 1
        # The selection mask is fixed for the whole step: the entropy rule ranks the batch's tokens by the
        # pre-update student entropy (a no-grad pass first when the batch is reused several times).
        select = None
        if rule != "entropy":
            select = selection_mask(self.algo, rule, batch.loss_mask, None, adv)
        elif not single_pass:
            select = selection_mask(self.algo, rule, batch.loss_mask, self._entropy(batch, slices), adv)

        was_training = self.model.training
        self.model.train()
        acc = _Accumulator()
        try:
            for epoch in range(self.trainer.ppo_epochs):
                for idx in slices:
                    self._minibatch(batch, idx, adv, topk, rule, select, acc, first_epoch=epoch == 0)
        finally:
            self.model.train(was_training)
        with warnings.catch_warnings():  # LambdaLR warns when every optimizer step of the step was skipped
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        return acc.metrics(batch, adv, step, self.schedule.stage_at(step), self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ----------------------------------------------------------------- helpers
    def _teacher_topk(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.algo.name != "gkd":
            return None
        if batch.teacher_topk_ids is None or batch.teacher_topk_logprobs is None:
            raise ValueError("algo 'gkd' needs batch.teacher_topk_ids/teacher_topk_logprobs (teacher top-k scoring)")
        k = self.algo.gkd_topk
        if batch.teacher_topk_ids.shape[-1] < k:
            raise ValueError(f"algo.gkd_topk={k} but the batch carries only {batch.teacher_topk_ids.shape[-1]} ids")
        return batch.teacher_topk_ids[..., :k], batch.teacher_topk_logprobs[..., :k]

    @torch.no_grad()
    def _entropy(self, batch: Batch, slices: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for idx in slices:
            mb = _sub_batch(batch, idx, self.model)
            _, ent = model_token_logprobs(
                self.model, mb.input_ids, mb.attention_mask, mb.model_inputs, True, self.trainer.logprob_chunk_size,
                target_mask=mb.loss_mask,
            )
            parts.append(ent)
        return torch.cat(parts, dim=0)

    @property
    def unwrapped(self) -> nn.Module:
        """The bare student (a subclass may wrap ``self.model`` for data parallelism)."""
        return self.model

    def _minibatch_loss(
        self,
        batch: Batch,
        idx: torch.Tensor,
        adv: TokenAdvantages,
        topk: tuple[torch.Tensor, torch.Tensor] | None,
        rule: str,
        select: torch.Tensor | None,
        acc: "_Accumulator",
        first_epoch: bool,
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Student forward on sequences ``idx`` and the objective's loss, stats and selection mask.

        The mask is ``select``'s rows, or, in a single pass with the entropy rule (``select`` None),
        ranked from this forward's own entropy. Shared by every learner variant (accelerate too).
        """
        mb = _sub_batch(batch, idx, self.unwrapped)
        target_ids = None
        if topk is not None:
            target_ids = torch.cat([mb.input_ids[..., None], topk[0].index_select(0, idx)], dim=-1)
        logp_all, entropy = model_token_logprobs(
            self.model, mb.input_ids, mb.attention_mask, mb.model_inputs, True, self.trainer.logprob_chunk_size,
            target_ids=target_ids, target_mask=mb.loss_mask,  # the LM head runs on trained tokens only
        )
        logp = logp_all[..., 0] if topk is not None else logp_all
        assert entropy is not None
        if select is None:
            mask = selection_mask(self.algo, rule, mb.loss_mask, entropy, adv)
        else:
            mask = select.index_select(0, idx)
        if first_epoch:
            acc.observe_tokens(mb.loss_mask, mask, entropy, adv.clipped.index_select(0, idx))
        loss, stats = objective_loss(
            self.algo,
            logp.float(),  # mixed precision: the objective is always computed in fp32
            mb.old_logprobs,
            adv.advantages.index_select(0, idx),
            mask,
            student_topk=logp_all[..., 1:].float() if topk is not None else None,
            teacher_topk=topk[1].index_select(0, idx) if topk is not None else None,
        )
        return loss, stats, mask

    def _minibatch(
        self,
        batch: Batch,
        idx: torch.Tensor,
        adv: TokenAdvantages,
        topk: tuple[torch.Tensor, torch.Tensor] | None,
        rule: str,
        select: torch.Tensor | None,
        acc: "_Accumulator",
        first_epoch: bool,
    ) -> None:
        loss, stats, mask = self._minibatch_loss(batch, idx, adv, topk, rule, select, acc, first_epoch)
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


class _Accumulator:
    """Averages per-minibatch numbers into the step's metrics."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.stats: dict[str, list[float]] = {}
        self.nonfinite = 0
        self.empty = 0
        self.trainable = 0
        self.selected = 0
        self.clipped = 0
        self.entropy_sum = 0.0

    def observe_tokens(self, loss_mask, select, entropy, clipped) -> None:
        trainable = loss_mask > 0
        self.trainable += int(trainable.sum())
        self.selected += int(select.sum())
        self.clipped += int((clipped & select).sum())
        self.entropy_sum += float((entropy * trainable).sum())

    def update(self, loss: float, grad_norm: float, stats: dict[str, float]) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        for k, v in stats.items():
            self.stats.setdefault(k, []).append(v)

    def skip(self, empty: bool) -> None:
        if empty:
            self.empty += 1
        else:
            self.nonfinite += 1

    def metrics(self, batch: Batch, adv: TokenAdvantages, step: int, stage: int, lr: float) -> dict[str, float]:
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        trainable = batch.loss_mask > 0
        out = {
            "step": float(step),
            "stage": float(stage),
            "lr": float(lr),
            "loss": mean(self.losses),
            "grad_norm": mean(self.grad_norms),
            "skipped": float(not self.losses),
            "skipped_nonfinite": float(self.nonfinite),
            "skipped_empty": float(self.empty),
            "num_tokens": float(self.trainable),
            "num_selected": float(self.selected),
            "frac_selected": self.selected / self.trainable if self.trainable else 0.0,
            "frac_clipped": self.clipped / self.selected if self.selected else 0.0,
            "entropy_mean": self.entropy_sum / self.trainable if self.trainable else 0.0,
        }
        for k, v in self.stats.items():
            out[k] = mean(v)
        if adv.reward is not None and bool(trainable.any()):
            r = adv.reward[trainable]
            out.update(
                reward_mean=float(r.mean()),
                reward_std=float(r.std(correction=0)),
                reward_min=float(r.min()),
                reward_max=float(r.max()),
            )
        else:
            out.update(reward_mean=0.0, reward_std=0.0, reward_min=0.0, reward_max=0.0)
        return out


def _sub_batch(batch: Batch, idx: torch.Tensor, model: nn.Module) -> Batch:
    """Rows ``idx`` of ``batch``; multimodal inputs are split per image (Qwen-VL: one grid row per image)."""
    if idx.numel() == batch.input_ids.shape[0]:
        return batch
    sel = lambda t: t.index_select(0, idx) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return Batch(
        input_ids=sel(batch.input_ids),
        attention_mask=sel(batch.attention_mask),
        loss_mask=sel(batch.loss_mask),
        old_logprobs=sel(batch.old_logprobs),
        teacher_logprobs=sel(batch.teacher_logprobs),
        rewards=sel(batch.rewards),
        group_ids=sel(batch.group_ids),
        model_inputs=_split_model_inputs(batch, idx, model),
        teacher_topk_ids=sel(batch.teacher_topk_ids),
        teacher_topk_logprobs=sel(batch.teacher_topk_logprobs),
    )


def _split_model_inputs(batch: Batch, idx: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    """Select the images of sequences ``idx`` from Qwen-VL style ``pixel_values``/``image_grid_thw``."""
    mi = batch.model_inputs
    if not mi:
        return {}
    per_row = {"mm_token_type_ids"}  # [B, T] like input_ids
    unknown = set(mi) - {"pixel_values", "image_grid_thw"} - per_row
    start_id = getattr(getattr(model, "config", None), "vision_start_token_id", None)
    if unknown or "image_grid_thw" not in mi or start_id is None:
        raise NotImplementedError(
            f"cannot split model_inputs {sorted(mi)} into minibatches; use trainer.num_minibatches=1"
        )
    grid = mi["image_grid_thw"]
    per_seq = ((batch.input_ids == start_id) & batch.attention_mask.bool()).sum(dim=1).tolist()
    if sum(per_seq) != grid.shape[0]:
        raise ValueError(f"{sum(per_seq)} <|vision_start|> tokens but {grid.shape[0]} image grids")
    patches = grid.prod(dim=1).tolist()
    img_start = [0]
    for n in per_seq:
        img_start.append(img_start[-1] + n)
    patch_start = [0]
    for p in patches:
        patch_start.append(patch_start[-1] + p)
    imgs = [i for b in idx.tolist() for i in range(img_start[b], img_start[b + 1])]
    out = {k: mi[k].index_select(0, idx) for k in per_row if k in mi}
    if not imgs:
        return out
    rows = [r for i in imgs for r in range(patch_start[i], patch_start[i + 1])]
    dev = grid.device
    out["image_grid_thw"] = grid.index_select(0, torch.tensor(imgs, device=dev))
    out["pixel_values"] = mi["pixel_values"].index_select(0, torch.tensor(rows, device=dev))
    return out
