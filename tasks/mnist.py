"""Sequential MNIST (Le, Jaitly & Hinton 2015): pixel-by-pixel, permuted, and row-by-row.

- ``smnist``: the 784 pixels in raster order, ``x`` float32 ``(784, 1)`` in [0, 1] (pixel / 255);
- ``psmnist``: the same pixels reordered by one fixed permutation drawn from ``perm_seed``;
- ``smnist_rows``: one image row per step, ``x`` float32 ``(28, 28)``.

``y`` is the digit, an int64 scalar; 10 classes, read out at the last step.

Splits: only the MNIST *test* set (10,000 images) is available offline, so all three splits
come from it. A permutation of the 10,000 images drawn from ``seed`` gives the first
``n_test`` (default 2,000) to the test set, the next ``n_val`` (default 1,000) to the
validation set and the rest (7,000, or the first ``n_train`` of them) to the training set.
Images stay in one shared uint8 tensor; each item is converted when it is read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import Task
from .idx import DataError, load_mnist_arrays
from .registry import check_int, default_data_dir

__all__ = ["MnistSequences", "build_psmnist", "build_smnist", "build_smnist_rows", "pixel_permutation"]

N_PIXELS = 28 * 28
N_CLASSES = 10


class MnistSequences(Dataset):
    """MNIST images as sequences ``x`` float32 ``seq_shape`` with labels ``y`` int64 scalars.

    Item ``i`` is image ``indices[i]`` of ``images`` (uint8 ``(N, 28, 28)``), scaled to [0, 1],
    flattened, reordered by ``permutation`` (``(784,)``) and reshaped to ``seq_shape``.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, indices: Tensor, permutation: Tensor, seq_shape: tuple[int, int]
    ):
        self.images = images
        self.labels = labels
        self.indices = indices
        self.permutation = permutation
        self.seq_shape = seq_shape

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        k = self.indices[i]
        pixels = self.images[k].flatten().float() / 255.0
        return pixels[self.permutation].reshape(self.seq_shape), self.labels[k]


def pixel_permutation(perm_seed: int) -> Tensor:
    """The fixed pixel order of permuted sequential MNIST: int64 ``(784,)``, a permutation of 0..783."""
    return torch.randperm(N_PIXELS, generator=torch.Generator().manual_seed(perm_seed))


def _validate(n_images: int, seed: int, n_train: int | None, n_val: int, n_test: int) -> None:
    check_int("seed", seed, 0)
    check_int("n_val", n_val, 0)
    check_int("n_test", n_test, 1)
    n_rest = n_images - n_test - n_val
    if n_rest < 1:
        raise ValueError(
            f"n_test + n_val = {n_test + n_val} leaves no training images of the {n_images} available"
        )
    if n_train is not None and check_int("n_train", n_train, 1) > n_rest:
        raise ValueError(f"n_train = {n_train} exceeds the {n_rest} images left after n_test and n_val")


def _build(
    name: str,
    permutation: Tensor,
    seq_shape: tuple[int, int],
    root: str | Path | None,
    seed: int,
    n_train: int | None,
    n_val: int,
    n_test: int,
) -> Task:
    root = default_data_dir("mnist") if root is None else Path(root)
    images, labels = load_mnist_arrays(root, "test")
    if images.shape[1:] != (28, 28):
        raise DataError(f"MNIST images in {root} must be 28 x 28, got {images.shape[1:]}")
    _validate(len(images), seed, n_train, n_val, n_test)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    end_train = len(images) if n_train is None else n_test + n_val + n_train
    splits = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val : end_train],
    }
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    sets = {k: MnistSequences(images_t, labels_t, idx, permutation, seq_shape) for k, idx in splits.items()}
    return Task(
        name=name,
        input_size=seq_shape[1],
        output_size=N_CLASSES,
        seq_len=seq_shape[0],
        objective="classification",
        readout="last",
        train=sets["train"],
        val=sets["val"] if n_val else None,
        test=sets["test"],
    )


def build_smnist(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int = 1_000,
    n_test: int = 2_000,
) -> Task:
    """Pixel-by-pixel MNIST, ``x`` ``(784, 1)``; ``root`` defaults to ``../shared/data/mnist`` (or ``$HRNN_DATA/mnist``)."""
    return _build("smnist", torch.arange(N_PIXELS), (N_PIXELS, 1), root, seed, n_train, n_val, n_test)


def build_psmnist(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    perm_seed: int = 0,
    n_train: int | None = None,
    n_val: int = 1_000,
    n_test: int = 2_000,
) -> Task:
    """Permuted pixel-by-pixel MNIST, ``x`` ``(784, 1)`` reordered by :func:`pixel_permutation` of ``perm_seed``."""
    check_int("perm_seed", perm_seed, 0)
    return _build("psmnist", pixel_permutation(perm_seed), (N_PIXELS, 1), root, seed, n_train, n_val, n_test)


def build_smnist_rows(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int = 1_000,
    n_test: int = 2_000,
) -> Task:
    """Row-by-row MNIST, ``x`` ``(28, 28)``: 28 steps of 28 pixels."""
    return _build("smnist_rows", torch.arange(N_PIXELS), (28, 28), root, seed, n_train, n_val, n_test)
