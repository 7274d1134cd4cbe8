"""The IDX reader on the real MNIST files, on the layouts it must find, and on broken files."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from tasks.idx import DataError, find_mnist_files, load_mnist_arrays, read_idx

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
OFFICIAL_MD5 = {IMAGES: "9fb629c4189551a2d022fa330f9573f3", LABELS: "ec29112dd5afa0611ce80d1b7f02629c"}
# Digits 0-9 in the official MNIST test set.
TEST_SET_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """Encode ``array`` as an IDX file: magic (0, 0, type, ndim), big-endian sizes, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, data in ((IMAGES, idx_bytes(images, 0x08)), (LABELS, idx_bytes(labels, 0x08))):
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def small_mnist() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5], dtype=np.uint8)


def test_real_files_match_the_official_md5_sums(mnist_dir):
    for stem, md5 in OFFICIAL_MD5.items():
        assert hashlib.md5((mnist_dir / f"{stem}.gz").read_bytes()).hexdigest() == md5


def test_real_test_set_has_10000_images_and_the_official_class_counts(mnist_dir):
    images, labels = load_mnist_arrays(mnist_dir, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == TEST_SET_CLASS_COUNTS
    # MNIST digits are white strokes on a black background: corners are empty, strokes saturate.
    assert images[:, 0, 0].max() == 0 and images.max() == 255


def test_plain_files_read_the_same_as_the_gzipped_ones(mnist_dir, tmp_path):
    for stem in OFFICIAL_MD5:
        (tmp_path / stem).write_bytes(gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes()))
    assert find_mnist_files(tmp_path) == (tmp_path / IMAGES, tmp_path / LABELS)
    for plain, packed in zip(load_mnist_arrays(tmp_path), load_mnist_arrays(mnist_dir), strict=True):
        np.testing.assert_array_equal(plain, packed)


def test_torchvision_raw_layout_is_found(tmp_path, small_mnist):
    images, labels = small_mnist
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, images, labels, gz=True)
    assert find_mnist_files(tmp_path) == (raw / f"{IMAGES}.gz", raw / f"{LABELS}.gz")
    got_images, got_labels = load_mnist_arrays(tmp_path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("type_code", "dtype"),
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")],
)
def test_every_idx_type_reads_back_in_native_byte_order(tmp_path, type_code, dtype):
    array = np.arange(-3, 21).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / "data.idx"
    path.write_bytes(idx_bytes(array, type_code))
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype).newbyteorder("=") and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)


def test_missing_file_error_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nothing\.gz"):
        read_idx(tmp_path / "nothing.gz")


def test_missing_folder_and_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"MNIST folder not found: .*absent"):
        load_mnist_arrays(tmp_path / "absent")
    with pytest.raises(DataError, match=rf"no {IMAGES}\[\.gz\] in .*MNIST/raw"):
        load_mnist_arrays(tmp_path)


def test_truncated_data_error_names_file_and_sizes(tmp_path, small_mnist):
    path = tmp_path / "images.idx"
    path.write_bytes(idx_bytes(small_mnist[0], 0x08)[:-10])
    with pytest.raises(
        DataError,
        match=r"images\.idx is truncated or corrupt: shape \(5, 28, 28\) needs 3936 bytes, file has 3926",
    ):
        read_idx(path)


def test_truncated_header_is_reported(tmp_path):
    path = tmp_path / "header.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(DataError, match=r"header\.idx is truncated: header needs 16 bytes, file has 6"):
        read_idx(path)


def test_bad_magic_number_is_reported(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match=r"picture\.png is not an IDX file \(bad magic number '89504e47'\)"):
        read_idx(path)


def test_corrupt_gzip_is_reported(mnist_dir, tmp_path):
    damaged = bytearray((mnist_dir / f"{LABELS}.gz").read_bytes())
    damaged[100:200] = bytes(b ^ 0xFF for b in damaged[100:200])  # a damaged deflate stream
    cases = {
        "garbage.gz": b"this is not gzip data",
        "cut.gz": (mnist_dir / f"{LABELS}.gz").read_bytes()[:1000],
        "damaged.gz": bytes(damaged),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"cannot decompress .*{name}"):
            read_idx(tmp_path / name)


def test_inconsistent_label_file_is_reported(tmp_path, small_mnist):
    images, labels = small_mnist
    write_mnist(tmp_path / "short", images, labels[:4], gz=False)
    with pytest.raises(
        DataError, match=rf"{LABELS}: expected 5 labels to match .*{IMAGES}, got shape \(4,\)"
    ):
        load_mnist_arrays(tmp_path / "short")
    write_mnist(tmp_path / "big", images, np.array([0, 1, 2, 3, 12], dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match=r"labels must be digits 0-9, found 12"):
        load_mnist_arrays(tmp_path / "big")


def test_images_of_the_wrong_type_are_reported(tmp_path, small_mnist):
    images, labels = small_mnist
    write_mnist(tmp_path, images, labels, gz=False)
    (tmp_path / IMAGES).write_bytes(idx_bytes(images.astype(np.int32), 0x0C))
    with pytest.raises(DataError, match=r"expected uint8 images \(N, H, W\), got int32"):
        load_mnist_arrays(tmp_path)


def test_unknown_split_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown MNIST split 'val'; known: \['test', 'train'\]"):
        find_mnist_files(tmp_path, "val")


def test_data_error_is_a_value_error():
    # callers that guard with `except ValueError` (bad input in general) catch data problems too
    assert issubclass(DataError, ValueError)
