r"""Distributed H-DNNs: the sparsity mask of :math:`K_j` from a graph (:func:`distributed_mask`), and
the node-by-node forward pass that shows each node needs only its neighbours (:func:`per_node_forward`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .conventions import ORDERS
from .network import HamiltonianDNN


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
    order = ORDERS[model.convention.first]
    p, q = y[..., :m], y[..., m:]
    for k in range(model.depth):
        grad_v = lambda x, k=k: _node_gradient(x, K_q[k], b_q[k], *graphs["q"])  # noqa: E731
        grad_t = lambda x, k=k: _node_gradient(x, K_p[k], b_p[k], *graphs["p"])  # noqa: E731
        p, q = order(model.scheme.step, p, q, grad_v, grad_t, model.h)
    return torch.cat([p, q], -1)
