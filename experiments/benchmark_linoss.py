"""Speed and memory of :class:`hrnn.LinOSSRNN`, as ratios to :class:`torch.nn.LSTM` measured in the same run.

Usage::

    python -m experiments.benchmark_linoss                        # a few minutes on one CPU thread
    python -m experiments.benchmark_linoss --chunks 16 32 64 128  # the fast scan's chunk length too

* **speed**: forward + backward time of one batch (loss ``output.sum()``) at hidden 128, batch 64,
  T = 1000 and 10,000 for nn.LSTM and the LinOSS variants of :data:`VARIANTS`. The layers are
  timed in turn, ``--repeats`` rounds, and each keeps its fastest round (background load slows a
  round, never speeds it up), by wall clock and by the thread's CPU time; the load average
  (``uptime``) is printed before and after.
* **memory** at T = 100,000, batch 8: one forward + backward of the default layer in a fresh
  subprocess, reporting the process's peak resident memory (``VmHWM``, Linux) and its growth over
  the resident memory before the pass, and the exact peak of tensor memory beyond input and
  parameters (:class:`experiments.memory.LiveBytes`).
"""

from __future__ import annotations

import argparse
import json
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


def time_layers(layers: dict[str, nn.Module], x: Tensor, repeats: int) -> dict[str, tuple[float, float]]:
    """Fastest forward + backward (wall-clock s, CPU s of this thread) of each layer over ``repeats``
    interleaved rounds. On a shared machine the CPU time is the steadier of the two: it leaves out
    the time the process waits for a core (memory-bandwidth contention still counts)."""
    for layer in layers.values():
        forward_backward(layer, x[:20])
    wall, cpu = dict.fromkeys(layers, float("inf")), dict.fromkeys(layers, float("inf"))
    for _ in range(repeats):
        for label, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            start, start_cpu = time.perf_counter(), time.thread_time()
            forward_backward(layer, x)
            cpu[label] = min(cpu[label], time.thread_time() - start_cpu)
            wall[label] = min(wall[label], time.perf_counter() - start)
    return {label: (wall[label], cpu[label]) for label in layers}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def speed_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for seq_len in args.seq_len:
        layers = build_layers(args.input_size, args.hidden, args.chunks)
        x = torch.randn(seq_len, args.batch, args.input_size)
        times = time_layers(layers, x, args.repeats)
        for label, (wall, cpu) in times.items():
            ratio, cpu_ratio = wall / times[REFERENCE][0], cpu / times[REFERENCE][1]
            rows.append({"model": label, "seq_len": seq_len, "seconds": wall, "cpu_seconds": cpu})
            rows[-1] |= {"ratio_to_lstm": ratio, "cpu_ratio_to_lstm": cpu_ratio}
            print(
                f"T={seq_len:>6} {label:<16} wall {wall:7.3f} s ({ratio:5.3f}x LSTM)   "
                f"cpu {cpu:7.3f} s ({cpu_ratio:5.3f}x LSTM)",
                flush=True,
            )
    return rows


def _resident_bytes(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc (Linux). ``ru_maxrss`` would
    not do: after fork + exec it keeps the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(seq_len: int, batch: int, input_size: int, hidden: int) -> dict[str, float]:
    """In this process: peak resident memory and peak tensor memory of one forward + backward."""
    layer = LinOSSRNN(input_size, hidden)
    x = torch.randn(seq_len, batch, input_size)
    forward_backward(layer, x[:20])
    before = _resident_bytes("VmRSS")
    start = time.perf_counter()
    forward_backward(layer, x)
    seconds = time.perf_counter() - start
    peak = _resident_bytes("VmHWM")
    output_bytes = seq_len * batch * hidden * x.element_size()
    return {
        "seq_len": seq_len,
        "batch": batch,
        "seconds": seconds,
        "rss_peak_growth_gib": (peak - before) / GIB,
        "rss_peak_gib": peak / GIB,
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
