"""Accuracy benchmarks: every model trained by one recipe per task, by :func:`experiments.train.train`.

Usage::

    python -m experiments.benchmark --tasks fsdd smnist_rows --models hamiltonian lstm gru
    python -m experiments.benchmark --tasks adding1000 --seeds 0 1 2
    python -m experiments.benchmark --tasks psmnist --steps 300          # a shortened budget
    python -m experiments.benchmark --tasks adding1000_readout --models hamiltonian lstm   # diagnostic
    python -m experiments.benchmark --tasks fsdd --models hamiltonian \\
        --model-kwargs '{"hamiltonian": {"emit": "p"}}' --out outputs/emit_p     # an ablation
    python -m experiments.benchmark --quick --wandb disabled --out /tmp/bench  # smoke run (seconds)

Each benchmark of :data:`BUDGETS` gives every model exactly the same training config but for the
model's name: the task, the number of steps and one :class:`Recipe` (optimizer, learning rate and
schedule, weight decay, batch, hidden size, clipping, seeds). The models run on their registry
defaults (:func:`hrnn.build_model`: residual blocks and the trainer's read-out). Only the
``adding1000_readout`` diagnostic and ``--model-kwargs`` ablations set per-model layer options.

Prints a table (one row per benchmark and model: parameters, the metric of every seed and their
mean, wall time, status) and writes to ``--out``: ``results.csv`` / ``results.json`` (the budgets
and one row per run), ``results.md`` (the table in markdown), ``curves.csv`` (the validation metric
every ``eval_every`` steps and the training loss every ``log_every`` steps, read back from each
run's offline W&B file) and ``curves_<benchmark>.png``; the training runs themselves (checkpoints,
W&B) are in ``--out/runs``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run headless
import matplotlib.pyplot as plt

from hrnn.models import available_models
from hrnn.wandb_logger import OfflineRun, wait_for_offline_run
from tasks import ADDING_BASELINE_MSE, copy_baseline_cross_entropy

from .checkpoint import find_checkpoint, load_checkpoint
from .config import WANDB_MODES, TrainConfig, build_config
from .train import NonFiniteLossError, train

__all__ = [
    "BUDGETS",
    "COMMON",
    "COMPARISONS",
    "ESCAPE",
    "MSE_THRESHOLDS",
    "QUICK_BUDGETS",
    "Budget",
    "Recipe",
    "first_step_below",
    "format_markdown",
    "format_table",
    "main",
    "read_curves",
    "read_run",
    "run_benchmark",
    "train_config",
]

log = logging.getLogger("experiments.benchmark")


@dataclass(frozen=True)
class Recipe:
    """How every model of a benchmark is trained; each field but ``seeds`` is the TrainConfig field of that name."""

    optimizer: str
    lr: float
    weight_decay: float
    lr_schedule: str
    batch_size: int
    hidden_size: int
    clip_grad_norm: float | None
    seeds: tuple[int, ...]

    def train_fields(self) -> dict[str, Any]:
        """The recipe as :class:`experiments.config.TrainConfig` fields (every field but ``seeds``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "seeds"}


#: The recipe of every benchmark but the long adding problems.
COMMON = Recipe("adamw", 3e-3, 0.01, "warmup_cosine", 64, 64, 1.0, (0, 1))
#: The long adding problems: models sit on the 1/6 plateau for thousands of steps before they
#: escape, and decay, clipping or small batches starve that escape; so constant lr, no clipping,
#: batch 50, and three seeds because escape times vary more than tenfold between seeds.
ESCAPE = Recipe("adam", 2e-3, 0.0, "constant", 50, 64, None, (0, 1, 2))


@dataclass(frozen=True)
class Budget:
    """One benchmark: a task, its metric, the number of steps and the recipe, the same for every model.

    ``readout`` ``None`` leaves the trainer's default; ``baseline`` is a reference value of the
    metric drawn in the plot (e.g. 1/6 for the adding problem). The last four fields serve
    diagnostics only: ``model_kwargs`` maps a model name to layer options, ``num_blocks`` 0 is the
    bare layer, ``standardize`` / ``freeze_layer`` as in :class:`experiments.config.TrainConfig`.
    """

    task: str
    task_kwargs: dict[str, Any]
    metric: str
    steps: int
    eval_every: int
    recipe: Recipe = COMMON
    readout: str | None = None
    baseline: float | None = None
    log_every: int = 10
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_blocks: int = TrainConfig.num_blocks
    standardize: bool = False
    freeze_layer: bool = False

    @property
    def per_model(self) -> bool:
        """Whether some model gets layer options of its own (a diagnostic, not a comparison)."""
        return bool(self.model_kwargs)


def _adding(seq_len: int, **budget: Any) -> Budget:
    """An adding-problem budget at ``seq_len``: 50,000 training sequences, test MSE, the ESCAPE recipe."""
    sizes = {"seq_len": seq_len, "n_train": 50_000, "n_val": 256, "n_test": 1000}
    defaults = {"recipe": ESCAPE, "readout": "last", "eval_every": 100, "baseline": ADDING_BASELINE_MSE}
    return Budget("adding", sizes, "test_mse", **{**defaults, **budget})


COPY_DELAY = 100

#: Benchmark name -> budget.
BUDGETS: dict[str, Budget] = {
    # whole speakers held out (each seed holds out the one it draws): the split by recording
    # index is saturated at 100 %
    "fsdd": Budget("fsdd", {"split": "speaker"}, "test_accuracy", steps=1000, eval_every=100),
    "smnist_rows": Budget("smnist_rows", {"n_val": 500}, "test_accuracy", steps=1000, eval_every=100),
    "psmnist": Budget("psmnist", {"n_val": 500}, "test_accuracy", steps=1000, eval_every=100),
    "adding1000": _adding(1000, steps=10_000),
    "adding5000": _adding(5000, steps=3000),
    "copy": Budget(
        "copy",
        {"delay": COPY_DELAY},
        "test_loss",
        steps=2000,
        eval_every=100,
        baseline=copy_baseline_cross_entropy(COPY_DELAY),
    ),
    # A diagnostic of the bare seed-paper cell, not a comparison: the layers keep their initial
    # weights and only a linear head on the standardised final state is trained, which asks
    # whether the untrained state still holds the two marked values after 1000 steps
    # (docs/RESULTS.md 2.1b). gain 0.1 and dt 0.1 give the hamiltonian cell a total phase
    # T dt omega_max of 1 (experiments.memory_probe).
    "adding1000_readout": _adding(
        1000,
        steps=1000,
        recipe=Recipe("adam", 1e-2, 0.0, "cosine", 64, 64, 1.0, (0, 1)),
        model_kwargs={"static_hamiltonian": {"gain": 0.1, "dt": 0.1, "timescales": None}},
        num_blocks=0,
        readout="state",
        standardize=True,
        freeze_layer=True,
    ),
}
#: The benchmarks that compare models (every one but the diagnostics); the CLI's default.
COMPARISONS: list[str] = [name for name, budget in BUDGETS.items() if not budget.per_model]

_QUICK_TASK_KWARGS: dict[str, dict[str, Any]] = {
    "adding": {"seq_len": 20, "n_train": 16, "n_val": 8, "n_test": 8},
    "copy": {"delay": 5, "n_train": 16, "n_val": 8, "n_test": 8},
    "smnist_rows": {"n_train": 16, "n_val": 8, "n_test": 8},
    "psmnist": {"n_train": 16, "n_val": 8, "n_test": 8},
    "fsdd": {"max_per_class": 2, "max_frames": 20},
}


def _quick(budget: Budget) -> Budget:
    """``budget`` at tiny sizes: 3 steps, batch 4, 8 units, one seed."""
    return dataclasses.replace(
        budget,
        task_kwargs={**budget.task_kwargs, **_QUICK_TASK_KWARGS[budget.task]},
        steps=3,
        eval_every=2,
        log_every=1,
        recipe=dataclasses.replace(budget.recipe, batch_size=4, hidden_size=8, seeds=(0,)),
    )


#: ``--quick``: the same benchmarks at tiny sizes, a smoke run.
QUICK_BUDGETS: dict[str, Budget] = {name: _quick(budget) for name, budget in BUDGETS.items()}


def _run_name(benchmark: str, model: str, seed: int) -> str:
    return f"{benchmark}-{model}-s{seed}"


def train_config(
    benchmark: str, budget: Budget, model: str, out_dir: Path, wandb: str, seed: int, device: str = "cpu"
) -> TrainConfig:
    """The :class:`experiments.config.TrainConfig` of ``model`` under ``budget``; the run is named ``<benchmark>-<model>-s<seed>``."""
    return build_config(
        {
            "task": budget.task,
            "task_kwargs": budget.task_kwargs,
            "model": model,
            "num_blocks": budget.num_blocks,
            "model_kwargs": budget.model_kwargs.get(model, {}),
            "readout": budget.readout,
            "standardize": budget.standardize,
            "freeze_layer": budget.freeze_layer,
            **budget.recipe.train_fields(),
            "steps": budget.steps,
            "eval_every": budget.eval_every,
            "log_every": budget.log_every,
            "grad_log_every": 0,
            "checkpoint_every": 0,
            "out_dir": str(out_dir / "runs"),
            "name": _run_name(benchmark, model, seed),
            "seed": seed,
            "device": device,
            "wandb": wandb,
            "progress": True,
        }
    )


#: The metric :func:`experiments.train.train` logs last in a finished run; a run that diverged
#: has only its training records, of which ``train/loss`` comes first.
FINISHED_KEY, DIVERGED_KEY = "final/steps", "train/loss"


def _own_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id in the run's checkpoint (``None`` without one, or without W&B)."""
    try:
        return load_checkpoint(find_checkpoint(run_dir)).get("wandb_run_id")
    except (FileNotFoundError, ValueError):
        return None


def _offline_run(run_dir: Path, last_key: str) -> OfflineRun | None:
    """The run's offline W&B record, once it holds ``last_key`` (``None`` without W&B).

    A folder may hold several W&B runs (a resumed or repeated run): the one whose id the run's
    checkpoint names is read, else the newest."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    own = _own_wandb_id(run_dir)
    mine = [r for r in runs if own is not None and r.name.endswith(f"-{own}")]
    return wait_for_offline_run((mine or runs)[-1], last_key) if runs else None


def read_run(run_dir: Path, last_key: str = FINISHED_KEY) -> tuple[list[dict[str, float]], int | None]:
    """The run's curves and parameter count, from one read of its offline W&B file: ``[{step, key,
    value}]`` of ``val/*`` and ``train/loss``, and the count :func:`experiments.train.train` stores
    in the W&B config (``([], None)`` without W&B)."""
    run = _offline_run(run_dir, last_key)
    if run is None:
        return [], None
    curve = [
        {"step": record["_step"], "key": key, "value": value}
        for record in run.history
        for key, value in record.items()
        if key.startswith("val/") or key == "train/loss"
    ]
    return curve, run.config.get("num_parameters")


def read_curves(run_dir: Path, last_key: str = FINISHED_KEY) -> list[dict[str, float]]:
    """The curves of :func:`read_run` (empty without W&B)."""
    return read_run(run_dir, last_key)[0]


#: Test MSE levels whose first crossing on the validation curve an MSE benchmark reports.
MSE_THRESHOLDS = (0.1, 0.01)


def first_step_below(points: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """The first step of ``(step, value)`` points, in step order, whose value is below ``threshold`` (``None``: never)."""
    return next((step for step, value in points if value < threshold), None)


def _validation_key(budget: Budget) -> str:
    """The validation curve of the budget's test metric: ``test_mse`` -> ``val/mse``."""
    return "val/" + budget.metric.removeprefix("test_")


def _points(curve: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return sorted((int(r["step"]), float(r["value"])) for r in curve if r["key"] == key)


def _train_once(config: TrainConfig, metric: str) -> tuple[float, str, str]:
    """``(value, status, last W&B key)`` of one run; a diverged model is a result, not a reason to stop."""
    try:
        return train(config)[metric], "ok", FINISHED_KEY
    except NonFiniteLossError as error:
        return math.nan, f"diverged at step {error.step}", DIVERGED_KEY


def _run_one(
    benchmark: str, budget: Budget, model: str, seed: int, out: Path, wandb: str, device: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``model`` with ``seed`` under ``budget``: its result row and its curves."""
    config = train_config(benchmark, budget, model, out, wandb, seed, device)
    started = time.perf_counter()
    value, status, last_key = _train_once(config, budget.metric)
    wall_time = time.perf_counter() - started
    run_dir = Path(config.out_dir) / config.name
    try:
        curve, parameters = read_run(run_dir, last_key)
    except TimeoutError as error:  # the result stands; only its curves are missing
        log.warning("%s: no curves or parameter count (%s)", config.name, error)
        curve, parameters = [], None
    row = {
        "benchmark": benchmark,
        "model": model,
        "seed": seed,
        "parameters": parameters,
        "metric": budget.metric,
        "value": value,
        "status": status,
        "wall_time_s": wall_time,
        "steps": budget.steps,
        **budget.recipe.train_fields(),
        "model_kwargs": json.dumps(config.model_kwargs),
    }
    if budget.metric == "test_mse":
        points = _points(curve, _validation_key(budget))
        row.update({f"first_step_below_{t:g}": first_step_below(points, t) for t in MSE_THRESHOLDS})
    log.info("%s %s seed %d: %s = %.4g (%s)", benchmark, model, seed, budget.metric, value, status)
    return row, curve


_LOG_SCALE_METRICS = ("test_mse", "test_loss")
_SEED_STYLES = ("-", "--", ":", "-.")


def _plot(benchmark: str, budget: Budget, curves: dict[tuple[str, int], list[dict]], path: Path) -> None:
    """Validation metric over steps, one line per (model, seed): a colour per model, a line style per seed."""
    key = _validation_key(budget)
    models = list(dict.fromkeys(model for model, _ in curves))
    seeds = sorted({seed for _, seed in curves})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, seed), rows in curves.items():
        points = _points(rows, key)
        if points:
            style = _SEED_STYLES[seeds.index(seed) % len(_SEED_STYLES)]
            colour = colours(models.index(model) % 10)
            ax.plot(
                *zip(*points, strict=True),
                style,
                color=colour,
                linewidth=1,
                marker="o",
                markersize=2,
                label=f"{model} s{seed}",
            )
    if budget.baseline is not None:
        ax.axhline(budget.baseline, color="grey", linestyle="--", linewidth=1, label="memoryless baseline")
    if budget.metric in _LOG_SCALE_METRICS:
        ax.set_yscale("log")
    recipe = budget.recipe
    ax.set_xlabel("training step")
    ax.set_ylabel(key)
    ax.set_title(
        f"{benchmark}: {budget.steps} steps, {recipe.optimizer} lr {recipe.lr:g} {recipe.lr_schedule}, "
        f"batch {recipe.batch_size}",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    """``rows`` as CSV; the columns are every key of any row (an accuracy row has no threshold steps)."""
    if rows:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def _write_outputs(
    out: Path, budgets: dict[str, Budget], benchmarks: Sequence[str], results: list, curve_rows: list
) -> None:
    """Results, curves and the markdown table; rewritten after every run, so a stopped benchmark leaves results."""
    _write_csv(out / "results.csv", results)
    _write_csv(out / "curves.csv", curve_rows)
    chosen = {b: dataclasses.asdict(budgets[b]) for b in benchmarks}
    (out / "results.json").write_text(json.dumps({"budgets": chosen, "results": results}, indent=2) + "\n")
    (out / "results.md").write_text(format_markdown(results) + "\n")


def _check_names(benchmarks: Sequence[str], models: Sequence[str], budgets: dict[str, Budget]) -> None:
    unknown = sorted(set(benchmarks) - set(budgets))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known benchmarks: {sorted(budgets)}")
    unknown = sorted(set(models) - set(available_models()))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known models: {available_models()}")


def run_benchmark(
    benchmarks: Sequence[str],
    models: Sequence[str],
    out_dir: str | Path,
    *,
    budgets: dict[str, Budget] | None = None,
    wandb: str = "offline",
    seeds: Sequence[int] | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Train every (benchmark, model, seed); write results and curves to ``out_dir``; return one row per run.

    ``seeds`` ``None`` runs each budget's recipe seeds.
    """
    budgets = BUDGETS if budgets is None else budgets
    _check_names(benchmarks, models, budgets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    for benchmark in benchmarks:
        budget = budgets[benchmark]
        curves: dict[tuple[str, int], list[dict]] = {}
        for model in models:
            for seed in budget.recipe.seeds if seeds is None else seeds:
                row, curves[model, seed] = _run_one(benchmark, budget, model, seed, out, wandb, device)
                results.append(row)
                curve_rows.extend(
                    {"benchmark": benchmark, "model": model, "seed": seed, **r} for r in curves[model, seed]
                )
                _write_outputs(out, budgets, benchmarks, results, curve_rows)
                _plot(benchmark, budget, curves, out / f"curves_{benchmark}.png")
    return results


# ----------------------------------------------------------------------------- tables


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _steps_text(benchmark: str, steps: int) -> str:
    """``steps``, and the budget's own when a run was shortened (or lengthened) from :data:`BUDGETS`."""
    full = BUDGETS[benchmark].steps if benchmark in BUDGETS else steps
    return str(steps) if steps == full else f"{steps} of {full}"


def _status(runs: Sequence[dict[str, Any]]) -> str:
    failed = [f"seed {r['seed']} {r['status']}" for r in runs if r["status"] != "ok"]
    return "; ".join(failed) or "ok"


def _summary_row(runs: Sequence[dict[str, Any]], thresholds: bool) -> dict[str, str]:
    """One (benchmark, model): its runs' seeds, values, their mean, mean wall time and status, as text."""
    first = runs[0]
    parameters = next((r["parameters"] for r in runs if r["parameters"] is not None), None)
    row = {
        "benchmark": first["benchmark"],
        "model": first["model"],
        "params": "n/a" if parameters is None else str(parameters),
        "steps": _steps_text(first["benchmark"], first["steps"]),
        "metric": first["metric"],
        "seeds": " ".join(str(r["seed"]) for r in runs),
        "values": " ".join(_number(r["value"]) for r in runs),
        "mean": _number(statistics.fmean(r["value"] for r in runs)),
        "wall s/run": f"{statistics.fmean(r['wall_time_s'] for r in runs):.0f}",
    }
    for t in MSE_THRESHOLDS if thresholds else ():
        steps = [r.get(f"first_step_below_{t:g}") for r in runs]
        shown = " ".join("-" if s is None else str(s) for s in steps)
        row[f"step < {t:g}"] = shown if first["metric"] == "test_mse" else ""
    row["status"] = _status(runs)
    return row


def _summary(results: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """One text row per (benchmark, model), in the order they ran; threshold columns when a metric is MSE."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["benchmark"], r["model"]), []).append(r)
    thresholds = any(r["metric"] == "test_mse" for r in results)
    return [_summary_row(sorted(runs, key=lambda r: r["seed"]), thresholds) for runs in groups.values()]


_LEFT_COLUMNS = ("benchmark", "model", "metric", "status")


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The result rows as a fixed-width text table, one line per (benchmark, model)."""
    rows = _summary(results)
    if not rows:
        return "no results"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in rows[0]}

    def line(cells: Callable[[str], str]) -> str:
        return "  ".join(
            cells(c).ljust(w) if c in _LEFT_COLUMNS else cells(c).rjust(w) for c, w in widths.items()
        ).rstrip()

    header = line(lambda c: c)
    return "\n".join([header, "-" * len(header), *(line(row.__getitem__) for row in rows)])


def format_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The result rows as a markdown table (one row per benchmark and model) for docs/RESULTS.md."""
    rows = _summary(results)
    if not rows:
        return "no results"
    columns = list(rows[0])
    rule = ["---" if c in _LEFT_COLUMNS else "---:" for c in columns]
    lines = [columns, rule, *([row[c] for c in columns] for row in rows)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=COMPARISONS,
        help=f"benchmarks, from {list(BUDGETS)}; default: {COMPARISONS}",
    )
    parser.add_argument(
        "--models", nargs="+", default=available_models(), help="registry names; default: every one"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="seeds for every benchmark; default: each recipe's"
    )
    parser.add_argument("--steps", type=int, help="shorten (or lengthen) every budget; the table says so")
    parser.add_argument(
        "--model-kwargs",
        type=_model_kwargs,
        default={},
        metavar="JSON",
        help='layer options per model for an ablation, e.g. \'{"hamiltonian": {"emit": "p"}}\'; '
        "use its own --out, since runs are named by benchmark, model and seed only",
    )
    parser.add_argument("--out", default="outputs/benchmark", help="output folder")
    parser.add_argument("--wandb", choices=WANDB_MODES, default="offline")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, 3 steps, one seed per run (a smoke run)"
    )
    return parser


def _model_kwargs(text: str) -> dict[str, dict[str, Any]]:
    """``--model-kwargs``: a JSON object of registry name -> layer options."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"model": {"option": value, ...}, ...}')
    unknown = sorted(set(value) - set(available_models()))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown models {unknown}; known: {available_models()}")
    return value


def _with_options(budget: Budget, options: dict[str, dict[str, Any]]) -> Budget:
    """``budget`` with ``options`` merged into its per-model layer options."""
    merged = {**budget.model_kwargs}
    for model, kwargs in options.items():
        merged[model] = {**merged.get(model, {}), **kwargs}
    return dataclasses.replace(budget, model_kwargs=merged)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the budgets, train, print the result table."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    if args.steps is not None:
        budgets = {name: dataclasses.replace(budget, steps=args.steps) for name, budget in budgets.items()}
    if args.model_kwargs:
        budgets = {name: _with_options(budget, args.model_kwargs) for name, budget in budgets.items()}
    for name in args.tasks:
        if name in budgets:
            log.info("budget %s: %s", name, budgets[name])
    results = run_benchmark(
        args.tasks,
        args.models,
        args.out,
        budgets=budgets,
        wandb=args.wandb,
        seeds=args.seeds,
        device=args.device,
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
