"""The H-DNN classifier: the input placed in the initial state, an H-DNN, a linear read-out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..validation import lookup
from .conventions import PLACEMENTS
from .network import HamiltonianDNN


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
        place = lookup(PLACEMENTS, self.placement, "placement")
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
