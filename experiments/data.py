"""Batches indexed by training step, so any run can stop and resume at any step, on any number of processes.

Global batch ``s`` holds positions ``[i * B, (i + 1) * B)`` of epoch ``e``'s permutation of the
training set, where ``e, i = divmod(s, n // B)`` and the permutation is drawn from
``(seed, e)`` alone (an incomplete last batch is dropped). Process ``r`` of ``W`` takes the
``r``-th contiguous ``B / W`` of it, so ``W`` processes together see exactly the one-process batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["StepBatchSampler", "step_loader"]


class StepBatchSampler(Sampler[list[int]]):
    """Yield the dataset indices of this process's share of global batches ``start .. stop - 1``.

    Args:
        num_samples: size ``n`` of the dataset.
        batch_size: global batch size ``B`` (summed over processes).
        seed: fixes every epoch's permutation.
        start, stop: first and one-past-last step.
        rank, world_size: this process and the number of processes; ``B`` must be divisible by it.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size > num_samples:
            raise ValueError(f"batch_size {batch_size} exceeds the {num_samples} training samples")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for {world_size} processes")
        if not 0 <= start <= stop:
            raise ValueError(f"expected 0 <= start <= stop, got start={start}, stop={stop}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __len__(self) -> int:
        return self.stop - self.start

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The order of the training set in ``epoch``: int64 ``(n,)``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = self.num_samples // self.batch_size
        local = self.batch_size // self.world_size
        epoch, order = -1, np.empty(0, dtype=np.int64)
        for step in range(self.start, self.stop):
            step_epoch, position = divmod(step, per_epoch)
            if step_epoch != epoch:
                epoch, order = step_epoch, self.epoch_permutation(step_epoch)
            first = position * self.batch_size + self.rank * local
            yield order[first : first + local].tolist()


def step_loader(dataset: Dataset, sampler: StepBatchSampler, seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``sampler``'s batches; its own generator keeps the global RNG untouched."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
