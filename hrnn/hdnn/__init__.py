r"""Feed-forward Hamiltonian deep neural networks (H-DNNs).

Galimberti, Furieri, Xu & Ferrari-Trecate, "Hamiltonian Deep Neural Networks Guaranteeing
Non-vanishing Gradients by Design", IEEE TAC 2023, and "A unified framework for Hamiltonian
deep neural networks" (L4DC 2021). A network of depth :math:`N` integrates

.. math::
    \dot y = J K(t)^\top \tanh(K(t) y + b(t)), \qquad t \in [0, t_{end}],

with :math:`N` steps of size :math:`h = t_{end} / N`; layer :math:`j` uses its own
:math:`K_j, b_j` (stacked parameters ``weight`` (N, n, n) and ``bias`` (N, n)). The variants
differ in how :math:`K_j` is built from ``weight``, in the field, :math:`J` and the scheme
(:data:`HDNN_VARIANTS`):

========  ============================  ===============================  =================
name      :math:`K_j`                   field                            scheme
========  ============================  ===============================  =================
H1        full                          :math:`J K^\top \sigma(Ky+b)`    forward Euler
H2        blockdiag(K_p, K_q)           :math:`J K^\top \sigma(Ky+b)`    symplectic Euler
MS1       [[0, K_0], [-K_0^T, 0]]       :math:`\sigma(Ky+b)` (J K = I)   (p, q) halves
MS2       skew-symmetric                :math:`\sigma(Ky+b)` (J K = I)   forward Euler
MS3       [[0, K_1], [K_2, 0]]          :math:`J_1 K^\top \sigma(Ky+b)`  symplectic Euler
H1_skew   skew-symmetric                :math:`J_1 K^\top \sigma(Ky+b)`  forward Euler
MS3_tied  [[0, K_0], [-K_0^T, 0]]       :math:`J_1 K^\top \sigma(Ky+b)`  symplectic Euler
========  ============================  ===============================  =================

MS1 and MS2 are Haber & Ruthotto's (2017) Hamiltonian-inspired and antisymmetric networks (the
papers' special cases with :math:`J K = I`), MS3 Chang et al.'s (2018) two-layer Hamiltonian
network. H1_skew and MS3_tied are H-DNNs whose :math:`K` has MS2's and MS1's structure (MS3_tied is
MS3 with :math:`K_2 = -K_1^\top`). For block-diagonal and anti-block-diagonal :math:`K` the state
splits into halves ``y = (p, q)`` and each layer is one step of a split scheme of
:mod:`hrnn.integrators` on the maps ``grad_v``, ``grad_t`` (:data:`FIELDS`); a full or skew
:math:`K` is integrated with forward Euler on the whole state.

A :class:`Convention` (:data:`CONVENTIONS`) fixes what the seed papers leave open: which half a
split step updates first, H1's default :math:`J` and where a classifier places its input.
``"reference"`` reproduces the authors' public code (docs/hdnn.md gives the weight mapping).

The package's modules: :mod:`~hrnn.hdnn.structures` (:math:`K_j` from a raw weight),
:mod:`~hrnn.hdnn.fields` (the vector fields), :mod:`~hrnn.hdnn.conventions`,
:mod:`~hrnn.hdnn.variants`, :mod:`~hrnn.hdnn.network` (:class:`HamiltonianDNN`),
:mod:`~hrnn.hdnn.regularizer`, :mod:`~hrnn.hdnn.distributed` and :mod:`~hrnn.hdnn.classifier`.
"""

from .classifier import HDNNClassifier
from .conventions import CONVENTIONS, J_MATRICES, PLACEMENTS, Convention
from .distributed import distributed_mask, per_node_forward
from .fields import FIELDS, Field
from .network import MEMORY_MODES, HamiltonianDNN, build_hdnn
from .regularizer import smoothness_regularizer
from .structures import Structure
from .variants import HDNN_VARIANTS, HDNNVariant, available_hdnns

__all__ = [
    "CONVENTIONS",
    "FIELDS",
    "HDNN_VARIANTS",
    "J_MATRICES",
    "MEMORY_MODES",
    "PLACEMENTS",
    "Convention",
    "Field",
    "HDNNClassifier",
    "HDNNVariant",
    "HamiltonianDNN",
    "Structure",
    "available_hdnns",
    "build_hdnn",
    "distributed_mask",
    "per_node_forward",
    "smoothness_regularizer",
]
