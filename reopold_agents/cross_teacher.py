"""Cross-tokenizer teacher scoring: fills ``Trajectory.teacher_logprobs`` when the teacher tokenizes differently.

Per trajectory: the teacher reads the conversation under its own chat template (``teacher_render``),
one forward pass gives its log-prob of every token of every assistant text (and of its end-of-turn
token), and ``cross_tokenizer.align_turn`` re-expresses them on the student's tokens so that per turn
``sum(teacher_logprobs - rollout_logprobs) == log pi_T(text) - log pi_old(text)`` exactly.

What is scored: only the assistant text the student generated, plus its closing EOS when the student
generated one (credited with the teacher's own end-of-turn token). Prompts, tool schemas and tool/env
text are context only. A turn that cannot be aligned (the teacher's template changed its text, the
student's ids do not spell the text the env received, e.g. a sampled half of a UTF-8 character) is
*masked*: its tokens get ``loss_mask`` 0 and reward 0 (teacher_logprobs = rollout_logprobs), and the
reason is listed in ``Trajectory.info["cross_tokenizer_masked"]``. Never silently mis-scored.

Not supported here (raise): GKD top-k (the teacher's top-k ids live in another vocabulary) and images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reopold_agents.cross_tokenizer import AlignmentError, align_turn
from reopold_agents.teacher_render import TeacherView, assistant_text, render_teacher_view
from reopold_agents.token_pieces import TokenPieces, byte_spans, pieces_of_text
from reopold_agents.trajectory import Trajectory

MASKED_KEY = "cross_tokenizer_masked"


@dataclass
class Conversation:
    """What the teacher renders: the env's whole conversation (final observation) and its tool schemas."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


@dataclass
class StudentTurn:
    """One assistant turn's generated tokens: their trajectory positions and whether it ended with EOS."""

    positions: list[int]
    ids: list[int]
    closed: bool


def student_turns(traj: Trajectory, eos_id: int) -> list[StudentTurn]:
    """Split a trajectory's generated tokens into turns (``Trajectory.turns[k]["num_generated"]``)."""
    generated = [i for i, m in enumerate(traj.loss_mask) if m]
    counts = [int(t["num_generated"]) for t in traj.turns]
    if sum(counts) != len(generated):
        raise ValueError(f"trajectory turns account for {sum(counts)} generated tokens, loss_mask has {len(generated)}")
    out, pos = [], 0
    for n in counts:
        positions = generated[pos : pos + n]
        ids = [traj.token_ids[i] for i in positions]
        out.append(StudentTurn(positions=positions, ids=ids, closed=bool(ids) and ids[-1] == eos_id))
        pos += n
    return out


class CrossTokenizerTeacher:
    """A teacher whose tokenizer differs from the student's, scoring in-process (an HF causal LM)."""

    def __init__(
        self,
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        model: torch.nn.Module,
        template_kwargs: dict[str, Any] | None = None,
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

    def score(self, trajectories: list[Trajectory], conversations: list[Conversation]) -> list[Trajectory]:
        """Fill ``teacher_logprobs`` of every trajectory in place (masking unalignable turns); return them."""
        if len(trajectories) != len(conversations):
            raise ValueError(f"{len(trajectories)} trajectories but {len(conversations)} conversations")
        for conv in conversations:
            if any(isinstance(m.get("content"), list) and any(p.get("type") == "image" for p in m["content"]) for m in conv.messages):
                raise ValueError("cross-tokenizer scoring of conversations with images is not supported")
        views = [render_teacher_view(self.tokenizer, c.messages, c.tools, self.template_kwargs, self.teacher_pieces) for c in conversations]
        logprobs = self._teacher_logprobs(views)
        for traj, conv, view, lps in zip(trajectories, conversations, views, logprobs):
            self._credit(traj, conv, view, lps)
        return trajectories

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

    def _credit(self, traj: Trajectory, conv: Conversation, view: TeacherView, teacher_lps: list[float]) -> None:
        turns = student_turns(traj, self.student_tokenizer.eos_token_id)
        texts = [assistant_text(m) for m in conv.messages if m.get("role") == "assistant"]
        if len(texts) != len(turns):
            raise ValueError(f"the conversation has {len(texts)} assistant turns, the trajectory {len(turns)}")
        values = [0.0] * len(traj)
        problems: list[str] = []
        for k, (st, text, tt) in enumerate(zip(turns, texts, view.turns)):
            problem = tt.problem or self._credit_turn(traj, st, text, tt, teacher_lps, values)
            if problem:
                problems.append(f"turn {k}: {problem}")
                for i in st.positions:
                    traj.loss_mask[i] = 0
                    values[i] = traj.rollout_logprobs[i]
        traj.teacher_logprobs = values
        traj.info[MASKED_KEY] = problems

    def _credit_turn(self, traj: Trajectory, st: StudentTurn, text: str, tt: Any, teacher_lps: list[float], values: list[float]) -> str:
        """Write the turn's credited values into ``values``; return a problem (masks the turn) or ""."""
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
        s_lps = [traj.rollout_logprobs[i] for i in st.positions]
        try:
            credit = align_turn(s_spans, s_lps, t_spans, t_lps, length)
        except AlignmentError as e:
            return f"alignment failed: {e}"
        for i, v in zip(st.positions, credit.teacher_logprobs):
            values[i] = v
        return ""
