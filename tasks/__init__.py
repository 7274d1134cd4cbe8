"""Data for hrnn's experiments: sequence tasks and the 2-D sets of the H-DNN papers.

``build_task(name, **options)`` builds any sequence task by name; ``available_tasks()`` lists
them. The audio builders (``build_fsdd``, ``build_speech_commands``) are loaded on first use,
so ``import tasks`` does not import torchaudio.
"""

from importlib import import_module

from .adding import ADDING_BASELINE_MSE, build_adding
from .base import Task
from .copying import build_copy, copy_baseline_cross_entropy
from .idx import DataError
from .mnist import build_psmnist, build_smnist, build_smnist_rows
from .registry import available_tasks, build_task

_LAZY = {"build_fsdd": "tasks.audio", "build_speech_commands": "tasks.audio"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")


__all__ = [
    "ADDING_BASELINE_MSE",
    "DataError",
    "Task",
    "available_tasks",
    "build_adding",
    "build_copy",
    "build_fsdd",
    "build_psmnist",
    "build_smnist",
    "build_smnist_rows",
    "build_speech_commands",
    "build_task",
    "copy_baseline_cross_entropy",
]
