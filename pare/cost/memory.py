"""Peak tensor memory of a computation, measured by watching every tensor torch allocates.

CPU allocators keep no peak counter (``torch.cuda.max_memory_allocated`` is CUDA-only), so a
dispatch mode records each new storage's bytes and a finalizer subtracts them when it is freed.
This counts tensor memory exactly and deterministically; allocator slack and Python objects are
not included. Under ``FakeTensorMode`` the same count simulates a computation without running
it (see ``pare.estimate.training``).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemoryTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._keys: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._keys.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            # the storage's own address: unique while it lives, also for fake tensors (no data)
            key, nbytes = storage._cdata, storage.nbytes()
            if nbytes == 0 or key in self._keys:  # views share their base's storage
                continue
            self._keys.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers (each storage once, as tied weights share one)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


def peak_inference_memory(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Weights and buffers plus the peak of what one forward pass allocates on top of them."""
    with torch.inference_mode(), TensorMemoryTracker() as tracker:
        model(example)
    return state_bytes(model) + tracker.peak
