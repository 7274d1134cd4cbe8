"""Gradient measurements against direct autograd, and the vanishing-gradient contrast at T = 1000."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from hrnn.gradients import (
    backward_sensitivity,
    global_gradient_norm,
    hidden_state_gradient_norms,
    parameter_gradient_norms,
    run_stepwise,
)
from hrnn.models import available_models, build_model
from hrnn.step_size import heuristic_dt

NAMES = available_models()
IN, N, B, T = 3, 4, 2, 9


def _parts(h):
    return (h,) if isinstance(h, torch.Tensor) else tuple(h)


def _pack(parts):
    return parts if len(parts) > 1 else parts[0]


def _direct_state_gradient_norm(model, x, y, t: int) -> float:
    """||dL/dh_t|| by running to step t, making h_t a leaf and running the rest (``readout="last"``)."""
    with torch.no_grad():
        h_t = model.rnn(x[:, :t])[1] if t > 0 else None
    if h_t is None:
        template = _parts(model.rnn(x[:, :1])[1])
        leaf = tuple(torch.zeros_like(s, requires_grad=True) for s in template)
    else:
        leaf = tuple(s.clone().requires_grad_() for s in _parts(h_t))
    if t < x.shape[1]:
        output, _ = model.rnn(x[:, t:], _pack(leaf))
        prediction = model.decode(output)
    else:  # the last state: the loss sees it through the head on the last output
        emitted = getattr(model.rnn, "output_index", 0)
        if emitted is None:  # the output is a read-out of the state (LinOSS: C y + D u)
            prediction = model.head(model.rnn.output_from_states(x[:, -1:], _pack(leaf))[:, -1])
        else:
            prediction = model.head(leaf[emitted][-1])
    grads = torch.autograd.grad(F.mse_loss(prediction, y), leaf, allow_unused=True)
    return float(torch.stack([g.pow(2).sum() for g in grads if g is not None]).sum().sqrt())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_hidden_state_gradient_norms_equal_direct_autograd(name, num_layers):
    model = build_model(
        name, IN, N, 2, num_blocks=0, readout="last", num_layers=num_layers, dtype=torch.float64
    )
    x, y = torch.randn(B, T, IN, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    norms = hidden_state_gradient_norms(model, x, y, F.mse_loss)
    assert norms.shape == (T + 1,)
    for t in (0, 4, T):
        assert norms[t].item() == pytest.approx(_direct_state_gradient_norm(model, x, y, t), rel=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_stepwise_run_equals_one_pass(name):
    model = build_model(name, IN, N, 2, num_blocks=0, readout="last", num_layers=2, dtype=torch.float64)
    x = torch.randn(B, T, IN, dtype=torch.float64)
    output, h_n = model.rnn(x)
    stepped, final = run_stepwise(model.rnn, x)
    torch.testing.assert_close(stepped, output, rtol=0, atol=1e-13)
    torch.testing.assert_close(final, _parts(h_n), rtol=0, atol=1e-13)


def test_sequence_readout_gradient_reaches_every_step():
    model = build_model("hamiltonian", IN, N, 2, num_blocks=0, readout="sequence")
    x, y = torch.randn(B, T, IN), torch.randn(B, T, 2)
    norms = hidden_state_gradient_norms(model, x, y, F.mse_loss)
    assert norms.shape == (T + 1,) and bool((norms > 0).all())


def test_gradient_measurement_leaves_parameters_and_grads_untouched():
    model = build_model("hamiltonian", IN, N, 2, num_blocks=0, readout="last")
    x, y = torch.randn(B, T, IN), torch.randn(B, 2)
    F.mse_loss(model(x), y).backward()
    before = {k: (p.detach().clone(), p.grad.clone()) for k, p in model.named_parameters()}
    hidden_state_gradient_norms(model, x, y, F.mse_loss)
    backward_sensitivity(model, x[0])
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k][0]) and torch.equal(p.grad, before[k][1])
    fresh = build_model("lstm", IN, N, 2, num_blocks=0, readout="last")
    hidden_state_gradient_norms(fresh, x, y, F.mse_loss)
    assert all(p.grad is None for p in fresh.parameters())


def test_hamiltonian_gradients_do_not_vanish_at_T_1000_while_vanilla_rnns_do():
    seq_len, hidden, batch = 1000, 16, 4
    x, y = torch.randn(batch, seq_len, IN), torch.randn(batch, 1)
    hamiltonian = build_model(
        "static_hamiltonian",
        IN,
        hidden,
        1,
        num_blocks=0,
        readout="last",
        timescales=None,
        dt="auto",
        seq_len=seq_len,
    )
    assert hamiltonian.rnn.cells[0].dt.item() == pytest.approx(heuristic_dt(seq_len), rel=1e-5)
    norms = hidden_state_gradient_norms(hamiltonian, x, y, F.mse_loss)
    relative = norms / norms[-1]
    assert 0.1 <= relative.min().item() and relative.max().item() <= 10.0
    vanilla = build_model("rnn", IN, hidden, 1, num_blocks=0, readout="last")
    baseline = hidden_state_gradient_norms(vanilla, x, y, F.mse_loss)
    assert (baseline / baseline[-1]).min().item() < 1e-6


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_backward_sensitivity_of_hamiltonian_cells_is_symplectic(scheme):
    model = build_model(
        "hamiltonian",
        IN,
        N,
        1,
        num_blocks=0,
        readout="last",
        dt=0.5,
        damping=None,
        scheme=scheme,
        dtype=torch.float64,
    )
    result = backward_sensitivity(model, torch.randn(30, IN, dtype=torch.float64))
    assert result.symplecticity_error.max().item() < 1e-10
    # Singular values of a symplectic matrix come in pairs (s, 1/s): the norm cannot drop below 1.
    assert result.norms.min().item() >= 1.0 - 1e-12
    oscillator = build_model("oscillator", IN, N, 1, num_blocks=0, readout="last", dtype=torch.float64)
    assert (
        backward_sensitivity(oscillator, torch.randn(30, IN, dtype=torch.float64)).symplecticity_error.max()
        < 1e-10
    )


def test_backward_sensitivity_of_euler_scheme_is_not_symplectic():
    model = build_model(
        "hamiltonian", IN, N, 1, num_blocks=0, readout="last", dt=0.5, scheme="euler", dtype=torch.float64
    )
    assert (
        backward_sensitivity(model, torch.randn(30, IN, dtype=torch.float64)).symplecticity_error.max() > 1e-3
    )


@pytest.mark.parametrize("name", ["hamiltonian", "lstm", "antisymmetric"])
def test_backward_sensitivity_equals_the_direct_jacobian(name):
    model = build_model(name, IN, N, 1, num_blocks=0, readout="last", dtype=torch.float64)
    x = torch.randn(1, T, IN, dtype=torch.float64)
    t = 3
    with torch.no_grad():
        h_t = torch.cat([s[0, 0] for s in _parts(model.rnn(x[:, :t])[1])])
    n_parts = h_t.numel() // N

    def rest(y):
        start = _pack(tuple(y[i * N : (i + 1) * N].reshape(1, 1, N) for i in range(n_parts)))
        return torch.cat([s[0, 0] for s in _parts(model.rnn(x[:, t:], start)[1])])

    M = jacobian(rest, h_t)
    result = backward_sensitivity(model, x)
    assert result.norms.shape == (T + 1,) and result.norms[-1].item() == 1.0
    assert result.norms[t].item() == pytest.approx(torch.linalg.matrix_norm(M, ord=2).item(), rel=1e-10)
    assert (result.symplecticity_error is None) == (name != "hamiltonian")


def test_gradient_measurement_rejects_bad_input_clearly():
    model = build_model("hamiltonian", IN, N, 1, num_blocks=0, readout="last")
    with pytest.raises(ValueError, match="input_size=3"):
        hidden_state_gradient_norms(model, torch.randn(B, T, IN + 1), torch.randn(B, 1), F.mse_loss)
    with pytest.raises(TypeError, match="floating-point"):
        backward_sensitivity(model, torch.ones(T, IN, dtype=torch.long))


def test_backward_sensitivity_rejects_stacked_models_and_batches():
    with pytest.raises(ValueError, match="single-layer"):
        backward_sensitivity(
            build_model("hamiltonian", IN, N, 1, num_blocks=0, readout="last", num_layers=2),
            torch.randn(T, IN),
        )
    with pytest.raises(ValueError, match="one sequence"):
        backward_sensitivity(
            build_model("hamiltonian", IN, N, 1, num_blocks=0, readout="last"), torch.randn(2, T, IN)
        )


def test_parameter_and_global_gradient_norms_match_torch():
    model = build_model("gru", IN, N, 2, num_blocks=0, readout="last")
    assert parameter_gradient_norms(model) == {} and global_gradient_norm(model) == 0.0
    F.mse_loss(model(torch.randn(B, T, IN)), torch.randn(B, 2)).backward()
    norms = parameter_gradient_norms(model)
    assert set(norms) == {k for k, _ in model.named_parameters()}
    assert norms["head.weight"] == pytest.approx(model.head.weight.grad.norm().item())
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert global_gradient_norm(model) == pytest.approx(total.item(), rel=1e-6)


def test_state_readout_gradient_at_T_is_the_head_weight_times_the_loss_gradient():
    # L = mean((W [p_T, q_T] + b - y)^2), so dL/dh_T = 2 (y_hat - y) W / (batch * out), p included
    torch.manual_seed(0)
    model = build_model("hamiltonian", IN, N, 2, num_blocks=0, readout="state", dtype=torch.float64)
    x, y = torch.randn(B, T, IN, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    norms = hidden_state_gradient_norms(model, x, y, F.mse_loss)
    with torch.no_grad():
        expected = 2 * (model(x) - y) @ model.head.weight / (B * 2)
    assert norms[-1].item() == pytest.approx(expected.norm().item(), rel=1e-12)
    assert expected[:, :N].norm() > 0  # the momentum p_T is read, unlike readout="last"
