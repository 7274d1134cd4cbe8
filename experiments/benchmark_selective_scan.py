"""Forward + backward time of :class:`hrnn.SelectiveHamiltonianRNN`: its fast scan against its plain step
loop (``fast=False``), as a ratio measured in the same run.

Usage::

    OMP_NUM_THREADS=1 nice python -m experiments.benchmark_selective_scan     # batch 50, n 64, T 1000

Both layers hold the same weights; the loss is ``output.sum()``. They are timed in turn,
``--repeats`` rounds, and each keeps its fastest round by wall clock and by the thread's CPU time
(:func:`experiments.benchmark_linoss.time_layers`); the load average is printed before and after.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from experiments.benchmark_linoss import time_layers, uptime
from hrnn import SelectiveHamiltonianRNN

__all__ = ["main"]

#: label -> the layer's ``fast`` option; the ratios are ``loop`` over ``scan``
VARIANTS: dict[str, bool] = {"scan": True, "loop": False}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=1000)
    parser.add_argument("--input-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--damping", type=float, default=None, help="the cell's default when not given")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print the times of both paths and their ratio; returns ``{"wall": ..., "cpu": ...}`` ratios."""
    args = parse_args(argv)
    options = {} if args.damping is None else {"damping": args.damping}
    torch.manual_seed(0)
    layers = {label: SelectiveHamiltonianRNN(args.input_size, args.hidden, fast=fast, **options)
              for label, fast in VARIANTS.items()}  # fmt: skip
    layers["loop"].load_state_dict(layers["scan"].state_dict())
    if layers["scan"].cells[0].acceleration() is None:
        raise RuntimeError("no fast scan is registered for SelectiveHamiltonianCell: nothing to compare")
    x = torch.randn(args.seq_len, args.batch, args.input_size)
    print(f"before: {uptime()}\nbatch {args.batch}, hidden {args.hidden}, T {args.seq_len}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved rounds")  # fmt: skip
    times = time_layers(layers, x, args.repeats)
    for label, (wall, cpu) in times.items():
        print(f"{label:<5} wall {wall:7.3f} s   cpu {cpu:7.3f} s")
    ratios = {kind: times["loop"][i] / times["scan"][i] for i, kind in enumerate(("wall", "cpu"))}
    print(f"loop / scan: wall {ratios['wall']:.2f}x, cpu {ratios['cpu']:.2f}x\nafter: {uptime()}")
    return ratios


if __name__ == "__main__":
    main()
