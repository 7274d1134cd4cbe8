r"""Feed-forward Hamiltonian deep neural networks (H-DNNs).

Galimberti, Furieri, Xu & Ferrari-Trecate, "Hamiltonian Deep Neural Networks Guaranteeing
Non-vanishing Gradients by Design", IEEE TAC 2023, and "A unified framework for Hamiltonian
deep neural networks" (L4DC 2021). A network of depth :math:`N` integrates

.. math::
    \dot y = J K(t)^\top \tanh(K(t) y + b(t)), \qquad t \in [0, t_{end}],

with :math:`N` steps of size :math:`h = t_{end} / N`; layer :math:`j` uses its own
:math:`K_j, b_j` (stacked parameters ``weight`` (N, n, n) and ``bias`` (N, n)). The variants
differ in how :math:`K_j` is built from ``weight``, in the field, :math:`J` and the scheme
(:data:`HDNN_VARIANTS`):

========  ============================  ===============================  =================
name      :math:`K_j`                   field                            scheme
========  ============================  ===============================  =================
H1        full                          :math:`J K^\top \sigma(Ky+b)`    forward Euler
H2        blockdiag(K_p, K_q)           :math:`J K^\top \sigma(Ky+b)`    symplectic Euler
MS1       [[0, K_0], [-K_0^T, 0]]       :math:`\sigma(Ky+b)` (J K = I)   (p, q) halves
MS2       skew-symmetric                :math:`\sigma(Ky+b)` (J K = I)   forward Euler
MS3       [[0, K_1], [K_2, 0]]          :math:`J_1 K^\top \sigma(Ky+b)`  symplectic Euler
H1_skew   skew-symmetric                :math:`J_1 K^\top \sigma(Ky+b)`  forward Euler
MS3_tied  [[0, K_0], [-K_0^T, 0]]       :math:`J_1 K^\top \sigma(Ky+b)`  symplectic Euler
========  ============================  ===============================  =================

MS1 and MS2 are Haber & Ruthotto's (2017) Hamiltonian-inspired and antisymmetric networks (the
papers' special cases with :math:`J K = I`), MS3 Chang et al.'s (2018) two-layer Hamiltonian
network. H1_skew and MS3_tied are H-DNNs whose :math:`K` has MS2's and MS1's structure (MS3_tied is
MS3 with :math:`K_2 = -K_1^\top`). For block-diagonal and anti-block-diagonal :math:`K` the state
splits into halves ``y = (p, q)`` and each layer is one step of a split scheme of
:mod:`hrnn.integrators` on the maps ``grad_v``, ``grad_t`` (:data:`FIELDS`); a full or skew
:math:`K` is integrated with forward Euler on the whole state.

A :class:`Convention` (:data:`CONVENTIONS`) fixes what the seed papers leave open: which half a
split step updates first, H1's default :math:`J` and where a classifier places its input.
``"reference"`` reproduces the authors' public code (docs/hdnn.md gives the weight mapping).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hamiltonians import LogCoshHamiltonian, canonical_j, coupling_j, hdnn_vector_field, j1, j2
from .integrators import GradientMap, Scheme, State, StepFunction, StepSize, get_scheme
from .reversible import reversible_integrate

__all__ = [
    "CONVENTIONS",
    "FIELDS",
    "HDNN_VARIANTS",
    "J_MATRICES",
    "MEMORY_MODES",
    "PLACEMENTS",
    "Convention",
    "Field",
    "HDNNClassifier",
    "HDNNVariant",
    "HamiltonianDNN",
    "Structure",
    "available_hdnns",
    "build_hdnn",
    "distributed_mask",
    "per_node_forward",
    "smoothness_regularizer",
]


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


_HALVES = {"diagonal": _diagonal_halves, "anti_diagonal": _anti_diagonal_halves}


@dataclass(frozen=True)
class Structure:
    """How a layer's :math:`K` (n, n) is built from its raw ``weight`` (n, n).

    ``halves`` names how a :math:`K` that acts on the halves separately splits into the maps of
    p and q (``"diagonal"`` or ``"anti_diagonal"``), or is ``None`` when :math:`K` mixes them.
    """

    name: str
    build: Callable[[Tensor], Tensor]
    halves: str | None


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


_ORDERS = {"p": _p_first, "q": _q_first}


@dataclass(frozen=True)
class HDNNVariant:
    """One H-DNN family: the structure of :math:`K_j`, the field, the default :math:`J` and scheme."""

    name: str
    structure: Structure
    field: Field
    j: str
    scheme: str
    reference: str


_FULL = Structure("full", _full, None)
_SKEW = Structure("skew", _skew, None)
_ANTI = Structure("hamiltonian_inspired", _hamiltonian_inspired, "anti_diagonal")
_HAM, _DIRECT = FIELDS["hamiltonian"], FIELDS["direct"]

HDNN_VARIANTS: dict[str, HDNNVariant] = {
    v.name: v
    for v in (
        HDNNVariant("H1", _FULL, _HAM, "J1", "euler", "Galimberti et al. 2023, H1"),
        HDNNVariant(
            "H2",
            Structure("block_diagonal", _block_diagonal, "diagonal"),
            _HAM,
            "canonical",
            "symplectic_euler",
            "Galimberti et al. 2023, H2",
        ),
        HDNNVariant(
            "MS1", _ANTI, _DIRECT, "J1", "symplectic_euler", "Haber & Ruthotto 2017, Hamiltonian-inspired"
        ),
        HDNNVariant("MS2", _SKEW, _DIRECT, "J1", "euler", "Haber & Ruthotto 2017, antisymmetric network"),
        HDNNVariant(
            "MS3",
            Structure("two_layer", _two_layer, "anti_diagonal"),
            _HAM,
            "J1",
            "symplectic_euler",
            "Chang et al. 2018, two-layer Hamiltonian network",
        ),
        HDNNVariant("H1_skew", _SKEW, _HAM, "J1", "euler", "H1 with a skew-symmetric K"),
        HDNNVariant("MS3_tied", _ANTI, _HAM, "J1", "symplectic_euler", "MS3 with K_2 = -K_1^T"),
    )
}


def available_hdnns() -> list[str]:
    """Names accepted by :func:`build_hdnn`, sorted."""
    return sorted(HDNN_VARIANTS)


def _lookup(registry: dict, name: str, what: str):
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(registry)}") from None


def smoothness_regularizer(K: Tensor, b: Tensor, h: float, alpha: float) -> Tensor:
    r"""Smoothness of the parameters across layers, against exploding gradients.

    .. math::
        R = \alpha\, h \sum_{j=0}^{N-2} \Big( \tfrac12 \|K_{j+1} - K_j\|_F^2
            + \tfrac12 \|b_{j+1} - b_j\|^2 \Big)

    (Galimberti et al. 2023). Scaling: if :math:`K_j = K(jh)` samples a smooth :math:`K(t)`, then
    :math:`K_{j+1} - K_j \approx h \dot K`, so :math:`R \approx \tfrac{\alpha h^2}{2}
    \int_0^{t_{end}} \|\dot K\|_F^2 + \|\dot b\|^2\, dt`: to penalise the same continuous-time
    roughness at another depth, scale :math:`\alpha` with :math:`1/h^2`.

    ``K`` (N, n, n), ``b`` (N, n) -> scalar; zero for ``N = 1``.
    """
    if K.dim() != 3 or b.dim() != 2 or K.shape[:2] != b.shape or K.shape[1] != K.shape[2]:
        raise ValueError(
            f"expected K of shape (N, n, n) and b of shape (N, n), got {tuple(K.shape)} and {tuple(b.shape)}"
        )
    dk, db = K.diff(dim=0), b.diff(dim=0)
    return alpha * h * 0.5 * (dk.square().sum() + db.square().sum())


def _adjacency(graph: Tensor | Sequence[tuple[int, int]], n_nodes: int | None) -> Tensor:
    """A boolean (n_nodes, n_nodes) adjacency from a matrix or an undirected edge list."""
    if isinstance(graph, Tensor):
        if graph.dim() != 2 or graph.shape[0] != graph.shape[1]:
            raise ValueError(
                f"adjacency must be a square (n_nodes, n_nodes) matrix, got {tuple(graph.shape)}"
            )
        if n_nodes is not None and graph.shape[0] != n_nodes:
            raise ValueError(f"adjacency is {tuple(graph.shape)} but n_nodes={n_nodes}")
        return graph != 0
    if n_nodes is None:
        raise ValueError("an edge list needs n_nodes")
    edges = torch.as_tensor(list(graph), dtype=torch.int64).reshape(-1, 2)
    if edges.numel() and (edges.min() < 0 or edges.max() >= n_nodes):
        raise ValueError(f"edge endpoints must lie in [0, {n_nodes}), got {edges.tolist()}")
    A = torch.zeros(n_nodes, n_nodes, dtype=torch.bool)
    A[edges[:, 0], edges[:, 1]] = True
    return A | A.T


def distributed_mask(
    graph: Tensor | Sequence[tuple[int, int]], n_nodes: int | None = None, *, dtype: torch.dtype | None = None
) -> Tensor:
    r"""The sparsity mask :math:`\mathrm{blockdiag}(A + I, A + I)` of a distributed H-DNN.

    Node :math:`i` holds :math:`(p_i, q_i)` = ``(y[i], y[n_nodes + i])``; with the masked
    :math:`K_j = \mathrm{mask} \odot K_j` and :math:`X = I`, its update needs only its neighbours'
    states (Galimberti et al. 2023, distributed H-DNNs; see :func:`per_node_forward`).

    ``graph``: an adjacency matrix (n_nodes, n_nodes) (nonzero = edge, possibly directed) or a
    list of undirected edges ``(i, j)`` (then ``n_nodes`` is required). Self-loops are added.
    Returns a 0/1 matrix (2 n_nodes, 2 n_nodes) of ``dtype`` (default: torch's default float).
    """
    A = _adjacency(graph, n_nodes)
    A = A | torch.eye(A.shape[0], dtype=torch.bool, device=A.device)
    return torch.block_diag(A, A).to(dtype or torch.get_default_dtype())


# memory mode -> whether the backward recomputes the states by the exact inverse instead of storing them
MEMORY_MODES: dict[str, bool] = {"stored": False, "reversible": True}


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class HamiltonianDNN(nn.Module):
    r"""A depth-``depth`` H-DNN on states ``y`` of width ``n_features``.

    Layer :math:`j` maps :math:`y_j \mapsto y_{j+1}` by one step of size :math:`h = t_{end}/N` of
    the variant's field with :math:`K_j, b_j` and its scheme (module docstring). ``j`` and
    ``scheme`` override the variant's defaults (a split scheme needs :math:`K` acting on the
    halves and, for the Hamiltonian field, :math:`J = [[0, -X^\top], [X, 0]]`); ``mask`` (n, n)
    fixes zeros of every :math:`K_j` (:func:`distributed_mask`). ``convention`` (:data:`CONVENTIONS`)
    picks the update order of the halves and H1's default :math:`J`. ``memory="reversible"``
    recomputes the states backwards by the exact inverse steps instead of storing them (schemes with
    an exact inverse only; ``anchor_every`` stores every so many states to bound round-off drift).

    Shape: input ``(*, n_features)``, output ``(*, n_features)``, the final state :math:`y_N`.
    Parameters: ``weight`` (depth, n, n), the raw :math:`K_j` before the structure is applied
    (:math:`\mathcal N(0, \mathrm{init\_std}^2)`), and ``bias`` (depth, n)
    (:math:`\mathcal N(0, \mathrm{bias\_std}^2)`).
    """

    def __init__(
        self,
        n_features: int,
        depth: int,
        t_end: float = 1.0,
        variant: str = "H2",
        *,
        j: str | None = None,
        scheme: str | None = None,
        convention: str = "hrnn",
        mask: Tensor | None = None,
        init_std: float = 1.0,
        bias_std: float = 0.0,
        memory: str = "stored",
        anchor_every: int | None = None,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.variant: HDNNVariant = _lookup(HDNN_VARIANTS, variant, "H-DNN variant")
        self.convention: Convention = _lookup(CONVENTIONS, convention, "convention")
        self.structure, self.field = self.variant.structure, self.variant.field
        self.j_name = self._resolve_j(j)
        self.scheme: Scheme = get_scheme(scheme or self.variant.scheme)
        self._validate_numbers(n_features, depth, t_end, init_std, bias_std)
        J, self.split, X = self._validate_structure(n_features, mask, device)
        self.reversible = self._validate_memory(memory, anchor_every)
        self.memory, self.anchor_every = memory, anchor_every
        self.n_features, self.depth, self.t_end = n_features, depth, float(t_end)
        self.h = self.t_end / depth
        self.init_std, self.bias_std = init_std, bias_std
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.weight = nn.Parameter(torch.empty(depth, n_features, n_features, **factory))
        self.bias = nn.Parameter(torch.empty(depth, n_features, **factory))
        self.register_buffer("J", None if J is None else J.to(**factory))
        self.register_buffer("X", None if X is None else X.to(**factory))
        self.register_buffer("mask", None if mask is None else mask.to(**factory))
        self.reset_parameters()

    @staticmethod
    def _validate_numbers(n: int, depth: int, t_end: float, init_std: float, bias_std: float) -> None:
        _check_positive_int("n_features", n)
        _check_positive_int("depth", depth)
        if not (isinstance(t_end, (int, float)) and 0 < t_end < math.inf):
            raise ValueError(f"t_end must be finite and > 0 (the step is h = t_end / depth), got {t_end!r}")
        for name, value in (("init_std", init_std), ("bias_std", bias_std)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def _resolve_j(self, j: str | None) -> str | None:
        if self.field.uses_j:
            return j or self.convention.j.get(self.variant.name, self.variant.j)
        if j is not None:
            raise ValueError(
                f"{self.variant.name} has no J (its field is {self.field.equation}); leave j unset"
            )
        return None

    def _validate_structure(
        self, n: int, mask: Tensor | None, device
    ) -> tuple[Tensor | None, bool, Tensor | None]:
        r"""Check the structure, :math:`J`, scheme and mask; return :math:`J` (``None`` for a field
        without one), whether the layers are split steps on ``(p, q)`` and then :math:`X` of
        :math:`J = [[0, -X^\top], [X, 0]]` (``None`` for the identity or without a split)."""
        halves = self.structure.halves
        if halves is not None and n % 2:
            raise ValueError(
                f"{self.variant.name} splits the state into (p, q) halves and needs an even "
                f"n_features, got {n}"
            )
        if mask is not None and mask.shape != (n, n):
            raise ValueError(f"mask must have shape ({n}, {n}), got {tuple(mask.shape)}")
        J = X = None
        # tanh(K y + b) splits into the halves' maps only when K couples them (anti-block-diagonal)
        splits = halves == "anti_diagonal"
        if self.field.uses_j:
            J = _lookup(J_MATRICES, self.j_name, "J")(n, dtype=torch.float64, device=device)
            X = J[n // 2 :, : n // 2]
            splits = halves is not None and torch.equal(J, coupling_j(X))
        if not splits:
            if self.scheme.name != "euler":
                raise ValueError(
                    f"scheme {self.scheme.name!r} steps (p, q) halves: it needs K split into "
                    f"(p, q) halves and J = [[0, -X^T], [X, 0]]; {self.variant.name} has K "
                    f"{self.structure.name!r} and J {self.j_name!r}. Use scheme 'euler' or one of "
                    f"{[v.name for v in HDNN_VARIANTS.values() if v.structure.halves]}"
                )
            return J, False, None
        if X is None or torch.equal(X, torch.eye(n // 2, dtype=X.dtype, device=X.device)):
            return J, True, None
        return J, True, X

    def _validate_memory(self, memory: str, anchor_every: int | None) -> bool:
        reversible = _lookup(MEMORY_MODES, memory, "memory mode")
        if reversible and self.scheme.inverse is None:
            raise ValueError(
                f"memory='reversible' recomputes states by the exact inverse step, and scheme "
                f"{self.scheme.name!r} of {self.variant.name} has none; use memory='stored' or one of "
                f"{[v.name for v in HDNN_VARIANTS.values() if get_scheme(v.scheme).inverse]}"
            )
        if anchor_every is not None:
            if not reversible:
                raise ValueError("anchor_every applies only to memory='reversible'")
            _check_positive_int("anchor_every", anchor_every)
        return reversible

    def reset_parameters(self) -> None:
        r"""Raw weights :math:`\sim \mathcal N(0, \mathrm{init\_std}^2)`, biases :math:`\sim \mathcal N(0, \mathrm{bias\_std}^2)`."""
        nn.init.normal_(self.weight, std=self.init_std)
        if self.bias_std:
            nn.init.normal_(self.bias, std=self.bias_std)
        else:  # draws nothing: seeded runs with zero biases keep their random stream
            nn.init.zeros_(self.bias)

    def layer_weights(self) -> Tensor:
        """Every layer's structured (and masked) :math:`K_j`, shape (depth, n, n)."""
        K = self.structure.build(self.weight)
        return K if self.mask is None else K * self.mask

    def layer_hamiltonians(self) -> LogCoshHamiltonian:
        """Every layer's separable energy, stacked: ``K_p``, ``K_q`` (depth, n/2, n/2), biases (depth, n/2).

        Layer ``k``'s energy is the same record with each field indexed by ``k``.
        """
        if not self.split or not self.field.uses_j:
            raise ValueError(f"{self.variant.name} with scheme {self.scheme.name!r} has no separable energy")
        K_p, b_p, K_q, b_q = _HALVES[self.structure.halves](self.layer_weights(), self.bias)
        return LogCoshHamiltonian(K_p, K_q, b_p, b_q, X=self.X)

    def regularizer(self, alpha: float) -> Tensor:
        """:func:`smoothness_regularizer` of this network's layers."""
        return smoothness_regularizer(self.layer_weights(), self.bias, self.h, alpha)

    def _check_state(self, y: Tensor) -> None:
        if not isinstance(y, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() == 0 or y.shape[-1] != self.n_features:
            raise ValueError(f"expected input of shape (*, {self.n_features}), got {tuple(y.shape)}")
        if y.dtype != self.weight.dtype:
            raise TypeError(
                f"input has dtype {y.dtype} but the parameters have {self.weight.dtype}; "
                "convert one of them (e.g. model.to(input.dtype))"
            )
        if y.device != self.weight.device:
            raise ValueError(f"input is on {y.device} but the parameters are on {self.weight.device}")

    # One layer is step(k, state, layer, params) on a state tuple, with `layer` the k-th slice of
    # layer_inputs(): the stored loop, the inverse and the reversible backward all run it.

    def layer_inputs(self) -> tuple[Tensor, ...]:
        """The per-layer tensors a step reads, each with leading dimension ``depth``:
        ``(K_p, b_p, K_q, b_q)`` for split steps, ``(K, b)`` otherwise."""
        K = self.layer_weights()
        return _HALVES[self.structure.halves](K, self.bias) if self.split else (K, self.bias)

    def _params(self) -> tuple[Tensor, ...]:
        """The constant tensors a step reads: :math:`X` for a coupled split step, :math:`J` for a
        whole-state Hamiltonian step, none otherwise."""
        matrix = self.X if self.split else self.J
        return () if matrix is None else (matrix,)

    def _to_state(self, y: Tensor) -> tuple[Tensor, ...]:
        m = self.n_features // 2
        return (y[..., :m], y[..., m:]) if self.split else (y,)

    def _from_state(self, state: tuple[Tensor, ...]) -> Tensor:
        return torch.cat(state, -1) if self.split else state[0]

    def _split_step(self, step: StepFunction, state, layer, params) -> tuple[Tensor, Tensor]:
        grad_v, grad_t = self.field.split(*layer, *params)
        return _ORDERS[self.convention.first](step, *state, grad_v, grad_t, self.h)

    def step(
        self, k: int, state: tuple[Tensor, ...], layer: tuple[Tensor, ...], params
    ) -> tuple[Tensor, ...]:
        """Layer ``k``: the next state from ``state`` (:meth:`layer_inputs` sliced at ``k``)."""
        if self.split:
            return self._split_step(self.scheme.step, state, layer, params)
        K, b = layer
        (y,) = state
        return (y + self.h * self.field.full(y, K, b, *params),)

    def inverse_step(self, k: int, state, layer, params) -> tuple[Tensor, ...]:
        """The exact inverse of :meth:`step` (schemes with an inverse only)."""
        return self._split_step(self.scheme.inverse, state, layer, params)

    def _run(self, y: Tensor, inverse: bool, return_states: bool):
        self._check_state(y)
        state, params = self._to_state(y), self._params()
        # unbind once: its backward is one stack, where indexing K[k] would cost a full-size zero gradient per layer
        layers = list(zip(*(x.unbind(0) for x in self.layer_inputs()), strict=True))
        order = range(self.depth - 1, -1, -1) if inverse else range(self.depth)
        step = self.inverse_step if inverse else self.step
        states = [y]
        for k in order:
            state = step(k, state, layers[k], params)
            if return_states:
                states.append(self._from_state(state))
        out = self._from_state(state)
        return (out, torch.stack(states)) if return_states else out

    def forward(self, y: Tensor, return_states: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The final state :math:`y_N` from the input state :math:`y_0`, both (*, n_features).

        With ``return_states=True``: ``(y_N, states)``, ``states`` (depth + 1, *, n_features)
        holding :math:`y_0, \\dots, y_N`.
        """
        if self.reversible and torch.is_grad_enabled():
            return self._reversible(y, return_states)
        return self._run(y, inverse=False, return_states=return_states)

    def inverse(self, y: Tensor) -> Tensor:
        """:math:`y_0` from :math:`y_N` by the scheme's exact inverse steps."""
        if self.scheme.inverse is None:
            raise ValueError(f"scheme {self.scheme.name!r} of {self.variant.name} has no exact inverse")
        return self._run(y, inverse=True, return_states=False)

    def _reversible(self, y: Tensor, return_states: bool):
        self._check_state(y)
        emit = self._from_state if return_states else None
        emitted, state = reversible_integrate(
            self.step,
            self.inverse_step,
            self._to_state(y),
            self.depth,
            xs=self.layer_inputs(),
            params=self._params(),
            anchor_every=self.anchor_every,
            emit=emit,
        )
        out = self._from_state(state)
        return (out, torch.cat([y.unsqueeze(0), emitted])) if return_states else out

    def extra_repr(self) -> str:
        return (
            f"{self.variant.name}, n_features={self.n_features}, depth={self.depth}, t_end={self.t_end}, "
            f"J={self.j_name}, scheme={self.scheme.name}, convention={self.convention.name}, "
            f"memory={self.memory}, masked={self.mask is not None}"
        )


def build_hdnn(name: str, n_features: int, depth: int, t_end: float = 1.0, **kwargs) -> HamiltonianDNN:
    """A :class:`HamiltonianDNN` of variant ``name`` (one of :func:`available_hdnns`)."""
    return HamiltonianDNN(n_features, depth, t_end, variant=name, **kwargs)


def _node_gradient(x: Tensor, K: Tensor, b: Tensor, reads: list[Tensor], sends: list[Tensor]) -> Tensor:
    r""":math:`K^\top \tanh(K x + b)` computed node by node, in two rounds of neighbour messages.

    Round 1: node k forms :math:`z_k = \tanh(\sum_{l \in \mathrm{reads}[k]} K_{kl} x_l + b_k)`;
    round 2: node i sums :math:`\sum_{k \in \mathrm{sends}[i]} K_{ki} z_k`. ``x`` (*, m) -> (*, m).
    """
    z = [torch.tanh(x[..., reads[k]] @ K[k, reads[k]] + b[k]) for k in range(len(reads))]
    z = torch.stack(z, -1)
    return torch.stack([z[..., sends[i]] @ K[sends[i], i] for i in range(len(sends))], -1)


def per_node_forward(model: HamiltonianDNN, y: Tensor) -> Tensor:
    r"""The forward pass of a distributed H2 network evaluated node by node.

    Node :math:`i` owns :math:`(p_i, q_i)`; each gradient :math:`K_p^\top \tanh(K_p p + b_p)` (and
    likewise for q) is formed by :func:`_node_gradient` from the states of the node's neighbours in
    ``model.mask`` only (all nodes when there is no mask), and the scheme's update is elementwise.
    Equals ``model(y)`` up to round-off: this is the check that the dense network is distributed.

    ``model``: a network with block-diagonal K and :math:`X = I` (H2); ``y`` (*, n) -> (*, n).
    """
    if model.structure.halves != "diagonal" or not model.split or model.X is not None:
        raise ValueError(
            "per-node evaluation needs block-diagonal K and X = I (the distributed H2 form), got "
            f"{model.variant.name} with K {model.structure.name!r}, J {model.j_name!r}, scheme {model.scheme.name!r}"
        )
    model._check_state(y)
    m = model.n_features // 2
    mask = torch.ones_like(model.J) if model.mask is None else model.mask
    graphs = {}
    for half, block in (("p", mask[:m, :m]), ("q", mask[m:, m:])):
        graphs[half] = (
            [row.nonzero().flatten() for row in block],
            [col.nonzero().flatten() for col in block.T],
        )
    K_p, b_p, K_q, b_q = model.layer_inputs()
    order = _ORDERS[model.convention.first]
    p, q = y[..., :m], y[..., m:]
    for k in range(model.depth):
        grad_v = lambda x, k=k: _node_gradient(x, K_q[k], b_q[k], *graphs["q"])  # noqa: E731
        grad_t = lambda x, k=k: _node_gradient(x, K_p[k], b_p[k], *graphs["p"])  # noqa: E731
        p, q = order(model.scheme.step, p, q, grad_v, grad_t, model.h)
    return torch.cat([p, q], -1)


class HDNNClassifier(nn.Module):
    r"""Classifier: place the input in the H-DNN's state, run the H-DNN, read out linearly.

    :math:`y_0` holds ``x`` at the indices given by ``placement`` (a name of :data:`PLACEMENTS`,
    default the H-DNN's convention's: ``"pad_end"`` gives :math:`(x, 0)`, ``"spread"`` puts a 2-D
    point at ``y[0]`` and ``y[n-1]``) and zeros elsewhere; :math:`y_N = \mathrm{hdnn}(y_0)`,
    logits :math:`= W y_N + c` (Galimberti et al. 2023 extend the 2-D inputs the same way).

    Shape: input ``(batch, in_features)``, output logits ``(batch, n_classes)``.
    """

    def __init__(
        self, in_features: int, n_classes: int, hdnn: HamiltonianDNN, placement: str | None = None
    ) -> None:
        super().__init__()
        if in_features > hdnn.n_features:
            raise ValueError(
                f"in_features={in_features} does not fit the H-DNN's width n_features={hdnn.n_features}"
            )
        self.placement = placement or hdnn.convention.placement
        place = _lookup(PLACEMENTS, self.placement, "placement")
        self.in_features = in_features
        self.hdnn = hdnn
        self.register_buffer(
            "index", torch.tensor(place(in_features, hdnn.n_features), device=hdnn.weight.device)
        )
        self.head = nn.Linear(hdnn.n_features, n_classes, device=hdnn.weight.device, dtype=hdnn.weight.dtype)

    def initial_state(self, x: Tensor) -> Tensor:
        """:math:`y_0` (batch, n_features) from ``x`` (batch, in_features)."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected input of shape (batch, {self.in_features}), got {shape}")
        y0 = x.new_zeros(x.shape[0], self.hdnn.n_features)
        return y0.index_copy(1, self.index, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hdnn(self.initial_state(x)))
