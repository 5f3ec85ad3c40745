"""Kernel faults planted in tests, as CPUs have shown them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def wrong_half_precision_conv2d(monkeypatch) -> list[torch.dtype]:
    """Make ``F.conv2d`` mix up its outputs in bf16 and fp16 (as oneDNN's bf16 convolution did on
    an Intel Xeon with AMX, ``benchmarks/cpu_bf16.py``), float32 left right; returns the list of
    the dtypes of its half-precision calls, appended as they happen."""
    real, calls = F.conv2d, []

    def conv2d(x, weight, *args, **kwargs):
        out = real(x, weight, *args, **kwargs)
        if out.dtype in (torch.bfloat16, torch.float16):
            calls.append(out.dtype)
            return out + out.roll(1, dims=1)
        return out

    monkeypatch.setattr(F, "conv2d", conv2d)
    return calls
