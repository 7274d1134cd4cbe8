"""Per-layer step sizes of the oscillator layer: each stacked layer l steps dt_l * sigmoid(c_i)."""

from __future__ import annotations

import io

import pytest
import torch

from hrnn.cells import OscillatorCell
from hrnn.models import build_model
from hrnn.rnn import HamiltonianRNN, OscillatorRNN
from hrnn.step_size import resolve_dt

IN, N, B, T = 3, 4, 2, 20
ALPHA = 1.0  # a weak restoring force, so that the third layer's output is not tiny
DTS = [0.1, 0.2, 0.3]


def _layer(dt, **kw) -> OscillatorRNN:
    torch.manual_seed(0)
    return OscillatorRNN(IN, N, num_layers=len(DTS), dt=dt, alpha=ALPHA, dtype=torch.float64, **kw)


def _dts(layer) -> list[float]:
    return [cell.dt.item() for cell in layer.cells]


def test_each_layer_gets_its_own_dt_exactly():
    layer = _layer(DTS)
    assert _dts(layer) == DTS
    assert _dts(_layer(tuple(DTS))) == DTS
    assert "dt=[0.1, 0.2, 0.3]" in layer.extra_repr()


def test_the_layer_equals_three_hand_stacked_cells_with_those_dt():
    layer = _layer(DTS)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    output, (p_n, q_n) = layer(x)
    inputs, finals = x, []
    for k, dt in enumerate(DTS):
        cell = OscillatorCell(IN if k == 0 else N, N, dt=dt, alpha=ALPHA, dtype=torch.float64)
        with torch.no_grad():  # the layer's weights, not its dt
            for name, parameter in layer.cells[k].named_parameters():
                cell.get_parameter(name).copy_(parameter)
        assert cell.dt.item() == dt
        # the plain reference loop over the cell's step, while the layer runs the fast scan
        inputs, *final = cell.scan(cell.project(inputs), *cell.initial_state(B, x))
        finals.append(final)
    torch.testing.assert_close(output, inputs, rtol=0, atol=1e-12)
    torch.testing.assert_close(p_n, torch.stack([p for p, _ in finals]), rtol=0, atol=1e-12)
    torch.testing.assert_close(q_n, torch.stack([q for _, q in finals]), rtol=0, atol=1e-12)
    # the per-layer steps matter: one shared dt gives another function of the same weights
    uniform = _layer(0.2)
    uniform.load_state_dict(
        {k: v for k, v in layer.state_dict().items() if not k.endswith(".dt")}, strict=False
    )
    assert (uniform(x)[0] - output).abs().max() > 0.1 * output.abs().max()


def test_an_auto_entry_chooses_its_layers_dt_from_the_sequence_length():
    layer = OscillatorRNN(IN, N, num_layers=2, dt=["auto", 0.2], seq_len=50, dtype=torch.float64)
    first = layer.cells[0]
    assert first.dt.item() == resolve_dt("auto", 50, first.max_frequency())
    assert layer.cells[1].dt.item() == 0.2


def test_bidirectional_directions_of_a_layer_share_its_dt():
    layer = OscillatorRNN(IN, N, num_layers=2, bidirectional=True, dt=[0.1, 0.3], dtype=torch.float64)
    assert _dts(layer) == [0.1, 0.1, 0.3, 0.3]
    assert "dt=[0.1, 0.3]" in layer.extra_repr()


def test_a_per_layer_list_of_the_wrong_length_is_refused_naming_both_lengths():
    with pytest.raises(ValueError, match=r"dt was given 2 values, one per layer, but num_layers=3"):
        OscillatorRNN(IN, N, num_layers=3, dt=[0.1, 0.2])


def test_a_list_for_an_option_that_is_not_per_layer_goes_to_the_cell_whole():
    # JSON and YAML have no tuples: a (low, high) pair arrives as a list and must stay one value
    layer = HamiltonianRNN(IN, N, num_layers=2, timescales=[1e-3, 0.3])
    assert [cell.timescales for cell in layer.cells] == [(1e-3, 0.3)] * 2
    with pytest.raises(ValueError, match=r"alpha must be a finite number >= 0, got \[1.0, 2.0\]"):
        OscillatorRNN(IN, N, num_layers=2, alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"dt must be a positive number or 'auto', got \[0.1, 0.2\]"):
        HamiltonianRNN(IN, N, num_layers=2, dt=[0.1, 0.2])


def test_a_saved_state_dict_keeps_each_layers_dt():
    layer = _layer(DTS)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    loaded = _layer(0.5)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert _dts(loaded) == DTS
    x = torch.randn(T, B, IN, dtype=torch.float64)
    torch.testing.assert_close(loaded(x)[0], layer(x)[0], rtol=0, atol=0)


def test_build_model_passes_a_per_layer_dt_to_every_blocks_layer():
    model = build_model("oscillator", 1, 16, 10, num_blocks=1, num_layers=2, dt=[0.1, 0.2])
    cells = [cell for module in model.modules() if isinstance(module, OscillatorRNN) for cell in module.cells]
    assert [cell.dt.item() for cell in cells] == pytest.approx([0.1, 0.2], rel=1e-7)
    assert model(torch.randn(2, 5, 1)).shape == (2, 10)
