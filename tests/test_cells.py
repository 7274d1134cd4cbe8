"""Cells: step equations against the papers' formulas, symplecticity, shapes, initialisation."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from hrnn.cells import (
    AntisymmetricCell,
    CoRNNCell,
    GatedAntisymmetricCell,
    HamiltonianCell,
    OscillatorCell,
    RecurrentCell,
    SeparableHamiltonianCell,
)
from hrnn.hamiltonians import canonical_j
from hrnn.integrators import Scheme, Substep
from hrnn.models import MODELS
from hrnn.rnn import RecurrentLayer
from hrnn.step_size import heuristic_dt

# every cell of the registry's hrnn layers
# the cells of the RecurrentCell protocol (project / step / scan); LinOSS runs whole sequences only
CELLS = [
    layer.cell_class
    for layer in MODELS.values()
    if issubclass(getattr(layer, "cell_class", type(None)), RecurrentCell)
]
N, IN, B = 5, 3, 4


def _state(cell, batch=B, dtype=torch.float64):
    return tuple(torch.randn(batch, N, dtype=dtype) for _ in cell.state_names)


def _symplecticity_error(cell: HamiltonianCell | OscillatorCell) -> float:
    """||M^T J M - J|| of one step's Jacobian M = d(p', q')/d(p, q) at a random state and input."""
    u = 2.0 * torch.randn(1, cell.gates * N, dtype=torch.float64)
    y = torch.randn(2 * N, dtype=torch.float64)

    def one_step(y):
        p, q = cell.step(u, y[:N].unsqueeze(0), y[N:].unsqueeze(0))
        return torch.cat([p[0], q[0]])

    M = jacobian(one_step, y)
    J = canonical_j(N, dtype=torch.float64)
    return float(torch.linalg.matrix_norm(M.T @ J @ M - J))


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_hamiltonian_step_is_symplectic(scheme):
    cell = HamiltonianCell(IN, N, dt=0.5, scheme=scheme, damping=None, dtype=torch.float64)
    with torch.no_grad():  # off the zero-bias initialisation, so every term of the step matters
        cell.bias_p.normal_()
        cell.weight_q.mul_(1.5)
    assert _symplecticity_error(cell) < 1e-10


def test_oscillator_step_is_symplectic():
    cell = OscillatorCell(IN, N, dt=0.5, alpha=2.0, dtype=torch.float64)
    assert _symplecticity_error(cell) < 1e-10


def test_euler_scheme_step_is_not_symplectic():
    cell = HamiltonianCell(IN, N, dt=0.5, scheme="euler", dtype=torch.float64)
    assert _symplecticity_error(cell) > 1e-3
    assert not cell.symplectic
    assert HamiltonianCell(IN, N, damping=None).symplectic and OscillatorCell(IN, N).symplectic
    assert not HamiltonianCell(IN, N).symplectic  # the default is damped: conformally symplectic


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet", "euler"])
def test_hamiltonian_step_matches_log_cosh_equations(scheme):
    cell = HamiltonianCell(IN, N, dt=0.3, timescales=None, damping=None, scheme=scheme, dtype=torch.float64)
    x = torch.randn(B, IN, dtype=torch.float64)
    p, q = _state(cell)
    Kp, Kq, bp, h = cell.weight_p, cell.weight_q, cell.bias_p, 0.3
    u = x @ cell.weight_ih.T + cell.bias_ih

    def grad_v(q):
        return torch.tanh(q @ Kq.T + u) @ Kq

    def grad_t(p):
        return torch.tanh(p @ Kp.T + bp) @ Kp

    if scheme == "symplectic_euler":
        p1 = p - h * grad_v(q)
        q1 = q + h * grad_t(p1)
    elif scheme == "verlet":
        p_half = p - h / 2 * grad_v(q)
        q1 = q + h * grad_t(p_half)
        p1 = p_half - h / 2 * grad_v(q1)
    else:
        p1, q1 = p - h * grad_v(q), q + h * grad_t(p)
    got = cell(x, (p, q))
    torch.testing.assert_close(got, (p1, q1), rtol=0, atol=1e-14)


def test_oscillator_step_matches_unicornn_equations():
    cell = OscillatorCell(IN, N, dt=0.4, alpha=3.0, dtype=torch.float64)
    x = torch.randn(B, IN, dtype=torch.float64)
    p, q = _state(cell)
    h = 0.4 * torch.sigmoid(cell.c)
    u = x @ cell.weight_ih.T + cell.bias_ih
    p1 = p - h * (torch.tanh(cell.w * q + u) + 3.0 * q)
    torch.testing.assert_close(cell(x, (p, q)), (p1, q + h * p1), rtol=0, atol=1e-14)


def test_cornn_step_matches_paper_equations():
    cell = CoRNNCell(IN, N, dt=0.1, gamma=2.0, epsilon=3.0, dtype=torch.float64)
    x = torch.randn(B, IN, dtype=torch.float64)
    z, y = _state(cell)
    u = x @ cell.weight_ih.T + cell.bias_ih
    z1 = z + 0.1 * (torch.tanh(y @ cell.weight_hy.T + z @ cell.weight_hz.T + u) - 2.0 * y - 3.0 * z)
    torch.testing.assert_close(cell(x, (z, y)), (z1, y + 0.1 * z1), rtol=0, atol=1e-14)


@pytest.mark.parametrize("gated", [False, True])
def test_antisymmetric_step_matches_paper_equations(gated):
    cls = GatedAntisymmetricCell if gated else AntisymmetricCell
    cell = cls(IN, N, epsilon=0.2, gamma=0.1, dtype=torch.float64)
    x = torch.randn(B, IN, dtype=torch.float64)
    (h,) = _state(cell)
    A = cell.weight_hh - cell.weight_hh.T - 0.1 * torch.eye(N, dtype=torch.float64)
    V, b = cell.weight_ih[:N], cell.bias_ih[:N]
    candidate = torch.tanh(h @ A.T + x @ V.T + b)
    if gated:
        Vz, bz = cell.weight_ih[N:], cell.bias_ih[N:]
        candidate = torch.sigmoid(h @ A.T + x @ Vz.T + bz) * candidate
    torch.testing.assert_close(cell(x, h), h + 0.2 * candidate, rtol=0, atol=1e-14)


@pytest.mark.parametrize("cls", CELLS)
def test_scan_of_projected_sequence_equals_repeated_single_steps(cls):
    cell = cls(IN, N, dtype=torch.float64)
    x = torch.randn(6, B, IN, dtype=torch.float64)
    state = _state(cell)
    outputs, *final = cell.scan(cell.project(x), *state)
    stepped = state
    for t in range(x.shape[0]):
        stepped = cell(x[t], stepped if len(stepped) > 1 else stepped[0])
        stepped = stepped if isinstance(stepped, tuple) else (stepped,)
        torch.testing.assert_close(outputs[t], stepped[cell.output_index], rtol=0, atol=1e-13)
    torch.testing.assert_close(tuple(final), stepped, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
def test_cell_forward_shapes_follow_lstm_cell(cls, batched, with_hx):
    cell = cls(IN, N)
    x = torch.randn(B, IN) if batched else torch.randn(IN)
    state_shape = (B, N) if batched else (N,)
    hx = tuple(torch.randn(state_shape) for _ in cell.state_names) if with_hx else None
    if hx is not None and len(hx) == 1:
        hx = hx[0]
    out = cell(x, hx)
    parts = out if isinstance(out, tuple) else (out,)
    assert len(parts) == len(cell.state_names)
    assert all(p.shape == state_shape for p in parts)


def test_unbatched_step_equals_batch_of_one():
    cell = HamiltonianCell(IN, N)
    x, p, q = torch.randn(IN), torch.randn(N), torch.randn(N)
    single = cell(x, (p, q))
    batch = cell(x[None], (p[None], q[None]))
    torch.testing.assert_close(single, tuple(b[0] for b in batch))


@pytest.mark.parametrize("cls", CELLS)
def test_hyperparameters_are_buffers_that_follow_dtype(cls):
    cell = cls(IN, N).double()
    buffers = dict(cell.named_buffers())
    params = dict(cell.named_parameters())
    assert buffers and not set(buffers) & set(params)
    assert all(b.dtype == torch.float64 and b.dim() == 0 for b in buffers.values())
    assert set(buffers) <= set(cell.state_dict())


def test_factory_dtype_keeps_hyperparameters_exact():
    # Built in float64 directly, dt = 0.3 is not first rounded to float32 (as .double() would).
    cell = HamiltonianCell(IN, N, dt=0.3, dtype=torch.float64)
    assert cell.dt.item() == 0.3
    assert all(p.dtype == torch.float64 for p in cell.parameters())


def test_hamiltonian_initialisation_is_orthogonal():
    cell = HamiltonianCell(IN, 16, timescales=None, dtype=torch.float64)
    eye = torch.eye(16, dtype=torch.float64)
    for K in (cell.weight_p, cell.weight_q):
        torch.testing.assert_close(K @ K.T, eye, atol=1e-6, rtol=0)
    assert cell.max_frequency() == pytest.approx(1.0, abs=1e-5)
    assert torch.count_nonzero(cell.bias_p) == 0


def test_hamiltonian_gain_scales_every_singular_value_and_the_frequency_bound():
    cell = HamiltonianCell(IN, 16, gain=0.3, timescales=None, dtype=torch.float64)
    for K in (cell.weight_p, cell.weight_q):
        torch.testing.assert_close(torch.linalg.svdvals(K), torch.full((16,), 0.3, dtype=torch.float64))
    assert cell.max_frequency() == pytest.approx(0.09, rel=1e-6)
    assert HamiltonianCell(
        IN, N, gain=0.3, timescales=None, dt="auto", seq_len=1000
    ).dt.item() == pytest.approx(heuristic_dt(1000, 0.09), rel=1e-5)


@pytest.mark.parametrize("gain", [0.0, -1.0, float("nan")])
def test_hamiltonian_gain_must_be_positive(gain):
    with pytest.raises(ValueError, match="gain must be finite and > 0"):
        HamiltonianCell(IN, N, gain=gain)


def test_reset_parameters_redraws_weights():
    cell = OscillatorCell(IN, 64)
    before = {k: v.clone() for k, v in cell.named_parameters()}
    cell.reset_parameters()
    assert not torch.equal(before["w"], cell.w)
    assert bool((cell.w >= 0).all() and (cell.w <= 1).all())
    assert bool((cell.c.abs() <= 0.1).all())


@pytest.mark.parametrize("cls", [HamiltonianCell, OscillatorCell])
def test_dt_auto_applies_the_heuristic_to_the_initialised_energy(cls):
    cell = cls(IN, N, dt="auto", seq_len=1000)
    assert cell.dt.item() == pytest.approx(heuristic_dt(1000, cell.max_frequency()), rel=1e-6)


def test_bad_cell_options_fail_clearly():
    with pytest.raises(ValueError, match="seq_len"):
        HamiltonianCell(IN, N, dt="auto")
    with pytest.raises(ValueError, match="dt must be"):
        HamiltonianCell(IN, N, dt="large")
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        HamiltonianCell(IN, N, dt=-0.1)
    with pytest.raises(ValueError, match=r"known: \['euler', 'symplectic_euler', 'verlet'\]"):
        HamiltonianCell(IN, N, scheme="rk4")
    with pytest.raises(ValueError, match="hidden_size"):
        CoRNNCell(IN, 0)
    with pytest.raises(ValueError, match="alpha"):
        OscillatorCell(IN, N, alpha=-1.0)


def test_bad_step_input_fails_clearly():
    cell = HamiltonianCell(IN, N)
    with pytest.raises(ValueError, match=r"input_size=3, got shape \(4, 2\)"):
        cell(torch.randn(B, 2))
    with pytest.raises(TypeError, match="floating-point"):
        cell(torch.ones(B, IN, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected hx part q of shape \(4, 5\), got \(4, 6\)"):
        cell(torch.randn(B, IN), (torch.randn(B, N), torch.randn(B, N + 1)))


class QuarticCell(SeparableHamiltonianCell):
    """A user's energy given by its two gradient maps: V(q, u) = sum k q^4 / 4 + u q, T(p) = |p|^2 / 2."""

    def __init__(self, input_size, hidden_size, **kw):
        super().__init__(input_size, hidden_size, **kw)
        self.k = torch.nn.Parameter(torch.rand(hidden_size, dtype=self.weight_ih.dtype) + 0.5)
        self.register_buffer("dt", torch.tensor(0.05, dtype=self.weight_ih.dtype))
        self.reset_parameters()

    def grad_v(self, q, u_t):
        return self.k * q**3 + u_t

    def grad_t(self, p):
        return p


class QuarticRNN(RecurrentLayer):
    cell_class = QuarticCell


LEAPFROG = Scheme(
    "my_leapfrog", ((Substep("drift", 0.5),), (Substep("kick"),), (Substep("drift", 0.5),)), True, 2
)


def test_a_user_scheme_object_is_kept_and_runs_the_cell():
    cell = HamiltonianCell(
        2, 4, dt=0.1, timescales=None, damping=None, scheme=LEAPFROG, fast=False, dtype=torch.float64
    )
    assert cell.scheme is LEAPFROG and cell.symplectic and "scheme=my_leapfrog" in repr(cell)
    x = torch.randn(6, 3, 2, dtype=torch.float64)
    out, *_ = cell.forward_sequence(x, *cell.initial_state(3, x))
    # drift h/2, kick h, drift h/2, written by hand
    p, q, h = *cell.initial_state(3, x), cell.dt
    for u_t in cell.project(x):
        q = q + 0.5 * h * torch.tanh(p @ cell.weight_p.T + cell.bias_p) @ cell.weight_p
        p = p - h * torch.tanh(q @ cell.weight_q.T + u_t) @ cell.weight_q
        q = q + 0.5 * h * torch.tanh(p @ cell.weight_p.T + cell.bias_p) @ cell.weight_p
    torch.testing.assert_close(out[-1], q, rtol=0, atol=1e-12)


def test_a_user_energy_and_scheme_get_reversible_memory_with_stored_gradients():
    torch.manual_seed(0)
    stored = QuarticRNN(2, 4, scheme=LEAPFROG, batch_first=True, dtype=torch.float64)
    reversible = QuarticRNN(2, 4, scheme=LEAPFROG, batch_first=True, memory="reversible", anchor_every=7,
                            dtype=torch.float64)  # fmt: skip
    reversible.load_state_dict(stored.state_dict())
    x = torch.randn(3, 30, 2, dtype=torch.float64, requires_grad=True)
    grads = []
    for layer in (stored, reversible):
        output, (p, q) = layer(x)
        loss = (output**2).sum() + (p * q).sum()
        grads.append(torch.autograd.grad(loss, [x, *layer.parameters()]))
    for a, e in zip(*grads, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


def test_a_symplectic_scheme_must_be_a_composition_of_single_substeps():
    with pytest.raises(ValueError, match="declared symplectic"):
        Scheme("bad", ((Substep("kick"), Substep("drift")),), symplectic=True, order=1)
