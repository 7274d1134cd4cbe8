"""Accuracy benchmarks: every model trained with the same budget per task, by :func:`experiments.train.train`.

Usage::

    python -m experiments.benchmark --tasks adding1000 --models oscillator lstm
    python -m experiments.benchmark --tasks adding1000_readout --models hamiltonian lstm   # head only
    python -m experiments.benchmark --tasks smnist psmnist fsdd --steps 300    # a shortened budget
    python -m experiments.benchmark --quick --wandb disabled --out /tmp/bench  # smoke run (seconds)

For each task of :data:`BUDGETS` the budget (steps, batch, learning rate and schedule, hidden
size, clipping) is one for every model; the Hamiltonian cells get ``dt="auto"`` (chosen from
the sequence length, :func:`hrnn.step_size.heuristic_dt`), and a budget may add layer options
tuned for one model (:attr:`Budget.model_kwargs`, listed in the results).
Prints a table (model, parameters, test metric, wall time) and writes to ``--out``:
``results.csv`` / ``results.json`` (the budgets and the final metrics), ``curves.csv`` (the
validation metric every ``eval_every`` steps and the training loss every ``log_every`` steps,
read back from each run's offline W&B file) and ``curves_<task>.png``; the training runs
themselves (checkpoints, W&B) are in ``--out/runs``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run headless
import matplotlib.pyplot as plt

from hrnn.models import available_models
from hrnn.wandb_logger import OfflineRun, wait_for_offline_run
from tasks import ADDING_BASELINE_MSE

from .config import WANDB_MODES, TrainConfig, build_config
from .gradient_study import DEFAULT_MODELS, model_kwargs
from .train import NonFiniteLossError, train

__all__ = [
    "BUDGETS",
    "QUICK_BUDGETS",
    "Budget",
    "format_table",
    "main",
    "read_curves",
    "read_parameter_count",
    "run_benchmark",
    "train_config",
]

log = logging.getLogger("experiments.benchmark")


@dataclass(frozen=True)
class Budget:
    """The training budget of one benchmark task, the same for every model.

    ``model_kwargs`` maps a model name to layer options tuned for it (e.g.
    ``{"oscillator": {"alpha": 0.0}}``), given on top of ``dt="auto"`` for the Hamiltonian cells
    (:func:`experiments.gradient_study.model_kwargs`); ``baseline`` is a reference value of the
    metric drawn in the plot (e.g. 1/6 for the adding problem).
    """

    task: str
    task_kwargs: dict[str, Any]
    metric: str
    steps: int
    batch_size: int
    lr: float
    hidden_size: int
    eval_every: int
    lr_schedule: str = "cosine"
    clip_grad_norm: float | None = 1.0
    log_every: int = 10
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: float | None = None
    readout: str | None = None  # None: the task's
    standardize: bool = False
    freeze_layer: bool = False


def _adding(seq_len: int, **budget: Any) -> Budget:
    """An adding-problem budget at ``seq_len``: 50,000 training sequences, 64 units, test MSE.

    The oscillator runs with alpha = 0 (no harmonic restoring force), which learnt the adding
    problem best at T = 100 (docs/RESULTS.md 2.1); ``budget`` adds to its ``model_kwargs``.
    """
    model_kwargs = {"oscillator": {"alpha": 0.0}, **budget.pop("model_kwargs", {})}
    return Budget(
        "adding",
        {"seq_len": seq_len, "n_train": 50_000, "n_val": 256, "n_test": 1000},
        "test_mse",
        hidden_size=64,
        model_kwargs=model_kwargs,
        baseline=ADDING_BASELINE_MSE,
        **budget,
    )


#: Benchmark name -> budget. Sized for a 2-core CPU (docs/RESULTS.md lists the measured runs).
BUDGETS: dict[str, Budget] = {
    "adding1000": _adding(1000, steps=2000, batch_size=32, lr=3e-3, eval_every=100),
    # Read-out training: the layers keep their initial weights and only a linear head on the
    # standardised final state is trained, which asks whether the untrained state still holds
    # the two marked values after 1000 steps (docs/RESULTS.md 2.1b). gain 0.1 and dt 0.1 give the
    # hamiltonian cell a total phase T dt omega_max of 1 (experiments.memory_probe).
    "adding1000_readout": _adding(
        1000,
        steps=1000,
        batch_size=64,
        lr=1e-2,
        eval_every=100,
        model_kwargs={"hamiltonian": {"gain": 0.1, "dt": 0.1}},
        readout="state",
        standardize=True,
        freeze_layer=True,
    ),
    "adding5000": _adding(5000, steps=300, batch_size=16, lr=3e-3, eval_every=50),
    **{
        task: Budget(
            task,
            {"n_val": 500},
            "test_accuracy",
            steps=1000,
            batch_size=64,
            lr=2e-3,
            hidden_size=128,
            eval_every=100,
        )
        for task in ("smnist", "psmnist")
    },
    "fsdd": Budget(
        "fsdd", {}, "test_accuracy", steps=1000, batch_size=32, lr=2e-3, hidden_size=64, eval_every=100
    ),
}

#: ``--quick``: the same tasks at tiny sizes, a few steps each.
QUICK_BUDGETS: dict[str, Budget] = {
    name: dataclasses.replace(budget, steps=3, batch_size=4, hidden_size=8, eval_every=2, log_every=1)
    for name, budget in BUDGETS.items()
}
_QUICK_TASK_KWARGS = {
    "adding": {"seq_len": 20, "n_train": 16, "n_val": 8, "n_test": 8},
    "smnist": {"n_train": 16, "n_val": 8, "n_test": 8},
    "psmnist": {"n_train": 16, "n_val": 8, "n_test": 8},
    "fsdd": {"max_per_class": 2, "max_frames": 20},
}
QUICK_BUDGETS = {
    name: dataclasses.replace(budget, task_kwargs=_QUICK_TASK_KWARGS[budget.task])
    for name, budget in QUICK_BUDGETS.items()
}


def train_config(
    benchmark: str, budget: Budget, model: str, out_dir: Path, wandb: str, seed: int
) -> TrainConfig:
    """The :class:`experiments.config.TrainConfig` of ``model`` under ``budget``; the run is named ``<benchmark>-<model>``."""
    return build_config(
        {
            "task": budget.task,
            "task_kwargs": budget.task_kwargs,
            "model": model,
            "hidden_size": budget.hidden_size,
            "model_kwargs": {**model_kwargs(model), **budget.model_kwargs.get(model, {})},
            "readout": budget.readout,
            "standardize": budget.standardize,
            "freeze_layer": budget.freeze_layer,
            "lr": budget.lr,
            "lr_schedule": budget.lr_schedule,
            "batch_size": budget.batch_size,
            "steps": budget.steps,
            "clip_grad_norm": budget.clip_grad_norm,
            "eval_every": budget.eval_every,
            "log_every": budget.log_every,
            "grad_log_every": 0,
            "checkpoint_every": 0,
            "out_dir": str(out_dir / "runs"),
            "name": f"{benchmark}-{model}",
            "seed": seed,
            "device": "cpu",
            "wandb": wandb,
            "progress": True,
        }
    )


#: The metric :func:`experiments.train.train` logs last in a finished run; a run that diverged
#: has only its training records, of which ``train/loss`` comes first.
FINISHED_KEY, DIVERGED_KEY = "final/steps", "train/loss"


def _offline_run(run_dir: Path, last_key: str) -> OfflineRun | None:
    """The run's offline W&B record, once it holds ``last_key`` (``None`` without W&B)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    return wait_for_offline_run(runs[-1], last_key) if runs else None


def read_curves(run_dir: Path, last_key: str = FINISHED_KEY) -> list[dict[str, float]]:
    """``[{step, key, value}]`` of ``val/*`` and ``train/loss`` from the run's offline W&B file (empty without one)."""
    run = _offline_run(run_dir, last_key)
    if run is None:
        return []
    return [
        {"step": record["_step"], "key": key, "value": value}
        for record in run.history
        for key, value in record.items()
        if key.startswith("val/") or key == "train/loss"
    ]


def read_parameter_count(run_dir: Path, last_key: str = FINISHED_KEY) -> int | None:
    """The model's parameter count that :func:`experiments.train.train` stores in the W&B config (``None`` without W&B)."""
    run = _offline_run(run_dir, last_key)
    return None if run is None else run.config.get("num_parameters")


def _plot(benchmark: str, budget: Budget, curves: dict[str, list[dict]], path: Path) -> None:
    """Validation metric over steps, one line per model."""
    key = "val/" + budget.metric.removeprefix("test_")
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, rows in curves.items():
        points = [(r["step"], r["value"]) for r in rows if r["key"] == key]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=model)
    if budget.baseline is not None:
        ax.axhline(budget.baseline, color="grey", linestyle="--", linewidth=1, label="predict 1 (1/6)")
    if budget.metric == "test_mse":
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(key)
    ax.set_title(f"{benchmark}: {budget.steps} steps, batch {budget.batch_size}, lr {budget.lr:g}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    if rows:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def run_benchmark(
    benchmarks: Sequence[str],
    models: Sequence[str],
    out_dir: str | Path,
    *,
    budgets: dict[str, Budget] | None = None,
    wandb: str = "offline",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train every model on every benchmark; write results and curves to ``out_dir``; return the result rows."""
    budgets = BUDGETS if budgets is None else budgets
    unknown = sorted(set(benchmarks) - set(budgets))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known benchmarks: {sorted(budgets)}")
    unknown = sorted(set(models) - set(available_models()))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known models: {available_models()}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    for benchmark in benchmarks:
        budget = budgets[benchmark]
        curves: dict[str, list[dict]] = {}
        for model in models:
            config = train_config(benchmark, budget, model, out, wandb, seed)
            started = time.perf_counter()
            try:
                value, status, last_key = train(config)[budget.metric], "ok", FINISHED_KEY
            except NonFiniteLossError as error:
                # a diverged model is a result of the benchmark, not a reason to stop it
                value, status, last_key = math.nan, f"diverged at step {error.step}", DIVERGED_KEY
            wall_time = time.perf_counter() - started
            run_dir = Path(config.out_dir) / config.name
            curves[model] = read_curves(run_dir, last_key)
            curve_rows.extend({"benchmark": benchmark, "model": model, **row} for row in curves[model])
            results.append(
                {
                    "benchmark": benchmark,
                    "model": model,
                    "parameters": read_parameter_count(run_dir, last_key),
                    "metric": budget.metric,
                    "value": value,
                    "status": status,
                    "wall_time_s": wall_time,
                    "steps": budget.steps,
                    "batch_size": budget.batch_size,
                    "lr": budget.lr,
                    "hidden_size": budget.hidden_size,
                    "model_kwargs": json.dumps(config.model_kwargs),
                }
            )
            log.info("%s %s: %s = %.4g (%s)", benchmark, model, budget.metric, value, status)
            # rewrite after every run, so a long benchmark leaves results when stopped
            _write_csv(out / "results.csv", results)
            _write_csv(out / "curves.csv", curve_rows)
            (out / "results.json").write_text(
                json.dumps(
                    {"budgets": {b: dataclasses.asdict(budgets[b]) for b in benchmarks}, "results": results},
                    indent=2,
                )
                + "\n"
            )
            _plot(benchmark, budget, curves, out / f"curves_{benchmark}.png")
    return results


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The result rows as a fixed-width text table."""
    header = (
        f"{'benchmark':<12} {'model':<20} {'params':>8} {'metric':<14} {'value':>9} {'wall s':>8}  status"
    )
    lines = [header, "-" * len(header)]
    lines += [
        f"{r['benchmark']:<12} {r['model']:<20} {r['parameters'] or 'n/a':>8} {r['metric']:<14} {r['value']:>9.4g} "
        f"{r['wall_time_s']:>8.0f}  {r['status']}"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the budgets, train, print the result table."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tasks", nargs="+", default=list(BUDGETS), help=f"benchmarks, from {list(BUDGETS)}")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registry names")
    parser.add_argument("--steps", type=int, help="override every budget's number of steps")
    parser.add_argument("--lr", type=float, help="override every budget's learning rate")
    parser.add_argument("--out", default="outputs/benchmark", help="output folder")
    parser.add_argument("--wandb", choices=WANDB_MODES, default="offline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 steps per run (a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    overrides = {key: value for key, value in (("steps", args.steps), ("lr", args.lr)) if value is not None}
    budgets = {name: dataclasses.replace(budget, **overrides) for name, budget in budgets.items()}
    for name in args.tasks:
        if name in budgets:
            log.info("budget %s: %s", name, budgets[name])
    results = run_benchmark(
        args.tasks, args.models, args.out, budgets=budgets, wandb=args.wandb, seed=args.seed
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
