"""LinOSS: the chunked scan equals the step-by-step loop (outputs and every gradient), the
transitions have the determinants and symplecticity of their schemes, and bad input fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hrnn.linear_scan as linear_scan
from hrnn.linear_scan import (
    ScanOperators,
    chunk_length,
    chunked_scan,
    matrix_powers,
    oscillator_transition,
    reference_scan,
)
from hrnn.linoss import DISCRETIZATIONS, LinOSSRNN

F64 = torch.float64
SEQ_LENS = [1, 7, 64, 100, 257]
J = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the scale of a gradient grows with T)."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def coefficients(p: int, damping: bool) -> list[torch.Tensor]:
    """A >= 0, steps in (0, 1], damping G >= 0 (or none), all requiring grad."""
    a = torch.rand(p, dtype=F64).requires_grad_()
    h = (0.1 + 0.9 * torch.rand(p, dtype=F64)).requires_grad_()
    g = torch.rand(p, dtype=F64).requires_grad_() if damping else None
    return [a, h, g]


@pytest.mark.parametrize("implicit", [False, True], ids=["imex", "im"])
@pytest.mark.parametrize("damping", [False, True], ids=["undamped", "damped"])
@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("chunk", [4, 32])
def test_chunked_scan_equals_reference_loop(implicit, damping, seq_len, chunk):
    p, b = 5, 3
    a, h, g = coefficients(p, damping)
    w = torch.randn(seq_len, b, p, dtype=F64, requires_grad=True)
    z0, y0 = (torch.randn(b, p, dtype=F64, requires_grad=True) for _ in range(2))
    leaves = [w, a, h, z0, y0] + ([g] if damping else [])
    weights = [
        torch.randn(seq_len, b, p, dtype=F64),
        torch.randn(b, p, dtype=F64),
        torch.randn(b, p, dtype=F64),
    ]
    expected = reference_scan(w, a, h, g, implicit, z0, y0)
    ops = ScanOperators.build(*oscillator_transition(a, h, g, implicit), chunk_length(seq_len, chunk))
    y, z_t, y_t = chunked_scan(w.permute(2, 1, 0), ops, z0.t(), y0.t())
    actual = (y.permute(2, 1, 0), z_t.t(), y_t.t())
    for got, want in zip(actual, expected, strict=True):
        assert relative_error(got, want) < 1e-10
    loss = [
        sum((r * c).sum() for r, c in zip(results, weights, strict=True)) for results in (actual, expected)
    ]
    grads = [torch.autograd.grad(value, leaves) for value in loss]
    for got, want in zip(*grads, strict=True):
        assert relative_error(got, want) < 1e-10


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs 80-bit long double")
def test_chunked_scan_round_off_over_long_sequences_is_that_of_the_plain_recurrence():
    """T = 20,000 undamped IMEX, up to the edge of stability (h^2 A = 4 - 1e-3, where M is nearly
    defective and round-off is amplified most): against the recurrence in 80-bit arithmetic, the
    chunked scan's error is within a small factor of the float64 step-by-step recurrence's own."""
    p, seq_len = 4, 20_000
    h = torch.full((p,), 0.9, dtype=F64)
    a = torch.tensor([0.5, 1.0, 3.0, 4.0 / 0.81 - 1e-3], dtype=F64)
    m, f = oscillator_transition(a, h, None, implicit=False)
    w = torch.randn(p, 1, seq_len, dtype=F64)
    zeros = torch.zeros(p, 1, dtype=F64)
    chunked = chunked_scan(w, ScanOperators.build(m, f, 32), zeros, zeros)[0][:, 0]
    plain, exact = torch.empty(p, seq_len, dtype=F64), np.empty((p, seq_len), np.longdouble)
    state, state_ld = torch.zeros(p, 2, dtype=F64), np.zeros((p, 2), np.longdouble)
    a_ld, h_ld, w_ld = (t.numpy().astype(np.longdouble) for t in (a, h, w[:, 0]))
    m_ld = np.stack(
        (np.stack((np.ones(p, np.longdouble), -h_ld * a_ld), -1), np.stack((h_ld, 1 - h_ld**2 * a_ld), -1)),
        -2,
    )
    f_ld = np.stack((h_ld, h_ld**2), -1)
    for t in range(seq_len):
        state = (m @ state.unsqueeze(-1)).squeeze(-1) + f * w[:, 0, t, None]
        state_ld = np.einsum("pij,pj->pi", m_ld, state_ld) + f_ld * w_ld[:, t, None]
        plain[:, t], exact[:, t] = state[:, 1], state_ld[:, 1]
    exact = torch.from_numpy(exact.astype(np.float64))
    for i in range(p):
        chunked_error, plain_error = relative_error(chunked[i], exact[i]), relative_error(plain[i], exact[i])
        assert chunked_error < 1e-9
        assert chunked_error < 10 * plain_error + 1e-13


@pytest.mark.parametrize("damping", [False, True], ids=["undamped", "damped"])
def test_imex_transition_determinant_and_symplecticity(damping):
    a, h, g = coefficients(16, damping)
    m, _ = oscillator_transition(
        a.detach() * 4.0, h.detach(), None if g is None else g.detach(), implicit=False
    )
    det = torch.linalg.det(m)
    if damping:
        torch.testing.assert_close(det, 1.0 / (1.0 + h.detach() * g.detach()), rtol=0, atol=1e-12)
    else:
        torch.testing.assert_close(det, torch.ones_like(det), rtol=0, atol=1e-12)
        torch.testing.assert_close(m.transpose(1, 2) @ J @ m, J.expand_as(m), rtol=0, atol=1e-12)


def test_im_transition_is_dissipative():
    a, h, _ = coefficients(16, False)
    m, _ = oscillator_transition(a.detach() + 0.01, h.detach(), None, implicit=True)
    det = torch.linalg.det(m)
    assert bool((det < 1.0).all())
    torch.testing.assert_close(det, 1.0 / (1.0 + h.detach() ** 2 * (a.detach() + 0.01)), rtol=0, atol=1e-12)


def test_matrix_powers_are_repeated_products():
    m = torch.randn(3, 2, 2, dtype=F64)
    powers, product = matrix_powers(m, 9), torch.eye(2, dtype=F64).expand(3, 2, 2)
    for k in range(10):
        torch.testing.assert_close(powers[k], product, rtol=1e-12, atol=1e-12)
        product = product @ m


@pytest.mark.parametrize(
    ("seq_len", "chunk", "expected"),
    [(5, 32, 5), (1000, 32, 25), (10_000, 32, 16), (257, 32, 32), (64, 32, 32)],
)
def test_chunk_length_divides_when_it_can(seq_len, chunk, expected):
    assert chunk_length(seq_len, chunk) == expected


def layer_pair(**options) -> tuple[LinOSSRNN, LinOSSRNN]:
    """The same weights, fast path and reference loop."""
    fast = LinOSSRNN(3, 4, dtype=F64, **options)
    reference = LinOSSRNN(3, 4, dtype=F64, fast=False, **options)
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def check_layers_agree(fast, reference, x, hx=None) -> None:
    """Outputs, final states and the gradients of every parameter, the input and hx, to 1e-10."""
    leaves = [x, *([] if hx is None else hx)]
    results = []
    for layer in (fast, reference):
        output, (z_n, y_n) = layer(x, hx)
        loss = (output * torch.cos(output)).sum() + (z_n**2).sum() + (3.0 * y_n).sum()
        results.append([output, z_n, y_n, *torch.autograd.grad(loss, [*leaves, *layer.parameters()])])
    names = ["output", "z_n", "y_n", "x", *(["z0", "y0"] if hx else []), *dict(fast.named_parameters())]
    for name, got, want in zip(names, *results, strict=True):
        assert relative_error(got, want) < 1e-10, name


@pytest.mark.parametrize("discretization", list(DISCRETIZATIONS))
@pytest.mark.parametrize("damping", [False, True], ids=["undamped", "damped"])
@pytest.mark.parametrize("seq_len", [7, 100])
def test_layer_fast_path_equals_reference_with_carried_state(discretization, damping, seq_len):
    fast, reference = layer_pair(
        num_layers=2, num_oscillators=5, discretization=discretization, damping=damping
    )
    x = torch.randn(seq_len, 2, 3, dtype=F64, requires_grad=True)
    hx = tuple(torch.randn(2, 2, 5, dtype=F64, requires_grad=True) for _ in range(2))
    check_layers_agree(fast, reference, x, hx)


def test_layer_batch_first_unbatched_and_blocks(monkeypatch):
    monkeypatch.setattr(linear_scan, "BLOCK_ELEMENTS", 64)  # many blocks, the last one padded
    fast, reference = layer_pair(batch_first=True, chunk=8)
    check_layers_agree(fast, reference, torch.randn(2, 61, 3, dtype=F64, requires_grad=True))
    fast, reference = layer_pair()
    check_layers_agree(fast, reference, torch.randn(30, 3, dtype=F64, requires_grad=True))


def test_layer_runs_piece_by_piece():
    layer = LinOSSRNN(3, 4, damping=True, dtype=F64)
    x = torch.randn(40, 2, 3, dtype=F64)
    whole, (z_n, y_n) = layer(x)
    first, state = layer(x[:13])
    second, (z_2, y_2) = layer(x[13:], state)
    torch.testing.assert_close(torch.cat((first, second)), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((z_2, y_2), (z_n, y_n), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_first", [False, True])
def test_output_from_states_is_the_step_output(batch_first):
    layer = LinOSSRNN(3, 4, num_layers=2, num_oscillators=5, batch_first=batch_first, dtype=F64)
    x = torch.randn(2, 1, 3, dtype=F64) if batch_first else torch.randn(1, 2, 3, dtype=F64)
    hx = tuple(torch.randn(2, 2, 5, dtype=F64) for _ in range(2))
    output, state = layer(x, hx)
    torch.testing.assert_close(layer.output_from_states(x, state), output, rtol=1e-12, atol=1e-12)


def test_cell_single_step_equals_a_one_step_sequence():
    layer = LinOSSRNN(3, 4, damping=True, dtype=F64)
    x, hx = torch.randn(2, 3, dtype=F64), tuple(torch.randn(1, 2, 4, dtype=F64) for _ in range(2))
    _, (z_n, y_n) = layer(x.unsqueeze(0), hx)
    z, y = layer.cells[0](x, (hx[0][0], hx[1][0]))
    torch.testing.assert_close((z, y), (z_n[0], y_n[0]), rtol=1e-12, atol=1e-12)
    z1, y1 = layer.cells[0](x[1], (hx[0][0, 1], hx[1][0, 1]))
    torch.testing.assert_close((z1, y1), (z[1], y[1]), rtol=1e-12, atol=1e-12)


def test_gradcheck_short_sequence():
    layer = LinOSSRNN(2, 3, num_oscillators=2, damping=True, dtype=F64, chunk=2)
    names, params = zip(*layer.named_parameters(), strict=True)

    def run(x, z0, y0, *values):
        output, (z_n, y_n) = torch.func.functional_call(
            layer, dict(zip(names, values, strict=True)), (x, (z0, y0))
        )
        return output, z_n, y_n

    x = torch.randn(5, 2, 2, dtype=F64, requires_grad=True)
    hx = [torch.randn(1, 2, 2, dtype=F64, requires_grad=True) for _ in range(2)]
    values = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(run, (x, *hx, *values))


def test_parametrisation_keeps_the_step_stable():
    """A_raw far outside the stable interval is clamped to it: IMEX eigenvalues stay on the unit circle."""
    layer = LinOSSRNN(3, 4, num_oscillators=6, dtype=F64)
    cell = layer.cells[0]
    with torch.no_grad():
        cell.A_raw.copy_(torch.tensor([-5.0, 0.0, 0.5, 3.0, 50.0, 1e4], dtype=F64))
    a, h = cell.A, cell.dt
    assert bool((a >= 0).all()) and bool((h * h * a <= 4.0 + 1e-12).all())
    eigenvalues = torch.linalg.eigvals(cell.transition()[0])
    torch.testing.assert_close(eigenvalues.abs(), torch.ones(6, 2, dtype=F64), rtol=0, atol=1e-6)


def test_feedthrough_is_diagonal_when_widths_match():
    assert LinOSSRNN(4, 4).cells[0].D.shape == (4,)
    assert LinOSSRNN(3, 4).cells[0].D.shape == (4, 3)
    layer = LinOSSRNN(4, 4, num_layers=2)
    assert layer.cells[1].D.shape == (4,)


def test_weights_of_another_discretization_are_refused():
    state = LinOSSRNN(3, 4, discretization="im").state_dict()
    with pytest.raises(ValueError, match="discretization='im'"):
        LinOSSRNN(3, 4).load_state_dict(state)
    LinOSSRNN(3, 4, discretization="im").load_state_dict(state)


def test_bidirectional_runs_the_reversed_sequence():
    layer = LinOSSRNN(3, 4, bidirectional=True, dtype=F64)
    x = torch.randn(9, 2, 3, dtype=F64)
    output, (z_n, _) = layer(x)
    assert output.shape == (9, 2, 8) and z_n.shape == (2, 2, 4)
    backward = LinOSSRNN(3, 4, dtype=F64)
    backward.cells[0].load_state_dict(layer.cells[1].state_dict())
    torch.testing.assert_close(output[..., 4:], backward(x.flip(0))[0].flip(0), rtol=1e-12, atol=1e-12)


def test_bad_input_fails_clearly():
    layer = LinOSSRNN(3, 4, num_oscillators=5)
    with pytest.raises(ValueError, match="input_size=3"):
        layer(torch.randn(10, 2, 4))
    with pytest.raises(ValueError, match="rank"):
        layer(torch.randn(10, 2, 3, 1))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(10, 2, 3, dtype=F64))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(10, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"hx part z of shape \(1, 2, 5\)"):
        layer(torch.randn(10, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="unknown discretization 'rk4'"):
        LinOSSRNN(3, 4, discretization="rk4")
    with pytest.raises(ValueError, match="num_oscillators"):
        LinOSSRNN(3, 4, num_oscillators=0)
    with pytest.raises(ValueError, match="seq_len"):
        chunked_scan(
            torch.zeros(2, 1, 4),
            ScanOperators.build(*oscillator_transition(torch.ones(2), torch.ones(2), None, False), 2),
            torch.zeros(2, 1),
            torch.zeros(2, 1),
            seq_len=5,
        )


def test_benchmark_script_times_every_variant_and_measures_memory():
    from experiments import benchmark_linoss

    argv = ["--seq-len", "30", "--hidden", "4", "--batch", "2", "--input-size", "3", "--repeats", "1"]
    rows = benchmark_linoss.main([*argv, "--chunks", "8", "--skip-memory"])["speed"]
    assert [r["model"] for r in rows] == ["lstm", *benchmark_linoss.VARIANTS, "linoss_chunk8"]
    assert all(r["seconds"] > 0 and r["cpu_ratio_to_lstm"] > 0 for r in rows)
    memory = benchmark_linoss.memory_child(seq_len=500, batch=2, input_size=3, hidden=4)
    assert memory["tensor_peak_gib"] >= memory["output_gib"] > 0  # the output is alive at the peak
