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
from .idx import DataError

__all__ = [
    "DATA_VARIABLE",
    "available_tasks",
    "build_task",
    "check_int",
    "data_folder_hint",
    "default_data_dir",
]

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


#: The variable naming the folder that holds the offline data (``mnist/``, ``fsdd/recordings/``, ...).
DATA_VARIABLE = "HRNN_DATA"


def _checkout() -> Path | None:
    """The source checkout this package is imported from, or ``None`` for an installed copy."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def default_data_dir(*parts: str) -> Path:
    """Where the offline data lives: ``$HRNN_DATA/<parts>``, else ``<checkout>/../shared/data/<parts>``.

    An installed (non-editable) copy has no checkout beside it, so there ``HRNN_DATA`` must be set:
    a ``DataError`` says so rather than pointing inside the environment.
    """
    env = os.environ.get(DATA_VARIABLE)
    if env:
        return Path(env).joinpath(*parts)
    checkout = _checkout()
    if checkout is None:
        raise DataError(f"no data folder: {data_folder_hint()}")
    return checkout.parent.joinpath("shared", "data", *parts)


def data_folder_hint() -> str:
    """One sentence on where the offline data is looked for, for error messages."""
    env = os.environ.get(DATA_VARIABLE)
    if env:
        return f"data is read from ${DATA_VARIABLE} = {env}"
    checkout = _checkout()
    beside = (
        f"{checkout.parent / 'shared' / 'data'} beside the checkout"
        if checkout
        else "no default (not a checkout)"
    )
    return f"set ${DATA_VARIABLE} to the folder holding the data; unset, it is {beside}"


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, or a ``TypeError``/``ValueError`` naming option ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
