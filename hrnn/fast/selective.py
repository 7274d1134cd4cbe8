r"""Fast whole-sequence recurrence of the selective Hamiltonian cell (symplectic Euler, stored memory).

The step of :class:`hrnn.cells.SelectiveHamiltonianCell` on the projected input :math:`(u_t, z_t)`
(drive and gate logits, each (B, n)), with the gate :math:`r_t = \sigma(z_t)` and the optional
friction :math:`d_t = e^{-\gamma r_t^4}` (:math:`\gamma` the rate ``damping``):

.. math::
    a_t = \tanh((r_t (q_t + u_t)) K_q^\top),\quad p_{t+1} = d_t p_t - h\,r_t\,(a_t K_q),\quad
    b_t = \tanh((r_t p_{t+1}) K_p^\top + b_p),\quad q_{t+1} = q_t + h\,r_t\,(b_t K_p).

:math:`r_t` and :math:`d_t` are computed for the whole sequence before the loop, which is then four
matrix multiplies a step. The backward loop carries only the state cotangents: with
:math:`\bar q_{t+1}` complete,

.. math::
    \zeta_t = ((h r_t \bar q_{t+1}) K_p^\top)(1 - b_t^2),\quad
    \bar p_{t+1} \mathrel{+}= r_t (\zeta_t K_p),\quad
    \eta_t = ((h r_t \bar p_{t+1}) K_q^\top)(a_t^2 - 1),

    \bar q_t \mathrel{+}= \bar q_{t+1} + r_t (\eta_t K_q),\qquad \bar p_t \mathrel{+}= d_t \bar p_{t+1},

and the drive's cotangent is :math:`\bar u_t = r_t (\eta_t K_q)`.

Everything else is computed a segment at a time after it: the gradients of :math:`K_q, K_p, b_p`
in a few large matrix multiplies, and those of the gate logits and of :math:`\gamma` from the
cotangents of :math:`r_t` (which enters the step four times) and of :math:`d_t`
(:math:`\bar d_t = \bar p_{t+1} p_t`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import pairwise

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..integrators import validate_step_size
from ..validation import lookup
from ._common import DEFAULT_CHUNK, _check_tensor, check_chunk, segment_bounds, validate_batched_state

__all__ = ["selective_scan"]

#: what the scan can emit at every step (a field of :class:`_Trace`, each step's row after the first)
_EMITTED: dict[str, str] = {"p": "the momentum", "q": "the position"}


@dataclass(frozen=True)
class _Trace:
    """Everything the forward keeps for the backward: :math:`r_t` and :math:`d_t` (None undamped);
    the states (T + 1, B, n), row 0 the initial one; per step (T, B, n) the activations and the two
    gated vectors the step multiplies by the weights."""

    gate: Tensor
    decay: Tensor | None
    p: Tensor
    q: Tensor
    act_q: Tensor  # a_t
    act_p: Tensor  # b_t
    gated_q: Tensor  # r_t (q_t + u_t)
    gate_p: Tensor  # r_t p_{t+1}

    def tensors(self) -> tuple[Tensor | None, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


def _tanh_of_half_(x: Tensor, one: Tensor) -> Tensor:
    r""":math:`\tanh(x / 2) = 2 \sigma(x) - 1` in place, ``one`` a 0-dim tensor of x's dtype: torch's
    CPU sigmoid is several times faster than its tanh, the factor 2 of x rides in the weights of the
    matrix multiply before it, and a Python scalar would cost a conversion each call."""
    return torch.add(x.sigmoid_(), x, out=x).sub_(one)


def _selection(u: Tensor, damping: Tensor | None) -> tuple[Tensor, Tensor | None]:
    r""":math:`r = \sigma(z)` and :math:`d = e^{-\gamma r^4}` (or None), each (T, B, n)."""
    gate = torch.sigmoid(u[..., u.shape[-1] // 2 :])
    if damping is None:
        return gate, None
    return gate, gate.square().square_().mul_(-damping).exp_()  # in place: one (T, B, n) tensor


def _forward(u, p0, q0, weight_q, weight_p, bias_p, damping, h: float) -> _Trace:
    """Run every step of the projected input ``u`` (T, B, 2n)."""
    (seq_len, batch, n), like = (u.shape[0], *p0.shape), p0
    gate, decay = _selection(u, damping)
    states = {name: like.new_empty(seq_len + 1, batch, n) for name in ("p", "q")}
    steps = {f.name: like.new_empty(seq_len, batch, n) for f in fields(_Trace)[4:]}
    tr = _Trace(gate, decay, **states, **steps)
    tr.p[0], tr.q[0] = p0, q0
    # the step runs on 2 K and 2 b_p (for _tanh_of_half_), with h / 2 for the products a K = (a 2K) / 2
    kq2, kp2, bias2, half_h = 2.0 * weight_q, 2.0 * weight_p, 2.0 * bias_p, h / 2
    kq2_t, kp2_t = kq2.T, kp2.T
    shifted, kick, drift, damped = (like.new_empty(batch, n) for _ in range(4))
    one = like.new_ones(())
    p, q = tr.p.unbind(0), tr.q.unbind(0)
    per_step = (gate, tr.act_q, tr.act_p, tr.gated_q, tr.gate_p, u[..., :n])
    rows = zip(
        *(x.unbind(0) for x in per_step),
        decay.unbind(0) if decay is not None else [None] * seq_len,
        strict=True,
    )
    for t, (r, a, b, rq, rp, ud, d) in enumerate(rows):
        _tanh_of_half_(torch.mm(torch.mul(r, torch.add(q[t], ud, out=shifted), out=rq), kq2_t, out=a), one)
        torch.mm(a, kq2, out=kick)
        start = p[t] if d is None else torch.mul(d, p[t], out=damped)
        torch.addcmul(start, r, kick, value=-half_h, out=p[t + 1])
        _tanh_of_half_(torch.addmm(bias2, torch.mul(r, p[t + 1], out=rp), kp2_t, out=b), one)
        torch.mm(b, kp2, out=drift)
        torch.addcmul(q[t], r, drift, value=half_h, out=q[t + 1])
    return tr


class _Workspace:
    """The backward's per-segment buffers (rows, B, n), allocated once for the longest segment."""

    names = tuple("grad_q grad_p scaled_q scaled_p zeta eta zeta_k eta_k sech_q sech_p hr".split())

    def __init__(self, rows: int, like: Tensor) -> None:
        for name in self.names:
            setattr(self, name, like.new_empty(rows, *like.shape))

    def rows(self, m: int) -> dict[str, Tensor]:
        return {name: getattr(self, name)[:m] for name in self.names}


@dataclass
class _Grads:
    """The gradients the backward fills: of u (T, B, 2n), viewed as its drive and gate halves, and
    of the parameters."""

    u: Tensor
    weight_q: Tensor
    weight_p: Tensor
    bias_p: Tensor
    damping: Tensor | None

    @property
    def drive(self) -> Tensor:
        return self.u[..., : self.u.shape[-1] // 2]

    @property
    def logits(self) -> Tensor:
        return self.u[..., self.u.shape[-1] // 2 :]


def _backward_loop(
    ws, tr: _Trace, weight_q, weight_p, t0: int, t1: int, seeded_q: bool
) -> tuple[Tensor, Tensor]:
    """Propagate the state cotangents through steps ``t1 - 1`` down to ``t0``: on entry the workspace's
    rows hold each step's output cotangents; its ``eta`` rows receive :math:`\\eta_t`. Returns the
    cotangents (p, q) of the state before the segment. Unless q is ``seeded_q`` (emitted), its rows
    before the last are zero and the loop writes them instead of adding (one op less a step)."""
    kq_t, kp_t = weight_q.T, weight_p.T
    gq, gp, tq, tp, zeta, eta, zk, ek, sq, sp, hr = (ws[k].unbind(0) for k in _Workspace.names)
    r_rows = tr.gate[t0:t1].unbind(0)
    d_rows = None if tr.decay is None else tr.decay[t0:t1].unbind(0)
    for i in range(t1 - t0 - 1, -1, -1):
        r = r_rows[i]
        z = torch.mm(torch.mul(gq[i], hr[i], out=tq[i]), kp_t, out=zeta[i]).mul_(sp[i])
        gp[i].addcmul_(r, torch.mm(z, weight_p, out=zk[i]))  # gp[i] is now complete
        e = torch.mm(torch.mul(gp[i], hr[i], out=tp[i]), kq_t, out=eta[i]).mul_(sq[i])
        torch.mm(e, weight_q, out=ek[i])
        if i == 0:
            break
        if seeded_q:
            gq[i - 1].add_(gq[i]).addcmul_(r, ek[i])
        else:
            torch.addcmul(gq[i], r, ek[i], out=gq[i - 1])
        if d_rows is None:
            gp[i - 1].add_(gp[i])
        else:
            gp[i - 1].addcmul_(d_rows[i], gp[i])
    before_p = gp[0].clone() if d_rows is None else d_rows[0] * gp[0]
    return before_p, torch.addcmul(gq[0], r_rows[0], ek[0])


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _weight_grads(tr: _Trace, ws: dict[str, Tensor], t0: int, t1: int, grads: _Grads) -> None:
    """Add the gradients of :math:`K_q, K_p, b_p` of steps ``t0 .. t1 - 1``."""
    zeta = _flat(ws["zeta"])
    grads.weight_p.addmm_(_flat(tr.act_p[t0:t1]).T, _flat(ws["scaled_q"]))
    grads.weight_p.addmm_(zeta.T, _flat(tr.gate_p[t0:t1]))
    grads.weight_q.addmm_(_flat(tr.act_q[t0:t1]).T, _flat(ws["scaled_p"]), alpha=-1)
    grads.weight_q.addmm_(_flat(ws["eta"]).T, _flat(tr.gated_q[t0:t1]))
    torch.mul(tr.gate[t0:t1], ws["eta_k"], out=grads.drive[t0:t1])
    grads.bias_p.add_(zeta.sum(0))


def _gate_grads(tr: _Trace, ws: dict[str, Tensor], t0: int, t1: int, damping, grads: _Grads) -> None:
    r"""The gradients of the gate logits (into ``grads.logits``) and of :math:`\gamma` (``damping``,
    (n,)) of steps ``t0 .. t1 - 1``. Uses the loop's scratch rows."""
    gq, gp, gate = ws["grad_q"], ws["grad_p"], tr.gate[t0:t1]
    p, q = tr.p[t0 : t1 + 1], tr.q[t0 : t1 + 1]
    # r times dL/dr: r enters four times, and where it scales the step its product is the step's
    # change, h r (b K_p) = q' - q and -h r (a K_q) = p' - d p
    start = p[:-1] if tr.decay is None else torch.mul(tr.decay[t0:t1], p[:-1], out=ws["sech_p"])
    g_gate = torch.sub(q[1:], q[:-1], out=ws["hr"]).mul_(gq)
    g_gate.addcmul_(gp, torch.sub(p[1:], start, out=ws["sech_q"]))
    g_gate.addcmul_(tr.gate_p[t0:t1], ws["zeta_k"]).addcmul_(tr.gated_q[t0:t1], ws["eta_k"])
    if tr.decay is not None:
        # d = exp(-gamma r^4): r dd/dr = -4 gamma r^4 d, dd/dgamma = -r^4 d
        friction = torch.mul(gp, start, out=ws["sech_q"]).mul_(torch.square(gate, out=ws["sech_p"]).square_())
        grads.damping.sub_(_flat(friction).sum(0))
        g_gate.addcmul_(friction, damping, value=-4.0)
    # r = sigmoid(z): dr/dz = r (1 - r), and g_gate already holds the factor r
    torch.mul(g_gate, torch.sub(1.0, gate, out=ws["sech_p"]), out=grads.logits[t0:t1])


def _backward_segment(tr, ws, weights, t0, t1, h, damping, seeds, carry, grads) -> tuple[Tensor, Tensor]:
    """One segment of the backward: seed its cotangents with the output's (``seeds``, for (p, q), None
    where not emitted) and, at its last step, the later segment's (``carry``); run the loop; add its
    gradients."""
    rows = ws.rows(t1 - t0)
    for name, seed, later in zip(("grad_p", "grad_q"), seeds, carry, strict=True):
        if seed is None:
            rows[name].zero_()
        else:
            rows[name].copy_(seed[t0:t1])
        rows[name][-1].add_(later)
    torch.mul(tr.gate[t0:t1], h, out=rows["hr"])
    a, b = tr.act_q[t0:t1], tr.act_p[t0:t1]
    one = torch.ones((), dtype=a.dtype, device=a.device)
    torch.addcmul(-one, a, a, out=rows["sech_q"])  # the kick's sign folded in: a^2 - 1
    torch.addcmul(one, b, b, value=-1, out=rows["sech_p"])
    before = _backward_loop(rows, tr, *weights, t0, t1, seeds[1] is not None)
    _weight_grads(tr, rows, t0, t1, grads)
    _gate_grads(tr, rows, t0, t1, damping, grads)
    return before


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, p0, q0, weight_q, weight_p, bias_p, damping, h, emit, chunk):
        tr = _forward(u, p0, q0, weight_q, weight_p, bias_p, damping, h)
        ctx.h, ctx.emit, ctx.chunk = h, emit, chunk
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(weight_q, weight_p, damping, *tr.tensors())
        return getattr(tr, emit)[1:], tr.p[-1].clone(), tr.q[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_p, grad_q):
        weight_q, weight_p, damping, *saved = ctx.saved_tensors
        tr, h = _Trace(*saved), ctx.h
        (seq_len, batch, n), like = tr.gate.shape, tr.gate[0]
        grads = _Grads(
            like.new_empty(seq_len, batch, 2 * n), torch.zeros_like(weight_q), torch.zeros_like(weight_p),
            torch.zeros_like(weight_p[0]), None if damping is None else torch.zeros_like(damping),
        )  # fmt: skip
        seeds = (grad_out, None) if ctx.emit == "p" else (None, grad_out)
        carry = tuple(torch.zeros_like(like) if g is None else g for g in (grad_p, grad_q))
        segments = list(pairwise(segment_bounds(seq_len, ctx.chunk)))
        ws = _Workspace(max(t1 - t0 for t0, t1 in segments), like)
        for t0, t1 in reversed(segments):
            carry = _backward_segment(tr, ws, (weight_q, weight_p), t0, t1, h, damping, seeds, carry, grads)
        result = (grads.u, *carry, grads.weight_q, grads.weight_p, grads.bias_p, grads.damping)
        return (
            *(g if need else None for g, need in zip(result, ctx.needs_input_grad[:7], strict=True)),
            None,
            None,
            None,
        )


def _validate(u, p0, q0, params: dict[str, tuple[Tensor | None, tuple[int, ...]]], h, emit, chunk) -> None:
    batch, n = validate_batched_state(p0, q0)
    if not isinstance(u, Tensor) or u.dim() != 3 or u.shape[0] < 1 or u.shape[1:] != (batch, 2 * n):
        shape = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f"u must have shape (seq_len >= 1, batch={batch}, 2 * hidden={2 * n}), got {shape}")
    for name, (t, shape) in {"u": (u, tuple(u.shape)), **params}.items():
        if t is not None:
            _check_tensor(name, t, shape, p0)
    validate_step_size(h, like=p0)
    if isinstance(h, Tensor) and h.dim() != 0:
        raise ValueError(f"the step size must be a float or a 0-dim tensor, got shape {tuple(h.shape)}")
    lookup(_EMITTED, emit, "emit")
    check_chunk(chunk)


def selective_scan(
    u: Tensor,
    p0: Tensor,
    q0: Tensor,
    weight_q: Tensor,
    weight_p: Tensor,
    bias_p: Tensor,
    h: Tensor | float,
    *,
    damping: Tensor | None = None,
    emit: str = "q",
    chunk: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Run the selective Hamiltonian cell over a whole sequence; the plain loop's values and gradients.

    Args:
        u: projected input (T, B, 2n): the drive :math:`u_t` and the gate logits :math:`z_t`, so that
            :math:`r_t = \sigma(z_t)` (module docstring).
        p0, q0: initial state, each (B, n).
        weight_q, weight_p: :math:`K_q, K_p` (n, n). bias_p: :math:`b_p` (n,).
        h: the step, a positive float or 0-dim tensor (not differentiated).
        damping: the friction rate :math:`\gamma` (n,): each step starts with
            :math:`p \leftarrow e^{-\gamma \sigma(z_t)^4} p`, ``softplus(damping_raw)``. ``None``: the
            conservative step.
        emit: the variable returned at every step, ``"q"`` or ``"p"``.
        chunk: segment length of the backward workspace.

    Returns:
        ``(outputs, p_T, q_T)``: ``emit`` of every step (T, B, n) and the final state, each (B, n).
    """
    n = p0.shape[-1] if isinstance(p0, Tensor) else 0
    params = {
        "weight_q": (weight_q, (n, n)), "weight_p": (weight_p, (n, n)), "bias_p": (bias_p, (n,)),
        "damping": (damping, (n,)),
    }  # fmt: skip
    _validate(u, p0, q0, params, h, emit, chunk)
    return _SelectiveScan.apply(u, p0, q0, weight_q, weight_p, bias_p, damping, float(h), emit, chunk)
