r"""The base of the recurrent cells: one layer's parameters and its step equation.

Every cell splits its work the same way, so that one layer class (:mod:`hrnn.rnn`) can run
any of them over a sequence:

* ``project(x)``: the input projection :math:`u = x W_{ih}^\top + b_{ih}`, applied to a whole
  sequence ``(T, batch, input_size)`` in one matrix multiply before the time loop;
* ``step(u_t, *state)``: one step of the recurrence on the projected input ``u_t`` (batch, m);
* ``output(state)``: the part of the state the layer emits at each step;
* ``scan(u, *state) -> (outputs, *final_state)``: the whole recurrence, the plain reference
  loop over ``step``;
* ``forward_sequence(x, *state) -> (outputs, *final_state)``: the whole recurrence on raw input,
  what the layers run: ``scan(project(x))`` here; the Hamiltonian cells add reversible memory
  (:mod:`hrnn.reversible`) and the fast scans of :mod:`hrnn.fast` (:mod:`hrnn.cells.hamiltonian`).

``forward(input, hx=None)`` runs a single step on raw input, like :class:`torch.nn.LSTMCell`.
States are tuples of ``(batch, hidden_size)`` tensors named by ``state_names``. Each cell class
declares what it supports in ``capabilities`` (:class:`Capabilities`), which the model registry
(:func:`hrnn.models.capabilities`) exposes.

**Options saved with the weights.** ``function_options()`` returns the options that change the
function the parameters compute and that no parameter or buffer holds (e.g. the integration
scheme), as plain python values. They travel in the ``state_dict`` as the cell's extra state, so
``torch.load(weights_only=True)`` reads them, and ``load_state_dict`` refuses weights saved with
other values, naming the option and both values, before it copies any of the cell's tensors.
Weights saved without them (older checkpoints) still load.

Initialisation (``reset_parameters``, one per cell): the input projection of every cell is
drawn from :math:`\mathcal N(0, 1/\text{input\_size})` with zero bias, so a unit-variance input
gives a unit-variance drive :math:`u_t`; the recurrent weights are documented per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import Parameter

from ..validation import check_input, check_options, check_size, check_state

__all__ = ["Capabilities", "RecurrentCell", "State", "state_parts"]

State = tuple[Tensor, ...]


def state_parts(hx: Tensor | State) -> State:
    """A state as a tuple of its parts: ``h`` -> ``(h,)``, ``(p, q)`` -> ``(p, q)``."""
    return (hx,) if isinstance(hx, Tensor) else tuple(hx)


@dataclass(frozen=True)
class Capabilities:
    """What a cell class supports, with its default options."""

    #: the state is a canonical pair (p, q) of a Hamiltonian system
    canonical: bool = False
    #: one step is a symplectic map of the state (with the cell's default options)
    symplectic: bool = False
    #: ``dt="auto"`` with ``seq_len=T`` chooses the step size from the sequence length
    auto_dt: bool = False
    #: ``memory="reversible"`` rebuilds the states backwards instead of storing them
    reversible: bool = False


class RecurrentCell(nn.Module):
    """Base of the recurrent cells: input projection, single-step ``forward``, the ``scan`` loop.

    Subclasses set ``state_names`` (and ``output_index``, the state part they emit,
    ``capabilities`` and ``per_layer_options``), create their
    parameters after calling ``super().__init__``, and implement ``step`` and ``reset_parameters``.
    ``gates`` input projections of size ``hidden_size`` are stacked in ``weight_ih``. ``device``
    and ``dtype`` are torch.nn's factory arguments for the parameters and buffers.
    """

    state_names: ClassVar[tuple[str, ...]]
    output_index: ClassVar[int] = -1
    capabilities: ClassVar[Capabilities] = Capabilities()
    gates: ClassVar[int] = 1
    #: options a layer (:class:`hrnn.rnn.RecurrentLayer`) may give one value per stacked layer,
    #: each held by the cell under the option's name
    per_layer_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_size: int, hidden_size: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.weight_ih = Parameter(
            torch.empty(self.gates * hidden_size, input_size, device=device, dtype=dtype)
        )
        self.bias_ih = Parameter(torch.empty(self.gates * hidden_size, device=device, dtype=dtype))
        self.register_load_state_dict_pre_hook(_check_saved_options)

    def reset_parameters(self) -> None:
        """Input projection :math:`\\mathcal N(0, 1/\\text{input\\_size})`, zero bias."""
        nn.init.normal_(self.weight_ih, std=self.input_size**-0.5)
        nn.init.zeros_(self.bias_ih)

    @property
    def symplectic(self) -> bool:
        """Whether one step is a symplectic map of the state (p, q)."""
        return False

    def function_options(self) -> dict[str, Any]:
        """Options that change the function and live in no parameter or buffer (plain python
        values, saved in the ``state_dict``); a cell that has such options overrides this."""
        return {}

    def get_extra_state(self) -> dict[str, Any]:
        return {"function_options": self.function_options()}

    def set_extra_state(self, state: Any) -> None:
        # the options are fixed at construction: loading only checks that they agree
        _check_extra_state(state, self.function_options(), type(self).__name__)

    def project(self, x: Tensor) -> Tensor:
        """:math:`u = x W_{ih}^\\top + b_{ih}`: (..., input_size) -> (..., gates * hidden_size)."""
        return torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def initial_state(self, batch_size: int, like: Tensor) -> State:
        """Zeros, one ``(batch_size, hidden_size)`` tensor per state part."""
        return tuple(like.new_zeros(batch_size, self.hidden_size) for _ in self.state_names)

    def step(self, u_t: Tensor, *state: Tensor) -> State:
        """One step: projected input (batch, gates * hidden_size) and state -> next state."""
        raise NotImplementedError

    def output(self, state: State) -> Tensor:
        """The emitted part of ``state``, (batch, hidden_size)."""
        return state[self.output_index]

    def scan(self, u: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """The reference loop: ``step`` over the projected sequence ``u`` (T, batch, gates * hidden_size).

        Returns ``(outputs, *final_state)`` with outputs (T, batch, hidden_size).
        """
        outputs = []
        for u_t in u:
            state = self.step(u_t, *state)
            outputs.append(self.output(state))
        return (torch.stack(outputs), *state)

    def forward_sequence(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """The whole recurrence on raw input ``x`` (T, batch, input_size), state parts (batch, hidden_size).

        Returns ``(outputs, *final_state)`` with outputs (T, batch, hidden_size).
        """
        return self.scan(self.project(x), *state)

    def forward(self, input: Tensor, hx: Tensor | State | None = None) -> Tensor | State:
        """One step on raw input, like :class:`torch.nn.LSTMCell`.

        Shape: input (batch, input_size) or (input_size,); each part of ``hx`` and of the
        returned state (batch, hidden_size) or (hidden_size,). ``hx=None`` means zeros. The state
        is a tensor for one-part states and a tuple for two-part ones.
        """
        batched = self._validate_step(input, hx)
        if not batched:
            input = input.unsqueeze(0)
            hx = None if hx is None else tuple(h.unsqueeze(0) for h in state_parts(hx))
        state = self.initial_state(input.shape[0], input) if hx is None else state_parts(hx)
        state = self.step(self.project(input), *state)
        if not batched:
            state = tuple(s.squeeze(0) for s in state)
        return state if len(state) > 1 else state[0]

    def _validate_step(self, input: Tensor, hx: Tensor | State | None) -> bool:
        expected = {2: "(batch, input_size)", 1: "(input_size,)"}
        check_input(input, self.input_size, expected, self.weight_ih, step_dims=())
        shape = (*input.shape[:-1], self.hidden_size)
        check_state(hx, self.state_names, shape, input)
        return input.dim() == 2

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


def _check_extra_state(state: Any, current: dict[str, Any], owner: str) -> None:
    if not isinstance(state, dict) or "function_options" not in state:
        raise ValueError(f"{owner}: expected extra state {{'function_options': {{...}}}}, got {state!r}")
    check_options(state["function_options"], current, owner)


def _check_saved_options(cell: RecurrentCell, state_dict: dict, prefix: str, *_: Any) -> None:
    """Load pre-hook: check the saved options before any tensor of ``cell`` is copied, and accept
    a ``state_dict`` saved without them (older checkpoints) as having the cell's own."""
    key = prefix + "_extra_state"
    if key not in state_dict:
        state_dict[key] = cell.get_extra_state()
    owner = f"{prefix.rstrip('.')} ({type(cell).__name__})" if prefix else type(cell).__name__
    _check_extra_state(state_dict[key], cell.function_options(), owner)
