"""Sequence models for every registry name: a recurrent layer and a linear read-out.

``build_model(name, input_size, hidden_size, output_size)`` returns a :class:`SequenceModel`
taking batch-first input (batch, T, input_size) and returning (batch, output_size) from the last
step's output (``readout="last"``) or (batch, T, output_size) from every step's
(``readout="sequence"``, for sequence-to-sequence tasks).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .cells import check_input
from .rnn import AntisymmetricRNN, CoRNN, GatedAntisymmetricRNN, HamiltonianRNN, OscillatorRNN

__all__ = ["MODELS", "READOUTS", "SequenceModel", "available_models", "build_model"]

#: Registry name -> layer class. Every class takes
#: ``(input_size, hidden_size, num_layers=..., batch_first=..., dropout=..., **options)``.
MODELS: dict[str, type[nn.Module]] = {
    "hamiltonian": HamiltonianRNN,
    "oscillator": OscillatorRNN,
    "cornn": CoRNN,
    "antisymmetric": AntisymmetricRNN,
    "gated_antisymmetric": GatedAntisymmetricRNN,
    "lstm": nn.LSTM,
    "gru": nn.GRU,
    "rnn": nn.RNN,
}


def _last_step(output: Tensor) -> Tensor:
    return output[:, -1]


def _every_step(output: Tensor) -> Tensor:
    return output


#: Read-out name -> the selection of the layer output (batch, T, hidden) that the head sees.
READOUTS: dict[str, Callable[[Tensor], Tensor]] = {"last": _last_step, "sequence": _every_step}


def available_models() -> list[str]:
    """The registry names accepted by :func:`build_model`."""
    return list(MODELS)


class SequenceModel(nn.Module):
    """A batch-first recurrent layer ``rnn`` followed by a linear ``head`` on its outputs.

    Shape: x (batch, T, input_size) -> (batch, output_size) for ``readout="last"``,
    (batch, T, output_size) for ``readout="sequence"``.
    """

    def __init__(self, rnn: nn.Module, output_size: int, readout: str = "last") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; known readouts: {sorted(READOUTS)}")
        if not getattr(rnn, "batch_first", False):
            raise ValueError("SequenceModel needs a batch_first=True recurrent layer")
        self.rnn = rnn
        like = next(rnn.parameters())  # the head follows the layer's dtype and device
        self.head = nn.Linear(rnn.hidden_size, output_size, device=like.device, dtype=like.dtype)
        self.readout = readout

    def forward(self, x: Tensor) -> Tensor:
        self._validate(x)
        output, _ = self.rnn(x)
        return self.decode(output)

    def decode(self, output: Tensor) -> Tensor:
        """The head on the layer's output (batch, T, hidden_size), as selected by ``readout``."""
        return self.head(READOUTS[self.readout](output))

    def _validate(self, x: Tensor) -> None:
        expected = {3: "(batch, T, input_size)"}
        check_input(x, self.rnn.input_size, expected, self.head.weight)

    def extra_repr(self) -> str:
        return f"readout={self.readout!r}"


def build_model(
    name: str,
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    num_layers: int = 1,
    readout: str = "last",
    **cell_kw,
) -> SequenceModel:
    """A :class:`SequenceModel` with the layer registered as ``name`` (see :func:`available_models`).

    ``cell_kw`` go to the layer: ``dropout``, ``device``, ``dtype`` and the cell's options (``dt``,
    ``scheme``, ``seq_len``, ``alpha``, ``gamma``, ``epsilon``, ... for the hrnn cells; torch's
    own keyword arguments, e.g. ``nonlinearity``, for ``lstm`` / ``gru`` / ``rnn``). The head
    follows the layer's dtype and device.
    """
    try:
        layer_class = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {available_models()}") from None
    rnn = layer_class(input_size, hidden_size, num_layers=num_layers, batch_first=True, **cell_kw)
    return SequenceModel(rnn, output_size, readout)
