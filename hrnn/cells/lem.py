r"""Long expressive memory (LEM; Rusch, Mishra, Erichson & Mahoney, ICLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import Parameter

from ..validation import check_positive
from .base import RecurrentCell, State

__all__ = ["LEMCell"]


class LEMCell(RecurrentCell):
    r"""LEM: two coupled states with learned, input-dependent time steps.

    With the projected input :math:`u_t = V x_t + b` split into four parts
    :math:`(u^{(1)}, u^{(2)}, u^{(z)}, u^{(y)})`:

    .. math::
        \Delta t_n &= dt\,\sigma(W_1 y + u^{(1)}),\qquad
        \overline{\Delta t}_n = dt\,\sigma(W_2 y + u^{(2)}),\\
        z' &= (1 - \Delta t_n) \odot z + \Delta t_n \odot \tanh(W_z y + u^{(z)}),\\
        y' &= (1 - \overline{\Delta t}_n) \odot y + \overline{\Delta t}_n \odot \tanh(W_y z' + u^{(y)}).

    State ``(z, y)``, output :math:`y_t`. Parameters: ``weight_ih`` (4n, input_size) stacking
    :math:`V_1, V_2, V_z, V_y`, ``bias_ih`` (4n,); ``weight_hh`` (3n, n) stacking
    :math:`W_1, W_2, W_z` with ``bias_hh`` (3n,); ``weight_zy`` :math:`W_y` (n, n) with ``bias_zy``
    (n,); buffer ``dt`` (0-dim). The biases of the recurrent maps add to the input biases, as in
    the authors' code. Initialisation as the authors': every weight and bias
    :math:`U(-1/\sqrt n, 1/\sqrt n)` (the input projection too). ``dt=1`` is their cell's
    default; their scripts use 0.0242 for adding at T = 10,000 and 0.31 for psMNIST.
    """

    state_names = ("z", "y")
    gates = 4

    def __init__(
        self, input_size: int, hidden_size: int, *, dt: float = 1.0, device=None, dtype=None
    ) -> None:
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        n = hidden_size
        self.weight_hh = Parameter(torch.empty(3 * n, n, **factory))
        self.bias_hh = Parameter(torch.empty(3 * n, **factory))
        self.weight_zy = Parameter(torch.empty(n, n, **factory))
        self.bias_zy = Parameter(torch.empty(n, **factory))
        self.register_buffer("dt", torch.tensor(check_positive("dt", dt), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.hidden_size**-0.5
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def step(self, u_t: Tensor, z: Tensor, y: Tensor) -> State:
        u_1, u_2, u_z, u_y = u_t.chunk(4, dim=-1)
        h_1, h_2, h_z = torch.nn.functional.linear(y, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
        dt_n = self.dt * torch.sigmoid(h_1 + u_1)
        dt_bar = self.dt * torch.sigmoid(h_2 + u_2)
        z = (1 - dt_n) * z + dt_n * torch.tanh(h_z + u_z)
        y_drive = torch.nn.functional.linear(z, self.weight_zy, self.bias_zy) + u_y
        return z, (1 - dt_bar) * y + dt_bar * torch.tanh(y_drive)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dt={self.dt.item():.4g}"
