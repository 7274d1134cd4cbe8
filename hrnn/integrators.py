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

The schemes are data (:class:`Scheme`: a plan of kicks and drifts), read by one generic step and
one generic inverse here and by the fast scans of :mod:`hrnn.fast`. This module imports only the
leaf :mod:`hrnn.validation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .validation import lookup

GradientMap = Callable[[Tensor], Tensor]
StepSize = float | Tensor
State = tuple[Tensor, Tensor]

__all__ = [
    "DRIFT",
    "KICK",
    "KINDS",
    "SCHEMES",
    "Plan",
    "Scheme",
    "Substep",
    "euler_step",
    "get_scheme",
    "integrate",
    "invert_plan",
    "run_plan",
    "symplectic_euler_inverse",
    "symplectic_euler_step",
    "validate_state",
    "validate_step_size",
    "verlet_inverse",
    "verlet_step",
]

#: substep kind -> (the variable it updates, the variable it reads)
KINDS: dict[str, tuple[str, str]] = {"kick": ("p", "q"), "drift": ("q", "p")}


@dataclass(frozen=True)
class Substep:
    r"""A kick :math:`p \leftarrow p - c\,h\,V_q(q)` or a drift :math:`q \leftarrow q + c\,h\,T_p(p)`, ``c = fraction``."""

    kind: str
    fraction: float = 1.0

    def __post_init__(self) -> None:
        lookup(KINDS, self.kind, "substep kind")
        if not (isinstance(self.fraction, int | float) and math.isfinite(self.fraction)):
            raise ValueError(f"a substep fraction must be a finite number, got {self.fraction!r}")


KICK, DRIFT = Substep("kick"), Substep("drift")

#: Stages of substeps; the substeps of one stage all read the stage's input state.
Plan = tuple[tuple[Substep, ...], ...]


def _scaled(fraction: float, h: StepSize) -> StepSize:
    return h if fraction == 1.0 else fraction * h


def run_plan(
    plan: Plan, p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    """One step of ``plan``: each stage applies its substeps to the state it starts from."""
    for stage in plan:
        p_next, q_next = p, q
        for sub in stage:
            if sub.kind == "kick":
                p_next = p_next - _scaled(sub.fraction, h) * grad_v(q)
            else:
                q_next = q_next + _scaled(sub.fraction, h) * grad_t(p)
        p, q = p_next, q_next
    return p, q


def invert_plan(
    plan: Plan, p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    """The exact inverse of :func:`run_plan` for a plan of one-substep stages: each substep is a shear
    whose source it leaves unchanged, undone by the opposite shear, in reverse order."""
    for (sub,) in reversed(plan):
        if sub.kind == "kick":
            p = p + _scaled(sub.fraction, h) * grad_v(q)
        else:
            q = q - _scaled(sub.fraction, h) * grad_t(p)
    return p, q


StepFunction = Callable[[Tensor, Tensor, GradientMap, GradientMap, StepSize], State]


@dataclass(frozen=True)
class Scheme:
    """A one-step method as data: its kick/drift ``plan``, whether it is ``symplectic``, its ``order``.

    :meth:`step` runs the plan; :attr:`inverse` undoes it exactly when every stage is a single
    substep (a composition of shears, hence symplectic), else it is ``None``. A scheme declared
    symplectic must be such a composition.
    """

    name: str
    plan: Plan
    symplectic: bool
    order: int

    def __post_init__(self) -> None:
        plan = tuple(
            tuple(s if isinstance(s, Substep) else Substep(*s) for s in stage) for stage in self.plan
        )
        object.__setattr__(self, "plan", plan)
        if not plan or not all(plan):
            raise ValueError(f"scheme {self.name!r}: a plan is a non-empty sequence of non-empty stages")
        if {KINDS[s.kind][0] for stage in plan for s in stage} != {"p", "q"}:
            raise ValueError(f"scheme {self.name!r}: a plan must update both p and q, got {plan}")
        if self.symplectic and not self.invertible:
            raise ValueError(
                f"scheme {self.name!r} is declared symplectic, but a stage of its plan has several "
                "substeps; a symplectic plan is a sequence of single kicks and drifts"
            )

    @property
    def invertible(self) -> bool:
        """Whether the plan has an exact explicit inverse (every stage one substep)."""
        return all(len(stage) == 1 for stage in self.plan)

    def step(self, p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize) -> State:
        """One step from ``(p, q)`` with the gradient maps and step size ``h``."""
        return run_plan(self.plan, p, q, grad_v, grad_t, h)

    @property
    def inverse(self) -> StepFunction | None:
        """The exact inverse step (same arguments as :meth:`step`), or ``None`` if it has none."""
        return partial(invert_plan, self.plan) if self.invertible else None


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        # not symplectic; the ablation the seed papers compare against
        Scheme("euler", ((KICK, DRIFT),), symplectic=False, order=1),
        Scheme("symplectic_euler", ((KICK,), (DRIFT,)), symplectic=True, order=1),
        # Störmer–Verlet (leapfrog)
        Scheme("verlet", ((Substep("kick", 0.5),), (DRIFT,), (Substep("kick", 0.5),)), True, 2),
    )
}


def get_scheme(name: str | Scheme) -> Scheme:
    """A :class:`Scheme` object as given, or the one registered under ``name`` in :data:`SCHEMES`."""
    if isinstance(name, Scheme):
        return name
    return lookup(SCHEMES, name, "integration scheme")


def euler_step(p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize) -> State:
    r"""Forward (explicit) Euler: :math:`p' = p - h V_q(q),\ q' = q + h T_p(p)`."""
    return SCHEMES["euler"].step(p, q, grad_v, grad_t, h)


def symplectic_euler_step(
    p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    r"""Symplectic (semi-implicit) Euler: :math:`p' = p - h V_q(q),\ q' = q + h T_p(p')`."""
    return SCHEMES["symplectic_euler"].step(p, q, grad_v, grad_t, h)


def symplectic_euler_inverse(
    p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize
) -> State:
    r"""Exact inverse of :func:`symplectic_euler_step`: :math:`q = q' - h T_p(p'),\ p = p' + h V_q(q)`."""
    return SCHEMES["symplectic_euler"].inverse(p, q, grad_v, grad_t, h)


def verlet_step(p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize) -> State:
    r"""Störmer–Verlet (leapfrog), second order.

    .. math::
        p_{1/2} = p - \tfrac h2 V_q(q),\quad q' = q + h T_p(p_{1/2}),\quad
        p' = p_{1/2} - \tfrac h2 V_q(q').
    """
    return SCHEMES["verlet"].step(p, q, grad_v, grad_t, h)


def verlet_inverse(p: Tensor, q: Tensor, grad_v: GradientMap, grad_t: GradientMap, h: StepSize) -> State:
    """Exact inverse of :func:`verlet_step` (the same three updates run backwards)."""
    return SCHEMES["verlet"].inverse(p, q, grad_v, grad_t, h)


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
