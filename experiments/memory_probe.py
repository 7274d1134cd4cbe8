r"""Memory probe: how well does an untrained layer's final state linearly encode the adding target?

Usage::

    python -m experiments.memory_probe                       # T = 1000 and 5000, the default models
    python -m experiments.memory_probe --models lstm "static_hamiltonian:gain=0.1,dt=0.1,timescales=null" --seq-lens 1000
    python -m experiments.memory_probe --quick --out /tmp/probe   # smoke run (seconds)

Each model spec is a registry name, optionally followed by layer options:
``name:key=value,key=value`` (values parsed as YAML scalars, so ``dt=auto`` and ``gain=0.1``).
For each spec and T the layer is drawn after ``torch.manual_seed(seed)`` and run, without
training, over ``n_train + n_test`` adding-problem sequences (``tasks.build_task("adding")``).
A ridge regression from the last layer's final state ``h_T`` (every part: ``(p, q)``, ``(h, c)``,
...: the ``readout="state"`` selection of :func:`hrnn.models.build_model`) to the target is
fitted on the training sequences,

.. math::
    \hat w = \arg\min_w \|\tilde H w - y\|^2 + \lambda \|w\|^2,

with :math:`\tilde H` the standardised features, and scored by its test MSE. Predicting the
training mean scores about 1/6: a probe MSE far below it means the state still holds the two
marked values after T steps; a probe MSE near it means they are lost (or never written). It
separates *memory* from *trainability*: gradient training must still find such a solution.

For the Hamiltonian and oscillator cells the table also gives the phase :math:`T\,dt\,\omega_{max}`,
the most an impulse can rotate between ``p`` and ``q`` over the sequence.
Prints a table and writes ``results.csv``, ``results.json`` and ``probe.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: experiments run headless
import matplotlib.pyplot as plt
import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from hrnn.models import MODELS, Standardize, build_model
from hrnn.validation import lookup
from tasks import build_task

__all__ = [
    "DEFAULT_SPECS",
    "ProbeConfig",
    "ProbeResult",
    "fit_ridge",
    "main",
    "parse_spec",
    "probe",
    "run_probe",
]

DEFAULT_SPECS = (
    "static_hamiltonian:dt=auto",
    "static_hamiltonian:gain=0.3,dt=0.1,timescales=null",
    "static_hamiltonian:gain=0.1,dt=0.1,timescales=null",
    "static_hamiltonian:gain=0.03,dt=0.1,timescales=null",
    "oscillator:dt=auto",
    "oscillator:alpha=0,dt=0.1",
    "antisymmetric",
    "gated_antisymmetric",
    "cornn",
    "lstm",
    "gru",
    "rnn",
)
QUICK: dict[str, Any] = {"seq_lens": (50,), "hidden_size": 8, "n_train": 64, "n_test": 32}


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe run depends on."""

    specs: tuple[str, ...] = DEFAULT_SPECS
    seq_lens: tuple[int, ...] = (1000, 5000)
    hidden_size: int = 64
    n_train: int = 2000
    n_test: int = 1000
    ridge: float = 1e-3
    chunk: int = 250
    seed: int = 0
    out_dir: str = "outputs/memory_probe"
    progress: bool = True


@dataclass(frozen=True)
class ProbeResult:
    """One probe: ``spec`` at sequence length ``seq_len``."""

    spec: str
    seq_len: int
    parameters: int
    probe_mse: float
    baseline_mse: float  # test MSE of predicting the training targets' mean
    phase: float | None  # T * dt * omega_max for cells that have a step size, else None
    options: dict[str, Any] = field(default_factory=dict)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,..."`` -> ``(name, {key: value})``; values are YAML scalars."""
    name, _, rest = spec.partition(":")
    lookup(MODELS, name, "model")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"spec {spec!r}: expected key=value, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return name, options


def fit_ridge(features: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""Ridge regression on standardised features, in float64.

    ``features`` (N, F), ``y`` (N, k). Returns ``(mean, scale, weight)`` with the prediction
    :math:`[(H - \text{mean}) / \text{scale}, 1]\, W`, ``weight`` (F + 1, k); features constant on
    the training set get scale 1 (they carry nothing, as in :class:`hrnn.models.Standardize`).
    The bias is not penalised.
    """
    if not (features.isfinite().all() and y.isfinite().all()):
        raise ValueError("final states or targets contain NaN/inf: the layer diverged over the sequence")
    standardize = Standardize(features.shape[1], dtype=torch.float64)
    standardize.calibrate(features.double())
    design = _design(features, standardize.mean, standardize.scale)
    penalty = torch.eye(design.shape[1], dtype=torch.float64) * ridge * len(features)
    penalty[-1, -1] = 0.0
    weight = torch.linalg.solve(design.T @ design + penalty, design.T @ y.double())
    return standardize.mean, standardize.scale, weight


def _design(features: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """``[(features - mean) / scale, 1]`` in float64: (N, F + 1)."""
    standard = (features.double() - mean) / scale
    return torch.cat([standard, torch.ones(len(features), 1, dtype=torch.float64)], 1)


def _stack(dataset) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.stack(ys)


def _phase(rnn: nn.Module, seq_len: int) -> float | None:
    cell = getattr(rnn, "cells", [None])[-1]
    if cell is None or not hasattr(cell, "max_frequency"):
        return None
    return seq_len * float(cell.dt) * cell.max_frequency()


def probe(spec: str, seq_len: int, config: ProbeConfig) -> ProbeResult:
    """Draw the layer of ``spec`` untrained, run it over adding sequences of ``seq_len``, fit and score the probe."""
    name, options = parse_spec(spec)
    task = build_task(
        "adding", seq_len=seq_len, n_train=config.n_train, n_val=0, n_test=config.n_test, seed=config.seed
    )
    torch.manual_seed(config.seed)  # the layer is drawn first, so its weights do not depend on the head
    model = build_model(
        name,
        task.input_size,
        config.hidden_size,
        task.output_size,
        num_blocks=0,  # the probe reads one bare layer's state
        readout="state",
        seq_len=seq_len,
        **options,
    )
    (x_train, y_train), (x_test, y_test) = _stack(task.train), _stack(task.test)
    mean, scale, weight = fit_ridge(model.selected_features(x_train, config.chunk), y_train, config.ridge)
    prediction = _design(model.selected_features(x_test, config.chunk), mean, scale) @ weight
    y_test = y_test.double()
    return ProbeResult(
        spec=spec,
        seq_len=seq_len,
        parameters=sum(p.numel() for p in model.rnn.parameters()),
        probe_mse=float((prediction - y_test).pow(2).mean()),
        baseline_mse=float((y_train.double().mean() - y_test).pow(2).mean()),
        phase=_phase(model.rnn, seq_len),
        options=options,
    )


def run_probe(config: ProbeConfig) -> list[ProbeResult]:
    """Every spec at every T; writes the CSV, JSON and plot to ``config.out_dir``."""
    for spec in config.specs:
        parse_spec(spec)  # fail before any work on a bad spec
    jobs = [(spec, seq_len) for seq_len in config.seq_lens for spec in config.specs]
    results = []
    for spec, seq_len in tqdm(jobs, desc="memory probe", disable=not config.progress):
        results.append(probe(spec, seq_len, config))
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) | {"options": json.dumps(r.options)} for r in results]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(
        json.dumps({"config": asdict(config), "results": [asdict(r) for r in results]}, indent=2)
    )
    plot(results, out / "probe.png")
    return results


def plot(results: Sequence[ProbeResult], path: Path) -> None:
    """Probe MSE per spec (log scale), one group of bars per T, the baseline as a dashed line."""
    specs = list(dict.fromkeys(r.spec for r in results))
    seq_lens = sorted({r.seq_len for r in results})
    width = 0.8 / len(seq_lens)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(specs)), 4.5))
    for k, seq_len in enumerate(seq_lens):
        by_spec = {r.spec: r for r in results if r.seq_len == seq_len}
        heights = [max(by_spec[s].probe_mse, 1e-7) if s in by_spec else math.nan for s in specs]
        ax.bar([i + k * width for i in range(len(specs))], heights, width, label=f"T = {seq_len}")
    baseline = max(r.baseline_mse for r in results)
    ax.axhline(baseline, color="k", linestyle="--", linewidth=1, label=f"predict the mean ({baseline:.3f})")
    ax.set_yscale("log")
    ax.set_xticks([i + width * (len(seq_lens) - 1) / 2 for i in range(len(specs))])
    ax.set_xticklabels(specs, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test MSE of a linear probe on h_T")
    ax.set_title("Adding problem: what the untrained final state remembers")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(results: Sequence[ProbeResult]) -> str:
    """The results as a fixed-width text table."""
    header = f"{'model':<32} {'T':>5} {'params':>7} {'phase':>8} {'probe MSE':>10} {'mean MSE':>9}"
    lines = [header]
    for r in results:
        phase = "-" if r.phase is None else f"{r.phase:.3g}"
        lines.append(
            f"{r.spec:<32} {r.seq_len:>5} {r.parameters:>7} {phase:>8} {r.probe_mse:>10.3g} {r.baseline_mse:>9.4f}"
        )
    return "\n".join(lines)


def config_from_args(argv: list[str] | None = None) -> ProbeConfig:
    """The :class:`ProbeConfig` of a command line: defaults, then ``--quick`` sizes, then explicit flags."""
    defaults = ProbeConfig()
    parser = argparse.ArgumentParser(
        prog="python -m experiments.memory_probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--models", nargs="+", default=None, help=f"model specs; default: {list(DEFAULT_SPECS)}"
    )
    parser.add_argument(
        "--seq-lens", nargs="+", type=int, default=None, help=f"default: {list(defaults.seq_lens)}"
    )
    parser.add_argument("--hidden", type=int, default=None, help=f"default: {defaults.hidden_size}")
    parser.add_argument("--n-train", type=int, default=None, help=f"default: {defaults.n_train}")
    parser.add_argument("--n-test", type=int, default=None, help=f"default: {defaults.n_test}")
    parser.add_argument("--ridge", type=float, default=defaults.ridge, help="penalty per sample")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out_dir, help="output folder")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke run: {QUICK}")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    values = dict(QUICK) if args.quick else {}
    flags = {
        "specs": args.models and tuple(args.models),
        "seq_lens": args.seq_lens and tuple(args.seq_lens),
        "hidden_size": args.hidden,
        "n_train": args.n_train,
        "n_test": args.n_test,
    }
    values.update({key: value for key, value in flags.items() if value is not None})
    if not args.ridge > 0:
        parser.error(f"--ridge must be > 0, got {args.ridge}")
    return ProbeConfig(ridge=args.ridge, seed=args.seed, out_dir=args.out, progress=args.progress, **values)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; prints the results table."""
    config = config_from_args(argv)
    try:
        results = run_probe(config)
    except ValueError as error:
        raise SystemExit(f"memory_probe: {error}") from None
    print(format_table(results))


if __name__ == "__main__":
    main()
