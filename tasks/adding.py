r"""The adding problem (Hochreiter & Schmidhuber 1997; the layout of Arjovsky et al. 2016).

Input ``x`` of shape ``(T, 2)``: column 0 holds values drawn uniformly from :math:`[0, 1)`,
column 1 is a marker, 1 at exactly one step in the first half :math:`[0, \lfloor T/2 \rfloor)`
and at exactly one step in the second half, 0 elsewhere. Target: the sum of the two marked
values, shape ``(1,)``. Predicting the constant 1 gives MSE
:math:`\operatorname{Var}(u_1 + u_2) = 2 \cdot 1/12 = 1/6`, the baseline a model must beat.

Samples are generated on demand from a seed (:class:`GeneratedDataset`), so the sets take no
memory at any ``T`` and every split is fixed by ``seed``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import Task
from .registry import check_int

__all__ = ["ADDING_BASELINE_MSE", "GeneratedDataset", "adding_sample", "build_adding", "generated_splits"]

ADDING_BASELINE_MSE = 1.0 / 6.0
"""MSE of always predicting 1: the variance of the sum of two independent U[0, 1) values."""

_STREAMS = {"train": 0, "val": 1, "test": 2}


class GeneratedDataset(Dataset):
    """A map-style dataset of ``length`` samples, item ``i`` being ``sample(generator)``.

    The generator of item ``i`` is seeded with ``base + i``, where ``base`` is a 63-bit number
    mixed from ``(seed, stream)``: items are reproducible one by one in any order (and in
    DataLoader workers), and different streams (train/val/test) do not share samples.
    """

    def __init__(
        self, sample: Callable[[torch.Generator], tuple[Tensor, Tensor]], length: int, seed: int, stream: int
    ):
        self.sample = sample
        self.length = length
        words = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32)
        self.base = (int(words[0]) << 31) ^ int(words[1])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        index = operator.index(index)
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} samples")
        generator = torch.Generator().manual_seed(self.base + index % self.length)
        return self.sample(generator)


def adding_sample(seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One adding-problem pair: ``x`` float32 ``(seq_len, 2)``, ``y`` float32 ``(1,)``."""
    # one draw and Python-int positions: the DataLoader calls this once per item, so few tensor ops
    uniforms = torch.rand(seq_len + 2, generator=generator)
    half = seq_len // 2
    u_first, u_second = uniforms[seq_len:].tolist()
    first, second = int(u_first * half), half + int(u_second * (seq_len - half))
    x = torch.zeros(seq_len, 2)
    x[:, 0] = uniforms[:seq_len]
    x[first, 1] = x[second, 1] = 1.0
    return x, x[first, :1] + x[second, :1]


def generated_splits(
    sample: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
) -> tuple[GeneratedDataset, GeneratedDataset | None, GeneratedDataset]:
    """Train, validation (``None`` when ``n_val`` is 0) and test sets of ``sample``, fixed by ``seed``."""
    check_int("n_train", n_train, 1)
    check_int("n_val", n_val, 0)
    check_int("n_test", n_test, 1)
    check_int("seed", seed, 0)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    sets = {split: GeneratedDataset(sample, sizes[split], seed, stream) for split, stream in _STREAMS.items()}
    return sets["train"], sets["val"] if n_val else None, sets["test"]


def build_adding(
    *, seq_len: int = 100, n_train: int = 10_000, n_val: int = 1_000, n_test: int = 10_000, seed: int = 0
) -> Task:
    """The adding problem of length ``seq_len``: regression on the last step, 2 inputs, 1 output.

    ``n_val=0`` gives no validation set. The default 10,000 test samples estimate the 1/6
    baseline to about 0.002 (one standard error).
    """
    check_int("seq_len", seq_len, 2)
    train, val, test = generated_splits(partial(adding_sample, seq_len), n_train, n_val, n_test, seed)
    return Task(
        name="adding",
        input_size=2,
        output_size=1,
        seq_len=seq_len,
        objective="regression",
        readout="last",
        train=train,
        val=val,
        test=test,
    )
