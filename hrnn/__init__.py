"""hrnn: Hamiltonian neural networks with gradients that cannot vanish by construction."""

from importlib.metadata import PackageNotFoundError, version

from .blocks import ResidualBlock, ResidualStack
from .cells import (
    AntisymmetricCell,
    Capabilities,
    CoRNNCell,
    GatedAntisymmetricCell,
    HamiltonianCell,
    LEMCell,
    OscillatorCell,
    RecurrentCell,
    SelectiveHamiltonianCell,
    SeparableHamiltonianCell,
)
from .hamiltonians import LogCoshHamiltonian, OscillatorHamiltonian
from .hdnn import (
    HamiltonianDNN,
    HDNNClassifier,
    available_hdnns,
    build_hdnn,
    distributed_mask,
    per_node_forward,
    smoothness_regularizer,
)
from .integrators import SCHEMES, Scheme, Substep, get_scheme, integrate
from .linoss import LinOSSRNN
from .models import SequenceModel, available_models, build_model, capabilities
from .reversible import reversible_integrate
from .rnn import (
    LEMRNN,
    AntisymmetricRNN,
    CoRNN,
    GatedAntisymmetricRNN,
    HamiltonianRNN,
    OscillatorRNN,
    RecurrentLayer,
    SelectiveHamiltonianRNN,
)
from .step_size import heuristic_dt

try:
    __version__ = version("hrnn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "LEMRNN",
    "SCHEMES",
    "AntisymmetricCell",
    "AntisymmetricRNN",
    "Capabilities",
    "CoRNN",
    "CoRNNCell",
    "GatedAntisymmetricCell",
    "GatedAntisymmetricRNN",
    "HDNNClassifier",
    "HamiltonianCell",
    "HamiltonianDNN",
    "HamiltonianRNN",
    "LEMCell",
    "LinOSSRNN",
    "LogCoshHamiltonian",
    "OscillatorCell",
    "OscillatorHamiltonian",
    "OscillatorRNN",
    "RecurrentCell",
    "RecurrentLayer",
    "ResidualBlock",
    "ResidualStack",
    "Scheme",
    "SelectiveHamiltonianCell",
    "SelectiveHamiltonianRNN",
    "SeparableHamiltonianCell",
    "SequenceModel",
    "Substep",
    "__version__",
    "available_hdnns",
    "available_models",
    "build_hdnn",
    "build_model",
    "capabilities",
    "distributed_mask",
    "get_scheme",
    "heuristic_dt",
    "integrate",
    "per_node_forward",
    "reversible_integrate",
    "smoothness_regularizer",
]
