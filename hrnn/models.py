r"""Sequence models for every registry name: residual blocks of a recurrent layer and a linear read-out.

``build_model(name, input_size, hidden_size, output_size)`` returns a :class:`SequenceModel`
taking batch-first input (batch, T, input_size): by default a :class:`hrnn.blocks.ResidualStack`
of two blocks (LayerNorm -> the registry layer -> GELU -> GLU -> residual) whose outputs are
averaged over time (``readout="mean"``); ``num_blocks=0`` gives the bare layer of the seed papers.
The head maps to (batch, output_size) from the mean over time, from the last step's output
(``readout="last"``), from the last layer's whole final state (``readout="state"``:
``(p_T, q_T)`` of a Hamiltonian layer, ``(h_T, c_T)`` of an LSTM), or to (batch, T, output_size)
from every step's output (``readout="sequence"``, for sequence-to-sequence tasks). The same
architecture and defaults serve every registry name, baselines included, so models compare on
their recurrence alone.

``standardize=True`` puts a fixed affine map :math:`(f - \mu) / \sigma` between the selected
features and the head, with :math:`\mu, \sigma` measured on data by
:meth:`SequenceModel.calibrate` (buffers, saved in the state dict). Adam updates every head
weight by about the same amount, so features that vary little around large offsets (the final
state of a slowly rotating Hamiltonian cell after T steps of input drift) otherwise leave the
head badly conditioned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .blocks import DEFAULT_BLOCKS, ResidualStack
from .cells import Capabilities, State, check_input, state_parts
from .linoss import LinOSSRNN
from .rnn import (
    LEMRNN,
    AntisymmetricRNN,
    CoRNN,
    GatedAntisymmetricRNN,
    HamiltonianRNN,
    OscillatorRNN,
    SelectiveHamiltonianRNN,
)
from .validation import lookup

__all__ = [
    "MODELS",
    "READOUTS",
    "SequenceModel",
    "Standardize",
    "available_models",
    "build_model",
    "capabilities",
    "models_with",
]

#: Registry name -> layer class. Every class takes
#: ``(input_size, hidden_size, num_layers=..., batch_first=..., dropout=..., **options)``; an hrnn
#: layer declares what it supports in ``capabilities`` (torch's layers support none of it).
MODELS: dict[str, type[nn.Module]] = {
    # the package's Hamiltonian model: the log-cosh energy with input-selected timescales, above the
    # seed papers' cell (static per-unit timescales) on every benchmark (docs/RESULTS.md section 2)
    "hamiltonian": SelectiveHamiltonianRNN,
    "static_hamiltonian": HamiltonianRNN,
    "oscillator": OscillatorRNN,
    "cornn": CoRNN,
    "antisymmetric": AntisymmetricRNN,
    "gated_antisymmetric": GatedAntisymmetricRNN,
    "lem": LEMRNN,
    "linoss": LinOSSRNN,
    "lstm": nn.LSTM,
    "gru": nn.GRU,
    "rnn": nn.RNN,
}


def capabilities(name: str) -> Capabilities:
    """What the layer registered as ``name`` supports: canonical (p, q) state, symplectic step,
    ``dt="auto"``, ``memory="reversible"`` (:class:`hrnn.cells.Capabilities`)."""
    layer_class = lookup(MODELS, name, "model")
    cell_class = getattr(layer_class, "cell_class", None)
    return cell_class.capabilities if cell_class is not None else Capabilities()


def models_with(**wanted: bool) -> list[str]:
    """Registry names whose capabilities match every ``wanted`` flag, e.g. ``models_with(auto_dt=True)``."""
    return [name for name in MODELS if all(getattr(capabilities(name), k) == v for k, v in wanted.items())]


def _last_step(output: Tensor, state: Tensor | State | None) -> Tensor:
    return output[:, -1]


def _mean_over_time(output: Tensor, state: Tensor | State | None) -> Tensor:
    return output.mean(1)


def _every_step(output: Tensor, state: Tensor | State | None) -> Tensor:
    return output


def _final_state(output: Tensor, state: Tensor | State | None) -> Tensor:
    if state is None:
        raise ValueError('readout="state" needs the layer\'s final state h_n')
    return torch.cat([part[-1] for part in state_parts(state)], dim=-1)


#: Read-out name -> what the head sees, from the layer's ``(output (batch, T, hidden), h_n)``.
READOUTS: dict[str, Callable[[Tensor, Tensor | State | None], Tensor]] = {
    "mean": _mean_over_time,
    "last": _last_step,
    "state": _final_state,
    "sequence": _every_step,
}


class Standardize(nn.Module):
    r""":math:`(f - \mu) / \sigma` over the last dimension, with buffers ``mean`` and ``scale`` (F,).

    The identity until :meth:`calibrate` sets them from data; a feature constant on the
    calibration data keeps scale 1.
    """

    def __init__(self, num_features: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features, device=device, dtype=dtype))
        self.register_buffer("scale", torch.ones(num_features, device=device, dtype=dtype))

    @torch.no_grad()
    def calibrate(self, features: Tensor) -> None:
        """Set ``mean`` and ``scale`` to the per-feature mean and standard deviation of ``features`` (..., F)."""
        flat = features.reshape(-1, features.shape[-1])
        if len(flat) < 2 or not flat.isfinite().all():
            raise ValueError("calibration needs at least 2 finite feature vectors")
        std = flat.std(0)
        self.mean.copy_(flat.mean(0))
        self.scale.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.scale


def available_models() -> list[str]:
    """The registry names accepted by :func:`build_model`."""
    return list(MODELS)


def _state_part_count(rnn: nn.Module, like: Tensor) -> int:
    """How many parts the layer's state has (2 for ``(p, q)`` or ``(h, c)``), from one throw-away step."""
    training = rnn.training
    rnn.eval()  # no dropout: the step must not draw from the global RNG
    with torch.no_grad():
        _, state = rnn(torch.zeros(1, 1, rnn.input_size, device=like.device, dtype=like.dtype))
    rnn.train(training)
    return len(state_parts(state))


class SequenceModel(nn.Module):
    """A batch-first recurrent layer ``rnn`` followed by a linear ``head`` on its outputs.

    Shape: x (batch, T, input_size) -> (batch, output_size) for ``readout="mean"``, ``"last"`` or
    ``"state"``, (batch, T, output_size) for ``readout="sequence"``. With ``standardize`` the
    head's input passes through :class:`Standardize` (call :meth:`calibrate` before training).
    """

    def __init__(
        self, rnn: nn.Module, output_size: int, readout: str = "mean", standardize: bool = False
    ) -> None:
        super().__init__()
        lookup(READOUTS, readout, "readout")
        if not getattr(rnn, "batch_first", False):
            raise ValueError("SequenceModel needs a batch_first=True recurrent layer")
        self.rnn = rnn
        like = next(rnn.parameters())  # the head follows the layer's dtype and device
        features = rnn.hidden_size * (_state_part_count(rnn, like) if readout == "state" else 1)
        factory = {"device": like.device, "dtype": like.dtype}
        self.standardize = Standardize(features, **factory) if standardize else None
        self.head = nn.Linear(features, output_size, **factory)
        self.readout = readout

    def forward(self, x: Tensor) -> Tensor:
        self._validate(x)
        output, state = self.rnn(x)
        return self.decode(output, state)

    def features(self, output: Tensor, state: Tensor | State | None = None) -> Tensor:
        """What the head sees: the selection ``readout`` makes of ``(output, h_n)``, standardised if asked."""
        selected = READOUTS[self.readout](output, state)
        return selected if self.standardize is None else self.standardize(selected)

    def decode(self, output: Tensor, state: Tensor | State | None = None) -> Tensor:
        """The head on the layer's output (batch, T, hidden_size) and final state ``h_n`` (needed by ``readout="state"``)."""
        return self.head(self.features(output, state))

    @torch.no_grad()
    def selected_features(self, x: Tensor, chunk: int = 256) -> Tensor:
        """The ``readout``'s selection for batch-first inputs ``x`` (N, T, input_size), before any
        standardisation; run without gradients, ``chunk`` sequences at a time to bound the memory
        of the per-step outputs."""
        self._validate(x)
        selected = []
        for part in x.split(chunk):
            output, state = self.rnn(part)
            selected.append(READOUTS[self.readout](output, state))
        return torch.cat(selected)

    def calibrate(self, x: Tensor, chunk: int = 256) -> None:
        """Measure the standardisation's mean and scale on batch-first inputs ``x`` (N, T, input_size)."""
        if self.standardize is None:
            raise ValueError("calibrate() needs a model built with standardize=True")
        self.standardize.calibrate(self.selected_features(x, chunk))

    def _validate(self, x: Tensor) -> None:
        expected = {3: "(batch, T, input_size)"}
        check_input(x, self.rnn.input_size, expected, self.head.weight)

    def extra_repr(self) -> str:
        return f"readout={self.readout!r}, standardize={self.standardize is not None}"


def build_model(
    name: str,
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    num_blocks: int = DEFAULT_BLOCKS,
    num_layers: int = 1,
    readout: str = "mean",
    standardize: bool = False,
    seq_len: int | None = None,
    **layer_kw,
) -> SequenceModel:
    """A :class:`SequenceModel` of the layer registered as ``name`` (see :func:`available_models`).

    With ``num_blocks >= 1`` (default 2) the model is a :class:`hrnn.blocks.ResidualStack` of that
    many blocks, each holding a ``name`` layer of ``num_layers`` cells of width ``hidden_size``;
    ``num_blocks=0`` is the bare layer with the head on its outputs, as in the seed papers.
    ``layer_kw`` go to every layer: ``dropout`` (on each block's update, or between the bare
    layer's cells), ``device``, ``dtype`` and the cell's options (``dt``, ``scheme``, ``alpha``, ...
    for the hrnn cells; torch's own keyword arguments, e.g. ``nonlinearity``, for ``lstm`` /
    ``gru`` / ``rnn``). The head follows the layer's dtype and device.

    ``seq_len`` (the sequence length the model will see) goes only to the layers that choose their
    step size from it (``capabilities(name).auto_dt``, used with ``dt="auto"``); others ignore it.
    """
    layer_class = lookup(MODELS, name, "model")
    if seq_len is not None and capabilities(name).auto_dt:
        layer_kw["seq_len"] = seq_len
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"num_blocks must be an int >= 0, got {num_blocks!r}")
    if num_blocks == 0:
        rnn = layer_class(input_size, hidden_size, num_layers=num_layers, batch_first=True, **layer_kw)
    else:
        rnn = ResidualStack(
            layer_class,
            input_size,
            hidden_size,
            num_blocks,
            batch_first=True,
            num_layers=num_layers,
            **layer_kw,
        )
    return SequenceModel(rnn, output_size, readout, standardize)
