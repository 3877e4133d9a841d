"""Task registry: tasks register themselves by name; nothing else switches on task names."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tunelab.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from tunelab.tasks.base import Task

_TASKS: dict[str, type["Task"]] = {}
# Built-in task modules, imported lazily on first lookup (keeps `import tunelab` light).
_BUILTIN_MODULES = ("sft", "summarize", "classify", "preference")


def register_task(cls: type["Task"]) -> type["Task"]:
    """Class decorator: make a Task subclass available under `cls.name`."""
    _TASKS[cls.name] = cls
    return cls


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"tunelab.tasks.{module}")


def get_task(name: str) -> type["Task"]:
    if name not in _TASKS:
        _load_builtins()
    if name not in _TASKS:
        raise UserError(f"unknown task `{name}`{did_you_mean(name, _TASKS)}; available: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def available_tasks() -> dict[str, type["Task"]]:
    _load_builtins()
    return dict(sorted(_TASKS.items()))
