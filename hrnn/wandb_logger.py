r"""Weights & Biases logging of training scalars and gradient telemetry, for any training loop.

Runs are offline by default: nothing needs an account or a network, and an offline run is
uploaded later with ``wandb sync <dir>/wandb/offline-run-*``. The mode is, in order of
precedence: the ``mode`` argument, the ``WANDB_MODE`` environment variable, ``"offline"``.

This is the only module of the package that imports ``wandb``; ``import hrnn`` does not load it.
If W&B cannot start, the logger warns and becomes a no-op, so training never depends on it.

Keys written to the run's history:

- every call of :meth:`WandbLogger.log_step`: ``train/loss``, ``train/<metric_name>``, ``train/lr``,
  ``grad_norm/global`` and ``grad_norm/<parameter name>`` (L2 norms of ``.grad``);
- every call of :meth:`WandbLogger.log_hidden_gradients`: ``hidden_grad/curve``, a line plot of
  :math:`\|\partial L / \partial h_t\|` over ``t`` (its table, columns ``t`` and ``grad_norm``,
  is stored as ``hidden_grad/curve_table``), and ``hidden_grad/h0``, ``hidden_grad/hT``,
  ``hidden_grad/ratio`` (also set in the run summary);
- :meth:`WandbLogger.log_metrics`: any scalars, e.g. ``val/loss``.
"""

from __future__ import annotations

import json
import os
import struct
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .gradients import global_gradient_norm, parameter_gradient_norms

__all__ = ["MODES", "OfflineRun", "WandbLogger", "read_offline_run", "resolve_mode", "wait_for_offline_run"]

MODES = ("offline", "online", "disabled")


def resolve_mode(mode: str | None = None) -> str:
    """The W&B mode to use: ``mode`` if given, else ``$WANDB_MODE``, else ``"offline"``."""
    chosen = mode if mode is not None else os.environ.get("WANDB_MODE", "offline")
    if chosen not in MODES:
        source = "mode argument" if mode is not None else "WANDB_MODE environment variable"
        raise ValueError(f"unknown W&B mode {chosen!r} from the {source}; expected one of {list(MODES)}")
    return chosen


class WandbLogger:
    """Log training scalars, per-parameter gradient norms and hidden-state gradient curves to W&B.

    Args:
        project: W&B project name.
        name: display name of the run (W&B picks one if ``None``).
        config: hyperparameters stored as the run's config.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``; see :func:`resolve_mode`.
        dir: folder under which W&B writes its ``wandb/`` folder (default: the working directory).
        run_id: id of an earlier run to continue (offline runs then share the id).

    Use as a context manager, or call :meth:`finish` at the end.
    """

    def __init__(
        self,
        project: str,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.mode = resolve_mode(mode)
        self._run = None
        if self.mode == "disabled":
            return
        try:
            import wandb

            # Quiet console and no background system-metrics sampling: the logger must not
            # interleave with the progress bar nor slow down short runs.
            settings = wandb.Settings(silent=True, console="off", save_code=False, x_disable_stats=True)
            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=project,
                name=name,
                config=dict(config or {}),
                mode=self.mode,
                dir=None if dir is None else str(dir),
                id=run_id,
                resume="allow" if run_id is not None else None,
                settings=settings,
            )
        except Exception as exc:  # any failure to start must leave training running
            warnings.warn(
                f"W&B could not start ({type(exc).__name__}: {exc}); continuing without W&B logging",
                RuntimeWarning,
                stacklevel=2,
            )
            self._run = None

    @property
    def enabled(self) -> bool:
        """Whether a W&B run is active (false when disabled or when W&B failed to start)."""
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        """The W&B run id, to continue the same run after a resume."""
        return None if self._run is None else self._run.id

    @property
    def run_dir(self) -> Path | None:
        """The run's local folder (``.../wandb/offline-run-*`` when offline)."""
        return None if self._run is None else Path(self._run.dir).parent

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log scalars at ``step`` (W&B steps must not decrease)."""
        if self._run is not None:
            self._run.log(dict(metrics), step=step)

    def log_step(
        self,
        step: int,
        loss: float,
        metric: float,
        lr: float,
        model: nn.Module,
        metric_name: str = "metric",
    ) -> None:
        """Log the loss, the task metric, the learning rate and the gradient norms of ``model``.

        Call after ``loss.backward()`` and before the optimizer step (and before clipping, to
        record the raw norms). Parameters without a gradient are skipped.
        """
        if self._run is None:
            return
        scalars = {
            "train/loss": float(loss),
            f"train/{metric_name}": float(metric),
            "train/lr": float(lr),
            "grad_norm/global": global_gradient_norm(model),
        }
        scalars.update({f"grad_norm/{name}": norm for name, norm in parameter_gradient_norms(model).items()})
        self._run.log(scalars, step=step)

    def log_hidden_gradients(self, step: int, norms: Tensor) -> None:
        r"""Log the curve :math:`\|\partial L / \partial h_t\|`, ``t = 0..T``, and its end points.

        Args:
            step: training step.
            norms: shape ``(T + 1,)``, e.g. from :func:`hrnn.gradients.hidden_state_gradient_norms`.

        ``hidden_grad/ratio`` is :math:`\|\partial L/\partial h_0\| / \|\partial L/\partial h_T\|`:
        how much of the gradient at the last step reaches the first (near 0 means vanishing).
        """
        if norms.dim() != 1 or norms.numel() < 2:
            raise ValueError(
                f"expected hidden-state gradient norms of shape (T + 1,) with T >= 1, got {tuple(norms.shape)}"
            )
        if self._run is None:
            return
        import wandb

        values = norms.detach().double().cpu().tolist()
        table = wandb.Table(columns=["t", "grad_norm"], data=[[t, v] for t, v in enumerate(values)])
        ends = {
            "hidden_grad/h0": values[0],
            "hidden_grad/hT": values[-1],
            "hidden_grad/ratio": values[0] / values[-1] if values[-1] != 0.0 else float("inf"),
        }
        plot = wandb.plot.line(table, "t", "grad_norm", title="||dL/dh_t|| over t")
        self._run.log({"hidden_grad/curve": plot, **ends}, step=step)
        self._run.summary.update(ends)

    def finish(self) -> None:
        """Close the run (writes the offline run's final records)."""
        if self._run is not None:
            self._run.finish()
            self._run = None

    def __enter__(self) -> WandbLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()


@dataclass
class OfflineRun:
    """What a W&B run file holds: its config, its history rows (in order) and its final summary."""

    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# The .wandb file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version),
# then 32 KiB blocks of chunks, each with a 7-byte header (crc32c, length, type). A record
# (a serialised wandb.proto Record) is one FULL chunk or FIRST, MIDDLE..., LAST chunks.
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes, path: Path) -> list[bytes]:
    ident, magic, _ = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file (header {data[:7]!r})")
    records, parts, pos = [], [], _FILE_HEADER.size
    while pos + _CHUNK_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:  # block trailer padding
            pos += left
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        pos += _CHUNK_HEADER.size
        if pos + length > len(data):  # the writer was cut off mid-record
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            parts = [chunk]
        elif kind == _MIDDLE:
            parts.append(chunk)
        elif kind == _LAST:
            records.append(b"".join([*parts, chunk]))
            parts = []
    return records


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_offline_run(path: str | os.PathLike[str]) -> OfflineRun:
    """Read an offline run without syncing it.

    Args:
        path: an ``offline-run-*`` folder or the ``run-*.wandb`` file in it.

    Nested keys are joined with ``/``. W&B media (tables, plots) appear in the history as their
    file references (``<key>/path`` etc., relative to the run's ``files/`` folder).
    """
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if len(files) != 1:
            raise ValueError(f"expected one run-*.wandb file in {path}, found {[f.name for f in files]}")
        path = files[0]
    if not path.is_file():
        raise ValueError(f"W&B run file not found: {path}")
    run = OfflineRun()
    for data in _records(path.read_bytes(), path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
            for item in record.summary.remove:
                run.summary.pop(item.key or "/".join(item.nested_key), None)
    return run


def wait_for_offline_run(path: str | os.PathLike[str], key: str, timeout_s: float = 60.0) -> OfflineRun:
    """:func:`read_offline_run` once the run's summary holds ``key`` (the metric logged last).

    W&B's service writes the run file asynchronously and may still be writing after ``finish()``
    returned, so the file is read again until ``key`` is in it; ``TimeoutError`` after ``timeout_s``.
    """
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run = read_offline_run(path)
        except (ValueError, DecodeError):  # not written yet, or a record cut off mid-write
            run = None
        if run is not None and key in run.summary:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: W&B did not write {key!r} within {timeout_s:g} s")
        time.sleep(0.2)
