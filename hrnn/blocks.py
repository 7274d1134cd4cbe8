r"""Deep residual stacks of recurrent layers: the sequence architecture of state-space-model stacks.

One block, with any recurrent layer ``L`` of the registry (width ``n`` in and out):

.. math::
    x \leftarrow x + \mathrm{Dropout}\big(\mathrm{GLU}(W\,\mathrm{GELU}(L(\mathrm{LayerNorm}(x))))\big),
    \qquad \mathrm{GLU}(a, b) = a \odot \sigma(b),\ W \in \mathbb R^{2n \times n}.

:class:`ResidualStack` is an encoder ``Linear(input_size, n)``, ``num_blocks`` blocks and a final
``LayerNorm``, with the call conventions of :class:`torch.nn.LSTM` (``batch_first``, unbatched
input, ``forward(x, hx=None) -> (output, h_n)``): each part of ``h_n`` stacks the blocks' final
states as a multi-layer RNN stacks its layers', so the stack runs step by step as well as whole
(what :mod:`hrnn.gradients` needs to measure hidden-state gradients). The normalisation keeps
every layer's input at unit scale whatever the depth, and the GLU gives the stack the
input-dependent gating that a conservative (Hamiltonian) layer lacks by itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DEFAULT_BLOCKS", "ResidualBlock", "ResidualStack"]

#: Residual blocks of :func:`hrnn.models.build_model` and :class:`ResidualStack` by default.
DEFAULT_BLOCKS = 2

State = Tensor | tuple[Tensor, ...]


def _parts(state: State) -> tuple[Tensor, ...]:
    return (state,) if isinstance(state, Tensor) else tuple(state)


class ResidualBlock(nn.Module):
    """``x + Dropout(GLU(W GELU(layer(LayerNorm(x)))))`` for a batch-first layer of width ``n``.

    Shape: x (batch, T, n) -> (batch, T, n); the layer's state passes through unchanged.
    """

    def __init__(
        self, layer: nn.Module, width: int, dropout: float = 0.0, *, device=None, dtype=None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm = nn.LayerNorm(width, **factory)
        self.layer = layer
        self.mix = nn.Linear(width, 2 * width, **factory)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, hx: State | None = None) -> tuple[Tensor, State]:
        output, state = self.layer(self.norm(x), hx)
        return x + self.dropout(F.glu(self.mix(F.gelu(output)), dim=-1)), state


class ResidualStack(nn.Module):
    """Encoder, ``num_blocks`` :class:`ResidualBlock` of ``layer_class`` layers, final LayerNorm.

    Args:
        layer_class: a recurrent layer class called as ``layer_class(hidden_size, hidden_size,
            batch_first=True, **layer_kw)`` (any registry layer, torch's included).
        input_size, hidden_size: features of the input and width of every block.
        num_blocks: residual blocks.
        batch_first: input and output (batch, T, feature) instead of (T, batch, feature).
        dropout: dropout on each block's update (training only).
        **layer_kw: options of every block's layer, and torch.nn's ``device`` / ``dtype``.

    Shape: x (T, batch, input_size), (batch, T, input_size) with ``batch_first``, or (T, input_size)
    unbatched -> output of the same layout with ``hidden_size`` features; ``hx`` / ``h_n`` as the
    layer's, each part (num_blocks * num_layers, batch, hidden_size) (or without the batch
    dimension unbatched), block by block.
    """

    #: The output is not one of the state parts but a function of them: :meth:`output_from_states`.
    output_index = None

    def __init__(
        self,
        layer_class: type[nn.Module],
        input_size: int,
        hidden_size: int,
        num_blocks: int = DEFAULT_BLOCKS,
        batch_first: bool = False,
        dropout: float = 0.0,
        **layer_kw,
    ) -> None:
        super().__init__()
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {k: layer_kw[k] for k in ("device", "dtype") if k in layer_kw}
        self.input_size, self.hidden_size, self.num_blocks = input_size, hidden_size, num_blocks
        self.batch_first = bool(batch_first)
        self.encoder = nn.Linear(input_size, hidden_size, **factory)
        self.blocks = nn.ModuleList(
            ResidualBlock(
                layer_class(hidden_size, hidden_size, batch_first=True, **layer_kw),
                hidden_size,
                dropout,
                **factory,
            )
            for _ in range(num_blocks)
        )
        self.norm = nn.LayerNorm(hidden_size, **factory)
        #: stacked layers inside each block's recurrent layer (its ``num_layers``)
        self.layers_per_block = getattr(self.blocks[0].layer, "num_layers", 1)

    @property
    def layers(self) -> list[nn.Module]:
        """The recurrent layer of every block, first to last."""
        return [block.layer for block in self.blocks]

    def forward(self, x: Tensor, hx: State | None = None) -> tuple[Tensor, State]:
        """Run the stack; see the class docstring for shapes."""
        batched = x.dim() == 3
        if not batched:
            x, hx = x.unsqueeze(0), None if hx is None else tuple(h.unsqueeze(1) for h in _parts(hx))
        elif not self.batch_first:
            x = x.transpose(0, 1)
        hidden, finals = self.encoder(x), []
        for i, block in enumerate(self.blocks):
            block_hx = None if hx is None else _block_state(hx, i, self.layers_per_block)
            hidden, state = block(hidden, block_hx)
            finals.append(_parts(state))
        output = self.norm(hidden)
        h_n = tuple(torch.cat(parts) for parts in zip(*finals, strict=True))
        if not batched:
            output, h_n = output.squeeze(0), tuple(h.squeeze(1) for h in h_n)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n if len(h_n) > 1 else h_n[0]

    def output_from_states(self, x: Tensor, state: State) -> Tensor:
        """The output of one step from its input and the state each block reached in it.

        ``x`` (batch, 1, input_size) batch-first and ``state`` as ``h_n`` of that step; equal to
        ``forward(x, hx)[0]`` when ``state = forward(x, hx)[1]``, but a function of ``state``, so a
        perturbation of the state after the step reaches the output (:mod:`hrnn.gradients`).
        """
        hidden = self.encoder(x)
        for i, block in enumerate(self.blocks):
            block_state = _block_state(state, i, self.layers_per_block)
            hidden = hidden + block.dropout(
                F.glu(block.mix(F.gelu(_layer_output(block, hidden, block_state))), dim=-1)
            )
        return self.norm(hidden)

    def extra_repr(self) -> str:
        return f"num_blocks={self.num_blocks}, batch_first={self.batch_first}"


def _layer_output(block: ResidualBlock, hidden: Tensor, state: State) -> Tensor:
    """A block's layer output (batch, 1, n) at one step, as a function of the state it reached."""
    layer = block.layer
    if hasattr(layer, "output_from_states"):  # a read-out of the state and input, e.g. C y + D u
        return layer.output_from_states(block.norm(hidden), state)
    index = getattr(layer, "output_index", 0)  # the emitted part; torch's layers emit h, their first
    return _parts(state)[index][-1].unsqueeze(1)


def _block_state(hx: State, block: int, layers: int) -> State:
    """Block ``block``'s slice (layers, batch, n) of every part of a stacked state."""
    parts = tuple(h[block * layers : (block + 1) * layers] for h in _parts(hx))
    return parts if len(parts) > 1 else parts[0]
