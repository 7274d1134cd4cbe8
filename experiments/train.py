"""Train a sequence model on a task, with gradient telemetry in Weights & Biases (offline by default).

Usage::

    python -m experiments.train                                   # built-in default: adding, hamiltonian
    python -m experiments.train --config experiments/configs/smnist_lstm.yaml --steps 500
    python -m experiments.train --task copy --model oscillator --model-kwargs dt=auto
    python -m experiments.train --resume runs/<run>               # continue exactly where it stopped
    torchrun --nproc_per_node 2 -m experiments.train ...          # data-parallel, same global batch

The run folder ``out_dir/name`` holds ``config.yaml``, ``checkpoint.pt`` (written atomically
every ``checkpoint_every`` steps and at the end), ``metrics.json`` and W&B's ``wandb/`` folder.
The last line printed holds the final metrics (``test_mse=... ...``). A NaN/Inf loss or gradient
stops training with a checkpoint of the last finite state and exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import hrnn
from hrnn.gradients import hidden_state_gradient_norms
from hrnn.models import build_model
from hrnn.wandb_logger import WandbLogger, resolve_mode
from tasks import Task, build_task

from .checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    find_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import DTYPES, OPTIMIZERS, SCHEDULES, TrainConfig, build_config, parse_args
from .data import StepBatchSampler, step_loader
from .distributed import (
    Processes,
    all_gather_objects,
    broadcast_object,
    mean_over_processes,
    start_processes,
    stop_processes,
)
from .evaluation import OBJECTIVES, evaluate, to_device

__all__ = ["ConfigError", "NonFiniteLossError", "main", "train"]

log = logging.getLogger("experiments.train")


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
    """The loss or the gradient norm became NaN/Inf; ``checkpoint`` holds the last finite state."""

    def __init__(self, step: int, loss: float, grad_norm: float, checkpoint: Path | None) -> None:
        self.step, self.loss, self.grad_norm, self.checkpoint = step, loss, grad_norm, checkpoint
        saved = f"; the last finite state (step {step}) is saved in {checkpoint}" if checkpoint else ""
        super().__init__(
            f"non-finite loss or gradient at step {step} (loss={loss}, gradient norm={grad_norm}): training "
            f"stopped{saved}. Lower the learning rate or set clip_grad_norm, then continue with --resume."
        )


# ----------------------------------------------------------------------------- run setup


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the global generator other code may draw from)
    torch.manual_seed(seed)


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


def _readout(config: TrainConfig, task: Task) -> str:
    """The model's read-out: the task's, or ``"state"`` in place of a task's ``"last"``."""
    readout = config.readout or task.readout
    if readout != task.readout and not (readout == "state" and task.readout == "last"):
        raise ValueError(
            f"readout {readout!r} does not fit task {task.name!r}, whose targets need readout {task.readout!r}"
        )
    return readout


def _build_model(config: TrainConfig, task: Task) -> nn.Module:
    kwargs = dict(config.model_kwargs)
    if kwargs.get("dt") == "auto":
        kwargs.setdefault("seq_len", task.seq_len)
    model = build_model(
        config.model,
        task.input_size,
        config.hidden_size,
        task.output_size,
        num_layers=config.num_layers,
        readout=_readout(config, task),
        standardize=config.standardize,
        **kwargs,
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


def _new_run_dir(config: TrainConfig) -> Path:
    run_dir = Path(config.out_dir) / config.name
    if (run_dir / CHECKPOINT_NAME).exists():
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint: continue it with --resume {run_dir} or choose another --name"
        )
    return run_dir


def _format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{key}={value:.6g}" for key, value in metrics.items())


# ----------------------------------------------------------------------------- training


def train(config: TrainConfig, resume: str | Path | None = None) -> dict[str, float]:
    """Train as ``config`` says, or continue the run whose folder (or checkpoint file) is ``resume``.

    A resumed run keeps writing to its checkpoint's folder. Returns the final metrics (also
    written to ``metrics.json``); empty on processes other than rank 0. Raises
    :class:`ConfigError` when the run cannot be set up (unknown task or model name, bad option,
    missing or damaged checkpoint, run folder already used) and :class:`NonFiniteLossError`
    when the loss or the gradient norm becomes NaN/Inf.
    """
    started = time.perf_counter()
    with _setting_up("device"):
        device_type = _device_type(config)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    procs = start_processes(device_type)
    try:
        return _train(config, resume, procs, started)
    finally:
        stop_processes(procs)
        torch.set_num_threads(threads)  # leave the caller's process as it was


def _train(
    config: TrainConfig, resume_from: str | Path | None, procs: Processes, started: float
) -> dict[str, float]:
    # config and run folder
    with _setting_up("--resume"):
        resume = load_checkpoint(resume_from) if resume_from is not None else None
    if config.name is None:
        config = dataclasses.replace(
            config, name=f"{config.task}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    config = dataclasses.replace(config, name=broadcast_object(config.name, procs))
    with _setting_up("W&B"):  # a bad $WANDB_MODE fails here; W&B failing to start only warns
        wandb_mode = resolve_mode(config.wandb) if procs.is_main else "disabled"
    with _setting_up("run folder"):
        run_dir = find_checkpoint(resume_from).parent if resume_from is not None else _new_run_dir(config)
    device, dtype = _device(config, procs), DTYPES[config.dtype]
    seed_everything(config.seed)

    # data
    with _setting_up("building the task"):
        task = build_task(config.task, **{"seed": config.seed, **config.task_kwargs})
    objective = OBJECTIVES[task.objective]
    eval_set = task.val if task.val is not None else task.test
    probe = to_device(
        default_collate([eval_set[i] for i in range(min(config.batch_size, len(eval_set)))]), device, dtype
    )
    start = resume["step"] if resume is not None else 0
    with _setting_up("batches"):
        sampler = StepBatchSampler(
            len(task.train), config.batch_size, config.seed, start, config.steps, procs.rank, procs.world_size
        )
    loader = step_loader(task.train, sampler, config.seed, config.num_workers)

    # model and optimizer
    with _setting_up("building the model"):
        model = _build_model(config, task).to(device, dtype)
        if config.standardize and resume is None:
            _calibrate(model, task, device, dtype)
    optimizer = OPTIMIZERS[config.optimizer](
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(SCHEDULES[config.lr_schedule], total=config.steps)
    )
    if resume is not None:
        # a checkpoint of another model (e.g. a flag changed hidden_size) fails here with the mismatch
        with _setting_up("the checkpoint does not fit the configured model", (ValueError, RuntimeError)):
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        rng = resume["rng"]
        if len(rng) != procs.world_size:
            log.warning("checkpoint holds RNG states of %d processes, not %d", len(rng), procs.world_size)
        restore_rng_state(rng[procs.rank % len(rng)])
    if procs.distributed:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        trained = model
    num_parameters = sum(p.numel() for p in model.parameters())

    # logging; the run folder is made only now, so a run that cannot be set up leaves nothing behind
    if procs.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    logger = WandbLogger(
        project=config.wandb_project,
        name=config.name,
        config={
            **dataclasses.asdict(config),
            "hrnn_version": hrnn.__version__,
            "world_size": procs.world_size,
            "num_parameters": num_parameters,
        },
        mode=wandb_mode,
        dir=run_dir,
        run_id=resume.get("wandb_run_id") if resume is not None else None,
    )

    def checkpoint(step: int) -> Path | None:
        rng = all_gather_objects(capture_rng_state(), procs)  # a collective: every process takes part
        if not procs.is_main:
            return None
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "config": dataclasses.asdict(config),
            "rng": rng,
            "wandb_run_id": logger.run_id,
            "hrnn_version": hrnn.__version__,
        }
        return save_checkpoint(run_dir / CHECKPOINT_NAME, state)

    def hidden_gradients(step: int) -> None:
        model.eval()  # the probe must not draw dropout masks from the training RNG stream
        norms = hidden_state_gradient_norms(model, *probe, lambda out, y: objective.loss(out, y).mean())
        model.train()
        logger.log_hidden_gradients(step, norms)

    log.info(
        "run %s: %s with %d parameters on %s, %d process(es)",
        run_dir,
        config.model,
        num_parameters,
        device,
        procs.world_size,
    )
    with (
        logger,
        tqdm(
            total=config.steps,
            initial=start,
            unit="step",
            disable=not (config.progress and procs.is_main),
            dynamic_ncols=True,
        ) as bar,
    ):
        # the loop: batch `step` updates the parameters from `step` to `step + 1` updates done
        model.train()
        loss_value, saved_step = math.nan, start
        loop_started = time.perf_counter()
        for step, batch in enumerate(loader, start=start):
            x, y = to_device(batch, device, dtype)
            output = trained(x)
            loss = objective.loss(output, y).mean()
            metric = objective.metric(output.detach(), y).mean()
            loss_value, metric_value = mean_over_processes(
                torch.stack([loss.detach(), metric]), procs
            ).tolist()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients: the mean over the global batch
            if procs.is_main and config.log_every and step % config.log_every == 0:
                logger.log_step(
                    step, loss_value, metric_value, scheduler.get_last_lr()[0], model, objective.metric_name
                )
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm or math.inf))
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                raise NonFiniteLossError(step, loss_value, grad_norm, checkpoint(step))
            optimizer.step()
            scheduler.step()
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)

            if procs.is_main and config.eval_every and done % config.eval_every == 0:
                scores = evaluate(model, eval_set, objective, config.batch_size, device, dtype)
                logger.log_metrics(done, {f"val/{key}": value for key, value in scores.items()})
                log.info("step %d: val %s", done, _format_metrics(scores))
            if procs.is_main and config.grad_log_every and done % config.grad_log_every == 0:
                hidden_gradients(done)
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                checkpoint(done)
                saved_step = done

        loop_time = time.perf_counter() - loop_started
        if saved_step != config.steps:
            checkpoint(config.steps)
        if not procs.is_main:
            return {}

        # final evaluation
        metrics: dict[str, float] = {}
        for split, dataset in (("val", task.val), ("test", task.test)):
            if dataset is not None:
                scores = evaluate(model, dataset, objective, config.batch_size, device, dtype)
                metrics.update({f"{split}_{key}": value for key, value in scores.items()})
        metrics.update(
            train_loss=loss_value,
            steps=config.steps,
            wall_time_s=time.perf_counter() - started,
            loop_time_s=loop_time,
            steps_per_s=(config.steps - start) / loop_time if loop_time > 0 else math.nan,
        )
        logger.log_metrics(config.steps, {f"final/{key}": value for key, value in metrics.items()})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: parse flags, train, print the final metrics as the last line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)  # argparse itself exits (status 2) on a malformed flag
    try:
        with _setting_up("configuration"):
            saved = load_checkpoint(args.resume)["config"] if args.resume is not None else None
            config = build_config(args.overrides, base=saved, config_file=args.config)
        with logging_redirect_tqdm():
            metrics = train(config, args.resume)
    except (ConfigError, NonFiniteLossError) as exc:  # the user's to fix: a message, not a traceback
        sys.exit(f"error: {exc}")
    if metrics:
        print(_format_metrics(metrics))


if __name__ == "__main__":
    main()
