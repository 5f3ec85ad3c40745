"""Optional fused GPU kernels of msclip (Triton), installed as ``msclip.cuda``.

Two places in msclip are limited by memory traffic rather than arithmetic:

* :mod:`msclip.cuda.contrastive`: the CLIP (InfoNCE) and SigLIP losses computed tile by tile
  with an online log-sum-exp, forward and backward, so that no ``B x B`` logit matrix is ever
  stored (Inf-CL, Cheng et al. 2024; FlashAttention's online softmax, Dao et al. 2022), in a
  pure-PyTorch ``chunked`` backend and a Triton backend (:mod:`msclip.cuda.contrastive_kernels`),
  across processes as well. ``msclip-train --loss-impl`` selects it.
* :mod:`msclip.cuda.topk`: a fused top-k inner-product scan over float16 / bfloat16 / int8 stored
  embeddings (:mod:`msclip.cuda.topk_kernels`) with the error bound that lets
  :class:`msclip.index.search.SearchIndex` return exactly the exact path's ids and scores on a GPU.

Nothing here is imported by ``import msclip``; the Triton modules are imported on first use only,
and every kernel has a PyTorch path that runs where Triton or a GPU is missing (see
:mod:`msclip.cuda.runtime` for how the choice is made, and ``docs/kernels.md``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ENV_LOSS_IMPL",
    "LOSS_IMPLS",
    "FusedSearcher",
    "KernelUnavailableError",
    "Shard",
    "TensorMemoryTracker",
    "blockwise_contrastive_loss",
    "fused_topk",
    "resolve_loss_impl",
    "topk_reference",
]

#: Choices of ``--loss-impl`` (here, free of torch, so that option parsing stays cheap).
LOSS_IMPLS = ("auto", "plain", "chunked", "triton")
#: Environment variable consulted when the choice is ``auto`` (as timm's ``TIMM_FUSED_ATTN``).
ENV_LOSS_IMPL = "MSCLIP_LOSS_IMPL"

_HOMES = {
    "FusedSearcher": "topk",
    "KernelUnavailableError": "runtime",
    "Shard": "contrastive",
    "TensorMemoryTracker": "memory",
    "blockwise_contrastive_loss": "contrastive",
    "fused_topk": "topk",
    "resolve_loss_impl": "contrastive",
    "topk_reference": "topk",
}


def __getattr__(name: str) -> Any:
    """Import the public names from their modules on first access (none of them imports
    Triton)."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"msclip.cuda.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'msclip.cuda' has no attribute {name!r}")
