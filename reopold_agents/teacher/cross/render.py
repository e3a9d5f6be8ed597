"""The teacher's view of a student conversation: rendered with the TEACHER's chat template and tokenizer.

A cross-tokenizer teacher cannot read the student's ids, so it reads the conversation (messages and
tool schemas, as the env produced them) the way it would read its own: rendered by its own template.
The assistant turns must stay the student's exact text, and we must know which teacher tokens spell
each of them. Both come from one extra render in which every assistant content is replaced by a unique
sentinel: the text between sentinels is the template's own scaffolding (system prompt, tool schemas,
tool results, ``<|im_end|>``, the next ``<|im_start|>assistant``). The real render is then walked
chunk by chunk; a turn whose text the template reproduces verbatim is *aligned*, one it changed
(trimmed whitespace, stripped reasoning, ...) is kept as the template wrote it (later turns still see
the right context) but reported and masked.

The teacher's ids are built piece by piece -- scaffolding and each assistant text tokenized on their
own -- exactly as the student's rollout builds its ids (``reopold_agents.chat``): a teacher token never
straddles the start or the end of the student's text, and the text is tokenized as the teacher would
have generated it after its own generation prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reopold_agents.teacher.cross.pieces import TokenPieces, byte_spans, pieces_of_text

_SENTINEL = "\u2063reopold-assistant-turn-{}\u2063"  # invisible separators: no template rewrites them


@dataclass
class TeacherTurn:
    """Where one assistant turn's text sits in the teacher's ids; ``problem`` non-empty = masked."""

    text_start: int  # index (in TeacherView.ids) of the first token of the turn's text
    text_spans: list[tuple[int, int]]  # byte spans of those tokens in the text
    end_index: int | None  # index of the teacher's end-of-turn token (a special token right after)
    problem: str = ""

    @property
    def num_text_tokens(self) -> int:
        return len(self.text_spans)


@dataclass
class TeacherView:
    """Teacher token ids of a whole conversation and its assistant turns, in order."""

    ids: list[int]
    turns: list[TeacherTurn] = field(default_factory=list)


def _render(tokenizer: Any, messages: list[dict], tools: list[dict] | None, kwargs: dict) -> str:
    text = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=False, **kwargs)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def assistant_text(message: dict) -> str:
    """An assistant message's content as text (envs write strings; text parts are joined)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p["text"] for p in content)
    raise ValueError(f"assistant content must be text for cross-tokenizer scoring, got {type(content).__name__}")


def _scaffolding(tokenizer: Any, messages: list[dict], tools: list[dict] | None, kwargs: dict, turns: list[int]) -> list[str]:
    """The template's text around the assistant contents: chunk k precedes turn k, the last one follows."""
    marked = [dict(m) for m in messages]
    for k, i in enumerate(turns):
        marked[i]["content"] = _SENTINEL.format(k)
    rest = _render(tokenizer, marked, tools, kwargs)
    chunks = []
    for k in range(len(turns)):
        mark = _SENTINEL.format(k)
        if rest.count(mark) != 1:
            raise ValueError(f"the teacher's chat template renders assistant turn {k} {rest.count(mark)} times (expected once)")
        head, rest = rest.split(mark)
        chunks.append(head)
    chunks.append(rest)
    return chunks


def render_teacher_view(
    tokenizer: Any,
    messages: list[dict],
    tools: list[dict] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    pieces: TokenPieces | None = None,
) -> TeacherView:
    """Teacher ids of ``messages`` (rendered by ``tokenizer``'s template) and each assistant turn's place.

    Raises ValueError only when the template cannot be used at all (it drops or repeats assistant
    turns, or renders scaffolding that differs between the two renders); single unalignable turns are
    reported in ``TeacherTurn.problem`` instead.
    """
    kwargs = dict(template_kwargs or {})
    pieces = pieces or TokenPieces(tokenizer)
    turn_index = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    texts = [assistant_text(messages[i]) for i in turn_index]
    chunks = _scaffolding(tokenizer, messages, tools, kwargs, turn_index)
    full = _render(tokenizer, messages, tools, kwargs)
    if not full.startswith(chunks[0]):
        raise ValueError("the teacher's chat template renders the conversation before the first assistant turn differently")

    def tokenize(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    ids = tokenize(chunks[0])
    pos = len(chunks[0])
    view = TeacherView(ids=ids)
    for k, text in enumerate(texts):
        after = chunks[k + 1]
        last = k == len(texts) - 1
        if full.startswith(text + after, pos) and (not last or pos + len(text) + len(after) == len(full)):
            region, problem = text, ""
        else:
            end = len(full) - len(after) if last else full.find(after, pos)
            if end < pos or (last and not full.endswith(after)):
                raise ValueError(f"cannot find the template text after assistant turn {k} in the teacher's render")
            region = full[pos:end]
            problem = f"the teacher's chat template changed the assistant text of turn {k} ({len(text)} -> {len(region)} chars)"
        text_ids = tokenize(region)
        spans: list[tuple[int, int]] = []
        if not problem:
            text_pieces = pieces_of_text(pieces, pieces.pieces(text_ids), text)
            if text_pieces is None:
                problem = f"the teacher's tokens of turn {k} do not spell its text (the tokenizer normalizes it)"
            else:
                spans = byte_spans(text_pieces)
        after_ids = tokenize(after)
        text_start = len(ids)
        ids.extend(text_ids)
        end_index = len(ids) if after_ids and after_ids[0] in pieces.special_ids else None
        ids.extend(after_ids)
        view.turns.append(TeacherTurn(text_start=text_start, text_spans=spans, end_index=end_index, problem=problem))
        pos += len(region) + len(after)
    return view
