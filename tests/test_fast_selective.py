"""The selective cell's fast scan, in both implementations (PyTorch ops and the compiled loops),
equals autograd through its plain step loop, in value and in every gradient, to round-off (float64),
and the layer runs it exactly when it should."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

from hrnn import SelectiveHamiltonianRNN
from hrnn.cells import ACCELERATIONS, SelectiveHamiltonianCell
from hrnn.fast import selective_scan
from hrnn.fast.selective import IMPLEMENTATIONS, compiled_available
from hrnn.integrators import SCHEMES

F64 = torch.float64
T, B, N, D = 11, 3, 4, 2
CHUNK = 4  # three segments, the last one shorter: T is a multiple of no chunk used here
LOSSES = {"all": (True, True, True), "outputs": (True, False, False), "final_state": (False, True, True)}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def implementation(request) -> str:
    """Each implementation; the compiled one is skipped where it cannot be built, except under CI."""
    if request.param == "compiled" and not compiled_available(torch.zeros(1)) and not os.environ.get("CI"):
        pytest.skip("the compiled selective scan could not be built here")
    return request.param


def _cell(damping: float | None, emit: str) -> SelectiveHamiltonianCell:
    cell = SelectiveHamiltonianCell(D, N, dtype=F64, damping=damping, emit=emit, dt=0.7, fast=False)
    with torch.no_grad():  # a strongly input-dependent gate, a nonzero b_p and strong damping
        cell.weight_ih.normal_()
        cell.bias_p.normal_()
        if cell.damping_raw is not None:
            cell.damping_raw.normal_()
    return cell


def _scan(cell: SelectiveHamiltonianCell, x, p0, q0, chunk: int, implementation: str | None = None):
    damping = None if cell.damping_raw is None else F.softplus(cell.damping_raw)
    return selective_scan(
        cell.project(x), p0, q0, cell.weight_q, cell.weight_p, cell.bias_p, cell.step_size(),
        damping=damping, emit=cell.emit, chunk=chunk, implementation=implementation,
    )  # fmt: skip


def _weighted_loss(results, use) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(r.shape, dtype=F64, generator=gen) for r in results]
    return sum((r * w).sum() for r, w, keep in zip(results, weights, use, strict=True) if keep)


def _assert_close(actual, expected, tol=1e-10) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("chunk", [CHUNK, 64])
@pytest.mark.parametrize("emit", ["q", "p"])
@pytest.mark.parametrize("damping", [0.3, None], ids=["damped", "undamped"])
def test_scan_equals_the_plain_step_loop_in_value_and_every_gradient(
    damping, emit, chunk, loss, implementation
):
    cell = _cell(damping, emit)
    x = torch.randn(T, B, D, dtype=F64, requires_grad=True)
    p0, q0 = (torch.randn(B, N, dtype=F64, requires_grad=True) for _ in range(2))
    leaves = [x, p0, q0, *cell.parameters()]
    expected = cell.forward_sequence(x, p0, q0)  # fast=False: the loop over cell.step
    actual = _scan(cell, x, p0, q0, chunk, implementation)
    _assert_close(actual, expected)
    assert not torch.equal(actual[1], p0) and not torch.equal(actual[2], q0)
    grads = [torch.autograd.grad(_weighted_loss(r, LOSSES[loss]), leaves) for r in (actual, expected)]
    _assert_close(*grads)
    assert all(g.abs().sum() > 0 for g in grads[1][3:])  # every parameter takes part


@pytest.mark.parametrize("damped", [True, False])
def test_scan_passes_gradcheck(damped, implementation):
    n = 3
    shapes = [(5, 2, 2 * n), (2, n), (2, n), (n, n), (n, n), (n,), (n,)]
    inputs = [torch.randn(s, dtype=F64, requires_grad=True) for s in shapes]
    if not damped:
        inputs[-1] = None

    def f(u, p0, q0, kq, kp, bp, zeta):
        damping = None if zeta is None else F.softplus(zeta)
        return selective_scan(
            3 * u, p0, q0, kq, kp, bp, 0.4, damping=damping, emit="p", chunk=2, implementation=implementation
        )

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_scan_under_no_grad_keeps_no_graph_and_gives_the_same_values(implementation):
    cell = _cell(0.3, "q")
    x, p0 = torch.randn(T, B, D, dtype=F64), torch.randn(B, N, dtype=F64)
    with torch.no_grad():
        actual = _scan(cell, x, p0, p0, CHUNK, implementation)
        expected = cell.forward_sequence(x, p0, p0)
    assert all(t.grad_fn is None for t in actual)
    _assert_close(actual, expected)


@pytest.mark.parametrize("damping", [0.3, None], ids=["damped", "undamped"])
def test_the_implementations_agree_in_float32_at_trained_sizes(damping):
    """float32, 48 units, a non-contiguous u and a transposed output cotangent, as in a batch-first
    model: the compiled loops and the PyTorch ops agree to float32 round-off."""
    if not compiled_available(torch.zeros(1)) and not os.environ.get("CI"):
        pytest.skip("the compiled selective scan could not be built here")
    n, steps, batch = 48, 70, 5
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(batch, steps, 2 * n, generator=gen).transpose(0, 1).requires_grad_()
    kq, kp = (torch.linalg.qr(torch.randn(n, n, generator=gen))[0].requires_grad_() for _ in range(2))
    bp, p0, q0 = (0.1 * torch.randn(s, generator=gen) for s in ((n,), (batch, n), (batch, n)))
    zeta = None if damping is None else torch.full((n,), damping, requires_grad=True)
    weights = torch.randn(batch, steps, n, generator=gen).transpose(0, 1)
    leaves = [t for t in (u, kq, kp, zeta) if t is not None]
    results = []
    for name in ("torch", "compiled"):
        out, p_t, q_t = selective_scan(
            u, p0, q0, kq, kp, bp, 0.5, damping=zeta, emit="p", implementation=name
        )
        loss = (out * weights).sum() + p_t.sum() - q_t.square().sum()
        results.append((out, p_t, q_t, *torch.autograd.grad(loss, leaves)))
    for actual, expected in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=2e-5, atol=2e-5 * expected.abs().max().item())


def test_the_compiled_loops_refuse_what_they_cannot_run():
    args = _arguments(
        u=torch.randn(T, B, 2 * N, dtype=torch.bfloat16), p0=torch.zeros(B, N, dtype=torch.bfloat16)
    )
    args.update(
        q0=args["p0"],
        weight_q=torch.eye(N, dtype=torch.bfloat16),
        weight_p=torch.eye(N, dtype=torch.bfloat16),
    )
    args["bias_p"] = torch.zeros(N, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="float32/float64 tensors on the CPU"):
        selective_scan(**args, implementation="compiled")
    with pytest.raises(ValueError, match="implementation"):
        selective_scan(**_arguments(), implementation="cuda")


def _runs_the_scan(output: torch.Tensor) -> bool:
    """Whether the autograd graph of ``output`` holds the scan's backward."""
    seen, todo = set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "SelectiveScan" in type(node).__name__:
            return True
        todo.extend(fn for fn, _ in node.next_functions)
    return False


def test_the_scan_is_registered_for_symplectic_euler_only():
    assert (SelectiveHamiltonianCell, SCHEMES["symplectic_euler"].plan) in ACCELERATIONS
    assert (SelectiveHamiltonianCell, SCHEMES["verlet"].plan) not in ACCELERATIONS


@pytest.mark.parametrize("damping", [0.3, None], ids=["damped", "undamped"])
@pytest.mark.parametrize("emit", ["q", "p"])
def test_the_layer_runs_the_scan_by_default_and_the_plain_loop_with_fast_false(emit, damping):
    kw = {"num_layers": 2, "batch_first": True, "dtype": F64, "emit": emit, "damping": damping}
    fast = SelectiveHamiltonianRNN(D, N, **kw)
    reference = SelectiveHamiltonianRNN(D, N, fast=False, **kw)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(B, T, D, dtype=F64, requires_grad=True)
    hx = tuple(torch.randn(2, B, N, dtype=F64, requires_grad=True) for _ in range(2))
    results, grads = [], []
    for layer in (fast, reference):
        output, h_n = layer(x, hx)
        results.append((output, *h_n))
        grads.append(
            torch.autograd.grad(_weighted_loss(results[-1], LOSSES["all"]), [x, *hx, *layer.parameters()])
        )
    assert _runs_the_scan(results[0][0]) and not _runs_the_scan(results[1][0])
    _assert_close(*results)
    _assert_close(*grads)


def test_the_reversible_layer_keeps_the_generic_reversible_path():
    fast = SelectiveHamiltonianRNN(D, N, dtype=F64, memory="reversible", anchor_every=4)
    reference = SelectiveHamiltonianRNN(D, N, dtype=F64, memory="reversible", anchor_every=4, fast=False)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(T, B, D, dtype=F64, requires_grad=True)
    outputs, grads = [], []
    for layer in (fast, reference):
        outputs.append(layer(x)[0])
        grads.append(torch.autograd.grad(outputs[-1].square().sum(), [x, *layer.parameters()]))
    assert not _runs_the_scan(outputs[0])
    _assert_close(outputs[:1], outputs[1:])
    _assert_close(*grads)


def _arguments(**changes):
    n = N
    args = {
        "u": torch.randn(T, B, 2 * n), "p0": torch.zeros(B, n), "q0": torch.zeros(B, n),
        "weight_q": torch.eye(n), "weight_p": torch.eye(n), "bias_p": torch.zeros(n), "h": 0.1,
    }  # fmt: skip
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"u": torch.randn(T, B, N)},
            ValueError,
            r"u must have shape \(seq_len >= 1, batch=3, 2 \* hidden=8\)",
        ),
        ({"u": torch.randn(0, B, 2 * N)}, ValueError, "seq_len >= 1"),
        ({"u": torch.randn(T, B, 2 * N, dtype=F64)}, TypeError, "u must match the state's dtype"),
        ({"weight_p": torch.eye(N + 1)}, ValueError, r"weight_p must have shape \(4, 4\)"),
        ({"damping": torch.ones(N + 1)}, ValueError, r"damping must have shape \(4,\)"),
        ({"h": torch.full((N,), 0.1)}, ValueError, "a float or a 0-dim tensor"),
        ({"h": -0.1}, ValueError, "step size must be finite and > 0"),
        ({"emit": "r"}, ValueError, "emit"),
        ({"chunk": 0}, ValueError, "chunk must be a positive int"),
    ],
)
def test_scan_rejects_bad_arguments_with_a_clear_error(changes, error, message):
    with pytest.raises(error, match=message):
        selective_scan(**_arguments(**changes))
