r"""Recurrent cells: one layer's parameters and its step equation.

* :mod:`hrnn.cells.base`: :class:`RecurrentCell` (input projection, single-step ``forward``, the
  reference ``scan``) and :class:`Capabilities`;
* :mod:`hrnn.cells.hamiltonian`: the Hamiltonian family, (energy, scheme, step size), with its
  reversible memory and registered fast scans;
* :mod:`hrnn.cells.baselines`: coRNN and the antisymmetric RNNs; :mod:`hrnn.cells.lem`: LEM;
  :mod:`hrnn.cells.selective`: the log-cosh cell with input-chosen timescales.
"""

from ..validation import check_input, check_state
from .base import Capabilities, RecurrentCell, State, state_parts
from .baselines import AntisymmetricCell, CoRNNCell, GatedAntisymmetricCell
from .hamiltonian import ACCELERATIONS, HamiltonianCell, OscillatorCell, SeparableHamiltonianCell
from .lem import LEMCell
from .selective import SelectiveHamiltonianCell

__all__ = [
    "ACCELERATIONS",
    "AntisymmetricCell",
    "Capabilities",
    "CoRNNCell",
    "GatedAntisymmetricCell",
    "HamiltonianCell",
    "LEMCell",
    "OscillatorCell",
    "RecurrentCell",
    "SelectiveHamiltonianCell",
    "SeparableHamiltonianCell",
    "State",
    "check_input",
    "check_state",
    "state_parts",
]
