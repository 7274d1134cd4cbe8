"""Loss and metric per task objective, and evaluation of a model over a whole dataset.

Regression: squared error, metric MSE. Classification: cross-entropy, metric accuracy. A
sequence readout ``(B, T, ...)`` counts every step as one element, as the training loss does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["OBJECTIVES", "Objective", "evaluate", "to_device"]


@dataclass(frozen=True)
class Objective:
    """Per-element loss and metric of a task objective; a sequence readout counts every step."""

    loss: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[Tensor, Tensor], Tensor]
    metric_name: str


def _squared_error(output: Tensor, target: Tensor) -> Tensor:
    """Elementwise squared error of ``(B, out)`` or, per step, ``(B, T, out)``."""
    return F.mse_loss(output, target, reduction="none")


def _classes_last(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``(N, C)`` and labels ``(N,)``; a sequence readout ``(B, T, C), (B, T)`` becomes ``N = B T``."""
    return (logits.flatten(0, 1), labels.flatten()) if logits.dim() == 3 else (logits, labels)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(*_classes_last(logits, labels), reduction="none")


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    logits, labels = _classes_last(logits, labels)
    return (logits.argmax(dim=-1) == labels).to(logits.dtype)


OBJECTIVES: dict[str, Objective] = {
    "regression": Objective(loss=_squared_error, metric=_squared_error, metric_name="mse"),
    "classification": Objective(loss=_cross_entropy, metric=_correct, metric_name="accuracy"),
}


def to_device(
    batch: tuple[Tensor, Tensor], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Inputs (and float targets) in the model's dtype; class labels stay int64."""
    x, y = batch
    return x.to(device, dtype), y.to(device, dtype) if y.is_floating_point() else y.to(device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    objective: Objective,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Mean loss and metric over every element of ``dataset`` (keys ``loss`` and ``objective.metric_name``)."""
    was_training = model.training
    model.eval()
    loss_sum = metric_sum = 0.0
    count = 0
    # its own generator: a DataLoader otherwise draws its seed from the global RNG, so evaluating
    # would shift the dropout masks of the training steps that follow
    for batch in DataLoader(dataset, batch_size=batch_size, generator=torch.Generator()):
        x, y = to_device(batch, device, dtype)
        output = model(x)
        losses, metrics = objective.loss(output, y), objective.metric(output, y)
        loss_sum += losses.sum().item()
        metric_sum += metrics.sum().item()
        count += losses.numel()
    model.train(was_training)
    return {"loss": loss_sum / count, objective.metric_name: metric_sum / count}
