"""TASKS: the one place that maps a recipe's `task:` to the object that knows how to do it.

Every module (or package) in this folder that defines `TASK` is a task: adding one is adding a file. Shared
mechanisms live in `mechanisms/`; `base.py` holds the interface.
"""

from __future__ import annotations

import importlib
import pkgutil

from llmkit.tasks.base import Task

NOT_TASKS = {"base", "mechanisms"}


def _discover() -> dict[str, Task]:
    found: dict[str, Task] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name in NOT_TASKS or module.name.startswith("_"):
            continue
        task = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
        if isinstance(task, Task):
            found[task.name] = task
    return found


TASKS: dict[str, Task] = _discover()
