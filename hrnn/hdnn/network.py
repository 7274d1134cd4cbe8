r"""The H-DNN itself (:class:`HamiltonianDNN`, :func:`build_hdnn`): a variant's layers stepped in
depth, stored or reversible in memory (:data:`MEMORY_MODES`), with their inverse and energies."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..hamiltonians import LogCoshHamiltonian, coupling_j
from ..integrators import Scheme, StepFunction, get_scheme
from ..reversible import reversible_integrate
from ..validation import check_size, lookup
from .conventions import CONVENTIONS, J_MATRICES, ORDERS, Convention
from .regularizer import smoothness_regularizer
from .structures import HALVES
from .variants import HDNN_VARIANTS, HDNNVariant

# memory mode -> whether the backward recomputes the states by the exact inverse instead of storing them
MEMORY_MODES: dict[str, bool] = {"stored": False, "reversible": True}


class HamiltonianDNN(nn.Module):
    r"""A depth-``depth`` H-DNN on states ``y`` of width ``n_features``.

    Layer :math:`j` maps :math:`y_j \mapsto y_{j+1}` by one step of size :math:`h = t_{end}/N` of
    the variant's field with :math:`K_j, b_j` and its scheme (:mod:`hrnn.hdnn`). ``j`` and
    ``scheme`` override the variant's defaults (a split scheme needs :math:`K` acting on the
    halves and, for the Hamiltonian field, :math:`J = [[0, -X^\top], [X, 0]]`); ``mask`` (n, n)
    fixes zeros of every :math:`K_j` (:func:`distributed_mask`). ``convention`` (:data:`CONVENTIONS`)
    picks the update order of the halves and H1's default :math:`J`. ``memory="reversible"``
    recomputes the states backwards by the exact inverse steps instead of storing them (schemes with
    an exact inverse only; ``anchor_every`` stores every so many states to bound round-off drift).

    Shape: input ``(*, n_features)``, output ``(*, n_features)``, the final state :math:`y_N`.
    Parameters: ``weight`` (depth, n, n), the raw :math:`K_j` before the structure is applied
    (:math:`\mathcal N(0, \mathrm{init\_std}^2)`), and ``bias`` (depth, n)
    (:math:`\mathcal N(0, \mathrm{bias\_std}^2)`).
    """

    def __init__(
        self,
        n_features: int,
        depth: int,
        t_end: float = 1.0,
        variant: str = "H2",
        *,
        j: str | None = None,
        scheme: str | None = None,
        convention: str = "hrnn",
        mask: Tensor | None = None,
        init_std: float = 1.0,
        bias_std: float = 0.0,
        memory: str = "stored",
        anchor_every: int | None = None,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.variant: HDNNVariant = lookup(HDNN_VARIANTS, variant, "H-DNN variant")
        self.convention: Convention = lookup(CONVENTIONS, convention, "convention")
        self.structure, self.field = self.variant.structure, self.variant.field
        self.j_name = self._resolve_j(j)
        self.scheme: Scheme = get_scheme(scheme or self.variant.scheme)
        self._validate_numbers(n_features, depth, t_end, init_std, bias_std)
        J, self.split, X = self._validate_structure(n_features, mask, device)
        self.reversible = self._validate_memory(memory, anchor_every)
        self.memory, self.anchor_every = memory, anchor_every
        self.n_features, self.depth, self.t_end = n_features, depth, float(t_end)
        self.h = self.t_end / depth
        self.init_std, self.bias_std = init_std, bias_std
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.weight = nn.Parameter(torch.empty(depth, n_features, n_features, **factory))
        self.bias = nn.Parameter(torch.empty(depth, n_features, **factory))
        self.register_buffer("J", None if J is None else J.to(**factory))
        self.register_buffer("X", None if X is None else X.to(**factory))
        self.register_buffer("mask", None if mask is None else mask.to(**factory))
        self.reset_parameters()

    @staticmethod
    def _validate_numbers(n: int, depth: int, t_end: float, init_std: float, bias_std: float) -> None:
        check_size("n_features", n)
        check_size("depth", depth)
        if not (isinstance(t_end, (int, float)) and 0 < t_end < math.inf):
            raise ValueError(f"t_end must be finite and > 0 (the step is h = t_end / depth), got {t_end!r}")
        for name, value in (("init_std", init_std), ("bias_std", bias_std)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def _resolve_j(self, j: str | None) -> str | None:
        if self.field.uses_j:
            return j or self.convention.j.get(self.variant.name, self.variant.j)
        if j is not None:
            raise ValueError(
                f"{self.variant.name} has no J (its field is {self.field.equation}); leave j unset"
            )
        return None

    def _validate_structure(
        self, n: int, mask: Tensor | None, device
    ) -> tuple[Tensor | None, bool, Tensor | None]:
        r"""Check the structure, :math:`J`, scheme and mask; return :math:`J` (``None`` for a field
        without one), whether the layers are split steps on ``(p, q)`` and then :math:`X` of
        :math:`J = [[0, -X^\top], [X, 0]]` (``None`` for the identity or without a split)."""
        halves = self.structure.halves
        if halves is not None and n % 2:
            raise ValueError(
                f"{self.variant.name} splits the state into (p, q) halves and needs an even "
                f"n_features, got {n}"
            )
        if mask is not None and mask.shape != (n, n):
            raise ValueError(f"mask must have shape ({n}, {n}), got {tuple(mask.shape)}")
        J = X = None
        # tanh(K y + b) splits into the halves' maps only when K couples them (anti-block-diagonal)
        splits = halves == "anti_diagonal"
        if self.field.uses_j:
            J = lookup(J_MATRICES, self.j_name, "J")(n, dtype=torch.float64, device=device)
            X = J[n // 2 :, : n // 2]
            splits = halves is not None and torch.equal(J, coupling_j(X))
        if not splits:
            if self.scheme.name != "euler":
                raise ValueError(
                    f"scheme {self.scheme.name!r} steps (p, q) halves: it needs K split into "
                    f"(p, q) halves and J = [[0, -X^T], [X, 0]]; {self.variant.name} has K "
                    f"{self.structure.name!r} and J {self.j_name!r}. Use scheme 'euler' or one of "
                    f"{[v.name for v in HDNN_VARIANTS.values() if v.structure.halves]}"
                )
            return J, False, None
        if X is None or torch.equal(X, torch.eye(n // 2, dtype=X.dtype, device=X.device)):
            return J, True, None
        return J, True, X

    def _validate_memory(self, memory: str, anchor_every: int | None) -> bool:
        reversible = lookup(MEMORY_MODES, memory, "memory mode")
        if reversible and self.scheme.inverse is None:
            raise ValueError(
                f"memory='reversible' recomputes states by the exact inverse step, and scheme "
                f"{self.scheme.name!r} of {self.variant.name} has none; use memory='stored' or one of "
                f"{[v.name for v in HDNN_VARIANTS.values() if get_scheme(v.scheme).inverse]}"
            )
        if anchor_every is not None:
            if not reversible:
                raise ValueError("anchor_every applies only to memory='reversible'")
            check_size("anchor_every", anchor_every)
        return reversible

    def reset_parameters(self) -> None:
        r"""Raw weights :math:`\sim \mathcal N(0, \mathrm{init\_std}^2)`, biases :math:`\sim \mathcal N(0, \mathrm{bias\_std}^2)`."""
        nn.init.normal_(self.weight, std=self.init_std)
        if self.bias_std:
            nn.init.normal_(self.bias, std=self.bias_std)
        else:  # draws nothing: seeded runs with zero biases keep their random stream
            nn.init.zeros_(self.bias)

    def layer_weights(self) -> Tensor:
        """Every layer's structured (and masked) :math:`K_j`, shape (depth, n, n)."""
        K = self.structure.build(self.weight)
        return K if self.mask is None else K * self.mask

    def layer_hamiltonians(self) -> LogCoshHamiltonian:
        """Every layer's separable energy, stacked: ``K_p``, ``K_q`` (depth, n/2, n/2), biases (depth, n/2).

        Layer ``k``'s energy is the same record with each field indexed by ``k``.
        """
        if not self.split or not self.field.uses_j:
            raise ValueError(f"{self.variant.name} with scheme {self.scheme.name!r} has no separable energy")
        K_p, b_p, K_q, b_q = HALVES[self.structure.halves](self.layer_weights(), self.bias)
        return LogCoshHamiltonian(K_p, K_q, b_p, b_q, X=self.X)

    def regularizer(self, alpha: float) -> Tensor:
        """:func:`smoothness_regularizer` of this network's layers."""
        return smoothness_regularizer(self.layer_weights(), self.bias, self.h, alpha)

    def _check_state(self, y: Tensor) -> None:
        if not isinstance(y, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() == 0 or y.shape[-1] != self.n_features:
            raise ValueError(f"expected input of shape (*, {self.n_features}), got {tuple(y.shape)}")
        if y.dtype != self.weight.dtype:
            raise TypeError(
                f"input has dtype {y.dtype} but the parameters have {self.weight.dtype}; "
                "convert one of them (e.g. model.to(input.dtype))"
            )
        if y.device != self.weight.device:
            raise ValueError(f"input is on {y.device} but the parameters are on {self.weight.device}")

    # One layer is step(k, state, layer, params) on a state tuple, with `layer` the k-th slice of
    # layer_inputs(): the stored loop, the inverse and the reversible backward all run it.

    def layer_inputs(self) -> tuple[Tensor, ...]:
        """The per-layer tensors a step reads, each with leading dimension ``depth``:
        ``(K_p, b_p, K_q, b_q)`` for split steps, ``(K, b)`` otherwise."""
        K = self.layer_weights()
        return HALVES[self.structure.halves](K, self.bias) if self.split else (K, self.bias)

    def _params(self) -> tuple[Tensor, ...]:
        """The constant tensors a step reads: :math:`X` for a coupled split step, :math:`J` for a
        whole-state Hamiltonian step, none otherwise."""
        matrix = self.X if self.split else self.J
        return () if matrix is None else (matrix,)

    def _to_state(self, y: Tensor) -> tuple[Tensor, ...]:
        m = self.n_features // 2
        return (y[..., :m], y[..., m:]) if self.split else (y,)

    def _from_state(self, state: tuple[Tensor, ...]) -> Tensor:
        return torch.cat(state, -1) if self.split else state[0]

    def _split_step(self, step: StepFunction, state, layer, params) -> tuple[Tensor, Tensor]:
        grad_v, grad_t = self.field.split(*layer, *params)
        return ORDERS[self.convention.first](step, *state, grad_v, grad_t, self.h)

    def step(
        self, k: int, state: tuple[Tensor, ...], layer: tuple[Tensor, ...], params
    ) -> tuple[Tensor, ...]:
        """Layer ``k``: the next state from ``state`` (:meth:`layer_inputs` sliced at ``k``)."""
        if self.split:
            return self._split_step(self.scheme.step, state, layer, params)
        K, b = layer
        (y,) = state
        return (y + self.h * self.field.full(y, K, b, *params),)

    def inverse_step(self, k: int, state, layer, params) -> tuple[Tensor, ...]:
        """The exact inverse of :meth:`step` (schemes with an inverse only)."""
        return self._split_step(self.scheme.inverse, state, layer, params)

    def _run(self, y: Tensor, inverse: bool, return_states: bool):
        self._check_state(y)
        state, params = self._to_state(y), self._params()
        # unbind once: its backward is one stack, where indexing K[k] would cost a full-size zero gradient per layer
        layers = list(zip(*(x.unbind(0) for x in self.layer_inputs()), strict=True))
        order = range(self.depth - 1, -1, -1) if inverse else range(self.depth)
        step = self.inverse_step if inverse else self.step
        states = [y]
        for k in order:
            state = step(k, state, layers[k], params)
            if return_states:
                states.append(self._from_state(state))
        out = self._from_state(state)
        return (out, torch.stack(states)) if return_states else out

    def forward(self, y: Tensor, return_states: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The final state :math:`y_N` from the input state :math:`y_0`, both (*, n_features).

        With ``return_states=True``: ``(y_N, states)``, ``states`` (depth + 1, *, n_features)
        holding :math:`y_0, \\dots, y_N`.
        """
        if self.reversible and torch.is_grad_enabled():
            return self._reversible(y, return_states)
        return self._run(y, inverse=False, return_states=return_states)

    def inverse(self, y: Tensor) -> Tensor:
        """:math:`y_0` from :math:`y_N` by the scheme's exact inverse steps."""
        if self.scheme.inverse is None:
            raise ValueError(f"scheme {self.scheme.name!r} of {self.variant.name} has no exact inverse")
        return self._run(y, inverse=True, return_states=False)

    def _reversible(self, y: Tensor, return_states: bool):
        self._check_state(y)
        emit = self._from_state if return_states else None
        emitted, state = reversible_integrate(
            self.step,
            self.inverse_step,
            self._to_state(y),
            self.depth,
            xs=self.layer_inputs(),
            params=self._params(),
            anchor_every=self.anchor_every,
            emit=emit,
        )
        out = self._from_state(state)
        return (out, torch.cat([y.unsqueeze(0), emitted])) if return_states else out

    def extra_repr(self) -> str:
        return (
            f"{self.variant.name}, n_features={self.n_features}, depth={self.depth}, t_end={self.t_end}, "
            f"J={self.j_name}, scheme={self.scheme.name}, convention={self.convention.name}, "
            f"memory={self.memory}, masked={self.mask is not None}"
        )


def build_hdnn(name: str, n_features: int, depth: int, t_end: float = 1.0, **kwargs) -> HamiltonianDNN:
    """A :class:`HamiltonianDNN` of variant ``name`` (one of :func:`available_hdnns`)."""
    return HamiltonianDNN(n_features, depth, t_end, variant=name, **kwargs)
