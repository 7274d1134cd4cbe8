"""Atomic checkpoints and the random-number state a resumed run needs to continue exactly.

A checkpoint is one ``torch.save`` dict: ``model``, ``optimizer``, ``scheduler`` state dicts,
``step`` (optimizer updates done), ``config`` (the run's fields), ``rng`` (one entry per
process), ``wandb_run_id`` and ``hrnn_version``. It is written to a temporary file in the same
folder and moved over the old one with ``os.replace``, so a crash never leaves a torn file.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "capture_rng_state",
    "find_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file named by ``path``: the file itself, or ``<run folder>/checkpoint.pt``."""
    path = Path(path)
    candidate = path / CHECKPOINT_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {candidate} (expected a run folder holding {CHECKPOINT_NAME} or a checkpoint file)"
        )
    return candidate


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the checkpoint named by ``path`` (run folder or file) on the CPU."""
    file = find_checkpoint(path)
    # weights_only=False: the checkpoint holds RNG states (numpy arrays, Python tuples) written by
    # this same code; only load checkpoints you trust, as with any pickle.
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for a damaged file
        raise ValueError(f"{file} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(
            f"{file} is not a training checkpoint: it holds a {type(state).__name__}, not a dict"
        )
    missing = {"model", "optimizer", "scheduler", "step", "config", "rng"} - set(state)
    if missing:
        raise ValueError(f"{file} is not a training checkpoint: missing {sorted(missing)}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) generators."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global generator other code may draw from)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the generators to ``state`` from :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
