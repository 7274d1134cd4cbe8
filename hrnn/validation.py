"""Argument checks shared by the package: registry look-ups, sizes, positive numbers, inputs and states.

A leaf module (it imports nothing of the package), so every other module may use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from torch import Tensor

__all__ = ["check_input", "check_options", "check_positive", "check_size", "check_state", "lookup"]

V = TypeVar("V")


def lookup(registry: Mapping[str, V], name: str, what: str) -> V:
    """``registry[name]``; an unknown name fails as ``unknown <what> 'name'; known: [...]``."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(registry)}") from None


def check_size(name: str, value: int) -> int:
    """A positive int (not a bool), returned as given."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    """A finite number > 0, returned as a float."""
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def check_input(
    x: Tensor,
    input_size: int,
    expected: dict[int, str],
    parameter: Tensor,
    *,
    step_dims: tuple[int, ...] | None = None,
) -> None:
    """Validate an input tensor: floating, of a rank in ``expected`` (rank -> shape description),
    ``input_size`` features last, the dtype and device of ``parameter`` (one of the module's
    weights), and not empty: the dimensions ``step_dims`` must hold at least one step, while the
    others (the batch) may be empty, as in torch.nn; ``None`` requires every dimension non-empty.
    Values are not inspected: reading them would synchronise with the device on every call; a
    non-finite input gives a non-finite output, as in torch.nn."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    shapes = " or ".join(expected.values())
    if x.dim() not in expected:
        raise ValueError(f"expected input of shape {shapes}, got shape {tuple(x.shape)} (rank {x.dim()})")
    if x.shape[-1] != input_size:
        raise ValueError(
            f"expected input of shape {shapes} with input_size={input_size}, got shape {tuple(x.shape)}"
        )
    if step_dims is None and x.numel() == 0:
        raise ValueError(f"input must hold at least one step and one sequence, got shape {tuple(x.shape)}")
    if step_dims is not None and any(x.shape[d] == 0 for d in step_dims):
        raise ValueError(f"input must hold at least one step, got shape {tuple(x.shape)}")
    if x.dtype != parameter.dtype:
        raise TypeError(
            f"input has dtype {x.dtype} but the parameters have dtype {parameter.dtype}; "
            "convert one of them (e.g. module.to(input.dtype))"
        )
    if x.device != parameter.device:
        raise ValueError(f"input is on {x.device} but the parameters are on {parameter.device}")


def check_state(
    hx: Any, names: tuple[str, ...], shape: tuple[int, ...], like: Tensor
) -> tuple[Tensor, ...] | None:
    """Validate a state ``hx`` (a tensor for one-part states, a tuple for ``(p, q)`` pairs):
    each part of ``shape`` with ``like``'s dtype and device. Returns it as a tuple."""
    if hx is None:
        return None
    if len(names) == 1:
        if not isinstance(hx, Tensor):
            raise TypeError(f"hx must be a tensor {names[0]}, got {type(hx).__name__}")
        parts = (hx,)
    else:
        if not isinstance(hx, tuple | list) or len(hx) != len(names):
            raise TypeError(f"hx must be a tuple ({', '.join(names)}), got {type(hx).__name__}")
        parts = tuple(hx)
    for name, part in zip(names, parts, strict=True):
        if not isinstance(part, Tensor):
            raise TypeError(f"hx part {name} must be a torch.Tensor, got {type(part).__name__}")
        if not part.is_floating_point() or part.dtype != like.dtype:
            raise TypeError(f"hx part {name} has dtype {part.dtype}, expected the input's dtype {like.dtype}")
        if tuple(part.shape) != shape:
            raise ValueError(f"expected hx part {name} of shape {shape}, got {tuple(part.shape)}")
        if part.device != like.device:
            raise ValueError(f"hx part {name} is on {part.device}, the input on {like.device}")
    return parts


def check_options(saved: Any, current: Mapping[str, Any], owner: str) -> None:
    """Check options saved with a module's weights against the module's own (``owner`` names it).

    ``saved`` must be a dict; an option the module has but ``saved`` lacks is accepted (weights
    saved before the option was recorded), any other difference fails, naming the option and both
    values."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"{owner}: expected the saved options as a dict, got {type(saved).__name__}")
    for name, value in saved.items():
        if name not in current:
            raise ValueError(
                f"{owner}: the weights were saved with option {name}={value!r}, which it does not have"
            )
        if current[name] != value:
            raise ValueError(
                f"{owner}: the weights were saved with {name}={value!r} but it has {name}={current[name]!r}; "
                f"build it with {name}={value!r} to load them"
            )
