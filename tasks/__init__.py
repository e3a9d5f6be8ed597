"""Task sources: seeded synthetic generators (offline) and loaders of benchmark files.

``load_tasks("synthetic:math", size=100)``, ``load_tasks("gsm8k_test.jsonl")``,
``load_tasks("mathvista_dir", split="testmini")`` all return a sequence of `Task` records.
"""

from tasks.loaders import TaskLoadError, last_boxed, load_tasks, row_to_task
from tasks.record import ANSWER_TYPES, Task
from tasks.synthetic import SyntheticTasks, generate

__all__ = ["ANSWER_TYPES", "SyntheticTasks", "Task", "TaskLoadError", "generate", "last_boxed", "load_tasks", "row_to_task"]
