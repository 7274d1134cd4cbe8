"""The fast scans equal autograd through the plain integrator loop, in every mode, to round-off."""

from __future__ import annotations

import inspect

import pytest
import torch

from experiments.memory import LiveBytes, peak_bytes, saved_bytes
from hrnn import HamiltonianRNN, OscillatorRNN, build_model
from hrnn.cells import ACCELERATIONS
from hrnn.fast import DEFAULT_ANCHOR_EVERY, hamiltonian_scan, oscillator_scan
from hrnn.fast._common import segment_bounds
from hrnn.hamiltonians import LogCoshHamiltonian, OscillatorHamiltonian
from hrnn.integrators import SCHEMES, Scheme, Substep, get_scheme
from hrnn.models import MODELS
from hrnn.step_size import heuristic_dt

F64 = torch.float64
T, B, N, D = 13, 3, 4, 2
CHUNK = 4  # several segments per sequence, one of them shorter than the others


def reference_hamiltonian(u, p, q, weight_q, weight_p, bias_p, dt, scheme, decay=None, emit="q"):
    """Autograd through ``get_scheme(scheme).step`` on the log-cosh energy with bias u_t, each step
    starting with ``p <- decay * p`` when a decay is given; the outputs are ``emit`` of every step."""
    step, outputs = get_scheme(scheme).step, []
    for u_t in u:
        energy = LogCoshHamiltonian(K_p=weight_p, K_q=weight_q, b_p=bias_p, b_q=u_t)
        p = p if decay is None else decay * p
        p, q = step(p, q, energy.grad_v, energy.grad_t, dt)
        outputs.append(p if emit == "p" else q)
    return torch.stack(outputs), p, q


def reference_oscillator(u, p, q, w, h, alpha):
    """Autograd through symplectic Euler on the oscillator energy with bias u_t."""
    step, outputs = get_scheme("symplectic_euler").step, []
    for u_t in u:
        energy = OscillatorHamiltonian(w=w, b=u_t, alpha=alpha)
        p, q = step(p, q, energy.grad_v, energy.grad_t, h)
        outputs.append(q)
    return torch.stack(outputs), p, q


def hamiltonian_leaves(dtype=F64, seq_len=T, batch=B, n=N, scale=1.0):
    """x, W_ih, b_ih, p0, q0, K_q, K_p, b_p, all requiring grad."""
    shapes = [(seq_len, batch, D), (n, D), (n,), (batch, n), (batch, n), (n, n), (n, n), (n,)]
    return [(scale * torch.randn(s, dtype=dtype)).requires_grad_() for s in shapes]


def oscillator_leaves(dtype=F64, seq_len=T):
    """x, W_ih, b_ih, p0, q0, w, c (h = 0.5 sigmoid(c)), all requiring grad."""
    shapes = [(seq_len, B, D), (N, D), (N,), (B, N), (B, N), (N,), (N,)]
    return [torch.randn(s, dtype=dtype).requires_grad_() for s in shapes]


def loss_weights(outputs, p, q):
    """Random cotangents, so every output enters the loss with its own weight."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in (outputs, p, q)]


def weighted(results, weights, use):
    return sum((r * w).sum() for r, w, keep in zip(results, weights, use, strict=True) if keep)


def assert_all_close(actual, expected, tol=1e-10):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def assert_layers_agree_in_value_and_every_gradient(fast, reference, x, hx):
    """Output, h_n and the gradients of x, hx and every parameter of two layers with equal weights."""
    results, grads = [], []
    for model in (fast, reference):
        output, h_n = model(x, hx)
        results.append((output, *h_n))
        loss = weighted(results[-1], loss_weights(*results[-1]), (True, True, True))
        grads.append(torch.autograd.grad(loss, [x, *hx, *model.parameters()]))
    assert_all_close(*results)
    assert_all_close(*grads)


MODES = [("stored", None), ("reversible", None), ("reversible", 3), ("reversible", 5)]
LOSSES = {"all": (True, True, True), "outputs": (True, False, False), "final_state": (False, True, True)}


@pytest.mark.parametrize("emit", ["q", "p"])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize(("memory", "anchor_every"), MODES)
@pytest.mark.parametrize("projected", [False, True], ids=["u", "x_w_ih"])
def test_hamiltonian_scan_matches_plain_loop_in_value_and_every_gradient(
    scheme, memory, anchor_every, projected, emit
):
    if memory == "reversible" and not SCHEMES[scheme].symplectic:
        pytest.skip("reversible needs an exact inverse")
    dt = torch.tensor(0.3, dtype=F64)
    leaves = hamiltonian_leaves()
    x, w_ih, b_ih, p0, q0, kq, kp, bp = leaves
    expected = reference_hamiltonian(x @ w_ih.T + b_ih, p0, q0, kq, kp, bp, dt, scheme, emit=emit)
    weights = loss_weights(*expected)
    expected_grads = torch.autograd.grad(weighted(expected, weights, LOSSES["all"]), leaves)
    kw = {"weight_ih": w_ih, "bias_ih": b_ih} if projected else {}
    u = x if projected else x @ w_ih.T + b_ih
    actual = hamiltonian_scan(
        u, p0, q0, kq, kp, bp, dt, scheme, memory, anchor_every, chunk=CHUNK, emit=emit, **kw
    )
    assert_all_close(actual, expected)
    assert_all_close(torch.autograd.grad(weighted(actual, weights, LOSSES["all"]), leaves), expected_grads)


@pytest.mark.parametrize("loss", ["outputs", "final_state"])
@pytest.mark.parametrize("memory", ["stored", "reversible"])
def test_hamiltonian_scan_gradients_when_only_part_of_the_result_is_used(loss, memory):
    dt = torch.tensor(0.2, dtype=F64)
    leaves = hamiltonian_leaves()
    x, w_ih, b_ih, p0, q0, kq, kp, bp = leaves
    expected = reference_hamiltonian(x @ w_ih.T + b_ih, p0, q0, kq, kp, bp, dt, "verlet")
    weights = loss_weights(*expected)
    expected_grads = torch.autograd.grad(weighted(expected, weights, LOSSES[loss]), leaves)
    actual = hamiltonian_scan(x @ w_ih.T + b_ih, p0, q0, kq, kp, bp, dt, "verlet", memory, chunk=CHUNK)
    assert_all_close(torch.autograd.grad(weighted(actual, weights, LOSSES[loss]), leaves), expected_grads)


#: plans with a kick first, a drift first (a user scheme) and both in one stage (the ablation)
USER_SCHEME = Scheme(
    "drift_kick_drift", ((Substep("drift", 0.5),), (Substep("kick"),), (Substep("drift", 0.5),)), True, 2
)
DAMPED_SCHEMES = {**SCHEMES, USER_SCHEME.name: USER_SCHEME}


@pytest.mark.parametrize("emit", ["q", "p"])
@pytest.mark.parametrize("scheme", sorted(DAMPED_SCHEMES))
@pytest.mark.parametrize(("memory", "anchor_every"), MODES)
def test_damped_hamiltonian_scan_matches_the_damped_plain_loop_and_its_decay_gradient(
    scheme, memory, anchor_every, emit
):
    """With ``decay`` every step starts with p <- d * p; values and every gradient, d's included,
    equal autograd through that loop, for every plan and memory mode."""
    if memory == "reversible" and not DAMPED_SCHEMES[scheme].symplectic:
        pytest.skip("reversible needs an exact inverse")
    x, w_ih, b_ih, p0, q0, kq, kp, bp = hamiltonian_leaves()
    decay = (0.5 + 0.5 * torch.rand(N, dtype=F64)).requires_grad_()
    leaves = [x, w_ih, b_ih, p0, q0, kq, kp, bp, decay]
    s = DAMPED_SCHEMES[scheme]
    expected = reference_hamiltonian(x @ w_ih.T + b_ih, p0, q0, kq, kp, bp, 0.3, s, decay, emit)
    weights = loss_weights(*expected)
    expected_grads = torch.autograd.grad(weighted(expected, weights, LOSSES["all"]), leaves)
    actual = hamiltonian_scan(
        x, p0, q0, kq, kp, bp, 0.3, s, memory, anchor_every, weight_ih=w_ih, bias_ih=b_ih, chunk=CHUNK,
        decay=decay, emit=emit,
    )  # fmt: skip
    assert_all_close(actual, expected)
    assert_all_close(torch.autograd.grad(weighted(actual, weights, LOSSES["all"]), leaves), expected_grads)
    # the decay acts: the undamped scan differs
    undamped = hamiltonian_scan(x, p0, q0, kq, kp, bp, 0.3, s, weight_ih=w_ih, bias_ih=b_ih)
    assert (undamped[1] - actual[1]).abs().max() > 1e-3


@pytest.mark.parametrize("memory", ["stored", "reversible"])
def test_damped_hamiltonian_scan_passes_gradcheck(memory):
    x, w_ih, b_ih, p0, q0, kq, kp, bp = hamiltonian_leaves(seq_len=5, batch=2, n=3)
    decay = (0.5 + 0.5 * torch.rand(3, dtype=F64)).requires_grad_()

    def f(x, p0, q0, kq, kp, bp, decay):
        return hamiltonian_scan(x, p0, q0, kq, kp, bp, 0.25, "verlet", memory, 2 if memory == "reversible" else None,
                                chunk=2, decay=decay)  # fmt: skip

    assert torch.autograd.gradcheck(
        f, ((x @ w_ih.T + b_ih).detach().requires_grad_(), p0, q0, kq, kp, bp, decay)
    )


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
@pytest.mark.parametrize(
    ("memory", "anchor_every"), [("stored", None), ("reversible", None), ("reversible", 4)]
)
@pytest.mark.parametrize("seq_len", [1, 7, 130])
def test_damped_cell_scan_equals_its_plain_step_loop_in_value_and_every_gradient(
    scheme, memory, anchor_every, seq_len
):
    """A damped HamiltonianRNN runs in the scan; output, h_n and the gradients of x, hx and of every
    parameter (log_timescale and damping_raw included) equal the plain loop over
    ``HamiltonianCell.step`` (``fast=False``, stored) to 1e-10. The inverse step divides p by the
    decay, so a rebuild amplifies round-off by 1/d per step: the damping is mild enough here for
    130 steps without an anchor."""
    kw = {"scheme": scheme, "damping": 0.5, "dt": 0.3, "dtype": F64}
    fast = HamiltonianRNN(D, N, memory=memory, anchor_every=anchor_every, **kw)
    reference = HamiltonianRNN(D, N, fast=False, **kw)
    reference.load_state_dict(fast.state_dict())
    assert fast.cells[0].acceleration() is not None and reference.cells[0].acceleration() is None
    names = {name for name, _ in fast.named_parameters()}
    assert {"cells.0.log_timescale", "cells.0.damping_raw"} <= names
    x = torch.randn(seq_len, B, D, dtype=F64, requires_grad=True)
    hx = tuple(torch.randn(1, B, N, dtype=F64, requires_grad=True) for _ in range(2))
    assert_layers_agree_in_value_and_every_gradient(fast, reference, x, hx)


@pytest.mark.parametrize(
    ("decay", "error", "message"),
    [
        (torch.ones(N + 1, dtype=F64), ValueError, r"decay must have shape \(4,\), got \(5,\)"),
        (torch.ones(1, N, dtype=F64), ValueError, r"decay must have shape \(4,\)"),
        (torch.ones(N), TypeError, "decay must match the state's dtype and device"),
        ([1.0] * N, TypeError, "decay must be a torch.Tensor"),
    ],
)
def test_hamiltonian_scan_rejects_a_bad_decay_with_a_clear_error(decay, error, message):
    state, weight = torch.zeros(B, N, dtype=F64), torch.zeros(N, N, dtype=F64)
    with pytest.raises(error, match=message):
        hamiltonian_scan(torch.zeros(T, B, N, dtype=F64), state, state, weight, weight, weight[0], 0.1,
                         decay=decay)  # fmt: skip


@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize(("memory", "anchor_every"), MODES)
@pytest.mark.parametrize("projected", [False, True], ids=["u", "x_w_ih"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_oscillator_scan_matches_plain_loop_in_value_and_every_gradient(
    alpha, memory, anchor_every, projected, loss
):
    leaves = oscillator_leaves()
    x, w_ih, b_ih, p0, q0, w, c = leaves
    expected = reference_oscillator(x @ w_ih.T + b_ih, p0, q0, w, 0.5 * torch.sigmoid(c), alpha)
    weights = loss_weights(*expected)
    expected_grads = torch.autograd.grad(weighted(expected, weights, LOSSES[loss]), leaves)
    kw = {"weight_ih": w_ih, "bias_ih": b_ih} if projected else {}
    u = x if projected else x @ w_ih.T + b_ih
    h = 0.5 * torch.sigmoid(c)
    actual = oscillator_scan(u, p0, q0, w, h, alpha, memory, anchor_every, chunk=CHUNK, **kw)
    assert_all_close(actual, expected)
    assert_all_close(torch.autograd.grad(weighted(actual, weights, LOSSES[loss]), leaves), expected_grads)


@pytest.mark.parametrize("memory", ["stored", "reversible"])
@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_hamiltonian_scan_passes_gradcheck(memory, scheme):
    x, w_ih, b_ih, p0, q0, kq, kp, bp = hamiltonian_leaves(seq_len=5, batch=2, n=3)

    def f(x, w_ih, b_ih, p0, q0, kq, kp, bp):
        return hamiltonian_scan(x, p0, q0, kq, kp, bp, 0.25, scheme, memory, 2 if memory == "reversible" else None,
                                weight_ih=w_ih, bias_ih=b_ih, chunk=2)  # fmt: skip

    assert torch.autograd.gradcheck(f, (x, w_ih, b_ih, p0, q0, kq, kp, bp))


@pytest.mark.parametrize("memory", ["stored", "reversible"])
def test_oscillator_scan_passes_gradcheck(memory):
    x, w_ih, b_ih, p0, q0, w, c = oscillator_leaves(seq_len=5)
    h = (0.5 * torch.sigmoid(c)).detach().requires_grad_()

    def f(u, p0, q0, w, h):
        return oscillator_scan(u, p0, q0, w, h, 0.7, memory, chunk=2)

    assert torch.autograd.gradcheck(f, ((x @ w_ih.T + b_ih).detach().requires_grad_(), p0, q0, w, h))


def test_every_registered_scheme_is_accelerated_for_the_log_cosh_cell():
    from hrnn.cells import HamiltonianCell, OscillatorCell

    assert {(HamiltonianCell, s.plan) for s in SCHEMES.values()} <= set(ACCELERATIONS)
    assert (OscillatorCell, SCHEMES["symplectic_euler"].plan) in ACCELERATIONS


def test_the_log_cosh_scan_runs_any_plan_of_a_user_scheme():
    """The scan reads the scheme's plan, so a scheme that is not registered (here a symmetric
    two-kick composition) runs in it, stored and reversible, equal to the plain loop."""
    half = Substep("drift", 0.5)
    scheme = Scheme("drift_kick_drift", ((half,), (Substep("kick"),), (half,)), symplectic=True, order=2)
    x, w_ih, b_ih, p0, q0, kq, kp, bp = hamiltonian_leaves()
    for memory, anchor_every in (("stored", None), ("reversible", 3)):
        u = x @ w_ih.T + b_ih
        actual = hamiltonian_scan(u, p0, q0, kq, kp, bp, 0.2, scheme, memory, anchor_every, chunk=CHUNK)
        expected = reference_hamiltonian(u, p0, q0, kq, kp, bp, 0.2, scheme)
        assert_all_close(actual, expected)
        weights = loss_weights(*actual)
        grads = [
            torch.autograd.grad(weighted(r, weights, (1, 1, 1)), [x, p0, kq, kp, bp], retain_graph=True)
            for r in (actual, expected)
        ]
        assert_all_close(*grads)


@pytest.mark.parametrize("cls", [HamiltonianRNN, OscillatorRNN])
def test_reversible_float32_gradients_stay_within_1e_4_of_stored_ones_at_T_10000(cls):
    """The guard of the reversible mode: at T = 10,000 in float32, with the step size a user gets
    (``dt="auto"``: the heuristic for T) and the default anchor interval, every gradient of the
    rebuilt states is within 1e-4 relative of the stored-state one (docs/speed.md has the table)."""
    seq_len, batch, n = 10_000, 2, 8
    stored = cls(D, n, dt="auto", seq_len=seq_len)
    reversible = cls(D, n, dt="auto", seq_len=seq_len, memory="reversible")
    reversible.load_state_dict(stored.state_dict())
    assert reversible.cells[0].dt.item() == pytest.approx(
        heuristic_dt(seq_len, stored.cells[0].max_frequency())
    )
    x = torch.randn(seq_len, batch, D, requires_grad=True)
    grads = []
    for layer in (stored, reversible):
        outputs, (_, q) = layer(x)
        loss = outputs.square().mean() + q.sum()
        grads.append(torch.autograd.grad(loss, [x, *layer.parameters()]))
    for g_stored, g_reversible in zip(*grads, strict=True):
        assert (g_reversible - g_stored).norm() <= 1e-4 * g_stored.norm()


@pytest.mark.parametrize("scan", ["hamiltonian", "oscillator"])
def test_reversible_mode_keeps_no_per_step_state(scan):
    def measure(seq_len, memory):
        x, p0 = torch.randn(seq_len, B, D), torch.zeros(B, N)
        w_ih, b_ih = torch.randn(N, D, requires_grad=True), torch.zeros(N, requires_grad=True)
        kw = {"weight_ih": w_ih, "bias_ih": b_ih, "chunk": 8}
        if scan == "hamiltonian":
            k = torch.randn(N, N, requires_grad=True)
            inputs = (x, p0, w_ih, b_ih, k)
            return saved_bytes(
                lambda: hamiltonian_scan(x, p0, p0, k, k, b_ih, 0.1, "verlet", memory, **kw), inputs
            )
        w, h = torch.randn(N, requires_grad=True), torch.full((N,), 0.1)
        inputs = (x, p0, w_ih, b_ih, w, h)
        return saved_bytes(lambda: oscillator_scan(x, p0, p0, w, h, 0.5, memory, **kw), inputs)

    # the final state only: no anchor below 1,000 steps
    assert measure(40, "reversible") == measure(400, "reversible") == 2 * B * N * 4
    assert measure(400, "stored") > 9 * measure(40, "stored")


def test_scans_without_grad_keep_nothing_and_return_the_same_values():
    x, w_ih, b_ih, p0, q0, kq, kp, bp = hamiltonian_leaves()
    with torch.no_grad():
        fast = hamiltonian_scan(
            x, p0, q0, kq, kp, bp, 0.3, "verlet", weight_ih=w_ih, bias_ih=b_ih, chunk=CHUNK
        )
        expected = reference_hamiltonian(x @ w_ih.T + b_ih, p0, q0, kq, kp, bp, 0.3, "verlet")
    assert fast[0].grad_fn is None
    assert_all_close(fast, expected)


def test_segments_end_at_every_anchor():
    assert segment_bounds(10, 4, 3) == [0, 3, 4, 6, 8, 9, 10]
    assert segment_bounds(8, 4) == [0, 4, 8]


def test_reversible_mode_needs_a_symplectic_scheme():
    x, _, _, p0, q0, kq, kp, bp = hamiltonian_leaves()
    with pytest.raises(ValueError, match="symplectic"):
        hamiltonian_scan(x[..., :1].expand(T, B, N), p0, q0, kq, kp, bp, 0.1, "euler", "reversible")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"memory": "checkpointed"},
            ValueError,
            r"unknown memory mode 'checkpointed'; known: \['reversible', 'stored'\]",
        ),
        ({"scheme": "rk4"}, ValueError, "unknown integration scheme 'rk4'; known:"),
        ({"anchor_every": 10}, ValueError, "only to memory='reversible'"),
        ({"memory": "reversible", "anchor_every": 0}, ValueError, "positive int"),
        ({"u": torch.zeros(T, B, N + 1, dtype=F64)}, ValueError, r"u must have shape \(seq_len, 3, 4\)"),
        ({"u": torch.zeros(0, B, N, dtype=F64)}, ValueError, "seq_len >= 1"),
        ({"u": torch.zeros(T, B, N)}, TypeError, "torch.float32"),
        ({"weight_q": torch.zeros(N, N + 1, dtype=F64)}, ValueError, r"weight_q must have shape \(4, 4\)"),
        ({"dt": -0.1}, ValueError, "step size"),
        ({"bias_ih": torch.zeros(N, dtype=F64)}, ValueError, "without weight_ih"),
        ({"emit": "h"}, ValueError, r"emit must be one of \['p', 'q'\], got 'h'"),
    ],
)
def test_hamiltonian_scan_rejects_bad_arguments_with_a_clear_error(kwargs, error, message):
    args = {
        "u": torch.zeros(T, B, N, dtype=F64),
        "p0": torch.zeros(B, N, dtype=F64),
        "q0": torch.zeros(B, N, dtype=F64),
        "weight_q": torch.zeros(N, N, dtype=F64),
        "weight_p": torch.zeros(N, N, dtype=F64),
        "bias_p": torch.zeros(N, dtype=F64),
        "dt": 0.1,
    }
    with pytest.raises(error, match=message):
        hamiltonian_scan(**{**args, **kwargs})


def test_oscillator_scan_rejects_a_non_positive_step():
    zeros = torch.zeros(B, N)
    with pytest.raises(ValueError, match="step size"):
        oscillator_scan(torch.zeros(T, B, N), zeros, zeros, torch.ones(N), torch.zeros(N), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("memory", ["stored", "reversible"])
def test_scans_on_cuda_match_the_cpu(memory):
    leaves = hamiltonian_leaves()
    x, w_ih, b_ih, p0, q0, kq, kp, bp = leaves
    u = x @ w_ih.T + b_ih
    cpu = hamiltonian_scan(u, p0, q0, kq, kp, bp, 0.3, "verlet", memory, chunk=CHUNK)
    cuda = hamiltonian_scan(*(t.cuda() for t in (u, p0, q0, kq, kp, bp)), 0.3, "verlet", memory, chunk=CHUNK)
    assert_all_close([t.cpu() for t in cuda], cpu)
    w, h = torch.rand(N, dtype=F64), torch.full((N,), 0.3, dtype=F64)
    cpu = oscillator_scan(u, p0, q0, w, h, 0.5, memory, chunk=CHUNK)
    cuda = oscillator_scan(*(t.cuda() for t in (u, p0, q0, w, h)), 0.5, memory, chunk=CHUNK)
    assert_all_close([t.cpu() for t in cuda], cpu)


def _layer_of(cell_class):
    return next(layer for layer in MODELS.values() if getattr(layer, "cell_class", None) is cell_class)


#: every registered acceleration, as (layer class, options selecting it); test id "<Cell>-<scheme>"
ACCELERATED = {
    f"{cell.__name__}-{scheme.name}": (_layer_of(cell), {"scheme": scheme, "dt": 0.3})
    for cell, plan in ACCELERATIONS
    for scheme in SCHEMES.values()
    if scheme.plan == plan
}
#: the same with damping, for every accelerated cell that has the option
DAMPED = {
    f"{name}-damped": (layer, {**options, "damping": 0.5})
    for name, (layer, options) in ACCELERATED.items()
    if "damping" in inspect.signature(layer.cell_class).parameters
}
LAYERS = {
    **ACCELERATED,
    **DAMPED,
    "OscillatorCell-symplectic_euler": (_layer_of(OscillatorRNN.cell_class), {"dt": 0.5, "alpha": 0.7}),
}
LAYOUTS = {"time_major": (T, B, D), "batch_first": (B, T, D), "unbatched": (T, D)}


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize(
    ("memory", "anchor_every"), [("stored", None), ("reversible", None), ("reversible", 4)]
)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_acceleration_equals_the_generic_path_in_value_and_every_gradient(
    layer, memory, anchor_every, layout
):
    """Each registered acceleration, two stacked layers through the public API: output, h_n and the
    gradients of the input, of hx and of every parameter equal the generic path (``fast=False``: the
    plain loop, or hrnn.reversible's backward) with the same memory mode, to 1e-10."""
    cls, options = LAYERS[layer]
    if memory == "reversible" and not get_scheme(options.get("scheme", "symplectic_euler")).symplectic:
        pytest.skip("reversible needs an exact inverse")
    kw = {"num_layers": 2, "batch_first": layout == "batch_first", "dtype": F64, **options}
    fast = cls(D, N, memory=memory, anchor_every=anchor_every, **kw)
    reference = cls(D, N, fast=False, memory=memory, anchor_every=anchor_every, **kw)
    assert fast.cells[0].acceleration() is not None and reference.cells[0].acceleration() is None
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(LAYOUTS[layout], dtype=F64, requires_grad=True)
    state_shape = (2, N) if layout == "unbatched" else (2, B, N)
    hx = tuple(torch.randn(state_shape, dtype=F64, requires_grad=True) for _ in range(2))
    assert_layers_agree_in_value_and_every_gradient(fast, reference, x, hx)


def test_memory_options_pass_through_build_model_to_every_layer():
    model = build_model(
        "hamiltonian",
        D,
        N,
        1,
        num_blocks=0,
        num_layers=2,
        scheme="verlet",
        memory="reversible",
        anchor_every=7,
    )
    assert [(c.memory, c.anchor_every, c.fast) for c in model.rnn.cells] == [("reversible", 7, True)] * 2
    assert "memory=reversible" in repr(model)
    model = build_model("oscillator", D, N, 1, num_blocks=0, memory="reversible")
    assert model.rnn.cells[0].memory == "reversible" and model.rnn.cells[0].anchor_every is None


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (HamiltonianRNN, {"scheme": "euler", "memory": "reversible"}, "symplectic scheme"),
        (OscillatorRNN, {"memory": "low"}, r"known: \['reversible', 'stored'\]"),
        (OscillatorRNN, {"anchor_every": 100}, "only to memory='reversible'"),
        (HamiltonianRNN, {"memory": "reversible", "anchor_every": 0}, "positive int"),
    ],
)
def test_layers_reject_bad_memory_options_when_built(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(D, N, **kwargs)


@pytest.mark.parametrize("cls", [HamiltonianRNN, OscillatorRNN])
def test_reversible_layer_keeps_no_per_step_tensor(cls):
    """Through the layer (batch-first input, the projection inside the scan): what autograd keeps
    beyond the input and the parameters is the final state, whatever T below the anchor interval."""

    def measure(seq_len: int, memory: str) -> int:
        layer = cls(D, N, batch_first=True, memory=memory)
        x = torch.randn(B, seq_len, D)
        return saved_bytes(lambda: layer(x), (x, *layer.parameters()))

    assert measure(40, "reversible") == measure(400, "reversible") <= 8 * B * N * 4
    assert measure(400, "stored") > 9 * measure(40, "stored")
    # one (p, q) anchor more per interval
    long = DEFAULT_ANCHOR_EVERY + 1
    assert measure(long, "reversible") == measure(40, "reversible") + 2 * B * N * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layer", ["HamiltonianCell-verlet", "OscillatorCell-symplectic_euler"])
@pytest.mark.parametrize("memory", ["stored", "reversible"])
def test_layer_on_cuda_equals_the_reference_loop_on_the_cpu(layer, memory):
    cls, options = LAYERS[layer]
    reference = cls(D, N, num_layers=2, fast=False, dtype=F64, **options)
    fast = cls(D, N, num_layers=2, memory=memory, dtype=F64, **options).cuda()
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, D, dtype=F64)
    x_cuda = x.cuda().requires_grad_()
    x.requires_grad_()
    grads = []
    for model, inputs in ((fast, x_cuda), (reference, x)):
        output, (p, q) = model(inputs)
        loss = output.square().sum() + p.sum() + q.sum()
        grads.append([g.cpu() for g in torch.autograd.grad(loss, [inputs, *model.parameters()])])
    assert_all_close(*grads)


def test_live_bytes_counts_the_peak_of_tensor_memory_exactly():
    known = torch.zeros(1000)
    with LiveBytes(known=(known,)) as counter:
        a = torch.empty(250)  # 1,000 bytes
        b = torch.ones(500, dtype=F64)  # 4,000 bytes
        del a
        c = known[:10] + b[:10]  # 80 bytes; views of known storages cost nothing
        del b, c
    assert counter.peak == 1000 + 4000
    assert counter.live == 0


@pytest.mark.parametrize("cls", [HamiltonianRNN, OscillatorRNN])
def test_reversible_peak_memory_beyond_the_output_does_not_grow_with_T(cls):
    """10x the steps, the same activation memory (1.2x at most),
    while the stored mode's grows several-fold (the full-size table is in docs/speed.md)."""

    def beyond_output(seq_len: int, memory: str) -> int:
        layer = cls(D, N, memory=memory)
        x = torch.randn(seq_len, B, D)
        return peak_bytes(layer, x) - seq_len * B * N * 4

    short, long = 110, 1100  # the long run keeps one anchor
    assert beyond_output(long, "reversible") <= 1.2 * beyond_output(short, "reversible")
    # the stored mode's constant backward workspace is a large share at these tiny sizes
    assert beyond_output(long, "stored") >= 4 * beyond_output(short, "stored")
