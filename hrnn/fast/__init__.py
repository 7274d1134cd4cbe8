"""Fast whole-sequence recurrences of the Hamiltonian cells, with hand-written backward passes.

``hamiltonian_scan`` and ``oscillator_scan`` compute exactly what the cells' plain loops over
:mod:`hrnn.integrators` compute, with the input projection outside the loop, a backward pass
that gathers the parameter gradients of many steps into a few large matrix multiplies, and an
optional reversible mode whose memory does not grow with the sequence length.
"""

from ._common import DEFAULT_CHECKPOINT_EVERY, DEFAULT_CHUNK, MEMORY_MODES, check_memory
from .hamiltonian import PLANS, hamiltonian_scan
from .oscillator import oscillator_scan

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_CHUNK",
    "MEMORY_MODES",
    "PLANS",
    "check_memory",
    "hamiltonian_scan",
    "oscillator_scan",
]
