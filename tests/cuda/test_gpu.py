"""Checks that need a CUDA device (marked ``gpu``; they skip without one)."""

from __future__ import annotations

import math
import time

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


def test_auto_picks_triton_and_its_memory_is_linear() -> None:
    assert resolve_loss_impl("auto", 8, torch.device("cuda")) == "triton"
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


def test_fused_topk_beats_matmul_and_topk() -> None:
    from msclip.cuda.topk import fused_topk

    store = F.normalize(torch.randn(10**6, 512, device="cuda"), dim=1).half()
    q = F.normalize(torch.randn(100, 512, device="cuda"), dim=1).half()

    def best(fn) -> float:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    fused = best(lambda: fused_topk(q, store, 10))
    plain = best(lambda: torch.topk((q @ store.T).float(), 10, dim=1))
    ids = fused_topk(q, store, 10)[1]
    ref = torch.topk(q.float() @ store.float().T, 10, dim=1).indices  # fp32 sums, other order
    agree = (ids[:, :, None] == ref[:, None, :]).any(-1).float().mean()
    assert agree > 0.99
    assert fused < plain
