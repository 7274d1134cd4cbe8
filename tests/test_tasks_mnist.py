"""Sequential, permuted and row-wise MNIST on the real MNIST test-set files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks
from tasks.idx import find_mnist_files, read_idx
from tasks.mnist import pixel_permutation
from tasks.registry import default_data_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw(mnist_dir):
    images_path, labels_path = find_mnist_files(mnist_dir, "test")
    return read_idx(images_path), read_idx(labels_path)


@pytest.fixture(scope="module")
def smnist(mnist_dir):
    return tasks.build_task("smnist", root=mnist_dir)


@pytest.fixture(scope="module")
def psmnist(mnist_dir):
    return tasks.build_task("psmnist", root=mnist_dir, perm_seed=3)


@pytest.fixture(scope="module")
def rows(mnist_dir):
    return tasks.build_task("smnist_rows", root=mnist_dir)


def _splits(task):
    return {"train": task.train, "val": task.val, "test": task.test}


def _write_idx(path, array: np.ndarray, type_code: int = 0x08, cut: int = 0) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data[: len(data) - cut]))


def _fake_mnist(folder, n: int = 30, cut_images: int = 0) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    _write_idx(
        folder / "t10k-images-idx3-ubyte.gz",
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        cut=cut_images,
    )
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


def test_smnist_record_shapes_and_ranges(smnist):
    assert (smnist.name, smnist.input_size, smnist.output_size, smnist.seq_len) == ("smnist", 1, 10, 784)
    assert (smnist.objective, smnist.readout) == ("classification", "last")
    x, y = smnist.train[0]
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((784, 1), torch.float32, (), torch.int64)
    assert 0 <= int(y) <= 9
    assert x.min() >= 0 and x.max() <= 1


def test_default_split_is_7000_1000_2000_covering_every_image_once(smnist):
    sizes = {k: len(d) for k, d in _splits(smnist).items()}
    assert sizes == {"train": 7000, "val": 1000, "test": 2000}
    every = torch.cat([d.indices for d in _splits(smnist).values()])
    assert torch.equal(every.sort().values, torch.arange(10_000))


def test_pixel_sums_and_labels_match_the_raw_idx_files(smnist, raw):
    images, labels = raw
    total = 0
    for name, dataset in _splits(smnist).items():
        scaled = torch.stack([dataset[i][0] for i in range(len(dataset))]) * 255
        y = torch.stack([dataset[i][1] for i in range(len(dataset))])
        x = scaled.round().long()
        assert (scaled - x).abs().max() < 1e-3, f"{name}: pixels are not multiples of 1/255"
        idx = dataset.indices.numpy()
        assert int(x.sum()) == int(images[idx].astype(np.int64).sum()), name
        assert torch.equal(y, torch.from_numpy(labels[idx].astype(np.int64))), name
        total += int(x.sum())
    assert total == int(images.astype(np.int64).sum())


def test_every_class_appears_in_every_split(smnist):
    for dataset in _splits(smnist).values():
        counts = torch.bincount(dataset.labels[dataset.indices], minlength=10)
        assert (counts > 0.05 * len(dataset)).all(), counts


def test_pixel_permutation_is_a_fixed_permutation():
    perm = pixel_permutation(3)
    assert perm.dtype == torch.int64 and torch.equal(perm.sort().values, torch.arange(784))
    assert torch.equal(perm, pixel_permutation(3))
    assert not torch.equal(perm, pixel_permutation(4))
    assert not torch.equal(perm, torch.arange(784))


def test_psmnist_is_smnist_reordered_by_the_permutation(smnist, psmnist):
    assert (psmnist.name, psmnist.input_size, psmnist.seq_len) == ("psmnist", 1, 784)
    perm = pixel_permutation(3)
    for i in (0, 1, 6999):
        x_seq, y_seq = smnist.train[i]
        x_perm, y_perm = psmnist.train[i]
        assert torch.equal(x_perm, x_seq[perm]) and torch.equal(y_perm, y_seq)


def test_smnist_rows_are_image_rows(smnist, rows):
    assert (rows.name, rows.input_size, rows.seq_len) == ("smnist_rows", 28, 28)
    x_rows, y_rows = rows.test[5]
    x_seq, y_seq = smnist.test[5]
    assert x_rows.shape == (28, 28) and torch.equal(x_rows.flatten(), x_seq.flatten())
    assert torch.equal(y_rows, y_seq)


def test_split_is_deterministic_by_seed(mnist_dir, smnist):
    again = tasks.build_task("smnist", root=mnist_dir)
    other = tasks.build_task("smnist", root=mnist_dir, seed=1)
    assert torch.equal(again.test.indices, smnist.test.indices)
    assert not torch.equal(other.test.indices, smnist.test.indices)


def test_n_train_takes_a_subset_of_the_training_images(mnist_dir, smnist):
    small = tasks.build_task("smnist_rows", root=mnist_dir, n_train=500, n_val=0)
    assert len(small.train) == 500 and small.val is None
    assert torch.equal(small.test.indices, smnist.test.indices)


def test_images_are_stored_once_as_uint8(smnist):
    assert smnist.train.images.dtype == torch.uint8
    assert smnist.train.images.data_ptr() == smnist.test.images.data_ptr()


def test_torchvision_raw_layout_is_found(tmp_path):
    _fake_mnist(tmp_path / "MNIST" / "raw")
    task = tasks.build_task("psmnist", root=tmp_path, n_val=5, n_test=5)
    assert (len(task.train), len(task.val), len(task.test)) == (20, 5, 5)


def test_missing_folder_names_path_and_expected_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(tasks.DataError, match=rf"{missing}.*t10k-images-idx3-ubyte\[\.gz\]"):
        tasks.build_task("smnist", root=missing)


def test_missing_file_names_the_expected_file(tmp_path):
    with pytest.raises(tasks.DataError, match=r"no t10k-images-idx3-ubyte\[\.gz\] in"):
        tasks.build_task("smnist", root=tmp_path)


def test_truncated_file_is_named(tmp_path):
    _fake_mnist(tmp_path, cut_images=100)
    with pytest.raises(tasks.DataError, match=r"t10k-images-idx3-ubyte\.gz is truncated"):
        tasks.build_task("smnist", root=tmp_path)


def test_corrupt_file_is_named(tmp_path):
    _fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(tasks.DataError, match=r"cannot decompress .*t10k-labels-idx1-ubyte\.gz"):
        tasks.build_task("smnist_rows", root=tmp_path)


def test_sizes_larger_than_the_data_are_rejected(tmp_path):
    _fake_mnist(tmp_path)
    with pytest.raises(ValueError, match="n_test \\+ n_val = 30 leaves no training images of the 30"):
        tasks.build_task("smnist", root=tmp_path, n_test=20, n_val=10)
    with pytest.raises(ValueError, match="n_train = 21 exceeds the 20 images"):
        tasks.build_task("smnist", root=tmp_path, n_test=5, n_val=5, n_train=21)


def test_default_root_is_the_shared_data_beside_the_checkout(monkeypatch, mnist_dir, smnist):
    monkeypatch.delenv("HRNN_DATA", raising=False)
    assert default_data_dir("mnist") == REPO.parent / "shared" / "data" / "mnist"
    if default_data_dir("mnist").resolve() == mnist_dir.resolve():
        assert torch.equal(tasks.build_task("smnist").test.indices, smnist.test.indices)


def test_hrnn_data_overrides_the_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("HRNN_DATA", str(tmp_path))
    with pytest.raises(tasks.DataError, match=f"MNIST folder not found: {tmp_path / 'mnist'}"):
        tasks.build_task("psmnist")
    _fake_mnist(tmp_path / "mnist")
    assert len(tasks.build_task("smnist", n_val=0, n_test=10).train) == 20
