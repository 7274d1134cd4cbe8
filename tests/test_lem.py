"""LEM (Rusch et al., 2022): its step equals the paper's equations written by hand (float64)."""

from __future__ import annotations

import torch

from hrnn import LEMRNN, LEMCell, build_model

F64 = torch.float64
IN, N, B = 3, 5, 4


def test_lem_step_equals_its_equations_written_by_hand():
    torch.manual_seed(0)
    cell = LEMCell(IN, N, dt=0.7, dtype=F64)
    x, z, y = torch.randn(B, IN, dtype=F64), torch.randn(B, N, dtype=F64), torch.randn(B, N, dtype=F64)
    V1, V2, Vz, Vy = cell.weight_ih.detach().split(N)
    b1, b2, bz, by = cell.bias_ih.detach().split(N)
    W1, W2, Wz = cell.weight_hh.detach().split(N)
    c1, c2, cz = cell.bias_hh.detach().split(N)
    Wy, cy = cell.weight_zy.detach(), cell.bias_zy.detach()
    dt_n = 0.7 * torch.sigmoid(y @ W1.T + c1 + x @ V1.T + b1)
    dt_bar = 0.7 * torch.sigmoid(y @ W2.T + c2 + x @ V2.T + b2)
    z_n = (1 - dt_n) * z + dt_n * torch.tanh(y @ Wz.T + cz + x @ Vz.T + bz)
    y_n = (1 - dt_bar) * y + dt_bar * torch.tanh(z_n @ Wy.T + cy + x @ Vy.T + by)
    z_out, y_out = cell(x, (z, y))
    torch.testing.assert_close(z_out, z_n, rtol=0, atol=1e-14)
    torch.testing.assert_close(y_out, y_n, rtol=0, atol=1e-14)


def test_lem_initialisation_and_layer_follow_the_authors():
    torch.manual_seed(0)
    cell = LEMCell(IN, 64)
    bound = 64**-0.5
    assert all(p.abs().max() <= bound for p in cell.parameters())
    assert cell.dt.item() == 1.0 and cell.state_names == ("z", "y")
    output, (z, y) = LEMRNN(IN, N, num_layers=2)(torch.randn(7, B, IN))
    assert output.shape == (7, B, N) and z.shape == y.shape == (2, B, N)
    torch.testing.assert_close(output[-1], y[-1])
    assert build_model("lem", IN, N, 2)(torch.randn(B, 7, IN)).shape == (B, 2)
