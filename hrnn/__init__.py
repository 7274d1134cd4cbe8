"""hrnn: Hamiltonian neural networks with gradients that cannot vanish by construction."""

from importlib.metadata import PackageNotFoundError, version

from .hamiltonians import LogCoshHamiltonian, OscillatorHamiltonian
from .integrators import SCHEMES, Scheme, get_scheme, integrate

try:
    __version__ = version("hrnn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "SCHEMES",
    "LogCoshHamiltonian",
    "OscillatorHamiltonian",
    "Scheme",
    "__version__",
    "get_scheme",
    "integrate",
]
