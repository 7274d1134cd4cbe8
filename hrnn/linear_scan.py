r"""Exact scans of independent linear 2x2 recurrences: the numerics of the LinOSS layers.

Each of P oscillators has a state :math:`s_t = (z_t, y_t)` (velocity, position) and a scalar
forcing :math:`w_t` (the projected input :math:`(B u_t)_i`); the step is linear and time-invariant,

.. math::
    s_t = M s_{t-1} + f\, w_t, \qquad M \in \mathbb R^{2 \times 2},\ f \in \mathbb R^2,

with :math:`(M, f)` per oscillator from :func:`oscillator_transition`. Three ways to run it:

* :func:`reference_scan`: the step-by-step loop of the discretised equations themselves
  (symplectic Euler of :mod:`hrnn.integrators` for the undamped IMEX scheme, the implicit
  equations solved at every step otherwise), the definition the fast path is checked against;
* :func:`chunked_scan`: the fast path. The sequence is cut into chunks of ``L`` steps. Inside
  a chunk the response to the forcing is the lower-triangular Toeplitz matrix of the impulse
  response :math:`K_k = M^k f`, applied to every chunk of every sequence at once as one batched
  matrix multiply; the chunks' start states follow from a carry
  :math:`s_{c+1} = M^L s_c + e_c` over the ``T / L`` chunk ends (:math:`e_c` the end state of
  chunk c from rest), and their free response :math:`M^{k+1} s_c` is added inside each chunk.
  Exact up to rounding: only powers :math:`M^k` with :math:`k \le L` are ever formed, so a long
  sequence accumulates round-off like the step-by-step recurrence does, never by raising
  :math:`M` to a power of order T. Pure torch operations with no host synchronisation, so it
  runs unchanged on any device; its backward is the adjoint of the same steps (the transposed
  Toeplitz multiply and the reversed carry with :math:`(M^L)^\top`), written out so that
  autograd stores only the forcing and the chunk start states.

Layouts: the fast path works oscillator-major, forcing ``w`` (P, batch, T), so that each
oscillator's chunks form one matrix; the reference loop works time-major, (T, batch, P).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .integrators import symplectic_euler_step

__all__ = [
    "BLOCK_ELEMENTS",
    "DEFAULT_CHUNK",
    "ScanOperators",
    "block_steps",
    "chunk_length",
    "chunked_scan",
    "matrix_powers",
    "oscillator_transition",
    "reference_scan",
]

# Chunk length of the fast path (the upper end: chunk_length picks a divisor of T up to half of
# it): the Toeplitz multiply costs O(L) flops per step and the carry T / L sequential steps. On
# one CPU thread (hidden 128, batch 64) chunks 20-64 timed within noise of each other at T = 1000
# and 10,000 (experiments/benchmark_linoss.py --chunks); 24 was among the fastest at both.
DEFAULT_CHUNK = 24

# A layer runs its whole pipeline (input projection, scan, read-out) block by block, each block
# about this many elements per (P, batch, steps) tensor, so that a block's intermediates are
# reused from cache instead of streaming through memory between operations: on one CPU thread at
# T = 1000 the unblocked pipeline took 1.4x the time of blocks of 2**18 to 2**21 elements, which
# timed within noise of each other.
BLOCK_ELEMENTS = 2**20


def oscillator_transition(a: Tensor, h: Tensor, g: Tensor | None, implicit: bool) -> tuple[Tensor, Tensor]:
    r"""Transition ``M`` (P, 2, 2) and input vector ``f`` (P, 2) of one step on the state (z, y).

    For :math:`y'' = -A y - G y' + w` with step h, both discretisations are

    .. math::
        z_t = z_{t-1} + h(-A y_\star - G z_t + w_t), \qquad y_t = y_{t-1} + h z_t,

    with :math:`y_\star = y_{t-1}` (IMEX, ``implicit=False``) or :math:`y_t` (IM). Solved for the
    new state, with :math:`S = 1 / (1 + hG + [\text{IM}]\, h^2 A)`:

    .. math::
        M = \begin{pmatrix} S & -hAS \\ hS & 1 - h^2 A S \end{pmatrix}, \qquad
        f = S \begin{pmatrix} h \\ h^2 \end{pmatrix}, \qquad \det M = S.

    ``a``, ``h`` and ``g`` are (P,); ``g=None`` means no damping. Then IMEX is symplectic Euler
    (det M = 1), IM has det M = S < 1 for A > 0; damping G > 0 makes S < 1 in both.
    """
    denominator = 1.0 + h * h * a if implicit else torch.ones_like(h)
    if g is not None:
        denominator = denominator + h * g
    s = 1.0 / denominator
    m = torch.stack((torch.stack((s, -h * a * s), -1), torch.stack((h * s, 1.0 - h * h * a * s), -1)), -2)
    return m, torch.stack((h * s, h * h * s), -1)


def matrix_powers(m: Tensor, n: int) -> Tensor:
    """``M^0, ..., M^n`` of a batch of matrices ``m`` (..., k, k), stacked: (n + 1, ..., k, k).

    By doubling (log2(n) batched products), each power from products of lower ones only.
    """
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    powers, square = eye.expand(1, *m.shape).clone(), m
    while powers.shape[0] <= n:
        powers = torch.cat((powers, powers @ square))
        square = square @ square
    return powers[: n + 1]


def chunk_length(seq_len: int, chunk: int) -> int:
    """The chunk length for ``seq_len`` steps: ``seq_len`` itself if it is at most ``chunk``, else
    the largest divisor of ``seq_len`` in ``[chunk / 2, chunk]`` (no padding; a multiple of 8 if
    there is one, which the batched multiplies run fastest at), else ``chunk`` (the last chunk
    padded)."""
    if seq_len <= chunk:
        return seq_len
    divisors = [n for n in range(chunk, (chunk - 1) // 2, -1) if seq_len % n == 0]
    return max(divisors, key=lambda n: (n % 8 == 0, n)) if divisors else chunk


def block_steps(length: int, batch: int, oscillators: int) -> int:
    """Steps per block of a layer's pipeline: a multiple of the chunk ``length`` near
    :data:`BLOCK_ELEMENTS` / (batch * oscillators)."""
    return length * max(1, BLOCK_ELEMENTS // (length * batch * oscillators))


def _entries(m: Tensor) -> list[Tensor]:
    """The four entries of a batch of 2x2 matrices (P, 2, 2) as (P, 1) columns, row by row."""
    return [m[:, i, j, None] for i in range(2) for j in range(2)]


def _carry(ends: Tensor, m_chunk: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """Chunk start states (P, 2, B, n) and the state after the last chunk (P, 2, B):
    ``s_0 = s0``, ``s_{c+1} = M^L s_c + e_c`` for the ends ``e`` (P, 2, B, n) of the chunks from rest."""
    m00, m01, m10, m11 = _entries(m_chunk)
    z, y = s0[:, 0], s0[:, 1]
    zs, ys = [], []
    # elementwise updates of (P, B) slices: a 2x2 batched matmul per step costs several times more
    for e in ends.permute(3, 0, 1, 2).contiguous():
        zs.append(z)
        ys.append(y)
        z, y = (
            torch.addcmul(e[:, 0], m00, z).addcmul_(m01, y),
            torch.addcmul(e[:, 1], m10, z).addcmul_(m11, y),
        )
    return torch.stack((torch.stack(zs, -1), torch.stack(ys, -1)), 1), torch.stack((z, y), 1)


def _carry_adjoint(
    grad_starts: Tensor, grad_end: Tensor, starts: Tensor, m_chunk: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The reversed carry: cotangents of the chunk ends, of :math:`M^L` and of ``s0``.

    From :math:`\lambda_n` = the end state's cotangent, :math:`\lambda_c = g_c + (M^L)^\top
    \lambda_{c+1}`; the end :math:`e_c` receives :math:`\lambda_{c+1}`, :math:`M^L` receives
    :math:`\sum_c \lambda_{c+1} s_c^\top`, ``s0`` receives :math:`\lambda_0`.
    """
    m00, m01, m10, m11 = _entries(m_chunk)
    lam_z, lam_y = grad_end[:, 0], grad_end[:, 1]
    zs, ys = [], []
    for g in grad_starts.permute(3, 0, 1, 2).flip(0).contiguous():
        zs.append(lam_z)
        ys.append(lam_y)
        lam_z, lam_y = (
            torch.addcmul(g[:, 0], m00, lam_z).addcmul_(m10, lam_y),
            torch.addcmul(g[:, 1], m01, lam_z).addcmul_(m11, lam_y),
        )
    grad_ends = torch.stack((torch.stack(zs[::-1], -1), torch.stack(ys[::-1], -1)), 1)
    grad_m = torch.einsum("pibc,pjbc->pij", grad_ends, starts)
    return grad_ends, grad_m, torch.stack((lam_z, lam_y), 1)


class _ChunkedScan(torch.autograd.Function):
    """Positions of every step, the chunk start states and the end state, from chunked forcing
    ``w`` (P, B, n, L).

    ``toeplitz`` (P, L, L): the response of the positions in a chunk to its forcing, input index
    first; ``ends`` (P, 2, L): the response of the state at the chunk's end; ``free`` (P, 2, L):
    row y of :math:`M^{k+1}`, the positions' response to the chunk's start state; ``m_chunk``
    :math:`M^L`; ``s0`` (P, 2, B) the state before the first step. Returns positions (P, B, n, L),
    start states (P, 2, B, n) and the state after the last step (P, 2, B).
    """

    @staticmethod
    def forward(ctx, w: Tensor, toeplitz: Tensor, ends: Tensor, free: Tensor, m_chunk: Tensor, s0: Tensor):
        p, b, n, length = w.shape
        rows = w.reshape(p, b * n, length)
        y = torch.bmm(rows, toeplitz)
        starts, end = _carry(torch.bmm(ends, rows.transpose(1, 2)).view(p, 2, b, n), m_chunk, s0)
        y.baddbmm_(starts.view(p, 2, b * n).transpose(1, 2), free)
        ctx.save_for_backward(w, toeplitz, ends, free, m_chunk, starts)
        return y.view(p, b, n, length), starts, end

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, grad_starts: Tensor | None, grad_end: Tensor | None):
        w, toeplitz, ends, free, m_chunk, starts = ctx.saved_tensors
        p, b, n, length = w.shape
        rows, grad_y = w.reshape(p, b * n, length), grad_y.reshape(p, b * n, length)
        grad_free = torch.bmm(starts.view(p, 2, b * n), grad_y)
        grad_s = torch.bmm(free, grad_y.transpose(1, 2)).view(p, 2, b, n)
        if grad_starts is not None:
            grad_s = grad_s + grad_starts
        grad_end = torch.zeros_like(starts[..., 0]) if grad_end is None else grad_end
        grad_ends, grad_m, grad_s0 = _carry_adjoint(grad_s, grad_end, starts, m_chunk)
        grad_ends = grad_ends.view(p, 2, b * n)
        grad_w = torch.bmm(grad_y, toeplitz.transpose(1, 2)).baddbmm_(grad_ends.transpose(1, 2), ends)
        grad_toeplitz = grad_ends_kernel = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_toeplitz = torch.bmm(rows.transpose(1, 2), grad_y)
            grad_ends_kernel = torch.bmm(grad_ends, rows)
        return grad_w.view(p, b, n, length), grad_toeplitz, grad_ends_kernel, grad_free, grad_m, grad_s0


@dataclass(frozen=True)
class ScanOperators:
    """What :func:`chunked_scan` needs of one transition at chunk length ``length`` (built once
    per forward pass by :meth:`build`, shared by every block of a sequence)."""

    length: int
    powers: Tensor  # (L + 1, P, 2, 2): M^0 ... M^L
    impulse: Tensor  # (L, P, 2): K_k = M^k f
    toeplitz: Tensor  # (P, L, L): [j, i] = position i's response to the forcing at step j <= i
    ends: Tensor  # (P, 2, L): [:, j] = the chunk's end state's response to the forcing at step j
    free: Tensor  # (P, 2, L): [:, k] = row y of M^{k+1}, the response to the chunk's start state

    @classmethod
    def build(cls, m: Tensor, f: Tensor, length: int) -> ScanOperators:
        """From ``M`` (P, 2, 2) and ``f`` (P, 2) of :func:`oscillator_transition`."""
        powers = matrix_powers(m, length)
        impulse = (powers[:length] @ f.unsqueeze(-1)).squeeze(-1)
        steps = torch.arange(length, device=m.device)
        lag = steps[None, :] - steps[:, None]  # [j, i] = i - j: how far output i lies after input j
        toeplitz = impulse[lag.clamp(min=0), :, 1].permute(2, 0, 1) * (lag >= 0)
        ends = impulse.flip(0).permute(1, 2, 0)
        free = powers[1:, :, 1, :].permute(1, 2, 0)
        return cls(length, powers, impulse, toeplitz, ends, free)


def chunked_scan(
    w: Tensor, ops: ScanOperators, z0: Tensor, y0: Tensor, seq_len: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Run :math:`s_t = M s_{t-1} + f w_t` over forcing ``w`` (P, B, T) from ``(z0, y0)`` (P, B) each.

    Returns the positions ``y`` (P, B, T) of every step and the state ``(z, y)`` (P, B) each after
    ``seq_len`` steps (default T). Steps after ``seq_len`` are padding; the function pads ``w``
    itself (a copy) when T is not a multiple of ``ops.length``. Gradients reach ``w``, the
    initial state and, through ``ops``, the transition.
    """
    total, length = w.shape[-1], ops.length
    seq_len = total if seq_len is None else seq_len
    if not 1 <= seq_len <= total:
        raise ValueError(f"seq_len must be in [1, {total}], got {seq_len}")
    padded = w if total % length == 0 else F.pad(w, (0, -total % length))
    p, b = w.shape[:2]
    chunks = padded.view(p, b, -1, length)
    s0 = torch.stack((z0, y0), 1)
    y, starts, end = _ChunkedScan.apply(chunks, ops.toeplitz, ops.ends, ops.free, ops.powers[length], s0)
    last, rest = (seq_len - 1) // length, (seq_len - 1) % length + 1
    if rest == length and last == chunks.shape[2] - 1:
        final = end
    else:  # the last real chunk's start state carried over its `rest` real steps
        final = torch.bmm(ops.powers[rest], starts[..., last])
        tail = chunks[:, :, last, :rest].transpose(1, 2)
        final = final + torch.bmm(ops.impulse[:rest].flip(0).permute(1, 2, 0), tail)
    y = y.view(p, b, -1)
    return y if padded is w else y[:, :, :total], final[:, 0], final[:, 1]


def _symplectic_euler(w_t: Tensor, z: Tensor, y: Tensor, a: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """IMEX without damping: symplectic Euler on :math:`H = z^2/2 + A y^2/2 - w_t y` (elementwise)."""
    return symplectic_euler_step(z, y, lambda q: a * q - w_t, lambda p_: p_, h)


def _implicit_equations(
    w_t: Tensor, z: Tensor, y: Tensor, a: Tensor, h: Tensor, g: Tensor, implicit: bool
) -> tuple[Tensor, Tensor]:
    """One step of the equations of :func:`oscillator_transition`, solved as a 2x2 linear system."""
    position_new = 1.0 if implicit else 0.0
    system = torch.stack(
        (
            torch.stack((1.0 + h * g, position_new * h * a), -1),
            torch.stack((-h, torch.ones_like(h)), -1),
        ),
        -2,
    )
    rhs = torch.stack((z + h * (w_t - (1.0 - position_new) * a * y), y), -1)
    solution = torch.linalg.solve(system, rhs.unsqueeze(-1)).squeeze(-1)
    return solution[..., 0], solution[..., 1]


def reference_scan(
    w: Tensor, a: Tensor, h: Tensor, g: Tensor | None, implicit: bool, z0: Tensor, y0: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The step-by-step loop over forcing ``w`` (T, B, P) from ``(z0, y0)`` (B, P) each.

    Returns the positions (T, B, P) and the final ``(z, y)``. Undamped IMEX steps with
    :func:`hrnn.integrators.symplectic_euler_step`; IM and damped steps solve their implicit
    equations with :func:`torch.linalg.solve`, independently of the closed form used by
    :func:`chunked_scan`.
    """
    z, y, positions = z0, y0, []
    for w_t in w:
        if implicit or g is not None:
            damping = torch.zeros_like(h) if g is None else g
            z, y = _implicit_equations(w_t, z, y, a, h, damping, implicit)
        else:
            z, y = _symplectic_euler(w_t, z, y, a, h)
        positions.append(y)
    return torch.stack(positions), z, y
