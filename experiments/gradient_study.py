r"""Long-term gradient study: do gradients reach the first steps of a long sequence?

For each model and each sequence length ``T``, on a fixed batch of the adding problem:

- :math:`\|\partial L / \partial h_t\|` for ``t = 0..T`` (:func:`hrnn.gradients.hidden_state_gradient_norms`)
  at initialisation and after a short training budget (the same steps, batch and learning rate
  for every model, trained by :func:`experiments.train.train`);
- the summary :math:`\min_t \|\partial L/\partial h_t\| / \|\partial L/\partial h_T\|`
  (:func:`min_ratio`): near 0 means the gradient vanishes before it reaches some step;
- the backward sensitivity :math:`\|dy_T/dy_t\|_2` on one sequence at initialisation, and for the
  Hamiltonian cells its symplecticity error :math:`\max_t \|M_t^\top J M_t - J\|_F`
  (:func:`hrnn.gradients.backward_sensitivity`), at a small hidden size since it needs Jacobians.

Measurements run in float64 on a copy of the model, so a tiny ratio is not lost to float32 underflow.

Usage::

    python -m experiments.gradient_study                      # 7 models x T = 100, 1000, 5000
    python -m experiments.gradient_study --quick --wandb disabled --out /tmp/study

Writes to ``--out``: ``curves.csv`` (model, seq_len, phase, t, grad_norm), ``sensitivity.csv``
(model, seq_len, t, sensitivity, symplecticity_error), ``summary.csv`` / ``summary.json`` (one
row per model, T and phase) and ``gradient_T<T>.png`` (log-scale curves, init and trained panels);
logs the same to W&B (one run per model and ``T``; offline by default).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the study runs headless
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate
from tqdm import tqdm

from hrnn.gradients import backward_sensitivity, hidden_state_gradient_norms
from hrnn.models import MODELS, available_models, build_model, models_with
from hrnn.validation import lookup
from hrnn.wandb_logger import WandbLogger
from tasks import build_task

from .checkpoint import load_checkpoint
from .config import WANDB_MODES, build_config
from .train import train

__all__ = [
    "AUTO_DT_MODELS",
    "DEFAULT_MODELS",
    "DEFAULT_SEQ_LENS",
    "GradientProfile",
    "SensitivityProfile",
    "StudyConfig",
    "gradient_profile",
    "main",
    "min_ratio",
    "model_kwargs",
    "plot_curves",
    "run_study",
    "sensitivity_profile",
]

log = logging.getLogger("experiments.gradient_study")

#: Every registry model.
DEFAULT_MODELS = tuple(available_models())
DEFAULT_SEQ_LENS = (100, 1000, 5000)
#: Models whose step size is chosen from T by :func:`hrnn.step_size.heuristic_dt` (``dt="auto"``).
AUTO_DT_MODELS = frozenset(models_with(auto_dt=True))
PHASES = ("init", "trained")


@dataclass(frozen=True)
class StudyConfig:
    """Everything one study run depends on; ``train_steps`` etc. are the same for every model."""

    models: tuple[str, ...] = DEFAULT_MODELS
    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS
    hidden_size: int = 64
    sensitivity_hidden_size: int = 16
    batch_size: int = 16
    train_steps: int = 20
    lr: float = 2e-3
    seed: int = 0
    out_dir: str = "outputs/gradient_study"
    wandb: str = "offline"
    wandb_project: str = "hrnn-gradient-study"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden_size", "sensitivity_hidden_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0 (0 = no trained phase), got {self.train_steps}")
        if any(t < 2 for t in self.seq_lens):
            raise ValueError(f"every sequence length must be >= 2, got {list(self.seq_lens)}")
        if self.wandb not in WANDB_MODES:
            raise ValueError(f"unknown W&B mode {self.wandb!r}; expected one of {list(WANDB_MODES)}")
        if not self.models or not self.seq_lens:
            raise ValueError("give at least one model and one sequence length")
        for name in self.models:
            lookup(MODELS, name, "model")


# ----------------------------------------------------------------------------- measuring


def min_ratio(norms: Tensor) -> tuple[float, int]:
    r"""``(min_t norms[t] / norms[-1], argmin t)`` of a curve :math:`\|dL/dh_t\|`, ``t = 0..T``, shape (T + 1,)."""
    if norms.dim() != 1 or norms.numel() < 2:
        raise ValueError(f"expected gradient norms of shape (T + 1,) with T >= 1, got {tuple(norms.shape)}")
    if not norms[-1] > 0:
        raise ValueError(
            f"the last-step gradient norm must be > 0 to normalise by it, got {float(norms[-1])}"
        )
    ratios = norms.double() / norms[-1].double()
    t = int(torch.argmin(ratios))
    return float(ratios[t]), t


@dataclass(frozen=True)
class GradientProfile:
    r""":math:`\|dL/dh_t\|` (shape (T + 1,), float64) and its :func:`min_ratio` summary."""

    norms: Tensor
    min_ratio: float
    argmin_t: int


def gradient_profile(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss
) -> GradientProfile:
    """Hidden-state gradient norms of ``model`` on ``x`` (batch, T, in), ``y``, measured on a float64 copy.

    The copy is in eval mode (no dropout); ``model`` itself is left untouched.
    """
    probe = copy.deepcopy(model).double().eval()
    norms = hidden_state_gradient_norms(probe, x.double(), y.double(), loss_fn).double()
    ratio, t = min_ratio(norms)
    return GradientProfile(norms=norms, min_ratio=ratio, argmin_t=t)


@dataclass(frozen=True)
class SensitivityProfile:
    r""":math:`\|dy_T/dy_t\|_2` for ``t = 0..T`` and its minimum; the symplecticity error curve and its
    maximum for layers with a canonical (p, q) state (``None`` for the others)."""

    norms: Tensor
    min_norm: float
    symplecticity_error: Tensor | None
    max_symplecticity_error: float | None


def sensitivity_profile(model: nn.Module, x: Tensor) -> SensitivityProfile:
    """Backward sensitivity of a single-layer ``model`` on one sequence ``x`` (T, in), in float64."""
    result = backward_sensitivity(copy.deepcopy(model).double().eval(), x.double())
    error = result.symplecticity_error
    return SensitivityProfile(
        norms=result.norms,
        min_norm=float(result.norms.min()),
        symplecticity_error=error,
        max_symplecticity_error=None if error is None else float(error.max()),
    )


# ----------------------------------------------------------------------------- one (model, T)


#: The study measures conservative recurrences: the Hamiltonian cells without their damping, and the
#: seed papers' cell also without its timescales (its default since they were added; see
#: docs/step_size.md).
CONSERVATIVE = {
    "hamiltonian": {"damping": None},
    "static_hamiltonian": {"timescales": None, "damping": None},
}


def model_kwargs(name: str) -> dict[str, object]:
    """Layer options of ``name`` in the study: ``dt="auto"`` (chosen from T) for the Hamiltonian cells."""
    return {"dt": "auto", **CONSERVATIVE.get(name, {})} if name in AUTO_DT_MODELS else {}


def _build(name: str, hidden_size: int, seq_len: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the same draw as experiments.train, which seeds before building
    # the study measures the recurrence itself: one bare layer, no residual blocks
    return build_model(name, 2, hidden_size, 1, num_blocks=0, seq_len=seq_len, **model_kwargs(name))


def _train(config: StudyConfig, name: str, seq_len: int, run_root: Path) -> tuple[dict[str, float], dict]:
    """Train with :func:`experiments.train.train`; return its final metrics and the trained state_dict."""
    train_config = build_config(
        {
            "task": "adding",
            "task_kwargs": {
                "seq_len": seq_len,
                "n_train": config.batch_size * config.train_steps,
                "n_val": 0,
                "n_test": 4 * config.batch_size,
            },
            "model": name,
            "hidden_size": config.hidden_size,
            "num_blocks": 0,
            "model_kwargs": model_kwargs(name),
            "lr": config.lr,
            "lr_schedule": "constant",
            "batch_size": config.batch_size,
            "steps": config.train_steps,
            "eval_every": 0,
            "log_every": 0,
            "grad_log_every": 0,
            "checkpoint_every": 0,
            "out_dir": str(run_root),
            "name": f"{name}-T{seq_len}",
            "seed": config.seed,
            "device": "cpu",
            "wandb": "disabled",
            "progress": False,
        }
    )
    metrics = train(train_config)
    return metrics, load_checkpoint(run_root / train_config.name)["model"]


def _batch(seq_len: int, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed measuring batch: the first ``batch_size`` test sequences of the adding task at ``seq_len``."""
    test = build_task("adding", seq_len=seq_len, n_train=1, n_val=0, n_test=batch_size, seed=seed).test
    return default_collate([test[i] for i in range(batch_size)])


def study_one(config: StudyConfig, name: str, seq_len: int, run_root: Path) -> dict:
    """All measurements of model ``name`` at ``seq_len``: profiles per phase, sensitivity, final test MSE."""
    x, y = _batch(seq_len, config.batch_size, config.seed)
    model = _build(name, config.hidden_size, seq_len, config.seed)
    profiles = {"init": gradient_profile(model, x, y)}
    metrics: dict[str, float] = {}
    if config.train_steps:
        metrics, state = _train(config, name, seq_len, run_root)
        model.load_state_dict(state)
        profiles["trained"] = gradient_profile(model, x, y)
    small = _build(name, config.sensitivity_hidden_size, seq_len, config.seed)
    sensitivity = sensitivity_profile(small, x[0])
    return {
        "profiles": profiles,
        "sensitivity": sensitivity,
        "test_mse": metrics.get("test_mse", math.nan),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ----------------------------------------------------------------------------- outputs


def _summary_rows(name: str, seq_len: int, result: dict) -> list[dict]:
    sensitivity: SensitivityProfile = result["sensitivity"]
    rows = []
    for phase, profile in result["profiles"].items():
        norms = profile.norms
        rows.append(
            {
                "model": name,
                "seq_len": seq_len,
                "phase": phase,
                "parameters": result["parameters"],
                "min_ratio": profile.min_ratio,
                "argmin_t": profile.argmin_t,
                "ratio_0": float(norms[0] / norms[-1]),
                "grad_norm_T": float(norms[-1]),
                "test_mse": result["test_mse"] if phase == "trained" else math.nan,
                "sensitivity_min": sensitivity.min_norm if phase == "init" else math.nan,
                "symplecticity_error_max": (
                    sensitivity.max_symplecticity_error
                    if phase == "init" and sensitivity.max_symplecticity_error is not None
                    else math.nan
                ),
            }
        )
    return rows


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(curves: dict[tuple[str, str], Tensor], seq_len: int, path: Path) -> None:
    r"""One figure for ``seq_len``: a log-scale panel of :math:`\|dL/dh_t\| / \|dL/dh_T\|` per phase.

    ``curves[(model, phase)]`` is the norm curve (T + 1,). Zeros (float64 underflow) are not drawn.
    """
    phases = [p for p in PHASES if any(phase == p for _, phase in curves)]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 3.8), sharey=True, squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        for (name, curve_phase), norms in curves.items():
            if curve_phase == phase:
                ratio = (norms / norms[-1]).numpy()
                ax.semilogy(range(len(ratio)), ratio, label=name, linewidth=1.2)
        ax.set_title(f"adding problem, T = {seq_len}, {phase}")
        ax.set_xlabel("t")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(r"$\|\partial L/\partial h_t\| \,/\, \|\partial L/\partial h_T\|$")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _log_wandb(config: StudyConfig, name: str, seq_len: int, rows: list[dict], result: dict) -> None:
    """One W&B run per (model, T): the curves at step 0 (init) and ``train_steps`` (trained), and the summary."""
    run_config = {**asdict(config), "model": name, "seq_len": seq_len}
    with WandbLogger(
        project=config.wandb_project,
        name=f"{name}-T{seq_len}",
        config=run_config,
        mode=config.wandb,
        dir=config.out_dir,
    ) as logger:
        for row, (phase, profile) in zip(rows, result["profiles"].items(), strict=True):
            step = 0 if phase == "init" else config.train_steps
            logger.log_hidden_gradients(step, profile.norms)
            scalars = {key: value for key, value in row.items() if isinstance(value, int | float)}
            logger.log_metrics(step, {f"{phase}/{key}": value for key, value in scalars.items()})


def run_study(config: StudyConfig) -> list[dict]:
    """Run every (model, T) of ``config``, write the CSVs, JSON and plots to ``config.out_dir``; return the summary."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: list[dict] = []
    curve_rows: list[dict] = []
    sensitivity_rows: list[dict] = []
    grid = [(seq_len, name) for seq_len in config.seq_lens for name in config.models]
    with tempfile.TemporaryDirectory(prefix="gradient-study-") as run_root:
        curves: dict[int, dict[tuple[str, str], Tensor]] = {t: {} for t in config.seq_lens}
        for seq_len, name in tqdm(grid, desc="gradient study", unit="run", disable=not config.progress):
            result = study_one(config, name, seq_len, Path(run_root))
            rows = _summary_rows(name, seq_len, result)
            summary.extend(rows)
            for phase, profile in result["profiles"].items():
                curves[seq_len][(name, phase)] = profile.norms
                curve_rows.extend(
                    {"model": name, "seq_len": seq_len, "phase": phase, "t": t, "grad_norm": v}
                    for t, v in enumerate(profile.norms.tolist())
                )
            sensitivity: SensitivityProfile = result["sensitivity"]
            errors = sensitivity.symplecticity_error
            sensitivity_rows.extend(
                {
                    "model": name,
                    "seq_len": seq_len,
                    "t": t,
                    "sensitivity": v,
                    "symplecticity_error": math.nan if errors is None else float(errors[t]),
                }
                for t, v in enumerate(sensitivity.norms.tolist())
            )
            for row in rows:
                log.info(
                    "%s T=%d %s: min ratio %.3g at t=%d",
                    name,
                    seq_len,
                    row["phase"],
                    row["min_ratio"],
                    row["argmin_t"],
                )
            _log_wandb(config, name, seq_len, rows, result)
            # rewrite the outputs after every run, so a long study leaves results when stopped
            _write_csv(out / "summary.csv", summary)
            (out / "summary.json").write_text(
                json.dumps({"config": asdict(config), "summary": summary}, indent=2) + "\n"
            )
            _write_csv(out / "curves.csv", curve_rows)
            _write_csv(out / "sensitivity.csv", sensitivity_rows)
            plot_curves(curves[seq_len], seq_len, out / f"gradient_T{seq_len}.png")
    return summary


# ----------------------------------------------------------------------------- command line

#: ``--quick``: tiny sizes for a smoke run (seconds).
QUICK = {
    "seq_lens": (20, 50),
    "hidden_size": 8,
    "sensitivity_hidden_size": 4,
    "batch_size": 4,
    "train_steps": 3,
}


def _parser() -> argparse.ArgumentParser:
    defaults = StudyConfig()
    parser = argparse.ArgumentParser(
        prog="python -m experiments.gradient_study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--models", nargs="+", default=list(defaults.models), help="registry names")
    parser.add_argument(
        "--seq-lens", nargs="+", type=int, default=None, help=f"default: {list(DEFAULT_SEQ_LENS)}"
    )
    parser.add_argument("--train-steps", type=int, default=None, help=f"default: {defaults.train_steps}")
    parser.add_argument("--hidden", type=int, default=None, help=f"default: {defaults.hidden_size}")
    parser.add_argument(
        "--sensitivity-hidden", type=int, default=None, help=f"default: {defaults.sensitivity_hidden_size}"
    )
    parser.add_argument("--batch-size", type=int, default=None, help=f"default: {defaults.batch_size}")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out_dir, help="output folder")
    parser.add_argument("--wandb", choices=WANDB_MODES, default=defaults.wandb)
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke run: {QUICK}")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def config_from_args(argv: list[str] | None = None) -> StudyConfig:
    """The :class:`StudyConfig` of a command line: defaults, then ``--quick`` sizes, then explicit flags."""
    args = _parser().parse_args(argv)
    values = dict(QUICK) if args.quick else {}
    flags = {
        "seq_lens": args.seq_lens and tuple(args.seq_lens),
        "train_steps": args.train_steps,
        "hidden_size": args.hidden,
        "sensitivity_hidden_size": args.sensitivity_hidden,
        "batch_size": args.batch_size,
    }
    values.update({key: value for key, value in flags.items() if value is not None})
    return StudyConfig(
        models=tuple(args.models),
        lr=args.lr,
        seed=args.seed,
        out_dir=args.out,
        wandb=args.wandb,
        progress=args.progress,
        **values,
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; prints the summary table."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("experiments.train").setLevel(logging.WARNING)
    config = config_from_args(argv)
    summary = run_study(config)
    header = f"{'model':<20} {'T':>5} {'phase':<8} {'min ratio':>10} {'argmin t':>8} {'test MSE':>9}"
    lines = [header] + [
        f"{r['model']:<20} {r['seq_len']:>5} {r['phase']:<8} {r['min_ratio']:>10.3g} "
        f"{r['argmin_t']:>8} {r['test_mse']:>9.4g}"
        for r in summary
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
