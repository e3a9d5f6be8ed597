"""The ``tasks`` sources no longer import their loader (the cycle every project module is checked for in
tests/test_architecture.py), and every task source raises the one ``TaskLoadError`` (``tasks.errors``),
however it is imported."""

from __future__ import annotations

from test_architecture import _imports, _modules


def test_task_sources_do_not_import_the_loader():
    modules = _modules()
    for source in ("tasks.bfcl", "tasks.reasoning_gym_tasks"):
        assert "tasks.loaders" not in _imports(modules[source], set(modules)), source
    assert {"tasks.bfcl", "tasks.reasoning_gym_tasks"} <= _imports(modules["tasks.loaders"], set(modules))


def test_one_task_load_error_for_every_source():
    import tasks
    import tasks.bfcl
    import tasks.loaders
    import tasks.reasoning_gym_tasks
    from tasks.errors import TaskLoadError

    for mod in (tasks, tasks.loaders, tasks.bfcl, tasks.reasoning_gym_tasks):
        assert mod.TaskLoadError is TaskLoadError, mod.__name__
