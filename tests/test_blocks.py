"""Residual stacks (hrnn.blocks): the block equation, state carry, layouts, gradient telemetry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hrnn.blocks import ResidualStack
from hrnn.gradients import hidden_state_gradient_norms, run_stepwise
from hrnn.models import MODELS, available_models, build_model

IN, N, B, T = 3, 6, 4, 9
NAMES = available_models()


def _parts(h):
    return (h,) if isinstance(h, torch.Tensor) else tuple(h)


def _pack(parts):
    return parts if len(parts) > 1 else parts[0]


@pytest.mark.parametrize("name", ["gru", "hamiltonian"])
def test_stack_equals_its_block_equation_written_by_hand(name):
    torch.manual_seed(0)
    stack = ResidualStack(MODELS[name], IN, N, num_blocks=2, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, IN, dtype=torch.float64)
    hidden = x @ stack.encoder.weight.T + stack.encoder.bias
    for block in stack.blocks:
        normed = F.layer_norm(hidden, (N,), block.norm.weight, block.norm.bias)
        out, _ = block.layer(normed)
        a, b = (F.gelu(out) @ block.mix.weight.T + block.mix.bias).chunk(2, dim=-1)
        hidden = hidden + a * torch.sigmoid(b)
    expected = F.layer_norm(hidden, (N,), stack.norm.weight, stack.norm.bias)
    torch.testing.assert_close(stack(x)[0], expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_a_stack_run_in_two_pieces_carrying_its_state_equals_one_run(name):
    torch.manual_seed(0)
    stack = ResidualStack(MODELS[name], IN, N, num_blocks=2, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, IN, dtype=torch.float64)
    whole, h_whole = stack(x)
    first, h_first = stack(x[:, :4])
    second, h_second = stack(x[:, 4:], h_first)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-12)
    for got, expected in zip(_parts(h_second), _parts(h_whole), strict=True):
        assert got.shape[0] == 2 * getattr(stack.blocks[0].layer, "num_layers", 1)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["gru", "hamiltonian", "lstm"])
def test_time_major_and_unbatched_input_match_batch_first(name):
    torch.manual_seed(0)
    batch_first = ResidualStack(MODELS[name], IN, N, batch_first=True, dtype=torch.float64)
    time_major = ResidualStack(MODELS[name], IN, N, batch_first=False, dtype=torch.float64)
    time_major.load_state_dict(batch_first.state_dict())
    x = torch.randn(B, T, IN, dtype=torch.float64)
    torch.testing.assert_close(time_major(x.transpose(0, 1))[0].transpose(0, 1), batch_first(x)[0])
    torch.testing.assert_close(batch_first(x[1])[0], batch_first(x)[0][1], rtol=0, atol=1e-12)


def _direct_state_gradient_norm(model, x, y, t: int) -> float:
    """||dL/dh_t|| with h_t (the state after step t) a leaf: the loss sees it through the later steps
    and through step t's own output, rebuilt from it by ``output_from_states``."""
    with torch.no_grad():
        before, h_t = model.rnn(x[:, :t])
    leaf = tuple(s.clone().requires_grad_() for s in _parts(h_t))
    own = model.rnn.output_from_states(x[:, t - 1 : t], _pack(leaf))
    after, final = model.rnn(x[:, t:], _pack(leaf))
    output = torch.cat([before[:, :-1], own, after], 1)
    grads = torch.autograd.grad(F.mse_loss(model.decode(output, final), y), leaf, allow_unused=True)
    return float(torch.cat([g.reshape(-1) for g in grads if g is not None]).norm())


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_hidden_state_gradients_of_a_stack_equal_direct_autograd(name, num_layers):
    torch.manual_seed(0)
    model = build_model(name, IN, N, 2, num_layers=num_layers, dtype=torch.float64).eval()
    x, y = torch.randn(B, T, IN, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    stepped, _ = run_stepwise(model.rnn, x)
    torch.testing.assert_close(stepped, model.rnn(x)[0], rtol=0, atol=1e-12)
    norms = hidden_state_gradient_norms(model, x, y, F.mse_loss)
    for t in (1, 4, T - 1):
        assert norms[t].item() == pytest.approx(_direct_state_gradient_norm(model, x, y, t), rel=1e-9)
    assert norms[T].item() > 0  # the last state reaches the mean read-out through the last output


def test_build_model_defaults_to_two_residual_blocks_and_the_mean_over_time():
    model = build_model("hamiltonian", IN, N, 2)
    assert isinstance(model.rnn, ResidualStack) and model.rnn.num_blocks == 2 and model.readout == "mean"
    x = torch.randn(B, T, IN)
    torch.testing.assert_close(model(x), model.head(model.rnn(x)[0].mean(1)))
    assert not isinstance(build_model("hamiltonian", IN, N, 2, num_blocks=0).rnn, ResidualStack)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_num_blocks_fails_clearly(value):
    with pytest.raises(ValueError, match="num_blocks must be"):
        build_model("gru", IN, N, 2, num_blocks=value)
