r"""The 2-D binary classification sets of the H-DNN papers (Haber & Ruthotto 2017; Galimberti et al. 2023).

Every generator is a pure function of ``(n, noise, generator)`` returning points ``(n, 2)``
float32 and labels ``(n,)`` int64 (classes 0 and 1, ``n // 2`` and ``n - n // 2`` points):

- ``swiss_roll``: two interleaved spiral arms, :math:`r = r_0 + (r_1 - r_0) s`, angle
  :math:`\theta = \theta_{max} s` (class 0) or :math:`\theta_{max} s + \pi` (class 1), ``s ~ U(0, 1)``;
- ``double_circles``: concentric circles of radii 0.5 (class 0) and 1 (class 1);
- ``double_moons``: the two interleaved half circles of unit radius (as scikit-learn's
  ``make_moons``), centred on the origin;
- ``swiss_roll_reference`` and ``double_circles_reference``: the sets of the authors' public code
  (DecodEPFL/HamiltonianNet). Swiss roll: two arms of :data:`REFERENCE_SWISS_ROLL_TURNS` turns at
  the same angles :math:`\theta_k = 4\pi k / c`, radii :math:`r_k = k / (c - 1)` (class 1) and
  :math:`0.2 + k / (c - 1)` (class 0), ``c`` points per arm, no randomness. Double circles: four
  rings of radii :data:`REFERENCE_RING_RADII` with alternating classes (0, 1, 0, 1), angles
  :math:`4 \cdot 3.14\, i / c` (as the reference writes them), each coordinate jittered by
  :math:`U(-0.3, 0.3)`.

Gaussian noise of standard deviation ``noise`` is added to both coordinates (default 0 for the
reference sets, as in the reference).
:func:`load_toy2d` draws the train and test sets from one seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "CIRCLE_RADII",
    "MOONS_CENTRE",
    "REFERENCE_RING_JITTER",
    "REFERENCE_RING_RADII",
    "REFERENCE_SWISS_ROLL_OFFSET",
    "REFERENCE_SWISS_ROLL_TURNS",
    "SWISS_ROLL_RADII",
    "SWISS_ROLL_TURNS",
    "TOY2D",
    "available_toy2d",
    "double_circles",
    "double_circles_reference",
    "double_moons",
    "load_toy2d",
    "swiss_roll",
    "swiss_roll_reference",
]

SWISS_ROLL_RADII = (0.2, 1.0)
SWISS_ROLL_TURNS = 1.5
CIRCLE_RADII = (0.5, 1.0)
MOONS_CENTRE = (0.5, 0.25)
REFERENCE_SWISS_ROLL_TURNS = 2
REFERENCE_SWISS_ROLL_OFFSET = 0.2  # class 0's arm lies this much further out than class 1's
REFERENCE_RING_RADII = (1.0, 2.0, 3.0, 4.0)  # classes 0, 1, 0, 1
REFERENCE_RING_JITTER = 0.3  # half-width of the uniform jitter of each coordinate

Generator2D = Callable[[int, float, torch.Generator], tuple[Tensor, Tensor]]


def _labels(n: int) -> Tensor:
    return (torch.arange(n) >= n // 2).long()


def _with_noise(x: Tensor, noise: float, generator: torch.Generator) -> Tensor:
    return x + noise * torch.randn(x.shape, generator=generator)


def swiss_roll(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two spiral arms of :data:`SWISS_ROLL_TURNS` turns, the second rotated by pi."""
    y = _labels(n)
    s = torch.rand(n, generator=generator)
    r0, r1 = SWISS_ROLL_RADII
    r = r0 + (r1 - r0) * s
    theta = 2 * math.pi * SWISS_ROLL_TURNS * s + math.pi * y
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
    return _with_noise(x, noise, generator), y


def double_circles(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Concentric circles of radii :data:`CIRCLE_RADII`, uniform in angle."""
    y = _labels(n)
    theta = 2 * math.pi * torch.rand(n, generator=generator)
    r = torch.tensor(CIRCLE_RADII)[y]
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
    return _with_noise(x, noise, generator), y


def double_moons(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Upper moon :math:`(\\cos t, \\sin t)`, lower moon :math:`(1 - \\cos t, 1/2 - \\sin t)`, minus :data:`MOONS_CENTRE`."""
    y = _labels(n)
    t = math.pi * torch.rand(n, generator=generator)
    sign = 1.0 - 2.0 * y  # +1 for the upper moon, -1 for the lower one
    x = torch.stack([y + sign * torch.cos(t), 0.5 * y + sign * torch.sin(t)], 1)
    return _with_noise(x - torch.tensor(MOONS_CENTRE), noise, generator), y


def _reference_arm(count: int, r0: float) -> Tensor:
    k = torch.arange(count, dtype=torch.float32)
    theta = 2 * math.pi * REFERENCE_SWISS_ROLL_TURNS * k / count
    r = r0 + k / max(count - 1, 1)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)


def swiss_roll_reference(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The reference's two arms at the same angles, class 0's radially offset (module docstring)."""
    y = _labels(n)
    x = torch.cat([_reference_arm(n // 2, REFERENCE_SWISS_ROLL_OFFSET), _reference_arm(n - n // 2, 0.0)])
    return _with_noise(x, noise, generator), y


def _reference_ring(count: int, radius: float, generator: torch.Generator) -> Tensor:
    theta = 4 * 3.14 * torch.arange(count, dtype=torch.float32) / max(count, 1)
    ring = radius * torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    return ring + REFERENCE_RING_JITTER * (2 * torch.rand(count, 2, generator=generator) - 1)


def double_circles_reference(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The reference's four jittered rings, classes alternating outwards (module docstring)."""
    y = _labels(n)
    n0, n1 = n // 2, n - n // 2
    counts = (n0 // 2, n1 // 2, n0 - n0 // 2, n1 - n1 // 2)  # rings of classes 0, 1, 0, 1
    rings = [_reference_ring(c, r, generator) for c, r in zip(counts, REFERENCE_RING_RADII, strict=True)]
    x = torch.cat([rings[0], rings[2], rings[1], rings[3]])  # class 0 first, as the labels
    return _with_noise(x, noise, generator), y


# name -> (generator, default noise)
TOY2D: dict[str, tuple[Generator2D, float]] = {
    "swiss_roll": (swiss_roll, 0.03),
    "double_circles": (double_circles, 0.05),
    "double_moons": (double_moons, 0.1),
    "swiss_roll_reference": (swiss_roll_reference, 0.0),
    "double_circles_reference": (double_circles_reference, 0.0),
}


def available_toy2d() -> list[str]:
    """Names accepted by :func:`load_toy2d`, sorted."""
    return sorted(TOY2D)


def _validate(name: str, n_train: int, n_test: int, noise: float | None) -> None:
    if name not in TOY2D:
        raise ValueError(f"unknown 2-D data set {name!r}; known: {available_toy2d()}")
    for option, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{option} must be an int >= 2 (one point per class), got {value!r}")
    if noise is not None and not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")


def load_toy2d(
    name: str, n_train: int = 1000, n_test: int = 1000, noise: float | None = None, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets of ``(x (2,) float32, y int64)`` drawn from one seeded generator.

    ``n_train + n_test`` points are drawn (half of each class), shuffled and split; ``noise``
    defaults to the set's own (:data:`TOY2D`).
    """
    _validate(name, n_train, n_test, noise)
    make, default_noise = TOY2D[name]
    generator = torch.Generator().manual_seed(seed)
    x, y = make(n_train + n_test, default_noise if noise is None else noise, generator)
    order = torch.randperm(n_train + n_test, generator=generator)
    train, test = order[:n_train], order[n_train:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])
