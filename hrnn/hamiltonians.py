r"""Energies of the Hamiltonian networks and their gradient maps.

Tensors follow PyTorch's row convention: a state is ``(batch, n)`` and a weight ``K`` of shape
``(m, n)`` acts as ``x @ K.T``. So the column-vector formula :math:`K^\top \tanh(K x + b)`
of the papers reads ``tanh(x @ K.T + b) @ K`` here.

* log-cosh energy (Galimberti et al., 2023):
  :math:`V(q) = \sum_i \log\cosh((K_q q + b_q)_i)`, so :math:`\nabla V = K_q^\top \tanh(K_q q + b_q)`,
  and :math:`T(p)` likewise with :math:`K_p, b_p`. A coupling matrix :math:`X` gives
  :math:`J = [[0, -X^\top], [X, 0]]`: :math:`\dot p = -X^\top \nabla V(q)`, :math:`\dot q = X \nabla T(p)`.
* independent oscillators (UnICORNN-type, Rusch & Mishra 2021):
  :math:`V(q) = \sum_i w_i^{-1} \log\cosh(w_i q_i + b_i) + \tfrac\alpha2 q_i^2`, :math:`T(p) = \|p\|^2/2`.
* general H-DNN field (H1): :math:`\dot y = J K^\top \tanh(K y + b)` with skew-symmetric ``J``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LogCoshHamiltonian",
    "OscillatorHamiltonian",
    "canonical_j",
    "coupling_j",
    "hdnn_energy",
    "hdnn_vector_field",
    "j1",
    "j2",
    "log_cosh",
    "log_cosh_energy",
    "log_cosh_gradient",
    "oscillator_potential",
    "oscillator_potential_gradient",
]

_LOG2 = math.log(2.0)


def log_cosh(x: Tensor) -> Tensor:
    """Elementwise ``log(cosh(x))``, stable for large ``|x|`` (``|x| + log1p(e^{-2|x|}) - log 2``)."""
    a = x.abs()
    return a + F.softplus(-2.0 * a) - _LOG2


def log_cosh_energy(x: Tensor, K: Tensor, b: Tensor | None = None) -> Tensor:
    """:math:`\\sum_i \\log\\cosh((K x + b)_i)`; ``x`` (..., n), ``K`` (m, n), ``b`` (m,) -> (...)."""
    z = x @ K.T if b is None else x @ K.T + b
    return log_cosh(z).sum(-1)


def log_cosh_gradient(x: Tensor, K: Tensor, b: Tensor | None = None) -> Tensor:
    """:math:`K^\\top \\tanh(K x + b)`; ``x`` (..., n), ``K`` (m, n), ``b`` (..., m) -> (..., n)."""
    z = x @ K.T if b is None else x @ K.T + b
    return torch.tanh(z) @ K


def oscillator_potential(q: Tensor, w: Tensor, b: Tensor, alpha: float) -> Tensor:
    """:math:`\\sum_i w_i^{-1}\\log\\cosh(w_i q_i + b_i) + \\tfrac\\alpha2 q_i^2`; ``w`` must be nonzero."""
    return (log_cosh(w * q + b) / w + 0.5 * alpha * q * q).sum(-1)


def oscillator_potential_gradient(q: Tensor, w: Tensor, b: Tensor, alpha: float) -> Tensor:
    """:math:`\\tanh(w \\odot q + b) + \\alpha q` (elementwise: no matrix multiply)."""
    return torch.tanh(w * q + b) + alpha * q


def _identity(p: Tensor) -> Tensor:
    return p


@dataclass(frozen=True)
class LogCoshHamiltonian:
    """Separable log-cosh energy :math:`H = T(p) + V(q)` with an optional coupling ``X`` (n, n).

    ``b_q`` and ``b_p`` may carry a batch dimension (a time-varying or input-driven bias).
    """

    K_p: Tensor
    K_q: Tensor
    b_p: Tensor | None = None
    b_q: Tensor | None = None
    X: Tensor | None = None

    def energy(self, p: Tensor, q: Tensor) -> Tensor:
        """:math:`H(p, q)`, shape (...)."""
        return log_cosh_energy(p, self.K_p, self.b_p) + log_cosh_energy(q, self.K_q, self.b_q)

    def grad_v(self, q: Tensor) -> Tensor:
        """The force term :math:`X^\\top \\nabla V(q)` (plain :math:`\\nabla V` when X is None)."""
        g = log_cosh_gradient(q, self.K_q, self.b_q)
        return g if self.X is None else g @ self.X

    def grad_t(self, p: Tensor) -> Tensor:
        """The velocity term :math:`X \\nabla T(p)` (plain :math:`\\nabla T` when X is None)."""
        g = log_cosh_gradient(p, self.K_p, self.b_p)
        return g if self.X is None else g @ self.X.T


@dataclass(frozen=True)
class OscillatorHamiltonian:
    """Independent oscillators: :math:`V` of :func:`oscillator_potential`, :math:`T = \\|p\\|^2/2`."""

    w: Tensor
    b: Tensor
    alpha: float

    def energy(self, p: Tensor, q: Tensor) -> Tensor:
        return 0.5 * (p * p).sum(-1) + oscillator_potential(q, self.w, self.b, self.alpha)

    def grad_v(self, q: Tensor) -> Tensor:
        return oscillator_potential_gradient(q, self.w, self.b, self.alpha)

    grad_t = staticmethod(_identity)


def canonical_j(n: int, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """The (2n, 2n) matrix of :math:`\\dot y = J \\nabla H` for ``y = (p, q)``: ``[[0, -I], [I, 0]]``."""
    return coupling_j(torch.eye(n, dtype=dtype, device=device))


def coupling_j(X: Tensor) -> Tensor:
    """``[[0, -X^T], [X, 0]]`` for a coupling ``X`` (n, n); skew-symmetric for any ``X``."""
    zero = torch.zeros_like(X)
    return torch.cat([torch.cat([zero, -X.T], 1), torch.cat([X, zero], 1)], 0)


def j1(n: int, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """H1's :math:`J_1 = [[0, I], [-I, 0]]` of size (n, n); ``n`` must be even."""
    if n % 2:
        raise ValueError(f"J1 needs an even state width, got {n}")
    return -canonical_j(n // 2, dtype=dtype, device=device)


def j2(n: int, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """H1's :math:`J_2`: +1 above the diagonal, -1 below, 0 on it; size (n, n)."""
    ones = torch.ones(n, n, dtype=dtype, device=device)
    return torch.triu(ones, 1) - torch.tril(ones, -1)


def hdnn_energy(y: Tensor, K: Tensor, b: Tensor) -> Tensor:
    """General H-DNN energy :math:`\\sum_i \\log\\cosh((K y + b)_i)`, shape (...)."""
    return log_cosh_energy(y, K, b)


def hdnn_vector_field(y: Tensor, K: Tensor, b: Tensor, J: Tensor) -> Tensor:
    """:math:`J K^\\top \\tanh(K y + b)`; ``y`` (..., n), ``K`` (n, n), ``J`` (n, n) -> (..., n)."""
    return log_cosh_gradient(y, K, b) @ J.T
