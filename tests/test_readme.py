"""The README's example of a user-defined energy and scheme runs and keeps its promises."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from experiments.memory import saved_bytes

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> dict:
    text = README.read_text()
    section = text.split("## Your own energy and integration scheme", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_readme_user_energy_and_scheme_reversible_gradients_equal_stored_ones():
    torch.manual_seed(0)
    example = _example()
    stored, reversible = example["stored"], example["reversible"]
    x = torch.randn(3, 200, 2, dtype=torch.float64, requires_grad=True)
    grads = []
    for layer in (stored, reversible):
        output, (p_n, _) = layer(x)
        loss = output.pow(2).sum() + p_n.sum()
        grads.append(torch.autograd.grad(loss, [x, *layer.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_readme_reversible_layer_memory_does_not_grow_with_the_sequence():
    reversible = _example()["reversible"]

    def activation_bytes(seq_len: int) -> int:
        x = torch.randn(2, seq_len, 2, dtype=torch.float64)

        def run():
            output, _ = reversible(x)
            return output[:, -1].sum()

        return saved_bytes(run, exclude=[x, *reversible.parameters()])

    short, long = activation_bytes(1_000), activation_bytes(10_000)
    assert long <= 1.2 * short, (short, long)
