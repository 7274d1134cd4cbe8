r"""The copy (memory) task in the layout of Arjovsky, Shah & Bengio, *Unitary Evolution RNNs* (2016).

A sequence of length :math:`T + 20` over the alphabet 0 (blank), 1-8 (symbols), 9 (delimiter):

- input: 10 symbols drawn uniformly from 1-8, then :math:`T - 1` blanks, the delimiter, and 10
  blanks; one-hot encoded, ``x`` float32 ``(T + 20, 10)``;
- target: :math:`T + 10` blanks, then the 10 symbols; ``y`` int64 ``(T + 20,)``.

The target never holds the delimiter, so ``output_size`` is 9 (classes 0-8), as in the paper.
A memoryless model that outputs blanks and then guesses uniformly among the 8 symbols scores
the cross-entropy :func:`copy_baseline_cross_entropy`, :math:`10 \log 8 / (T + 20)`.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from .adding import generated_splits
from .base import Task
from .registry import check_int

__all__ = ["build_copy", "copy_baseline_cross_entropy", "copy_sample"]

N_MEMORISE = 10
N_SYMBOLS = 8
BLANK = 0
DELIMITER = 9
N_INPUT_CLASSES = 10
N_OUTPUT_CLASSES = 9


def copy_baseline_cross_entropy(delay: int) -> float:
    r"""Mean per-step cross-entropy (nats) of the memoryless strategy: :math:`10 \log 8 / (T + 20)`."""
    return N_MEMORISE * math.log(N_SYMBOLS) / (delay + 2 * N_MEMORISE)


def copy_sample(delay: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One copy-task pair: ``x`` float32 one-hot ``(delay + 20, 10)``, ``y`` int64 ``(delay + 20,)``."""
    seq_len = delay + 2 * N_MEMORISE
    symbols = torch.randint(1, N_SYMBOLS + 1, (N_MEMORISE,), generator=generator)
    tokens = torch.full((seq_len,), BLANK, dtype=torch.int64)
    tokens[:N_MEMORISE] = symbols
    tokens[-N_MEMORISE - 1] = DELIMITER
    target = torch.full((seq_len,), BLANK, dtype=torch.int64)
    target[-N_MEMORISE:] = symbols
    return torch.nn.functional.one_hot(tokens, N_INPUT_CLASSES).float(), target


def build_copy(
    *, delay: int = 100, n_train: int = 10_000, n_val: int = 1_000, n_test: int = 1_000, seed: int = 0
) -> Task:
    """The copy task with ``delay`` blanks (the paper's T): per-step classification, ``seq_len = delay + 20``.

    ``n_val=0`` gives no validation set.
    """
    check_int("delay", delay, 1)
    train, val, test = generated_splits(partial(copy_sample, delay), n_train, n_val, n_test, seed)
    return Task(
        name="copy",
        input_size=N_INPUT_CLASSES,
        output_size=N_OUTPUT_CLASSES,
        seq_len=delay + 2 * N_MEMORISE,
        objective="classification",
        readout="sequence",
        train=train,
        val=val,
        test=test,
    )
