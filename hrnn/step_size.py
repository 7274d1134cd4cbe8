r"""Choosing the step size ``dt`` of a Hamiltonian RNN from the sequence length.

Derivation (measurements in ``docs/step_size.md``). Linearised around a state, one symplectic
step of a separable energy is :math:`M_t = I + h A_t + O(h^2)` with

.. math::
    A_t = \begin{pmatrix} 0 & -S_q(t) \\ S_p & 0 \end{pmatrix},\qquad
    S_q(t) = K_q^\top D_q(t) K_q,\quad S_p = K_p^\top D_p K_p,

where :math:`D = \operatorname{diag}(1 - \tanh^2(\cdot)) \in [0, 1]`. Its eigenvalues are
:math:`\pm i\omega` with :math:`\omega^2 \in \operatorname{spec}(S_p S_q) \subseteq
[0, \omega_{\max}^2]`, :math:`\omega_{\max} = \|K_p\|_2 \|K_q\|_2`, so ``dt`` only enters as
:math:`h\omega`. Two things can push :math:`\|dL/dh_0\| / \|dL/dh_T\|` out of :math:`[0.1, 10]`:

1. *instability*: symplectic Euler on :math:`\ddot q = -\omega^2 q` is stable only for
   :math:`h\omega < 2` (its eigenvectors degenerate as :math:`h\omega \to 2`);
2. *growth over the sequence*: the input moves :math:`D_q(t)` at every step, so the backward
   product :math:`M_T \cdots M_1` has a largest singular value growing like
   :math:`e^{\lambda T}`; the ratio stays below 10 while :math:`\lambda(h\omega)\, T \lesssim \ln 10`.

If the input's step-to-step fluctuation alone drove the growth, second-order perturbation
theory for products of random matrices would give :math:`\lambda \approx \kappa (h\omega)^2`,
hence :math:`dt \propto T^{-1/2}`; if the slowly varying nonlinear flow were chaotic with
exponent :math:`\lambda_c` per unit time, :math:`\lambda = \lambda_c h\omega` and
:math:`dt \propto T^{-1}`. The measured largest admissible step lies between the two,
:math:`dt^*(T) \approx 12\, T^{-0.755}` for T = 100 .. 10,000, i.e.
:math:`\lambda \propto (h\omega)^{4/3}`. Hence

.. math::
    dt(T) = \frac{1}{\omega_{\max}} \min\big(c_{\text{stable}},\ c\, T^{-3/4}\big),

with :math:`c` (:data:`GROWTH_CONSTANT`) about 80 % of the fitted :math:`dt^*` (a margin for
the spread over seeds) and :math:`c_{\text{stable}}` (:data:`STABLE_FRACTION`) half of
symplectic Euler's stability limit, which binds only for T < 19.
"""

from __future__ import annotations

import math

__all__ = ["GROWTH_CONSTANT", "GROWTH_EXPONENT", "STABLE_FRACTION", "heuristic_dt", "resolve_dt"]

#: :math:`c` of :func:`heuristic_dt`, about 80 % of the fitted largest admissible
#: :math:`h\omega T^{3/4}` at initialisation (docs/step_size.md).
GROWTH_CONSTANT = 9.0
#: The measured exponent of the largest admissible step, :math:`dt^* \propto T^{-3/4}`.
GROWTH_EXPONENT = 0.75
#: Largest :math:`h\omega` used for short sequences: half of symplectic Euler's limit of 2.
STABLE_FRACTION = 1.0


def heuristic_dt(seq_len: int, max_frequency: float = 1.0) -> float:
    r""":math:`dt = \min(c_{\text{stable}}, c\, T^{-3/4}) / \omega_{\max}` (module docstring).

    ``seq_len`` is :math:`T`; ``max_frequency`` is :math:`\omega_{\max}`, the largest
    linearised frequency of the cell's energy (1 for the orthogonal initialisation of
    :class:`hrnn.cells.HamiltonianCell`).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    if not (max_frequency > 0 and math.isfinite(max_frequency)):
        raise ValueError(f"max_frequency must be finite and > 0, got {max_frequency!r}")
    return min(STABLE_FRACTION, GROWTH_CONSTANT * seq_len**-GROWTH_EXPONENT) / max_frequency


def resolve_dt(dt: float | str, seq_len: int | None, max_frequency: float) -> float:
    """A cell's ``dt`` argument as a number: ``dt="auto"`` applies :func:`heuristic_dt` to ``seq_len``.

    A numeric ``dt`` is returned as given (``seq_len`` is then not needed, and ignored).
    """
    if isinstance(dt, str):
        if dt != "auto":
            raise ValueError(f"dt must be a positive number or 'auto', got {dt!r}")
        if seq_len is None:
            raise ValueError("dt='auto' needs seq_len=<the sequence length> to choose the step size")
        return heuristic_dt(seq_len, max_frequency)
    if isinstance(dt, bool) or not isinstance(dt, int | float):
        raise ValueError(f"dt must be a positive number or 'auto', got {dt!r}")
    return float(dt)
