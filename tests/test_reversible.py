"""hrnn.reversible: gradients of the reversible backward equal plain autograd; memory stays flat in T."""

from __future__ import annotations

import pytest
import torch

from hrnn.integrators import SCHEMES
from hrnn.reversible import reversible_integrate

B, N, T = 3, 4, 40
F64 = torch.float64


def log_cosh_maps(b_q, K_q, K_p, b_p):
    """grad V(q) = K_q^T tanh(K_q q + b_q), grad T(p) = K_p^T tanh(K_p p + b_p), written by hand."""
    return (lambda q: torch.tanh(q @ K_q.T + b_q) @ K_q), (lambda p: torch.tanh(p @ K_p.T + b_p) @ K_p)


def quartic_maps(b_q, k, m):
    """A user-defined energy V(q) = sum k q^4 / 4 + b q, T(p) = sum p^2 / (2 m)."""
    return (lambda q: k * q**3 + b_q), (lambda p: p / m)


ENERGIES = {
    "log_cosh": (
        log_cosh_maps,
        lambda: (torch.randn(N, N, dtype=F64), torch.randn(N, N, dtype=F64), 0.1 * torch.randn(N, dtype=F64)),
    ),
    "quartic": (quartic_maps, lambda: (torch.rand(N, dtype=F64) + 0.5, torch.rand(N, dtype=F64) + 1.0)),
}


def steps_of(scheme_name: str, energy: str, h: float = 0.05):
    scheme, maps = SCHEMES[scheme_name], ENERGIES[energy][0]

    def step(k, state, x_k, params):
        return scheme.step(*state, *maps(x_k[0], *params), h)

    def inverse(k, state, x_k, params):
        return scheme.inverse(*state, *maps(x_k[0], *params), h)

    return step, inverse


def leaves(energy: str, seed: int = 0):
    torch.manual_seed(seed)
    params = tuple(t.requires_grad_() for t in ENERGIES[energy][1]())
    state = tuple(torch.randn(B, N, dtype=F64, requires_grad=True) for _ in range(2))
    u = torch.randn(T, B, N, dtype=F64, requires_grad=True)
    return state, u, params


def plain(step, state, u, params):
    outputs = []
    for k in range(len(u)):
        state = step(k, state, (u[k],), params)
        outputs.append(state[1])
    return torch.stack(outputs), state


def loss(outputs, state):
    return (outputs**2).sum() + (state[0] * state[1]).sum()


@pytest.mark.parametrize("anchor_every", [None, 7])
@pytest.mark.parametrize("energy", sorted(ENERGIES))
@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_gradients_equal_plain_autograd(scheme, energy, anchor_every):
    step, inverse = steps_of(scheme, energy)
    state, u, params = leaves(energy)
    outputs, final = reversible_integrate(
        step, inverse, state, T, xs=(u,), params=params, anchor_every=anchor_every, emit=lambda s: s[1]
    )
    expected_outputs, expected_final = plain(step, state, u, params)
    torch.testing.assert_close(outputs, expected_outputs, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, expected_final, rtol=0, atol=1e-12)
    inputs = (*state, u, *params)
    actual = torch.autograd.grad(loss(outputs, final), inputs)
    expected = torch.autograd.grad(loss(expected_outputs, expected_final), inputs)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


def test_without_emit_returns_none_and_differentiates_the_final_state():
    step, inverse = steps_of("verlet", "quartic")
    state, u, params = leaves("quartic")
    outputs, final = reversible_integrate(step, inverse, state, T, xs=(u,), params=params)
    assert outputs is None
    actual = torch.autograd.grad(final[1].sum(), (*state, u, *params))
    expected = torch.autograd.grad(plain(step, state, u, params)[1][1].sum(), (*state, u, *params))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


def test_anchors_restart_the_rebuild_from_the_stored_states():
    """A deliberately wrong inverse (off by 1e-3 per step) spoils every gradient unless the anchors
    reset it: with anchor_every=1 each rebuilt state is replaced by the stored one."""
    step, inverse = steps_of("symplectic_euler", "quartic")

    def sloppy(k, state, x_k, params):
        return tuple(s + 1e-3 for s in inverse(k, state, x_k, params))

    state, u, params = leaves("quartic")
    expected = torch.autograd.grad(loss(*plain(step, state, u, params)), (*state, *params))
    for anchor_every, exact in ((1, True), (None, False)):
        run = reversible_integrate(
            step, sloppy, state, T, xs=(u,), params=params, anchor_every=anchor_every, emit=lambda s: s[1]
        )
        actual = torch.autograd.grad(loss(*run), (*state, *params))
        close = all(torch.allclose(a, e, rtol=0, atol=1e-10) for a, e in zip(actual, expected, strict=True))
        assert close == exact


def test_parameters_without_grad_and_unused_inputs_get_no_gradient():
    step, inverse = steps_of("verlet", "log_cosh")
    state, u, params = leaves("log_cosh")
    frozen = (params[0].detach(), *params[1:])
    _, final = reversible_integrate(step, inverse, state, T, xs=(u.detach(),), params=frozen)
    grads = torch.autograd.grad(final[0].sum(), (state[0], params[1]))
    expected = torch.autograd.grad(plain(step, state, u.detach(), frozen)[1][0].sum(), (state[0], params[1]))
    for a, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_saved_memory_does_not_grow_with_the_number_of_steps():
    step, inverse = steps_of("symplectic_euler", "quartic")
    k, m = (t.requires_grad_() for t in (torch.rand(N, dtype=F64) + 0.5, torch.rand(N, dtype=F64) + 1.0))
    state = tuple(torch.randn(B, N, dtype=F64, requires_grad=True) for _ in range(2))

    def step_free(i, s, x_k, params):
        return step(i, s, (torch.zeros(()),), params)

    def inverse_free(i, s, x_k, params):
        return inverse(i, s, (torch.zeros(()),), params)

    sizes = {
        n: saved_bytes(lambda n=n: reversible_integrate(step_free, inverse_free, state, n, params=(k, m)))
        for n in (1000, 10_000)
    }
    assert sizes[10_000] <= 1.2 * sizes[1000]
    assert sizes[1000] < 10 * B * N * 8  # a few states, not one per step


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_steps": 0}, "n_steps must be a positive int"),
        ({"xs": (torch.zeros(3, 2),)}, r"xs\[0\] must be a tensor with first dimension n_steps=5"),
        ({"anchor_every": 0}, "anchor_every must be a positive int or None"),
        ({"state": ()}, "state must be a non-empty tuple of tensors"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, message):
    args = {"state": (torch.zeros(2),), "n_steps": 5, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        reversible_integrate(
            lambda k, s, x, p: s, lambda k, s, x, p: s, args.pop("state"), args.pop("n_steps"), **args
        )
