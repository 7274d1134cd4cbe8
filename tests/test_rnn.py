"""Layers: torch.nn.RNN conventions, stacking, state carrying, gradcheck, input validation."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from hrnn.models import MODELS
from hrnn.rnn import AntisymmetricRNN, HamiltonianRNN, RecurrentLayer

# every hrnn layer of the registry (torch's own are tested by torch)
LAYERS = [layer for layer in MODELS.values() if issubclass(layer, RecurrentLayer)]
IN, N, B, T, L = 3, 5, 2, 7, 2


def _parts(h):
    return (h,) if isinstance(h, torch.Tensor) else tuple(h)


def _pack(parts):
    return parts if len(parts) > 1 else parts[0]


def _random_hx(layer, *leading):
    return _pack(tuple(torch.randn(*leading, N, dtype=torch.float64) for _ in layer.state_names))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_batched_shapes_follow_torch_rnn(cls, batch_first, with_hx):
    layer = cls(IN, N, num_layers=L, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(B, T, IN) if batch_first else torch.randn(T, B, IN)
    hx = _random_hx(layer, L, B) if with_hx else None
    output, h_n = layer(x.double(), hx)
    assert output.shape == ((B, T, N) if batch_first else (T, B, N))
    parts = _parts(h_n)
    assert len(parts) == len(layer.state_names)
    assert isinstance(h_n, tuple) == (len(layer.state_names) > 1)
    assert all(p.shape == (L, B, N) for p in parts)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_input_equals_a_batch_of_one(cls, with_hx):
    layer = cls(IN, N, num_layers=L, dtype=torch.float64)
    x = torch.randn(T, IN, dtype=torch.float64)
    hx = _random_hx(layer, L) if with_hx else None
    output, h_n = layer(x, hx)
    assert output.shape == (T, N)
    assert all(p.shape == (L, N) for p in _parts(h_n))
    batched_hx = None if hx is None else _pack(tuple(h.unsqueeze(1) for h in _parts(hx)))
    ref_output, ref_h_n = layer(x.unsqueeze(1), batched_hx)
    torch.testing.assert_close(output, ref_output.squeeze(1), rtol=0, atol=0)
    torch.testing.assert_close(_parts(h_n), tuple(h.squeeze(1) for h in _parts(ref_h_n)), rtol=0, atol=0)


@pytest.mark.parametrize("cls", LAYERS)
def test_batch_first_is_a_transpose(cls):
    torch.manual_seed(1)
    seq_first = cls(IN, N, num_layers=L, dtype=torch.float64)
    batch_first = cls(IN, N, num_layers=L, batch_first=True, dtype=torch.float64)
    batch_first.load_state_dict(seq_first.state_dict())
    x = torch.randn(T, B, IN, dtype=torch.float64)
    out_sf, h_sf = seq_first(x)
    out_bf, h_bf = batch_first(x.transpose(0, 1))
    torch.testing.assert_close(out_bf, out_sf.transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(_parts(h_bf), _parts(h_sf), rtol=0, atol=0)


@pytest.mark.parametrize("cls", LAYERS)
def test_stacked_layers_equal_single_layers_chained_by_hand(cls):
    stacked = cls(IN, N, num_layers=3, dtype=torch.float64)
    singles = [cls(IN if i == 0 else N, N, dtype=torch.float64) for i in range(3)]
    for i, single in enumerate(singles):
        single.cells[0].load_state_dict(stacked.cells[i].state_dict())
    x = torch.randn(T, B, IN, dtype=torch.float64)
    hx = _random_hx(stacked, 3, B)
    output, h_n = stacked(x, hx)
    inp, finals = x, []
    for i, single in enumerate(singles):
        inp, h_i = single(inp, _pack(tuple(h[i : i + 1] for h in _parts(hx))))
        finals.append(_parts(h_i))
    torch.testing.assert_close(output, inp, rtol=0, atol=1e-14)
    expected = tuple(torch.cat(parts) for parts in zip(*finals, strict=True))
    torch.testing.assert_close(_parts(h_n), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("cls", LAYERS)
def test_carrying_the_state_across_chunks_equals_one_pass(cls):
    layer = cls(IN, N, num_layers=L, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, 12, IN, dtype=torch.float64)
    output, h_n = layer(x)
    first, h_mid = layer(x[:, :5])
    second, h_end = layer(x[:, 5:], h_mid)
    torch.testing.assert_close(torch.cat([first, second], 1), output, rtol=0, atol=1e-14)
    torch.testing.assert_close(_parts(h_end), _parts(h_n), rtol=0, atol=1e-14)


def test_dropout_acts_between_layers_only_in_training():
    layer = HamiltonianRNN(IN, N, num_layers=2, dropout=0.5, dtype=torch.float64)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    no_dropout = HamiltonianRNN(IN, N, num_layers=2, dtype=torch.float64)
    no_dropout.load_state_dict(layer.state_dict())
    layer.eval()
    torch.testing.assert_close(layer(x)[0], no_dropout(x)[0], rtol=0, atol=0)
    layer.train()
    assert not torch.allclose(layer(x)[0], no_dropout(x)[0])


@pytest.mark.parametrize("cls", LAYERS)
def test_double_moves_parameters_and_buffers(cls):
    layer = cls(IN, N).double()
    assert all(t.dtype == torch.float64 for t in (*layer.parameters(), *layer.buffers()))
    output, _ = layer(torch.randn(T, B, IN, dtype=torch.float64))
    assert output.dtype == torch.float64
    learned_steps = cls.cell_class.__name__ == "LinOSSCell"  # LinOSS learns its steps, as in the paper
    assert learned_steps or not any("dt" in name or "epsilon" in name for name, _ in layer.named_parameters())


@pytest.mark.parametrize("cls", LAYERS)
def test_device_move_takes_buffers_along_and_mismatched_input_fails_clearly(cls):
    layer = cls(IN, N).to("meta")
    assert all(t.device.type == "meta" for t in (*layer.parameters(), *layer.buffers()))
    with pytest.raises(ValueError, match="input is on cpu but the parameters are on meta"):
        layer(torch.randn(T, B, IN))


def test_hamiltonian_layer_passes_cell_options_to_every_layer():
    layer = HamiltonianRNN(IN, N, num_layers=2, dt=0.05, scheme="verlet")
    assert all(cell.dt.item() == pytest.approx(0.05) and cell.scheme.name == "verlet" for cell in layer.cells)
    assert [tuple(c.weight_ih.shape) for c in layer.cells] == [(N, IN), (N, N)]


@pytest.mark.parametrize("cls", LAYERS)
def test_gradcheck_wrt_input_state_and_parameters(cls):
    layer = cls(IN, N, dtype=torch.float64)
    x = torch.randn(4, B, IN, dtype=torch.float64, requires_grad=True)
    hx = tuple(h.requires_grad_() for h in _parts(_random_hx(layer, 1, B)))
    names, params = zip(*layer.named_parameters(), strict=True)

    def run(x, *tensors):
        state, weights = tensors[: len(hx)], tensors[len(hx) :]
        output, h_n = functional_call(layer, dict(zip(names, weights, strict=True)), (x, _pack(state)))
        return output, *_parts(h_n)

    detached = tuple(p.detach().clone().requires_grad_() for p in params)
    assert gradcheck(run, (x, *hx, *detached))


BAD_INPUTS = [
    (torch.randn(T, B, IN + 1), None, ValueError, r"input_size=3, got shape \(7, 2, 4\)"),
    (torch.randn(T, B, IN, 1), None, ValueError, r"\(T, batch, input_size\) or \(T, input_size\) unbatched"),
    (torch.randn(IN), None, ValueError, "rank 1"),
    (torch.ones(T, B, IN, dtype=torch.int64), None, TypeError, "floating-point"),
    (torch.randn(T, B, IN, dtype=torch.float64), None, TypeError, "dtype torch.float64"),
    (torch.randn(0, B, IN), None, ValueError, "at least one step"),
]


@pytest.mark.parametrize(("x", "hx", "error", "message"), BAD_INPUTS)
def test_bad_input_fails_clearly(x, hx, error, message):
    with pytest.raises(error, match=message):
        HamiltonianRNN(IN, N)(x, hx)


def test_bad_hx_fails_clearly():
    layer = HamiltonianRNN(IN, N, num_layers=L)
    x = torch.randn(T, B, IN)
    good = torch.zeros(L, B, N)
    with pytest.raises(ValueError, match=r"expected hx part q of shape \(2, 2, 5\), got \(1, 2, 5\)"):
        layer(x, (good, torch.zeros(1, B, N)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(p, q\)"):
        layer(x, good)
    with pytest.raises(TypeError, match=r"hx part p has dtype torch\.int64"):
        layer(x, (torch.zeros(L, B, N, dtype=torch.int64), good))
    with pytest.raises(TypeError, match="hx must be a tensor h"):
        AntisymmetricRNN(IN, N)(x, (good, good))


def test_bad_layer_options_fail_clearly():
    with pytest.raises(ValueError, match="num_layers"):
        HamiltonianRNN(IN, N, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        HamiltonianRNN(IN, N, dropout=1.0)
    with pytest.raises(TypeError, match="scheme"):
        AntisymmetricRNN(IN, N, scheme="verlet")


def test_time_dropout_draws_one_mask_per_sequence_for_every_step():
    torch.manual_seed(0)
    layer = HamiltonianRNN(IN, N, num_layers=2, dropout=0.5, time_dropout=True)
    dropped = layer._drop(torch.ones(50, 8, N))
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # the same mask at every step
    assert set(dropped.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
    per_step = HamiltonianRNN(IN, N, num_layers=2, dropout=0.5)._drop(torch.ones(50, 8, N))
    assert not torch.equal(per_step, per_step[:1].expand_as(per_step))
    assert torch.equal(layer.eval()._drop(torch.ones(3, 2, N)), torch.ones(3, 2, N))
    assert "time_dropout=True" in repr(layer)
