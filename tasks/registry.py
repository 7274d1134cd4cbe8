"""The task registry, and the conventions every task builder shares (data folders, option checks).

Builders are named by module path and imported only when asked for, so ``import tasks`` stays
cheap and does not import torchaudio (only the audio tasks need it).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path

from .base import Task

__all__ = ["available_tasks", "build_task", "check_int", "default_data_dir"]

# name -> "module:builder"; each builder takes keyword-only options and returns a Task.
_BUILDERS: dict[str, str] = {
    "adding": "tasks.adding:build_adding",
    "copy": "tasks.copying:build_copy",
    "smnist": "tasks.mnist:build_smnist",
    "psmnist": "tasks.mnist:build_psmnist",
    "smnist_rows": "tasks.mnist:build_smnist_rows",
    "fsdd": "tasks.audio:build_fsdd",
    "speech_commands": "tasks.audio:build_speech_commands",
}


def available_tasks() -> list[str]:
    """Names accepted by :func:`build_task`, sorted."""
    return sorted(_BUILDERS)


def _builder(name: str) -> Callable[..., Task]:
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; available tasks: {available_tasks()}")
    module, function = _BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), function)


def build_task(name: str, **kwargs: object) -> Task:
    """Build the task registered as ``name`` with the builder's keyword options.

    Raises ``ValueError`` for an unknown name (listing the known ones) and ``TypeError`` for an
    option the task does not take (listing the ones it does).
    """
    builder = _builder(name)
    accepted = sorted(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"task {name!r} got unknown option(s) {unknown}; it accepts {accepted}")
    return builder(**kwargs)


def default_data_dir(*parts: str) -> Path:
    """Where the offline data lives: ``$HRNN_DATA/<parts>``, else ``<repo>/../shared/data/<parts>``."""
    env = os.environ.get("HRNN_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base.joinpath(*parts)


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, or a ``TypeError``/``ValueError`` naming option ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
