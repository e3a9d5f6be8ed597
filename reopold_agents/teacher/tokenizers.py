"""Whether the teacher can read the student's token ids: the same vocabulary and special tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer
else:
    Tokenizer = object


class TokenizerMismatchError(ValueError):
    """Student and teacher tokenizers differ, so the teacher cannot score the student's token ids."""


def check_same_tokenizer(student: Tokenizer, teacher: Tokenizer) -> None:
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
