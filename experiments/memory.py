"""Memory of a forward + backward pass: bytes autograd saves, and the exact peak of tensor memory.

* :func:`saved_bytes`: the distinct storages packed by :func:`torch.autograd.graph.saved_tensors_hooks`
  (which include a custom Function's ``save_for_backward``), beyond given tensors;
* :class:`LiveBytes` / :func:`peak_bytes`: the high-water mark of all tensor memory the ops allocate
  (a dispatch mode, exact, any device), beyond the input and the parameters.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveBytes", "forward_backward", "peak_bytes", "saved_bytes"]


def forward_backward(layer: nn.Module, x: Tensor) -> Tensor:
    """One forward and backward pass of a recurrent layer with loss ``output.sum()``; returns the output."""
    output, _ = layer(x)
    output.sum().backward()
    return output


def saved_bytes(fn: Callable[[], object], exclude: Sequence[Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``, beyond ``exclude``."""
    given = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in given:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages that the ops run under it create, while they live.

    Every aten op (forward, backward, inside custom Functions) passes through the mode; a storage
    is counted from the op that creates it until it is freed (a finalizer on the storage), so
    ``peak`` is the exact high-water mark of the tensor memory allocated under the mode, on any
    device. Storages that exist before (``known``: the input, the parameters) are never counted.
    """

    def __init__(self, known: Sequence[Tensor] = ()) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen = {id(t.untyped_storage()) for t in known}

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and id(storage := t.untyped_storage()) not in self._seen:
                self._seen.add(id(storage))
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        return out


def peak_bytes(layer: nn.Module, x: Tensor) -> int:
    """Peak tensor memory of one forward + backward (loss ``output.sum()``) beyond the input and parameters."""
    layer.zero_grad(set_to_none=True)
    with LiveBytes(known=(x, *layer.parameters())) as counter:
        forward_backward(layer, x)
    return counter.peak
