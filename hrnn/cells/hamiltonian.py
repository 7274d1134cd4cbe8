r"""Hamiltonian cells: a separable energy, a scheme object and a step size.

A cell of this family integrates :math:`H_t(p, q) = T(p) + V(q, u_t)`, with the input
:math:`u_t = W_{ih} x_t + b_{ih}` entering the potential. A subclass defines the energy by its
two gradient maps, ``grad_v(q, u_t)`` :math:`= \partial V / \partial q` and ``grad_t(p)``
:math:`= \partial T / \partial p`, its parameters and ``step_size()``; the base
:class:`SeparableHamiltonianCell` writes ``step`` once, from those maps and the scheme
(:class:`hrnn.integrators.Scheme`, kept as an object, so a user's own scheme works everywhere).

Whole sequences run, in this order of preference:

* an *acceleration* of :data:`ACCELERATIONS`, keyed by (cell class, scheme plan): the hand-written
  scans of :mod:`hrnn.fast`, used when ``fast=True`` (default) and one is registered;
* with ``memory="reversible"``, the generic reversible backward of :mod:`hrnn.reversible`, for any
  energy and any symplectic scheme;
* the plain loop over ``step`` (:meth:`RecurrentCell.scan`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import Parameter

from ..fast import check_memory, hamiltonian_scan, oscillator_scan
from ..hamiltonians import log_cosh_gradient, oscillator_potential_gradient
from ..integrators import SCHEMES, Plan, Scheme, get_scheme
from ..reversible import reversible_integrate
from ..step_size import resolve_dt
from ..validation import check_positive, lookup
from .base import Capabilities, RecurrentCell, State

__all__ = ["ACCELERATIONS", "EMITTED", "HamiltonianCell", "OscillatorCell", "SeparableHamiltonianCell"]

#: What a log-cosh cell can emit at every step: ``emit`` -> what it is.
EMITTED: dict[str, str] = {
    "q": "the position: the input's drive integrated twice, so slow units carry its level",
    "p": "the momentum: the drive integrated once, which returns to zero under a steady drive",
}

Scan = Callable[["SeparableHamiltonianCell", Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


class SeparableHamiltonianCell(RecurrentCell):
    """Base of the cells whose step is one step of ``scheme`` on a separable energy (module docstring).

    Options (after the sizes, keyword-only):

    * ``scheme``: a :class:`~hrnn.integrators.Scheme` or the name of one in
      :data:`hrnn.integrators.SCHEMES`.
    * ``memory``: ``"stored"`` keeps every step's activations for the backward pass (fastest,
      memory O(T)); ``"reversible"`` keeps only the final state and an anchor every
      ``anchor_every`` steps and rebuilds the states backwards by the scheme's exact inverse
      (symplectic schemes only; activation memory nearly independent of T; ``docs/speed.md``).
    * ``anchor_every``: the reversible mode's anchor interval; ``None`` means
      :data:`hrnn.fast.DEFAULT_ANCHOR_EVERY`.
    * ``fast``: ``False`` never uses an acceleration (the plain loop, or the generic reversible
      backward with ``memory="reversible"``).
    """

    state_names = ("p", "q")
    capabilities = Capabilities(canonical=True, symplectic=True, reversible=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        scheme: str | Scheme = "symplectic_euler",
        memory: str = "stored",
        anchor_every: int | None = None,
        fast: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        self.scheme = get_scheme(scheme)
        _, default_anchor = check_memory(memory, anchor_every, self.scheme.symplectic)
        self.memory = memory
        self.anchor_every = anchor_every
        self._anchor = default_anchor
        self.fast = bool(fast)

    def function_options(self) -> dict:
        """The scheme changes the function the weights compute, so it is saved with them."""
        return {**super().function_options(), "scheme": self.scheme.name}

    def anchor_interval(self) -> int | None:
        """The reversible mode's anchor interval: ``anchor_every``, else the default."""
        return self._anchor

    def grad_v(self, q: Tensor, u_t: Tensor) -> Tensor:
        r""":math:`\partial V / \partial q` at ``q`` (batch, n) with input ``u_t`` (batch, n)."""
        raise NotImplementedError

    def grad_t(self, p: Tensor) -> Tensor:
        r""":math:`\partial T / \partial p` at ``p`` (batch, n)."""
        raise NotImplementedError

    def step_size(self) -> Tensor | float:
        """The step :math:`h` the scheme gets: a float, a 0-dim or a per-unit (n,) tensor."""
        return self.dt

    @property
    def symplectic(self) -> bool:
        return self.scheme.symplectic

    def step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        return self.scheme.step(p, q, lambda q: self.grad_v(q, u_t), self.grad_t, self.step_size())

    def inverse_step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        """The state before :meth:`step` from the state after it (symplectic schemes only)."""
        return self.scheme.inverse(p, q, lambda q: self.grad_v(q, u_t), self.grad_t, self.step_size())

    def acceleration(self) -> Scan | None:
        """The registered fast scan this cell runs, or ``None`` (``fast=False`` or none registered)."""
        # the scans are eager-mode kernels (Python loops over segments, in-place writes): under
        # torch.compile / torch.export the plain loop is traced instead, which computes the same
        if not self.fast or torch.compiler.is_compiling():
            return None
        return ACCELERATIONS.get((type(self), self.scheme.plan))

    def forward_sequence(self, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scan = self.acceleration()
        if scan is not None:
            return scan(self, x, p, q)
        if self.memory == "reversible":
            return self.reversible_scan(x, p, q)
        return super().forward_sequence(x, p, q)

    def reversible_scan(self, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The generic reversible path on raw input ``x`` (T, batch, input_size): each step projects its
        own input, so neither ``u`` nor any state per step is kept for the backward pass."""
        names, params = zip(*self.named_parameters(), strict=True)

        def step(k: int, state: State, x_k: State, prm: State) -> State:
            return functional_call(self, dict(zip(names, prm, strict=True)), (x_k[0], state))

        def inverse(k: int, state: State, x_k: State, prm: State) -> State:
            return self.inverse_step(self.project(x_k[0]), *state)

        outputs, final = reversible_integrate(
            step, inverse, (p, q), x.shape[0], xs=(x,), params=params, anchor_every=self.anchor_interval(),
            emit=self.output,
        )  # fmt: skip
        return (outputs, *final)

    def extra_repr(self) -> str:
        options = f", scheme={self.scheme.name}"
        options += f", memory={self.memory}" if self.memory != "stored" else ""
        if self.anchor_every is not None:
            options += f", anchor_every={self.anchor_every}"
        return super().extra_repr() + options + ("" if self.fast else ", fast=False")


class HamiltonianCell(SeparableHamiltonianCell):
    r"""Log-cosh Hamiltonian cell: the H-DNN integrator core run in time (Galimberti et al., 2023).

    .. math::
        H_t(p, q) = \sum_i \log\cosh(\tilde K_p p + b_p)_i + \sum_i \log\cosh(\tilde K_q q + u_t)_i,
        \qquad \tilde K = K\,\mathrm{diag}(\sqrt{s}),

    so :math:`\nabla_q V = \tilde K_q^\top \tanh(\tilde K_q q + u_t)`,
    :math:`\nabla_p T = \tilde K_p^\top \tanh(\tilde K_p p + b_p)`, one step :math:`h` of ``scheme``
    (``symplectic_euler``, ``verlet``, the non-symplectic ``euler`` ablation, or a
    :class:`~hrnn.integrators.Scheme` object). Output :math:`q_t`, or :math:`p_t` with
    ``emit="p"`` (:data:`EMITTED`).

    **Timescales.** :math:`s_i = \exp(\text{log\_timescale}_i)` is learnable, drawn log-uniform in
    ``timescales`` (as S4 and LRU draw their steps). In the coordinates :math:`\sqrt{s}\,(p, q)`
    the step is the same scheme with a per-unit step :math:`h s_i`, so unit i reacts within about
    :math:`1 / (h s_i)` steps; the map stays exactly symplectic in (p, q). ``timescales=None``
    drops the parameter (:math:`s = 1`, the seed papers' cell).

    **Stability guard.** Whatever the optimizer does to :math:`K_p, K_q, s`, the step is
    :math:`h = dt \min(1, c / (dt\,\hat\omega))` with
    :math:`\hat\omega = \|\tilde K_p\|_2 \|\tilde K_q\|_2`, a bound on the linearised frequencies,
    and :math:`c` = :attr:`STABILITY_MARGIN`: :math:`h\omega \le 1`, half of the limit 2 of
    symplectic Euler and Verlet on an oscillator. The bound is exact (the two spectral norms) and
    not differentiated: the guard constrains the step, it is not a term of the loss.

    **Damping** (port-Hamiltonian, optional): with ``damping=zeta`` every step first applies the
    exact friction flow :math:`p \leftarrow e^{-\zeta_i h s_i} p` of
    :math:`\dot p = -\zeta s\,\partial T/\partial p`-type dissipation, :math:`\zeta_i \ge 0` learnable
    (softplus, initialised at ``zeta``): a damping ratio per unit, so fast units forget fast and
    slow ones slowly. The step is then conformally symplectic, :math:`M^\top J M = e^{-\zeta h s} J`
    for uniform :math:`\zeta s`: gradients shrink by :math:`e^{-\zeta h s}` per step. The default
    ``0.03`` keeps the chaotic growth of the nonlinear recurrence in check (``docs/step_size.md``);
    ``None`` is the exactly symplectic case.

    Parameters: ``weight_ih`` (n, input_size), ``bias_ih`` (n,), ``weight_q`` :math:`K_q` (n, n),
    ``weight_p`` :math:`K_p` (n, n), ``bias_p`` (n,), ``log_timescale`` (n,), ``damping_raw`` (n,);
    buffer ``dt`` (0-dim). ``dt="auto"`` with ``seq_len=T`` picks
    :func:`hrnn.step_size.heuristic_dt` for the initialised energy (``docs/step_size.md``).

    Initialisation: :math:`K_p, K_q` orthogonal times ``gain``, zero :math:`b_p`.

    Options ``scheme``, ``memory``, ``anchor_every`` and ``fast`` as in
    :class:`SeparableHamiltonianCell`; the registered schemes, damped or not, run in
    :func:`hrnn.fast.hamiltonian_scan`.
    """

    # the default is damped, hence conformally symplectic; damping=None is symplectic
    capabilities = Capabilities(canonical=True, symplectic=False, auto_dt=True, reversible=True)
    #: :math:`c` of the stability guard: the largest :math:`h\hat\omega` a step may take.
    STABILITY_MARGIN = 1.0
    #: whether ``timescales`` initialises a learnable per-unit :math:`s` (a subclass may draw its
    #: timescales from the input instead)
    static_timescales: bool = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        dt: float | str = 1.0,
        timescales: tuple[float, float] | None = (1e-3, 0.3),
        damping: float | None = 0.03,
        emit: str = "q",
        scheme: str | Scheme = "symplectic_euler",
        seq_len: int | None = None,
        gain: float = 1.0,
        memory: str = "stored",
        anchor_every: int | None = None,
        fast: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, scheme=scheme, memory=memory, anchor_every=anchor_every, fast=fast,
            device=device, dtype=dtype,
        )  # fmt: skip
        factory = {"device": device, "dtype": dtype}
        self.gain = check_positive("gain", gain)
        self.timescales = _check_timescales(timescales)
        if damping is not None and not (float(damping) >= 0 and math.isfinite(damping)):
            raise ValueError(f"damping must be None or finite and >= 0, got {damping}")
        self.damping = None if damping is None else float(damping)
        lookup(EMITTED, emit, "emit")
        self.emit = emit
        self.output_index = self.state_names.index(self.emit)
        self.weight_q = Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.weight_p = Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.bias_p = Parameter(torch.empty(hidden_size, **factory))
        static = timescales is not None and self.static_timescales
        self.log_timescale = Parameter(torch.empty(hidden_size, **factory)) if static else None
        self.damping_raw = None if damping is None else Parameter(torch.empty(hidden_size, **factory))
        self.register_buffer("dt", torch.tensor(0.0, **factory))
        self.reset_parameters()
        self.dt.fill_(check_positive("dt", resolve_dt(dt, seq_len, self.max_frequency())))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.orthogonal_(self.weight_q, gain=self.gain)
        nn.init.orthogonal_(self.weight_p, gain=self.gain)
        nn.init.zeros_(self.bias_p)
        if self.log_timescale is not None:
            low, high = self.timescales
            nn.init.uniform_(self.log_timescale, math.log(low), math.log(high))
        if self.damping_raw is not None:
            # softplus^{-1}(zeta); zeta = 0 maps to a large negative number, softplus of which is ~0
            zeta = max(self.damping, 1e-8)
            nn.init.constant_(self.damping_raw, zeta + math.log(-math.expm1(-zeta)))

    def effective_weights(self) -> tuple[Tensor, Tensor]:
        r""":math:`(\tilde K_q, \tilde K_p) = (K_q, K_p)\,\mathrm{diag}(\sqrt s)`, each (n, n)."""
        if self.log_timescale is None:
            return self.weight_q, self.weight_p
        root = torch.exp(0.5 * self.log_timescale)
        return self.weight_q * root, self.weight_p * root

    def grad_v(self, q: Tensor, u_t: Tensor) -> Tensor:
        return log_cosh_gradient(q, self.effective_weights()[0], u_t)

    def grad_t(self, p: Tensor) -> Tensor:
        return log_cosh_gradient(p, self.effective_weights()[1], self.bias_p)

    @property
    def symplectic(self) -> bool:
        """Symplectic scheme and no damping (a damped step is conformally symplectic)."""
        return self.scheme.symplectic and self.damping_raw is None

    def frequency_bound(self) -> Tensor:
        r""":math:`\hat\omega = \|\tilde K_p\|_2 \|\tilde K_q\|_2` (0-dim, not differentiated)."""
        with torch.no_grad():
            # LAPACK refuses non-finite input; such weights make the output non-finite anyway
            weights = torch.nan_to_num(torch.stack(self.effective_weights()), nan=0.0, posinf=0.0, neginf=0.0)
            return torch.linalg.matrix_norm(weights, ord=2).prod()

    def step_size(self) -> Tensor:
        r"""The guarded step :math:`dt \min(1, c / (dt\,\hat\omega))` (0-dim, not differentiated)."""
        limit = self.STABILITY_MARGIN / self.frequency_bound().clamp_min(torch.finfo(self.dt.dtype).tiny)
        return torch.fmin(self.dt, limit)  # fmin: non-finite weights leave dt, and the loss shows them

    def friction(self, h: Tensor, timescale: Tensor | None = None) -> Tensor | None:
        r"""The per-step decay :math:`e^{-\zeta_i h s_i}` of p, or ``None`` without damping.

        ``timescale`` is :math:`s`, (n,) or (batch, n); by default the learnt one (1 without it),
        so the decay is (n,).
        """
        if self.damping_raw is None:
            return None
        rate = torch.nn.functional.softplus(self.damping_raw) * h
        if timescale is None and self.log_timescale is not None:
            timescale = torch.exp(self.log_timescale)
        return torch.exp(-rate if timescale is None else -rate * timescale)

    def anchor_interval(self) -> int | None:
        r"""With damping the inverse step divides by the decay, so round-off grows by
        :math:`e^{\zeta h s}` a step: unless ``anchor_every`` is given, re-anchor every
        :math:`\lceil \ln(10^3) / \max_i \zeta_i h s_i \rceil` steps (at most the default), so that
        it grows at most a thousandfold between anchors (one host sync per sequence)."""
        if self.damping_raw is None or self.anchor_every is not None or self.memory != "reversible":
            return super().anchor_interval()
        rate = float(-self.friction(self.step_size()).detach().log().max())
        steps = math.ceil(math.log(1e3) / rate) if rate > 0 else self._anchor
        return max(1, min(self._anchor, steps))

    def step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        h = self.step_size()
        decay = self.friction(h)
        if decay is not None:
            p = decay * p
        return self.scheme.step(p, q, lambda q: self.grad_v(q, u_t), self.grad_t, h)

    def inverse_step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        h = self.step_size()
        p, q = self.scheme.inverse(p, q, lambda q: self.grad_v(q, u_t), self.grad_t, h)
        decay = self.friction(h)
        return (p if decay is None else p / decay), q

    def max_frequency(self) -> float:
        r""":math:`\hat\omega` as a float: the largest linearised frequency the energy can have."""
        return float(self.frequency_bound())

    def function_options(self) -> dict:
        """The emitted variable changes what the layer outputs, so it is saved with the weights."""
        return {**super().function_options(), "emit": self.emit}

    def extra_repr(self) -> str:
        options = f", dt={self.dt.item():.4g}, emit={self.emit}"
        if self.timescales is not None:
            options += f", timescales={self.timescales}"
        if self.damping is not None:
            options += f", damping={self.damping:.4g}"
        return super().extra_repr() + options


def _check_timescales(timescales: tuple[float, float] | None) -> tuple[float, float] | None:
    if timescales is None:
        return None
    try:
        low, high = (float(v) for v in timescales)
    except (TypeError, ValueError):
        raise ValueError(f"timescales must be None or a pair (low, high), got {timescales!r}") from None
    if not (0 < low <= high < math.inf):
        raise ValueError(f"timescales must satisfy 0 < low <= high < inf, got {timescales!r}")
    return low, high


class OscillatorCell(SeparableHamiltonianCell):
    r"""Independent oscillators, UnICORNN-type (Rusch & Mishra, 2021).

    .. math::
        V_t(q) = \sum_i w_i^{-1}\log\cosh(w_i q_i + u_{t,i}) + \tfrac\alpha2 q_i^2,\qquad
        T(p) = \tfrac12 \|p\|^2,

    with a per-unit step :math:`h = dt\,\sigma(c)`. With the default symplectic Euler:

    .. math::
        p' = p - h \odot (\tanh(w \odot q + u_t) + \alpha q),\qquad q' = q + h \odot p'.

    The loop is elementwise (no matrix multiply). Output :math:`q_t`.

    Parameters: ``weight_ih`` (n, input_size), ``bias_ih`` (n,), ``w`` (n,), ``c`` (n,); buffers
    ``dt``, ``alpha`` (0-dim). Defaults ``dt=0.19, alpha=30.65`` are UnICORNN's psMNIST values.
    Initialisation as UnICORNN: :math:`w \sim U(0, 1)`, :math:`c \sim U(-0.1, 0.1)`.

    Options as in :class:`SeparableHamiltonianCell`; symplectic Euler runs in
    :func:`hrnn.fast.oscillator_scan`.
    """

    capabilities = Capabilities(canonical=True, symplectic=True, auto_dt=True, reversible=True)
    per_layer_options = ("dt",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        dt: float | str = 0.19,
        alpha: float = 30.65,
        scheme: str | Scheme = "symplectic_euler",
        seq_len: int | None = None,
        memory: str = "stored",
        anchor_every: int | None = None,
        fast: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, scheme=scheme, memory=memory, anchor_every=anchor_every, fast=fast,
            device=device, dtype=dtype,
        )  # fmt: skip
        factory = {"device": device, "dtype": dtype}
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not (alpha >= 0 and math.isfinite(alpha))
        ):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        self.w = Parameter(torch.empty(hidden_size, **factory))
        self.c = Parameter(torch.empty(hidden_size, **factory))
        self.register_buffer("alpha", torch.tensor(float(alpha), **factory))
        self.register_buffer("dt", torch.tensor(0.0, **factory))
        self.reset_parameters()
        self.dt.fill_(check_positive("dt", resolve_dt(dt, seq_len, self.max_frequency())))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.uniform_(self.w, 0.0, 1.0)
        nn.init.uniform_(self.c, -0.1, 0.1)

    def grad_v(self, q: Tensor, u_t: Tensor) -> Tensor:
        return oscillator_potential_gradient(q, self.w, u_t, self.alpha)

    def grad_t(self, p: Tensor) -> Tensor:
        return p

    def step_size(self) -> Tensor:
        r"""The per-unit step :math:`h = \min(dt\,\sigma(c),\ c_s / \omega)`, shape (n,).

        :math:`\omega_i = \sqrt{\alpha + |w_i|}` bounds unit i's linearised frequency, so the guard
        keeps :math:`h_i\omega_i \le c_s` = :attr:`HamiltonianCell.STABILITY_MARGIN` whatever the
        optimizer does to ``w`` (symplectic Euler is stable for :math:`h\omega < 2`).
        """
        limit = HamiltonianCell.STABILITY_MARGIN / (self.alpha + self.w.detach().abs()).sqrt()
        return torch.fmin(self.dt * torch.sigmoid(self.c), limit)

    def max_frequency(self) -> float:
        r""":math:`\max_i \sigma(c_i)\sqrt{\alpha + |w_i|}`: the largest :math:`h_i\omega_i / dt`."""
        with torch.no_grad():
            return float((torch.sigmoid(self.c) * (self.alpha + self.w.abs()).sqrt()).max())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dt={self.dt.item():.4g}, alpha={self.alpha.item():.4g}"


def _log_cosh_scan(cell: HamiltonianCell, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    weight_q, weight_p = cell.effective_weights()
    h = cell.step_size()
    return hamiltonian_scan(
        x, p, q, weight_q, weight_p, cell.bias_p, h, cell.scheme, cell.memory, cell.anchor_interval(),
        weight_ih=cell.weight_ih, bias_ih=cell.bias_ih, decay=cell.friction(h), emit=cell.emit,
    )  # fmt: skip


def _oscillator_scan(cell: OscillatorCell, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return oscillator_scan(
        x, p, q, cell.w, cell.step_size(), cell.alpha.item(), cell.memory, cell.anchor_every,
        weight_ih=cell.weight_ih, bias_ih=cell.bias_ih,
    )  # fmt: skip


#: (cell class, scheme plan) -> the hand-written scan that computes exactly that cell's recurrence
#: (keyed by the exact class: a subclass that changes the energy falls back to the generic paths).
ACCELERATIONS: dict[tuple[type[SeparableHamiltonianCell], Plan], Scan] = {
    **{(HamiltonianCell, scheme.plan): _log_cosh_scan for scheme in SCHEMES.values()},
    (OscillatorCell, SCHEMES["symplectic_euler"].plan): _oscillator_scan,
}
