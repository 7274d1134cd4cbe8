r"""Linear oscillatory state-space layers: LinOSS (Rusch & Rus, ICLR 2025) and D-LinOSS (Boyer, Rusch & Rus, 2025).

Per layer, P independent forced oscillators driven by the layer input :math:`u_t` (d features)
and read out linearly (``hidden_size`` features):

.. math::
    y'' = -A y - G y' + B u, \qquad x = C y + D u,

A, G >= 0 diagonal (G = 0 unless ``damping=True``), :math:`B \in \mathbb R^{P \times d}`,
:math:`C \in \mathbb R^{H \times P}`. With velocity :math:`z = y'` and per-oscillator steps
:math:`\Delta t_i = \sigma(\text{dt\_logit}_i) \in (0, 1)`, a step is (the discretisations of
:data:`DISCRETIZATIONS`)

.. math::
    z_t = z_{t-1} + \Delta t\,(-A y_\star - G z_t + B u_t), \qquad y_t = y_{t-1} + \Delta t\, z_t,

:math:`y_\star = y_{t-1}` for ``"imex"`` (symplectic Euler on
:math:`H = |z|^2/2 + y^\top A y/2 - (B u_t)^\top y` when G = 0: det 1, volume-preserving) and
:math:`y_\star = y_t` for ``"im"`` (implicit Euler: dissipative, det < 1). The closed-form
transition and the exact chunked scan that runs it are in :mod:`hrnn.linear_scan`.

Parametrisation, as the authors' code: :math:`A = \max(A_{raw}, 0)` for ``"im"``; for ``"imex"``
:math:`A_{raw}` is clamped to the interval where the step's two eigenvalues are a complex pair of
modulus :math:`(1 + \Delta t\, G)^{-1/2} \le 1` (D-LinOSS's projection; with G = 0 it is
:math:`0 \le A \le 4 / \Delta t^2`, symplectic Euler's stability bound), so no optimizer step can
leave the stable region. :math:`G = \max(G_{raw}, 0)`. B and C are real: the authors' complex B
and C with P oscillators equal a real layer of 2P oscillators whose pairs share A and
:math:`\Delta t`.

Initialisation (the authors' LinOSS code): :math:`\text{dt\_logit}, A_{raw} \sim U[0, 1]`,
B and C uniform with bounds :math:`1/\sqrt d` and :math:`1/\sqrt P`, diagonal
:math:`D \sim \mathcal N(0, 1)`. With damping, :math:`G_{raw} \sim U[0, 1]` and
:math:`A_{raw} \sim U[A_{low}, 1]` (the stable part of LinOSS's range; :math:`A_{low} = 0` for G = 0).
D is diagonal when ``input_size == hidden_size``, as in the paper, whose layers all have equal
widths; a layer that changes the width (the first of a stack on raw input) uses a full
:math:`H \times d` feed-through, :math:`D \sim \mathcal N(0, 1/d)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter

from .cells import Capabilities
from .cells.base import _check_extra_state, _check_saved_options
from .linear_scan import (
    DEFAULT_CHUNK,
    ScanOperators,
    block_steps,
    chunk_length,
    chunked_scan,
    oscillator_transition,
    reference_scan,
)
from .rnn import RecurrentLayer
from .validation import check_input, check_size, check_state, lookup

__all__ = ["DISCRETIZATIONS", "Discretization", "LinOSSCell", "LinOSSRNN"]

Bounds = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]


def _complex_pair_bounds(dt: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
    r"""IMEX: :math:`((\sqrt{1 + hG} \mp 1)/h)^2`, written without the cancellation of the lower one."""
    root = torch.ones_like(dt) if g is None else torch.sqrt(1.0 + dt * g)
    low = torch.zeros_like(dt) if g is None else (g / (root + 1.0)) ** 2
    return low, ((root + 1.0) / dt) ** 2


def _non_negative(dt: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """IM: every A >= 0 gives a stable step."""
    return torch.zeros_like(dt), None


@dataclass(frozen=True)
class Discretization:
    """A LinOSS time discretisation: whether the restoring force is implicit, whether the
    undamped step is symplectic, and the interval ``bounds(dt, G)`` that A is clamped to."""

    name: str
    implicit: bool
    symplectic: bool
    bounds: Bounds


DISCRETIZATIONS: dict[str, Discretization] = {
    d.name: d
    for d in (
        Discretization("imex", implicit=False, symplectic=True, bounds=_complex_pair_bounds),
        Discretization("im", implicit=True, symplectic=False, bounds=_non_negative),
    )
}


class LinOSSCell(nn.Module):
    """One LinOSS layer: parameters and the whole-sequence recurrence (see the module docstring).

    Parameters: ``A_raw``, ``dt_logit`` (P,), ``G_raw`` (P,) with ``damping``, ``B`` (P, input_size),
    ``C`` (hidden_size, P), ``D`` (hidden_size,) or (hidden_size, input_size). State ``(z, y)``,
    velocity and position of the oscillators, each (batch, P); the layer emits ``C y + D u``.
    ``fast=False`` runs the step-by-step reference loop instead of the chunked scan, whose chunk
    length is ``chunk``.
    """

    state_names: ClassVar[tuple[str, ...]] = ("z", "y")
    capabilities: ClassVar[Capabilities] = Capabilities(canonical=True, symplectic=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_oscillators: int | None = None,
        discretization: str = "imex",
        damping: bool = False,
        fast: bool = True,
        chunk: int = DEFAULT_CHUNK,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_oscillators = check_size(
            "num_oscillators", hidden_size if num_oscillators is None else num_oscillators
        )
        self.discretization = lookup(DISCRETIZATIONS, discretization, "discretization")
        self.chunk = check_size("chunk", chunk)
        self.fast = bool(fast)
        p = self.num_oscillators
        self.A_raw = Parameter(torch.empty(p, **factory))
        self.dt_logit = Parameter(torch.empty(p, **factory))
        self.G_raw = Parameter(torch.empty(p, **factory)) if damping else None
        self.B = Parameter(torch.empty(p, input_size, **factory))
        self.C = Parameter(torch.empty(hidden_size, p, **factory))
        d_shape = (hidden_size,) if input_size == hidden_size else (hidden_size, input_size)
        self.D = Parameter(torch.empty(d_shape, **factory))
        self.register_load_state_dict_pre_hook(_check_saved_options)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.uniform_(self.dt_logit, 0.0, 1.0)
        if self.G_raw is not None:
            nn.init.uniform_(self.G_raw, 0.0, 1.0)
        low, _ = self.discretization.bounds(self.dt, self.G)
        self.A_raw.copy_(low + (1.0 - low) * torch.rand_like(low))
        nn.init.uniform_(self.B, -(self.input_size**-0.5), self.input_size**-0.5)
        nn.init.uniform_(self.C, -(self.num_oscillators**-0.5), self.num_oscillators**-0.5)
        nn.init.normal_(self.D, std=1.0 if self.D.dim() == 1 else self.input_size**-0.5)

    def function_options(self) -> dict[str, Any]:
        """The option that changes the function and lives in no parameter: the discretisation
        (saved in the ``state_dict``; loading weights saved with another one fails, naming it)."""
        return {"discretization": self.discretization.name}

    def get_extra_state(self) -> dict[str, Any]:
        return {"function_options": self.function_options()}

    def set_extra_state(self, state: Any) -> None:
        # fixed at construction: loading only checks that they agree (as RecurrentCell does)
        _check_extra_state(state, self.function_options(), type(self).__name__)

    @property
    def damping(self) -> bool:
        return self.G_raw is not None

    @property
    def symplectic(self) -> bool:
        """Whether one step is a symplectic map of (z, y): undamped IMEX."""
        return self.discretization.symplectic and not self.damping

    @property
    def dt(self) -> Tensor:
        """Per-oscillator steps :math:`\\sigma(\\text{dt\\_logit})` (P,)."""
        return torch.sigmoid(self.dt_logit)

    @property
    def G(self) -> Tensor | None:
        """Damping :math:`\\max(G_{raw}, 0)` (P,), or None without damping."""
        return None if self.G_raw is None else F.relu(self.G_raw)

    @property
    def A(self) -> Tensor:
        """Frequencies squared, ``A_raw`` clamped to the discretisation's stable interval (P,)."""
        low, high = self.discretization.bounds(self.dt, self.G)
        a = torch.maximum(self.A_raw, low)
        return a if high is None else torch.minimum(a, high)

    def transition(self) -> tuple[Tensor, Tensor]:
        """The step's ``M`` (P, 2, 2) and input vector ``f`` (P, 2) (:func:`hrnn.linear_scan.oscillator_transition`)."""
        return oscillator_transition(self.A, self.dt, self.G, self.discretization.implicit)

    def initial_state(self, batch_size: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Zeros, ``(z, y)`` each (batch_size, P)."""
        return tuple(like.new_zeros(batch_size, self.num_oscillators) for _ in self.state_names)

    def feedthrough(self, u: Tensor) -> Tensor:
        """:math:`D u`: (..., input_size) -> (..., hidden_size)."""
        return u * self.D if self.D.dim() == 1 else F.linear(u, self.D)

    def forward_sequence(self, x: Tensor, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The layer on ``x`` (T, batch, input_size) from ``(z, y)`` (batch, P) each.

        Returns ``(output, z_T, y_T)``, output (T, batch, hidden_size). The fast path runs the
        chunked scan of :mod:`hrnn.linear_scan`, the whole pipeline block by block.
        """
        if not self.fast:
            return self.reference_sequence(x, z, y)
        seq_len, batch = x.shape[:2]
        length = chunk_length(seq_len, self.chunk)
        pad = -seq_len % length
        u = x.transpose(0, 1)  # batch-major, so that each oscillator's forcing is one matrix
        u = F.pad(u, (0, 0, 0, pad)) if pad else u
        ops = ScanOperators.build(*self.transition(), length)
        block, state, outputs = block_steps(length, batch, self.num_oscillators), (z.t(), y.t()), []
        for start in range(0, seq_len, block):
            output, *state = self._block(u[:, start : start + block], ops, state, seq_len - start)
            outputs.append(output)
        output = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
        return (output[:, :seq_len] if pad else output).transpose(0, 1), state[0].t(), state[1].t()

    def _block(
        self, u: Tensor, ops: ScanOperators, state: tuple[Tensor, Tensor], remaining: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One block: inputs ``u`` (batch, steps, input_size) -> outputs (batch, steps, hidden_size)
        and the state (P, batch) each after ``min(steps, remaining)`` steps."""
        batch, steps = u.shape[:2]
        flat = u.reshape(-1, self.input_size)
        w = (self.B @ flat.t()).view(self.num_oscillators, batch, steps)
        positions, z, y = chunked_scan(w, ops, *state, min(steps, remaining))
        # accumulating into D u in place spares the copy that addmm(input, ...) makes of its input
        readout = self.feedthrough(flat).addmm_(positions.reshape(self.num_oscillators, -1).t(), self.C.t())
        return readout.view(batch, steps, self.hidden_size), z, y

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """One step on raw input, like :class:`torch.nn.LSTMCell`: input (batch, input_size) or
        (input_size,), ``hx`` and the returned state ``(z, y)`` each (batch, P) or (P,); ``hx=None``
        means zeros. The step's output is ``C y + D input``."""
        check_input(
            input, self.input_size, {2: "(batch, input_size)", 1: "(input_size,)"}, self.B, step_dims=()
        )
        check_state(hx, self.state_names, (*input.shape[:-1], self.num_oscillators), input)
        batched = input.dim() == 2
        x = input.unsqueeze(0) if batched else input.view(1, 1, -1)
        state = self.initial_state(x.shape[1], x) if hx is None else tuple(h.view(x.shape[1], -1) for h in hx)
        _, z, y = self.forward_sequence(x, *state)
        return (z, y) if batched else (z.squeeze(0), y.squeeze(0))

    def reference_sequence(self, x: Tensor, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward_sequence` by the step-by-step loop :func:`hrnn.linear_scan.reference_scan`."""
        w = F.linear(x, self.B)
        positions, z, y = reference_scan(w, self.A, self.dt, self.G, self.discretization.implicit, z, y)
        return F.linear(positions, self.C) + self.feedthrough(x), z, y

    def extra_repr(self) -> str:
        options = (
            f", num_oscillators={self.num_oscillators}" if self.num_oscillators != self.hidden_size else ""
        )
        options += f", discretization={self.discretization.name!r}"
        options += ", damping=True" if self.damping else ""
        return f"{self.input_size}, {self.hidden_size}{options}" + ("" if self.fast else ", fast=False")


class LinOSSRNN(RecurrentLayer):
    r"""Stacked :class:`LinOSSCell` layers with the conventions of :class:`torch.nn.LSTM`.

    Equations, parametrisation and initialisation in :mod:`hrnn.linoss`. Layer ``l > 0`` takes
    layer ``l - 1``'s output (dropout between layers); there is no nonlinearity inside the
    stack (:class:`hrnn.blocks.ResidualStack` adds the norm / GELU / GLU / residual blocks).

    Args:
        input_size, hidden_size, num_layers, batch_first, dropout, bidirectional: as
            :class:`torch.nn.LSTM`.
        num_oscillators: P per layer (default ``hidden_size``).
        discretization: ``"imex"`` (symplectic, default) or ``"im"`` (:data:`DISCRETIZATIONS`).
        damping: learn a damping G >= 0 per oscillator (D-LinOSS).
        fast: ``False`` runs the step-by-step reference loop.
        chunk: chunk length of the fast scan.
        device, dtype: torch.nn's factory arguments.

    Shape:
        x: (T, batch, input_size), (batch, T, input_size) with ``batch_first``, or (T, input_size).
        hx, h_n: a tuple ``(z, y)`` -- velocity and position of the oscillators -- each
        (D * num_layers, batch, P) or (D * num_layers, P) unbatched, D = 2 with
        ``bidirectional``, else 1; ``hx=None`` means zeros.
        output: :math:`C y_t + D u_t` of the last layer (a read-out, not a part of the state),
        (T, batch, D * hidden_size), (batch, T, D * hidden_size) or (T, D * hidden_size).
    """

    cell_class = LinOSSCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        num_oscillators: int | None = None,
        discretization: str = "imex",
        damping: bool = False,
        fast: bool = True,
        chunk: int = DEFAULT_CHUNK,
        device=None,
        dtype=None,
    ) -> None:
        options = {"num_oscillators": num_oscillators, "discretization": discretization, "damping": damping}
        options |= {"fast": fast, "chunk": chunk, "device": device, "dtype": dtype}
        super().__init__(input_size, hidden_size, num_layers, batch_first, dropout, bidirectional, **options)

    @property
    def num_oscillators(self) -> int:
        return self.cells[0].num_oscillators

    @property
    def state_size(self) -> int:
        """Features of each state part: the oscillators P."""
        return self.num_oscillators

    def output_from_states(self, x: Tensor, state: tuple[Tensor, Tensor]) -> Tensor:
        """The output of one step from its input ``x`` (batch, 1, input_size) (or (1, batch,
        input_size) time-major) and the state ``h_n`` that step reached: :math:`C y + D u` layer by
        layer. Equal to ``forward(x, hx)[0]`` when ``state = forward(x, hx)[1]``, but a function of
        the state, so that a perturbation of the state reaches the output (:mod:`hrnn.gradients`)."""
        if self.bidirectional:
            raise ValueError("output_from_states needs a unidirectional layer")
        positions = state[1]
        u = x if self.batch_first else x.transpose(0, 1)
        for layer, cell in enumerate(self.cells):
            if layer:
                u = F.dropout(u, self.dropout, self.training)
            u = cell.feedthrough(u) + F.linear(positions[layer], cell.C).unsqueeze(1)
        return u if self.batch_first else u.transpose(0, 1)
