"""The selective Hamiltonian cell: its step against the equations by hand, symplecticity for every
input, the closed gate freezing the state, and its reversible path (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev

from hrnn import SelectiveHamiltonianRNN, build_model
from hrnn.cells import SelectiveHamiltonianCell
from hrnn.hamiltonians import canonical_j

IN, N, B = 3, 5, 4
F64 = torch.float64


def _cell(**options) -> SelectiveHamiltonianCell:
    torch.manual_seed(0)
    cell = SelectiveHamiltonianCell(IN, N, dtype=F64, **options)
    with torch.no_grad():  # a state-dependent gate, a nonzero b_p and K off the orthogonal
        cell.weight_ih.normal_()  # initialisation: a frequency bound of 1.5 * 1.3, over which
        cell.bias_p.normal_()  # the guard acts at dt = 0.7
        cell.weight_q.mul_(1.5)
        cell.weight_p.mul_(1.3)
    return cell


def _frequency_bound(cell: SelectiveHamiltonianCell) -> float:
    return math.prod(torch.linalg.matrix_norm(k.detach(), 2).item() for k in (cell.weight_q, cell.weight_p))


def test_a_step_is_the_equations_written_by_hand():
    cell = _cell(damping=0.2, dt=0.7)
    x, p, q = (torch.randn(B, k, dtype=F64) for k in (IN, N, N))
    u = x @ cell.weight_ih[:N].T + cell.bias_ih[:N]
    r = torch.sigmoid(x @ cell.weight_ih[N:].T + cell.bias_ih[N:])
    omega = _frequency_bound(cell)
    h = min(0.7, 1.5 / omega)  # the guard: h omega <= 1.5
    p1 = torch.exp(-torch.log1p(torch.exp(cell.damping_raw)) * r**4) * p
    p1 = p1 - h * r * (torch.tanh((r * (q + u)) @ cell.weight_q.T) @ cell.weight_q)
    q1 = q + h * r * (torch.tanh((r * p1) @ cell.weight_p.T + cell.bias_p) @ cell.weight_p)
    p2, q2 = cell(x, (p, q))
    torch.testing.assert_close(p2, p1, rtol=0, atol=1e-12)
    torch.testing.assert_close(q2, q1, rtol=0, atol=1e-12)


def _jacobian(cell: SelectiveHamiltonianCell, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    u = cell.project(x).unsqueeze(0)
    return jacrev(lambda y: torch.cat(cell.step(u, y[None, :N], y[None, N:]), -1)[0])(y)


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_without_damping_every_step_is_symplectic_whatever_the_input(scheme):
    cell = _cell(damping=None, scheme=scheme)
    J = canonical_j(N, dtype=F64)
    for _ in range(3):
        M = _jacobian(cell, 3 * torch.randn(IN, dtype=F64), torch.randn(2 * N, dtype=F64))
        torch.testing.assert_close(M.T @ J @ M, J, rtol=0, atol=1e-10)


def test_damping_contracts_volume_by_the_product_of_the_time_warped_decays():
    cell = _cell(damping=0.3)
    x = torch.randn(IN, dtype=F64)
    M = _jacobian(cell, x, torch.randn(2 * N, dtype=F64))
    r = torch.sigmoid(cell.project(x)[N:])
    rate = torch.nn.functional.softplus(cell.damping_raw) * r**4
    assert torch.linalg.det(M).item() == pytest.approx(math.exp(-rate.sum().item()), rel=1e-10)


def test_the_friction_bounds_zeta_theta_squared_and_meets_it_at_the_guards_limit():
    # a step rotates unit i by at most theta = h omega r^2 <= c r^2 (the guard: h omega <= c); the
    # friction e^{-zeta r^4} is at least e^{-zeta theta^2 / c^2}, with equality once the guard
    # acts, whatever the scale of K
    x = torch.randn(B, IN, dtype=F64)
    c = SelectiveHamiltonianCell.STABILITY_MARGIN
    for scale, guard_acts in ((0.5, False), (4.0, True)):
        cell = _cell(damping=0.3)
        with torch.no_grad():
            cell.weight_q.mul_(scale)
            cell.weight_p.mul_(scale)
        r = torch.sigmoid(cell.project(x)[:, N:])
        h = float(cell.step_size())
        theta = h * _frequency_bound(cell) * r.square()
        rate = -torch.log(cell.friction(cell.step_size(), r.square()))
        torch.testing.assert_close(rate, 0.3 * r**4, rtol=1e-9, atol=0)
        assert (h < 0.5) == guard_acts
        if guard_acts:
            torch.testing.assert_close(rate, 0.3 * (theta / c) ** 2, rtol=1e-9, atol=0)
        else:
            assert bool((rate > 0.3 * (theta / c) ** 2 * 1.5).all())


def test_a_closed_gate_freezes_the_unit_and_keeps_out_its_input():
    cell = _cell(damping=0.3)
    with torch.no_grad():
        cell.weight_ih[N:].zero_()
        cell.bias_ih[N:] = -80.0  # r = sigmoid(-80) ~ 2e-35: the units take no time step
    x, p, q = (torch.randn(B, k, dtype=F64) for k in (IN, N, N))
    p1, q1 = cell(10 * x, (p, q))
    torch.testing.assert_close(p1, p, rtol=0, atol=1e-15)
    torch.testing.assert_close(q1, q, rtol=0, atol=1e-15)


def test_what_a_unit_writes_scales_as_the_square_of_its_gate_as_its_clock_does():
    # the drive displaces the potential's minimum: from rest, one step writes -h r^2 K_q^T K_q u
    # to leading order, so halving every gate quarters the write (Mamba's write ~ its step Delta)
    cell = _cell(damping=None)
    x, zero = torch.randn(B, IN, dtype=F64), torch.zeros(B, N, dtype=F64)
    writes = []
    for logit in (-12.0, -12.0 - math.log(2.0)):  # sigmoid(z) ~ e^z: the second gate is half the first
        with torch.no_grad():
            cell.weight_ih[N:].zero_()
            cell.bias_ih[N:] = logit
        writes.append(cell(x, (zero, zero))[0])
        r = torch.sigmoid(torch.tensor(logit, dtype=F64))
        u = x @ cell.weight_ih[:N].T + cell.bias_ih[:N]
        expected = -cell.step_size() * r**2 * (u @ cell.weight_q.T @ cell.weight_q)
        torch.testing.assert_close(writes[-1], expected, rtol=1e-8, atol=0)
    torch.testing.assert_close(writes[0] / writes[1], torch.full_like(writes[0], 4.0), rtol=1e-4, atol=0)


def test_the_gate_starts_at_the_timescales_range_and_the_step_guard_holds():
    torch.manual_seed(0)
    cell = SelectiveHamiltonianCell(IN, 512, timescales=(1e-3, 0.3))
    s0 = torch.sigmoid(cell.bias_ih[512:]).square()  # each unit's initial clock factor
    assert s0.min() >= 1e-3 * (1 - 1e-5) and s0.max() <= 0.3 * (1 + 1e-5)
    assert cell.log_timescale is None  # the timescales live in the gate
    with torch.no_grad():
        cell.weight_q.mul_(40.0)
        bound = torch.linalg.matrix_norm(cell.weight_q, 2) * torch.linalg.matrix_norm(cell.weight_p, 2)
    # r_t < 1, so this bound on the unwarped weights bounds every step's frequency (float32 round-off)
    assert float(cell.step_size() * bound) <= SelectiveHamiltonianCell.STABILITY_MARGIN * (1 + 1e-5)
    assert float(cell.step_size()) < float(cell.dt) / 10  # the guard is what keeps it there
    with pytest.raises(ValueError, match="timescales may not be None"):
        SelectiveHamiltonianCell(IN, N, timescales=None)


def test_inverse_step_undoes_a_damped_step():
    cell = _cell(damping=0.3, scheme="verlet")
    x, p, q = (torch.randn(B, k, dtype=F64) for k in (IN, N, N))
    u = cell.project(x)
    p0, q0 = cell.inverse_step(u, *cell.step(u, p, q))
    torch.testing.assert_close(p0, p, rtol=0, atol=1e-12)
    torch.testing.assert_close(q0, q, rtol=0, atol=1e-12)


def test_the_reversible_path_gives_the_stored_paths_output_and_gradients():
    torch.manual_seed(0)
    stored = SelectiveHamiltonianRNN(IN, N, dtype=F64)
    reversible = SelectiveHamiltonianRNN(IN, N, dtype=F64, memory="reversible", anchor_every=7)
    reversible.load_state_dict(stored.state_dict())
    x = torch.randn(30, B, IN, dtype=F64, requires_grad=True)
    results = []
    for layer in (stored, reversible):
        out, (p, q) = layer(x)
        loss = out.square().sum() + p.sum() + q.square().sum()
        results.append((out, *torch.autograd.grad(loss, (x, *layer.parameters()))))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_build_model_gives_a_residual_stack_of_selective_layers():
    model = build_model("hamiltonian", 2, 8, 3)
    assert all(isinstance(layer, SelectiveHamiltonianRNN) for layer in model.rnn.layers)
    assert model(torch.randn(4, 11, 2)).shape == (4, 3)
