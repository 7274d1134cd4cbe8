"""Data for hrnn's experiments: sequence tasks and the 2-D sets of the H-DNN papers."""

from .base import Task
from .idx import DataError

__all__ = ["DataError", "Task"]
