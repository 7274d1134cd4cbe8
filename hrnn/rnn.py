r"""Sequence layers with the conventions of :class:`torch.nn.RNN` / :class:`torch.nn.LSTM`.

:class:`RecurrentLayer` owns everything the layers share (like torch's ``RNNBase``):
``batch_first``, unbatched input, ``hx=None`` meaning zeros, stacking ``num_layers`` cells with
dropout between them, ``bidirectional``, :class:`~torch.nn.utils.rnn.PackedSequence` input, an
empty batch, and validation. Each concrete layer only names its cell.

Each layer of the stack runs over the whole sequence before the next one starts, so every
layer's input projection is one matrix multiply. ``forward(x, hx=None) -> (output, h_n)``:

* ``output``: the last layer's emitted state at every step, (T, batch, D * hidden_size),
  (batch, T, D * hidden_size) with ``batch_first``, or (T, D * hidden_size) unbatched, where
  D = 2 with ``bidirectional`` (forward features first, as in torch) and 1 otherwise;
* ``h_n``: the final state of every layer and direction, each part (D * num_layers, batch, n)
  (or (D * num_layers, n) unbatched), ``h_n[k]`` the state of ``cells[k]`` (layer ``k // D``,
  the reverse direction for odd ``k`` when D = 2), n = hidden_size -- a tuple ``(p_n, q_n)`` for
  the Hamiltonian layers, like LSTM's ``(h_n, c_n)`` but with the emitted part *second*
  (:meth:`RecurrentLayer.emitted` picks it for any layer), and a tensor for the one-part
  antisymmetric layers, like RNN's ``h_n``. ``hx`` has the same form, so a sequence can be run
  piece by piece carrying the state.

The reverse direction runs its cell on the time-reversed sequence (each sequence of a packed batch
reversed within its own length) and its outputs are reversed back. With a ``PackedSequence`` the
output is a ``PackedSequence`` too and ``h_n`` holds each sequence's state after its own last step,
as :class:`torch.nn.LSTM` does: the batch, sorted by length, runs in segments over which the set of
unfinished sequences is constant, the state carried from one segment to the next.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .cells import (
    AntisymmetricCell,
    Capabilities,
    CoRNNCell,
    GatedAntisymmetricCell,
    HamiltonianCell,
    LEMCell,
    OscillatorCell,
    RecurrentCell,
    SelectiveHamiltonianCell,
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
    "SelectiveHamiltonianRNN",
]

HiddenState = Tensor | tuple[Tensor, ...]
State = tuple[Tensor, ...]
#: (end step, unfinished sequences) of each stretch of a length-sorted padded batch
Segments = list[tuple[int, int]]


class RecurrentLayer(nn.Module):
    """A stack of ``num_layers`` cells of class ``cell_class`` (two per layer if bidirectional).

    Args:
        input_size: features of the input ``x``.
        hidden_size: features of each layer's state parts.
        num_layers: stacked layers; layer ``l > 0`` takes layer ``l - 1``'s output.
        batch_first: input and output are (batch, T, feature) instead of (T, batch, feature).
        dropout: dropout probability on each layer's output except the last (training only).
        time_dropout: draw one dropout mask per sequence and apply it at every step (UnICORNN's
            and variational RNNs' dropout over time), instead of a new mask at every step.
        bidirectional: each layer also runs a second cell on the time-reversed sequence and
            concatenates its outputs (layer ``l > 0`` then takes 2 * hidden_size features).
        **cell_kw: options of the cell (e.g. ``dt``, ``scheme``), the same for every layer, and
            torch.nn's factory arguments ``device`` and ``dtype``. An option the cell class lists in
            ``per_layer_options`` may instead be a list or tuple of ``num_layers`` values, layer
            ``l``'s cells (both directions) getting entry ``l``; any other option, a list or tuple
            included, passes to the cell as one value (e.g. a ``(low, high)`` pair).

    ``cells[k]`` is layer ``k // D``, direction ``k % D`` (D = :attr:`num_directions`), and owns
    ``h_n[k]``.
    """

    cell_class: ClassVar[type[RecurrentCell]]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        time_dropout: bool = False,
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
        self.time_dropout = bool(time_dropout)
        self.bidirectional = bool(bidirectional)
        width = self.num_directions * hidden_size
        layer_kw = _per_layer_kwargs(self.cell_class, cell_kw, num_layers)
        self.cells = nn.ModuleList(
            self.cell_class(input_size if layer == 0 else width, hidden_size, **layer_kw[layer])
            for layer in range(num_layers)
            for _ in range(self.num_directions)
        )

    @property
    def num_directions(self) -> int:
        """2 with ``bidirectional``, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def capabilities(self) -> Capabilities:
        """What the layer's cell class supports (:class:`hrnn.cells.Capabilities`)."""
        return self.cell_class.capabilities

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state parts, e.g. ``("p", "q")``."""
        return self.cell_class.state_names

    @property
    def state_size(self) -> int:
        """Features of each state part (``hidden_size``)."""
        return self.hidden_size

    @property
    def output_index(self) -> int | None:
        """Which state part the layer emits as ``output``; ``None`` if it emits a read-out of its state."""
        return getattr(self.cells[0], "output_index", None)

    def emitted(self, h: HiddenState) -> Tensor:
        """The emitted part of a state ``h`` of this layer (``h_n`` or ``hx``): ``q_n`` of ``(p_n, q_n)``.

        ``layer.emitted(h_n)[-1]`` is the last layer's emitted final state, what LSTM users read
        as ``h_n[-1]`` (with ``bidirectional``, ``[-2]`` and ``[-1]`` are the forward and the
        reverse direction of the last layer).
        """
        if self.output_index is None:
            raise TypeError(f"{type(self).__name__} emits a read-out of its state, not one of its parts")
        return state_parts(h)[self.output_index]

    def reset_parameters(self) -> None:
        for cell in self.cells:
            cell.reset_parameters()

    def forward(
        self, x: Tensor | PackedSequence, hx: HiddenState | None = None
    ) -> tuple[Tensor | PackedSequence, HiddenState]:
        """Run the stack over ``x``; see the module docstring for shapes."""
        if isinstance(x, PackedSequence):
            return self._forward_packed(x, hx)
        batched = self._validate(x, hx)
        time_major = x.transpose(0, 1) if batched and self.batch_first else x
        if not batched:
            time_major = time_major.unsqueeze(1)
        state = None if hx is None else tuple(h if batched else h.unsqueeze(1) for h in state_parts(hx))
        outputs, h_n = self._run(time_major, state)
        if not batched:
            outputs, h_n = outputs.squeeze(1), tuple(h.squeeze(1) for h in h_n)
        elif self.batch_first:
            # batch-major memory (nn.LSTM returns a transposed view): the block after the layer
            # (GELU, a linear map) ran the default model 5-12 % faster on it (docs/speed.md)
            outputs = outputs.transpose(0, 1).contiguous()
        return outputs, _pack(h_n)

    def _forward_packed(
        self, x: PackedSequence, hx: HiddenState | None
    ) -> tuple[PackedSequence, HiddenState]:
        """A packed batch, run in its sorted order; ``hx`` and ``h_n`` in the caller's order, as in torch."""
        self._validate_packed(x, hx)
        padded, lengths = pad_packed_sequence(PackedSequence(x.data, x.batch_sizes))
        state = None if hx is None else _select_batch(state_parts(hx), x.sorted_indices)
        outputs, h_n = self._run(padded, state, lengths)
        packed = pack_padded_sequence(outputs, lengths)
        output = PackedSequence(packed.data, packed.batch_sizes, x.sorted_indices, x.unsorted_indices)
        return output, _pack(_select_batch(h_n, x.unsorted_indices))

    def _drop(self, outputs: Tensor) -> Tensor:
        """Dropout on a layer's outputs (T, batch, features): one mask per sequence with
        ``time_dropout``, the same at every step, else a new mask per step."""
        if not (self.training and self.dropout > 0 and self.time_dropout):
            return F.dropout(outputs, self.dropout, self.training)
        keep = outputs.new_empty(1, *outputs.shape[1:]).bernoulli_(1 - self.dropout)
        return outputs * keep / (1 - self.dropout)

    def _run(self, x: Tensor, state: State | None, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """The stack on time-major ``x`` (T, batch, input_size), padded if ``lengths`` (sorted,
        descending, on the CPU) are given. Returns ``(outputs, h_n parts)``."""
        segments = None if lengths is None else _segments(lengths)
        outputs, finals = x, []
        for layer in range(self.num_layers):
            if layer:
                outputs = self._drop(outputs)
            directions = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                cell = self.cells[k]
                initial = cell.initial_state(x.shape[1], x) if state is None else tuple(s[k] for s in state)
                inputs = outputs if direction == 0 else _reverse(outputs, lengths)
                out, final = _run_cell(cell, inputs, initial, segments)
                directions.append(out if direction == 0 else _reverse(out, lengths))
                finals.append(final)
            outputs = torch.cat(directions, -1) if len(directions) > 1 else directions[0]
        return outputs, tuple(torch.stack(parts) for parts in zip(*finals, strict=True))

    def _state_shape(self, *batch: int) -> tuple[int, ...]:
        return (self.num_directions * self.num_layers, *batch, self.state_size)

    def _validate(self, x: Tensor, hx: HiddenState | None) -> bool:
        """Check ``x`` and ``hx`` before any numerics; returns whether ``x`` is batched."""
        batched_layout = "(batch, T, input_size)" if self.batch_first else "(T, batch, input_size)"
        expected = {3: batched_layout, 2: "(T, input_size) unbatched"}
        time_dim = 1 if self.batch_first and x.dim() == 3 else 0
        check_input(x, self.input_size, expected, next(self.parameters()), step_dims=(time_dim,))
        batched = x.dim() == 3
        batch = (x.shape[0 if self.batch_first else 1],) if batched else ()
        check_state(hx, self.state_names, self._state_shape(*batch), x)
        return batched

    def _validate_packed(self, x: PackedSequence, hx: HiddenState | None) -> None:
        expected = {2: "(total length, input_size) packed data"}
        check_input(x.data, self.input_size, expected, next(self.parameters()))
        check_state(hx, self.state_names, self._state_shape(int(x.batch_sizes[0])), x.data)

    def extra_repr(self) -> str:
        options = f"num_layers={self.num_layers}, batch_first={self.batch_first}, dropout={self.dropout}"
        options += ", time_dropout=True" if self.time_dropout else ""
        options += ", bidirectional=True" if self.bidirectional else ""
        if self.num_layers > 1:  # the values the cells hold now, one per layer
            for name in getattr(self.cell_class, "per_layer_options", ()):
                values = [_shown(getattr(cell, name)) for cell in self.cells[:: self.num_directions]]
                options += f", {name}=[{', '.join(values)}]"
        return options


def _per_layer_kwargs(cell_class: type, cell_kw: dict[str, Any], num_layers: int) -> list[dict[str, Any]]:
    """The cell options of each of ``num_layers`` layers: entry ``l`` of each option the cell class
    lists in ``per_layer_options`` when given as a list or tuple, every other option as given (a
    JSON or YAML pair such as ``timescales`` arrives as a list and goes to the cell whole)."""
    layers = [dict(cell_kw) for _ in range(num_layers)]
    for name in getattr(cell_class, "per_layer_options", ()):
        value = cell_kw.get(name)
        if not isinstance(value, list | tuple):
            continue
        if len(value) != num_layers:
            raise ValueError(
                f"{name} was given {len(value)} values, one per layer, but num_layers={num_layers}"
            )
        for options, entry in zip(layers, value, strict=True):
            options[name] = entry
    return layers


def _shown(value: object) -> str:
    return f"{value.item():.4g}" if isinstance(value, Tensor) else repr(value)


def _pack(parts: State) -> HiddenState:
    return parts if len(parts) > 1 else parts[0]


def _select_batch(parts: State, indices: Tensor | None) -> State:
    """Each part (layers, batch, n) with its batch reordered by ``indices`` (``None``: as it is)."""
    return parts if indices is None else tuple(h.index_select(1, indices) for h in parts)


def _segments(lengths: Tensor) -> Segments:
    """The stretches of a length-sorted batch over which the unfinished sequences stay the same."""
    ends, counts = torch.unique_consecutive(lengths.flip(0), return_counts=True)
    unfinished = len(lengths) - (counts.cumsum(0) - counts)
    return list(zip(ends.tolist(), unfinished.tolist(), strict=True))


def _reverse(x: Tensor, lengths: Tensor | None) -> Tensor:
    """``x`` (T, batch, f) reversed in time, each sequence within its own length if ``lengths``
    are given (padding stays in place); its own inverse."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0]).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps).to(x.device)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def _run_cell(cell: nn.Module, x: Tensor, state: State, segments: Segments | None) -> tuple[Tensor, State]:
    """``cell.forward_sequence`` over ``x`` (T, batch, f): all at once, or segment by segment on the
    unfinished sequences of a length-sorted padded batch (outputs past a sequence's end are 0)."""
    batch = x.shape[1]
    if batch == 0:
        return _run_empty(cell, x, state)
    if segments is None:
        outputs, *final = cell.forward_sequence(x, *state)
        return outputs, tuple(final)
    chunks, start = [], 0
    for end, active in segments:
        out, *final = cell.forward_sequence(x[start:end, :active], *(s[:active] for s in state))
        chunks.append(F.pad(out, (0, 0, 0, batch - active)))
        state = tuple(torch.cat([f, s[active:]]) for f, s in zip(final, state, strict=True))
        start = end
    return torch.cat(chunks), state


def _run_empty(cell: nn.Module, x: Tensor, state: State) -> tuple[Tensor, State]:
    """An empty batch: the cell runs one extra zero sequence whose results are dropped, so that every
    path of every cell (fast scans included) serves it and the empty results stay in the autograd
    graph, as :class:`torch.nn.LSTM`'s do."""
    x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], 1)
    state = tuple(torch.cat([s, s.new_zeros(1, s.shape[1])]) for s in state)
    outputs, *final = cell.forward_sequence(x, *state)
    return outputs[:, :0], tuple(f[:0] for f in final)


class HamiltonianRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.HamiltonianCell` layers (log-cosh energy, symplectic by default).

    The energy and its equations are in :class:`~hrnn.cells.HamiltonianCell`. Cell options:
    ``dt`` (float, or ``"auto"`` with ``seq_len``), ``scheme``, ``gain``, ``memory``,
    ``anchor_every``, ``fast``, ``emit``. State ``(p, q)``, output :math:`q_t` of the last layer
    (:math:`p_t` with ``emit="p"``).

    Shape (D = 2 with ``bidirectional``, else 1):
        x: (T, batch, input_size), (batch, T, input_size) with ``batch_first``, (T, input_size),
        or a ``PackedSequence``.
        hx, h_n: a tuple (p, q), each (D * num_layers, batch, hidden_size) or
        (D * num_layers, hidden_size); the emitted part is q, the second, or p with ``emit="p"``
        (:meth:`emitted`).
        output: (T, batch, D * hidden_size), (batch, T, D * hidden_size), (T, D * hidden_size), or a
        ``PackedSequence``.
    """

    cell_class = HamiltonianCell


class SelectiveHamiltonianRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.SelectiveHamiltonianCell` layers: the log-cosh energy scaled unit by
    unit by a gate :math:`r_t = \sigma(W_s x_t + b_s)` on each input; the registry's ``hamiltonian``.
    Options, state and shapes as :class:`HamiltonianRNN`; the output is :math:`p_t` of the last
    layer, the *first* part of the state, as LSTM's h (:math:`q_t` with ``emit="q"``)."""

    cell_class = SelectiveHamiltonianCell


class OscillatorRNN(RecurrentLayer):
    r"""Stacked :class:`hrnn.cells.OscillatorCell` layers (UnICORNN-type independent oscillators).

    Equations in :class:`~hrnn.cells.OscillatorCell`. Cell options: ``dt`` (or ``"auto"`` with
    ``seq_len``), ``alpha``, ``scheme``, ``memory``, ``anchor_every``, ``fast``. ``dt`` may also be a
    list of ``num_layers`` entries (each a float or ``"auto"``): layer ``l``'s units then step
    :math:`h_i = dt_l\,\sigma(c_i)`, as in UnICORNN's multi-layer model. Shapes as
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
    (D * num_layers, batch, hidden_size), as :class:`torch.nn.RNN`.
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
