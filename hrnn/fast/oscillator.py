r"""Fast whole-sequence recurrence of the independent-oscillator cell, with a hand-written backward.

Symplectic Euler on :math:`V_t(q) = \sum_i w_i^{-1}\log\cosh(w_i q_i + u_{t,i}) + \tfrac\alpha2 q_i^2`,
:math:`T(p) = \|p\|^2/2` (UnICORNN-type, Rusch & Mishra 2021), with a per-unit step ``h`` (n,):

.. math::
    a_t = \tanh(w \odot q_{t-1} + u_t),\quad p_t = p_{t-1} - h \odot (a_t + \alpha q_{t-1}),\quad
    q_t = q_{t-1} + h \odot p_t,

output :math:`q_t`. Every unit is an independent recurrence, so a step is a handful of elementwise
ops. The backward loop carries only the two cotangent recurrences

.. math::
    \bar p_t = \bar p_{t+1} + h \odot \bar q_t,\qquad
    \bar q_{t-1} = \bar o_{t-1} + \bar q_t + r_t \odot \bar p_t,\quad
    r_t = -h \odot (w \odot (1 - a_t^2) + \alpha),

and everything else (:math:`\bar u_t = -h (1 - a_t^2) \bar p_t`, :math:`\bar w`, :math:`\bar h`) is
computed for a whole segment at once after it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import DEFAULT_CHUNK, InputTerm, RunConfig, backward_input, validate_scan_inputs

__all__ = ["forward_segment", "oscillator_scan"]


def forward_segment(u: Tensor, a: Tensor, p: Tensor, q: Tensor, w: Tensor, h: Tensor, alpha: float) -> None:
    """Steps of one segment: ``a`` (m, B, n) gets the activations, ``p``/``q`` (m + 1, B, n) the states
    (row 0 = the state before the segment)."""
    neg_alpha_h = -alpha * h
    u_rows, a_rows, p_rows, q_rows = u.unbind(0), a.unbind(0), p.unbind(0), q.unbind(0)
    for r in range(len(u_rows)):
        ar = torch.addcmul(u_rows[r], w, q_rows[r], out=a_rows[r]).tanh_()
        pr = torch.addcmul(p_rows[r], h, ar, value=-1, out=p_rows[r + 1])
        if alpha:
            pr.addcmul_(neg_alpha_h, q_rows[r])
        torch.addcmul(q_rows[r], h, pr, out=q_rows[r + 1])


def _inverse_segment(u: Tensor, a: Tensor, p: Tensor, q: Tensor, w: Tensor, h: Tensor, alpha: float) -> None:
    """Undo the steps of one segment from row m back to row 0 (the exact inverse of symplectic Euler):
    :math:`q_{t-1} = q_t - h p_t`, :math:`p_{t-1} = p_t + h (\\tanh(w q_{t-1} + u_t) + \\alpha q_{t-1})`."""
    alpha_h = alpha * h
    u_rows, a_rows, p_rows, q_rows = u.unbind(0), a.unbind(0), p.unbind(0), q.unbind(0)
    for r in range(len(u_rows) - 1, -1, -1):
        qr = torch.addcmul(q_rows[r + 1], h, p_rows[r + 1], value=-1, out=q_rows[r])
        ar = torch.addcmul(u_rows[r], w, qr, out=a_rows[r]).tanh_()
        pr = torch.addcmul(p_rows[r + 1], h, ar, out=p_rows[r])
        if alpha:
            pr.addcmul_(alpha_h, qr)


class _Workspace:
    """Per-segment buffers of the backward pass, allocated once for the longest segment and reused."""

    def __init__(self, rows: int, like: Tensor, rebuild: bool) -> None:
        shape = (rows, *like.shape)
        self.cot_p, self.cot_q, self.r, self.s = (like.new_empty(shape) for _ in range(4))
        self.act = like.new_empty(shape) if rebuild else None
        self.p = like.new_empty((rows + 1, *like.shape)) if rebuild else None
        self.q = like.new_empty((rows + 1, *like.shape)) if rebuild else None


def _backward_segment(
    a: Tensor,
    p: Tensor,
    q: Tensor,
    grad_out: Tensor | None,
    carry: tuple[Tensor, Tensor],
    ws: _Workspace,
    du: Tensor,
    w: Tensor,
    h: Tensor,
    alpha: float,
    grads: dict[str, Tensor],
) -> tuple[Tensor, Tensor]:
    """Cotangents through one segment; ``carry`` = (p̄, q̄) of the state after it, returns those before it."""
    m = a.shape[0]
    s = torch.mul(a, a, out=ws.s[:m]).sub_(1).mul_(h)  # -h (1 - a^2)
    r_coef = torch.addcmul(-alpha * h, w, s, out=ws.r[:m])  # r_t
    cot_p, cot_q = ws.cot_p[:m], ws.cot_q[:m]
    gp_rows, gq_rows, r_rows = cot_p.unbind(0), cot_q.unbind(0), r_coef.unbind(0)
    go_rows = grad_out.unbind(0) if grad_out is not None else None
    gp, gq = carry
    for r in range(m - 1, -1, -1):
        if r == m - 1:
            gq = torch.add(gq, go_rows[r], out=gq_rows[r]) if go_rows is not None else gq_rows[r].copy_(gq)
        else:
            gq = torch.addcmul(gq, r_rows[r + 1], gp, out=gq_rows[r])
            if go_rows is not None:
                gq.add_(go_rows[r])
        gp = torch.addcmul(gp, h, gq, out=gp_rows[r])
    carry_q = torch.addcmul(gq, r_rows[0], gp)
    carry_p = gp.clone()
    torch.mul(s, cot_p, out=du)
    q_prev = q[:m]
    grads["w"].add_((du * q_prev).sum((0, 1)))
    force = torch.add(a, q_prev, alpha=alpha) if alpha else a
    grads["h"].add_((cot_q * p[1:]).sum((0, 1))).sub_((cot_p * force).sum((0, 1)))
    return carry_p, carry_q


class _OscillatorScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, data, p0, q0, w, h, weight_ih, bias_ih, alpha, cfg):
        term = InputTerm(data, weight_ih, bias_ih)
        seq_len, (batch, n) = data.shape[0], p0.shape
        keep = any(ctx.needs_input_grad)
        stored = keep and not cfg.reversible
        segments = cfg.segments(seq_len)
        rows = seq_len if stored else max(b - a for a, b in segments)
        q_all = p0.new_empty(seq_len + 1, batch, n)  # the output storage, row 0 = q0
        q_all[0] = q0
        act = p0.new_empty(rows, batch, n)
        p_all = p0.new_empty(rows + 1, batch, n)
        p_all[0] = p0
        u_all = term.segment(0, seq_len) if stored else None
        kept, m = [], 0
        for t0, t1 in segments:
            if stored:
                forward_segment(u_all[t0:t1], act[t0:t1], p_all[t0 : t1 + 1], q_all[t0 : t1 + 1], w, h, alpha)
                continue
            if t0 > 0:
                p_all[0].copy_(p_all[m])
            m = t1 - t0
            forward_segment(term.segment(t0, t1), act[:m], p_all[: m + 1], q_all[t0 : t1 + 1], w, h, alpha)
            if keep and cfg.anchored(t1, seq_len):
                kept += [p_all[m].clone(), q_all[t1].clone()]
        p_final = p_all[seq_len if stored else m].clone()
        q_final = q_all[seq_len].clone()
        ctx.alpha, ctx.cfg, ctx.shape = alpha, cfg, (seq_len, batch, n)
        if stored:
            x = data if weight_ih is not None else None  # u itself is not needed: activations are stored
            ctx.save_for_backward(x, w, h, weight_ih, bias_ih, act, p_all, q_all)
        elif keep:
            ctx.save_for_backward(data, w, h, weight_ih, bias_ih, p_final, q_final, *kept)
        return q_all[1:], p_final, q_final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_p, grad_q):
        alpha, cfg = ctx.alpha, ctx.cfg
        seq_len, batch, n = ctx.shape
        data, w, h, weight_ih, bias_ih, *rest = ctx.saved_tensors
        segments = cfg.segments(seq_len)
        rows = max(b - a for a, b in segments)
        like = w.new_empty(batch, n)
        needs = ctx.needs_input_grad
        term, input_grad = backward_input(
            data, weight_ih, bias_ih, (seq_len, batch, n), rows, like, (needs[0], needs[5], needs[6])
        )
        grads = {"w": torch.zeros_like(w), "h": torch.zeros_like(h)}
        carry = tuple(torch.zeros_like(like) if g is None else g for g in (grad_p, grad_q))
        ws = _Workspace(rows, like, rebuild=cfg.reversible)
        if cfg.reversible:
            p_final, q_final, *saved = rest
            anchors = cfg.anchors(seq_len, (p_final, q_final), saved)
        else:
            act_all, p_all, q_all = rest
        for t0, t1 in reversed(segments):
            m = t1 - t0
            if cfg.reversible:
                act, p, q = ws.act[:m], ws.p[: m + 1], ws.q[: m + 1]
                # the segment ends at a stored state, or where the later segment's rebuild arrived
                end_p, end_q = anchors.get(t1, (ws.p[0], ws.q[0]))
                p[m].copy_(end_p)
                q[m].copy_(end_q)
                _inverse_segment(term.segment(t0, t1), act, p, q, w, h, alpha)
            else:
                act, p, q = act_all[t0:t1], p_all[t0 : t1 + 1], q_all[t0 : t1 + 1]
            du = input_grad.buffer(t0, t1)
            go = None if grad_out is None else grad_out[t0:t1]
            carry = _backward_segment(act, p, q, go, carry, ws, du, w, h, alpha, grads)
            input_grad.finish(t0, t1, du)
        d_data, d_weight_ih, d_bias_ih = input_grad.result()
        return d_data, carry[0], carry[1], grads["w"], grads["h"], d_weight_ih, d_bias_ih, None, None


def oscillator_scan(
    u: Tensor,
    p0: Tensor,
    q0: Tensor,
    w: Tensor,
    h: Tensor,
    alpha: float,
    memory: str = "stored",
    anchor_every: int | None = None,
    *,
    weight_ih: Tensor | None = None,
    bias_ih: Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Run the independent-oscillator cell over a whole sequence (symplectic Euler, per-unit step).

    Step ``t``: :math:`p_t = p_{t-1} - h(\tanh(w q_{t-1} + u_t) + \alpha q_{t-1})`,
    :math:`q_t = q_{t-1} + h p_t`; identical to ``symplectic_euler_step`` on
    :class:`~hrnn.hamiltonians.OscillatorHamiltonian` with bias :math:`u_t`.

    Args:
        u: projected input (T, B, n); or, when ``weight_ih`` is given, the raw input x (T, B, d),
            projected inside segment by segment.
        p0, q0: initial state, each (B, n).
        w: frequencies (n,). h: per-unit step (n,), positive (e.g. ``dt * sigmoid(c)``; differentiable).
        alpha: restoring-force coefficient (not differentiated).
        memory: ``"stored"`` or ``"reversible"`` (see :func:`~hrnn.fast.hamiltonian_scan`).
        anchor_every: reversible mode's anchor interval (default
            :data:`~hrnn.fast.DEFAULT_ANCHOR_EVERY`).
        weight_ih, bias_ih: optional input projection (n, d), (n,).
        chunk: segment length of the backward workspace.

    Returns:
        ``(outputs, p_T, q_T)``: :math:`q_t` of every step (T, B, n) and the final state, each (B, n).
    """
    n = p0.shape[-1] if isinstance(p0, Tensor) else 0
    cfg: RunConfig = validate_scan_inputs(
        u,
        p0,
        q0,
        {"w": (w, (n,)), "h": (h, (n,))},
        weight_ih,
        bias_ih,
        h,
        memory,
        anchor_every,
        chunk,
        True,
    )
    return _OscillatorScan.apply(u, p0, q0, w, h, weight_ih, bias_ih, float(alpha), cfg)
