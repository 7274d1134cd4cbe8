r"""The non-Hamiltonian baselines: coRNN and the (gated) antisymmetric RNN."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import Parameter

from ..validation import check_positive
from .base import RecurrentCell, State

__all__ = ["AntisymmetricCell", "CoRNNCell", "GatedAntisymmetricCell"]


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
        self.register_buffer("dt", torch.tensor(check_positive("dt", dt), **factory))
        self.register_buffer("gamma", torch.tensor(check_positive("gamma", gamma), **factory))
        self.register_buffer("epsilon", torch.tensor(check_positive("epsilon", epsilon), **factory))
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
        self.register_buffer("epsilon", torch.tensor(check_positive("epsilon", epsilon), **factory))
        self.register_buffer("gamma", torch.tensor(check_positive("gamma", gamma), **factory))
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
