r"""Gradient measurements on the models of :func:`hrnn.models.build_model`.

Every function here uses only the public model and layer API -- ``model.rnn(x, hx) -> (output,
h_n)``, ``model.decode(output, h_n)`` and, on hrnn layers, ``output_index`` (which state part is
emitted) and ``capabilities.canonical`` (the state is a pair (p, q)) -- so it works for the hrnn layers and torch's
LSTM / GRU / RNN alike.
To reach the state between two steps, the layer is run one step at a time, carrying ``h_n``
into the next call as ``hx``; that is the same computation as one call on the whole sequence.

The *state* :math:`h_t` is the layer's full ``h_n`` after step ``t`` (``t = 0`` is the initial
zero state): ``(p, q)`` for the Hamiltonian layers, ``(z, y)`` for coRNN, ``(h, c)`` for LSTM,
``h`` otherwise, with every layer of a stacked model included. Norms of a state are
Frobenius norms over all its parts, layers, batch entries and features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .cells import check_input, state_parts
from .hamiltonians import canonical_j
from .models import build_model

__all__ = [
    "BackwardSensitivity",
    "backward_sensitivity",
    "global_gradient_norm",
    "hidden_state_gradient_norms",
    "initial_gradient_profile",
    "parameter_gradient_norms",
    "run_stepwise",
]

StateParts = tuple[Tensor, ...]
StateHook = Callable[[int, StateParts], StateParts]


def _pack(parts: StateParts) -> Tensor | StateParts:
    return parts if len(parts) > 1 else parts[0]


def _validate(model: nn.Module, x: Tensor) -> None:
    """The checks of ``model``'s own forward, for the batch-first ``x`` (batch, T, input_size)."""
    check_input(x, model.rnn.input_size, {3: "(batch, T, input_size)"}, next(model.parameters()))


def _step_input(rnn: nn.Module, x: Tensor, t: int) -> Tensor:
    """Step ``t`` of batch-first ``x`` (batch, T, in) as a one-step sequence in ``rnn``'s layout."""
    step = x[:, t : t + 1]
    return step if rnn.batch_first else step.transpose(0, 1)


def run_stepwise(rnn: nn.Module, x: Tensor, hook: StateHook | None = None) -> tuple[Tensor, StateParts]:
    """Run a layer over batch-first ``x`` (batch, T, input_size) one step at a time.

    ``hook(t, state)`` sees the state parts after ``t`` steps (``t = 0..T``, ``t = 0`` the zero
    initial state) and returns the state to carry on with -- e.g. with zero probes added, whose
    gradients are then :math:`dL/dh_t`. The output at step ``t`` is read from the returned state
    (the last layer's emitted part), so it sees the hook too.
    Returns ``(output (batch, T, hidden_size), final state parts)``.
    """
    if getattr(rnn, "bidirectional", False):
        raise ValueError(
            "run_stepwise needs a unidirectional layer: a bidirectional one reads the whole sequence"
        )
    # hrnn layers name their emitted part; torch's RNN / GRU / LSTM emit h, their first part.
    emitted = getattr(rnn, "output_index", 0)
    with torch.no_grad():  # one throw-away step tells the form of the state (hx=None means zeros)
        _, template = rnn(_step_input(rnn, x, 0))
    state = tuple(torch.zeros_like(s) for s in state_parts(template))
    if hook is not None:
        state = hook(0, state)
    outputs = []
    for t in range(x.shape[1]):
        step = _step_input(rnn, x, t)
        _, h = rnn(step, _pack(state))
        state = state_parts(h)
        if hook is not None:
            state = hook(t + 1, state)
        if emitted is None:  # a residual stack emits a function of its states (hrnn.blocks)
            outputs.append(rnn.output_from_states(step, _pack(state))[:, -1])
        else:
            outputs.append(state[emitted][-1])
    return torch.stack(outputs, dim=1), state


def hidden_state_gradient_norms(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    r""":math:`\|dL/dh_t\|_F` for ``t = 0..T``: shape (T + 1,).

    ``model`` is a :class:`hrnn.models.SequenceModel`, ``x`` (batch, T, input_size), ``y`` the
    target of ``loss_fn(model(x), y)``. Zero probes are added to each state; their gradients are
    :math:`dL/dh_t`. Parameters and their ``.grad`` are left untouched. Dropout follows the
    model's mode (call ``model.eval()`` for a deterministic measurement).
    """
    _validate(model, x)
    probes: list[StateParts] = []

    def add_probe(t: int, state: StateParts) -> StateParts:
        probe = tuple(torch.zeros_like(s, requires_grad=True) for s in state)
        probes.append(probe)
        return tuple(s + z for s, z in zip(state, probe, strict=True))

    with torch.enable_grad():
        output, final = run_stepwise(model.rnn, x, add_probe)
        loss = loss_fn(model.decode(output, final), y)
        flat = [z for probe in probes for z in probe]
        # A part the loss does not reach (p_T under a read-out of q_T) has a zero gradient.
        grads = torch.autograd.grad(loss, flat, allow_unused=True, materialize_grads=True)
    parts = len(grads) // len(probes)
    return torch.stack([_norm(grads[i : i + parts]) for i in range(0, len(grads), parts)])


def _norm(tensors: StateParts) -> Tensor:
    """Frobenius norm over all ``tensors``, scaled by the largest entry first.

    Summing raw squares would give 0 for norms below about 1e-154 in float64 (the squares
    underflow), although such gradients, e.g. LSTM's 1000 steps back, are still representable.
    """
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    scale = flat.abs().max()
    if scale == 0:
        return scale
    return scale * (flat / scale).pow(2).sum().sqrt()


def initial_gradient_profile(
    name: str,
    seq_len: int,
    *,
    input_size: int = 4,
    hidden_size: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    **model_kw,
) -> Tensor:
    r""":math:`\|dL/dh_t\| / \|dL/dh_T\|` for ``t = 0..T`` of a freshly initialised model, float64.

    The model is ``build_model(name, input_size, hidden_size, 1, num_blocks=0, readout="last",
    **model_kw)`` (the bare layer, unless ``model_kw`` says otherwise) drawn after
    ``torch.manual_seed(seed)``; the input is standard normal (batch_size, seq_len, input_size),
    the loss the MSE of the last-step read-out to standard normal targets. ``dt="auto"`` in
    ``model_kw`` is resolved for ``seq_len``. Entry 0 is the ratio
    :math:`\|dL/dh_0\| / \|dL/dh_T\|` that ``docs/step_size.md`` tabulates.
    """
    if model_kw.get("dt") == "auto":
        model_kw["seq_len"] = seq_len
    torch.manual_seed(seed)
    model = build_model(name, input_size, hidden_size, 1, **{"num_blocks": 0, "readout": "last", **model_kw})
    x = torch.randn(batch_size, seq_len, input_size)
    y = torch.randn(batch_size, 1)
    norms = hidden_state_gradient_norms(model, x, y, torch.nn.functional.mse_loss).double()
    return norms / norms[-1]


def parameter_gradient_norms(model: nn.Module) -> dict[str, float]:
    """``{name: ||p.grad||_2}`` for every parameter that has a gradient (after ``backward``)."""
    return {name: float(p.grad.norm()) for name, p in model.named_parameters() if p.grad is not None}


def global_gradient_norm(model: nn.Module) -> float:
    """The 2-norm of all parameter gradients together (what ``clip_grad_norm_`` clips); 0 if none."""
    squares = [p.grad.detach().pow(2).sum() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


@dataclass(frozen=True)
class BackwardSensitivity:
    r"""``norms[t]`` :math:`= \|dy_T/dy_t\|_2` for ``t = 0..T`` (``norms[T] = 1``), float64.

    ``symplecticity_error[t]`` :math:`= \|M_t^\top J M_t - J\|_F` with :math:`M_t = dy_T/dy_t` and
    :math:`J` = :func:`hrnn.hamiltonians.canonical_j`, for layers whose state is a canonical
    pair (p, q); ``None`` for the others.
    """

    norms: Tensor
    symplecticity_error: Tensor | None


def backward_sensitivity(model: nn.Module, x: Tensor) -> BackwardSensitivity:
    r"""Backward sensitivity of a single-layer model's state on one sequence.

    ``x`` is one sequence, (T, input_size) or (1, T, input_size). The step Jacobians
    :math:`J_t = dy_{t+1}/dy_t` are computed all at once by running the T steps as a batch of T
    one-step sequences from the recorded states; then :math:`M_t = M_{t+1} J_t` backwards from
    :math:`M_T = I`, in float64.
    """
    rnn = model.rnn
    if getattr(rnn, "num_layers", 1) != 1:
        raise ValueError(f"backward_sensitivity needs a single-layer model, got num_layers={rnn.num_layers}")
    if isinstance(x, Tensor) and x.dim() == 2:
        x = x.unsqueeze(0)
    _validate(model, x)
    if x.shape[0] != 1:
        raise ValueError(
            f"expected one sequence of shape (T, input_size) or (1, T, input_size), got {tuple(x.shape)}"
        )
    states: list[StateParts] = []

    def record(t: int, state: StateParts) -> StateParts:
        states.append(tuple(s.detach() for s in state))
        return state

    with torch.no_grad():
        run_stepwise(rnn, x, record)
    n_steps = x.shape[1]
    # State y_t of step t becomes batch entry t; each part is (1, batch = T, n).
    start = tuple(torch.cat(parts, dim=1).requires_grad_() for parts in zip(*states[:-1], strict=True))
    steps = x.transpose(0, 1)
    with torch.enable_grad():
        _, h = rnn(steps if rnn.batch_first else steps.transpose(0, 1), _pack(start))
        end = torch.cat([part[0] for part in state_parts(h)], dim=-1)
        width = end.shape[-1]
        rows = []
        for i in range(width):
            grads = torch.autograd.grad(
                end[:, i].sum(), start, retain_graph=i + 1 < width, allow_unused=True, materialize_grads=True
            )
            rows.append(torch.cat([g[0] for g in grads], dim=-1))
    jacobians = torch.stack(rows, dim=1).double()  # (T, width, width)
    canonical = getattr(getattr(rnn, "capabilities", None), "canonical", False)
    J = canonical_j(width // 2, dtype=torch.float64) if canonical else None
    M = torch.eye(width, dtype=torch.float64)
    norms = [torch.ones((), dtype=torch.float64)]
    errors = [torch.zeros((), dtype=torch.float64)]
    for t in range(n_steps - 1, -1, -1):
        M = M @ jacobians[t]
        norms.append(torch.linalg.matrix_norm(M, ord=2))
        if J is not None:
            errors.append(torch.linalg.matrix_norm(M.T @ J @ M - J))
    return BackwardSensitivity(
        norms=torch.stack(norms[::-1]),
        symplecticity_error=torch.stack(errors[::-1]) if J is not None else None,
    )
