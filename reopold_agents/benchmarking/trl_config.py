"""The TRL trainer settings the benchmarks against TRL share (vs_trl, vs_trl_learning): our optimiser on TRL's side."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def trl_args(cls: type[T], outdir: str, batch: int, **overrides: Any) -> T:
    """A TRL config (``GKDConfig``/``DistillationConfig``) with our optimiser: torch AdamW, constant lr
    (1e-5 unless ``learning_rate`` is overridden), grad-norm clip 1.0, no weight decay, fp32 on CPU, no
    logging or checkpoints; ``overrides`` replace any of these."""
    base: dict[str, Any] = dict(
        output_dir=outdir, per_device_train_batch_size=batch, gradient_accumulation_steps=1, learning_rate=1e-5,
        max_grad_norm=1.0, optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        report_to="none", logging_strategy="no", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        disable_dropout=True, dataloader_num_workers=0, seed=0,
    )
    return cls(**{**base, **overrides})
