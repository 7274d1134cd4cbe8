r"""A layer's vector field (:data:`FIELDS`): on the whole state, and split into the gradient maps of
the (p, q) halves that a split scheme of :mod:`hrnn.integrators` steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hamiltonians import LogCoshHamiltonian, hdnn_vector_field
from ..integrators import GradientMap

# split(K_p, b_p, K_q, b_q[, X]) -> (grad_v, grad_t), stepped as p' = p - h grad_v(q), q' = q + h grad_t(p)
SplitMaps = Callable[..., tuple[GradientMap, GradientMap]]


def _hamiltonian_maps(K_p: Tensor, b_p: Tensor, K_q: Tensor, b_q: Tensor, X: Tensor | None = None):
    energy = LogCoshHamiltonian(K_p, K_q, b_p, b_q, X=X)
    return energy.grad_v, energy.grad_t


def _direct_maps(K_p: Tensor, b_p: Tensor, K_q: Tensor, b_q: Tensor):
    # dp/dt = tanh(K_q q + b_q), dq/dt = tanh(K_p p + b_p): the halves of tanh(K y + b)
    return (lambda q: -torch.tanh(F.linear(q, K_q, b_q))), (lambda p: torch.tanh(F.linear(p, K_p, b_p)))


def _direct_field(y: Tensor, K: Tensor, b: Tensor) -> Tensor:
    return torch.tanh(F.linear(y, K, b))


@dataclass(frozen=True)
class Field:
    r"""A layer's vector field on the whole state, ``full(y, K, b[, J])`` (stepped by forward
    Euler), and split into the maps of the halves, ``split`` (for a :math:`K` acting on the halves)."""

    name: str
    equation: str
    full: Callable[..., Tensor]
    split: SplitMaps
    uses_j: bool


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("hamiltonian", "J K^T tanh(K y + b)", hdnn_vector_field, _hamiltonian_maps, uses_j=True),
        Field("direct", "tanh(K y + b) (J K = I)", _direct_field, _direct_maps, uses_j=False),
    )
}
