r"""Time-stepping schemes for separable Hamiltonian systems.

State :math:`y = (p, q)`, each of shape ``(..., n)``. For a separable Hamiltonian
:math:`H(p, q) = T(p) + V(q)` the dynamics are

.. math::
    \dot p = -\partial V / \partial q, \qquad \dot q = \partial T / \partial p.

Every scheme is a pure function of the two gradient maps ``grad_v: q -> dV/dq`` and
``grad_t: p -> dT/dp``; it knows nothing of what they model (a layer of an H-DNN, a step of
a recurrent cell). A time-varying Hamiltonian is a new pair of maps at each step.

The step size ``h`` is a positive float or a tensor broadcastable to the state (a per-unit
step, as in the independent-oscillator cell).

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

GradientMap = Callable[[Tensor], Tensor]
StepSize = float | Tensor
State = tuple[Tensor, Tensor]

__all__ = [
    "SCHEMES",
    "Scheme",
    "euler_step",
    "get_scheme",
    "integrate",
    "symplectic_euler_inverse",
    "symplectic_euler_step",
    "validate_state",
    "validate_step_size",
    "verlet_inverse",
    "verlet_step",
]


def euler_step(p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize) -> State:
    r"""Forward (explicit) Euler: :math:`p' = p - h V_q(q),\ q' = q + h T_p(p)`.

    Not symplectic; kept as the ablation the seed papers compare against.
    """
    return p - h * grad_v(q), q + h * grad_t(p)


def symplectic_euler_step(
    p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    r"""Symplectic (semi-implicit) Euler: :math:`p' = p - h V_q(q),\ q' = q + h T_p(p')`."""
    p_next = p - h * grad_v(q)
    return p_next, q + h * grad_t(p_next)


def symplectic_euler_inverse(
    p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    r"""Exact inverse of :func:`symplectic_euler_step`: :math:`q = q' - h T_p(p'),\ p = p' + h V_q(q)`."""
    q_prev = q - h * grad_t(p)
    return p + h * grad_v(q_prev), q_prev


def verlet_step(p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize) -> State:
    r"""Störmer–Verlet (leapfrog), second order.

    .. math::
        p_{1/2} = p - \tfrac h2 V_q(q),\quad q' = q + h T_p(p_{1/2}),\quad
        p' = p_{1/2} - \tfrac h2 V_q(q').
    """
    p_half = p - 0.5 * h * grad_v(q)
    q_next = q + h * grad_t(p_half)
    return p_half - 0.5 * h * grad_v(q_next), q_next


def verlet_inverse(p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize) -> State:
    """Exact inverse of :func:`verlet_step` (the same three updates run backwards)."""
    p_half = p + 0.5 * h * grad_v(q)
    q_prev = q - h * grad_t(p_half)
    return p_half + 0.5 * h * grad_v(q_prev), q_prev


StepFunction = Callable[[Tensor, Tensor, GradientMap, GradientMap, StepSize], State]


@dataclass(frozen=True)
class Scheme:
    """A one-step method: its step, its exact inverse (``None`` if it has none), its order."""

    name: str
    step: StepFunction
    inverse: StepFunction | None
    symplectic: bool
    order: int


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("euler", euler_step, None, symplectic=False, order=1),
        Scheme("symplectic_euler", symplectic_euler_step, symplectic_euler_inverse, True, 1),
        Scheme("verlet", verlet_step, verlet_inverse, symplectic=True, order=2),
    )
}


def get_scheme(name: str | Scheme) -> Scheme:
    """Look a scheme up by name; an unknown name fails with the list of known ones."""
    if isinstance(name, Scheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown integration scheme {name!r}; known schemes: {sorted(SCHEMES)}") from None


def validate_state(p: Tensor, q: Tensor) -> None:
    """Check that ``p`` and ``q`` are floating tensors of one shape, dtype and device."""
    for name, t in (("p", p), ("q", q)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    if p.dtype != q.dtype:
        raise TypeError(f"p and q must have the same dtype, got {p.dtype} and {q.dtype}")
    if p.device != q.device:
        raise ValueError(f"p and q must be on the same device, got {p.device} and {q.device}")


def validate_step_size(h: StepSize, like: Tensor | None = None) -> None:
    """Check that every step size is finite and strictly positive (and matches ``like``'s dtype)."""
    if isinstance(h, Tensor):
        if not h.is_floating_point():
            raise TypeError(f"step size must be a floating-point tensor, got dtype {h.dtype}")
        if like is not None and h.dtype != like.dtype:
            raise TypeError(f"step size has dtype {h.dtype} but the state has dtype {like.dtype}")
        if not bool(torch.isfinite(h).all()) or not bool((h > 0).all()):
            raise ValueError("step size must be finite and > 0 everywhere")
    else:
        h = float(h)
        if not (h > 0 and h < float("inf")):
            raise ValueError(f"step size must be finite and > 0, got {h}")


def integrate(
    p: Tensor,
    q: Tensor,
    grads: Callable[[int], tuple[GradientMap, GradientMap]],
    h: StepSize,
    n_steps: int,
    scheme: str | Scheme = "symplectic_euler",
    *,
    inverse: bool = False,
) -> State:
    """Run ``n_steps`` steps of ``scheme``; ``grads(k)`` gives step k's ``(grad_v, grad_t)``.

    With ``inverse=True`` the exact inverse steps run from ``k = n_steps - 1`` down to 0, so
    ``integrate(*integrate(y, ...), inverse=True)`` returns ``y`` up to round-off.
    """
    validate_state(p, q)
    validate_step_size(h, like=p)
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    s = get_scheme(scheme)
    if inverse and s.inverse is None:
        raise ValueError(f"scheme {s.name!r} has no exact inverse")
    step = s.inverse if inverse else s.step
    order = range(n_steps - 1, -1, -1) if inverse else range(n_steps)
    for k in order:
        grad_v, grad_t = grads(k)
        p, q = step(p, q, grad_v, grad_t, h)
    return p, q
