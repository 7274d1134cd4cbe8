r"""Choices the seed papers leave open (:data:`CONVENTIONS`): the :math:`J` matrices by name
(:data:`J_MATRICES`), where a classifier places its input (:data:`PLACEMENTS`) and which half a
split step updates first (:data:`ORDERS`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..hamiltonians import canonical_j, j1, j2
from ..integrators import GradientMap, State, StepFunction, StepSize


def _canonical(n: int, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """H2's :math:`[[0, -I], [I, 0]]` of size (n, n); ``n`` must be even."""
    if n % 2:
        raise ValueError(f"the canonical J needs an even state width, got {n}")
    return canonical_j(n // 2, dtype=dtype, device=device)


J_MATRICES: dict[str, Callable[..., Tensor]] = {"canonical": _canonical, "J1": j1, "J2": j2}


def _pad_end(in_features: int, n: int) -> list[int]:
    return list(range(in_features))


def _spread(in_features: int, n: int) -> list[int]:
    # evenly over the state, first and last included: (0, n - 1) for a 2-D point
    if in_features == 1:
        return [0]
    return [round(i * (n - 1) / (in_features - 1)) for i in range(in_features)]


# placement name -> (in_features, n) -> the state indices that receive the input's features
PLACEMENTS: dict[str, Callable[[int, int], list[int]]] = {"pad_end": _pad_end, "spread": _spread}


@dataclass(frozen=True)
class Convention:
    """Choices the papers leave open.

    ``first``: the half (``"p"`` = ``y[:n/2]`` or ``"q"``) a split step updates first;
    ``j``: a variant's default :math:`J` where it differs from the variant's own;
    ``placement``: how :class:`HDNNClassifier` places its input in :math:`y_0` (:data:`PLACEMENTS`).
    """

    name: str
    first: str
    placement: str
    j: Mapping[str, str] = field(default_factory=dict)


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("hrnn", first="p", placement="pad_end"),
        # the authors' code: H1's "J1" is [[0, -I], [I, 0]], H2, MS1 and MS3 update the second half
        # first, and a 2-D point enters at y[0] and y[n - 1]
        Convention("reference", first="q", placement="spread", j={"H1": "canonical"}),
    )
}


def _p_first(
    step: StepFunction, p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    return step(p, q, grad_v, grad_t, h)


def _q_first(
    step: StepFunction, p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    # the same scheme with the roles of the halves exchanged: q is the half it moves first
    q, p = step(q, p, lambda x: -grad_t(x), lambda x: -grad_v(x), h)
    return p, q


# half updated first -> how a split step runs the scheme
ORDERS: dict[str, Callable[..., State]] = {"p": _p_first, "q": _q_first}
