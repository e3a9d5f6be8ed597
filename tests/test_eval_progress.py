"""Held-out evaluation progress (reopold_agents/evaluation/progress.py): bars only inside ``shown``, one
advance per evaluated batch, a row of the training display during training."""

from __future__ import annotations

from dataclasses import dataclass

from reopold_agents.evaluation.heldout import HeldoutSet, greedy_success
from reopold_agents.evaluation.progress import eval_bar, new_progress, shown
from reopold_agents.run import _Bar


@dataclass
class _Episode:
    success: bool


class _Rollout:
    """Stands in for a Rollout: task i succeeds when i is even; records each batch it ran."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def run(self, prompts, sampling):
        ids = [p["options"]["task_index"] for p in prompts]
        self.batches.append(ids)
        return [_Episode(i % 2 == 0) for i in ids]

    def close(self) -> None:
        pass


def test_greedy_success_reports_each_batch():
    advanced: list[int] = []
    rollout = _Rollout()
    assert greedy_success(rollout, range(5), max_new_tokens=4, batch_size=2, progress=advanced.append) == 3 / 5
    assert advanced == [2, 2, 1] and rollout.batches == [[0, 1], [2, 3], [4]]


def test_no_bar_outside_shown():
    with eval_bar("held-out", 4) as advance:
        assert advance is None
    with shown(False), eval_bar("held-out", 4) as advance:
        assert advance is None


def test_shown_bar_counts_the_tasks():
    held = HeldoutSet(_Rollout(), num_tasks=5, max_new_tokens=4, batch_size=2)  # type: ignore[arg-type]
    with shown(True):
        assert held.success_shown("held-out teacher") == 3 / 5


def test_a_bar_during_training_is_a_row_of_the_training_display():
    progress = new_progress()  # not started: nothing is drawn
    train = progress.add_task("train", total=3, info="")
    with shown(progress), eval_bar("held-out student (step 1)", 4) as advance:
        assert advance is not None
        advance(3)
        rows = {t.description: t for t in progress.tasks}
        assert rows["held-out student (step 1)"].completed == 3 and rows["train"].id == train
    assert [t.description for t in progress.tasks] == ["train"]  # the row goes when the evaluation ends


def test_training_bar_hosts_evaluations_only_when_enabled():
    with _Bar(False, 3, 0) as bar:
        assert bar.host is False
    with _Bar(True, 3, 0) as bar:
        assert bar.host is not False
        bar.update({"rollout/success": 0.5, "teacher/log_ratio/mean": -0.25})
        task = bar.host.tasks[0]
        assert task.completed == 1 and task.fields["info"] == "success 0.50 log-ratio -0.25"
