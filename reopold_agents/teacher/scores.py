"""What a teacher adds to a batch, as tensors from the scorer to the loss, and the one place rows are written back.

Every scorer (same tokenizer in-process or served, another tokenizer, a router over several) returns a
``TeacherScores`` for the rows it was given. Pieces of a batch scored separately -- micro-batches,
rows shifted behind a privileged-context prefix, each routed teacher's rows, each Ray
teacher actor's block -- are gathered with ``TeacherScores.put``; the step writes the result into its
``Batch`` once with ``apply_to``. Per-token tensors are target-aligned like ``Batch``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reopold_agents.trajectory import Batch


@dataclass
class TeacherScores:
    """The teacher's side of ``len(loss_mask)`` rows."""

    logprobs: torch.Tensor  # [B, T] float32: log pi_T of each scored token, 0 elsewhere
    loss_mask: torch.Tensor  # [B, T]: the rows' loss mask, narrowed where the teacher could not score a turn
    topk_ids: torch.Tensor | None = None  # [B, T, K] long: the teacher's top-k ids (dense objectives)
    topk_logprobs: torch.Tensor | None = None  # [B, T, K] float32
    labels: list[str] | None = None  # per row: the label of the teacher that scored it
    masked_turns: list[list[str]] = field(default_factory=list)  # per row: why turns were masked
    seconds: dict[str, float] = field(default_factory=dict)  # teacher label -> scoring time

    @classmethod
    def empty(cls, loss_mask: torch.Tensor) -> "TeacherScores":
        """Nothing scored yet for rows with ``loss_mask`` (kept as the starting mask)."""
        mask = loss_mask.detach().cpu().clone()
        return cls(torch.zeros(mask.shape, dtype=torch.float32), mask, masked_turns=[[] for _ in range(mask.shape[0])])

    def __len__(self) -> int:
        return int(self.logprobs.shape[0])

    def put(self, rows: list[int], part: "TeacherScores", shift: list[int] | None = None) -> None:
        """Write ``part`` (row ``i`` of it is row ``rows[i]`` here) into these scores: per-token fields from
        column ``shift[i]`` of ``part`` on (a prefix the teacher alone read), as many columns as both have."""
        if len(part) != len(rows):
            raise RuntimeError(f"a teacher returned {len(part)} rows for {len(rows)}")
        width = self.logprobs.shape[1]
        if part.topk_ids is not None and part.topk_logprobs is not None:
            k = part.topk_ids.shape[-1]
            if self.topk_ids is None or self.topk_logprobs is None:
                self.topk_ids = torch.zeros((*self.logprobs.shape, k), dtype=torch.long)
                self.topk_logprobs = torch.zeros((*self.logprobs.shape, k), dtype=torch.float32)
            if self.topk_ids.shape[-1] != k:
                raise RuntimeError(f"teachers gave top-{k} and top-{self.topk_ids.shape[-1]} in one batch")
        elif self.topk_ids is not None:
            raise RuntimeError("some teachers gave top-k log-probs and others none")
        for i, row in enumerate(rows):
            start = 0 if shift is None else int(shift[i])
            n = min(width, part.logprobs.shape[1] - start)
            cols = slice(start, start + n)
            self.logprobs[row, :n] = part.logprobs[i, cols].detach().float().cpu()
            self.loss_mask[row, :n] = part.loss_mask[i, cols].detach().cpu().to(self.loss_mask.dtype)
            if part.topk_ids is not None and part.topk_logprobs is not None:
                assert self.topk_ids is not None and self.topk_logprobs is not None
                self.topk_ids[row, :n] = part.topk_ids[i, cols].cpu()
                self.topk_logprobs[row, :n] = part.topk_logprobs[i, cols].float().cpu()
            if part.labels is not None:
                if self.labels is None:
                    self.labels = [""] * len(self)
                self.labels[row] = part.labels[i]
            if i < len(part.masked_turns):
                self.masked_turns[row] = list(part.masked_turns[i])
        for label, seconds in part.seconds.items():
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    def apply_to(self, batch: Batch) -> Batch:
        """Write these scores into ``batch`` (the one write-back) and return it."""
        if tuple(self.logprobs.shape) != tuple(batch.loss_mask.shape):
            raise RuntimeError(f"teacher scored {tuple(self.logprobs.shape)} positions for a "
                               f"{tuple(batch.loss_mask.shape)} batch")
        device = batch.loss_mask.device
        batch.loss_mask = self.loss_mask.to(device=device, dtype=batch.loss_mask.dtype)
        batch.teacher_logprobs = torch.where(self.loss_mask > 0, self.logprobs, torch.zeros(())).to(device)
        batch.teacher_topk_ids, batch.teacher_topk_logprobs = self.topk_ids, self.topk_logprobs
        batch.teachers = self.labels
        return batch
