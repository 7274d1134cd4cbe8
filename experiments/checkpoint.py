"""Atomic, checksummed checkpoints and the random-number state a resumed run needs to continue exactly.

A checkpoint is one ``torch.save`` dict: ``model``, ``optimizer``, ``scheduler`` state dicts,
``step`` (optimizer updates done), ``config`` (the run's fields), ``rng`` (one entry per
process), ``wandb_run_id`` and ``hrnn_version``. It holds only tensors and plain Python values,
so it loads with ``torch.load(weights_only=True)``: a crafted pickle cannot run code. The file is
the ``torch.save`` payload followed by a footer, ``FOOTER_MAGIC`` and the payload's SHA-256, so
a flipped byte fails the load by name. It is written to a temporary file in the same folder and
moved over the old one with ``os.replace``, so a crash never leaves a torn file; a state whose
model holds NaN/Inf is refused, so a good checkpoint is never replaced by a diverged one.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "FOOTER_MAGIC",
    "NonFiniteStateError",
    "capture_rng_state",
    "find_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
FOOTER_MAGIC = b"HRNNSHA2"
_DIGEST = hashlib.sha256().digest_size
_REQUIRED = frozenset({"model", "optimizer", "scheduler", "step", "config", "rng"})


class NonFiniteStateError(ValueError):
    """A state to be saved holds NaN/Inf model tensors; the checkpoint on disk was kept."""


def _temporaries(path: Path) -> str:
    return f".{path.name}.*.tmp"


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files that killed writes of checkpoint ``path`` left behind; return them."""
    path = Path(path)
    stale = sorted(path.parent.glob(_temporaries(path))) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _check_finite(state: dict[str, Any]) -> None:
    # a state_dict also holds modules' extra state (plain options), which has nothing to check
    tensors = {
        name: value for name, value in state.get("model", {}).items() if isinstance(value, torch.Tensor)
    }
    bad = [name for name, value in tensors.items() if not torch.isfinite(value).all()]
    if bad:
        raise NonFiniteStateError(f"the model state holds NaN/Inf in {bad}; the previous checkpoint is kept")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` and its checksum to ``path`` atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    _check_finite(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.write(FOOTER_MAGIC + hashlib.sha256(payload).digest())
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


def _verified_payload(file: Path) -> bytes:
    data = file.read_bytes()
    payload, magic, digest = (
        data[: -len(FOOTER_MAGIC) - _DIGEST],
        data[-len(FOOTER_MAGIC) - _DIGEST : -_DIGEST],
        data[-_DIGEST:],
    )
    if magic != FOOTER_MAGIC:
        raise ValueError(f"{file} is not a training checkpoint of hrnn: it has no checksum footer")
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"{file} is damaged: its SHA-256 checksum does not match its contents")
    return payload


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the checkpoint named by ``path`` (run folder or file) on the CPU, after checking its checksum."""
    file = find_checkpoint(path)
    payload = _verified_payload(file)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for a refused or damaged file
        raise ValueError(f"{file} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(
            f"{file} is not a training checkpoint: it holds a {type(state).__name__}, not a dict"
        )
    missing = _REQUIRED - set(state)
    if missing:
        raise ValueError(f"{file} is not a training checkpoint: missing {sorted(missing)}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) generators, as tensors and plain values."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global generator)
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the generators to ``state`` from :func:`capture_rng_state`."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
