"""The smoothness regulariser of an H-DNN's parameters across layers, against exploding gradients."""

from __future__ import annotations

from torch import Tensor


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
