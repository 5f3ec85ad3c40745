"""A model whose CPU image tower takes the fused oneDNN path with packed weights, in the dtype
this machine runs it in: bf16 where its kernels exist (CPUs with native bf16), else float32
(what ``--precision auto`` runs on an AVX2-only CPU), so the packing tests run on both kinds."""

from __future__ import annotations

import pytest
import torch

import msclip


def fused_precision() -> str:
    """``bf16`` or ``fp32``: the dtype whose fused kernels and weight packing work here."""
    from msclip import architecture

    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        if architecture._fused_mlp_works(dtype) and architecture._packing_works(dtype):
            return precision
    pytest.skip("no fused oneDNN kernel or weight packing in this torch build")


def fused_model(*args, **kwargs):
    """``msclip.create_model(*args, **kwargs)`` in :func:`fused_precision`, its image tower on
    the fused path (asked for explicitly in float32, as ``auto`` does)."""
    from msclip.architecture import use_fused_fp32

    precision = fused_precision()
    model = msclip.create_model(*args, precision=precision, **kwargs)
    if precision == "fp32":
        use_fused_fp32(model.clip.visual)
    return model
