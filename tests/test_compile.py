"""The layers trace without host synchronisation: torch.compile(fullgraph=True) and torch.export."""

from __future__ import annotations

import pytest
import torch

from hrnn.models import MODELS
from hrnn.rnn import RecurrentLayer

LAYERS = {name: layer for name, layer in MODELS.items() if issubclass(layer, RecurrentLayer)}
IN, N, B, T = 2, 4, 3, 5


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
