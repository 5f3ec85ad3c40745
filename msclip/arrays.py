"""Arrays from what callers pass: numpy arrays, torch tensors of any dtype and device, sequences.

One conversion for every API that takes embeddings, scores or images as numpy: a tensor is
detached from autograd and brought to the CPU, and half-precision floats (``bfloat16``, which
numpy lacks, and ``float16``) become float32, so the default bf16 output of a model on a CPU with
native bf16 is accepted wherever float32 is. torch is not imported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_numpy"]


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array (no copy for a numpy array; see the module docstring)."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        t = x.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:
            t = t.float()
        return t.numpy()
    return np.asarray(x)
