"""The H-DNN families by name (:data:`HDNN_VARIANTS`): each one's structure of :math:`K_j`, field,
default :math:`J` and scheme, and the paper it comes from."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import FIELDS, Field
from .structures import STRUCTURES, Structure


@dataclass(frozen=True)
class HDNNVariant:
    """One H-DNN family: the structure of :math:`K_j`, the field, the default :math:`J` and scheme."""

    name: str
    structure: Structure
    field: Field
    j: str
    scheme: str
    reference: str


_FULL, _SKEW, _ANTI = STRUCTURES["full"], STRUCTURES["skew"], STRUCTURES["hamiltonian_inspired"]
_HAM, _DIRECT = FIELDS["hamiltonian"], FIELDS["direct"]

HDNN_VARIANTS: dict[str, HDNNVariant] = {
    v.name: v
    for v in (
        HDNNVariant("H1", _FULL, _HAM, "J1", "euler", "Galimberti et al. 2023, H1"),
        HDNNVariant(
            "H2",
            STRUCTURES["block_diagonal"],
            _HAM,
            "canonical",
            "symplectic_euler",
            "Galimberti et al. 2023, H2",
        ),
        HDNNVariant(
            "MS1", _ANTI, _DIRECT, "J1", "symplectic_euler", "Haber & Ruthotto 2017, Hamiltonian-inspired"
        ),
        HDNNVariant("MS2", _SKEW, _DIRECT, "J1", "euler", "Haber & Ruthotto 2017, antisymmetric network"),
        HDNNVariant(
            "MS3",
            STRUCTURES["two_layer"],
            _HAM,
            "J1",
            "symplectic_euler",
            "Chang et al. 2018, two-layer Hamiltonian network",
        ),
        HDNNVariant("H1_skew", _SKEW, _HAM, "J1", "euler", "H1 with a skew-symmetric K"),
        HDNNVariant("MS3_tied", _ANTI, _HAM, "J1", "symplectic_euler", "MS3 with K_2 = -K_1^T"),
    )
}


def available_hdnns() -> list[str]:
    """Names accepted by :func:`build_hdnn`, sorted."""
    return sorted(HDNN_VARIANTS)
