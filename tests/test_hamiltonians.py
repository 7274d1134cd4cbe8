"""Energies and their gradient maps against autograd; stability of log-cosh; the J matrices (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from hrnn.hamiltonians import (
    LogCoshHamiltonian,
    OscillatorHamiltonian,
    canonical_j,
    coupling_j,
    hdnn_energy,
    hdnn_vector_field,
    j1,
    j2,
    log_cosh,
    log_cosh_energy,
    log_cosh_gradient,
)

F64 = torch.float64


def autograd_gradient(energy, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(x).sum(), x)
    return g


def test_log_cosh_equals_the_naive_formula_where_that_is_finite():
    x = torch.linspace(-20, 20, 401, dtype=F64)
    torch.testing.assert_close(log_cosh(x), torch.log(torch.cosh(x)), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_log_cosh_is_stable_at_large_arguments(dtype):
    x = torch.tensor([-1000.0, 1000.0], dtype=dtype, requires_grad=True)
    assert torch.isinf(torch.log(torch.cosh(x.detach()))).all()  # the naive formula overflows
    value = log_cosh(x)
    torch.testing.assert_close(value, torch.full_like(value, 1000.0 - math.log(2.0)))
    (grad,) = torch.autograd.grad(value.sum(), x)
    torch.testing.assert_close(grad, torch.tensor([-1.0, 1.0], dtype=dtype))  # d/dx log cosh = tanh


def test_log_cosh_gradient_equals_autograd_of_the_energy():
    K, b = torch.randn(5, 3, dtype=F64), torch.randn(4, 5, dtype=F64)  # a batch-dependent bias
    x = torch.randn(4, 3, dtype=F64)
    expected = autograd_gradient(lambda x: log_cosh_energy(x, K, b), x)
    torch.testing.assert_close(log_cosh_gradient(x, K, b), expected, rtol=1e-12, atol=1e-12)
    expected = autograd_gradient(lambda x: log_cosh_energy(x, K), x)
    torch.testing.assert_close(log_cosh_gradient(x, K), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_coupling", [False, True])
def test_log_cosh_hamiltonian_field_is_j_times_the_energy_gradient(with_coupling):
    n = 3
    X = torch.randn(n, n, dtype=F64) if with_coupling else None
    H = LogCoshHamiltonian(
        *(torch.randn(n, n, dtype=F64) for _ in range(2)),
        torch.randn(n, dtype=F64),
        torch.randn(n, dtype=F64),
        X=X,
    )
    p, q = torch.randn(4, n, dtype=F64), torch.randn(4, n, dtype=F64)
    grad_h = autograd_gradient(lambda y: H.energy(y[:, :n], y[:, n:]), torch.cat([p, q], 1))
    J = coupling_j(torch.eye(n, dtype=F64) if X is None else X)
    # the integrators step dp/dt = -grad_v(q), dq/dt = grad_t(p)
    field = torch.cat([-H.grad_v(q), H.grad_t(p)], 1)
    torch.testing.assert_close(field, grad_h @ J.T, rtol=1e-12, atol=1e-12)


def test_oscillator_gradients_equal_autograd_of_the_energy():
    n = 6
    H = OscillatorHamiltonian(w=torch.rand(n, dtype=F64) + 0.5, b=torch.randn(n, dtype=F64), alpha=0.3)
    p, q = torch.randn(4, n, dtype=F64), torch.randn(4, n, dtype=F64)
    torch.testing.assert_close(
        H.grad_v(q), autograd_gradient(lambda q: H.energy(p, q), q), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        H.grad_t(p), autograd_gradient(lambda p: H.energy(p, q), p), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("make_j", [j1, j2])
def test_hdnn_vector_field_is_j_times_the_energy_gradient(make_j):
    n = 6
    K, b, J = torch.randn(n, n, dtype=F64), torch.randn(n, dtype=F64), make_j(n, dtype=F64)
    y = torch.randn(5, n, dtype=F64)
    grad_h = autograd_gradient(lambda y: hdnn_energy(y, K, b), y)
    torch.testing.assert_close(hdnn_vector_field(y, K, b, J), grad_h @ J.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "J",
    [j1(6, dtype=F64), j2(5, dtype=F64), canonical_j(3, dtype=F64), coupling_j(torch.randn(3, 3, dtype=F64))],
    ids=["J1", "J2", "canonical", "coupling"],
)
def test_j_matrices_are_skew_symmetric(J):
    torch.testing.assert_close(J.T, -J, rtol=0, atol=0)


def test_j_matrices_have_their_defining_entries():
    eye = torch.eye(2, dtype=F64)
    zero = torch.zeros(2, 2, dtype=F64)
    torch.testing.assert_close(
        j1(4, dtype=F64), torch.cat([torch.cat([zero, eye], 1), torch.cat([-eye, zero], 1)])
    )
    torch.testing.assert_close(canonical_j(2, dtype=F64), -j1(4, dtype=F64))
    torch.testing.assert_close(j1(4, dtype=F64) @ j1(4, dtype=F64), -torch.eye(4, dtype=F64))
    expected_j2 = torch.tensor([[0.0, 1, 1], [-1, 0, 1], [-1, -1, 0]], dtype=F64)
    torch.testing.assert_close(j2(3, dtype=F64), expected_j2)


def test_j1_of_odd_width_is_rejected():
    with pytest.raises(ValueError, match="J1 needs an even state width, got 5"):
        j1(5)
