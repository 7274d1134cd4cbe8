"""The layers trace without host synchronisation: torch.compile(fullgraph=True) and torch.export."""

from __future__ import annotations

import pytest
import torch

from hrnn.models import MODELS
from hrnn.rnn import RecurrentLayer

LAYERS = {name: layer for name, layer in MODELS.items() if issubclass(layer, RecurrentLayer)}
IN, N, B, T = 2, 4, 3, 5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every layer class compiles the same code objects: without a reset, dynamo's recompile
    limit (8) is reached across the tests, not within one."""
    torch._dynamo.reset()
    yield


def _plain(layer_class):
    """The plain loop of every hrnn layer (``fast=False`` where the cell has fast scans)."""
    options = {"fast": False} if layer_class.cell_class.capabilities.canonical else {}
    return layer_class(IN, N, **options)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_compile_fullgraph_equals_eager(name):
    torch.manual_seed(0)
    layer = _plain(LAYERS[name])
    x = torch.randn(T, B, IN)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    expected, actual = layer(x), compiled(x)
    torch.testing.assert_close(actual[0], expected[0])


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_export_equals_eager(name):
    torch.manual_seed(0)
    layer = _plain(LAYERS[name])
    x = torch.randn(T, B, IN)
    exported = torch.export.export(layer, (x,))
    torch.testing.assert_close(exported.module()(x)[0], layer(x)[0])


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_default_layers_compile_and_export_with_their_fast_scans_traced_as_the_plain_loop(name):
    torch.manual_seed(0)
    layer = LAYERS[name](IN, N)  # fast=True where the cell has fast scans
    x = torch.randn(T, B, IN)
    expected = layer(x)[0]
    torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend="eager")(x)[0], expected)
    torch.testing.assert_close(torch.export.export(layer, (x,)).module()(x)[0], expected)


def test_the_default_hamiltonian_model_compiles_with_fullgraph():
    from hrnn.models import build_model

    torch.manual_seed(0)
    model = build_model("hamiltonian", IN, N, 2)
    x = torch.randn(B, T, IN)
    torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="eager")(x), model(x))
