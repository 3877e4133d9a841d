"""Task plug-ins. A task says how rows become examples, which head and loss,
which metrics, and how predictions are written; see `tasks/base.py`."""
from tunelab.tasks.registry import available_tasks, get_task, register_task

__all__ = ["available_tasks", "get_task", "register_task"]
