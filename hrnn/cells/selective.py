r"""The selective Hamiltonian cell: the log-cosh energy with timescales chosen by the input.

.. math::
    H_t(p, q) = \sum_i \log\cosh(K_p\,\sqrt{s_t} \odot p + b_p)_i
              + \sum_i \log\cosh(K_q\,\sqrt{s_t} \odot q + u_t)_i,
    \qquad s_t = \sigma(W_s x_t + b_s) \in (0, 1)^n,

one step :math:`h` of ``scheme`` per input. :class:`~hrnn.cells.HamiltonianCell` has the same energy
with a learnt but fixed :math:`s`; here each unit's timescale is a function of the current input,
as the step :math:`\Delta_t` of a selective state-space model (Mamba) is: where :math:`s_{t,i} \to 0`
unit i neither moves nor takes in the input, where it opens it integrates the input. A fixed
timescale writes every input into the state, so on a task whose answer depends on a few marked
steps (adding) the others bury it; choosing what to write is what lets a conservative memory learn
such tasks (``docs/RESULTS.md``).

Every step is still one step of the scheme on a Hamiltonian (time-dependent through the input,
never through the state), hence exactly symplectic with ``damping=None``, and invertible.
Since :math:`s_t < 1`, :math:`\|K\sqrt{s_t}\|_2 \le \|K\|_2`: the guard of
:class:`~hrnn.cells.HamiltonianCell` on :math:`\|K_p\|_2 \|K_q\|_2` bounds every step's frequency.
Damping (port-Hamiltonian, as in the parent) is warped with the time: :math:`p \leftarrow
e^{-\zeta_i h s_{t,i}} p`.

Defaults ``dt=0.5``, ``timescales=(2e-3, 0.6)``, ``damping=0.3``: at zero input every unit
steps :math:`h s_0` in (1e-3, 0.3), as the parent's default units do, and with
:math:`\hat\omega = 1` at the orthogonal initialisation the guard stays inactive until
:math:`\|K_p\|\|K_q\|` doubles; a fully open unit steps up to ``dt``. The damping is ten times the
parent's: steps that change with every input make a parametrically driven oscillator, and with
the parent's 0.03 training broke down on 784-step sequences (psMNIST) where 0.3 trains stably
(``docs/RESULTS.md`` §2.0). It is a damping ratio of 0.15: a unit's amplitude falls by e in about
one of its own periods. The output is q, as the parent's; ``emit="p"`` gives the momentum, which
sums the drive of the steps a unit opens on.

Parameters: those of :class:`~hrnn.cells.HamiltonianCell` without ``log_timescale``;
``weight_ih`` (2n, input_size) and ``bias_ih`` (2n,) stack :math:`(W_{ih}, W_s)` and
:math:`(b_{ih}, b_s)`. Initialisation: :math:`b_s = \mathrm{logit}(s_0)`, :math:`s_0` log-uniform
in ``timescales`` (the parent's range), so that at zero input the cell starts as the parent does.
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
    """Log-cosh cell whose per-unit timescales :math:`s_t = \\sigma(W_s x_t + b_s)` follow the input
    (module docstring). Options as :class:`~hrnn.cells.HamiltonianCell`; ``timescales`` is the range
    of the initial :math:`\\sigma(b_s)` and may not be ``None``."""

    gates = 2
    static_timescales = False

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        dt: float | str = 0.5,
        timescales: tuple[float, float] = (2e-3, 0.6),
        damping: float | None = 0.3,
        **options,
    ) -> None:
        if timescales is None:
            raise ValueError(
                "a selective cell draws its timescales from the input: timescales may not be None"
            )
        super().__init__(input_size, hidden_size, dt=dt, timescales=timescales, damping=damping, **options)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        low, high = self.timescales
        n = self.hidden_size
        with torch.no_grad():
            s0 = self.bias_ih.new_empty(n).uniform_(math.log(low), math.log(high)).exp()
            self.bias_ih[n:] = torch.logit(s0)

    def selection(self, u_t: Tensor) -> tuple[Tensor, Tensor]:
        """The drive :math:`u_t` (batch, n) and :math:`\\sqrt{s_t}` (batch, n) of a projected input (batch, 2n)."""
        drive, gate = u_t.chunk(2, dim=-1)
        return drive, torch.sigmoid(gate).sqrt()

    def _maps(self, drive: Tensor, root: Tensor):
        def grad_v(q: Tensor) -> Tensor:
            return root * log_cosh_gradient(root * q, self.weight_q, drive)

        def grad_t(p: Tensor) -> Tensor:
            return root * log_cosh_gradient(root * p, self.weight_p, self.bias_p)

        return grad_v, grad_t

    def step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        drive, root = self.selection(u_t)
        h = self.step_size()
        decay = self.friction(h, root.square())
        if decay is not None:
            p = decay * p
        return self.scheme.step(p, q, *self._maps(drive, root), h)

    def inverse_step(self, u_t: Tensor, p: Tensor, q: Tensor) -> State:
        drive, root = self.selection(u_t)
        h = self.step_size()
        p, q = self.scheme.inverse(p, q, *self._maps(drive, root), h)
        decay = self.friction(h, root.square())
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
