r"""How a layer's :math:`K_j` is built from its raw weight, and how a :math:`K` acting on the
(p, q) halves splits into the halves' matrices and biases (:data:`STRUCTURES`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def _blocks(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """``[[a, b], [c, d]]`` assembled over the last two dimensions."""
    return torch.cat([torch.cat([a, b], -1), torch.cat([c, d], -1)], -2)


def _quarters(w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    m = w.shape[-1] // 2
    return w[..., :m, :m], w[..., :m, m:], w[..., m:, :m], w[..., m:, m:]


def _full(w: Tensor) -> Tensor:
    return w


def _block_diagonal(w: Tensor) -> Tensor:
    w11, w12, _, w22 = _quarters(w)
    zero = torch.zeros_like(w12)
    return _blocks(w11, zero, zero, w22)


def _hamiltonian_inspired(w: Tensor) -> Tensor:
    _, w12, _, _ = _quarters(w)
    zero = torch.zeros_like(w12)
    return _blocks(zero, w12, -w12.mT, zero)


def _skew(w: Tensor) -> Tensor:
    # the skew-symmetric part: a weight that is already skew is its own K
    return 0.5 * (w - w.mT)


def _two_layer(w: Tensor) -> Tensor:
    _, w12, w21, _ = _quarters(w)
    zero = torch.zeros_like(w12)
    return _blocks(zero, w12, w21, zero)


def _diagonal_halves(K: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(K_p, b_p, K_q, b_q)`` of a block-diagonal K: the top rows act on p, the bottom on q."""
    k11, _, _, k22 = _quarters(K)
    m = K.shape[-1] // 2
    return k11, b[..., :m], k22, b[..., m:]


def _anti_diagonal_halves(K: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(K_p, b_p, K_q, b_q)`` of an anti-block-diagonal K: the top rows act on q, the bottom on p."""
    _, k12, k21, _ = _quarters(K)
    m = K.shape[-1] // 2
    return k21, b[..., m:], k12, b[..., :m]


# halves name -> (K, b) -> (K_p, b_p, K_q, b_q)
HALVES: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]] = {
    "diagonal": _diagonal_halves,
    "anti_diagonal": _anti_diagonal_halves,
}


@dataclass(frozen=True)
class Structure:
    """How a layer's :math:`K` (n, n) is built from its raw ``weight`` (n, n).

    ``halves`` names how a :math:`K` that acts on the halves separately splits into the maps of
    p and q (``"diagonal"`` or ``"anti_diagonal"``), or is ``None`` when :math:`K` mixes them.
    """

    name: str
    build: Callable[[Tensor], Tensor]
    halves: str | None


STRUCTURES: dict[str, Structure] = {
    s.name: s
    for s in (
        Structure("full", _full, None),
        Structure("skew", _skew, None),
        Structure("block_diagonal", _block_diagonal, "diagonal"),
        Structure("hamiltonian_inspired", _hamiltonian_inspired, "anti_diagonal"),
        Structure("two_layer", _two_layer, "anti_diagonal"),
    )
}
