"""GKD-style supervised KL between student and teacher on the teacher's top-k support.

Both distributions are renormalised over the k ids the teacher kept at each position (a proper
distribution on that support; the mass outside it is unknown to the learner). ``reverse`` is
KL(student || teacher) = sum_k p_S (log p_S - log p_T), mode-seeking; ``forward`` is
KL(teacher || student), mass-covering. Gradients flow through the student's log-probs.
"""

from __future__ import annotations

import torch


def topk_kl(student_topk: torch.Tensor, teacher_topk: torch.Tensor, direction: str = "reverse") -> torch.Tensor:
    """Per-position KL ``[...]`` from log-probs ``[..., K]`` of the same K ids under each model."""
    if student_topk.shape != teacher_topk.shape:
        raise ValueError(f"student {tuple(student_topk.shape)} and teacher {tuple(teacher_topk.shape)} top-k differ")
    log_s = torch.log_softmax(student_topk.float(), dim=-1)
    log_t = torch.log_softmax(teacher_topk.float().detach(), dim=-1)
    if direction == "reverse":
        return (log_s.exp() * (log_s - log_t)).sum(dim=-1)
    if direction == "forward":
        return (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    raise ValueError(f"unknown KL direction {direction!r} (reverse | forward)")
