"""Shared fixtures: where the offline data lives, and deterministic defaults for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tasks.registry import default_data_dir

REPO = Path(__file__).resolve().parents[1]
# The data sits beside the checkout (../shared/data); HRNN_DATA points elsewhere if needed
# (resolved by the package's own rule, so an empty HRNN_DATA means unset there and here).
DATA = default_data_dir()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _data_dir(name: str) -> Path:
    """``DATA / name``; missing, the test skips, or fails under CI (``$CI`` set) so CI cannot pass untested."""
    path = DATA / name
    if not path.is_dir():
        message = f"offline data not found at {path} (set HRNN_DATA to the shared data folder)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set and {message}", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Folder with the real MNIST test-set IDX files."""
    return _data_dir("mnist")


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    """Folder with the 3,000 Free Spoken Digit Dataset WAV recordings."""
    return _data_dir("fsdd/recordings")
