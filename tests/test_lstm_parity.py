"""The hrnn layers behave as torch.nn.LSTM where a user relies on it: bidirectional stacks,
PackedSequence input, an empty batch, the emitted part of h_n, and state_dicts that carry every
option that changes the function."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hrnn.cells import LEMCell, RecurrentCell
from hrnn.models import MODELS
from hrnn.rnn import RecurrentLayer

HRNN_LAYERS = [layer for layer in MODELS.values() if issubclass(layer, RecurrentLayer)]
# the layers whose output is one part of their state (LinOSS emits a read-out C y + D u of it)
EMITTING_LAYERS = [layer for layer in HRNN_LAYERS if issubclass(layer.cell_class, RecurrentCell)]
ALL_LAYERS = list(MODELS.values())
IN, N, B, T, L = 3, 4, 3, 6, 2
LENGTHS = [4, 6, 1, 4]  # unsorted, with a tie and a one-step sequence


def _parts(h):
    return (h,) if isinstance(h, torch.Tensor) else tuple(h)


def _pack(parts):
    return parts if len(parts) > 1 else parts[0]


def _state(layer, *leading):
    """A random state of ``layer``'s form (torch's layers: h, or (h, c))."""
    names = getattr(layer, "state_names", ("h", "c") if isinstance(layer, nn.LSTM) else ("h",))
    return _pack(tuple(torch.randn(*leading, N, dtype=torch.float64) for _ in names))


def _path_options(cls):
    """Every path a layer runs: the Hamiltonian cells' fast scans, plain loop and reversible memory."""
    if not getattr(cls, "cell_class", None) or not cls.cell_class.capabilities.reversible:
        return [{}]
    return [{}, {"fast": False}, {"memory": "reversible", "anchor_every": 2}]


def _cases(layers):
    return [pytest.param(cls, o, id=f"{cls.__name__}-{o}") for cls in layers for o in _path_options(cls)]


# ---------------------------------------------------------------------------------- bidirectional


@pytest.mark.parametrize(("cls", "options"), _cases(HRNN_LAYERS))
def test_bidirectional_equals_a_hand_built_pair_of_unidirectional_layers(cls, options):
    torch.manual_seed(0)
    bi = cls(IN, N, num_layers=L, bidirectional=True, dtype=torch.float64, **options)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    hx = _state(bi, 2 * L, B)
    output, h_n = bi(x, hx)
    inputs, finals = x, []
    for layer in range(L):
        halves = []
        for direction, seq in enumerate((inputs, inputs.flip(0))):
            k = 2 * layer + direction
            single = cls(inputs.shape[-1], N, dtype=torch.float64, **options)
            single.cells[0].load_state_dict(bi.cells[k].state_dict())
            out, h = single(seq, _pack(tuple(part[k : k + 1] for part in _parts(hx))))
            halves.append(out if direction == 0 else out.flip(0))
            finals.append(_parts(h))
        inputs = torch.cat(halves, -1)
    torch.testing.assert_close(output, inputs, rtol=0, atol=1e-12)
    expected = tuple(torch.cat(parts) for parts in zip(*finals, strict=True))
    torch.testing.assert_close(_parts(h_n), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", ALL_LAYERS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_bidirectional_shapes_and_parameters_follow_lstm(cls, batch_first):
    layer = cls(IN, N, num_layers=L, batch_first=batch_first, bidirectional=True)
    reference = nn.LSTM(IN, N, num_layers=L, batch_first=batch_first, bidirectional=True)
    x = torch.randn(B, T, IN) if batch_first else torch.randn(T, B, IN)
    output, h_n = layer(x)
    expected_output, (expected_h, _) = reference(x)
    assert output.shape == expected_output.shape
    assert all(part.shape == expected_h.shape for part in _parts(h_n))
    if isinstance(layer, RecurrentLayer):  # layer l > 0 reads both directions, as LSTM's weight_ih_l1
        assert [c.input_size for c in layer.cells] == [IN, IN, 2 * N, 2 * N]
        assert "bidirectional=True" in repr(layer)


# ------------------------------------------------------------------------------- packed sequences


@pytest.mark.parametrize(("cls", "options"), _cases(ALL_LAYERS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_batch_equals_each_sequence_run_alone(cls, options, bidirectional):
    torch.manual_seed(0)
    layer = cls(IN, N, num_layers=L, bidirectional=bidirectional, dtype=torch.float64, **options)
    directions = 2 if bidirectional else 1
    x = torch.randn(max(LENGTHS), len(LENGTHS), IN, dtype=torch.float64)
    hx = _state(layer, directions * L, len(LENGTHS))
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    output, h_n = layer(packed, hx)
    assert isinstance(output, type(packed))
    assert torch.equal(output.batch_sizes, packed.batch_sizes)
    assert torch.equal(output.unsorted_indices, packed.unsorted_indices)
    padded, lengths = pad_packed_sequence(output)
    assert lengths.tolist() == LENGTHS
    for b, length in enumerate(LENGTHS):
        alone, h_alone = layer(x[:length, b : b + 1], _pack(tuple(h[:, b : b + 1] for h in _parts(hx))))
        torch.testing.assert_close(padded[:length, b : b + 1], alone, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            tuple(h[:, b : b + 1] for h in _parts(h_n)), _parts(h_alone), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("cls", HRNN_LAYERS)
def test_packed_batch_gradients_equal_the_padded_sequences_run_alone(cls):
    torch.manual_seed(0)
    layer = cls(IN, N, bidirectional=True, dtype=torch.float64)
    x = torch.randn(max(LENGTHS), len(LENGTHS), IN, dtype=torch.float64, requires_grad=True)
    output, h_n = layer(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False))
    loss = (output.data**2).sum() + sum((h**2).sum() for h in _parts(h_n))
    packed_grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    loss = 0
    for b, length in enumerate(LENGTHS):
        out, h = layer(x[:length, b : b + 1])
        loss = loss + (out**2).sum() + sum((part**2).sum() for part in _parts(h))
    for got, expected in zip(packed_grads, torch.autograd.grad(loss, [x, *layer.parameters()]), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-11)


def test_packed_input_is_checked_like_a_tensor():
    layer = HRNN_LAYERS[0](IN, N, num_layers=L)
    packed = pack_padded_sequence(torch.randn(T, B, IN + 1), torch.tensor([T] * B))
    with pytest.raises(ValueError, match="input_size=3"):
        layer(packed)
    packed = pack_padded_sequence(torch.randn(T, B, IN), torch.tensor([T] * B))
    with pytest.raises(ValueError, match=r"of shape \(2, 3, 4\), got \(2, 2, 4\)"):
        layer(packed, _pack(tuple(torch.zeros(L, B - 1, N) for _ in layer.state_names)))


# ------------------------------------------------------------------------------------ empty batch


@pytest.mark.parametrize(("cls", "options"), _cases(ALL_LAYERS))
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_an_empty_batch_gives_empty_results_of_lstm_shapes(cls, options, batch_first, with_hx):
    layer = cls(IN, N, num_layers=L, batch_first=batch_first, bidirectional=True, **options)
    x = torch.randn(0, T, IN) if batch_first else torch.randn(T, 0, IN)
    x.requires_grad_()
    hx = _state(layer, 2 * L, 0) if with_hx else None
    hx = None if hx is None else _pack(tuple(h.float() for h in _parts(hx)))
    output, h_n = layer(x, hx)
    assert output.shape == ((0, T, 2 * N) if batch_first else (T, 0, 2 * N))
    assert all(part.shape == (2 * L, 0, N) for part in _parts(h_n))
    (output.sum() + sum(part.sum() for part in _parts(h_n))).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is None or not p.grad.any() for p in layer.parameters())


def test_an_input_without_steps_still_fails_clearly():
    for x in (torch.randn(0, B, IN), torch.randn(0, 0, IN)):
        with pytest.raises(ValueError, match="at least one step"):
            HRNN_LAYERS[0](IN, N)(x)
    with pytest.raises(ValueError, match="at least one step"):
        HRNN_LAYERS[0](IN, N, batch_first=True)(torch.randn(B, 0, IN))


def test_a_cell_steps_an_empty_batch_as_lstm_cell_does():
    cell = LEMCell(IN, N)
    z, y = cell(torch.randn(0, IN))
    assert z.shape == y.shape == nn.LSTMCell(IN, N)(torch.randn(0, IN))[0].shape == (0, N)


# ------------------------------------------------------------------------------- the emitted part


@pytest.mark.parametrize("cls", EMITTING_LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_emitted_picks_the_part_that_output_holds(cls, bidirectional):
    layer = cls(IN, N, num_layers=L, bidirectional=bidirectional)
    output, h_n = layer(torch.randn(T, B, IN))
    emitted = layer.emitted(h_n)
    assert emitted.shape == (layer.num_directions * L, B, N)
    if bidirectional:  # forward direction ends at the last step, reverse at the first
        torch.testing.assert_close(emitted[-2], output[-1, :, :N], rtol=0, atol=0)
        torch.testing.assert_close(emitted[-1], output[0, :, N:], rtol=0, atol=0)
    else:
        torch.testing.assert_close(emitted[-1], output[-1], rtol=0, atol=0)
    if len(layer.state_names) == 2:  # the selective layer emits p, the first part, as LSTM emits h of
        # (h_n, c_n); the others the second, q of (p_n, q_n) or y of (z, y)
        assert emitted is h_n[0 if cls is MODELS["hamiltonian"] else 1]


def test_readme_idiom_for_the_last_layers_state_matches_lstms():
    x = torch.randn(T, B, IN)
    output, (h_n, _) = nn.LSTM(IN, N, num_layers=L)(x)
    torch.testing.assert_close(h_n[-1], output[-1], rtol=0, atol=0)
    output, (h_n, _) = MODELS["hamiltonian"](IN, N, num_layers=L)(x)
    torch.testing.assert_close(h_n[-1], output[-1], rtol=0, atol=0)
    output, (p_n, q_n) = MODELS["static_hamiltonian"](IN, N, num_layers=L)(x)
    torch.testing.assert_close(q_n[-1], output[-1], rtol=0, atol=0)
    assert not torch.allclose(p_n[-1], output[-1])


# ---------------------------------------------------------------------- options in the state_dict


class ScaledLEMCell(LEMCell):
    """LEM with its drive scaled by an option that no parameter or buffer holds."""

    def __init__(self, input_size, hidden_size, *, scale: float = 1.0, **kw) -> None:
        self.scale = scale
        super().__init__(input_size, hidden_size, **kw)

    def function_options(self):
        return {**super().function_options(), "scale": self.scale}

    def step(self, u_t, z, y):
        return super().step(self.scale * u_t, z, y)


class ScaledLEMRNN(RecurrentLayer):
    cell_class = ScaledLEMCell


def _saved(state_dict):
    """``state_dict`` through a file, read back as untrusted weights are."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("cls", [*HRNN_LAYERS, ScaledLEMRNN])
def test_state_dict_round_trip_through_weights_only_load_keeps_the_function(cls):
    torch.manual_seed(0)
    source = cls(IN, N, num_layers=L, bidirectional=True, dtype=torch.float64)
    target = cls(IN, N, num_layers=L, bidirectional=True, dtype=torch.float64)
    saved = _saved(source.state_dict())
    assert saved[f"cells.{2 * L - 1}._extra_state"] == {
        "function_options": source.cells[-1].function_options()
    }
    target.load_state_dict(saved)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_weights_saved_with_another_option_value_are_refused_before_any_copy():
    trained = ScaledLEMRNN(IN, N, num_layers=L, scale=2.0)
    other = ScaledLEMRNN(IN, N, num_layers=L, scale=0.5)
    before = {k: v.clone() for k, v in other.named_parameters()}
    with pytest.raises(ValueError, match=r"cells\.0 \(ScaledLEMCell\).*scale=2\.0 but it has scale=0\.5"):
        other.load_state_dict(_saved(trained.state_dict()))
    assert all(torch.equal(v, before[k]) for k, v in other.named_parameters())
    x = torch.randn(T, B, IN)
    assert not torch.allclose(other(x)[0], trained(x)[0])


@pytest.mark.parametrize("cls", HRNN_LAYERS)
def test_every_saved_option_is_checked_on_loading(cls):
    layer = cls(IN, N)
    state = layer.state_dict()
    options = state["cells.0._extra_state"]["function_options"]
    for name, value in {**options, "an_option_it_lacks": 1}.items():
        tampered = {**state, "cells.0._extra_state": {"function_options": {**options, name: ("not", value)}}}
        with pytest.raises(ValueError, match=f"cells.0 .*{name}="):
            cls(IN, N).load_state_dict(tampered)


@pytest.mark.parametrize("cls", [*HRNN_LAYERS, ScaledLEMRNN])
def test_weights_saved_without_options_still_load_strictly(cls):
    source = cls(IN, N, num_layers=L)
    old = {k: v for k, v in source.state_dict().items() if not k.endswith("_extra_state")}
    target = cls(IN, N, num_layers=L)
    target.load_state_dict(old)  # strict: an older checkpoint is accepted as having the options
    x = torch.randn(T, B, IN)
    torch.testing.assert_close(target(x)[0], source(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("cls", EMITTING_LAYERS)
def test_options_held_in_buffers_travel_in_the_state_dict(cls):
    # the baselines' and LEM's options (dt, gamma, epsilon, alpha) are all buffers, so they need no
    # saved options: weights loaded into a layer built with other values compute the saved function
    source = cls(IN, N, dtype=torch.float64)
    options = {
        name: 1.5 * float(value) for name, value in source.cells[0].named_buffers() if value.dim() == 0
    }
    assert options
    target = cls(IN, N, dtype=torch.float64, **options)
    assert any(not torch.equal(b, target.cells[0].get_buffer(k)) for k, b in source.cells[0].named_buffers())
    target.load_state_dict(source.state_dict())
    x = torch.randn(T, B, IN, dtype=torch.float64)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
