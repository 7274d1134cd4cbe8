"""Speed and memory of the recurrent layers, as ratios to :class:`torch.nn.LSTM` measured in the same run.

Usage::

    python -m experiments.benchmark_speed --quick --out outputs/speed_quick   # a few minutes
    python -m experiments.benchmark_speed --out outputs/speed                 # the full grid
    python -m experiments.benchmark_speed --device cuda --out outputs/speed_cuda

Three measurements, each printed as a table and written to ``--out`` (``speed.csv``,
``memory.csv``, ``roundoff.csv`` and all of it in ``results.json``):

* **speed**: forward + backward time of one batch (loss ``output.sum()``) for every layer of
  :data:`MODELS`, built through hrnn's public registry (:data:`hrnn.models.MODELS`), so the
  Hamiltonian layers run the fast scans they use in training. For every configuration
  (hidden, T, batch) the models are timed in turn, ``--repeats`` rounds, and each keeps its
  fastest round: background load slows a round, never speeds it up. Ratios are to nn.LSTM's
  time in the same configuration and run.
* **memory** vs T (one forward + backward, loss ``output.sum()``): ``saved`` is the bytes
  autograd keeps between forward and backward (tensors packed by
  :func:`torch.autograd.graph.saved_tensors_hooks`, which include a custom Function's
  ``save_for_backward``), ``peak`` the high-water mark of all tensor memory the forward and
  backward allocate (:class:`experiments.memory.LiveBytes`, exact, any device), both beyond the input and the
  parameters; ``beyond output`` is ``peak`` less the layer's output (T, batch, hidden), which the
  caller holds whatever the method: the activation memory a method needs.
* **round-off** of the reversible mode in float32: the error of the state rebuilt from ``y_T`` by
  the exact inverse steps, and the relative gradient error against stored states, without
  anchors and with the default interval (:data:`hrnn.fast.DEFAULT_ANCHOR_EVERY`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from experiments.memory import forward_backward, peak_bytes, saved_bytes
from hrnn.blocks import ResidualStack
from hrnn.fast import DEFAULT_ANCHOR_EVERY, DEFAULT_CHUNK
from hrnn.fast.oscillator import forward_segment as oscillator_forward_segment
from hrnn.models import MODELS as REGISTRY
from hrnn.models import capabilities, models_with

__all__ = ["MODELS", "ModelSpec", "main", "time_models"]

log = logging.getLogger("experiments.benchmark_speed")


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked layer: its registry name in :data:`hrnn.models.MODELS` and its options."""

    registry: str
    options: dict[str, Any] = field(default_factory=dict)
    #: time the model of :func:`hrnn.build_model`'s default architecture (residual blocks of the
    #: layer, :class:`hrnn.blocks.ResidualStack`) instead of the bare layer
    stack: bool = False


REFERENCE = "lstm"
#: Benchmark label -> layer: every registry model, and ``<name>_reversible`` for those that support
#: ``memory="reversible"``; ``lstm`` is the reference of every ratio.
MODELS: dict[str, ModelSpec] = {
    **{name: ModelSpec(name) for name in REGISTRY},
    **{
        f"{name}_reversible": ModelSpec(name, {"memory": "reversible"})
        for name in models_with(reversible=True)
    },
    **{f"{name}_model": ModelSpec(name, stack=True) for name in REGISTRY},
}
#: The memory table: the reference and every layer with a reversible mode, in both modes.
MEMORY_MODELS = (
    REFERENCE,
    *(label for name in models_with(reversible=True) for label in (name, f"{name}_reversible")),
)

# (hidden, T, batch) of the grids; (128, 1000, 64) is the headline configuration
FULL = {"hidden": [128, 256], "seq_len": [100, 1000, 5000], "batch": [32, 128], "extra": [(128, 1000, 64)]}
QUICK = {"hidden": [128], "seq_len": [100], "batch": [32], "extra": [(128, 1000, 64)]}
WARMUP_STEPS = 20  # a short sequence first loads every kernel, whatever T is timed


def build_layer(label: str, input_size: int, hidden_size: int, device: str) -> nn.Module:
    """The layer of ``label``, time-major, float32 on ``device``."""
    spec = MODELS[label]
    if spec.stack:
        return ResidualStack(REGISTRY[spec.registry], input_size, hidden_size, **spec.options).to(device)
    return REGISTRY[spec.registry](input_size, hidden_size, **spec.options).to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_models(layers: dict[str, nn.Module], x: Tensor, repeats: int) -> dict[str, float]:
    """Fastest forward + backward time (s) of each layer over ``repeats`` interleaved rounds."""
    device = x.device.type
    for layer in layers.values():
        forward_backward(layer, x[:WARMUP_STEPS])
    best = dict.fromkeys(layers, float("inf"))
    for _ in range(repeats):
        for label, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            _sync(device)
            start = time.perf_counter()
            forward_backward(layer, x)
            _sync(device)
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def speed_table(args: argparse.Namespace, grid: dict[str, list]) -> list[dict[str, Any]]:
    configs = [(h, t, b) for h in grid["hidden"] for t in grid["seq_len"] for b in grid["batch"]]
    configs += [c for c in grid["extra"] if c not in configs]
    rows = []
    for hidden, seq_len, batch in configs:
        torch.manual_seed(0)
        layers = {label: build_layer(label, args.input_size, hidden, args.device) for label in args.models}
        x = torch.randn(seq_len, batch, args.input_size, device=args.device)
        times = time_models(layers, x, args.repeats)
        for label, seconds in times.items():
            rows.append({
                "hidden": hidden, "seq_len": seq_len, "batch": batch, "model": label,
                "ms": 1e3 * seconds, "ratio_to_lstm": seconds / times[REFERENCE],
            })  # fmt: skip
        log.info("hidden %d, T %d, batch %d: %s", hidden, seq_len, batch,
                 ", ".join(f"{k} {v:.3f}s" for k, v in times.items()))  # fmt: skip
    return rows


def memory_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    hidden, batch, rows = args.memory_hidden, args.memory_batch, []
    for label in MEMORY_MODELS:
        for seq_len in args.memory_seq_len:
            torch.manual_seed(0)
            layer = build_layer(label, args.input_size, hidden, args.device)
            x = torch.randn(seq_len, batch, args.input_size, device=args.device)
            saved = saved_bytes(lambda layer=layer, x=x: layer(x), (x, *layer.parameters()))
            peak = peak_bytes(layer, x)
            output = seq_len * batch * hidden * x.element_size()
            rows.append({
                "model": label, "seq_len": seq_len, "saved_mb": saved / 2**20, "peak_mb": peak / 2**20,
                "peak_beyond_output_mb": (peak - output) / 2**20,
            })  # fmt: skip
            log.info("memory %s", rows[-1])
    return rows


def reconstruction_error(layer: nn.Module, x: Tensor) -> float:
    """max_t |y_t rebuilt from y_T by the inverse steps - y_t| / max_t |y_t| (no anchor), in x's dtype."""
    cell = layer.cells[0]
    u = cell.project(x)
    p, q = (x.new_zeros(x.shape[1], cell.hidden_size) for _ in range(2))
    forward = [torch.cat([p, q], -1)]
    for u_t in u:
        p, q = cell.step(u_t, p, q)
        forward.append(torch.cat([p, q], -1))
    error = 0.0
    for t in range(len(u) - 1, -1, -1):
        p, q = cell.inverse_step(u[t], p, q)
        error = max(error, float((torch.cat([p, q], -1) - forward[t]).abs().max()))
    return error / float(torch.stack(forward).abs().max())


def _gradients(layer: nn.Module, x: Tensor) -> list[Tensor]:
    """Gradients of ``mean(output^2) + sum(q_T)`` w.r.t. the input and every parameter."""
    inputs = x.detach().requires_grad_()
    output, (_, q) = layer(inputs)
    return list(torch.autograd.grad(output.square().mean() + q.sum(), [inputs, *layer.parameters()]))


def _relative_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    """The largest ||a - e|| / ||e|| over the tensors, in float64."""
    pairs = zip(actual, expected, strict=True)
    return max(float((a.double() - e.double()).norm() / e.double().norm()) for a, e in pairs)


def _roundoff_cases(seq_len: int) -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
    """Every layer with a reversible mode, with its defaults and, where it has one, ``dt="auto"``."""
    cases = {}
    for name in models_with(reversible=True):
        cases[f"{name} (defaults)"] = (REGISTRY[name], {})
        if capabilities(name).auto_dt:
            cases[f"{name} dt=auto"] = (REGISTRY[name], {"dt": "auto", "seq_len": seq_len})
    return cases


def roundoff_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Float32 round-off of the reversible mode vs T, for the step size a user gets and for dt = 0.1."""
    rows = []
    for seq_len in args.roundoff_seq_len:
        torch.manual_seed(0)
        x = torch.randn(seq_len, args.roundoff_batch, args.input_size)
        cases = _roundoff_cases(seq_len)
        for case, (layer_class, options) in cases.items():
            torch.manual_seed(1)
            modes = (("stored", None), ("reversible", seq_len), ("reversible", None))
            layers = {
                (memory, k): layer_class(
                    args.input_size, args.roundoff_hidden, memory=memory, anchor_every=k, **options
                )
                for memory, k in modes
            }
            stored = layers["stored", None]
            for layer in layers.values():
                layer.load_state_dict(stored.state_dict())
            grads = {key: _gradients(layer, x) for key, layer in layers.items()}
            with torch.no_grad():
                rebuilt = reconstruction_error(stored, x)
            exact = _gradients(stored.double(), x.double())
            rows.append({
                "case": case, "seq_len": seq_len, "dt": stored.cells[0].dt.item(),
                "reconstruction_error": rebuilt,
                "grad_error_float32_stored": _relative_error(grads["stored", None], exact),
                "grad_error_no_anchor": _relative_error(grads["reversible", seq_len], grads["stored", None]),
                "grad_error_default_anchor": _relative_error(grads["reversible", None], grads["stored", None]),
            })  # fmt: skip
            log.info("round-off %s", rows[-1])
    return rows


def loop_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per-step overhead: the oscillator scan's forward loop (in-place ops, :mod:`hrnn.fast`) run as
    Python, TorchScript and torch.compile, segment by segment, and forward + backward of the fast
    layers against autograd through the plain reference loop (``fast=False``)."""
    hidden, seq_len, batch = 128, 1000, 64
    chunk = DEFAULT_CHUNK
    torch.manual_seed(0)
    u, w, h = torch.randn(seq_len, batch, hidden), torch.rand(hidden), torch.full((hidden,), 0.1)
    a, p, q = (
        torch.empty(chunk, batch, hidden),
        torch.zeros(chunk + 1, batch, hidden),
        torch.zeros(chunk + 1, batch, hidden),
    )
    variants = {"python": oscillator_forward_segment}
    rows = []
    for name, make in (("torchscript", torch.jit.script), ("torch.compile", torch.compile)):
        start = time.perf_counter()
        try:
            variants[name] = make(oscillator_forward_segment)
            variants[name](u[:chunk], a, p, q, w, h, 0.5)
        except Exception as error:  # a backend missing on this machine is a result, not a crash
            log.warning("%s failed: %s", name, error)
            variants.pop(name, None)
            continue
        rows.append({"what": f"{name} compile time", "ms": 1e3 * (time.perf_counter() - start)})

    def forward(fn) -> None:
        for t0 in range(0, seq_len - chunk + 1, chunk):
            fn(u[t0 : t0 + chunk], a, p, q, w, h, 0.5)

    times = {name: float("inf") for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            forward(fn)
            times[name] = min(times[name], time.perf_counter() - start)
    rows += [{"what": f"oscillator forward loop, {name}", "ms": 1e3 * t} for name, t in times.items()]
    x = torch.randn(seq_len, batch, args.input_size)
    for layer_class in (REGISTRY[name] for name in models_with(reversible=True)):
        layers = {
            "fast": layer_class(args.input_size, hidden),
            "reference": layer_class(args.input_size, hidden, fast=False),
        }
        layers["reference"].load_state_dict(layers["fast"].state_dict())
        timed = time_models(layers, x, args.repeats)
        rows += [
            {"what": f"{layer_class.__name__} fwd+bwd, {name}", "ms": 1e3 * t} for name, t in timed.items()
        ]
    return rows


def format_loops(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"{r['what']:<45} {r['ms']:>10.1f} ms" for r in rows)


def format_speed(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'hidden':>6} {'T':>5} {'batch':>5}  {'model':<23} {'ms/batch':>10} {'x LSTM':>7}"]
    for r in rows:
        lines.append(
            f"{r['hidden']:>6} {r['seq_len']:>5} {r['batch']:>5}  {r['model']:<23} {r['ms']:>10.1f} "
            f"{r['ratio_to_lstm']:>7.2f}"
        )
    return "\n".join(lines)


def format_memory(rows: list[dict[str, Any]]) -> str:
    head = ("model", "T", "saved MB", "peak MB", "beyond output MB", "ratio to first T")
    lines = ["{:<23} {:>6} {:>9} {:>9} {:>17} {:>17}".format(*head)]
    first: dict[str, float] = {}
    for r in rows:
        first.setdefault(r["model"], r["peak_beyond_output_mb"])
        lines.append(
            f"{r['model']:<23} {r['seq_len']:>6} {r['saved_mb']:>9.2f} {r['peak_mb']:>9.2f} "
            f"{r['peak_beyond_output_mb']:>17.2f} {r['peak_beyond_output_mb'] / first[r['model']]:>17.2f}"
        )
    return "\n".join(lines)


def format_roundoff(rows: list[dict[str, Any]]) -> str:
    head = ("case", "T", "dt", "rebuild err", "f32 vs f64", "rev k=T", "rev k=default")
    lines = ["{:<22} {:>6} {:>7} {:>11} {:>10} {:>9} {:>13}".format(*head)]
    for r in rows:
        lines.append(
            f"{r['case']:<22} {r['seq_len']:>6} {r['dt']:>7.4f} {r['reconstruction_error']:>11.1e} "
            f"{r['grad_error_float32_stored']:>10.1e} {r['grad_error_no_anchor']:>9.1e} "
            f"{r['grad_error_default_anchor']:>13.1e}"
        )
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--hidden", nargs="+", type=int, help="default 128 256 (--quick: 128)")
    parser.add_argument("--seq-len", nargs="+", type=int, help="default 100 1000 5000 (--quick: 100)")
    parser.add_argument("--batch", nargs="+", type=int, help="default 32 128 (--quick: 32)")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds per configuration (the min is kept)"
    )
    parser.add_argument("--memory-seq-len", nargs="+", type=int, default=[1000, 10_000])
    parser.add_argument("--memory-hidden", type=int, default=128)
    parser.add_argument("--memory-batch", type=int, default=32)
    parser.add_argument(
        "--roundoff-seq-len", nargs="+", type=int, help="default 100 1000 10000 (--quick: 1000)"
    )
    parser.add_argument("--roundoff-hidden", type=int, default=16)
    parser.add_argument("--roundoff-batch", type=int, default=4)
    parser.add_argument(
        "--sections", nargs="+", default=["speed", "memory", "roundoff"],
        choices=["speed", "memory", "roundoff", "loops"], help="loops: TorchScript / torch.compile (minutes to compile)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="one small configuration and the headline one")
    parser.add_argument("--out", type=Path, default=Path("outputs/speed"))
    args = parser.parse_args(argv)
    if REFERENCE not in args.models:
        parser.error(f"--models must include the reference {REFERENCE!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    grid = QUICK if args.quick else FULL
    args.grid = {
        "hidden": args.hidden or grid["hidden"],
        "seq_len": args.seq_len or grid["seq_len"],
        "batch": args.batch or grid["batch"],
        "extra": [] if (args.hidden or args.seq_len or args.batch) else grid["extra"],
    }
    args.roundoff_seq_len = args.roundoff_seq_len or ([1000] if args.quick else [100, 1000, 10_000])
    if args.quick and args.repeats == parser.get_default("repeats"):
        args.repeats = 2
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    sections = {
        "speed": (lambda: speed_table(args, args.grid), format_speed),
        "memory": (lambda: memory_table(args), format_memory),
        "roundoff": (lambda: roundoff_table(args), format_roundoff),
        "loops": (lambda: loop_table(args), format_loops),
    }
    for name, (run, fmt) in sections.items():
        if name not in args.sections:
            continue
        results[name] = run()
        print(f"\n## {name} ({args.device}, {torch.get_num_threads()} threads)\n{fmt(results[name])}")
        _write_csv(args.out / f"{name}.csv", results[name])
    meta = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "anchor_every": DEFAULT_ANCHOR_EVERY, "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    return results


if __name__ == "__main__":
    main()
