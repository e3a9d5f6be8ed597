"""Teacher scoring with the student's tokenizer: log pi_T of every token the student wrote, on its exact ids.

The teacher never sees text: it is handed the batch's token ids (and the same processed images), so the
token reward ``log pi_T(y_t|s_t) - log pi_old(y_t|s_t)`` compares the two models on identical states.
Two back ends behind one class: an in-process HF model (forward in micro-batches that keep a prompt's
samples together, each packed padding-free unless ``model.pack_sequences=false``, sampled-token log-probs
gathered chunk by chunk by ``model_token_logprobs``, no [tokens x vocab] fp32 tensor) or any ``Scorer``
(vLLM prompt log-probs on GPU, or a served teacher over HTTP, ``reopold_agents.teacher.http``). With a
privileged ``context`` the teacher reads a system turn
formatted from each row's task record in front of the student's ids (self-distillation).
"""

from __future__ import annotations

import torch

from reopold_agents.engines.base import GenerationRequest, Scorer, TopKRow, TopKScorer
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.teacher.tokenizers import Tokenizer
from reopold_agents.trajectory import Batch, Conversation


class Teacher:
    """Scores the student's ids; with ``top_k`` also the teacher's top-k ids and log-probs at each position."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        model: torch.nn.Module | None = None,
        engine: Scorer | None = None,
        chunk_size: int = 1024,
        batch_size: int = 8,
        top_k: int = 0,
        context: str | None = None,
        processor: object | None = None,
        pack: bool = True,
    ) -> None:
        if (model is None) == (engine is None):
            raise ValueError("Teacher needs exactly one of model (in-process) or engine (e.g. vLLM)")
        if engine is not None and top_k and not isinstance(engine, TopKScorer):
            raise ValueError(f"the teacher's top-k (algo gkd, dense_kl, reopold_topk) needs the in-process teacher "
                             f"(model.teacher_engine=hf) or a served vLLM teacher (model.teacher_engine=http); "
                             f"{type(engine).__name__} has no score_topk")
        if chunk_size < 1 or batch_size < 1 or top_k < 0:
            raise ValueError(f"chunk_size/batch_size must be >= 1 and top_k >= 0, got {chunk_size}/{batch_size}/{top_k}")
        self.tokenizer = tokenizer
        self.model = model
        self.engine = engine
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.top_k = top_k
        self.context = context  # privileged context: a system turn before the conversation (self-distillation)
        self.processor = processor  # a VL teacher's processor (its held-out evaluation generates with it)
        self.pack = pack  # in-process forwards padding-free (model.pack_sequences, docs/run.md)

    def score(self, batch: Batch) -> TeacherScores:
        """The teacher's scores of ``batch``'s student tokens (0 on env tokens)."""
        if self.context is not None:
            return self._score_with_context(batch)
        return self._score_ids(batch)

    def _score_ids(self, batch: Batch) -> TeacherScores:
        """The batch's own ids, scored in micro-batches that keep each prompt's samples together (HF) or by
        the engine."""
        lengths = batch.lengths()
        if bool((lengths == 0).any()):
            raise ValueError(f"batch rows {(lengths == 0).nonzero().flatten().tolist()} are empty")
        if self.engine is not None:
            return self._score_engine(batch)
        scores = TeacherScores.empty(batch.loss_mask)
        for rows in micro_batches(lengths.tolist(), batch.group_ids.tolist(), self.batch_size):
            idx = torch.tensor(rows)
            n = int(lengths[idx].max())
            scores.put(rows, self._score_hf(batch.select(idx).truncate(n)))
        return scores

    def _score_with_context(self, batch: Batch) -> TeacherScores:
        """Score ``batch`` with a context turn prepended to every row, then shift the scores back: the
        student's tokens keep their own ids, only the teacher's view of the state gains the context."""
        if batch.conversations is None or len(batch.conversations) != len(batch):
            raise ValueError("a teacher context needs each row's conversation (its task record)")
        if batch.model_inputs:
            raise ValueError("model.teacher_context is not supported with images")
        prefixes = [self._context_ids(c) for c in batch.conversations]
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
        scores = TeacherScores.empty(batch.loss_mask)
        scores.put(list(range(len(batch))), self._score_ids(view), shift=[len(p) for p in prefixes])
        return scores

    def _context_ids(self, conversation: Conversation) -> list[int]:
        """The context turn's ids: a system message formatted from the row's task record."""
        assert self.context is not None
        question = next((m.get("content") for m in conversation.messages if m.get("role") == "user"), "")
        text = self.context.format(answer=conversation.answer, id=conversation.task_id,
                                   question=question if isinstance(question, str) else "")
        rendered = self.tokenizer.apply_chat_template([{"role": "system", "content": text}], tokenize=False,
                                                      add_generation_prompt=False)
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def _score_engine(self, batch: Batch) -> TeacherScores:
        assert self.engine is not None
        lengths = batch.lengths().tolist()
        requests = [
            GenerationRequest(batch.input_ids[b, :n].tolist(), images=list(batch.images[b]) if batch.images else [],
                              model_inputs=_row_model_inputs(batch, b))
            for b, n in enumerate(lengths)
        ]
        scores = TeacherScores.empty(batch.loss_mask)
        rows: list[TopKRow] | list[list[float]]
        if self.top_k:
            assert isinstance(self.engine, TopKScorer)
            rows = self.engine.score_topk(requests, self.top_k)
            scores.topk_ids = torch.zeros((*scores.logprobs.shape, self.top_k), dtype=torch.long)
            scores.topk_logprobs = torch.zeros((*scores.logprobs.shape, self.top_k), dtype=torch.float32)
        else:
            rows = self.engine.score(requests)
        if len(rows) != len(requests):
            raise ValueError(f"engine scored {len(rows)} rows for {len(requests)}")
        for b, (n, row) in enumerate(zip(lengths, rows)):
            lps = row.logprobs if isinstance(row, TopKRow) else row
            if len(lps) != n:
                raise ValueError(f"engine scored {len(lps)} positions for a {n}-token row")
            scores.logprobs[b, :n] = torch.tensor([float(x) for x in lps], dtype=torch.float32)
            if isinstance(row, TopKRow) and scores.topk_ids is not None and scores.topk_logprobs is not None:
                if row.k != self.top_k:
                    raise ValueError(f"engine gave a top-{row.k} for top_k={self.top_k}")
                scores.topk_ids[b, :n] = torch.tensor(row.topk_ids, dtype=torch.long)
                scores.topk_logprobs[b, :n] = torch.tensor(row.topk_logprobs, dtype=torch.float32)
        keep = scores.loss_mask
        scores.logprobs = torch.where(keep > 0, scores.logprobs, torch.zeros(()))
        if scores.topk_ids is not None and scores.topk_logprobs is not None:  # as _score_hf: 0 off student tokens
            scores.topk_logprobs = torch.where(keep[..., None] > 0, scores.topk_logprobs, torch.zeros(()))
            scores.topk_ids = scores.topk_ids * keep[..., None].long()
        return scores

    @torch.no_grad()
    def _score_hf(self, part: Batch) -> TeacherScores:
        """Sampled-token log-probs (and top-k) of one micro-batch, 0 off the student's tokens, on CPU."""
        from reopold_agents.logprobs import model_token_and_topk_logprobs, model_token_logprobs

        model = self.model
        assert model is not None
        device = next(model.parameters()).device
        part = part.to(device)
        used = part.loss_mask
        keep = used.cpu()
        was_training = model.training
        model.eval()
        try:
            # Only the student's tokens are scored: the LM head skips prompts and tool outputs. With top-k
            # both come from one pass of the body.
            if self.top_k:
                logps, top_lp, top_ids = model_token_and_topk_logprobs(
                    model, part.input_ids, part.attention_mask, self.top_k, model_inputs=part.model_inputs,
                    chunk_size=self.chunk_size, target_mask=used, pack=self.pack)
            else:
                logps, _ = model_token_logprobs(model, part.input_ids, part.attention_mask,
                                                model_inputs=part.model_inputs, chunk_size=self.chunk_size,
                                                target_mask=used, pack=self.pack)
            out = TeacherScores(torch.where(keep > 0, logps.float().cpu(), torch.zeros(())), keep)
            if self.top_k:
                out.topk_logprobs = torch.where(keep[..., None] > 0, top_lp.float().cpu(), torch.zeros(()))
                out.topk_ids = top_ids.cpu() * keep[..., None].long()
        finally:
            model.train(was_training)
        return out


def micro_batches(lengths: list[int], group_ids: list[int], batch_size: int) -> list[list[int]]:
    """Rows in micro-batches of at most ``batch_size``, a group's rows (one prompt's samples) kept together.

    A forward reads a prompt shared by several rows once (``logprobs._row_groups``) only if those rows are
    in the same forward, so a group is never split unless it alone exceeds ``batch_size`` (then into full
    micro-batches of it). Groups come shortest first and each group's rows shortest first: similar lengths
    stay together (less padding when ``model.pack_sequences=false``)."""
    groups: dict[int, list[int]] = {}
    for row, gid in enumerate(group_ids):
        groups.setdefault(gid, []).append(row)
    ordered = sorted(groups.values(), key=lambda rows: (max(lengths[r] for r in rows), rows[0]))
    out: list[list[int]] = []
    current: list[int] = []
    for rows in ordered:
        rows = sorted(rows, key=lambda r: (lengths[r], r))
        if current and len(current) + len(rows) > batch_size:
            out.append(current)
            current = []
        while len(rows) > batch_size:
            out.append(rows[:batch_size])
            rows = rows[batch_size:]
        current += rows
    if current:
        out.append(current)
    return out


def _row_model_inputs(batch: Batch, b: int) -> dict[str, torch.Tensor]:
    """Row ``b``'s model inputs (its images' grids and patches) for a per-sequence engine request."""
    if not batch.model_inputs:
        return {}
    one = batch.select(torch.tensor([b]))
    return {k: v for k, v in one.model_inputs.items() if k != "mm_token_type_ids"}
