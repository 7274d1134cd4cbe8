"""The training configuration: one typed dataclass, loaded from YAML and overridden by CLI flags.

Precedence, lowest first: the dataclass defaults (the built-in default run), a YAML file
(``--config``) or a resumed run's saved config (``--resume``), then command-line flags. Flags are
generated from the dataclass fields (``hidden_size`` -> ``--hidden-size``), so a new field needs
no parser code. Dict fields take ``KEY=VALUE`` pairs and update the dict key by key.

Every check of a field's value lives here (:func:`validate_config`); the names a string field
accepts come from ``CHOICES``, which ``--help`` lists too. ``python -m experiments.config``
prints the default run as YAML (``experiments/configs/adding_hamiltonian.yaml`` is that output).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hrnn.models import READOUTS, available_models
from tasks.registry import available_tasks

__all__ = [
    "CHOICES",
    "DEFAULT_TASK_KWARGS",
    "DTYPES",
    "OPTIMIZERS",
    "SCHEDULES",
    "WANDB_MODES",
    "CommandLine",
    "TrainConfig",
    "build_config",
    "check_run_name",
    "config_yaml",
    "constant_schedule",
    "cosine_schedule",
    "load_yaml",
    "parse_args",
    "validate_config",
    "warmup_cosine_schedule",
]


def constant_schedule(step: int, total: int) -> float:
    """Learning-rate factor 1 at every step."""
    return 1.0


def cosine_schedule(step: int, total: int) -> float:
    r"""Cosine decay from 1 to 0 over ``total`` steps: :math:`(1 + \cos(\pi s / S)) / 2` (Loshchilov & Hutter 2017)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def warmup_cosine_schedule(step: int, total: int, warmup: float = 0.05) -> float:
    r"""Linear warm-up over the first ``warmup`` fraction of ``total`` steps, then cosine decay to 0.

    With :math:`W = \lceil \text{warmup} \cdot S \rceil` warm-up steps the factor is :math:`(s + 1) / W`
    for :math:`s < W` (the first update already moves, the last warm-up update has the full rate),
    then :math:`(1 + \cos(\pi (s - W) / (S - W))) / 2`.
    """
    warm = max(1, math.ceil(warmup * total))
    if step < warm:
        return (step + 1) / warm
    progress = min(step - warm, total - warm) / max(total - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# The names the string fields accept, and what each means.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": constant_schedule,
    "cosine": cosine_schedule,
    "warmup_cosine": warmup_cosine_schedule,
}
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
WANDB_MODES = ("offline", "online", "disabled")
# The names each string field accepts (a task or model registry, or one of the tables above).
CHOICES: dict[str, Callable[[], list[str]]] = {
    "task": available_tasks,
    "model": available_models,
    "readout": lambda: list(READOUTS),
    "optimizer": lambda: list(OPTIMIZERS),
    "lr_schedule": lambda: list(SCHEDULES),
    "dtype": lambda: list(DTYPES),
    "wandb": lambda: list(WANDB_MODES),
}
#: numpy's global generator takes seeds in [0, 2**32).
MAX_SEED = 2**32 - 1
# Task options used when no source sets task_kwargs: the built-in runs use the adding problem at
# T = 50, not the task's own T = 100 (see TrainConfig). Other tasks keep their own defaults.
DEFAULT_TASK_KWARGS: dict[str, dict[str, Any]] = {"adding": {"seq_len": 50}}


@dataclass
class TrainConfig:
    """Every hyperparameter of a training run. The defaults are the built-in default run.

    The default trains the Hamiltonian cell (64 units, the cell's ``dt = 0.1``) on the adding
    problem with ``T = 50`` (10,000 training sequences) for 3,000 steps, to below one tenth of
    the 1/6 baseline MSE in under 3 minutes on a 2-core CPU. At ``T = 100`` the same budget
    stays near the baseline (test MSE 0.13 after 2,000 steps at lr 2e-3; lr 1e-2 diverges).
    """

    # task: tasks.build_task(task, seed=seed, **task_kwargs)
    task: str = "adding"
    task_kwargs: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TASK_KWARGS["adding"]))
    # model: hrnn.models.build_model(model, ..., hidden_size, num_blocks=..., num_layers=..., **model_kwargs)
    # num_blocks: residual blocks (hrnn.blocks); 0 = the bare layer of num_layers cells
    model: str = "hamiltonian"
    hidden_size: int = 64
    num_blocks: int = 2
    num_layers: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # head: readout None = the task's: "sequence" for per-step targets, else "mean" over time for
    # classification and "last" for regression; "state" reads the final (p, q) / (h, c).
    # standardize: fixed (f - mean) / std before the head, measured on the first training samples.
    # freeze_layer: train the head only (the recurrent layer keeps its initial weights).
    readout: str | None = None
    standardize: bool = False
    freeze_layer: bool = False
    # optimisation; steps count optimizer updates
    optimizer: str = "adam"
    lr: float = 5e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    batch_size: int = 64
    steps: int = 3000
    clip_grad_norm: float | None = 1.0
    # evaluation, logging (W&B scalars every log_every steps, ||dL/dh_t|| every grad_log_every; 0 = never)
    eval_every: int = 500
    log_every: int = 1
    grad_log_every: int = 250
    checkpoint_every: int = 1000
    # run folder out_dir/name (name defaults to <task>-<model>-<timestamp>); W&B run name too
    out_dir: str = "runs"
    name: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    # torch's intra-op threads (0: torch's default, one per core). Small recurrent models gain
    # nothing from more than one, and lose several-fold when the cores are shared with other jobs.
    num_threads: int = 1
    num_workers: int = 0
    wandb: str | None = None  # offline | online | disabled; None: $WANDB_MODE, else offline
    wandb_project: str = "hrnn"
    progress: bool = True


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """``(type, optional)`` of a field annotation such as ``float | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return typing.get_origin(annotation) or annotation, False


def _coerce(name: str, value: Any) -> Any:
    """``value`` converted to field ``name``'s type, or a ``TypeError`` naming the field."""
    kind, optional = _base_type(_TYPES[name])
    if value is None:
        if optional:
            return None
        raise TypeError(f"config field {name!r} must be a {kind.__name__}, got None")
    if kind is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads "1e-3" as a string and "1" as an int
        except ValueError:
            pass
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(
            f"config field {name!r} must be a {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return dict(value) if kind is dict else value


# Lower bounds of the numeric fields; 0 means never/none for the intervals and counts.
_AT_LEAST: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "num_layers", "batch_size", "steps"), 1),
    **dict.fromkeys(("eval_every", "log_every", "grad_log_every", "checkpoint_every"), 0),
    **dict.fromkeys(("num_threads", "num_workers", "seed"), 0),
}


def _check_bounds(config: TrainConfig) -> None:
    for name, minimum in _AT_LEAST.items():
        if getattr(config, name) < minimum:
            never = " (0 = never/none)" if minimum == 0 else ""
            raise ValueError(
                f"config field {name!r} must be >= {minimum}{never}, got {getattr(config, name)}"
            )
    if config.seed > MAX_SEED:
        raise ValueError(f"config field 'seed' must be <= 2**32 - 1 = {MAX_SEED}, got {config.seed}")


def _check_floats(config: TrainConfig) -> None:
    """``lr`` > 0, ``weight_decay`` >= 0, ``clip_grad_norm`` > 0 or None, all finite."""
    for name in ("lr", "weight_decay", "clip_grad_norm"):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"config field {name!r} must be a finite number, got {value}")
    if not config.lr > 0:
        raise ValueError(f"config field 'lr' must be > 0, got {config.lr}")
    if config.weight_decay < 0:
        raise ValueError(f"config field 'weight_decay' must be >= 0, got {config.weight_decay}")
    if config.clip_grad_norm is not None and not config.clip_grad_norm > 0:
        raise ValueError(f"config field 'clip_grad_norm' must be > 0 or None, got {config.clip_grad_norm}")


def _check_choices(config: TrainConfig) -> None:
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value is not None and value not in choices():
            raise ValueError(f"config field {name!r}: unknown value {value!r}; expected one of {choices()}")


def _check_device(device: str) -> None:
    problem = ValueError(
        f"config field 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}"
    )
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:  # torch's message for "cuda:abc" is a parser error, not a sentence
        raise problem from None
    if kind not in ("cpu", "cuda"):
        raise problem


def check_run_name(name: str | None) -> None:
    """``name`` must be one folder name inside ``out_dir``: not empty, no path separator, not ``.``/``..``."""
    if name is None:
        return
    separators = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    if not name.strip() or name in (".", "..") or any(sep in name for sep in separators):
        raise ValueError(
            f"config field 'name' must be one folder name inside out_dir (not empty, no '/', not '.' or '..'), "
            f"got {name!r}"
        )


def validate_config(config: TrainConfig) -> TrainConfig:
    """Check every field's type and range; return ``config`` with numbers coerced to their types."""
    for name in _FIELDS:
        setattr(config, name, _coerce(name, getattr(config, name)))
    _check_bounds(config)
    _check_floats(config)
    _check_choices(config)
    _check_device(config.device)
    check_run_name(config.name)
    return config


def _from_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {unknown}; known keys: {sorted(_FIELDS)}")
    return {name: _coerce(name, value) for name, value in values.items()}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The config fields set in YAML file ``path`` (a mapping of field names to values)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:  # its message spans lines; the CLI prints one
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys to values, got {type(values).__name__}")
    return _from_mapping(values, str(path))


def _scalar(text: str) -> Any:
    """A ``KEY=VALUE`` value: int, float, bool/null as YAML spells them, else the string itself."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    value = yaml.safe_load(text)
    return value if isinstance(value, bool | None) else text


def _pair(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, _scalar(value)


def _optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description="Train a sequence model on a task, with W&B logging (offline by default).",
        argument_default=argparse.SUPPRESS,  # only the flags actually given override the config
    )
    parser.add_argument("--config", type=Path, help="YAML file of config fields")
    parser.add_argument("--resume", type=Path, help="run folder (or checkpoint file) to continue")
    for name, f in _FIELDS.items():
        kind, optional = _base_type(_TYPES[name])
        flag = "--" + name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        choices = f"one of {', '.join(CHOICES[name]())}; " if name in CHOICES else ""
        if kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=f"default: {default}"
            )
        elif kind is dict:
            parser.add_argument(
                flag, dest=name, type=_pair, nargs="+", metavar="KEY=VALUE", help=f"default: {default}"
            )
        else:
            parse = _optional(kind) if optional else kind
            parser.add_argument(
                flag,
                dest=name,
                type=parse,
                help=f"{choices}default: {default}" + (" ('none' for None)" if optional else ""),
            )
    return parser


@dataclass(frozen=True)
class CommandLine:
    """Parsed command line: the ``--config`` file, the ``--resume`` path and the field overrides."""

    config: Path | None
    resume: Path | None
    overrides: dict[str, Any]


def parse_args(argv: list[str] | None = None) -> CommandLine:
    """Parse ``argv`` (default ``sys.argv[1:]``); only the flags given appear in ``overrides``.

    A malformed flag exits with argparse's usage message (status 2).
    """
    parser = _parser()
    args = vars(parser.parse_args(argv))
    config, resume = args.pop("config", None), args.pop("resume", None)
    if config is not None and resume is not None:
        parser.error("give either --config or --resume, not both (a resumed run keeps its saved config)")
    for name in ("task_kwargs", "model_kwargs"):
        if name in args:
            args[name] = dict(args[name])
    return CommandLine(config, resume, args)


def build_config(
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    config_file: Path | None = None,
) -> TrainConfig:
    """A validated config: defaults, then ``base`` (a saved config), then ``config_file``, then ``overrides``.

    Dict fields in ``overrides`` update the dict key by key; other fields replace the value. When
    no source sets ``task_kwargs``, it is ``DEFAULT_TASK_KWARGS`` of the chosen task (so
    ``--task copy`` does not inherit the default adding problem's ``seq_len``).
    """
    values = _from_mapping(dict(base or {}), "saved config")
    if config_file is not None:
        values.update(load_yaml(config_file))
    overrides = _from_mapping(dict(overrides or {}), "overrides")
    task = overrides.get("task", values.get("task", TrainConfig.task))
    values.setdefault("task_kwargs", dict(DEFAULT_TASK_KWARGS.get(task, {})))
    for name, value in overrides.items():
        if isinstance(value, dict):
            value = {**values.get(name, getattr(TrainConfig(), name)), **value}
        values[name] = value
    return validate_config(TrainConfig(**values))


def config_yaml(config: TrainConfig) -> str:
    """``config`` as the YAML text ``--config`` reads back (every field, in declaration order)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


if __name__ == "__main__":
    print(config_yaml(TrainConfig()), end="")
