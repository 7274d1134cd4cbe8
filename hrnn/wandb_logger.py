r"""Weights & Biases logging of training scalars and gradient telemetry, for any training loop.

Runs are offline by default: nothing needs an account or a network, and an offline run is
uploaded later with ``wandb sync <dir>/wandb/offline-run-*``. The mode is, in order of
precedence: the ``mode`` argument, the ``WANDB_MODE`` environment variable, ``"offline"``.

This is the only module of the package that imports ``wandb``; ``import hrnn`` does not load it.
W&B never stops training: an online run that cannot reach the server within ``init_timeout_s``
falls back to offline, a run that cannot start at all leaves the logger a no-op, and a logging
call that fails (an unwritable ``WANDB_DATA_DIR`` or ``HOME``, a full disk) warns once and
stops that kind of logging.

Keys written to the run's history:

- every call of :meth:`WandbLogger.log_step`: ``train/loss``, ``train/<metric_name>``, ``train/lr``,
  ``grad_norm/global`` and ``grad_norm/<parameter name>`` (L2 norms of ``.grad``);
- every call of :meth:`WandbLogger.log_hidden_gradients`: ``hidden_grad/curve``, a line plot of
  :math:`\|\partial L / \partial h_t\|` over ``t`` (its table, columns ``t`` and ``grad_norm``,
  is stored as ``hidden_grad/curve_table``), and ``hidden_grad/h0``, ``hidden_grad/hT``,
  ``hidden_grad/ratio`` (also set in the run summary);
- :meth:`WandbLogger.log_metrics`: any scalars, e.g. ``val/loss``.

Offline run files are read back by :mod:`hrnn.run_files` (re-exported here).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .gradients import global_gradient_norm, parameter_gradient_norms
from .run_files import OfflineRun, read_offline_run, wait_for_offline_run

__all__ = ["MODES", "OfflineRun", "WandbLogger", "read_offline_run", "resolve_mode", "wait_for_offline_run"]

MODES = ("offline", "online", "disabled")
# The modes tried in turn when W&B cannot start in the one asked for.
_FALLBACKS: dict[str, tuple[str, ...]] = {"online": ("online", "offline"), "offline": ("offline",)}


def resolve_mode(mode: str | None = None) -> str:
    """The W&B mode to use: ``mode`` if given, else ``$WANDB_MODE``, else ``"offline"``."""
    chosen = mode if mode is not None else os.environ.get("WANDB_MODE", "offline")
    if chosen not in MODES:
        source = "mode argument" if mode is not None else "WANDB_MODE environment variable"
        raise ValueError(f"unknown W&B mode {chosen!r} from the {source}; expected one of {list(MODES)}")
    return chosen


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


class WandbLogger:
    """Log training scalars, per-parameter gradient norms and hidden-state gradient curves to W&B.

    Args:
        project: W&B project name.
        name: display name of the run (W&B picks one if ``None``).
        config: hyperparameters stored as the run's config.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``; see :func:`resolve_mode`. ``mode``
            afterwards holds the mode that actually started (``"disabled"`` if none did).
        dir: folder under which W&B writes its ``wandb/`` folder (default: the working directory).
        run_id: id of an earlier run to continue (offline runs then share the id).
        init_timeout_s: how long an online run waits for the server before falling back to offline.

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
        init_timeout_s: float = 30.0,
    ) -> None:
        self.mode = resolve_mode(mode)
        self._run: Any = None
        self._tables = True  # cleared when W&B cannot stage a table file
        options = {"project": project, "name": name, "config": dict(config or {}), "id": run_id}
        for attempt in _FALLBACKS.get(self.mode, ()):
            self._run = self._start(attempt, dir, init_timeout_s, options)
            if self._run is not None:
                self.mode = attempt
                return
        self.mode = "disabled"

    @staticmethod
    def _start(mode: str, dir: Any, init_timeout_s: float, options: dict[str, Any]) -> Any:
        """A W&B run in ``mode``, or ``None`` (with a warning) when W&B cannot start."""
        try:
            import wandb

            # Quiet console and no background system-metrics sampling: the logger must not
            # interleave with the progress bar nor slow down short runs.
            settings = wandb.Settings(
                silent=True, console="off", save_code=False, x_disable_stats=True, init_timeout=init_timeout_s
            )
            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            resume = "allow" if options["id"] is not None else None
            return wandb.init(
                mode=mode, dir=None if dir is None else str(dir), resume=resume, settings=settings, **options
            )
        except Exception as exc:  # any failure to start must leave training running
            then = "trying offline" if mode == "online" else "continuing without W&B logging"
            _warn(f"W&B could not start in {mode} mode ({_one_line(exc)}); {then}")
            return None

    def _call(self, what: str, log: Callable[[], None]) -> bool:
        """Run ``log``; on failure warn and return ``False`` instead of raising."""
        try:
            log()
            return True
        except Exception as exc:  # a logging failure must never stop training
            _warn(f"W&B failed while logging {what} ({_one_line(exc)})")
            return False

    def _abandon(self) -> None:
        """Stop logging after a failed call; the run's files so far stay on disk."""
        run, self._run = self._run, None
        _warn("W&B logging stops; training continues")
        try:
            run.finish(exit_code=1)
        except Exception:  # the run is already broken; closing it is best effort
            pass

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

    def _log(self, what: str, values: Mapping[str, Any], step: int) -> None:
        if self._run is not None and not self._call(what, lambda: self._run.log(dict(values), step=step)):
            self._abandon()

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log scalars at ``step`` (W&B steps must not decrease)."""
        self._log("metrics", metrics, step)

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
        self._log("training scalars", scalars, step)

    def log_hidden_gradients(self, step: int, norms: Tensor) -> None:
        r"""Log the curve :math:`\|\partial L / \partial h_t\|`, ``t = 0..T``, and its end points.

        Args:
            step: training step.
            norms: shape ``(T + 1,)``, e.g. from :func:`hrnn.gradients.hidden_state_gradient_norms`.

        ``hidden_grad/ratio`` is :math:`\|\partial L/\partial h_0\| / \|\partial L/\partial h_T\|`:
        how much of the gradient at the last step reaches the first (near 0 means vanishing).
        If W&B cannot write the curve's table, only the end points are logged from then on.
        """
        if norms.dim() != 1 or norms.numel() < 2:
            raise ValueError(
                f"expected hidden-state gradient norms of shape (T + 1,) with T >= 1, got {tuple(norms.shape)}"
            )
        if self._run is None:
            return
        values = norms.detach().double().cpu().tolist()
        ends = {
            "hidden_grad/h0": values[0],
            "hidden_grad/hT": values[-1],
            "hidden_grad/ratio": values[0] / values[-1] if values[-1] != 0.0 else float("inf"),
        }
        if not (
            self._tables
            and self._call("the hidden-gradient curve", lambda: self._log_curve(step, values, ends))
        ):
            self._log("the hidden-gradient end points", ends, step)
        if self._run is not None and not self._call(
            "the run summary", lambda: self._run.summary.update(ends)
        ):
            self._abandon()

    def _log_curve(self, step: int, values: list[float], ends: dict[str, float]) -> None:
        """Log ``values`` over ``t`` as a line plot with ``ends``; a failure stops the curve, not the run."""
        import wandb

        try:
            table = wandb.Table(columns=["t", "grad_norm"], data=[[t, v] for t, v in enumerate(values)])
            plot = wandb.plot.line(table, "t", "grad_norm", title="||dL/dh_t|| over t")
            self._run.log({"hidden_grad/curve": plot, **ends}, step=step)
        except Exception:
            self._tables = False  # W&B stages a table as a file: an unwritable WANDB_DATA_DIR stops here
            raise

    def finish(self) -> None:
        """Close the run (writes the offline run's final records)."""
        run, self._run = self._run, None
        if run is not None:
            self._call("the end of the run", run.finish)

    def __enter__(self) -> WandbLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()
