r"""The selective Hamiltonian cell: the log-cosh energy scaled unit by unit by a gate on the input.

The package's Hamiltonian model (registry name ``hamiltonian``); the seed papers' cell, with
static per-unit timescales, is :class:`~hrnn.cells.HamiltonianCell` (``static_hamiltonian``).

.. math::
    H_t(p, q) = \sum_i \log\cosh(K_p\,(r_t \odot p) + b_p)_i
              + \sum_i \log\cosh(K_q\,(r_t \odot (q + u_t)))_i,
    \qquad r_t = \sigma(W_s x_t + b_s) \in (0, 1)^n,

one step :math:`h` of ``scheme`` per input. The input displaces the potential's minimum to
:math:`q = -u_t`; near it, at the orthogonal initialisation, the force on unit i is
:math:`\approx -r_{t,i}^2 (q + u_t)_i` and the unit oscillates at frequency :math:`r_{t,i}^2`. So its
clock (a step of :math:`h r_{t,i}^2`) and what it writes of the input both scale with
:math:`r_{t,i}^2`, as the step :math:`\Delta_t` of a selective state-space model (Mamba) scales its
decay and its input alike: where the gate closes the unit neither moves nor takes in the input,
where it opens it integrates the input. A fixed timescale writes every input into the state, so on
a task whose answer depends on a few marked steps (adding) the others bury it.

Why this form (``docs/RESULTS.md`` §2.0, adding T = 200 in the two-block stack): with the drive
added inside the tanh, :math:`\log\cosh(K_q (r \odot q) + u_t)`, a unit writes :math:`\propto r`
while its clock runs :math:`\propto r^2`, so a slow unit still writes much noise; that form stayed on
the plateau unless the gates started small, and starting them small cost 8 points on FSDD.

Every step is still one step of the scheme on a Hamiltonian (time-dependent through the input,
never through the state), hence exactly symplectic with ``damping=None``, and invertible.
Since :math:`r_t < 1`, :math:`\|K \operatorname{diag}(r_t)\|_2 \le \|K\|_2`: the guard of
:class:`~hrnn.cells.HamiltonianCell` on :math:`\|K_p\|_2 \|K_q\|_2` bounds every step's frequency.

**Damping against the scheme's pumping.** Every step first applies the friction
:math:`p \leftarrow e^{-\zeta_i r_{t,i}^4} p` (port-Hamiltonian, :math:`\zeta_i` learnable as in the
parent). A step rotates unit i by at most :math:`\theta_{t,i} = h\hat\omega\,r_{t,i}^2 \le
c\,r_{t,i}^2` (:math:`\hat\omega = \|K_p\|_2 \|K_q\|_2`; the guard keeps :math:`h\hat\omega \le c`), so
the friction is at least :math:`e^{-\zeta\theta^2 / c^2}`, with equality once the guard acts. Why
:math:`\theta^2`: for one unit the gate only warps time (:math:`r^2 H` has the flow of :math:`H`),
which pumps no energy; what pumps is the discretisation, whose conserved quadratic form depends on
the step's rotation (symplectic Euler's :math:`p^2 + q^2 - \theta p q` on an oscillator), so steps
that change with every input drive the oscillator parametrically, at a rate of order
:math:`\theta^2` a step. The friction has that order: it acts on the units whose gates are open,
vanishes as the gate closes (closed units keep their memory), and does not depend on h or K, so it
does not fade as Adam grows K and the guard shortens the step. The parent's friction on the clock,
:math:`e^{-\zeta h r^2}`, fades with h, and with it psMNIST seed 1 broke down (exploding gradients
of a few sequences); one on the rotation, :math:`e^{-\zeta\theta}`, trained stably but about 6
points lower, damping the half-open units too (``docs/RESULTS.md`` §2.0).

Defaults ``dt=0.5``, ``timescales=(2e-3, 0.6)`` (the range of the initial clock factor
:math:`\sigma(b_s)^2`, log-uniform), ``damping=0.3``: at zero input every unit steps
:math:`h r_0^2` in (1e-3, 0.3), as the parent's default units do, and a fully open unit steps up to
``dt``; a fully open unit (r = 1) loses 26 % of its momentum a step, one at :math:`r^2 = 0.1`
0.3 %.

**The output is the momentum p** (``emit="q"`` gives the position). The force on a unit is
:math:`-r^2 (q + u)`, so over a stretch where its clock runs slowly p is the running sum of the
drive to first order in the clock and q, its integral, only to second order: emitting q leaves
the slow units nearly silent on short sequences. Emitting p gained on psMNIST, row-wise sMNIST
and FSDD and kept the adding problem at T = 1000 solved (``docs/RESULTS.md`` §2.00).

**The guard's margin is c = 1.5** (:attr:`STABILITY_MARGIN`; the parent's is 1). Symplectic Euler
and Verlet stay stable on an oscillator up to :math:`h\omega < 2`, and a trained model sits at the
guard: after 1,000 steps of row-wise sMNIST Adam had grown :math:`\|K_q\|_2, \|K_p\|_2` to about
3.9 and the guard cut h from 0.5 to 0.067 (psMNIST: 1.9-2.6 and 0.16-0.21). At c = 1 the cell fit
the training rows slowly (final training loss 0.02 against GRU's 0.005) and stayed 0.5 points
under GRU and LSTM on row-wise sMNIST; at c = 1.5 a fully open unit may rotate 1.5 rad a step, and
row-wise sMNIST rose to their level while psMNIST, FSDD and the adding problem stayed above them
(``docs/RESULTS.md`` §2.000). At initialisation :math:`\hat\omega = 1` and ``dt=0.5``, so the
guard is inactive and the margin changes nothing there.

Parameters: those of :class:`~hrnn.cells.HamiltonianCell` without ``log_timescale``;
``weight_ih`` (2n, input_size) and ``bias_ih`` (2n,) stack :math:`(W_{ih}, W_s)` and
:math:`(b_{ih}, b_s)`. Initialisation: :math:`b_s = \mathrm{logit}(\sqrt{s_0})`, :math:`s_0`
log-uniform in ``timescales``.
With symplectic Euler and ``memory="stored"`` a sequence runs in :func:`hrnn.fast.selective_scan`
(a hand-written backward); other schemes run the plain loop, and ``memory="reversible"`` the generic
reversible backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ..fast import selective_scan
from ..hamiltonians import log_cosh_gradient
from ..integrators import SCHEMES
from .base import State
from .hamiltonian import ACCELERATIONS, HamiltonianCell

__all__ = ["SelectiveHamiltonianCell"]


class SelectiveHamiltonianCell(HamiltonianCell):
    """Log-cosh cell whose per-unit gate :math:`r_t = \\sigma(W_s x_t + b_s)` scales its energy, so its
    clock :math:`h r_t^2` follows the input (module docstring). Options as
    :class:`~hrnn.cells.HamiltonianCell`; ``timescales`` is the range of the initial
    :math:`\\sigma(b_s)^2` and may not be ``None``."""

    gates = 2
    static_timescales = False
    #: :math:`c` of the guard, above the parent's 1 (module docstring, "The guard's margin")
    STABILITY_MARGIN = 1.5

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        dt: float | str = 0.5,
        timescales: tuple[float, float] = (2e-3, 0.6),
        damping: float | None = 0.3,
        emit: str = "p",
        **options,
    ) -> None:
        if timescales is None:
            raise ValueError(
                "a selective cell draws its timescales from the input: timescales may not be None"
            )
        super().__init__(
            input_size, hidden_size, dt=dt, timescales=timescales, damping=damping, emit=emit, **options
        )

    def reset_parameters(self) -> None:
        super().reset_parameters()
        low, high = self.timescales
        n = self.hidden_size
        with torch.no_grad():
            s0 = self.bias_ih.new_empty(n).uniform_(math.log(low), math.log(high)).exp()
            self.bias_ih[n:] = torch.logit(s0.sqrt())

    def selection(self, u_t: Tensor) -> tuple[Tensor, Tensor]:
        """The drive :math:`u_t` (batch, n) and the gate :math:`r_t` (batch, n) of a projected input (batch, 2n)."""
        drive, gate = u_t.chunk(2, dim=-1)
        return drive, torch.sigmoid(gate)

    def friction(self, h: Tensor, timescale: Tensor | None = None) -> Tensor | None:
        r"""The decay :math:`e^{-\zeta_i s^2}` of p for the clock factor ``timescale``
        :math:`s = r^2` (default 1, an open gate), whatever the step ``h`` (module docstring): the
        parent's friction on the clock :math:`s^2`."""
        return super().friction(1.0, None if timescale is None else timescale.square())

    def _maps(self, drive: Tensor, gate: Tensor):
        def grad_v(q: Tensor) -> Tensor:
            return gate * log_cosh_gradient(gate * (q + drive), self.weight_q)

        def grad_t(p: Tensor) -> Tensor:
            return gate * log_cosh_gradient(gate * p, self.weight_p, self.bias_p)

        return grad_v, grad_t

    def step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        drive, gate = self.selection(u_t)
        h = self.step_size()
        decay = self.friction(h, gate.square())
        if decay is not None:
            p = decay * p
        return self.scheme.step(p, q, *self._maps(drive, gate), h)

    def inverse_step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        drive, gate = self.selection(u_t)
        h = self.step_size()
        p, q = self.scheme.inverse(p, q, *self._maps(drive, gate), h)
        decay = self.friction(h, gate.square())
        return (p if decay is None else p / decay), q


def _selective_scan(
    cell: SelectiveHamiltonianCell, x: Tensor, p: Tensor, q: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The stored-memory fast scan; the scan has no reversible mode, so ``memory="reversible"`` keeps
    the generic reversible path."""
    if cell.memory != "stored":
        return cell.reversible_scan(x, p, q)
    damping = None if cell.damping_raw is None else F.softplus(cell.damping_raw)
    return selective_scan(
        cell.project(x), p, q, cell.weight_q, cell.weight_p, cell.bias_p, cell.step_size(), damping=damping,
        emit=cell.emit,
    )  # fmt: skip


ACCELERATIONS[(SelectiveHamiltonianCell, SCHEMES["symplectic_euler"].plan)] = _selective_scan
