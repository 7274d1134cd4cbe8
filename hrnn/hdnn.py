r"""Feed-forward Hamiltonian deep neural networks (H-DNNs).

Galimberti, Furieri, Xu & Ferrari-Trecate, "Hamiltonian Deep Neural Networks Guaranteeing
Non-vanishing Gradients by Design", IEEE TAC 2023, and "A unified framework for Hamiltonian
deep neural networks" (L4DC 2021). A network of depth :math:`N` integrates

.. math::
    \dot y = J K(t)^\top \tanh(K(t) y + b(t)), \qquad t \in [0, t_{end}],

with :math:`N` steps of size :math:`h = t_{end} / N`; layer :math:`j` uses its own
:math:`K_j, b_j` (stacked parameters ``weight`` (N, n, n) and ``bias`` (N, n)). The variants
differ in how :math:`K_j` is built from ``weight``, in :math:`J` and in the scheme
(:data:`HDNN_VARIANTS`):

======  ================================  ======================  =================
name    :math:`K_j`                       :math:`J`               scheme
======  ================================  ======================  =================
H1      full                              J1 (or J2)              forward Euler
H2      blockdiag(K_p, K_q)               [[0, -I], [I, 0]]       symplectic Euler
MS1     [[0, K_0], [-K_0^T, 0]]           J1                      symplectic Euler
MS2     K_0 - K_0^T (skew)                J1                      forward Euler
MS3     [[0, K_1], [K_2, 0]]              J1                      symplectic Euler
======  ================================  ======================  =================

MS1 and MS2 are Haber & Ruthotto's (2017) Hamiltonian-inspired and antisymmetric networks, MS3
Chang et al.'s (2018) two-layer Hamiltonian network, written as H-DNNs. For the block-diagonal
and anti-block-diagonal :math:`K` the energy :math:`\sum_i \log\cosh((K y + b)_i)` is separable
in the halves ``y = (p, q)``, so the symplectic schemes of :mod:`hrnn.integrators` apply through
a :class:`~hrnn.hamiltonians.LogCoshHamiltonian` per layer, with the coupling :math:`X` read from
:math:`J = [[0, -X^\top], [X, 0]]` (H2: :math:`X = I`; J1: :math:`X = -I`). A full or skew
:math:`K` is not separable and is integrated with forward Euler on the general field
:func:`~hrnn.hamiltonians.hdnn_vector_field`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hamiltonians import LogCoshHamiltonian, canonical_j, coupling_j, hdnn_vector_field, j1, j2
from .integrators import GradientMap, Scheme, get_scheme, integrate

__all__ = [
    "HDNN_VARIANTS",
    "J_MATRICES",
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
    return w - w.mT


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

    ``halves`` names how a separable :math:`K` splits into the energies of p and q
    (``"diagonal"`` or ``"anti_diagonal"``), or is ``None`` when :math:`K` mixes p and q.
    """

    name: str
    build: Callable[[Tensor], Tensor]
    halves: str | None


def _canonical(n: int, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """H2's :math:`[[0, -I], [I, 0]]` of size (n, n); ``n`` must be even."""
    if n % 2:
        raise ValueError(f"the canonical J needs an even state width, got {n}")
    return canonical_j(n // 2, dtype=dtype, device=device)


J_MATRICES: dict[str, Callable[..., Tensor]] = {"canonical": _canonical, "J1": j1, "J2": j2}


@dataclass(frozen=True)
class HDNNVariant:
    """One H-DNN family: the structure of :math:`K_j`, the default :math:`J` and scheme."""

    name: str
    structure: Structure
    j: str
    scheme: str
    reference: str


_FULL = Structure("full", _full, None)
_SKEW = Structure("skew", _skew, None)

HDNN_VARIANTS: dict[str, HDNNVariant] = {
    v.name: v
    for v in (
        HDNNVariant("H1", _FULL, "J1", "euler", "Galimberti et al. 2023, H1"),
        HDNNVariant(
            "H2",
            Structure("block_diagonal", _block_diagonal, "diagonal"),
            "canonical",
            "symplectic_euler",
            "Galimberti et al. 2023, H2",
        ),
        HDNNVariant(
            "MS1",
            Structure("hamiltonian_inspired", _hamiltonian_inspired, "anti_diagonal"),
            "J1",
            "symplectic_euler",
            "Haber & Ruthotto 2017, Hamiltonian-inspired network",
        ),
        HDNNVariant("MS2", _SKEW, "J1", "euler", "Haber & Ruthotto 2017, antisymmetric network"),
        HDNNVariant(
            "MS3",
            Structure("two_layer", _two_layer, "anti_diagonal"),
            "J1",
            "symplectic_euler",
            "Chang et al. 2018, two-layer Hamiltonian network",
        ),
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


class HamiltonianDNN(nn.Module):
    r"""A depth-``depth`` H-DNN on states ``y`` of width ``n_features``.

    Layer :math:`j` maps :math:`y_j \mapsto y_{j+1}` by one step of size :math:`h = t_{end}/N`
    of :math:`\dot y = J K_j^\top \tanh(K_j y + b_j)` with the variant's scheme (module
    docstring). ``j`` and ``scheme`` override the variant's defaults (a symplectic scheme needs a
    separable structure and :math:`J = [[0, -X^\top], [X, 0]]`); ``mask`` (n, n) fixes zeros of
    every :math:`K_j` (:func:`distributed_mask`).

    Shape: input ``(*, n_features)``, output ``(*, n_features)``, the final state :math:`y_N`.
    Parameters: ``weight`` (depth, n, n), the raw :math:`K_j` before the structure is applied,
    and ``bias`` (depth, n).
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
        mask: Tensor | None = None,
        init_std: float = 1.0,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.variant: HDNNVariant = _lookup(HDNN_VARIANTS, variant, "H-DNN variant")
        self.structure = self.variant.structure
        self.j_name = j or self.variant.j
        self.scheme: Scheme = get_scheme(scheme or self.variant.scheme)
        J, self.separable, X = self._validate_config(n_features, depth, t_end, mask, init_std, device)
        self.n_features, self.depth, self.t_end = n_features, depth, float(t_end)
        self.h = self.t_end / depth
        self.init_std = init_std
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.weight = nn.Parameter(torch.empty(depth, n_features, n_features, **factory))
        self.bias = nn.Parameter(torch.empty(depth, n_features, **factory))
        self.register_buffer("J", J.to(**factory))
        self.register_buffer("X", None if X is None else X.to(**factory))
        self.register_buffer("mask", None if mask is None else mask.to(**factory))
        self.reset_parameters()

    def _validate_config(
        self, n: int, depth: int, t_end: float, mask: Tensor | None, init_std: float, device
    ) -> tuple[Tensor, bool, Tensor | None]:
        """Check the arguments; return :math:`J`, whether the energy is separable in (p, q) with
        :math:`J = [[0, -X^\top], [X, 0]]`, and then :math:`X` (``None`` for the identity)."""
        for name, value in (("n_features", n), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(t_end, (int, float)) and 0 < t_end < math.inf):
            raise ValueError(f"t_end must be finite and > 0 (the step is h = t_end / depth), got {t_end!r}")
        if not init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        halves = self.structure.halves
        if halves is not None and n % 2:
            raise ValueError(
                f"{self.variant.name} splits the state into (p, q) halves and needs an even "
                f"n_features, got {n}"
            )
        J = _lookup(J_MATRICES, self.j_name, "J")(n, dtype=torch.float64, device=device)
        if mask is not None and mask.shape != (n, n):
            raise ValueError(f"mask must have shape ({n}, {n}), got {tuple(mask.shape)}")
        m = n // 2
        X = J[m:, :m]
        if halves is None or not torch.equal(J, coupling_j(X)):
            if self.scheme.name != "euler":
                raise ValueError(
                    f"scheme {self.scheme.name!r} integrates separable energies: it needs K split into "
                    f"(p, q) halves and J = [[0, -X^T], [X, 0]]; {self.variant.name} has K "
                    f"{self.structure.name!r} and J {self.j_name!r}. Use scheme 'euler' or one of "
                    f"{[v.name for v in HDNN_VARIANTS.values() if v.structure.halves]}"
                )
            return J, False, None
        return J, True, None if torch.equal(X, torch.eye(m, dtype=X.dtype, device=X.device)) else X

    def reset_parameters(self) -> None:
        r"""Raw weights :math:`\sim \mathcal N(0, \mathrm{init\_std}^2)`, biases zero."""
        nn.init.normal_(self.weight, std=self.init_std)
        nn.init.zeros_(self.bias)

    def layer_weights(self) -> Tensor:
        """Every layer's structured (and masked) :math:`K_j`, shape (depth, n, n)."""
        K = self.structure.build(self.weight)
        return K if self.mask is None else K * self.mask

    def layer_hamiltonians(self) -> LogCoshHamiltonian:
        """Every layer's separable energy, stacked: ``K_p``, ``K_q`` (depth, n/2, n/2), biases (depth, n/2).

        Layer ``k``'s energy is the same record with each field indexed by ``k``.
        """
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

    def _run(self, y: Tensor, inverse: bool) -> Tensor:
        self._check_state(y)
        if not self.separable:  # forward Euler on the general field (the only scheme it allows)
            # unbind once: its backward is one stack, where indexing K[k] would cost a full-size zero gradient per layer
            for K, b in zip(self.layer_weights().unbind(0), self.bias.unbind(0), strict=True):
                y = y + self.h * hdnn_vector_field(y, K, b, self.J)
            return y
        e = self.layer_hamiltonians()
        layers = [
            LogCoshHamiltonian(*fields, X=e.X)
            for fields in zip(e.K_p.unbind(0), e.K_q.unbind(0), e.b_p.unbind(0), e.b_q.unbind(0), strict=True)
        ]

        def grads(k: int) -> tuple[GradientMap, GradientMap]:
            return layers[k].grad_v, layers[k].grad_t

        m = self.n_features // 2
        p, q = integrate(y[..., :m], y[..., m:], grads, self.h, self.depth, self.scheme, inverse=inverse)
        return torch.cat([p, q], -1)

    def forward(self, y: Tensor) -> Tensor:
        """The final state :math:`y_N` from the input state :math:`y_0`, both (*, n_features)."""
        return self._run(y, inverse=False)

    def inverse(self, y: Tensor) -> Tensor:
        """:math:`y_0` from :math:`y_N` by the scheme's exact inverse steps (symplectic schemes only)."""
        if self.scheme.inverse is None:
            raise ValueError(f"scheme {self.scheme.name!r} of {self.variant.name} has no exact inverse")
        return self._run(y, inverse=True)

    def extra_repr(self) -> str:
        return (
            f"{self.variant.name}, n_features={self.n_features}, depth={self.depth}, t_end={self.t_end}, "
            f"J={self.j_name}, scheme={self.scheme.name}, masked={self.mask is not None}"
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
    if model.structure.halves != "diagonal" or not model.separable or model.X is not None:
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
    e = model.layer_hamiltonians()

    def grads(k: int) -> tuple[GradientMap, GradientMap]:
        return (
            lambda q: _node_gradient(q, e.K_q[k], e.b_q[k], *graphs["q"]),
            lambda p: _node_gradient(p, e.K_p[k], e.b_p[k], *graphs["p"]),
        )

    p, q = integrate(y[..., :m], y[..., m:], grads, model.h, model.depth, model.scheme)
    return torch.cat([p, q], -1)


class HDNNClassifier(nn.Module):
    r"""Classifier: zero-pad the input to the H-DNN's width, run the H-DNN, read out linearly.

    :math:`y_0 = (x, 0)`, :math:`y_N = \mathrm{hdnn}(y_0)`, logits :math:`= W y_N + c`
    (Galimberti et al. 2023 pad the 2-D inputs the same way).

    Shape: input ``(batch, in_features)``, output logits ``(batch, n_classes)``.
    """

    def __init__(self, in_features: int, n_classes: int, hdnn: HamiltonianDNN) -> None:
        super().__init__()
        if in_features > hdnn.n_features:
            raise ValueError(
                f"in_features={in_features} does not fit the H-DNN's width n_features={hdnn.n_features}"
            )
        self.in_features = in_features
        self.hdnn = hdnn
        self.head = nn.Linear(hdnn.n_features, n_classes, device=hdnn.weight.device, dtype=hdnn.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected input of shape (batch, {self.in_features}), got {shape}")
        y0 = torch.nn.functional.pad(x, (0, self.hdnn.n_features - self.in_features))
        return self.head(self.hdnn(y0))
