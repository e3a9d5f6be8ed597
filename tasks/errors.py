"""The error every task source raises (file loaders, BFCL, reasoning-gym), in a module of its own so that the
sources import it without importing ``tasks.loaders``, which dispatches to them."""

from __future__ import annotations


class TaskLoadError(ValueError):
    """A task file is missing, unreadable or has rows that do not map onto `Task`."""
