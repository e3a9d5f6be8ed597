"""Progress bars for the held-out evaluations, shown only where the evaluation runs in the caller's process.

Why: before step 1 a run measures the student and the teacher on ``trainer.heldout_tasks`` episodes each;
with 256 tasks that is minutes with nothing on screen. The run (``reopold_agents/run.py``) says whether it
shows progress with ``shown(...)``, a context variable rather than an argument threaded through the
backends: the roles read it where they evaluate. A role in a Ray actor runs in another process, where the
variable keeps its default (off), so an actor never draws a bar the driver could not show anyway.

``shown(True)`` draws a bar of its own; ``shown(progress)`` with a live ``rich.progress.Progress`` (the
training bar) adds the evaluation as a row of that display instead (rich allows one live display).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import TYPE_CHECKING, Callable, Iterator, Union

if TYPE_CHECKING:
    from rich.progress import Progress

Advance = Callable[[int], None]  # called with the number of tasks just finished
Host = Union[bool, "Progress"]  # False: no bars; True: a bar of its own; a Progress: a row of that display

_HOST: ContextVar[Host] = ContextVar("reopold_eval_progress", default=False)


@contextlib.contextmanager
def shown(host: Host) -> Iterator[None]:
    """Evaluations run inside this block show progress as ``host`` says (off outside any block)."""
    token = _HOST.set(host)
    try:
        yield
    finally:
        _HOST.reset(token)


def new_progress() -> "Progress":
    """A rich Progress with the run's columns: description, bar, done/total, an ``info`` field, times.
    Every task added to it needs an ``info`` field (a string, may be empty)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn())


@contextlib.contextmanager
def eval_bar(label: str, total: int) -> Iterator[Advance | None]:
    """A bar ``label`` over ``total`` tasks while the block runs, if this context shows progress; yields
    its advance function, or None when nothing is shown."""
    host = _HOST.get()
    if host is False or total <= 0:
        yield None
        return
    if host is True:
        with new_progress() as own:
            task = own.add_task(label, total=total, info="")
            yield lambda n: own.update(task, advance=n)
        return
    task = host.add_task(label, total=total, info="")
    try:
        yield lambda n: host.update(task, advance=n)
    finally:
        host.remove_task(task)
