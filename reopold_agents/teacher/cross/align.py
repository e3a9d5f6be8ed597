"""Cross-tokenizer credit: teacher log-probs of one assistant turn, re-expressed on the student's tokens.

When the teacher tokenizes differently, ``log pi_T(y_t | s_t)`` of a *student* token does not exist.
What does exist is the teacher's log-prob of any stretch of text whose two ends are token boundaries
in both tokenizations. So a turn's text is cut into the *coarsest common segments*: cut only at byte
offsets where a student token and a teacher token both end. Within a segment, the teacher's log-prob
is the sum over its teacher tokens (chain rule: that is ``log pi_T(segment | everything before)``) and
the student's is the sum over its student tokens.

Credit rule ("spread"): every student token of a segment gets the same reward, the segment's
log-ratio divided by its number of student tokens::

    reward_t = (log pi_T(seg) - log pi_old(seg)) / n_seg           for each student token t in seg

It is handed to the loss as a teacher-log-prob equivalent ``v_t = log pi_old(y_t) + reward_t`` (the
objective computes ``reward = teacher_logprobs - old_logprobs``). Hence, per turn, exactly
``sum_t reward_t = log pi_T(text) - log pi_old(text)``; when both tokenizations agree every segment is
one token and ``v_t`` is the teacher's own token log-prob (the same-tokenizer path). Spreading rather
than crediting one token keeps every token's reward a real log-ratio (REOPOLD's clipping and entropy
selection see no artificial ``-log pi_old`` rewards on uncredited tokens).

Offsets are *byte* offsets into ``text.encode("utf-8")`` (see ``pieces``): a byte-level token
holding half an emoji and three byte-fallback tokens of one CJK character both have exact spans, and a
cut inside a character is allowed only where both sides cut. Zero-width tokens (special tokens the
decoded text skips) join the segment that starts where they sit. An end-of-turn token (student EOS,
teacher ``<|im_end|>``/``<|eot_id|>``) is given the one virtual byte after the text on both sides, so
it forms its own segment. This module is pure: no tokenizer, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

Span = tuple[int, int]


class AlignmentError(ValueError):
    """Token spans do not tile the same byte range, so no common segmentation exists."""


@dataclass(frozen=True)
class Segment:
    """Bytes ``[start, end)`` of a turn, tokens ``student[0]:student[1]`` and ``teacher[0]:teacher[1]``."""

    start: int
    end: int
    student: tuple[int, int]
    teacher: tuple[int, int]


@dataclass
class TurnCredit:
    """Per student token of one turn: the teacher-log-prob equivalent ``v_t`` and its reward."""

    teacher_logprobs: list[float]  # v_t = student_logprob_t + reward_t
    rewards: list[float]  # reward_t = v_t - student_logprob_t
    segments: list[Segment]


def _check_tiling(spans: list[Span], length: int, who: str) -> None:
    pos = 0
    for i, (a, b) in enumerate(spans):
        if a != pos or b < a:
            raise AlignmentError(f"{who} token {i} spans bytes [{a}, {b}) but the previous token ended at {pos}")
        pos = b
    if pos != length:
        raise AlignmentError(f"{who} tokens cover {pos} bytes, the turn has {length}")


def _assign(spans: list[Span], cuts: list[int]) -> list[tuple[int, int]]:
    """Token index range of every segment between consecutive ``cuts``; zero-width tokens go to the
    segment starting at their position (trailing ones to the last segment)."""
    n_seg = len(cuts) - 1
    ranges: list[list[int]] = [[-1, -1] for _ in range(n_seg)]
    seg = 0
    for i, (a, b) in enumerate(spans):
        while seg < n_seg - 1 and a >= cuts[seg + 1]:
            seg += 1
        if b > cuts[seg + 1]:  # cannot happen for cuts drawn from both sets of ends
            raise AlignmentError(f"token [{a}, {b}) crosses the common boundary {cuts[seg + 1]}")
        if ranges[seg][0] < 0:
            ranges[seg][0] = i
        ranges[seg][1] = i + 1
    for k, (lo, hi) in enumerate(ranges):
        if lo < 0:
            raise AlignmentError(f"segment [{cuts[k]}, {cuts[k + 1]}) has no token")
    return [(lo, hi) for lo, hi in ranges]


def common_segments(student_spans: list[Span], teacher_spans: list[Span], length: int) -> list[Segment]:
    """The coarsest segmentation of bytes ``[0, length)`` whose cuts are token ends on both sides."""
    if not student_spans or not teacher_spans:
        raise AlignmentError("a turn needs at least one student and one teacher token")
    _check_tiling(student_spans, length, "student")
    _check_tiling(teacher_spans, length, "teacher")
    if length == 0:
        return [Segment(0, 0, (0, len(student_spans)), (0, len(teacher_spans)))]
    ends = {b for _, b in student_spans if b > 0} & {b for _, b in teacher_spans if b > 0}
    cuts = [0, *sorted(ends)]
    s_ranges, t_ranges = _assign(student_spans, cuts), _assign(teacher_spans, cuts)
    return [Segment(cuts[k], cuts[k + 1], s_ranges[k], t_ranges[k]) for k in range(len(cuts) - 1)]


def align_turn(
    student_spans: list[Span],
    student_logprobs: list[float],
    teacher_spans: list[Span],
    teacher_logprobs: list[float],
    length: int,
) -> TurnCredit:
    """Credit the teacher's log-probs of one turn to its student tokens (module docstring: "spread").

    ``*_spans`` are consecutive byte spans tiling ``[0, length)`` (``length`` = text bytes, plus one
    when both sides close the turn with an end-of-turn token); ``*_logprobs`` are per token.
    """
    if len(student_spans) != len(student_logprobs) or len(teacher_spans) != len(teacher_logprobs):
        raise AlignmentError(
            f"{len(student_spans)} student spans / {len(student_logprobs)} log-probs, "
            f"{len(teacher_spans)} teacher spans / {len(teacher_logprobs)} log-probs"
        )
    segments = common_segments(student_spans, teacher_spans, length)
    values = [0.0] * len(student_spans)
    rewards = [0.0] * len(student_spans)
    for seg in segments:
        s_lo, s_hi = seg.student
        t_lo, t_hi = seg.teacher
        teacher_sum = sum(teacher_logprobs[t_lo:t_hi])
        if s_hi - s_lo == 1:  # exact, no round trip through the student's log-prob
            values[s_lo] = teacher_sum
            rewards[s_lo] = teacher_sum - student_logprobs[s_lo]
            continue
        share = (teacher_sum - sum(student_logprobs[s_lo:s_hi])) / (s_hi - s_lo)
        for t in range(s_lo, s_hi):
            rewards[t] = share
            values[t] = student_logprobs[t] + share
    return TurnCredit(teacher_logprobs=values, rewards=rewards, segments=segments)
