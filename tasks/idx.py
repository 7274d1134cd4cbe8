"""Reader for the IDX files of MNIST (gzipped or not), with errors that name the file.

IDX layout: two zero bytes, a type code, the number of dimensions ``d``; then ``d`` big-endian
uint32 sizes; then the data in C order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DataError", "find_mnist_files", "load_mnist_arrays", "read_idx"]

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """A data file or folder is missing, truncated, corrupt or holds invalid values."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into an array of its stored shape and type."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
        raise DataError(f"cannot decompress {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: shape {shape} needs {expected} bytes, file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_mnist_files(root: str | Path, split: str = "test") -> tuple[Path, Path]:
    """Locate the images and labels IDX files of ``split`` under ``root``.

    Looks in ``root`` itself and in torchvision's ``root/MNIST/raw`` layout, for gzipped or
    plain files.
    """
    if split not in _MNIST_NAMES:
        raise ValueError(f"unknown MNIST split {split!r}; known: {sorted(_MNIST_NAMES)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"MNIST folder not found: {root}; expected a folder holding the IDX files "
            f"{' and '.join(stem + '[.gz]' for stem in _MNIST_NAMES[split])} (or root/MNIST/raw/ holding them)"
        )
    found = []
    for stem in _MNIST_NAMES[split]:
        candidates = [d / (stem + ext) for d in (root, root / "MNIST" / "raw") for ext in (".gz", "")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise DataError(
                f"no {stem}[.gz] in {root} or {root / 'MNIST' / 'raw'}: expected the standard "
                "MNIST IDX files (e.g. t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)"
            )
        found.append(hit)
    return found[0], found[1]


def load_mnist_arrays(root: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one MNIST split, checked for consistency."""
    images_path, labels_path = find_mnist_files(root, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path}: expected {len(images)} labels to match {images_path}, got shape {labels.shape}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be digits 0-9, found {int(labels.max())}")
    return images, labels.astype(np.int64)
