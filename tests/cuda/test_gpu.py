"""Checks that need a CUDA device (marked ``gpu``; they skip without one)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from msclip.cuda.contrastive import blockwise_contrastive_loss, resolve_loss_impl

from msclip.train.loss import ContrastiveLoss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_triton_memory_is_linear_and_auto_takes_the_faster_plain_or_chunked() -> None:
    assert resolve_loss_impl("auto", 8, torch.device("cuda")) == "plain"
    assert resolve_loss_impl("auto", 1 << 20, torch.device("cuda")) == "chunked"
    b, d = 16384, 512
    x = F.normalize(torch.randn(b, d, device="cuda"), dim=1).requires_grad_()
    y = F.normalize(torch.randn(b, d, device="cuda"), dim=1).requires_grad_()
    t = torch.tensor(math.log(30.0), device="cuda", requires_grad=True)
    fused = _peak(lambda: blockwise_contrastive_loss(x, y, t, impl="triton").backward())
    grads = x.grad.clone()
    x.grad = None
    plain = _peak(lambda: ContrastiveLoss("clip")(x, y, t).backward())
    assert fused < 16 * b * d * 4  # a few copies of the embeddings, no B x B matrix
    assert plain > 4 * b * b
    torch.testing.assert_close(grads, x.grad, rtol=1e-4, atol=1e-7)


def test_both_search_methods_agree_and_the_index_keeps_the_faster(caplog) -> None:
    """Over 10^6 rows: the fused scan and the chunked float32 products give the ids of an fp32
    ``matmul + topk`` (to near-ties); a search index on the GPU times both once per regime and
    keeps the faster, and its results equal the exact CPU search. Speeds are the benchmark's
    (benchmarks/kernels.py), not asserted here."""
    import logging

    import numpy as np
    from msclip.cuda.topk import fused_topk, topk_reference

    from msclip.index import SearchIndex

    store = F.normalize(torch.randn(10**6, 512, device="cuda"), dim=1).half()
    q = F.normalize(torch.randn(100, 512, device="cuda"), dim=1).half()
    ref = torch.topk(q.float() @ store.float().T, 10, dim=1).indices  # fp32 sums, other order
    for method in (fused_topk, topk_reference):
        ids = method(q, store, 10)[1]
        assert (ids[:, :, None] == ref[:, None, :]).any(-1).float().mean() > 0.99
    emb = store[:200_000].float().cpu().numpy()
    queries = q.float().cpu().numpy()
    gpu = SearchIndex(emb, device="cuda")
    with caplog.at_level(logging.INFO, logger="msclip.cuda.topk"):
        for n in (100, 1, 100):
            got = gpu.search(queries[:n], 10)
            exact = SearchIndex(emb, device="cpu").search(queries[:n], 10, exact=True)
            np.testing.assert_array_equal(got.ids, exact.ids)
            np.testing.assert_array_equal(got.scores, exact.scores)
    measured = [r.getMessage() for r in caplog.records if "GPU search of" in r.getMessage()]
    assert len(measured) == 2 and sorted(gpu._fused._picked) == ["1", "17-256"], measured
