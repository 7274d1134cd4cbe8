r"""Fast whole-sequence recurrence of the selective Hamiltonian cell (symplectic Euler, stored memory).

The step of :class:`hrnn.cells.SelectiveHamiltonianCell` on the projected input :math:`(u_t, z_t)`
(drive and gate logits, each (B, n)), with the gate :math:`r_t = \sigma(z_t)` and the optional
friction :math:`d_t = e^{-\gamma r_t^4}` (:math:`\gamma` the rate ``damping``):

.. math::
    a_t = \tanh((r_t (q_t + u_t)) K_q^\top),\quad p_{t+1} = d_t p_t - h\,r_t\,(a_t K_q),\quad
    b_t = \tanh((r_t p_{t+1}) K_p^\top + b_p),\quad q_{t+1} = q_t + h\,r_t\,(b_t K_p).

The loop runs on :math:`\tanh(x) = 2\sigma(2x) - 1` (torch's CPU sigmoid is several times faster
than its tanh): the factor 2 rides in the weights, :math:`\sigma_a = \sigma((r(q + u))(2K_q)^\top)`,
and the minus one in the next product's bias, :math:`a K_q = \sigma_a (2K_q) - \mathbf 1^\top K_q`.
:math:`r_t`, :math:`d_t` and :math:`r_t u_t` are computed a segment at a time into buffers that stay
in cache, so the step is four matrix multiplies and seven elementwise ops. The forward keeps only the
states and :math:`\sigma_a, \sigma_b` (T, B, n) besides ``u``; the backward rebuilds the rest a
segment at a time, which costs less than first touching the memory to store it. Its loop carries
only the state cotangents: with :math:`\bar q_{t+1}` complete and
:math:`1 - b_t^2 = 4\sigma_b(1 - \sigma_b)`, :math:`a_t^2 - 1 = -4\sigma_a(1 - \sigma_a)`,

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

Two implementations of the loops fill the same trace (:data:`IMPLEMENTATIONS`): PyTorch ops, for any
device and dtype, and C++ loops (``csrc/selective.cpp``, CPU float32/float64, compiled on first
use by :mod:`hrnn.fast._kernel`), which run a step as its four matrix multiplies and a few fused
passes over its (B, n) rows, the gate terms per step instead of per segment. The compiled loops
are the default where they are available; both equal the plain step loop (tests).
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
from ._kernel import selective_kernel

__all__ = ["IMPLEMENTATIONS", "compiled_available", "selective_scan"]

#: what the scan can emit at every step (a field of :class:`_Trace`, each step's row after the first)
_EMITTED: dict[str, str] = {"p": "the momentum", "q": "the position"}


@dataclass(frozen=True)
class _Trace:
    """Everything the forward keeps for the backward: the projected input ``u`` (T, B, 2n); the
    states (T + 1, B, n), row 0 the initial one; per step (T, B, n) :math:`\\sigma_a, \\sigma_b`, the
    sigmoids whose :math:`2\\sigma - 1` are the activations :math:`a_t, b_t`."""

    u: Tensor
    p: Tensor
    q: Tensor
    sig_q: Tensor
    sig_p: Tensor

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class _Selection:
    """A segment's (rows, B, n) gate :math:`r_t`, friction :math:`d_t` (None undamped) and gated drive
    :math:`r_t u_t`."""

    gate: Tensor
    decay: Tensor | None
    drive: Tensor


def _select(u: Tensor, damping: Tensor | None, out: dict[str, Tensor]) -> _Selection:
    """The selection of a segment of the projected input ``u`` (rows, B, 2n), written into the first
    rows of ``out``'s ``gate``, ``decay`` and ``drive`` buffers."""
    m, n = u.shape[0], u.shape[-1] // 2
    gate = torch.sigmoid(u[..., n:], out=out["gate"][:m])
    drive = torch.mul(gate, u[..., :n], out=out["drive"][:m])
    if damping is None:
        return _Selection(gate, None, drive)
    decay = torch.square(gate, out=out["decay"][:m]).square_().mul_(-damping).exp_()
    return _Selection(gate, decay, drive)


def _buffers(names: tuple[str, ...], rows: int, like: Tensor) -> dict[str, Tensor]:
    return {name: like.new_empty(rows, *like.shape) for name in names}


def _new_trace(u: Tensor, p0: Tensor, q0: Tensor, keep: bool) -> _Trace:
    """The forward's trace for ``u`` (T, B, 2n), row 0 of the states set; unless ``keep`` (no backward
    will run), each sigmoid has one scratch row."""
    (seq_len, batch, n), like = (u.shape[0], *p0.shape), p0
    states = {name: like.new_empty(seq_len + 1, batch, n) for name in ("p", "q")}
    sigmoids = {name: like.new_empty(seq_len if keep else 1, batch, n) for name in ("sig_q", "sig_p")}
    tr = _Trace(u, **states, **sigmoids)
    tr.p[0], tr.q[0] = p0, q0
    return tr


def _forward_torch(tr: _Trace, weight_q, weight_p, bias_p, damping, h: float, chunk: int) -> None:
    """Run every step of ``tr.u``, filling the trace, in PyTorch ops."""
    seq_len, (batch, n), like = tr.u.shape[0], tr.p.shape[1:], tr.p[0]
    kq2, kp2, bias2 = 2.0 * weight_q, 2.0 * weight_p, 2.0 * bias_p
    kq2_t, kp2_t, minus_sum_q, minus_sum_p = kq2.T, kp2.T, -weight_q.sum(0), -weight_p.sum(0)
    gated, pre, product, damped = (like.new_empty(batch, n) for _ in range(4))
    p, q = tr.p.unbind(0), tr.q.unbind(0)
    sig_q, sig_p = (s.unbind(0) if len(s) == seq_len else [s[0]] * seq_len for s in (tr.sig_q, tr.sig_p))
    sel_buffers = _buffers(("gate", "decay", "drive"), min(chunk, seq_len), like)
    for t0, t1 in pairwise(segment_bounds(seq_len, chunk)):
        sel = _select(tr.u[t0:t1], damping, sel_buffers)
        decay = [None] * (t1 - t0) if sel.decay is None else sel.decay.unbind(0)
        for t, r, d, ru in zip(range(t0, t1), sel.gate.unbind(0), decay, sel.drive.unbind(0), strict=True):
            torch.sigmoid(torch.mm(torch.addcmul(ru, r, q[t], out=gated), kq2_t, out=pre), out=sig_q[t])
            torch.addmm(minus_sum_q, sig_q[t], kq2, out=product)  # a K_q
            start = p[t] if d is None else torch.mul(d, p[t], out=damped)
            torch.addcmul(start, r, product, value=-h, out=p[t + 1])
            torch.sigmoid(torch.addmm(bias2, torch.mul(r, p[t + 1], out=gated), kp2_t, out=pre), out=sig_p[t])
            torch.addmm(minus_sum_p, sig_p[t], kp2, out=product)  # b K_p
            torch.addcmul(q[t], r, product, value=h, out=q[t + 1])


def _forward_compiled(tr: _Trace, weight_q, weight_p, bias_p, damping, h: float, chunk: int) -> None:
    """The same in one call of the compiled loops (``csrc/selective.cpp``; ``u`` contiguous)."""
    selective_kernel().forward(tr.u, weight_q, weight_p, bias_p, damping, h, tr.p, tr.q, tr.sig_q, tr.sig_p)


#: the backward loop's per-step rows: cotangents, their scaled copies, products and factors
_LOOP_ROWS = (
    "grad_q",
    "grad_p",
    "scaled_q",
    "scaled_p",
    "zeta",
    "eta",
    "zeta_k",
    "eta_k",
    "sech_q",
    "sech_p",
    "hr",
)


class _Workspace:
    """The backward's per-segment buffers (rows, B, n), allocated once for the longest segment: the
    loop's rows, the rebuilt selection and :math:`r_t p_{t+1}`."""

    names = (*_LOOP_ROWS, "gate", "decay", "drive", "gate_p")

    def __init__(self, rows: int, like: Tensor) -> None:
        self.buffers = _buffers(self.names, rows, like)

    def rows(self, m: int) -> dict[str, Tensor]:
        return {name: buffer[:m] for name, buffer in self.buffers.items()}


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


def _backward_loop(ws, sel: _Selection, weights, seeded_q: bool) -> tuple[Tensor, Tensor]:
    """Propagate the state cotangents through a segment's steps, last to first: on entry the
    workspace's rows hold each step's output cotangents, ``sech_q``, ``sech_p`` hold
    :math:`\\sigma(1 - \\sigma)` and ``weights`` are :math:`(K_q, K_p, -4K_q^\\top, 4K_p^\\top)` (the
    factors of :math:`a^2 - 1` and :math:`1 - b^2`); its ``eta`` rows receive :math:`\\eta_t`. Returns
    the cotangents (p, q) of the state before the segment. Unless q is ``seeded_q`` (emitted), its
    rows before the last are zero and the loop writes them instead of adding (one op less a step)."""
    weight_q, weight_p, kq_t, kp_t = weights
    gq, gp, tq, tp, zeta, eta, zk, ek, sq, sp, hr = (ws[k].unbind(0) for k in _LOOP_ROWS)
    r_rows = sel.gate.unbind(0)
    d_rows = None if sel.decay is None else sel.decay.unbind(0)
    for i in range(len(r_rows) - 1, -1, -1):
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


def _weight_grads(
    tr: _Trace, ws: dict[str, Tensor], sel: _Selection, t0: int, t1: int, grads: _Grads
) -> None:
    """Add the gradients of :math:`K_q, K_p, b_p` of steps ``t0 .. t1 - 1`` and write the drive's.
    With :math:`a = 2\\sigma_a - 1`, :math:`a^\\top S = 2\\sigma_a^\\top S - \\mathbf 1^\\top S`."""
    zeta, scaled_q, scaled_p = _flat(ws["zeta"]), _flat(ws["scaled_q"]), _flat(ws["scaled_p"])
    grads.weight_p.addmm_(_flat(tr.sig_p[t0:t1]).T, scaled_q, alpha=2).sub_(scaled_q.sum(0))
    grads.weight_p.addmm_(zeta.T, _flat(ws["gate_p"]))
    grads.weight_q.addmm_(_flat(tr.sig_q[t0:t1]).T, scaled_p, alpha=-2).add_(scaled_p.sum(0))
    grads.weight_q.addmm_(_flat(ws["eta"]).T, _flat(sel.drive))
    torch.mul(sel.gate, ws["eta_k"], out=grads.drive[t0:t1])
    grads.bias_p.add_(zeta.sum(0))


def _gate_grads(tr: _Trace, ws: dict[str, Tensor], sel: _Selection, t0, t1, damping, grads: _Grads) -> None:
    r"""The gradients of the gate logits (into ``grads.logits``) and of :math:`\gamma` (``damping``,
    (n,)) of steps ``t0 .. t1 - 1``. Uses the loop's scratch rows."""
    gq, gp, gate = ws["grad_q"], ws["grad_p"], sel.gate
    p, q = tr.p[t0 : t1 + 1], tr.q[t0 : t1 + 1]
    # r times dL/dr: r enters four times, and where it scales the step its product is the step's
    # change, h r (b K_p) = q' - q and -h r (a K_q) = p' - d p
    start = p[:-1] if sel.decay is None else torch.mul(sel.decay, p[:-1], out=ws["sech_p"])
    g_gate = torch.sub(q[1:], q[:-1], out=ws["hr"]).mul_(gq)
    g_gate.addcmul_(gp, torch.sub(p[1:], start, out=ws["sech_q"]))
    g_gate.addcmul_(ws["gate_p"], ws["zeta_k"]).addcmul_(sel.drive, ws["eta_k"])
    if sel.decay is not None:
        # d = exp(-gamma r^4): r dd/dr = -4 gamma r^4 d, dd/dgamma = -r^4 d
        friction = torch.mul(gp, start, out=ws["sech_q"]).mul_(torch.square(gate, out=ws["sech_p"]).square_())
        grads.damping.sub_(_flat(friction).sum(0))
        g_gate.addcmul_(friction, damping, value=-4.0)
    # r = sigmoid(z): dr/dz = r (1 - r), and g_gate already holds the factor r
    torch.mul(g_gate, torch.sub(1.0, gate, out=ws["sech_p"]), out=grads.logits[t0:t1])


def _backward_segment(tr, ws, weights, t0, t1, h, damping, seeds, carry, grads) -> tuple[Tensor, Tensor]:
    """One segment of the backward: rebuild its selection and gated states, seed its cotangents with
    the output's (``seeds``, for (p, q), None where not emitted) and, at its last step, the later
    segment's (``carry``); run the loop; add its gradients."""
    rows = ws.rows(t1 - t0)
    sel = _select(tr.u[t0:t1], damping, rows)
    for name, seed, later in zip(("grad_p", "grad_q"), seeds, carry, strict=True):
        if seed is None:
            rows[name].zero_()
        else:
            rows[name].copy_(seed[t0:t1])
        rows[name][-1].add_(later)
    torch.mul(sel.gate, h, out=rows["hr"])
    for sig, sech in ((tr.sig_q[t0:t1], rows["sech_q"]), (tr.sig_p[t0:t1], rows["sech_p"])):
        torch.addcmul(sig, sig, sig, value=-1, out=sech)  # sigma (1 - sigma)
    before = _backward_loop(rows, sel, weights, seeds[1] is not None)
    sel.drive.addcmul_(sel.gate, tr.q[t0:t1])  # now r (q + u), the input of the product with K_q
    torch.mul(sel.gate, tr.p[t0 + 1 : t1 + 1], out=rows["gate_p"])
    _weight_grads(tr, rows, sel, t0, t1, grads)
    _gate_grads(tr, rows, sel, t0, t1, damping, grads)
    return before


def _backward_torch(tr, weights, h, damping, chunk, seeds, carry, grads) -> tuple[Tensor, Tensor]:
    """The backward in PyTorch ops, segment by segment from the last; returns the initial state's
    cotangents (p, q)."""
    segments = list(pairwise(segment_bounds(tr.u.shape[0], chunk)))
    ws = _Workspace(max(t1 - t0 for t0, t1 in segments), tr.p[0])
    loop_weights = (*weights, -4.0 * weights[0].T, 4.0 * weights[1].T)
    for t0, t1 in reversed(segments):
        carry = _backward_segment(tr, ws, loop_weights, t0, t1, h, damping, seeds, carry, grads)
    return carry


def _backward_compiled(tr, weights, h, damping, chunk, seeds, carry, grads) -> tuple[Tensor, Tensor]:
    """The same in one call of the compiled loops, which update copies of the carries in place."""
    seed_is_p = seeds[0] is not None
    seed = seeds[0] if seed_is_p else seeds[1]
    gp, gq = (c.clone(memory_format=torch.contiguous_format) for c in carry)
    no_gamma = grads.weight_q.new_empty(0)
    selective_kernel().backward(
        tr.u, *weights, damping, h, tr.p, tr.q, tr.sig_q, tr.sig_p, seed, seed_is_p,
        chunk, gp, gq, grads.u, grads.weight_q, grads.weight_p, grads.bias_p,
        no_gamma if grads.damping is None else grads.damping,
    )  # fmt: skip
    return gp, gq


#: how the loops run: name -> (forward, backward), both on the same trace
IMPLEMENTATIONS = {
    "torch": (_forward_torch, _backward_torch),
    "compiled": (_forward_compiled, _backward_compiled),
}


def compiled_available(u: Tensor) -> bool:
    """Whether the compiled loops can run the scan of ``u``: CPU, float32 or float64, and the
    extension built (:mod:`hrnn.fast._kernel`)."""
    return (
        u.device.type == "cpu"
        and u.dtype in (torch.float32, torch.float64)
        and selective_kernel() is not None
    )


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, p0, q0, weight_q, weight_p, bias_p, damping, h, emit, chunk, implementation):
        keep = any(ctx.needs_input_grad)
        tr = _new_trace(u, p0, q0, keep)
        IMPLEMENTATIONS[implementation][0](tr, weight_q, weight_p, bias_p, damping, h, chunk)
        ctx.h, ctx.emit, ctx.chunk, ctx.implementation = h, emit, chunk, implementation
        if keep:
            ctx.save_for_backward(weight_q, weight_p, damping, *tr.tensors())
        return getattr(tr, emit)[1:], tr.p[-1].clone(), tr.q[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_p, grad_q):
        weight_q, weight_p, damping, *saved = ctx.saved_tensors
        tr = _Trace(*saved)
        (seq_len, batch, n), like = tr.sig_q.shape, tr.p[0]
        grads = _Grads(
            like.new_empty(seq_len, batch, 2 * n), torch.zeros_like(weight_q), torch.zeros_like(weight_p),
            torch.zeros_like(weight_p[0]), None if damping is None else torch.zeros_like(damping),
        )  # fmt: skip
        seeds = (grad_out, None) if ctx.emit == "p" else (None, grad_out)
        carry = tuple(torch.zeros_like(like) if g is None else g for g in (grad_p, grad_q))
        backward = IMPLEMENTATIONS[ctx.implementation][1]
        carry = backward(tr, (weight_q, weight_p), ctx.h, damping, ctx.chunk, seeds, carry, grads)
        result = (grads.u, *carry, grads.weight_q, grads.weight_p, grads.bias_p, grads.damping)
        return (
            *(g if need else None for g, need in zip(result, ctx.needs_input_grad[:7], strict=True)),
            None,
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
    implementation: str | None = None,
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
        implementation: ``"compiled"`` (the C++ loops of ``csrc/selective.cpp``, built on first use),
            ``"torch"`` (PyTorch ops, any device and dtype) or ``None``: compiled where
            :func:`compiled_available`, else torch. Both compute the same.

    Returns:
        ``(outputs, p_T, q_T)``: ``emit`` of every step (T, B, n) and the final state, each (B, n).
    """
    n = p0.shape[-1] if isinstance(p0, Tensor) else 0
    params = {
        "weight_q": (weight_q, (n, n)), "weight_p": (weight_p, (n, n)), "bias_p": (bias_p, (n,)),
        "damping": (damping, (n,)),
    }  # fmt: skip
    _validate(u, p0, q0, params, h, emit, chunk)
    implementation = _implementation(implementation, u)
    if implementation == "compiled":  # its loops read rows of u and gamma through raw pointers
        u, damping = u.contiguous(), None if damping is None else damping.contiguous()
    return _SelectiveScan.apply(
        u, p0, q0, weight_q, weight_p, bias_p, damping, float(h), emit, chunk, implementation
    )


def _implementation(name: str | None, u: Tensor) -> str:
    if name is None:
        return "compiled" if compiled_available(u) else "torch"
    lookup(IMPLEMENTATIONS, name, "implementation")
    if name == "compiled" and not compiled_available(u):
        raise RuntimeError(
            f"the compiled selective scan runs float32/float64 tensors on the CPU once built; got "
            f"{u.dtype} on {u.device.type}, extension {'built' if selective_kernel() else 'unavailable'}"
        )
    return name
