"""The integrator core: symplecticity, exact inverses, order of accuracy, and input checks (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from hrnn.hamiltonians import LogCoshHamiltonian, OscillatorHamiltonian, canonical_j
from hrnn.integrators import (
    SCHEMES,
    Scheme,
    get_scheme,
    integrate,
    validate_state,
    validate_step_size,
)

F64 = torch.float64
N = 3  # width of p and of q


def random_energy(n: int = N, scale: float = 1.0) -> LogCoshHamiltonian:
    def r(*shape):
        return scale * torch.randn(*shape, dtype=F64)

    return LogCoshHamiltonian(K_p=r(n, n), K_q=r(n, n), b_p=r(n), b_q=r(n))


def flow_jacobian(scheme: str, energies: list[LogCoshHamiltonian], h) -> torch.Tensor:
    """Jacobian (2n, 2n) of ``len(energies)`` steps of ``scheme``, step k using ``energies[k]``."""

    def flow(y: torch.Tensor) -> torch.Tensor:
        p, q = integrate(
            y[:N], y[N:], lambda k: (energies[k].grad_v, energies[k].grad_t), h, len(energies), scheme
        )
        return torch.cat([p, q])

    return jacobian(flow, torch.randn(2 * N, dtype=F64))


def symplecticity_error(M: torch.Tensor) -> float:
    J = canonical_j(M.shape[0] // 2, dtype=M.dtype)
    return torch.linalg.matrix_norm(M.T @ J @ M - J).item()


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_one_symplectic_step_is_symplectic(scheme):
    M = flow_jacobian(scheme, [random_energy()], h=0.3)
    assert symplecticity_error(M) < 1e-10
    assert torch.linalg.det(M).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_100_steps_with_time_varying_parameters_are_symplectic(scheme):
    M = flow_jacobian(scheme, [random_energy() for _ in range(100)], h=0.1)
    assert symplecticity_error(M) < 1e-10
    # a symplectic matrix has singular values in pairs (s, 1/s), so its 2-norm is at least 1
    assert torch.linalg.matrix_norm(M, ord=2).item() >= 1 - 1e-9


def test_forward_euler_step_is_not_symplectic():
    M = flow_jacobian("euler", [random_energy()], h=0.1)
    assert symplecticity_error(M) > 1e-4
    assert abs(torch.linalg.det(M).item() - 1.0) > 1e-4


@pytest.mark.parametrize("scheme", ["euler", "symplectic_euler", "verlet"])
def test_symplectic_flag_matches_the_jacobian(scheme):
    M = flow_jacobian(scheme, [random_energy() for _ in range(5)], h=0.2)
    assert (symplecticity_error(M) < 1e-10) == get_scheme(scheme).symplectic


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_per_unit_step_sizes_keep_elementwise_oscillators_symplectic(scheme):
    energy = OscillatorHamiltonian(w=torch.rand(N, dtype=F64) + 0.5, b=torch.randn(N, dtype=F64), alpha=0.5)
    h = 0.05 + 0.3 * torch.rand(N, dtype=F64)
    M = flow_jacobian(scheme, [energy] * 50, h)
    assert symplecticity_error(M) < 1e-10


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_inverse_steps_reconstruct_the_initial_state_after_1000_steps(scheme):
    energies = [random_energy() for _ in range(1000)]
    p0, q0 = torch.randn(8, N, dtype=F64), torch.randn(8, N, dtype=F64)

    def grads(k):
        return energies[k].grad_v, energies[k].grad_t

    p, q = integrate(p0, q0, grads, 0.05, 1000, scheme)
    assert (p - p0).abs().max() > 1.0  # the flow really moved the state
    p_back, q_back = integrate(p, q, grads, 0.05, 1000, scheme, inverse=True)
    assert (p_back - p0).abs().max().item() < 1e-8
    assert (q_back - q0).abs().max().item() < 1e-8


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_observed_order_on_the_harmonic_oscillator_matches_the_declared_one(scheme):
    # H = (p^2 + q^2) / 2: the exact flow over time t is a rotation of (q, p) by t.
    p0, q0, t_end = torch.tensor([1.0], dtype=F64), torch.tensor([0.5], dtype=F64), 1.0

    def error(n_steps: int) -> float:
        p, q = integrate(p0, q0, lambda k: (lambda q: q, lambda p: p), t_end / n_steps, n_steps, scheme)
        exact_p = p0 * math.cos(t_end) - q0 * math.sin(t_end)
        exact_q = q0 * math.cos(t_end) + p0 * math.sin(t_end)
        return math.hypot((p - exact_p).item(), (q - exact_q).item())

    observed = math.log2(error(200) / error(400))
    assert observed == pytest.approx(get_scheme(scheme).order, abs=0.1)


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("euler", (0.5, 1.5)),  # p' = p - h q, q' = q + h p
        ("symplectic_euler", (0.5, 1.25)),  # p' = p - h q, q' = q + h p'
        ("verlet", (0.40625, 1.375)),  # p½ = p - h/2 q = 0.75, q' = q + h p½, p' = p½ - h/2 q'
    ],
)
def test_one_step_equals_the_hand_computation(scheme, expected):
    # harmonic oscillator (dV/dq = q, dT/dp = p) from (p, q) = (1, 1) with h = 0.5
    one = torch.tensor(1.0, dtype=F64)
    p, q = get_scheme(scheme).step(one, one, lambda q: q, lambda p: p, 0.5)
    assert (p.item(), q.item()) == pytest.approx(expected, abs=1e-15)


def test_zero_steps_return_the_state_unchanged():
    p, q = torch.randn(2, N, dtype=F64), torch.randn(2, N, dtype=F64)
    p1, q1 = integrate(p, q, lambda k: (None, None), 0.1, 0)
    assert torch.equal(p1, p) and torch.equal(q1, q)


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown integration scheme 'rk4'; known: \['euler', 'symplectic_euler', 'verlet'\]",
    ):
        get_scheme("rk4")
    scheme = SCHEMES["verlet"]
    assert get_scheme(scheme) is scheme and isinstance(scheme, Scheme)


def test_forward_euler_has_no_inverse():
    p = torch.zeros(1, N, dtype=F64)
    with pytest.raises(ValueError, match="scheme 'euler' has no exact inverse"):
        integrate(p, p, lambda k: (None, None), 0.1, 3, "euler", inverse=True)


def test_negative_step_count_is_rejected():
    p = torch.zeros(1, N, dtype=F64)
    with pytest.raises(ValueError, match="n_steps must be >= 0, got -1"):
        integrate(p, p, lambda k: (None, None), 0.1, -1)


@pytest.mark.parametrize(
    ("p", "q", "error", "message"),
    [
        ([1.0], torch.zeros(1), TypeError, "p must be a torch.Tensor, got list"),
        (
            torch.zeros(2, 3),
            torch.zeros(2, 3, dtype=torch.int64),
            TypeError,
            "q must be a floating-point tensor, got dtype torch.int64",
        ),
        (torch.zeros(2, 3), torch.zeros(2, 4), ValueError, r"same shape, got \(2, 3\) and \(2, 4\)"),
        (
            torch.zeros(2, 3),
            torch.zeros(2, 3, dtype=F64),
            TypeError,
            "same dtype, got torch.float32 and torch.float64",
        ),
    ],
)
def test_bad_states_get_a_clear_error(p, q, error, message):
    with pytest.raises(error, match=message):
        validate_state(p, q)
    with pytest.raises(error, match=message):  # integrate checks before stepping
        integrate(p, q, lambda k: (None, None), 0.1, 1)


@pytest.mark.parametrize("h", [0.0, -0.1, math.inf, math.nan])
def test_non_positive_or_non_finite_step_is_rejected(h):
    with pytest.raises(ValueError, match="step size must be finite and > 0"):
        validate_step_size(h)
    p = torch.zeros(1, N, dtype=F64)
    with pytest.raises(ValueError, match="step size must be finite and > 0"):
        integrate(p, p, lambda k: (None, None), h, 1)


def test_bad_per_unit_step_tensors_are_rejected():
    like = torch.zeros(N, dtype=F64)
    with pytest.raises(ValueError, match="finite and > 0 everywhere"):
        validate_step_size(torch.tensor([0.1, 0.0, 0.2], dtype=F64), like)
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch\.int64"):
        validate_step_size(torch.tensor([1, 2, 3]), like)
    with pytest.raises(
        TypeError, match=r"step size has dtype torch\.float32 but the state has dtype torch\.float64"
    ):
        validate_step_size(torch.full((N,), 0.1), like)
