"""Train a sequence model on a task, with gradient telemetry in Weights & Biases (offline by default).

Usage::

    python -m experiments.train                                   # built-in default: adding, hamiltonian
    python -m experiments.train --config experiments/configs/smnist_lstm.yaml --steps 500
    python -m experiments.train --task copy --model oscillator --model-kwargs dt=auto
    python -m experiments.train --resume runs/<run>               # continue exactly where it stopped
    torchrun --nproc_per_node 2 -m experiments.train ...          # data-parallel, same global batch

The run folder ``out_dir/name`` holds ``config.yaml``, ``checkpoint.pt`` (written atomically
every ``checkpoint_every`` steps, at the end, and on SIGTERM or Ctrl-C), ``metrics.json`` and
W&B's ``wandb/`` folder. The last line printed holds the final metrics (``test_mse=... ...``).
A NaN/Inf loss or gradient stops training with exit status 1; the checkpoint on disk is then the
last one written, a state whose own loss and gradient were finite.

The script reads top to bottom in phases: configuration and run folder, processes and device,
data, model, optimizer and schedule, resume, logging, the loop, final evaluation, finish.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import hrnn
from hrnn.gradients import hidden_state_gradient_norms
from hrnn.models import build_model
from hrnn.wandb_logger import WandbLogger, resolve_mode
from tasks import DataError, Task, build_task
from tasks.registry import data_folder_hint

from .checkpoint import (
    CHECKPOINT_NAME,
    NonFiniteStateError,
    capture_rng_state,
    find_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from .config import DTYPES, OPTIMIZERS, SCHEDULES, TrainConfig, build_config, config_yaml, parse_args
from .data import StepBatchSampler, step_loader
from .distributed import (
    Processes,
    all_gather_objects,
    broadcast_object,
    mean_over_processes,
    start_processes,
    stop_processes,
)
from .evaluation import OBJECTIVES, Objective, evaluate, to_device

__all__ = ["CheckpointWriteError", "ConfigError", "NonFiniteLossError", "TrainingStopped", "main", "train"]

log = logging.getLogger("experiments.train")


# ----------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """The run cannot be set up as configured: an unknown name, a bad option, a missing or damaged file."""


@contextmanager
def _setting_up(
    what: str, errors: tuple[type[Exception], ...] = (ValueError, TypeError, OSError)
) -> Iterator[None]:
    """Re-raise an error from ``what`` (a step that turns the config into objects) as a :class:`ConfigError`."""
    try:
        yield
    except errors as exc:
        raise ConfigError(f"{what}: {exc}") from exc


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/Inf; ``checkpoint`` holds the last finite state saved.

    ``saved_step`` is the step of that state (``None``: no checkpoint was written in this run).
    """

    def __init__(
        self, step: int, loss: float, grad_norm: float, checkpoint: Path | None, saved_step: int | None = None
    ) -> None:
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        self.checkpoint, self.saved_step = checkpoint, saved_step
        where = f" (step {saved_step})" if saved_step is not None else ""
        saved = f"; the last finite state{where} is in {checkpoint}" if checkpoint else ""
        super().__init__(
            f"non-finite loss or gradient at step {step} (loss={loss}, gradient norm={grad_norm}): training "
            f"stopped{saved}. Lower the learning rate or set clip_grad_norm, then continue with --resume."
        )


class TrainingStopped(RuntimeError):
    """SIGTERM or SIGINT (Ctrl-C) stopped training at ``step``, after a checkpoint of that state."""

    def __init__(self, step: int, signum: int, checkpoint: Path | None) -> None:
        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        saved = (
            f"; checkpoint in {checkpoint}, continue with --resume {checkpoint.parent}" if checkpoint else ""
        )
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}{saved}")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (an unwritable folder, a full disk)."""


# ----------------------------------------------------------------------------- stop requests


@dataclass
class _StopRequest:
    """The signal asking training to stop at the next step boundary (0: none)."""

    signum: int = 0


@contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    """Turn SIGTERM and the first SIGINT into a stop request; a second SIGINT interrupts at once.

    Handlers can only be set in the main thread; elsewhere the request is never set.
    """
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def ask(signum: int, frame: object) -> None:
        request.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {signum: signal.signal(signum, ask) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------------------- configuration and run folder


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the global generator other code may draw from)
    torch.manual_seed(seed)


def _new_run_dir(config: TrainConfig) -> Path:
    run_dir = Path(config.out_dir) / config.name
    if (run_dir / CHECKPOINT_NAME).exists():
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint: continue it with --resume {run_dir} or choose another --name"
        )
    return run_dir


def _check_resumable(config: TrainConfig, saved: dict[str, Any]) -> None:
    """Refuse what a checkpoint cannot continue with: another optimizer's state is not this one's."""
    if saved["optimizer"] != config.optimizer:
        raise ValueError(
            f"the checkpoint holds the state of optimizer {saved['optimizer']!r}, which cannot continue "
            f"as {config.optimizer!r}: resume with --optimizer {saved['optimizer']} or start a new run"
        )


def _prepare(
    config: TrainConfig, resume_from: str | Path | None, procs: Processes
) -> tuple[TrainConfig, Path, dict[str, Any] | None]:
    """The config with its run name, the run folder, and the checkpoint to continue (``None``: a new run)."""
    with _setting_up("--resume"):
        resume = load_checkpoint(resume_from) if resume_from is not None else None
        if resume is not None:
            _check_resumable(config, resume["config"])
    if config.name is None:
        config = dataclasses.replace(
            config, name=f"{config.task}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    config = dataclasses.replace(config, name=broadcast_object(config.name, procs))
    with _setting_up("run folder"):
        run_dir = find_checkpoint(resume_from).parent if resume_from is not None else _new_run_dir(config)
    return config, run_dir, resume


def _open_run_folder(config: TrainConfig, run_dir: Path, procs: Processes) -> None:
    """Make the run folder, write ``config.yaml`` and remove temporaries of killed checkpoint writes."""
    if not procs.is_main:
        return
    with _setting_up("run folder"):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml(config))
        stale = remove_stale_temporaries(run_dir / CHECKPOINT_NAME)
    if stale:
        log.info("removed %d temporary file(s) of interrupted checkpoint writes", len(stale))


# ----------------------------------------------------------------------------- processes and device


def _device_type(config: TrainConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(config.device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {config.device!r} requested, but torch finds no CUDA device (use cpu or auto)"
        )
    return kind


def _device(config: TrainConfig, procs: Processes) -> torch.device:
    """``config.device``; with several processes on CUDA, each process's own GPU."""
    if _device_type(config) == "cuda" and (procs.distributed or config.device == "auto"):
        return torch.device("cuda", procs.local_rank)
    return torch.device(config.device if config.device != "auto" else "cpu")


# ----------------------------------------------------------------------------- data


@dataclass
class _Data:
    """The task, its objective, the evaluation set, the gradient-probe batch and the training batches."""

    task: Task
    objective: Objective
    eval_set: Dataset
    probe: tuple[torch.Tensor, torch.Tensor]
    loader: DataLoader


def _data(config: TrainConfig, procs: Processes, device: torch.device, start: int) -> _Data:
    dtype = DTYPES[config.dtype]
    try:
        task = build_task(config.task, **{"seed": config.seed, **config.task_kwargs})
    except DataError as exc:
        raise ConfigError(f"building the task: {exc} ({data_folder_hint()})") from exc
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"building the task: {exc}") from exc
    eval_set = task.val if task.val is not None else task.test
    count = min(config.batch_size, len(eval_set))
    probe = to_device(default_collate([eval_set[i] for i in range(count)]), device, dtype)
    with _setting_up("batches"):
        sampler = StepBatchSampler(
            len(task.train), config.batch_size, config.seed, start, config.steps, procs.rank, procs.world_size
        )
    loader = step_loader(task.train, sampler, config.seed, config.num_workers)
    return _Data(task, OBJECTIVES[task.objective], eval_set, probe, loader)


# ----------------------------------------------------------------------------- model


#: The read-out of a task with one target per sequence, by objective, when the config names none:
#: a class is a property of the whole sequence; the adding problem's target is asked at its end.
DEFAULT_READOUTS = {"classification": "mean", "regression": "last"}
#: Read-outs that fit a task with one target per sequence.
PER_SEQUENCE_READOUTS = ("mean", "last", "state")


def _readout(config: TrainConfig, task: Task) -> str:
    """The model's read-out: the config's, else the task's default (:data:`DEFAULT_READOUTS`)."""
    if task.readout == "sequence":
        fitting, default = ("sequence",), "sequence"
    else:
        fitting, default = PER_SEQUENCE_READOUTS, DEFAULT_READOUTS[task.objective]
    readout = config.readout or default
    if readout not in fitting:
        raise ValueError(
            f"readout {readout!r} does not fit task {task.name!r}, whose targets need readout {task.readout!r}"
        )
    return readout


def _build_model(config: TrainConfig, task: Task) -> nn.Module:
    model = build_model(
        config.model,
        task.input_size,
        config.hidden_size,
        task.output_size,
        num_blocks=config.num_blocks,
        num_layers=config.num_layers,
        seq_len=task.seq_len,
        readout=_readout(config, task),
        standardize=config.standardize,
        **config.model_kwargs,
    )
    if config.freeze_layer:
        model.rnn.requires_grad_(False)
    return model


#: Training samples on which a ``standardize`` model measures its read-out's mean and scale.
CALIBRATION_SAMPLES = 1024


def _calibrate(model: nn.Module, task: Task, device: torch.device, dtype: torch.dtype) -> None:
    """Set the read-out standardisation from the first training samples (the same on every process)."""
    count = min(CALIBRATION_SAMPLES, len(task.train))
    x, _ = to_device(default_collate([task.train[i] for i in range(count)]), device, dtype)
    model.calibrate(x)


def _model(config: TrainConfig, task: Task, device: torch.device, calibrate: bool) -> nn.Module:
    dtype = DTYPES[config.dtype]
    with _setting_up("building the model"):
        model = _build_model(config, task).to(device, dtype)
        if config.standardize and calibrate:
            _calibrate(model, task, device, dtype)
    return model


# ----------------------------------------------------------------------------- optimizer and schedule


def _optimization(
    config: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer over the trainable parameters and its learning-rate schedule over ``config.steps``."""
    optimizer = OPTIMIZERS[config.optimizer](
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(SCHEDULES[config.lr_schedule], total=config.steps)
    )
    return optimizer, scheduler


def apply_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    lr: float,
    weight_decay: float,
) -> None:
    """Set a restored optimizer's base ``lr`` and ``weight_decay``: the learning rate is then ``lr``
    times the schedule's factor at the restored step, as in a run started with these values."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group.update(initial_lr=lr, lr=lr * factor(scheduler.last_epoch), weight_decay=weight_decay)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


# ----------------------------------------------------------------------------- resume


def _restore(
    resume: dict[str, Any],
    config: TrainConfig,
    model: nn.Module,
    optimization: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR],
    procs: Processes,
) -> None:
    """Load the checkpoint's states, apply the config's lr and weight decay, restore this process's RNG."""
    optimizer, scheduler = optimization
    # a checkpoint of another model (e.g. a flag changed hidden_size) fails here with the mismatch
    with _setting_up("the checkpoint does not fit the configured model", (ValueError, RuntimeError)):
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
    saved = resume["config"]
    for name in ("lr", "weight_decay"):
        if saved[name] != getattr(config, name):
            log.info("resume: %s %g -> %g", name, saved[name], getattr(config, name))
    apply_hyperparameters(optimizer, scheduler, config.lr, config.weight_decay)
    rng = resume["rng"]
    if len(rng) != procs.world_size:
        log.warning("checkpoint holds RNG states of %d processes, not %d", len(rng), procs.world_size)
    restore_rng_state(rng[procs.rank % len(rng)])


# ----------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """Everything the loop, the checkpoints and the final evaluation share."""

    config: TrainConfig
    procs: Processes
    run_dir: Path
    device: torch.device
    data: _Data
    model: nn.Module
    trained: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    logger: WandbLogger
    start: int
    saved_step: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.config.dtype]

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def checkpoint(self, step: int, rng: dict[str, Any]) -> Path | None:
        """Save the state after ``step`` updates; ``rng`` is this process's RNG state at that point."""
        rngs = all_gather_objects(rng, self.procs)  # a collective: every process takes part
        if not self.procs.is_main:
            return None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": step,
            "config": dataclasses.asdict(self.config),
            "rng": rngs,
            "wandb_run_id": self.logger.run_id,
            "hrnn_version": hrnn.__version__,
        }
        try:
            save_checkpoint(self.checkpoint_path, state)
        except NonFiniteStateError:
            raise NonFiniteLossError(step, math.nan, math.nan, self._last_saved, self.saved_step) from None
        except OSError as exc:
            raise CheckpointWriteError(
                f"could not write the checkpoint {self.checkpoint_path}: {exc}"
            ) from exc
        self.saved_step = step
        return self.checkpoint_path

    @property
    def _last_saved(self) -> Path | None:
        return self.checkpoint_path if self.checkpoint_path.is_file() else None

    def evaluate(self, dataset: Dataset) -> dict[str, float]:
        return evaluate(
            self.model, dataset, self.data.objective, self.config.batch_size, self.device, self.dtype
        )

    def log_hidden_gradients(self, step: int) -> None:
        self.model.eval()  # the probe must not draw dropout masks from the training RNG stream
        loss = self.data.objective.loss
        norms = hidden_state_gradient_norms(self.model, *self.data.probe, lambda out, y: loss(out, y).mean())
        self.model.train()
        self.logger.log_hidden_gradients(step, norms)


def _wandb_mode(config: TrainConfig, procs: Processes) -> str:
    """The W&B mode on this process: rank 0's from the config or ``$WANDB_MODE``; the others log nothing."""
    with _setting_up("W&B"):  # a bad $WANDB_MODE fails here; W&B failing to start only warns
        return resolve_mode(config.wandb) if procs.is_main else "disabled"


def _logger(
    config: TrainConfig, run_dir: Path, procs: Processes, model: nn.Module, mode: str, resume: dict | None
) -> WandbLogger:
    return WandbLogger(
        project=config.wandb_project,
        name=config.name,
        config={
            **dataclasses.asdict(config),
            "hrnn_version": hrnn.__version__,
            "world_size": procs.world_size,
            "num_parameters": sum(p.numel() for p in model.parameters()),
        },
        mode=mode,
        dir=run_dir,
        run_id=resume.get("wandb_run_id") if resume is not None else None,
    )


# ----------------------------------------------------------------------------- the loop


def _step(run: _Run, step: int, batch: Any, stop: _StopRequest) -> tuple[float, bool]:
    """Forward, backward and checks of batch ``step``; returns the loss and whether any process asked to stop.

    Nothing is updated yet, so the state is still the one after ``step`` updates: a checkpoint
    taken now holds a state whose loss and gradient were finite.
    """
    config, objective = run.config, run.data.objective
    x, y = to_device(batch, run.device, run.dtype)
    output = run.trained(x)
    loss = objective.loss(output, y).mean()
    metric = objective.metric(output.detach(), y).mean()
    asked = torch.tensor(float(stop.signum > 0), device=loss.device, dtype=loss.dtype)
    # one collective for the logged means and the stop request of any process
    loss_value, metric_value, stop_any = mean_over_processes(
        torch.stack([loss.detach(), metric, asked]), run.procs
    ).tolist()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients: the mean over the global batch
    if run.procs.is_main and config.log_every and step % config.log_every == 0:
        lr = run.scheduler.get_last_lr()[0]
        run.logger.log_step(step, loss_value, metric_value, lr, run.model, objective.metric_name)
    grad_norm = float(nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_grad_norm or math.inf))
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        raise NonFiniteLossError(step, loss_value, grad_norm, run._last_saved, run.saved_step)
    return loss_value, stop_any > 0


def _after_update(run: _Run, done: int) -> None:
    """Evaluation and hidden-gradient curves that fall due once ``done`` updates are done."""
    config = run.config
    if run.procs.is_main and config.eval_every and done % config.eval_every == 0:
        scores = run.evaluate(run.data.eval_set)
        run.logger.log_metrics(done, {f"val/{key}": value for key, value in scores.items()})
        log.info("step %d: val %s", done, _format_metrics(scores))
    if run.procs.is_main and config.grad_log_every and done % config.grad_log_every == 0:
        run.log_hidden_gradients(done)


def _loop(run: _Run, stop: _StopRequest) -> tuple[float, float]:
    """Train from ``run.start`` to ``config.steps``; returns the last loss and the loop's seconds."""
    config = run.config
    show = config.progress and run.procs.is_main
    loss_value, stop_agreed = math.nan, False
    run.model.train()
    started = time.perf_counter()
    with tqdm(
        total=config.steps, initial=run.start, unit="step", disable=not show, dynamic_ncols=True
    ) as bar:
        # batch `step` updates the parameters from `step` to `step + 1` updates done
        for step, batch in enumerate(run.data.loader, start=run.start):
            # every process knew of a stop request since the last step's collective, so all stop here
            stopping = stop_agreed
            saving = config.checkpoint_every and step % config.checkpoint_every == 0 and step != run.start
            rng = capture_rng_state() if saving or stopping else None  # what a checkpoint of `step` restores
            loss_value, stop_agreed = _step(run, step, batch, stop)
            if stopping:
                raise TrainingStopped(step, stop.signum or signal.SIGTERM, run.checkpoint(step, rng))
            if saving:
                run.checkpoint(step, rng)
            run.optimizer.step()
            run.scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
            _after_update(run, step + 1)
    loop_time = time.perf_counter() - started
    if run.saved_step != config.steps:
        run.checkpoint(config.steps, capture_rng_state())
    return loss_value, loop_time


# ----------------------------------------------------------------------------- final evaluation and finish


def _final_metrics(run: _Run, loss_value: float, loop_time: float, started: float) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        dataset = getattr(run.data.task, split)
        if dataset is not None:
            metrics.update({f"{split}_{key}": value for key, value in run.evaluate(dataset).items()})
    steps_done = run.config.steps - run.start
    metrics.update(
        train_loss=loss_value,
        steps=run.config.steps,
        wall_time_s=time.perf_counter() - started,
        loop_time_s=loop_time,
        steps_per_s=steps_done / loop_time if steps_done and loop_time > 0 else math.nan,
    )
    return metrics


def _write_metrics(path: Path, metrics: dict[str, float]) -> None:
    """``metrics`` as strict JSON: a NaN (no step trained) becomes ``null``."""
    plain = {key: None if isinstance(v, float) and not math.isfinite(v) else v for key, v in metrics.items()}
    path.write_text(json.dumps(plain, indent=2, allow_nan=False) + "\n")


def _format_metrics(metrics: dict[str, float | None]) -> str:
    return " ".join(f"{key}={math.nan if value is None else value:.6g}" for key, value in metrics.items())


#: Fields that change how a run is shown or where it runs, not what it computes.
_PRESENTATION = ("progress", "wandb", "wandb_project", "num_threads", "num_workers")


def _outcome(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if name not in _PRESENTATION}


def _finished_metrics(run_dir: Path, resume: dict[str, Any] | None, config: TrainConfig) -> dict | None:
    """The saved metrics of a resumed run that already did its steps (``None``: there is work left).

    A finished run resumed with another config is refused: it has nothing left to train.
    """
    if resume is None or resume["step"] < config.steps:
        return None
    if _outcome(dataclasses.asdict(config)) != _outcome(resume["config"]):
        raise ConfigError(
            f"--resume: {run_dir} already finished its {resume['step']} steps; to train on, "
            f"resume with --steps above {resume['step']}"
        )
    path = run_dir / "metrics.json"
    if not path.is_file():  # stopped between its last checkpoint and its metrics: evaluate again
        return None
    log.info("run %s already finished at step %d; its metrics are unchanged", run_dir, resume["step"])
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- entry points


def train(config: TrainConfig, resume: str | Path | None = None) -> dict[str, float]:
    """Train as ``config`` says, or continue the run whose folder (or checkpoint file) is ``resume``.

    A resumed run keeps writing to its checkpoint's folder and trains with the config's ``lr`` and
    ``weight_decay`` (another optimizer is refused). Returns the final metrics (also written to
    ``metrics.json``); empty on processes other than rank 0. Raises :class:`ConfigError` when the
    run cannot be set up, :class:`NonFiniteLossError` when the loss or the gradient norm becomes
    NaN/Inf, :class:`TrainingStopped` after SIGTERM/Ctrl-C (with a checkpoint) and
    :class:`CheckpointWriteError` when a checkpoint cannot be written.
    """
    started = time.perf_counter()
    with _setting_up("device"):
        device_type = _device_type(config)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    procs = start_processes(device_type)
    try:
        with _stop_on_signals() as stop:
            return _train(config, resume, procs, stop, started)
    finally:
        stop_processes(procs)
        torch.set_num_threads(threads)  # leave the caller's process as it was


def _train(
    config: TrainConfig, resume_from: str | Path | None, procs: Processes, stop: _StopRequest, started: float
) -> dict[str, float]:
    config, run_dir, resume = _prepare(config, resume_from, procs)
    wandb_mode = _wandb_mode(config, procs)
    finished = _finished_metrics(run_dir, resume, config)
    if finished is not None:
        return finished if procs.is_main else {}
    device = _device(config, procs)
    seed_everything(config.seed)
    start = resume["step"] if resume is not None else 0
    data = _data(config, procs, device, start)
    model = _model(config, data.task, device, calibrate=resume is None)
    optimizer, scheduler = _optimization(config, model)
    if resume is not None:
        _restore(resume, config, model, (optimizer, scheduler), procs)
    trained = model
    if procs.distributed:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # the run folder is made only now, so a run that cannot be set up leaves nothing behind
    _open_run_folder(config, run_dir, procs)
    logger = _logger(config, run_dir, procs, model, wandb_mode, resume)
    run = _Run(config, procs, run_dir, device, data, model, trained, optimizer, scheduler, logger, start)
    log.info("run %s: %s with %d parameters on %s, %d process(es)", run_dir, config.model,
             sum(p.numel() for p in model.parameters()), device, procs.world_size)  # fmt: skip
    with logger:
        loss_value, loop_time = _loop(run, stop)
        if not procs.is_main:
            return {}
        metrics = _final_metrics(run, loss_value, loop_time, started)
        logger.log_metrics(config.steps, {f"final/{key}": value for key, value in metrics.items()})
    _write_metrics(run_dir / "metrics.json", metrics)
    return metrics


def _exit_status(exc: BaseException) -> int:
    """1 for an error; 128 + the signal's number after a stop request, as a shell reports it."""
    return 128 + exc.signum if isinstance(exc, TrainingStopped) else 1


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: parse flags, train, print the final metrics as the last line.

    Under ``torchrun`` only rank 0 prints information and errors; the others print warnings only.
    """
    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_rank else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)  # argparse itself exits (status 2) on a malformed flag
    try:
        with _setting_up("configuration"):
            saved = load_checkpoint(args.resume)["config"] if args.resume is not None else None
            config = build_config(args.overrides, base=saved, config_file=args.config)
        with logging_redirect_tqdm():
            metrics = train(config, args.resume)
    except (ConfigError, NonFiniteLossError, TrainingStopped, CheckpointWriteError) as exc:
        # the user's to fix or to continue: one line, not a traceback
        if main_rank:
            prefix = "" if isinstance(exc, TrainingStopped) else "error: "
            print(prefix + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(_exit_status(exc))
    if metrics:
        print(_format_metrics(metrics))


if __name__ == "__main__":
    main()
