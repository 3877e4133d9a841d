"""Task registry: tasks are found by name (entry points or `register_task`); nothing else switches on task names."""
from __future__ import annotations

from tunelab.plugins import load_task_class, register_task, task_names

__all__ = ["available_tasks", "get_task", "register_task"]


def get_task(name: str):
    return load_task_class(name)


def available_tasks() -> dict:
    return {name: load_task_class(name) for name in task_names()}
