"""The compiled loops of the selective scan (``csrc/selective.cpp``), built once on first use by
torch's C++ extension tools and cached by them (``torch.utils.cpp_extension.get_default_build_root()``).

Where they cannot be built (no C++ compiler, say) :func:`selective_kernel` warns once and returns
None, and the scan runs its PyTorch loops, which compute the same. ``HRNN_COMPILED=0`` in the
environment turns the compiled loops off."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

__all__ = ["ENV_SWITCH", "selective_kernel"]

SOURCE = Path(__file__).with_name("csrc") / "selective.cpp"
NAME = "hrnn_selective_scan"
ENV_SWITCH = "HRNN_COMPILED"
# portable code: the cache may be shared by machines with different CPUs
FLAGS = ["-O3"]

log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether the environment allows the compiled loops (``HRNN_COMPILED`` unset or not ``0``)."""
    return os.environ.get(ENV_SWITCH, "1") != "0"


@functools.cache
def selective_kernel() -> ModuleType | None:
    """The compiled module (``forward``, ``backward``), or None where it is off or cannot be built."""
    if not enabled():
        return None
    # torch's extension tools log a CUDA notice at import that says nothing about a CPU build
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", cpp_extension.get_default_build_root()))
        if not any(root.glob(f"*/{NAME}/{NAME}.so")):
            log.warning("hrnn: compiling the selective scan's C++ loops once (about a minute) under %s", root)
        return cpp_extension.load(name=NAME, sources=[str(SOURCE)], extra_cflags=FLAGS, verbose=False)
    except Exception as error:  # any failure to build means: use the PyTorch loops
        warnings.warn(
            f"hrnn: the selective scan's C++ loops could not be built ({type(error).__name__}: {error}); "
            f"using its PyTorch loops, which compute the same more slowly (set {ENV_SWITCH}=0 to skip the attempt)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
