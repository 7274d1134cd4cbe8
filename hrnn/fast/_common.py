"""What the fast scans share: memory modes, segments, the input term and the checks on them.

Both scans walk the sequence in segments of at most ``chunk`` steps. The backward pass
works segment by segment: it gathers the per-step cotangents of one segment into (m, B, n)
buffers and turns them into parameter gradients with a few large matrix multiplies, so its
workspace is O(chunk), whatever T is. In ``"stored"`` mode the forward pass keeps every
activation and state for the backward; in ``"reversible"`` mode it keeps only the final
state and an anchor every ``anchor_every`` steps, and the backward rebuilds each
segment from its end by the exact inverse step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from ..integrators import validate_state, validate_step_size
from ..validation import lookup

__all__ = [
    "DEFAULT_ANCHOR_EVERY",
    "DEFAULT_CHUNK",
    "MEMORY_MODES",
    "InputGrad",
    "InputTerm",
    "RunConfig",
    "backward_input",
    "check_chunk",
    "check_memory",
    "segment_bounds",
    "validate_batched_state",
    "validate_scan_inputs",
]

# memory mode -> whether the backward pass recomputes the states instead of reading stored ones
MEMORY_MODES: dict[str, bool] = {"stored": False, "reversible": True}

# Segment length of the backward workspace: long enough that the per-segment parameter
# gradient matmuls ((m*B, n)^T @ (m*B, n)) run near peak speed, short enough to stay small.
DEFAULT_CHUNK = 64

# Reversible mode re-anchors on a stored state every this many steps, which bounds the float32
# drift of the states rebuilt by the inverse step (measured in docs/speed.md: well under the 1e-4
# relative gradient target at T = 10,000) while the anchors stay a small share of the memory.
DEFAULT_ANCHOR_EVERY = 1000


@dataclass(frozen=True)
class RunConfig:
    """How one scan runs: the memory mode, its segment length and anchor interval."""

    reversible: bool
    chunk: int
    anchor_every: int | None

    def segments(self, seq_len: int) -> list[tuple[int, int]]:
        """The ``(t0, t1)`` step ranges the scan runs one after another."""
        marks = segment_bounds(seq_len, self.chunk, self.anchor_every if self.reversible else None)
        return list(pairwise(marks))

    def anchored(self, t: int, seq_len: int) -> bool:
        """Whether the reversible forward keeps the state reached after ``t`` steps."""
        return self.anchor_every is not None and 0 < t < seq_len and t % self.anchor_every == 0

    def anchors(
        self, seq_len: int, final: tuple[Tensor, Tensor], saved: Sequence[Tensor]
    ) -> dict[int, tuple[Tensor, Tensor]]:
        """The states the reversible backward restarts from, keyed by step: ``saved`` holds the
        forward's anchors as ``p, q, p, q, ...`` in step order; ``final`` is ``(p_T, q_T)``."""
        marks = [t1 for _, t1 in self.segments(seq_len) if self.anchored(t1, seq_len)]
        anchors = {t: (saved[2 * i], saved[2 * i + 1]) for i, t in enumerate(marks)}
        anchors[seq_len] = final
        return anchors


def segment_bounds(seq_len: int, chunk: int, anchor_every: int | None = None) -> list[int]:
    """Segment boundaries ``0 = b_0 < ... < b_K = seq_len``: every multiple of ``chunk`` and of
    ``anchor_every``, so that every anchor ends a segment."""
    marks = set(range(0, seq_len, chunk)) | {seq_len}
    if anchor_every is not None:
        marks |= set(range(0, seq_len, anchor_every))
    return sorted(marks)


@dataclass(frozen=True)
class InputTerm:
    """The input of every step, :math:`u_t`: given whole, or projected :math:`u_t = x_t W^T + b` per segment.

    ``data`` is ``u`` (T, B, n) when ``weight`` is None, else the raw input ``x`` (T, B, d) with
    ``weight`` (n, d) and optional ``bias`` (n,). Projecting inside the scan lets the reversible
    mode recompute ``u`` segment by segment instead of keeping all of it for the backward pass.
    """

    data: Tensor
    weight: Tensor | None
    bias: Tensor | None

    @property
    def projected(self) -> bool:
        return self.weight is not None

    def segment(self, t0: int, t1: int) -> Tensor:
        """:math:`u_{t_0:t_1}`, shape (t1 - t0, B, n)."""
        x = self.data[t0:t1]
        if self.weight is None:
            return x
        length, batch, d = x.shape
        flat = x.reshape(length * batch, d)
        u = flat @ self.weight.T if self.bias is None else torch.addmm(self.bias, flat, self.weight.T)
        return u.view(length, batch, -1)


class InputGrad:
    """Collects the gradient of the input term segment by segment.

    :meth:`buffer` gives the (m, B, n) tensor a segment writes :math:`\\partial L/\\partial u` into:
    a slice of the whole gradient when ``u`` was given (``term`` is None), else a reused chunk
    that :meth:`finish` turns into gradients of ``x``, ``weight`` and ``bias``.
    """

    def __init__(
        self,
        term: InputTerm | None,
        shape: tuple[int, int, int],
        rows: int,
        like: Tensor,
        needs: tuple[bool, ...],
    ) -> None:
        """``shape``: (T, B, n) of u; ``rows``: the longest segment; ``needs``: for (x, weight, bias)."""
        self.term = term
        self.needs_data = needs[0]
        self.grad_data = self.grad_weight = self.grad_bias = None
        if term is None:
            self.grad_data = like.new_empty(shape)
            return
        if needs[0]:
            # contiguous whatever the input's layout (a batch-first input arrives transposed)
            self.grad_data = term.data.new_empty(term.data.shape)
        if needs[1]:
            self.grad_weight = torch.zeros_like(term.weight)
        if needs[2] and term.bias is not None:
            self.grad_bias = torch.zeros_like(term.bias)
        self._chunk = like.new_empty(rows, *shape[1:])

    def buffer(self, t0: int, t1: int) -> Tensor:
        if self.term is None:
            return self.grad_data[t0:t1]
        return self._chunk[: t1 - t0]

    def finish(self, t0: int, t1: int, du: Tensor) -> None:
        if self.term is None:
            return
        x = self.term.data[t0:t1]
        du_flat = du.reshape(-1, du.shape[-1])
        x_flat = x.reshape(-1, x.shape[-1])
        if self.grad_data is not None:
            torch.mm(du_flat, self.term.weight, out=self.grad_data[t0:t1].view(-1, x.shape[-1]))
        if self.grad_weight is not None:
            self.grad_weight.addmm_(du_flat.T, x_flat)
        if self.grad_bias is not None:
            self.grad_bias.add_(du_flat.sum(0))

    def result(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Gradients of (u or x, weight, bias); None where not asked for."""
        return (self.grad_data if self.needs_data else None), self.grad_weight, self.grad_bias


def backward_input(
    data: Tensor | None,
    weight_ih: Tensor | None,
    bias_ih: Tensor | None,
    shape: tuple[int, int, int],
    rows: int,
    like: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[InputTerm | None, InputGrad]:
    """A backward pass's input term (``None`` when the forward saved no input) and the collector of
    its gradient; ``shape`` is (T, B, n) of u, ``needs`` the input-gradient flags of (x, weight, bias)."""
    term = InputTerm(data, weight_ih, bias_ih) if data is not None else None
    return term, InputGrad(term if weight_ih is not None else None, shape, rows, like, needs)


def _check_tensor(name: str, t: Tensor, shape: tuple[int, ...], like: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != like.dtype or t.device != like.device:
        raise TypeError(
            f"{name} must match the state's dtype and device ({like.dtype}, {like.device}), "
            f"got ({t.dtype}, {t.device})"
        )


def check_memory(memory: str, anchor_every: int | None, symplectic: bool) -> tuple[bool, int | None]:
    """Check a memory mode and its anchor interval; returns (reversible, interval or None).

    ``anchor_every=None`` in reversible mode means :data:`DEFAULT_ANCHOR_EVERY`.
    """
    reversible = lookup(MEMORY_MODES, memory, "memory mode")
    if reversible and not symplectic:
        raise ValueError("memory='reversible' needs a symplectic scheme (one with an exact inverse)")
    if anchor_every is None:
        return reversible, DEFAULT_ANCHOR_EVERY if reversible else None
    if not reversible:
        raise ValueError("anchor_every applies only to memory='reversible'")
    if isinstance(anchor_every, bool) or not isinstance(anchor_every, int) or anchor_every < 1:
        raise ValueError(f"anchor_every must be a positive int, got {anchor_every!r}")
    return reversible, anchor_every


def validate_batched_state(p0: Tensor, q0: Tensor) -> tuple[int, int]:
    """Check a scan's initial state, each (batch, hidden); returns ``(batch, hidden)``."""
    validate_state(p0, q0)
    if p0.dim() != 2:
        raise ValueError(f"p0 and q0 must have shape (batch, hidden), got {tuple(p0.shape)}")
    return tuple(p0.shape)


def check_chunk(chunk: int) -> None:
    """Check the segment length of a scan's backward workspace."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")


def validate_scan_inputs(
    u: Tensor,
    p0: Tensor,
    q0: Tensor,
    params: dict[str, tuple[Tensor | None, tuple[int, ...]]],
    weight_ih: Tensor | None,
    bias_ih: Tensor | None,
    step: Tensor | float,
    memory: str,
    anchor_every: int | None,
    chunk: int,
    symplectic: bool,
) -> RunConfig:
    """Check everything a scan receives before any numerics; returns how it will run.

    ``params`` maps each parameter's name to (tensor, expected shape); ``None`` tensors are skipped.
    """
    batch, n = validate_batched_state(p0, q0)
    if not isinstance(u, Tensor):
        raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
    if u.dim() != 3 or u.shape[1] != batch or u.shape[0] < 1:
        raise ValueError(f"u must have shape (seq_len >= 1, batch={batch}, features), got {tuple(u.shape)}")
    if u.dtype != p0.dtype or u.device != p0.device:
        raise TypeError(f"u has ({u.dtype}, {u.device}) but the state has ({p0.dtype}, {p0.device})")
    if weight_ih is None:
        if bias_ih is not None:
            raise ValueError("bias_ih is given without weight_ih")
        if u.shape[2] != n:
            raise ValueError(f"u must have shape (seq_len, {batch}, {n}), got {tuple(u.shape)}")
    else:
        params = {**params, "weight_ih": (weight_ih, (n, u.shape[2])), "bias_ih": (bias_ih, (n,))}
    for name, (t, shape) in params.items():
        if t is not None:
            _check_tensor(name, t, shape, p0)
    validate_step_size(step, like=p0)
    reversible, anchor_every = check_memory(memory, anchor_every, symplectic)
    check_chunk(chunk)
    return RunConfig(reversible=reversible, chunk=chunk, anchor_every=anchor_every)
