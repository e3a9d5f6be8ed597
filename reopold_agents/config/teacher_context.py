"""``model.teacher_context`` templates, checked at start-up against the task fields they may name.

The privileged-context teacher (``reopold_agents.teacher``) formats the template with ``str.format``
once per scored episode, from the task record: ``{answer}`` (the task's answer), ``{question}`` (the
first user turn's text) and ``{id}`` (the task id). ``str.format`` also accepts format specs
(``{answer:>10}``, ``{answer:{question}}``), conversions (``{answer!r}``), attribute access and
indexing (``{answer.x}``, ``{answer[0]}``): these depend on the value's type and crash (or reach into
the value's attributes) at the first scoring, long after the models loaded. Only plain fields pass.
"""

from __future__ import annotations

from string import Formatter

# the names ``reopold_agents.teacher.Teacher._context_ids`` fills from the task record
TEACHER_CONTEXT_FIELDS = ("answer", "question", "id")
_HINT = "use plain {answer}, {question} or {id} (write {{ and }} for literal braces)"


def check_teacher_context(template: str) -> None:
    """Raise ValueError('teacher_context: why') naming the first field that is not a plain task field."""
    try:
        parts = list(Formatter().parse(template))
    except ValueError as exc:  # an unmatched '{' or '}', a '!' without a conversion
        raise ValueError(f"teacher_context: {template!r} is not a valid template ({exc}); {_HINT}") from None
    for _, name, spec, conversion in parts:
        if name is None:  # literal text only
            continue
        field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in TEACHER_CONTEXT_FIELDS:
            why = ("attribute access and indexing are not allowed" if name.partition(".")[0].partition("[")[0]
                   in TEACHER_CONTEXT_FIELDS else "not a task field")
            raise ValueError(f"teacher_context: field {field}: {why}; {_HINT}")
        if conversion:
            raise ValueError(f"teacher_context: field {field}: conversions (!{conversion}) are not allowed; {_HINT}")
        if spec:
            raise ValueError(f"teacher_context: field {field}: format specs (:{spec}) are not allowed; {_HINT}")
