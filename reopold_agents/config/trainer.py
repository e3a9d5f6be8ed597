"""Config section `trainer`: the learner's optimisation keys and the run loop's keys.

Learner keys (read by reopold_agents/learner.py): lr, weight_decay, betas, eps, max_grad_norm,
warmup_steps, lr_schedule, min_lr_ratio, ppo_epochs, num_minibatches, freeze_vision,
total_steps.
Run-loop keys (read by the run CLI, reopold_agents/run.py): total_steps, prompts_per_step, group_size,
seed, output_dir, save_every, keep_checkpoints, keep_best, resume, log_every, eval_every, heldout_tasks,
heldout_cache, eval_teacher, max_skipped_steps (reopold_agents/step.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainerConfig:
    # optimiser (AdamW) and LR schedule
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping (the norm is still measured and logged)
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many learner steps
    lr_schedule: str = "constant"  # after warm-up: constant | cosine | linear decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.0
    # PPO-style reuse of one rollout batch
    ppo_epochs: int = 1  # passes over the batch per learner step
    num_minibatches: int = 1  # optimizer steps per epoch (the batch split along sequences)
    # engine/learner mismatch (vLLM, bf16): pi_old recomputed by the learner before the update (None: when
    # engine.name is not hf), and a truncated importance weight min(pi_old / pi_engine, C) on the loss (0: off)
    recompute_old_logprobs: Optional[bool] = None
    tis_cap: float = 0.0
    freeze_vision: bool = True  # VL students: the image encoder gets no updates (text models: no effect)
    # run loop
    total_steps: int = 100  # learner steps; also sets the stage switch (algo.stage_switch) and LR decay
    prompts_per_step: int = 8  # distinct prompts per rollout batch
    group_size: int = 4  # rollouts per prompt (GRPO groups share a group_id)
    seed: int = 0
    output_dir: str = "outputs/run"
    save_every: int = 50  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # newest N checkpoints kept
    # also keep checkpoints/best: the checkpoint of the best held-out success of the evaluations after step 0,
    # outside the keep_checkpoints rotation (an evaluation that sets a new best saves its step if not saved)
    keep_best: bool = False
    resume: bool = False  # continue from latest_checkpoint(output_dir/checkpoints)
    log_every: int = 1
    eval_every: int = 0  # 0 disables periodic evaluation
    heldout_tasks: int = 64  # size of the fixed held-out success set (greedy, measured at every evaluation)
    # the JSON file remembering held-out successes that cannot change (the teacher's, the initial student's at
    # step 0; evaluation/heldout_cache.py); runs naming one file share it. None: heldout_success.json in output_dir
    heldout_cache: Optional[str] = None
    eval_teacher: bool = True  # also measure the teacher on it once (the "gap closed" target); not for mix/http
    # stop the run after this many steps in a row skipped for non-finite inputs (NaN/inf teacher scores,
    # log-probs, rewards, loss); each skipped step is logged as a warning. 0: never stop
    max_skipped_steps: int = 3

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: need two values in [0, 1), got {list(self.betas)}")
        if self.eps <= 0:
            raise ValueError(f"eps: must be > 0, got {self.eps}")
        if self.tis_cap < 0:
            raise ValueError(f"tis_cap: must be >= 0 (0: off), got {self.tis_cap}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm: must be >= 0, got {self.max_grad_norm}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: {self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: must lie in [0, 1], got {self.min_lr_ratio}")
        for key in ("ppo_epochs", "num_minibatches", "total_steps", "prompts_per_step",
                    "group_size", "keep_checkpoints", "log_every", "heldout_tasks"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "save_every", "eval_every", "max_skipped_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
