"""Task plug-in discovery: a leaf module, so config and tasks can both use it without importing each other.

Tasks are found by name through the `tunelab.tasks` entry-point group (pyproject.toml lists the
built-in ones; a third-party package adds its own the same way), or registered at runtime with
`register_task` (a task defined in a notebook). Loading a plug-in imports its module on first use,
which keeps `import tunelab` and `tunelab --help` free of pandas/torch.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from tunelab.errors import UserError, did_you_mean

ENTRY_POINT_GROUP = "tunelab.tasks"
_registered: dict[str, Any] = {}


def register_task(cls):
    """Class decorator: make a task class available under `cls.name` in this process."""
    _registered[cls.name] = cls
    return cls


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    return sorted(set(_entry_points()) | set(_registered))


def load_task_class(name: str):
    """The task class registered as `name`; a UserError (with a did-you-mean) for an unknown name."""
    if name not in _registered:
        found = _entry_points().get(name)
        if found is None:
            names = task_names()
            raise UserError(f"unknown task `{name}`{did_you_mean(name, names)}; available: {', '.join(names)}")
        _registered[name] = found.load()
    return _registered[name]
