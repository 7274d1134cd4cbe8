r"""Reversible backpropagation through any invertible step: memory independent of the step count.

For a map with an exact inverse (a symplectic scheme on a separable energy, in time or in depth),
the states of the forward pass need not be kept: the backward pass rebuilds
:math:`y_k = \Phi_k^{-1}(y_{k+1})` from the final state and takes the vector-Jacobian product of one
recomputed step, :math:`\bar y_k = (\partial \Phi_k / \partial y_k)^\top \bar y_{k+1}`, as
torchdiffeq's adjoint does for every solver. Activation memory is the final state, an optional anchor
every ``anchor_every`` steps (which bounds the round-off of the rebuilt states) and the emitted
outputs; compute is about twice that of stored backpropagation.

This module imports nothing of the package: it knows steps, not energies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["StepFn", "reversible_integrate"]

State = tuple[Tensor, ...]
#: ``step(k, state, x_k, params) -> next state``, with ``x_k = tuple(x[k] for x in xs)``.
StepFn = Callable[[int, State, State, State], State]
Emit = Callable[[State], Tensor]


def _anchored(k: int, n_steps: int, anchor_every: int | None) -> bool:
    """Whether the forward keeps the state reached after ``k`` steps (the final one is always kept;
    with anchors, the initial one too, which costs nothing: it is an input)."""
    return anchor_every is not None and 0 <= k < n_steps and k % anchor_every == 0


def _rows(xs: State, k: int) -> State:
    return tuple(x[k] for x in xs)


class _Reversible(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step, inverse, emit, n_steps, anchor_every, sizes, *tensors):
        n_state, n_xs = sizes
        state, xs, params = tensors[:n_state], tensors[n_state : n_state + n_xs], tensors[n_state + n_xs :]
        anchors = list(state) if _anchored(0, n_steps, anchor_every) else []
        outputs = []
        for k in range(n_steps):
            state = tuple(step(k, state, _rows(xs, k), params))
            if emit is not None:
                outputs.append(emit(state))
            if _anchored(k + 1, n_steps, anchor_every):
                anchors += [s.clone() for s in state]
        # a returned input would alias it: outputs of a Function must be tensors of its own
        final = tuple(s.clone() if any(s is t for t in tensors) else s for s in state)
        ctx.step, ctx.inverse, ctx.emit = step, inverse, emit
        ctx.n_steps, ctx.anchor_every, ctx.sizes = n_steps, anchor_every, sizes
        ctx.save_for_backward(*final, *anchors, *xs, *params)
        stacked = (torch.stack(outputs),) if emit is not None else ()
        return (*stacked, *final)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        (n_state, n_xs), n_steps, emit = ctx.sizes, ctx.n_steps, ctx.emit
        grad_out, grad_state = (grads[0], grads[1:]) if emit is not None else (None, grads)
        saved = ctx.saved_tensors
        n_anchor = len(saved) - len(ctx.needs_input_grad) + 6
        final, anchor_list = saved[:n_state], saved[n_state : n_state + n_anchor]
        xs, params = saved[n_state + n_anchor : n_state + n_anchor + n_xs], saved[n_state + n_anchor + n_xs :]
        anchors = _anchor_map(anchor_list, n_state, n_steps, ctx.anchor_every)
        anchors[n_steps] = final
        needs = ctx.needs_input_grad[6:]
        grad_xs = [x.new_empty(x.shape) if needs[n_state + i] else None for i, x in enumerate(xs)]
        grad_params = [
            torch.zeros_like(p) if needs[n_state + n_xs + i] else None for i, p in enumerate(params)
        ]
        g = tuple(torch.zeros_like(s) if gs is None else gs for s, gs in zip(final, grad_state, strict=True))
        state = final
        for k in range(n_steps - 1, -1, -1):
            state = anchors.get(k + 1, state)
            x_k = _rows(xs, k)
            previous = anchors.get(k)
            if previous is None:
                with torch.no_grad():
                    previous = tuple(ctx.inverse(k, state, x_k, params))
            g = _step_vjp(ctx.step, emit, k, previous, x_k, params, g, grad_out, grad_xs, grad_params)
            state = previous
        return (None,) * 6 + (*g, *grad_xs, *grad_params)


def _anchor_map(saved: State, n_state: int, n_steps: int, anchor_every: int | None) -> dict[int, State]:
    marks = [k for k in range(n_steps) if _anchored(k, n_steps, anchor_every)]
    return {k: tuple(saved[i * n_state : (i + 1) * n_state]) for i, k in enumerate(marks)}


def _step_vjp(step, emit, k, previous, x_k, params, g, grad_out, grad_xs, grad_params) -> State:
    """Cotangent of ``previous`` from that of the next state (and of step k's output); adds into the
    ``x`` row k and parameter gradients."""
    inputs = [s.detach().requires_grad_() for s in previous]
    x_in = [x.detach().requires_grad_(gx is not None) for x, gx in zip(x_k, grad_xs, strict=True)]
    p_in = [p.detach().requires_grad_(gp is not None) for p, gp in zip(params, grad_params, strict=True)]
    with torch.enable_grad():
        nxt = tuple(step(k, tuple(inputs), tuple(x_in), tuple(p_in)))
        outputs, cotangents = list(nxt), list(g)
        if emit is not None:
            outputs.append(emit(nxt))
            cotangents.append(grad_out[k])
        wanted = inputs + [x for x in x_in if x.requires_grad] + [p for p in p_in if p.requires_grad]
        found = torch.autograd.grad(outputs, wanted, cotangents, allow_unused=True)
    found = [torch.zeros_like(w) if f is None else f for f, w in zip(found, wanted, strict=True)]
    g_prev, rest = tuple(found[: len(inputs)]), iter(found[len(inputs) :])
    for gx in grad_xs:
        if gx is not None:
            gx[k] = next(rest)
    for gp in grad_params:
        if gp is not None:
            gp.add_(next(rest))
    return g_prev


def reversible_integrate(
    step: StepFn,
    inverse: StepFn,
    state: State,
    n_steps: int,
    *,
    xs: State = (),
    params: State = (),
    anchor_every: int | None = None,
    emit: Emit | None = None,
) -> tuple[Tensor | None, State]:
    r""":math:`y_{k+1} = \text{step}(k, y_k, x_k, \theta)` for ``k = 0..n_steps-1``, backpropagated reversibly.

    Args:
        step: one step, ``step(k, state, x_k, params) -> next state``; it must use ``params`` (not
            tensors it closes over) for their gradients to be found.
        inverse: its exact inverse, ``inverse(k, next_state, x_k, params) -> state``.
        state: the initial state, a tuple of tensors.
        n_steps: number of steps, >= 1.
        xs: per-step tensors, first dimension ``n_steps``; step k receives row k of each.
        params: tensors shared by every step.
        anchor_every: keep the state every this many steps and restart the rebuild from it
            (bounds the drift of the rebuilt states); ``None`` keeps only the final state.
        emit: ``emit(state) -> Tensor``, the output read from each new state (a function of the
            state only); ``None`` emits nothing.

    Returns:
        ``(outputs, final_state)``: ``torch.stack`` of ``emit(y_{k+1})`` over k (or ``None``) and
        :math:`y_{n}`. Gradients reach ``state``, every tensor of ``xs`` (row by row) and ``params``.
    """
    _check(state, n_steps, xs, anchor_every)
    state, xs, params = tuple(state), tuple(xs), tuple(params)
    sizes = (len(state), len(xs))
    result = _Reversible.apply(step, inverse, emit, n_steps, anchor_every, sizes, *state, *xs, *params)
    if emit is None:
        return None, tuple(result)
    return result[0], tuple(result[1:])


def _check(state: State, n_steps: int, xs: State, anchor_every: int | None) -> None:
    if not isinstance(state, tuple | list) or not state or not all(isinstance(s, Tensor) for s in state):
        raise TypeError("state must be a non-empty tuple of tensors")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] != n_steps:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"xs[{i}] must be a tensor with first dimension n_steps={n_steps}, got {shape}")
    if anchor_every is not None and (
        isinstance(anchor_every, bool) or not isinstance(anchor_every, int) or anchor_every < 1
    ):
        raise ValueError(f"anchor_every must be a positive int or None, got {anchor_every!r}")
