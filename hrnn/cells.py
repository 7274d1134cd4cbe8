r"""Recurrent cells: one layer's parameters and its step equation.

Every cell splits its work the same way, so that one layer class (:mod:`hrnn.rnn`) can run
any of them over a sequence:

* ``project(x)``: the input projection :math:`u = x W_{ih}^\top + b_{ih}`, applied to a whole
  sequence ``(T, batch, input_size)`` in one matrix multiply before the time loop;
* ``step(u_t, *state)``: one step of the recurrence on the projected input ``u_t`` (batch, m);
* ``output(state)``: the part of the state the layer emits at each step;
* ``scan(u, *state) -> (outputs, *final_state)``: the whole recurrence, the plain reference
  loop over ``step``;
* ``forward_sequence(x, *state) -> (outputs, *final_state)``: the whole recurrence on raw input,
  what the layers run: ``scan(project(x))`` here, the fast scans of :mod:`hrnn.fast` (one input
  projection, a hand-written backward pass, optionally reversible memory) in the Hamiltonian cells.

``forward(input, hx=None)`` runs a single step on raw input, like :class:`torch.nn.LSTMCell`.
States are tuples of ``(batch, hidden_size)`` tensors named by ``state_names``.

Initialisation (``reset_parameters``, one per cell): the input projection of every cell is
drawn from :math:`\mathcal N(0, 1/\text{input\_size})` with zero bias, so a unit-variance input
gives a unit-variance drive :math:`u_t`; the recurrent weights are documented per cell.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import Parameter

from .fast import check_memory, hamiltonian_scan, oscillator_scan
from .hamiltonians import LogCoshHamiltonian, OscillatorHamiltonian
from .integrators import get_scheme, symplectic_euler_step
from .step_size import resolve_dt

__all__ = [
    "AntisymmetricCell",
    "CoRNNCell",
    "FastScanCell",
    "GatedAntisymmetricCell",
    "HamiltonianCell",
    "OscillatorCell",
    "RecurrentCell",
    "check_input",
    "check_state",
    "state_parts",
]

State = tuple[Tensor, ...]


def state_parts(hx: Tensor | State) -> State:
    """A state as a tuple of its parts: ``h`` -> ``(h,)``, ``(p, q)`` -> ``(p, q)``."""
    return (hx,) if isinstance(hx, Tensor) else tuple(hx)


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def check_input(x: Tensor, input_size: int, expected: dict[int, str], parameter: Tensor) -> None:
    """Validate an input tensor: floating, of a rank in ``expected`` (rank -> shape description),
    ``input_size`` features last, at least one step, the dtype and device of ``parameter`` (one of
    the module's weights), finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    shapes = " or ".join(expected.values())
    if x.dim() not in expected:
        raise ValueError(f"expected input of shape {shapes}, got shape {tuple(x.shape)} (rank {x.dim()})")
    if x.shape[-1] != input_size:
        raise ValueError(
            f"expected input of shape {shapes} with input_size={input_size}, got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"input must hold at least one step and one sequence, got shape {tuple(x.shape)}")
    if x.dtype != parameter.dtype:
        raise TypeError(
            f"input has dtype {x.dtype} but the parameters have dtype {parameter.dtype}; "
            "convert one of them (e.g. module.to(input.dtype))"
        )
    if x.device != parameter.device:
        raise ValueError(f"input is on {x.device} but the parameters are on {parameter.device}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("input contains NaN or infinite values")


def check_state(hx, names: tuple[str, ...], shape: tuple[int, ...], like: Tensor) -> State | None:
    """Validate a state ``hx`` (a tensor for one-part states, a tuple for ``(p, q)`` pairs):
    each part of ``shape`` with ``like``'s dtype and device, finite. Returns it as a tuple."""
    if hx is None:
        return None
    if len(names) == 1:
        if not isinstance(hx, Tensor):
            raise TypeError(f"hx must be a tensor {names[0]}, got {type(hx).__name__}")
        parts = (hx,)
    else:
        if not isinstance(hx, tuple | list) or len(hx) != len(names):
            raise TypeError(f"hx must be a tuple ({', '.join(names)}), got {type(hx).__name__}")
        parts = tuple(hx)
    for name, part in zip(names, parts, strict=True):
        if not isinstance(part, Tensor):
            raise TypeError(f"hx part {name} must be a torch.Tensor, got {type(part).__name__}")
        if not part.is_floating_point() or part.dtype != like.dtype:
            raise TypeError(f"hx part {name} has dtype {part.dtype}, expected the input's dtype {like.dtype}")
        if tuple(part.shape) != shape:
            raise ValueError(f"expected hx part {name} of shape {shape}, got {tuple(part.shape)}")
        if part.device != like.device:
            raise ValueError(f"hx part {name} is on {part.device}, the input on {like.device}")
        if not bool(torch.isfinite(part).all()):
            raise ValueError(f"hx part {name} contains NaN or infinite values")
    return parts


class RecurrentCell(nn.Module):
    """Base of the recurrent cells: input projection, single-step ``forward``, the ``scan`` loop.

    Subclasses set ``state_names`` (and ``output_index``, the state part they emit), create their
    parameters after calling ``super().__init__``, and implement ``step`` and ``reset_parameters``.
    ``gates`` input projections of size ``hidden_size`` are stacked in ``weight_ih``. ``device``
    and ``dtype`` are torch.nn's factory arguments for the parameters and buffers.
    """

    state_names: ClassVar[tuple[str, ...]]
    output_index: ClassVar[int] = -1
    #: True when the state is a canonical pair (p, q) of a Hamiltonian system.
    hamiltonian: ClassVar[bool] = False
    gates: ClassVar[int] = 1

    def __init__(self, input_size: int, hidden_size: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.weight_ih = Parameter(
            torch.empty(self.gates * hidden_size, input_size, device=device, dtype=dtype)
        )
        self.bias_ih = Parameter(torch.empty(self.gates * hidden_size, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        """Input projection :math:`\\mathcal N(0, 1/\\text{input\\_size})`, zero bias."""
        nn.init.normal_(self.weight_ih, std=self.input_size**-0.5)
        nn.init.zeros_(self.bias_ih)

    @property
    def symplectic(self) -> bool:
        """Whether one step is a symplectic map of the state (p, q)."""
        return False

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
        check_input(input, self.input_size, expected, self.weight_ih)
        shape = (*input.shape[:-1], self.hidden_size)
        check_state(hx, self.state_names, shape, input)
        return input.dim() == 2

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class FastScanCell(RecurrentCell):
    """Base of the cells whose whole-sequence recurrence runs in a fast scan of :mod:`hrnn.fast`.

    Options (after the sizes, keyword-only):

    * ``memory``: ``"stored"`` keeps every step's activations for the backward pass (fastest,
      memory O(T)); ``"reversible"`` keeps only the final state and a checkpoint every
      ``checkpoint_every`` steps and rebuilds the states backwards by the exact inverse step
      (symplectic schemes only; activation memory nearly independent of T; ``docs/speed.md``).
    * ``checkpoint_every``: the reversible mode's checkpoint interval; ``None`` means
      :data:`hrnn.fast.DEFAULT_CHECKPOINT_EVERY`.
    * ``fast``: ``False`` runs the plain reference loop (:meth:`RecurrentCell.scan`) instead,
      which keeps every state (``memory="stored"`` only).
    """

    state_names = ("p", "q")
    hamiltonian = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        symplectic: bool,
        memory: str = "stored",
        checkpoint_every: int | None = None,
        fast: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        check_memory(memory, checkpoint_every, symplectic)
        if not fast and memory != "stored":
            raise ValueError(f"memory={memory!r} needs fast=True: the plain loop keeps every state")
        self.memory = memory
        self.checkpoint_every = checkpoint_every
        self.fast = bool(fast)

    def forward_sequence(self, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.fast:
            return super().forward_sequence(x, p, q)
        return self.fast_scan(x, p, q)

    def fast_scan(self, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward_sequence` by the cell's scan of :mod:`hrnn.fast`, the projection included."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        options = f", memory={self.memory}" if self.memory != "stored" else ""
        if self.checkpoint_every is not None:
            options += f", checkpoint_every={self.checkpoint_every}"
        return super().extra_repr() + options + ("" if self.fast else ", fast=False")


class HamiltonianCell(FastScanCell):
    r"""Log-cosh Hamiltonian cell: the H-DNN integrator core run in time (Galimberti et al., 2023).

    With the input entering through the potential's bias, :math:`u_t = W_{ih} x_t + b_{ih}`,

    .. math::
        H_t(p, q) = \sum_i \log\cosh(K_p p + b_p)_i + \sum_i \log\cosh(K_q q + u_t)_i,

    and one step of ``scheme`` (``symplectic_euler``, ``verlet`` or the non-symplectic
    ``euler`` ablation) with :math:`\nabla_q V = K_q^\top \tanh(K_q q + u_t)`,
    :math:`\nabla_p T = K_p^\top \tanh(K_p p + b_p)`. Output :math:`q_t`.

    Parameters: ``weight_ih`` (n, input_size), ``bias_ih`` (n,), ``weight_q`` :math:`K_q` (n, n),
    ``weight_p`` :math:`K_p` (n, n), ``bias_p`` (n,); buffer ``dt`` (0-dim). ``dt="auto"`` with
    ``seq_len=T`` picks :func:`hrnn.step_size.heuristic_dt` for the initialised energy (the
    default 0.1 is its value for T of about 400; see ``docs/step_size.md``).

    Initialisation: :math:`K_p, K_q` orthogonal times ``gain`` (all singular values ``gain``, so
    the linearised frequencies lie in [0, gain²] and ``dt`` has a scale independent of
    ``hidden_size``), zero :math:`b_p`. A small ``gain`` makes the cell nearly a free particle:
    an input impulse then stays in ``p`` instead of rotating into ``q`` (``docs/RESULTS.md``,
    memory probe).

    Sequences run in :func:`hrnn.fast.hamiltonian_scan`; options ``memory``, ``checkpoint_every``
    and ``fast`` as in :class:`FastScanCell` (``memory="reversible"`` needs a symplectic scheme).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        dt: float | str = 0.1,
        scheme: str = "symplectic_euler",
        seq_len: int | None = None,
        gain: float = 1.0,
        memory: str = "stored",
        checkpoint_every: int | None = None,
        fast: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        method = get_scheme(scheme)
        super().__init__(
            input_size,
            hidden_size,
            symplectic=method.symplectic,
            memory=memory,
            checkpoint_every=checkpoint_every,
            fast=fast,
            device=device,
            dtype=dtype,
        )
        factory = {"device": device, "dtype": dtype}
        self.scheme = method.name
        self.gain = _check_positive("gain", gain)
        self.weight_q = Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.weight_p = Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.bias_p = Parameter(torch.empty(hidden_size, **factory))
        self.register_buffer("dt", torch.tensor(0.0, **factory))
        self.reset_parameters()
        self.dt.fill_(_check_positive("dt", resolve_dt(dt, seq_len, self.max_frequency())))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.orthogonal_(self.weight_q, gain=self.gain)
        nn.init.orthogonal_(self.weight_p, gain=self.gain)
        nn.init.zeros_(self.bias_p)

    @property
    def symplectic(self) -> bool:
        return get_scheme(self.scheme).symplectic

    def max_frequency(self) -> float:
        """:math:`\\|K_p\\|_2 \\|K_q\\|_2`, a bound on the linearised frequencies of the energy."""
        with torch.no_grad():
            norms = torch.linalg.matrix_norm(torch.stack([self.weight_p, self.weight_q]), ord=2)
        return float(norms.prod())

    def step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        energy = LogCoshHamiltonian(K_p=self.weight_p, K_q=self.weight_q, b_p=self.bias_p, b_q=u_t)
        return get_scheme(self.scheme).step(p, q, energy.grad_v, energy.grad_t, self.dt)

    def fast_scan(self, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return hamiltonian_scan(
            x,
            p,
            q,
            self.weight_q,
            self.weight_p,
            self.bias_p,
            self.dt,
            self.scheme,
            self.memory,
            self.checkpoint_every,
            weight_ih=self.weight_ih,
            bias_ih=self.bias_ih,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dt={self.dt.item():.4g}, scheme={self.scheme}"


class OscillatorCell(FastScanCell):
    r"""Independent oscillators, UnICORNN-type (Rusch & Mishra, 2021), symplectic Euler.

    With :math:`u_t = W_{ih} x_t + b_{ih}` and a per-unit step :math:`h = dt\,\sigma(c)`:

    .. math::
        p' = p - h \odot (\tanh(w \odot q + u_t) + \alpha q),\qquad q' = q + h \odot p'.

    This is symplectic Euler on :class:`hrnn.hamiltonians.OscillatorHamiltonian`; the loop is
    elementwise (no matrix multiply). Output :math:`q_t`.

    Parameters: ``weight_ih`` (n, input_size), ``bias_ih`` (n,), ``w`` (n,), ``c`` (n,); buffers
    ``dt``, ``alpha`` (0-dim). Defaults ``dt=0.19, alpha=30.65`` are UnICORNN's psMNIST values.
    Initialisation as UnICORNN: :math:`w \sim U(0, 1)`, :math:`c \sim U(-0.1, 0.1)`.

    Sequences run in :func:`hrnn.fast.oscillator_scan`; options ``memory``, ``checkpoint_every``
    and ``fast`` as in :class:`FastScanCell`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        dt: float | str = 0.19,
        alpha: float = 30.65,
        seq_len: int | None = None,
        memory: str = "stored",
        checkpoint_every: int | None = None,
        fast: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            symplectic=True,
            memory=memory,
            checkpoint_every=checkpoint_every,
            fast=fast,
            device=device,
            dtype=dtype,
        )
        factory = {"device": device, "dtype": dtype}
        if not (float(alpha) >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
        self.w = Parameter(torch.empty(hidden_size, **factory))
        self.c = Parameter(torch.empty(hidden_size, **factory))
        self.register_buffer("alpha", torch.tensor(float(alpha), **factory))
        self.register_buffer("dt", torch.tensor(0.0, **factory))
        self.reset_parameters()
        self.dt.fill_(_check_positive("dt", resolve_dt(dt, seq_len, self.max_frequency())))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.uniform_(self.w, 0.0, 1.0)
        nn.init.uniform_(self.c, -0.1, 0.1)

    @property
    def symplectic(self) -> bool:
        return True

    def step_size(self) -> Tensor:
        """The per-unit step :math:`h = dt\\,\\sigma(c)`, shape (n,)."""
        return self.dt * torch.sigmoid(self.c)

    def max_frequency(self) -> float:
        r""":math:`\max_i \sigma(c_i)\sqrt{\alpha + |w_i|}`: the largest :math:`h_i\omega_i / dt`."""
        with torch.no_grad():
            return float((torch.sigmoid(self.c) * (self.alpha + self.w.abs()).sqrt()).max())

    def step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        energy = OscillatorHamiltonian(w=self.w, b=u_t, alpha=self.alpha)
        return symplectic_euler_step(p, q, energy.grad_v, energy.grad_t, self.step_size())

    def fast_scan(self, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return oscillator_scan(
            x,
            p,
            q,
            self.w,
            self.step_size(),
            self.alpha.item(),
            self.memory,
            self.checkpoint_every,
            weight_ih=self.weight_ih,
            bias_ih=self.bias_ih,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dt={self.dt.item():.4g}, alpha={self.alpha.item():.4g}"


class CoRNNCell(RecurrentCell):
    r"""Coupled oscillatory RNN (Rusch & Mishra, ICLR 2021), explicit and damped.

    .. math::
        z' = z + dt\,(\tanh(W y + \mathcal W z + u_t) - \gamma y - \epsilon z),\qquad
        y' = y + dt\, z',

    with :math:`u_t = V x_t + b`. State ``(z, y)``, output :math:`y_t`. Parameters ``weight_ih``
    :math:`V` (n, input_size), ``bias_ih`` :math:`b` (n,), ``weight_hy`` :math:`W` (n, n),
    ``weight_hz`` :math:`\mathcal W` (n, n); buffers ``dt``, ``gamma``, ``epsilon``. Defaults are
    the paper's sMNIST values. Recurrent weights :math:`U(-1/\sqrt n, 1/\sqrt n)` (torch.nn.RNN's).
    """

    state_names = ("z", "y")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        dt: float = 0.042,
        gamma: float = 2.7,
        epsilon: float = 4.7,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        self.weight_hy = Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.weight_hz = Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.register_buffer("dt", torch.tensor(_check_positive("dt", dt), **factory))
        self.register_buffer("gamma", torch.tensor(_check_positive("gamma", gamma), **factory))
        self.register_buffer("epsilon", torch.tensor(_check_positive("epsilon", epsilon), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        bound = self.hidden_size**-0.5
        nn.init.uniform_(self.weight_hy, -bound, bound)
        nn.init.uniform_(self.weight_hz, -bound, bound)

    def step(self, u_t: Tensor, z: Tensor, y: Tensor) -> State:
        force = (
            torch.tanh(y @ self.weight_hy.T + z @ self.weight_hz.T + u_t) - self.gamma * y - self.epsilon * z
        )
        z = z + self.dt * force
        return z, y + self.dt * z

    def extra_repr(self) -> str:
        values = ", ".join(f"{k}={getattr(self, k).item():.4g}" for k in ("dt", "gamma", "epsilon"))
        return f"{super().extra_repr()}, {values}"


class AntisymmetricCell(RecurrentCell):
    r"""Antisymmetric RNN (Chang et al., ICLR 2019): forward Euler on an antisymmetric system.

    .. math::
        h' = h + \epsilon \tanh((W - W^\top - \gamma I) h + V x_t + b).

    Parameters ``weight_ih`` :math:`V` (n, input_size), ``bias_ih`` (n,), ``weight_hh`` :math:`W`
    (n, n); buffers ``epsilon``, ``gamma``. :math:`W \sim \mathcal N(0, 1/n)`.
    """

    state_names = ("h",)
    output_index = 0

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        epsilon: float = 0.01,
        gamma: float = 0.01,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        self.weight_hh = Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.register_buffer("epsilon", torch.tensor(_check_positive("epsilon", epsilon), **factory))
        self.register_buffer("gamma", torch.tensor(_check_positive("gamma", gamma), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.weight_hh, std=self.hidden_size**-0.5)

    def _recurrent(self, h: Tensor) -> Tensor:
        """:math:`(W - W^\\top - \\gamma I) h` in row form."""
        return h @ self.weight_hh.T - h @ self.weight_hh - self.gamma * h

    def step(self, u_t: Tensor, h: Tensor) -> State:
        return (h + self.epsilon * torch.tanh(self._recurrent(h) + u_t),)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon.item():.4g}, gamma={self.gamma.item():.4g}"


class GatedAntisymmetricCell(AntisymmetricCell):
    r"""Gated antisymmetric RNN (Chang et al., ICLR 2019).

    .. math::
        a = (W - W^\top - \gamma I) h,\qquad
        h' = h + \epsilon\, \sigma(a + V_z x_t + b_z) \odot \tanh(a + V x_t + b).

    ``weight_ih`` (2n, input_size) stacks :math:`V` (rows 0..n-1) over :math:`V_z` (rows n..2n-1),
    ``bias_ih`` (2n,) likewise.
    """

    gates = 2

    def step(self, u_t: Tensor, h: Tensor) -> State:
        a = self._recurrent(h)
        u_h, u_z = u_t.chunk(2, dim=-1)
        return (h + self.epsilon * torch.sigmoid(a + u_z) * torch.tanh(a + u_h),)
