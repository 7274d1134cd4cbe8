"""Speed and memory of :class:`hrnn.LinOSSRNN`, as ratios to :class:`torch.nn.LSTM` measured in the same run.

Usage::

    python -m experiments.benchmark_linoss                        # a few minutes on one CPU thread
    python -m experiments.benchmark_linoss --chunks 16 32 64 128  # the fast scan's chunk length too

* **speed**: forward + backward time of one batch (loss ``output.sum()``) at hidden 128, batch 64,
  T = 1000 and 10,000 for nn.LSTM and the LinOSS variants of :data:`VARIANTS`. The layers are
  timed in turn, ``--repeats`` rounds, and each keeps its fastest round (background load slows a
  round, never speeds it up); the load average (``uptime``) is printed before and after.
* **memory** at T = 100,000, batch 8: one forward + backward of the default layer in a fresh
  subprocess, reporting the process's peak resident memory (``ru_maxrss``) less that of the same
  process before the pass, and the exact peak of tensor memory beyond input and parameters
  (:class:`experiments.memory.LiveBytes`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from experiments.memory import forward_backward, peak_bytes
from hrnn.linoss import LinOSSRNN

__all__ = ["VARIANTS", "build_layers", "main", "memory_child", "time_layers"]

#: Benchmark label -> LinOSSRNN options.
VARIANTS: dict[str, dict[str, Any]] = {
    "linoss": {},
    "linoss_im": {"discretization": "im"},
    "linoss_damped": {"damping": True},
}
REFERENCE = "lstm"
GIB = 2.0**30


def build_layers(input_size: int, hidden: int, chunks: Sequence[int]) -> dict[str, nn.Module]:
    """nn.LSTM, every variant of :data:`VARIANTS`, and the default layer at each extra chunk length."""
    layers: dict[str, nn.Module] = {REFERENCE: nn.LSTM(input_size, hidden)}
    layers |= {label: LinOSSRNN(input_size, hidden, **options) for label, options in VARIANTS.items()}
    layers |= {f"linoss_chunk{c}": LinOSSRNN(input_size, hidden, chunk=c) for c in chunks}
    return layers


def time_layers(layers: dict[str, nn.Module], x: Tensor, repeats: int) -> dict[str, float]:
    """Fastest forward + backward time (s) of each layer over ``repeats`` interleaved rounds."""
    for layer in layers.values():
        forward_backward(layer, x[:20])
    best = dict.fromkeys(layers, float("inf"))
    for _ in range(repeats):
        for label, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            start = time.perf_counter()
            forward_backward(layer, x)
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def speed_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for seq_len in args.seq_len:
        layers = build_layers(args.input_size, args.hidden, args.chunks)
        x = torch.randn(seq_len, args.batch, args.input_size)
        times = time_layers(layers, x, args.repeats)
        for label, seconds in times.items():
            ratio = seconds / times[REFERENCE]
            rows.append({"model": label, "seq_len": seq_len, "seconds": seconds, "ratio_to_lstm": ratio})
            print(f"T={seq_len:>6} {label:<16} {seconds:8.3f} s  {ratio:6.3f}x LSTM", flush=True)
    return rows


def memory_child(seq_len: int, batch: int, input_size: int, hidden: int) -> dict[str, float]:
    """In this process: peak RSS growth and peak tensor memory of one forward + backward."""
    layer = LinOSSRNN(input_size, hidden)
    x = torch.randn(seq_len, batch, input_size)
    forward_backward(layer, x[:20])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    start = time.perf_counter()
    forward_backward(layer, x)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    output_bytes = seq_len * batch * hidden * x.element_size()
    return {
        "seq_len": seq_len,
        "batch": batch,
        "seconds": seconds,
        "rss_peak_growth_gib": (after - before) / GIB,
        "rss_peak_gib": after / GIB,
        "tensor_peak_gib": peak_bytes(layer, x) / GIB,
        "output_gib": output_bytes / GIB,
    }


def memory_row(args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "experiments.benchmark_linoss", "--memory-child", "--threads", "1"]
    command += ["--input-size", str(args.input_size), "--hidden", str(args.hidden)]
    command += ["--memory-seq-len", str(args.memory_seq_len), "--memory-batch", str(args.memory_batch)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"memory T={row['seq_len']} batch={row['batch']}: peak RSS {row['rss_peak_gib']:.2f} GiB "
        f"(+{row['rss_peak_growth_gib']:.2f} GiB in the pass), peak tensor memory "
        f"{row['tensor_peak_gib']:.2f} GiB (output alone {row['output_gib']:.2f} GiB), "
        f"{row['seconds']:.1f} s",
        flush=True,
    )
    return row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", nargs="+", type=int, default=[1000, 10_000])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", nargs="*", type=int, default=[], help="extra chunk lengths to time")
    parser.add_argument("--memory-seq-len", type=int, default=100_000)
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_child:
        row = memory_child(args.memory_seq_len, args.memory_batch, args.input_size, args.hidden)
        print(json.dumps(row))
        return {"memory": row}
    print(f"threads={args.threads} hidden={args.hidden} batch={args.batch} input_size={args.input_size}")
    print("load before:", uptime(), flush=True)
    results: dict[str, Any] = {"speed": speed_table(args)}
    if not args.skip_memory:
        results["memory"] = memory_row(args)
    print("load after:", uptime())
    return results


if __name__ == "__main__":
    main()
