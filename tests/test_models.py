"""build_model: every registry name, read-outs, torch baselines, option pass-through, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hrnn
from hrnn.models import MODELS, build_model, capabilities, models_with

NAMES = hrnn.available_models()
IN, HIDDEN, OUT, B, T = 3, 6, 2, 4, 9


def test_public_names_are_importable_from_hrnn():
    for name in (
        "HamiltonianCell",
        "OscillatorCell",
        "CoRNNCell",
        "AntisymmetricCell",
        "GatedAntisymmetricCell",
        "LEMCell",
    ):
        assert issubclass(getattr(hrnn, name), hrnn.RecurrentCell)
    for name in (
        "HamiltonianRNN",
        "OscillatorRNN",
        "CoRNN",
        "AntisymmetricRNN",
        "GatedAntisymmetricRNN",
        "LEMRNN",
    ):
        assert issubclass(getattr(hrnn, name), hrnn.RecurrentLayer)
    assert callable(hrnn.build_model) and callable(hrnn.available_models)
    assert {"build_model", "available_models", "HamiltonianRNN"} <= set(hrnn.__all__)


def test_readme_example_steps_a_sequence_piece_by_piece():
    rnn = hrnn.HamiltonianRNN(input_size=8, hidden_size=16, num_layers=2, batch_first=True)
    x = torch.randn(3, 20, 8)
    output, (p_n, q_n) = rnn(x)
    assert output.shape == (3, 20, 16) and p_n.shape == q_n.shape == (2, 3, 16)
    first, state = rnn(x[:, :12])
    second, (p_end, q_end) = rnn(x[:, 12:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), output)
    torch.testing.assert_close((p_end, q_end), (p_n, q_n))


def test_available_models_lists_every_registry_name():
    assert hrnn.available_models() == list(MODELS)
    assert {"hamiltonian", "oscillator", "cornn", "lem", "lstm", "gru", "rnn"} <= set(MODELS)


def test_capabilities_are_what_the_cells_declare():
    ham = capabilities("hamiltonian")
    # the default log-cosh cell is damped: conformally symplectic, not symplectic
    assert (ham.canonical, ham.symplectic, ham.auto_dt, ham.reversible) == (True, False, True, True)
    assert capabilities("lstm") == hrnn.Capabilities() == capabilities("cornn")
    assert models_with(reversible=True) == ["hamiltonian", "static_hamiltonian", "oscillator"]
    for name, layer in MODELS.items():
        declared = layer.cell_class.capabilities if hasattr(layer, "cell_class") else hrnn.Capabilities()
        assert capabilities(name) == declared
    with pytest.raises(ValueError, match="unknown model 'transformer'; known:"):
        capabilities("transformer")


@pytest.mark.parametrize("name", NAMES)
def test_seq_len_reaches_only_the_cells_that_choose_dt_from_it(name):
    auto = capabilities(name).auto_dt
    model = build_model(name, IN, HIDDEN, OUT, num_blocks=0, seq_len=1000, **({"dt": "auto"} if auto else {}))
    if auto:
        cell = model.rnn.cells[0]
        assert cell.dt.item() == pytest.approx(hrnn.heuristic_dt(1000, cell.max_frequency()))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("readout", "shape"), [("last", (B, OUT)), ("sequence", (B, T, OUT))])
def test_every_model_maps_batch_first_input_to_the_readout_shape(name, readout, shape):
    model = build_model(name, IN, HIDDEN, OUT, readout=readout, num_blocks=0, num_layers=2)
    assert model(torch.randn(B, T, IN)).shape == shape


@pytest.mark.parametrize("name", NAMES)
def test_last_readout_is_the_head_on_the_last_step_of_the_sequence_readout(name):
    model = build_model(name, IN, HIDDEN, OUT, readout="sequence")
    x = torch.randn(B, T, IN)
    last = build_model(name, IN, HIDDEN, OUT, readout="last")
    last.load_state_dict(model.state_dict())
    torch.testing.assert_close(last(x), model(x)[:, -1])


@pytest.mark.parametrize(("name", "torch_class"), [("lstm", nn.LSTM), ("gru", nn.GRU), ("rnn", nn.RNN)])
def test_baselines_equal_the_torch_modules_they_wrap(name, torch_class):
    model = build_model(name, IN, HIDDEN, OUT, num_blocks=0, num_layers=2, readout="last")
    reference = torch_class(IN, HIDDEN, num_layers=2, batch_first=True)
    reference.load_state_dict(model.rnn.state_dict())
    x = torch.randn(B, T, IN)
    output, _ = reference(x)
    torch.testing.assert_close(
        model(x), output[:, -1] @ model.head.weight.T + model.head.bias, rtol=0, atol=1e-6
    )
    assert type(model.rnn) is torch_class


def test_cell_options_pass_through_build_model():
    model = build_model("hamiltonian", IN, HIDDEN, OUT, num_blocks=0, num_layers=2, dt=0.05, scheme="verlet")
    assert all(c.dt.item() == pytest.approx(0.05) and c.scheme.name == "verlet" for c in model.rnn.cells)
    auto = build_model("hamiltonian", IN, HIDDEN, OUT, dt="auto", seq_len=1000)
    for layer in auto.rnn.layers:  # every block's layer
        assert layer.cells[0].dt.item() == pytest.approx(
            hrnn.heuristic_dt(1000, layer.cells[0].max_frequency())
        )
    cornn = build_model("cornn", IN, HIDDEN, OUT, dt=0.1, gamma=1.0, epsilon=2.0)
    assert all(layer.cells[0].gamma.item() == 1.0 for layer in cornn.rnn.layers)
    assert build_model("rnn", IN, HIDDEN, OUT, nonlinearity="relu").rnn.layers[0].nonlinearity == "relu"


@pytest.mark.parametrize("name", NAMES)
def test_dtype_option_builds_the_whole_model_in_float64(name):
    model = build_model(name, IN, HIDDEN, OUT, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    assert model(torch.randn(B, T, IN, dtype=torch.float64)).dtype == torch.float64


def _stack_parameter_count(layer: int, n_in: int, n: int, n_out: int, blocks: int) -> int:
    # per block: LayerNorm, the layer and the GLU mix Linear(n, 2n); then encoder Linear(n_in, n),
    # final LayerNorm and the head.
    block = 2 * n + layer + 2 * n * n + 2 * n
    return n_in * n + n + blocks * block + 2 * n + n * n_out + n_out


def test_hamiltonian_parameter_count_matches_its_equations():
    # weight_ih (2n, n) and bias_ih (2n,) stack the drive's and the gate's, then K_q, K_p, b_p, damping_raw
    n = 128
    layer = 2 * n * n + 2 * n + 2 * n * n + n + n
    model = build_model("hamiltonian", IN, n, OUT)
    assert sum(p.numel() for p in model.parameters()) == _stack_parameter_count(layer, IN, n, OUT, 2)


def test_static_hamiltonian_parameter_count_matches_its_equations():
    # weight_ih, bias_ih, K_q, K_p, b_p, log_timescale, damping_raw
    n = 128
    layer = n * n + n + 2 * n * n + n + n + n
    model = build_model("static_hamiltonian", IN, n, OUT)
    assert sum(p.numel() for p in model.parameters()) == _stack_parameter_count(layer, IN, n, OUT, 2)
    bare = build_model("static_hamiltonian", IN, n, OUT, num_blocks=0, timescales=None, damping=None)
    assert sum(p.numel() for p in bare.parameters()) == n * IN + n + 2 * n * n + n + n * OUT + OUT


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'transformer'; known: \['antisymmetric', "):
        build_model("transformer", IN, HIDDEN, OUT)


def test_unknown_readout_fails_clearly():
    with pytest.raises(
        ValueError, match=r"unknown readout 'first'; known: \['last', 'mean', 'sequence', 'state'\]"
    ):
        build_model("lstm", IN, HIDDEN, OUT, readout="first")


def test_option_of_another_cell_fails_clearly():
    with pytest.raises(TypeError, match="dt"):
        build_model("lstm", IN, HIDDEN, OUT, dt=0.1)


BAD_INPUTS = [
    (torch.randn(B, T, IN + 2), ValueError, r"input_size=3, got shape \(4, 9, 5\)"),
    (torch.randn(T, IN), ValueError, r"expected input of shape \(batch, T, input_size\)"),
    (torch.ones(B, T, IN, dtype=torch.int32), TypeError, "floating-point"),
    (torch.randn(B, T, IN).double(), TypeError, "parameters have dtype torch.float32"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("x", "error", "message"), BAD_INPUTS)
def test_bad_input_fails_clearly_for_every_model(name, x, error, message):
    with pytest.raises(error, match=message):
        build_model(name, IN, HIDDEN, OUT)(x)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_input_gives_a_non_finite_output_as_in_torch_nn(name):
    """Values are not inspected (that would synchronise with the device on every call)."""
    x = torch.randn(B, T, IN)
    x[0, 3, 1] = float("nan")
    out = build_model(name, IN, HIDDEN, OUT)(x)
    assert out[0].isnan().any() and out[1:].isfinite().all()


@pytest.mark.parametrize(
    ("name", "parts"), [("hamiltonian", 2), ("oscillator", 2), ("lstm", 2), ("gru", 1), ("antisymmetric", 1)]
)
def test_state_readout_is_the_head_on_the_last_layers_whole_final_state(name, parts):
    torch.manual_seed(0)
    model = build_model(name, IN, HIDDEN, OUT, readout="state", num_blocks=0, num_layers=2)
    assert model.head.in_features == parts * HIDDEN
    x = torch.randn(B, T, IN)
    _, state = model.rnn(x)
    state = state if isinstance(state, tuple) else (state,)
    expected = model.head(torch.cat([s[-1] for s in state], dim=1))
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="needs the layer's final state"):
        model.decode(model.rnn(x)[0])


def test_building_a_state_readout_draws_nothing_from_the_global_rng():
    # the throw-away step that counts the state's parts runs without dropout
    torch.manual_seed(0)
    build_model("hamiltonian", IN, HIDDEN, OUT, readout="state", num_blocks=0, num_layers=2, dropout=0.5)
    after_model = torch.rand(1)
    torch.manual_seed(0)
    MODELS["hamiltonian"](IN, HIDDEN, num_layers=2, dropout=0.5, batch_first=True)
    nn.Linear(2 * HIDDEN, OUT)
    assert torch.equal(torch.rand(1), after_model)


def test_standardize_is_the_identity_until_calibrated_then_centres_and_scales():
    torch.manual_seed(0)
    model = build_model("lstm", IN, HIDDEN, OUT, readout="state", standardize=True)
    x = torch.randn(40, T, IN)
    output, state = model.rnn(x)
    raw = torch.cat([state[0][-1], state[1][-1]], 1)
    torch.testing.assert_close(model.features(output, state), raw)
    model.calibrate(x, chunk=7)
    standard = model.features(output, state)
    torch.testing.assert_close(standard.mean(0), torch.zeros(2 * HIDDEN), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.std(0), torch.ones(2 * HIDDEN), atol=1e-5, rtol=0)
    assert {"standardize.mean", "standardize.scale"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="standardize=True"):
        build_model("lstm", IN, HIDDEN, OUT).calibrate(x)
    with pytest.raises(ValueError, match="at least 2 finite"):
        model.standardize.calibrate(torch.full((3, 2 * HIDDEN), float("nan")))
