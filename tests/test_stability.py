"""The log-cosh cell's timescales, stability guard and damping: structure proved in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev

from hrnn.cells import HamiltonianCell, SelectiveHamiltonianCell
from hrnn.hamiltonians import canonical_j
from hrnn.rnn import HamiltonianRNN, SelectiveHamiltonianRNN

IN, N = 2, 6
F64 = torch.float64


def _step_jacobian(cell: HamiltonianCell, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(p', q')/d(p, q) of one step at the state y = (p, q) (2n,) with projected input u (n,)."""

    def step(y):
        p, q = y[:N].unsqueeze(0), y[N:].unsqueeze(0)
        return torch.cat(cell.step(u.unsqueeze(0), p, q), -1).squeeze(0)

    return jacrev(step)(y)


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_a_step_with_timescales_and_no_damping_is_symplectic(scheme):
    torch.manual_seed(0)
    cell = HamiltonianCell(IN, N, scheme=scheme, damping=None, dtype=F64)
    assert cell.log_timescale.std() > 0.1  # the units really have different timescales
    M = _step_jacobian(cell, torch.randn(N, dtype=F64), torch.randn(2 * N, dtype=F64))
    J = canonical_j(N, dtype=F64)
    torch.testing.assert_close(M.T @ J @ M, J, rtol=0, atol=1e-10)


def test_damping_makes_the_step_conformally_symplectic_with_the_friction_factor():
    torch.manual_seed(0)
    cell = HamiltonianCell(IN, N, damping=0.2, dtype=F64)
    with torch.no_grad():  # one timescale for all units, so the contraction is one number
        cell.log_timescale.fill_(math.log(0.5))
    M = _step_jacobian(cell, torch.randn(N, dtype=F64), torch.randn(2 * N, dtype=F64))
    J = canonical_j(N, dtype=F64)
    factor = math.exp(-0.2 * cell.step_size().item() * 0.5)
    torch.testing.assert_close(M.T @ J @ M, factor * J, rtol=0, atol=1e-10)
    assert torch.linalg.det(M).item() == pytest.approx(factor**N, rel=1e-10)


def test_timescales_are_drawn_log_uniform_in_their_range_and_none_drops_them():
    torch.manual_seed(0)
    cell = HamiltonianCell(IN, 512, timescales=(1e-3, 0.5))
    s = cell.log_timescale.exp()
    assert s.min() >= 1e-3 and s.max() <= 0.5
    # log-uniform: about a third of the units in each third of the log range
    thirds = torch.bucketize(cell.log_timescale, torch.linspace(math.log(1e-3), math.log(0.5), 4)[1:-1])
    assert torch.bincount(thirds, minlength=3).min() > 512 / 3 * 0.8
    assert HamiltonianCell(IN, N, timescales=None).log_timescale is None
    with pytest.raises(ValueError, match="timescales must satisfy"):
        HamiltonianCell(IN, N, timescales=(0.5, 0.1))


def _grow_with_adam(cell: HamiltonianCell, reward) -> float:
    """200 steps of Adam at lr 0.1 on the loss ``-reward(cell)``; the grown frequency bound."""
    optimizer = torch.optim.Adam(cell.parameters(), lr=0.1)
    for _ in range(200):
        loss = -reward(cell)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return cell.frequency_bound().item()


def _assert_guarded_and_on_the_unit_circle(cell: HamiltonianCell, grown: float, u: torch.Tensor) -> None:
    """h * omega_hat is at most the margin, and the step linearised at rest (zero biases, tanh' = 1)
    with projected input ``u`` has its eigenvalues on the unit circle: symplectic Euler with
    h * omega < 2 neither explodes nor decays."""
    h = cell.step_size().item()
    assert h * grown <= cell.STABILITY_MARGIN * (1 + 1e-12)
    with torch.no_grad():
        cell.bias_p.zero_()
    M = _step_jacobian(cell, u, torch.zeros(2 * N, dtype=F64))
    moduli = torch.linalg.eigvals(M).abs()
    torch.testing.assert_close(moduli, torch.ones_like(moduli), rtol=0, atol=1e-8)


def test_the_stability_guard_holds_after_adam_grows_every_weight():
    """200 steps of Adam at lr 0.1 on a loss that rewards large K and fast timescales: the step
    shrinks so that h * omega_hat stays at the margin, and the linearised step stays stable."""
    torch.manual_seed(0)
    cell = HamiltonianCell(IN, N, damping=None, dtype=F64)
    grown = _grow_with_adam(cell, lambda c: c.weight_q.norm() + c.weight_p.norm() + c.log_timescale.sum())
    assert grown > 100  # the optimizer did grow the frequencies a hundredfold
    _assert_guarded_and_on_the_unit_circle(cell, grown, torch.zeros(N, dtype=F64))


def test_the_stability_guard_holds_for_the_selective_cell_after_adam_grows_k_and_opens_its_gates():
    """The same for the registry's ``hamiltonian``: Adam grows K and opens every gate, the guard
    keeps h * omega_hat at the margin, and the linearised step with fully open gates stays stable."""
    torch.manual_seed(0)
    cell = SelectiveHamiltonianCell(IN, N, damping=None, dtype=F64)
    grown = _grow_with_adam(cell, lambda c: c.weight_q.norm() + c.weight_p.norm() + c.bias_ih[N:].sum())
    assert grown > 100 and cell.bias_ih[N:].min() > 15  # K grew a hundredfold, every gate is open
    open_gates = torch.cat([torch.zeros(N, dtype=F64), torch.full((N,), 40.0, dtype=F64)])
    _assert_guarded_and_on_the_unit_circle(cell, grown, open_gates)


def _gradient_ratios(rnn: HamiltonianRNN, x: torch.Tensor, times: list[int]) -> list[float]:
    """||dL/dh_t|| / ||dL/dh_T|| for L = sum of squares of the final state, at the given t."""
    norms = []
    for t in times:
        with torch.no_grad():
            h_t = rnn(x[:, :t])[1] if t > 0 else tuple(x.new_zeros(1, 1, rnn.hidden_size) for _ in "pq")
        leaf = tuple(s.clone().requires_grad_() for s in h_t)
        final = rnn(x[:, t:], leaf)[1] if t < x.shape[1] else leaf
        grads = torch.autograd.grad(sum(f.pow(2).sum() for f in final), leaf)
        norms.append(float(torch.cat([g.reshape(-1) for g in grads]).norm()))
    return [n / norms[-1] for n in norms]


@pytest.mark.parametrize(
    ("layer", "seq_len"),
    [(HamiltonianRNN, 1000), (SelectiveHamiltonianRNN, 10), (SelectiveHamiltonianRNN, 1000),
     (SelectiveHamiltonianRNN, 10_000)],
)  # fmt: skip
def test_default_construction_keeps_the_gradient_ratio_within_ten(layer, seq_len):
    torch.manual_seed(0)
    rnn = layer(2, 32, batch_first=True, dtype=F64)
    x = torch.rand(1, seq_len, 2, dtype=F64)
    times = sorted({0, seq_len // 4, seq_len // 2, 3 * seq_len // 4, seq_len - 1, seq_len})
    ratios = _gradient_ratios(rnn, x, times)
    assert 0.1 <= min(ratios) and max(ratios) <= 10.0, ratios


@pytest.mark.parametrize("name", ["hamiltonian", "static_hamiltonian"])
def test_default_model_trains_without_nan_at_T_20000(name):
    from hrnn.models import build_model

    torch.manual_seed(0)
    model = build_model(name, 2, 8, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.rand(2, 20_000, 2), torch.rand(2, 1)
    for _ in range(2):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        assert math.isfinite(loss.item()) and math.isfinite(grad.item())
        optimizer.step()


@pytest.mark.parametrize("memory", ["stored", "reversible"])
def test_emit_p_outputs_the_momentum_of_every_step_fast_and_plain_alike(memory):
    torch.manual_seed(0)
    x = torch.randn(9, 3, IN, dtype=F64)
    options = {"emit": "p", "memory": memory, "anchor_every": 4 if memory == "reversible" else None}
    fast = HamiltonianRNN(IN, N, **options, dtype=F64)
    plain = HamiltonianRNN(IN, N, **options, fast=False, dtype=F64)
    plain.load_state_dict(fast.state_dict())
    output, (p_n, q_n) = fast(x)
    torch.testing.assert_close(output[-1], p_n[-1], rtol=0, atol=0)
    assert fast.output_index == 0 and fast.emitted((p_n, q_n)) is p_n
    reference, _ = plain(x)
    torch.testing.assert_close(output, reference, rtol=0, atol=1e-12)
    (g_fast,) = torch.autograd.grad(output.square().sum(), fast.cells[0].weight_q)
    (g_plain,) = torch.autograd.grad(reference.square().sum(), plain.cells[0].weight_q)
    torch.testing.assert_close(g_fast, g_plain, rtol=0, atol=1e-10)
    default = HamiltonianRNN(IN, N, dtype=F64)
    assert default.output_index == 1  # q
    with pytest.raises(ValueError, match="emit='p' but it has emit='q'"):
        default.load_state_dict(fast.state_dict())


def test_an_unknown_emitted_variable_fails_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown emit 'h'; known: \['p', 'q'\]"):
        HamiltonianRNN(IN, N, emit="h")
