"""Peak bytes of the torch tensors a block of code creates, on any device.

torch keeps allocator statistics for CUDA (``torch.cuda.max_memory_allocated``) but not for the
CPU, and ``tracemalloc`` does not see torch's CPU allocator. :class:`TensorMemoryTracker` is a
``TorchDispatchMode`` that sees every tensor an operator returns (forward and backward passes
alike), counts each storage once while any tensor on it is alive, and records the peak of that
sum. It measures tensor memory only (no allocator slack, no Python objects), deterministically,
which is what the memory bound of a kernel's reference path is about. It costs a few
microseconds per operator.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["TensorMemoryTracker"]


class TensorMemoryTracker(TorchDispatchMode):
    """Track the live and peak bytes of tensors created inside ``with tracker:``.

    Tensors that existed before the block are not counted (the inputs); a storage is counted
    from the first operator that returns a tensor on it until the last such tensor dies.

    Args:
        device: count only tensors on this device type (``cpu``, ``cuda``); None: all.

    Attributes:
        live: bytes currently counted.
        peak: highest ``live`` seen.
    """

    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.device = device
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage address -> [bytes, live tensors]

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.live -= entry[0]

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or (
                self.device is not None and t.device.type != self.device
            ):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            entry = self._storages.get(key)
            if entry is None:
                entry = self._storages[key] = [storage.nbytes(), 0]
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out
