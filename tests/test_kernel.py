"""The compiled loops of the selective scan are optional: switched off, or where they cannot be built,
the scan warns (if it tried) and runs its PyTorch loops, which give the same result."""

from __future__ import annotations

import pytest
import torch

from hrnn import SelectiveHamiltonianRNN
from hrnn.fast import _kernel
from hrnn.fast.selective import compiled_available


@pytest.fixture
def fresh_kernel():
    """``selective_kernel`` without its cache, restored (cache cleared again) afterwards."""
    _kernel.selective_kernel.cache_clear()
    yield _kernel
    _kernel.selective_kernel.cache_clear()


def _layer_output(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    layer = SelectiveHamiltonianRNN(3, 5, dtype=torch.float64)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    return layer(x)[0]


def test_the_environment_switch_turns_the_compiled_loops_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv(_kernel.ENV_SWITCH, "0")
    assert fresh_kernel.selective_kernel() is None
    assert not compiled_available(torch.zeros(1))
    off = _layer_output()
    monkeypatch.delenv(_kernel.ENV_SWITCH)
    fresh_kernel.selective_kernel.cache_clear()
    torch.testing.assert_close(_layer_output(), off, rtol=1e-12, atol=1e-12)


def test_a_failed_build_warns_once_and_falls_back_to_the_pytorch_loops(fresh_kernel, monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(fresh_kernel, "SOURCE", broken)
    monkeypatch.setattr(fresh_kernel, "NAME", "hrnn_broken_on_purpose")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert fresh_kernel.selective_kernel() is None
    assert fresh_kernel.selective_kernel() is None  # cached: no second attempt, no second warning
    assert not compiled_available(torch.zeros(1))
    assert torch.isfinite(_layer_output()).all()
