r"""Fast whole-sequence recurrence of the log-cosh Hamiltonian cell, with a hand-written backward.

One step ``t`` of the cell is ``hrnn.integrators.get_scheme(scheme).step(p, q, grad_v, grad_t, dt)``
with the log-cosh energy of Galimberti et al. (2023),

.. math::
    \nabla V_t(q) = K_q^\top \tanh(K_q q + u_t), \qquad \nabla T(p) = K_p^\top \tanh(K_p p + b_p),

and the output of step ``t`` is :math:`q_t` (or :math:`p_t` with ``emit="p"``). Every scheme is a sequence of *substeps* — a kick
:math:`p \leftarrow p - c\,dt\,\nabla V_t(q)` or a drift :math:`q \leftarrow q + c\,dt\,\nabla T(p)` —
grouped in *stages* whose substeps read the same state (the scheme's ``plan``,
:class:`hrnn.integrators.Scheme`). Substep ``s`` writes a new
version of its target into state buffer ``s`` (row ``t + 1`` for step ``t``, row 0 for the initial
state), so forward, inverse and backward all run off one static table (:class:`Layout`).

With a per-unit ``decay`` :math:`d` (the damped cell's friction, :meth:`hrnn.cells.HamiltonianCell.friction`)
every step first sets :math:`p \leftarrow d \odot p`, into a buffer of its own after the substeps'; the
inverse divides by :math:`d` after undoing the substeps, and the backward sends :math:`d \odot g` to the
previous p and adds :math:`\sum_{t,b} g \odot p` to :math:`\bar d`.

Backward of a substep :math:`y' = y + \sigma\,dt\,\tanh(x K^\top + b) K` with output cotangent
:math:`g`: :math:`z = (g\,\sigma\,dt\,K^\top) \odot (1 - a^2)`, :math:`\bar x \mathrel{+}= z K`,
:math:`\bar K \mathrel{+}= \sigma\,dt\,a^\top g + z^\top x`, :math:`\bar b \mathrel{+}= z`.
The loop only propagates cotangents; the :math:`\bar K` terms of a whole segment are two large
matrix multiplies after it.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..integrators import KINDS, Plan, Scheme, get_scheme
from ._common import DEFAULT_CHUNK, InputTerm, backward_input, validate_scan_inputs

__all__ = ["Layout", "hamiltonian_scan", "layout_of"]


# kind -> sign of its update (a kick lowers p, a drift raises q)
_SIGN: dict[str, float] = {"kick": -1.0, "drift": 1.0}

Ref = tuple[int, int]  # (state buffer, lag): the version in buffer row t + 1 - lag at step t


@dataclass(frozen=True)
class Layout:
    """Static buffer plan of a scheme: for substep ``s``, which version it reads and which it updates."""

    kinds: tuple[str, ...]
    sigma: tuple[float, ...]  # signed fraction of dt
    stages: tuple[tuple[int, ...], ...]
    source: tuple[Ref, ...]
    previous: tuple[Ref, ...]
    final: dict[str, int]  # variable -> the substep writing its last version in a step
    friction: int | None = None  # the buffer of the decayed p a damped step starts from

    @property
    def buffers(self) -> int:
        """Number of state buffers: one per substep, and the decayed p's."""
        return len(self.kinds) + (self.friction is not None)

    @property
    def input_substep(self) -> int:
        """The first kick: its activation cotangent is written straight into the input gradient."""
        return self.kinds.index("kick")

    @classmethod
    def of(cls, plan: Plan, damped: bool = False) -> Layout:
        """The layout of ``plan``; ``damped`` adds the buffer of the decayed p, which then replaces
        the previous step's p wherever a substep reads it."""
        flat = [sub for stage in plan for sub in stage]
        friction = len(flat) if damped else None
        stages, kinds, sigma, stage_of = [], [], [], []
        for j, stage in enumerate(plan):
            stages.append(tuple(range(len(kinds), len(kinds) + len(stage))))
            for sub in stage:
                kinds.append(sub.kind)
                sigma.append(_SIGN[sub.kind] * sub.fraction)
                stage_of.append(j)
        final = {}
        for s, sub in enumerate(flat):
            final[KINDS[sub.kind][0]] = s
        if set(final) != {"p", "q"}:
            raise ValueError(f"a plan must update both p and q, got {plan}")

        def version_before(var: str, stage: int) -> Ref:
            writers = [s for s, sub in enumerate(flat) if KINDS[sub.kind][0] == var and stage_of[s] < stage]
            if writers:
                return writers[-1], 0
            return (friction, 0) if var == "p" and damped else (final[var], 1)

        source = tuple(version_before(KINDS[k][1], stage_of[s]) for s, k in enumerate(kinds))
        previous = tuple(version_before(KINDS[k][0], stage_of[s]) for s, k in enumerate(kinds))
        return cls(tuple(kinds), tuple(sigma), tuple(stages), source, previous, final, friction)


@functools.lru_cache(maxsize=64)
def layout_of(plan: Plan, damped: bool = False) -> Layout:
    """The buffer layout of a scheme's plan, with or without friction (cached: plans are immutable)."""
    return Layout.of(plan, damped)


@dataclass(frozen=True)
class _Params:
    """Per-substep weights and biases of one call (row convention: ``G(x) = tanh(x K^T + b) K``)."""

    weight: tuple[Tensor, ...]
    bias_p: Tensor
    dt: float
    decay: Tensor | None = None

    @classmethod
    def of(
        cls,
        layout: Layout,
        weight_q: Tensor,
        weight_p: Tensor,
        bias_p: Tensor,
        dt: float,
        decay: Tensor | None,
    ) -> _Params:
        return cls(tuple(weight_q if k == "kick" else weight_p for k in layout.kinds), bias_p, dt, decay)


def _forward_segment(
    layout: Layout, prm: _Params, u: Tensor, act: list[Tensor], state: list[Tensor], inverse: bool = False
) -> None:
    """Run the steps of one segment, or with ``inverse`` undo them from the last row back to row 0.

    ``act[s]`` (m, B, n) receives the activations; ``state[s]`` (m + 1, B, n) holds the versions,
    row 0 the state before the segment (forward) or row m the state after it (inverse).
    """
    rows = _Rows(layout, prm, u, act, state)
    if inverse:
        for r in range(len(rows.u) - 1, -1, -1):
            rows.undo(r)
    else:
        for r in range(len(rows.u)):
            rows.step(r)


class _Rows:
    """One segment's per-step views and the forward and inverse of one step on them."""

    def __init__(
        self, layout: Layout, prm: _Params, u: Tensor, act: list[Tensor], state: list[Tensor]
    ) -> None:
        self.layout, self.dt, self.decay = layout, prm.dt, prm.decay
        self.u = u.unbind(0)
        self.act = [a.unbind(0) for a in act]
        self.state = [x.unbind(0) for x in state]
        self.weight = prm.weight
        self.weight_t = [w.T for w in prm.weight]
        self.bias = [None if k == "kick" else prm.bias_p for k in layout.kinds]
        self.p_last = layout.final["p"]

    def activate(self, s: int, r: int) -> Tensor:
        """``act[s][r] = tanh(source K^T + b)`` of substep ``s`` at step ``r``."""
        sb, sl = self.layout.source[s]
        a = self.act[s][r]
        bias = self.u[r] if self.bias[s] is None else self.bias[s]
        torch.addmm(bias, self.state[sb][r + 1 - sl], self.weight_t[s], out=a)
        return a.tanh_()

    def step(self, r: int) -> None:
        layout, state = self.layout, self.state
        if layout.friction is not None:
            torch.mul(state[self.p_last][r], self.decay, out=state[layout.friction][r + 1])
        for stage in layout.stages:
            for s in stage:
                self.activate(s, r)
            for s in stage:
                pb, pl = layout.previous[s]
                torch.addmm(
                    state[pb][r + 1 - pl], self.act[s][r], self.weight[s], alpha=layout.sigma[s] * self.dt,
                    out=state[s][r + 1],
                )  # fmt: skip

    def undo(self, r: int) -> None:
        layout, state = self.layout, self.state
        # every stage of a symplectic plan is one substep, and its source is left unchanged by it
        for s in reversed(range(len(layout.kinds))):
            pb, pl = layout.previous[s]
            a = self.activate(s, r)
            torch.addmm(
                state[s][r + 1],
                a,
                self.weight[s],
                alpha=-layout.sigma[s] * self.dt,
                out=state[pb][r + 1 - pl],
            )
        if layout.friction is not None:
            torch.div(state[layout.friction][r + 1], self.decay, out=state[self.p_last][r])


def _sum_into(terms: list, out: Tensor) -> Tensor:
    """Write the sum of cotangent terms into ``out``: tensors, and ``(z, K)`` pairs meaning ``z @ K``."""
    tensors = [t for t in terms if isinstance(t, Tensor)]
    products = [t for t in terms if not isinstance(t, Tensor)]
    if tensors and products:
        torch.addmm(tensors.pop(0), *products.pop(0), out=out)
    elif tensors:
        out.copy_(tensors.pop(0))
    elif products:
        torch.mm(*products.pop(0), out=out)
    else:
        return out.zero_()
    for t in tensors:
        out.add_(t)
    for z, k in products:
        out.addmm_(z, k)
    return out


class _Workspace:
    """Per-segment buffers of the backward pass, allocated once for the longest segment and reused.

    ``act``/``state`` are only needed when the states are rebuilt (reversible mode); stored mode
    reads slices of the forward's buffers instead.
    """

    def __init__(self, layout: Layout, rows: int, like: Tensor, rebuild: bool) -> None:
        shape, n_sub, n_buf = (rows, *like.shape), len(layout.kinds), layout.buffers
        # the decayed p's cotangent and its product with the decay take the last cot and z
        self.cot = [like.new_empty(shape) for _ in range(n_buf)]
        self.z = [like.new_empty(shape) for _ in range(n_buf)]
        self.sech2 = [like.new_empty(shape) for _ in range(n_sub)]
        self.act = [like.new_empty(shape) for _ in range(n_sub)] if rebuild else []
        self.state = [like.new_empty((rows + 1, *like.shape)) for _ in range(n_buf)] if rebuild else []


def _materialise(pending: dict) -> None:
    """Sum every pending cotangent into a tensor of its own, so the workspace can be reused."""
    for key, terms in pending.items():
        first = terms[0] if isinstance(terms[0], Tensor) else terms[0][0]
        pending[key] = [_sum_into(terms, torch.empty_like(first))]


def _backward_segment(
    layout: Layout,
    prm: _Params,
    t0: int,
    act: list[Tensor],
    state: list[Tensor],
    grad_out: Tensor | None,
    pending: dict,
    ws: _Workspace,
    du: Tensor,
    grads: dict[str, Tensor],
    emit: str,
) -> None:
    """Propagate cotangents through the ``m`` steps of one segment and add its parameter gradients.

    ``pending`` maps a version ``(buffer, global row)`` to the cotangent terms gathered for it;
    on return it holds only the versions of the state before the segment, each one tensor.
    ``du`` (m, B, n) receives the gradient of the input term.
    """
    m, n_sub, dt = act[0].shape[0], len(layout.kinds), prm.dt
    scaled_t = [(layout.sigma[s] * dt) * prm.weight[s].T for s in range(n_sub)]
    cot = [c[:m] for c in ws.cot]
    z = [du if s == layout.input_substep else x[:m] for s, x in enumerate(ws.z)]
    one = torch.ones((), dtype=du.dtype, device=du.device)
    sech2 = [torch.addcmul(one, a, a, value=-1, out=d[:m]) for a, d in zip(act, ws.sech2, strict=True)]
    cot_rows = [c.unbind(0) for c in cot]
    z_rows = [x.unbind(0) for x in z]
    sech2_rows = [x.unbind(0) for x in sech2]
    go_rows = grad_out.unbind(0) if grad_out is not None else None
    emitted, fp, friction = layout.final[emit], layout.final["p"], layout.friction
    order = tuple(reversed(range(n_sub)))
    for r in range(m - 1, -1, -1):
        row = t0 + r + 1
        if go_rows is not None:
            pending[(emitted, row)].append(go_rows[r])
        for s in order:
            g = _sum_into(pending.pop((s, row), []), cot_rows[s][r])
            zr = torch.mm(g, scaled_t[s], out=z_rows[s][r])
            zr.mul_(sech2_rows[s][r])
            (pb, pl), (sb, sl) = layout.previous[s], layout.source[s]
            pending[(pb, row - pl)].append(g)
            pending[(sb, row - sl)].append((zr, prm.weight[s]))
        if friction is not None:
            g = _sum_into(pending.pop((friction, row), []), cot_rows[friction][r])
            pending[(fp, row - 1)].append(torch.mul(g, prm.decay, out=z_rows[friction][r]))
    _materialise(pending)
    _segment_parameter_grads(layout, prm, act, state, cot, z, du, grads)


def _segment_parameter_grads(
    layout: Layout,
    prm: _Params,
    act: list[Tensor],
    state: list[Tensor],
    cot: list[Tensor],
    z: list[Tensor],
    du: Tensor,
    grads: dict[str, Tensor],
) -> None:
    """Add one segment's parameter gradients, from its cotangents, in a few large matrix multiplies."""
    m, n = act[0].shape[0], act[0].shape[-1]
    for s in range(len(layout.kinds)):
        sb, sl = layout.source[s]
        zf = z[s].reshape(-1, n)
        grad = grads["weight_q" if layout.kinds[s] == "kick" else "weight_p"]
        grad.addmm_(act[s].reshape(-1, n).T, cot[s].reshape(-1, n), alpha=layout.sigma[s] * prm.dt)
        grad.addmm_(zf.T, state[sb][1 - sl : m + 1 - sl].reshape(-1, n))
        if layout.kinds[s] == "drift":
            grads["bias_p"].add_(zf.sum(0))
        elif s != layout.input_substep:
            du.add_(z[s])
    if "decay" in grads:
        # sum over (t, b) of g * p before the decay; z's rows were consumed by _materialise
        f = layout.friction
        product = torch.mul(cot[f], state[layout.final["p"]][:m], out=z[f])
        grads["decay"].add_(product.reshape(-1, n).sum(0))


class _HamiltonianScan(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, data, p0, q0, weight_q, weight_p, bias_p, weight_ih, bias_ih, decay, layout, dt, cfg, emit
    ):
        term = InputTerm(data, weight_ih, bias_ih)
        prm = _Params.of(layout, weight_q, weight_p, bias_p, dt, decay)
        seq_len, (batch, n), n_sub = data.shape[0], p0.shape, len(layout.kinds)
        keep = any(ctx.needs_input_grad)
        stored = keep and not cfg.reversible
        fp, fq, fe = layout.final["p"], layout.final["q"], layout.final[emit]
        carried = fp if fe == fq else fq  # the final buffer not kept whole
        segments = cfg.segments(seq_len)
        rows = seq_len if stored else max(b - a for a, b in segments)
        # the emitted variable's last version of every step is the output: its buffer is the
        # output storage, row 0 the initial state
        out_all = p0.new_empty(seq_len + 1, batch, n)
        act = [p0.new_empty(rows, batch, n) for _ in range(n_sub)]
        state = [out_all if s == fe else p0.new_empty(rows + 1, batch, n) for s in range(layout.buffers)]
        state[fp][0], state[fq][0] = p0, q0
        u_all = term.segment(0, seq_len) if stored else None
        kept, m = [], 0
        for t0, t1 in segments:
            if stored:
                seg_act, seg_state, u = [a[t0:t1] for a in act], [x[t0 : t1 + 1] for x in state], u_all[t0:t1]
            else:
                # reuse the first rows of the buffers for every segment; the other variable enters
                # from the last one
                if t0 > 0:
                    state[carried][0].copy_(state[carried][m])
                m = t1 - t0
                seg_act = [a[:m] for a in act]
                seg_state = [out_all[t0 : t1 + 1] if s == fe else x[: m + 1] for s, x in enumerate(state)]
                u = term.segment(t0, t1)
            _forward_segment(layout, prm, u, seg_act, seg_state)
            if keep and cfg.anchored(t1, seq_len):
                kept += [seg_state[fp][-1].clone(), seg_state[fq][-1].clone()]
        last = {s: seq_len if stored or s == fe else m for s in (fp, fq)}
        p_final, q_final = state[fp][last[fp]].clone(), state[fq][last[fq]].clone()
        ctx.layout, ctx.dt, ctx.cfg, ctx.shape, ctx.emit = layout, dt, cfg, (seq_len, batch, n), emit
        if stored:
            x = data if weight_ih is not None else None  # u itself is not needed: activations are stored
            ctx.save_for_backward(x, weight_q, weight_p, bias_p, weight_ih, bias_ih, decay, *act, *state)
        elif keep:
            ctx.save_for_backward(
                data, weight_q, weight_p, bias_p, weight_ih, bias_ih, decay, p_final, q_final, *kept
            )
        return out_all[1:], p_final, q_final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_p, grad_q):
        layout, dt, cfg = ctx.layout, ctx.dt, ctx.cfg
        seq_len, batch, n = ctx.shape
        data, weight_q, weight_p, bias_p, weight_ih, bias_ih, decay, *rest = ctx.saved_tensors
        n_sub, fp, fq = len(layout.kinds), layout.final["p"], layout.final["q"]
        prm = _Params.of(layout, weight_q, weight_p, bias_p, dt, decay)
        segments = cfg.segments(seq_len)
        rows = max(b - a for a, b in segments)
        like = weight_q.new_empty(batch, n)
        needs = ctx.needs_input_grad
        term, input_grad = backward_input(
            data, weight_ih, bias_ih, (seq_len, batch, n), rows, like, (needs[0], needs[6], needs[7])
        )
        params = {"weight_q": weight_q, "weight_p": weight_p, "bias_p": bias_p}
        if decay is not None and needs[8]:
            params["decay"] = decay
        grads = {name: torch.zeros_like(t) for name, t in params.items()}
        pending: dict = defaultdict(list)
        for var, g in (("p", grad_p), ("q", grad_q)):
            if g is not None:
                pending[(layout.final[var], seq_len)].append(g)
        ws = _Workspace(layout, rows, like, rebuild=cfg.reversible)
        if cfg.reversible:
            p_final, q_final, *saved = rest
            anchors = cfg.anchors(seq_len, (p_final, q_final), saved)
        for t0, t1 in reversed(segments):
            m = t1 - t0
            if cfg.reversible:
                act, state = [a[:m] for a in ws.act], [x[: m + 1] for x in ws.state]
                # the segment ends at a stored state, or where the later segment's rebuild arrived
                end_p, end_q = anchors.get(t1, (ws.state[fp][0], ws.state[fq][0]))
                state[fp][m].copy_(end_p)
                state[fq][m].copy_(end_q)
                _forward_segment(layout, prm, term.segment(t0, t1), act, state, inverse=True)
            else:
                act, state = [a[t0:t1] for a in rest[:n_sub]], [x[t0 : t1 + 1] for x in rest[n_sub:]]
            du = input_grad.buffer(t0, t1)
            go = None if grad_out is None else grad_out[t0:t1]
            _backward_segment(layout, prm, t0, act, state, go, pending, ws, du, grads, ctx.emit)
            input_grad.finish(t0, t1, du)
        grad_p0 = _sum_into(pending.pop((fp, 0), []), torch.empty_like(like))
        grad_q0 = _sum_into(pending.pop((fq, 0), []), torch.empty_like(like))
        d_data, d_weight_ih, d_bias_ih = input_grad.result()
        weights = (grads["weight_q"], grads["weight_p"], grads["bias_p"])
        return (
            d_data,
            grad_p0,
            grad_q0,
            *weights,
            d_weight_ih,
            d_bias_ih,
            grads.get("decay"),
            None,
            None,
            None,
            None,
        )


def hamiltonian_scan(
    u: Tensor,
    p0: Tensor,
    q0: Tensor,
    weight_q: Tensor,
    weight_p: Tensor,
    bias_p: Tensor,
    dt: Tensor | float,
    scheme: str | Scheme = "symplectic_euler",
    memory: str = "stored",
    anchor_every: int | None = None,
    *,
    weight_ih: Tensor | None = None,
    bias_ih: Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    decay: Tensor | None = None,
    emit: str = "q",
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Run the Hamiltonian cell over a whole sequence; same result as the plain loop of ``scheme`` steps.

    Step ``t``: ``get_scheme(scheme).step(p, q, grad_v, grad_t, dt)`` with
    :math:`\nabla V_t(q) = K_q^\top\tanh(K_q q + u_t)`, :math:`\nabla T(p) = K_p^\top\tanh(K_p p + b_p)`;
    with ``decay`` :math:`d`, the step starts with :math:`p \leftarrow d \odot p`.

    Args:
        u: projected input (T, B, n) :math:`= x W_{ih}^\top + b_{ih}`; or, when ``weight_ih`` is given,
            the raw input x (T, B, d), projected inside segment by segment (what keeps reversible memory
            independent of T, since u need not be kept for the backward pass).
        p0, q0: initial state, each (B, n).
        weight_q, weight_p: :math:`K_q, K_p` (n, n). bias_p: :math:`b_p` (n,).
        dt: step size, a positive float or 0-dim tensor (not differentiated).
        scheme: a :class:`~hrnn.integrators.Scheme` (any plan of kicks and drifts) or a registered name.
        memory: ``"stored"`` keeps every activation (fastest, memory O(T)); ``"reversible"`` rebuilds
            the states backwards by the exact inverse step (symplectic schemes only; memory
            O(T / anchor_every + chunk)).
        anchor_every: reversible mode re-anchors on a stored state every this many steps
            (default :data:`~hrnn.fast.DEFAULT_ANCHOR_EVERY`); a value >= T keeps none.
        weight_ih, bias_ih: optional input projection :math:`W_{ih}` (n, d), :math:`b_{ih}` (n,).
        chunk: segment length of the backward workspace.
        decay: optional per-unit friction :math:`d` (n,), in (0, 1] (the damped cell's
            :meth:`~hrnn.cells.HamiltonianCell.friction`; differentiated). ``None``: the conservative step.
            The reversible rebuild divides by :math:`d` every step, so its round-off grows
            geometrically with the steps between anchors: with strong damping, use a short
            ``anchor_every`` (or ``"stored"``).
        emit: the variable returned at every step, ``"q"`` or ``"p"`` (its last version in the step).

    Returns:
        ``(outputs, p_T, q_T)``: ``emit`` of every step (T, B, n) and the final state, each (B, n).
    """
    s = get_scheme(scheme)
    n = p0.shape[-1] if isinstance(p0, Tensor) else 0
    params = {
        "weight_q": (weight_q, (n, n)), "weight_p": (weight_p, (n, n)), "bias_p": (bias_p, (n,)),
        "decay": (decay, (n,)),
    }  # fmt: skip
    cfg = validate_scan_inputs(
        u, p0, q0, params, weight_ih, bias_ih, dt, memory, anchor_every, chunk, s.symplectic
    )
    step = float(dt)
    layout = layout_of(s.plan, decay is not None)
    if emit not in layout.final:
        raise ValueError(f"emit must be one of {sorted(layout.final)}, got {emit!r}")
    return _HamiltonianScan.apply(
        u, p0, q0, weight_q, weight_p, bias_p, weight_ih, bias_ih, decay, layout, step, cfg, emit
    )
