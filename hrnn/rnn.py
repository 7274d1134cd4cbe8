r"""Sequence layers with the conventions of :class:`torch.nn.RNN` / :class:`torch.nn.LSTM`.

:class:`RecurrentLayer` owns everything the layers share (like torch's ``RNNBase``):
``batch_first``, unbatched input, ``hx=None`` meaning zeros, stacking ``num_layers`` cells with
dropout between them, and validation. Each concrete layer only names its cell.

Each layer of the stack runs over the whole sequence before the next one starts, so every
layer's input projection is one matrix multiply. ``forward(x, hx=None) -> (output, h_n)``:

* ``output``: the last layer's emitted state at every step,
  (T, batch, hidden_size), (batch, T, hidden_size) with ``batch_first``, or (T, hidden_size) unbatched;
* ``h_n``: the final state of every layer, each part (num_layers, batch, hidden_size) (or
  (num_layers, hidden_size) unbatched) -- a tuple ``(p_n, q_n)`` for the Hamiltonian layers, like
  LSTM's ``(h_n, c_n)``, and a tensor for the one-part antisymmetric layers, like RNN's ``h_n``.
  ``hx`` has the same form, so a sequence can be run piece by piece carrying the state.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cells import (
    AntisymmetricCell,
    Capabilities,
    CoRNNCell,
    GatedAntisymmetricCell,
    HamiltonianCell,
    LEMCell,
    OscillatorCell,
    RecurrentCell,
    state_parts,
)
from .validation import check_input, check_size, check_state

__all__ = [
    "LEMRNN",
    "AntisymmetricRNN",
    "CoRNN",
    "GatedAntisymmetricRNN",
    "HamiltonianRNN",
    "OscillatorRNN",
    "RecurrentLayer",
]

HiddenState = Tensor | tuple[Tensor, ...]


class RecurrentLayer(nn.Module):
    """A stack of ``num_layers`` cells of class ``cell_class`` run over a sequence.

    Args:
        input_size: features of the input ``x``.
        hidden_size: features of each layer's state parts.
        num_layers: stacked layers; layer ``l > 0`` takes layer ``l - 1``'s output.
        batch_first: input and output are (batch, T, feature) instead of (T, batch, feature).
        dropout: dropout probability on each layer's output except the last (training only).
        **cell_kw: options of the cell (e.g. ``dt``, ``scheme``), the same for every layer, and
            torch.nn's factory arguments ``device`` and ``dtype``.
    """

    cell_class: ClassVar[type[RecurrentCell]]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        batch_first: bool = False,
        dropout: float = 0.0,
        **cell_kw,
    ) -> None:
        super().__init__()
        check_size("num_layers", num_layers)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.cells = nn.ModuleList(
            self.cell_class(input_size if layer == 0 else hidden_size, hidden_size, **cell_kw)
            for layer in range(num_layers)
        )

    @property
    def capabilities(self) -> Capabilities:
        """What the layer's cell class supports (:class:`hrnn.cells.Capabilities`)."""
        return self.cell_class.capabilities

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state parts, e.g. ``("p", "q")``."""
        return self.cell_class.state_names

    @property
    def output_index(self) -> int:
        """Which state part the layer emits as ``output`` (the last layer's, at every step)."""
        return self.cell_class.output_index

    def reset_parameters(self) -> None:
        for cell in self.cells:
            cell.reset_parameters()

    def forward(self, x: Tensor, hx: HiddenState | None = None) -> tuple[Tensor, HiddenState]:
        """Run the stack over ``x``; see the module docstring for shapes."""
        batched = self._validate(x, hx)
        time_major = x.transpose(0, 1) if batched and self.batch_first else x
        if not batched:
            time_major = time_major.unsqueeze(1)
        batch = time_major.shape[1]
        state = None if hx is None else tuple(h if batched else h.unsqueeze(1) for h in state_parts(hx))
        outputs, finals = time_major, []
        for layer, cell in enumerate(self.cells):
            if layer:
                outputs = F.dropout(outputs, self.dropout, self.training)
            layer_state = cell.initial_state(batch, x) if state is None else tuple(s[layer] for s in state)
            outputs, *final = cell.forward_sequence(outputs, *layer_state)
            finals.append(final)
        h_n = tuple(torch.stack(parts) for parts in zip(*finals, strict=True))
        if not batched:
            outputs, h_n = outputs.squeeze(1), tuple(h.squeeze(1) for h in h_n)
        elif self.batch_first:
            outputs = outputs.transpose(0, 1)
        return outputs, h_n if len(h_n) > 1 else h_n[0]

    def _validate(self, x: Tensor, hx: HiddenState | None) -> bool:
        """Check ``x`` and ``hx`` before any numerics; returns whether ``x`` is batched."""
        batched_layout = "(batch, T, input_size)" if self.batch_first else "(T, batch, input_size)"
        expected = {3: batched_layout, 2: "(T, input_size) unbatched"}
        check_input(x, self.input_size, expected, self.cells[0].weight_ih)
        batched = x.dim() == 3
        if batched:
            shape = (self.num_layers, x.shape[0 if self.batch_first else 1], self.hidden_size)
        else:
            shape = (self.num_layers, self.hidden_size)
        check_state(hx, self.state_names, shape, x)
        return batched

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, batch_first={self.batch_first}, dropout={self.dropout}"


class HamiltonianRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.HamiltonianCell` layers (log-cosh energy, symplectic by default).

    The energy and its equations are in :class:`~hrnn.cells.HamiltonianCell`. Cell options:
    ``dt`` (float, or ``"auto"`` with ``seq_len``), ``scheme``, ``gain``, ``memory``,
    ``anchor_every``, ``fast``. State ``(p, q)``, output :math:`q_t` of the last layer.

    Shape:
        x: (T, batch, input_size), (batch, T, input_size) with ``batch_first``, or (T, input_size).
        hx, h_n: a tuple (p, q), each (num_layers, batch, hidden_size) or (num_layers, hidden_size).
        output: (T, batch, hidden_size), (batch, T, hidden_size) or (T, hidden_size).
    """

    cell_class = HamiltonianCell


class OscillatorRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.OscillatorCell` layers (UnICORNN-type independent oscillators).

    Equations in :class:`~hrnn.cells.OscillatorCell`. Cell options: ``dt`` (or ``"auto"`` with
    ``seq_len``), ``alpha``, ``scheme``, ``memory``, ``anchor_every``, ``fast``. Shapes as
    :class:`HamiltonianRNN`.
    """

    cell_class = OscillatorCell


class CoRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.CoRNNCell` layers (coupled oscillatory RNN).

    .. math::
        z_t = z_{t-1} + dt\,(\tanh(W y_{t-1} + \mathcal W z_{t-1} + V x_t + b) - \gamma y_{t-1} - \epsilon z_{t-1}),
        \qquad y_t = y_{t-1} + dt\, z_t.

    Cell options: ``dt``, ``gamma``, ``epsilon``. State ``(z, y)``, output :math:`y_t`; shapes as
    :class:`HamiltonianRNN`.
    """

    cell_class = CoRNNCell


class AntisymmetricRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.AntisymmetricCell` layers.

    .. math::
        h_t = h_{t-1} + \epsilon \tanh((W - W^\top - \gamma I) h_{t-1} + V x_t + b).

    Cell options: ``epsilon``, ``gamma``. State and ``hx``/``h_n`` a single tensor
    (num_layers, batch, hidden_size), as :class:`torch.nn.RNN`.
    """

    cell_class = AntisymmetricCell


class GatedAntisymmetricRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.GatedAntisymmetricCell` layers.

    .. math::
        h_t = h_{t-1} + \epsilon\,\sigma(A h_{t-1} + V_z x_t + b_z) \odot \tanh(A h_{t-1} + V x_t + b),
        \qquad A = W - W^\top - \gamma I.

    Shapes as :class:`AntisymmetricRNN`.
    """

    cell_class = GatedAntisymmetricCell


class LEMRNN(RecurrentLayer):
    """Stacked :class:`hrnn.cells.LEMCell` layers (long expressive memory); equations in the cell.

    Cell option: ``dt``. State ``(z, y)``, output :math:`y_t`; shapes as :class:`HamiltonianRNN`.
    """

    cell_class = LEMCell
