"""Cross-tokenizer teacher scoring: log pi_T of the student's tokens when the teacher tokenizes differently.

Per row: the teacher reads the conversation under its own chat template (``render``), one forward pass
gives its log-prob of every token of every assistant text (and of its end-of-turn token), and
``align.align_turn`` re-expresses them on the student's tokens so that per turn
``sum(teacher_logprobs - rollout_logprobs) == log pi_T(text) - log pi_old(text)`` exactly.

What is scored: only the assistant text the student generated, plus its closing EOS when the student
generated one (credited with the teacher's own end-of-turn token). Prompts, tool schemas and tool/env
text are context only. A turn that cannot be aligned (the teacher's template changed its text, the
student's ids do not spell the text the env received, e.g. a sampled half of a UTF-8 character) is
*masked*: its tokens leave the loss mask, and the reason is listed in ``TeacherScores.masked_turns``.
Never silently mis-scored.

Not supported here (raise): top-k objectives (the teacher's top-k ids live in another vocabulary) and images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reopold_agents.teacher.cross.align import AlignmentError, align_turn
from reopold_agents.teacher.cross.pieces import TokenPieces, byte_spans, pieces_of_text
from reopold_agents.teacher.cross.render import TeacherTurn, TeacherView, assistant_text, render_teacher_view
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.teacher.tokenizers import Tokenizer
from reopold_agents.trajectory import Batch, Conversation


@dataclass
class StudentTurn:
    """One assistant turn's generated tokens: their row positions and whether it ended with EOS."""

    positions: list[int]
    ids: list[int]
    closed: bool


@dataclass
class StudentRow:
    """One batch row as the student wrote it: ids, which of them it generated, their rollout log-probs."""

    ids: list[int]
    generated: list[int]  # positions of the student's tokens
    rollout_logprobs: list[float]

    @classmethod
    def of(cls, batch: Batch, row: int) -> "StudentRow":
        n = int(batch.lengths()[row])
        mask = batch.loss_mask[row, :n].tolist()
        return cls(batch.input_ids[row, :n].tolist(), [i for i, m in enumerate(mask) if m],
                   batch.old_logprobs[row, :n].double().tolist())


def student_turns(row: StudentRow, turn_lengths: list[int], eos_id: int) -> list[StudentTurn]:
    """Split a row's generated tokens into its assistant turns (``Conversation.turn_lengths``)."""
    if sum(turn_lengths) != len(row.generated):
        raise ValueError(f"the row's turns account for {sum(turn_lengths)} generated tokens, its loss mask has "
                         f"{len(row.generated)}")
    out, pos = [], 0
    for n in turn_lengths:
        positions = row.generated[pos : pos + n]
        ids = [row.ids[i] for i in positions]
        out.append(StudentTurn(positions=positions, ids=ids, closed=bool(ids) and ids[-1] == eos_id))
        pos += n
    return out


class CrossTokenizerTeacher:
    """A teacher whose tokenizer differs from the student's, scoring in-process (an HF causal LM)."""

    def __init__(
        self,
        student_tokenizer: Tokenizer,
        teacher_tokenizer: Tokenizer,
        model: torch.nn.Module,
        template_kwargs: dict[str, object] | None = None,
        chunk_size: int = 1024,
        batch_size: int = 8,
    ) -> None:
        if chunk_size < 1 or batch_size < 1:
            raise ValueError(f"chunk_size and batch_size must be >= 1, got {chunk_size}/{batch_size}")
        self.student_tokenizer = student_tokenizer
        self.tokenizer = teacher_tokenizer
        self.model = model
        self.template_kwargs = dict(template_kwargs or {})
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.student_pieces = TokenPieces(student_tokenizer)
        self.teacher_pieces = TokenPieces(teacher_tokenizer)

    def score(self, batch: Batch) -> TeacherScores:
        """The teacher's log-probs credited to each row's student tokens; unalignable turns leave the loss mask."""
        conversations = batch.conversations
        if conversations is None or len(conversations) != len(batch):
            raise ValueError("cross-tokenizer scoring needs each row's conversation (Batch.conversations)")
        if batch.model_inputs:
            raise ValueError("cross-tokenizer scoring of conversations with images is not supported")
        for conv in conversations:
            if any(isinstance(m.get("content"), list) and any(p.get("type") == "image" for p in m["content"]) for m in conv.messages):
                raise ValueError("cross-tokenizer scoring of conversations with images is not supported")
        views = [render_teacher_view(self.tokenizer, c.messages, c.tools, self.template_kwargs, self.teacher_pieces) for c in conversations]
        logprobs = self._teacher_logprobs(views)
        scores = TeacherScores.empty(batch.loss_mask)
        for row, (conv, view, lps) in enumerate(zip(conversations, views, logprobs)):
            self._credit(scores, row, StudentRow.of(batch, row), conv, view, lps)
        scores.loss_mask[:, 0] = 0  # as collate: the first token is never a target
        return scores

    @torch.no_grad()
    def _teacher_logprobs(self, views: list[TeacherView]) -> list[list[float]]:
        """Teacher log-prob of every scored position of every view (text tokens and end tokens)."""
        from reopold_agents.logprobs import model_token_logprobs

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[list[float]] = [[] for _ in views]
        order = sorted(range(len(views)), key=lambda i: len(views[i].ids))
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                length = max(len(views[i].ids) for i in chunk)
                ids = torch.full((len(chunk), length), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                used = torch.zeros((len(chunk), length), dtype=torch.float32)
                for row, i in enumerate(chunk):
                    v = views[i]
                    ids[row, : len(v.ids)] = torch.tensor(v.ids)
                    mask[row, : len(v.ids)] = 1
                    for turn in v.turns:
                        used[row, turn.text_start : turn.text_start + turn.num_text_tokens] = 1
                        if turn.end_index is not None:
                            used[row, turn.end_index] = 1
                used[:, 0] = 0
                lp, _ = model_token_logprobs(
                    self.model, ids.to(device), mask.to(device), chunk_size=self.chunk_size, target_mask=used.to(device)
                )
                lp = lp.double().cpu()
                for row, i in enumerate(chunk):
                    out[i] = lp[row, : len(views[i].ids)].tolist()
        finally:
            self.model.train(was_training)
        return out

    def _credit(self, scores: TeacherScores, row: int, student: StudentRow, conv: Conversation, view: TeacherView,
                teacher_lps: list[float]) -> None:
        """Write row ``row``'s credited teacher log-probs into ``scores``; mask (and list) turns that fail."""
        turns = student_turns(student, conv.turn_lengths, self.student_tokenizer.eos_token_id)
        texts = [assistant_text(m) for m in conv.messages if m.get("role") == "assistant"]
        if len(texts) != len(turns):
            raise ValueError(f"the conversation has {len(texts)} assistant turns, the row {len(turns)}")
        problems: list[str] = []
        for k, (st, text, tt) in enumerate(zip(turns, texts, view.turns)):
            values: dict[int, float] = {}
            problem = tt.problem or self._credit_turn(student, st, text, tt, teacher_lps, values)
            if problem:
                problems.append(f"turn {k}: {problem}")
                scores.loss_mask[row, st.positions] = 0
                continue
            for i, v in values.items():
                scores.logprobs[row, i] = v
        scores.masked_turns[row] = problems

    def _credit_turn(self, student: StudentRow, st: StudentTurn, text: str, tt: TeacherTurn, teacher_lps: list[float],
                     values: dict[int, float]) -> str:
        """Put the turn's credited values into ``values`` (position -> log-prob); return a problem (masks the turn) or ""."""
        if not st.ids:
            return ""
        content = st.ids[:-1] if st.closed else st.ids
        pieces = pieces_of_text(self.student_pieces, self.student_pieces.pieces(content, skip_special=True), text)
        if pieces is None:
            return "the student's tokens do not spell the text the env received (e.g. an incomplete UTF-8 character)"
        length = len(text.encode("utf-8"))
        s_spans = byte_spans(pieces)
        t_spans = list(tt.text_spans)
        t_lps = teacher_lps[tt.text_start : tt.text_start + tt.num_text_tokens]
        if st.closed:
            if tt.end_index is None:
                return "the student closed the turn but the teacher's template has no end-of-turn token after it"
            s_spans.append((length, length + 1))
            t_spans.append((length, length + 1))
            t_lps = [*t_lps, teacher_lps[tt.end_index]]
            length += 1
        if not t_spans:
            return "the teacher has no tokens for a non-empty turn"
        s_lps = [student.rollout_logprobs[i] for i in st.positions]
        try:
            credit = align_turn(s_spans, s_lps, t_spans, t_lps, length)
        except AlignmentError as e:
            return f"alignment failed: {e}"
        for i, v in zip(st.positions, credit.teacher_logprobs):
            values[i] = v
        return ""
