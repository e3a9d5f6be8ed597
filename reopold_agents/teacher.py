"""Teacher scoring: log pi_T of every token the student wrote, on the student's exact ids and images.

With the student's tokenizer (``check_same_tokenizer``) the teacher never sees text: it is handed the
batch's token ids (and the same processed images), so the token reward
``log pi_T(y_t|s_t) - log pi_old(y_t|s_t)`` compares the two models on identical states. With another
tokenizer, ``build_teacher`` returns the cross-tokenizer scorer instead (docs/cross_tokenizer.md): the
teacher renders the conversation itself and its scores are aligned to the student's tokens.

Two back ends behind one class: an in-process HF model (forward in micro-batches, sampled-token
log-probs gathered chunk by chunk by ``model_token_logprobs``, no [tokens x vocab] fp32 tensor) or any
``Scorer`` (an ``Engine`` with ``score``: vLLM prompt log-probs on GPU, or a remote vLLM server over
HTTP, ``reopold_agents.engines.http_teacher``).
"""

from __future__ import annotations

from typing import Any

import torch

from reopold_agents.engines.base import GenerationRequest, Scorer
from reopold_agents.trajectory import Batch, Trajectory


class TokenizerMismatchError(ValueError):
    """Student and teacher tokenizers differ, so the teacher cannot score the student's token ids."""


def check_same_tokenizer(student: Any, teacher: Any) -> None:
    """Raise TokenizerMismatchError naming the first differences in vocabulary or special tokens."""
    problems: list[str] = []
    sv, tv = student.get_vocab(), teacher.get_vocab()
    if len(sv) != len(tv):
        problems.append(f"vocabulary sizes differ (student {len(sv)}, teacher {len(tv)})")
    diff = [tok for tok, i in sv.items() if tv.get(tok) != i]
    if diff:
        shown = ", ".join(f"{t!r}: {sv[t]} vs {tv.get(t)}" for t in sorted(diff, key=sv.get)[:5])
        problems.append(f"{len(diff)} tokens map to different ids (student vs teacher: {shown})")
    for attr in ("eos_token", "pad_token", "bos_token"):
        a, b = getattr(student, attr, None), getattr(teacher, attr, None)
        if a != b:
            problems.append(f"{attr} differs ({a!r} vs {b!r})")
    sa, ta = set(student.all_special_tokens), set(teacher.all_special_tokens)
    if sa != ta:
        problems.append(f"special tokens differ (only student: {sorted(sa - ta)[:5]}, only teacher: {sorted(ta - sa)[:5]})")
    if problems:
        raise TokenizerMismatchError(
            "student and teacher tokenizers differ, so the teacher cannot score the student's ids: "
            + "; ".join(problems)
        )


class Teacher:
    """Fills ``Batch.teacher_logprobs`` (0.0 on env tokens) and, with ``top_k``, the GKD top-k fields."""

    def __init__(
        self,
        tokenizer: Any,
        model: torch.nn.Module | None = None,
        engine: Scorer | None = None,
        chunk_size: int = 1024,
        batch_size: int = 8,
        top_k: int = 0,
        context: str | None = None,
    ) -> None:
        if (model is None) == (engine is None):
            raise ValueError("Teacher needs exactly one of model (in-process) or engine (e.g. vLLM)")
        if engine is not None and top_k:
            raise ValueError("teacher top-k (GKD) needs the in-process teacher (model.teacher_engine=hf)")
        if chunk_size < 1 or batch_size < 1 or top_k < 0:
            raise ValueError(f"chunk_size/batch_size must be >= 1 and top_k >= 0, got {chunk_size}/{batch_size}/{top_k}")
        self.tokenizer = tokenizer
        self.model = model
        self.engine = engine
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.top_k = top_k
        self.context = context  # privileged context: a system turn before the conversation (self-distillation)

    def score(self, batch: Batch, trajectories: list[Trajectory] | None = None) -> Batch:
        """Fill ``batch.teacher_logprobs`` (and, with ``top_k``, the top-k fields) in place; return it.
        The same tokenizer scores the batch's ids directly; with a privileged ``context`` the teacher reads
        a system turn formatted from each row's task record (``trajectories``) in front of them."""
        if self.context is not None:
            return self._score_with_context(batch, trajectories)
        return self._score_ids(batch)

    def _score_ids(self, batch: Batch) -> Batch:
        """The batch's own ids, scored in length-sorted micro-batches (HF) or by the engine."""
        lengths = batch.lengths()
        if bool((lengths == 0).any()):
            raise ValueError(f"batch rows {(lengths == 0).nonzero().flatten().tolist()} are empty")
        if self.engine is not None:
            self._score_engine(batch)
            return batch
        bsz, length = batch.input_ids.shape
        teacher_lp = torch.zeros((bsz, length), dtype=torch.float32)
        top_lp = top_ids = None  # [B, T, k], allocated once k is known (top_k past the vocabulary means all of it)
        order = torch.argsort(lengths.cpu(), stable=True)  # similar lengths together: less padding
        for start in range(0, bsz, self.batch_size):
            idx = order[start : start + self.batch_size]
            n = int(lengths[idx].max())
            part = self._score_hf(batch.select(idx).truncate(n))
            teacher_lp[idx, :n] = part[0]
            if part[1] is not None and part[2] is not None:
                if top_lp is None or top_ids is None:
                    k = part[1].shape[-1]
                    top_lp = torch.zeros((bsz, length, k), dtype=torch.float32)
                    top_ids = torch.zeros((bsz, length, k), dtype=torch.long)
                top_lp[idx, :n], top_ids[idx, :n] = part[1], part[2]
        batch.teacher_logprobs = teacher_lp.to(batch.loss_mask.device)
        batch.teacher_topk_logprobs, batch.teacher_topk_ids = top_lp, top_ids
        return batch

    def _score_with_context(self, batch: Batch, trajectories: list[Trajectory] | None) -> Batch:
        """Score ``batch`` with a context turn prepended to every row, then shift the scores back: the
        student's tokens keep their own ids, only the teacher's view of the state gains the context."""
        if trajectories is None or len(trajectories) != len(batch):
            raise ValueError("a teacher context needs the batch's trajectories (their task records)")
        if batch.model_inputs:
            raise ValueError("model.teacher_context is not supported with images")
        prefixes = [self._context_ids(t) for t in trajectories]
        lengths = batch.lengths().tolist()
        rows = [p + batch.input_ids[b, :n].tolist() for b, (p, n) in enumerate(zip(prefixes, lengths))]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        attention = torch.zeros_like(ids)
        mask = torch.zeros((len(rows), width), dtype=batch.loss_mask.dtype)
        for b, (row, p, n) in enumerate(zip(rows, prefixes, lengths)):
            ids[b, : len(row)] = torch.tensor(row)
            attention[b, : len(row)] = 1
            mask[b, len(p) : len(p) + n] = batch.loss_mask[b, :n].cpu()
        zeros = torch.zeros_like(mask)
        view = Batch(input_ids=ids, attention_mask=attention, loss_mask=mask, old_logprobs=zeros, teacher_logprobs=None,
                     rewards=batch.rewards, group_ids=batch.group_ids)
        self._score_ids(view)
        assert view.teacher_logprobs is not None
        teacher_lp = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for b, (p, n) in enumerate(zip(prefixes, lengths)):
            teacher_lp[b, :n] = view.teacher_logprobs[b, len(p) : len(p) + n]
        batch.teacher_logprobs = teacher_lp.to(batch.loss_mask.device)
        if view.teacher_topk_ids is not None and view.teacher_topk_logprobs is not None:
            k = view.teacher_topk_ids.shape[-1]
            batch.teacher_topk_ids = torch.zeros((*batch.input_ids.shape, k), dtype=torch.long)
            batch.teacher_topk_logprobs = torch.zeros((*batch.input_ids.shape, k), dtype=torch.float32)
            for b, (p, n) in enumerate(zip(prefixes, lengths)):
                batch.teacher_topk_ids[b, :n] = view.teacher_topk_ids[b, len(p) : len(p) + n]
                batch.teacher_topk_logprobs[b, :n] = view.teacher_topk_logprobs[b, len(p) : len(p) + n]
        return batch

    def _context_ids(self, traj: Trajectory) -> list[int]:
        """The context turn's ids: a system message formatted from the episode's task record."""
        assert self.context is not None
        question = next((m.get("content") for m in traj.messages if m.get("role") == "user"), "")
        text = self.context.format(answer=traj.info.get("answer", ""), id=traj.info.get("task_id", ""),
                                   question=question if isinstance(question, str) else "")
        rendered = self.tokenizer.apply_chat_template([{"role": "system", "content": text}], tokenize=False,
                                                      add_generation_prompt=False)
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def _score_engine(self, batch: Batch) -> None:
        lengths = batch.lengths().tolist()
        requests = [
            GenerationRequest(batch.input_ids[b, :n].tolist(), images=list(batch.images[b]) if batch.images else [],
                              model_inputs=_row_model_inputs(batch, b))
            for b, n in enumerate(lengths)
        ]
        teacher_lp = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for b, (n, lps) in enumerate(zip(lengths, self.engine.score(requests))):  # type: ignore[union-attr]
            if len(lps) != n:
                raise ValueError(f"engine scored {len(lps)} positions for a {n}-token row")
            teacher_lp[b, :n] = torch.tensor([float(x) for x in lps], dtype=torch.float32)
        batch.teacher_logprobs = torch.where(batch.loss_mask.cpu() > 0, teacher_lp, torch.zeros(()))

    @torch.no_grad()
    def _score_hf(self, part: Batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Sampled-token log-probs (and top-k) of one micro-batch, 0 off the student's tokens, on CPU."""
        from reopold_agents.logprobs import model_token_logprobs, model_topk_logprobs

        model = self.model
        assert model is not None
        device = next(model.parameters()).device
        part = part.to(device)
        used = part.loss_mask
        keep = used.cpu()
        was_training = model.training
        model.eval()
        try:
            # Only the student's tokens are scored: the LM head skips prompts and tool outputs.
            logps, _ = model_token_logprobs(model, part.input_ids, part.attention_mask, model_inputs=part.model_inputs,
                                            chunk_size=self.chunk_size, target_mask=used)
            logps = torch.where(keep > 0, logps.float().cpu(), torch.zeros(()))
            top_lp = top_ids = None
            if self.top_k:
                top_lp, top_ids = model_topk_logprobs(model, part.input_ids, part.attention_mask, self.top_k,
                                                      model_inputs=part.model_inputs, chunk_size=self.chunk_size,
                                                      target_mask=used)
                top_lp = torch.where(keep[..., None] > 0, top_lp.float().cpu(), torch.zeros(()))
                top_ids = top_ids.cpu() * keep[..., None].long()
        finally:
            model.train(was_training)
        return logps, top_lp, top_ids


def _row_model_inputs(batch: Batch, b: int) -> dict[str, torch.Tensor]:
    """Row ``b``'s model inputs (its images' grids and patches) for a per-sequence engine request."""
    if not batch.model_inputs:
        return {}
    one = batch.select(torch.tensor([b]))
    return {k: v for k, v in one.model_inputs.items() if k != "mm_token_type_ids"}


class CrossTokenizerScorer:
    """A teacher with another tokenizer (``reopold_agents/cross_teacher.py``): it reads each episode's
    conversation under its own chat template and its log-probs of the student's assistant text are
    aligned to the student's tokens; turns that cannot be aligned are masked (``loss_mask`` 0 in the
    batch) and listed in ``Trajectory.info["cross_tokenizer_masked"]``. Writes into the same Batch."""

    def __init__(self, student_tokenizer: Any, teacher_tokenizer: Any, model: torch.nn.Module,
                 chunk_size: int = 1024, batch_size: int = 8) -> None:
        from reopold_agents.cross_teacher import CrossTokenizerTeacher

        self.cross = CrossTokenizerTeacher(student_tokenizer, teacher_tokenizer, model, chunk_size=chunk_size,
                                           batch_size=batch_size)

    def score(self, batch: Batch, trajectories: list[Trajectory] | None = None) -> Batch:
        from reopold_agents.cross_teacher import Conversation

        if trajectories is None or len(trajectories) != len(batch):
            raise ValueError("cross-tokenizer scoring needs the batch's trajectories (their conversations)")
        self.cross.score(trajectories, [Conversation(t.messages, t.tools) for t in trajectories])
        teacher_lp = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        loss_mask = torch.zeros(batch.loss_mask.shape, dtype=batch.loss_mask.dtype)
        for row, traj in enumerate(trajectories):
            n = len(traj)
            loss_mask[row, :n] = torch.tensor(traj.loss_mask, dtype=loss_mask.dtype)
            teacher_lp[row, :n] = torch.tensor(traj.teacher_logprobs, dtype=torch.float32)
        loss_mask[:, 0] = 0  # as collate: the first token is never a target
        batch.loss_mask = loss_mask.to(batch.loss_mask.device)
        batch.teacher_logprobs = torch.where(loss_mask > 0, teacher_lp, torch.zeros(())).to(batch.loss_mask.device)
        return batch


def build_teacher(model_cfg: Any, student_tokenizer: Any, top_k: int = 0,
                  engine_cfg: Any = None) -> "Teacher | CrossTokenizerScorer":
    """Load the teacher named by ``model_cfg.teacher`` behind ``model_cfg.teacher_engine``. With the
    student's tokenizer it scores the student's ids; with another one (detected, no flag) it is the
    cross-tokenizer scorer (in-process HF only). ``top_k`` > 0 also fills the GKD top-k fields (``algo.gkd_topk``)."""
    if model_cfg.teacher_context is not None and model_cfg.teacher_engine != "hf":
        raise ValueError("model.teacher_context needs the in-process teacher (model.teacher_engine=hf)")
    if model_cfg.teacher_engine == "http":
        from reopold_agents.engines.http_teacher import build_http_teacher

        return build_http_teacher(model_cfg, student_tokenizer, top_k=top_k)
    if model_cfg.teacher_engine == "vllm":
        from dataclasses import replace

        from reopold_agents.engines import make_engine
        from reopold_agents.models import load_tokenizer_and_processor

        if engine_cfg is None:
            raise ValueError("model.teacher_engine=vllm needs the engine config (vLLM settings)")
        tok, processor, path = load_tokenizer_and_processor(model_cfg.teacher, "teacher")
        check_same_tokenizer(student_tokenizer, tok)
        if path is None:
            raise ValueError(f"teacher {model_cfg.teacher!r} has no saved weights for vLLM to load; train/save it first")
        engine = make_engine(replace(engine_cfg, name="vllm"), model=None, tokenizer=tok, processor=processor, model_path=path)
        return Teacher(tok, engine=engine, chunk_size=model_cfg.logprob_chunk_size, batch_size=model_cfg.teacher_batch_size)
    from reopold_agents.models import load_teacher

    loaded = load_teacher(model_cfg)
    try:
        check_same_tokenizer(student_tokenizer, loaded.tokenizer)
    except TokenizerMismatchError:
        if model_cfg.teacher_context is not None:
            raise ValueError("model.teacher_context needs a teacher with the student's tokenizer") from None
        if top_k:
            raise ValueError("the teacher's tokenizer differs from the student's: a top-k objective (gkd, dense_kl) "
                             "cannot compare distributions over two vocabularies; use reopold/opd") from None
        return CrossTokenizerScorer(student_tokenizer, loaded.tokenizer, loaded.model,
                                    chunk_size=model_cfg.logprob_chunk_size, batch_size=model_cfg.teacher_batch_size)
    return Teacher(
        loaded.tokenizer,
        model=loaded.model,
        chunk_size=model_cfg.logprob_chunk_size,
        batch_size=model_cfg.teacher_batch_size,
        top_k=top_k,
        context=model_cfg.teacher_context,
    )
