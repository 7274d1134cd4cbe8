"""Fast whole-sequence recurrences of the Hamiltonian cells, with hand-written backward passes.

``hamiltonian_scan``, ``oscillator_scan`` and ``selective_scan`` compute exactly what the cells' plain
loops over :mod:`hrnn.integrators` compute (the log-cosh scan for any scheme plan, with optional per-unit
friction, the oscillator scan for symplectic Euler, the selective cell's scan for symplectic Euler with
stored memory), with the input projection outside the loop, a backward pass
that gathers the parameter gradients of many steps into a few large matrix multiplies, and an
optional reversible mode whose memory does not grow with the sequence length. The selective scan's
loops also exist compiled (C++, built on first use; ``HRNN_COMPILED=0`` turns them off).
"""

from ._common import DEFAULT_ANCHOR_EVERY, DEFAULT_CHUNK, MEMORY_MODES, check_memory
from .hamiltonian import hamiltonian_scan
from .oscillator import oscillator_scan
from .selective import selective_scan

__all__ = [
    "DEFAULT_ANCHOR_EVERY",
    "DEFAULT_CHUNK",
    "MEMORY_MODES",
    "check_memory",
    "hamiltonian_scan",
    "oscillator_scan",
    "selective_scan",
]
