"""The record every sequence task returns, so training code needs no per-task branches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch.utils.data import Dataset

__all__ = ["Task"]


@dataclass(frozen=True)
class Task:
    """A sequence task: datasets of ``(x, y)`` pairs and what a model must output for them.

    ``x`` is a float32 tensor ``(seq_len, input_size)``. ``y`` is, by ``objective`` and ``readout``:
    regression/last: float32 ``(output_size,)``; classification/last: int64 scalar class index;
    classification/sequence: int64 ``(seq_len,)`` class per step.
    """

    name: str
    input_size: int
    output_size: int
    seq_len: int
    objective: Literal["regression", "classification"]
    readout: Literal["last", "sequence"]
    train: Dataset
    val: Dataset | None
    test: Dataset
