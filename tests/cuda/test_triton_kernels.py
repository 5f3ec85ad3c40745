"""The Triton kernels against their PyTorch references, on a GPU or through the interpreter.

In a session without a GPU these tests skip; ``test_interpreter.py`` runs this module in a
subprocess with ``TRITON_INTERPRET=1`` (tiny sizes: the interpreter runs every program in
Python). The tests of a kernel are marked ``gpu``: the suite hides the GPU from the others
(``tests/conftest.py``), and ``-m gpu`` runs them on one (``benchmarks/gpu_checks.sh``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cuda_helpers import assert_matches, loss_and_grads, uncertifiable_search_set
from msclip.cuda.contrastive import blockwise_contrastive_loss
from msclip.cuda.topk import FusedSearcher, fused_topk, pack_keys, topk_reference, unpack_keys

from msclip.index.search import SearchIndex
from msclip.train.loss import ContrastiveLoss

# rows and columns per program 16, slices of D of 16: D = 24 needs two, the second half masked
BLOCKS = (16, 16, 16)


def _inputs(n: int, d: int, device: str, kind: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(n)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device, dtype).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device, dtype).requires_grad_()
    t = torch.tensor(math.log(20.0), device=device, requires_grad=True)
    b = torch.tensor(-3.0, device=device, requires_grad=True) if kind == "siglip" else None
    return x, y, t, b


def _plain(kind):
    def run(x, y, t, b):
        loss_fn = ContrastiveLoss(kind).to(x.device)
        if b is not None:
            del loss_fn.logit_bias
            loss_fn.logit_bias = b
        return loss_fn(x.float(), y.float(), t)

    return run


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("n", [32, 37])  # a multiple of the 16-row blocks, and not
def test_triton_loss_equals_plain(loss_device: str, kind: str, n: int) -> None:
    x, y, t, b = _inputs(n, 24, loss_device, kind)
    ref = loss_and_grads(_plain(kind), x, y, t, b)

    def triton(x, y, t, b):
        return blockwise_contrastive_loss(x, y, t, b, kind=kind, impl="triton", block_size=BLOCKS)

    assert_matches(*loss_and_grads(triton, x, y, t, b), *ref)


@pytest.mark.gpu
def test_triton_loss_default_blocks_frozen_text_and_bf16(loss_device: str) -> None:
    x, y, t, _ = _inputs(20, 40, loss_device, "clip")
    y = y.detach()
    ref = loss_and_grads(_plain("clip"), x, y, t, None)
    got = loss_and_grads(lambda *a: blockwise_contrastive_loss(*a, impl="triton"), x, y, t, None)
    assert set(got[1]) == {"image", "logit_scale"}
    assert_matches(*got, *ref)
    # bf16 embeddings: products exact in fp32, so the plain loss of the rounded values
    xb, yb = (v.detach().bfloat16().requires_grad_() for v in (x, y))
    loss = blockwise_contrastive_loss(xb, yb, t, kind="clip", impl="triton", block_size=BLOCKS)
    loss.backward()
    assert xb.grad.dtype == torch.bfloat16
    ref_b = ContrastiveLoss("clip").to(loss_device)(xb.detach().float(), yb.detach().float(), t)
    assert loss.item() == pytest.approx(ref_b.item(), rel=1e-5)


# -- top-k --------------------------------------------------------------------------------------
def _exact_order(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score descending, then lower id: the rule of msclip.retrieval.sort_top_k."""
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    ids = np.broadcast_to(np.arange(x.shape[0]), scores.shape)
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


def _tied_data(n: int, d: int, n_q: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Small integers (every sum exact in fp32, whatever the order) and duplicated rows: many
    equal scores, which only the id can order."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=g).float()
    x[n // 2 : n // 2 + n // 4] = x[: n // 4]
    q = torch.randint(-2, 3, (n_q, d), generator=g).float()
    return q, x


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "k"), [(100, 5), (70, 20)])  # 16- and 32-key lists
def test_fused_topk_ids_equal_exact_order_with_ties(topk_device: str, n: int, k: int) -> None:
    q, x = _tied_data(n, 24, 18)
    ref_s, ref_i = _exact_order(q.numpy(), x.numpy(), k)
    gaps = np.diff(ref_s, axis=1)
    assert (gaps == 0).sum() > 10  # the data do tie
    for dtype in (torch.float16, torch.bfloat16):
        s, i = fused_topk(q.to(topk_device, dtype), x.to(topk_device, dtype), k)
        np.testing.assert_array_equal(i.cpu().numpy(), ref_i)
        np.testing.assert_array_equal(s.cpu().numpy(), ref_s.astype(np.float32))
    # int8 codes, widened in the kernel
    s, i = fused_topk(q.to(topk_device, torch.float16), x.to(topk_device, torch.int8), k)
    np.testing.assert_array_equal(i.cpu().numpy(), ref_i)
    # the reference path (matmul + topk) follows the same rule
    _, ri = topk_reference(q.half(), x.half(), k, chunk_rows=33)
    np.testing.assert_array_equal(ri.numpy(), ref_i)


@pytest.mark.gpu
def test_fused_topk_reads_strided_stored_views(topk_device: str) -> None:
    """A column slice or a transposed copy of the stored rows is a view whose elements along D
    are not adjacent: the kernel must see the same numbers as the reference."""
    q, x = _tied_data(40, 24, 5, seed=1)
    ref_s, ref_i = _exact_order(q.numpy(), x.numpy(), 7)
    qd = q.to(topk_device, torch.float16)
    wide = torch.zeros(40, 48, dtype=torch.float16, device=topk_device)
    wide[:, ::2] = x.to(topk_device, torch.float16)
    transposed = x.to(topk_device, torch.float16).t().contiguous().t()
    for stored in (wide[:, ::2], transposed):
        assert stored.stride(1) != 1
        s, i = fused_topk(qd, stored, 7)
        np.testing.assert_array_equal(i.cpu().numpy(), ref_i)
        np.testing.assert_array_equal(s.cpu().numpy(), ref_s.astype(np.float32))


@pytest.mark.gpu
def test_fused_topk_of_no_queries_is_empty(topk_device: str) -> None:
    q, x = _tied_data(40, 24, 1)
    for stored in (x.to(topk_device, torch.float16), x.to(topk_device, torch.int8)):
        s, i = fused_topk(q[:0].to(topk_device, torch.float16), stored, 5)
        assert s.shape == i.shape == (0, 5) and i.dtype == torch.int64
        assert s.device == i.device == stored.device


def test_keys_round_trip_and_order() -> None:
    scores = torch.tensor([0.5, -0.0, 0.0, -1e-30, 3.0, -2.5, 0.5])
    ids = torch.tensor([9, 1, 0, 4, 2, 3, 7])
    keys = pack_keys(scores, ids)
    s, i = unpack_keys(keys)
    assert torch.equal(i, ids) and torch.equal(s, scores + 0.0)  # -0 comes back as +0
    order = torch.argsort(keys, descending=True)
    assert ids[order].tolist() == [2, 7, 9, 0, 1, 4, 3]  # score desc, ties (0.5, 0) by lower id


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["fused", "gemm", "auto"])
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_search_index_on_the_kernel_equals_exact_search(
    topk_device: str, dtype: str, method: str, caplog
) -> None:
    """Exact results on a GPU whichever way candidates are found: the fused scan, matmul + topk,
    or the faster of the two, measured (the error bound covers both)."""
    emb, queries = uncertifiable_search_set()
    exact = SearchIndex(emb, device="cpu").search(queries, 7, exact=True)
    index = SearchIndex(emb, device="auto")
    index._fused = FusedSearcher.for_index(index, torch.device(topk_device), dtype, method)
    with caplog.at_level(logging.DEBUG):
        got = index.search(queries, 7)
    if method == "auto":  # measured on the first search of 6 queries and on the retry of one
        assert sorted(index._fused._picked) == ["1", "2-16"]
        assert caplog.text.count("GPU search of") == 2
    np.testing.assert_array_equal(got.ids, exact.ids)
    np.testing.assert_array_equal(got.scores, exact.scores)
    assert "1 queries not certified, longer lists" in caplog.text
    assert "query 5 not certified, rescanning in float64" in caplog.text


@pytest.mark.gpu
def test_every_launch_is_made_on_the_inputs_device(loss_device: str, monkeypatch) -> None:
    """Triton launches on the current CUDA device: each launch makes the inputs' device current
    (a search or a loss on cuda:1 while cuda:0 is current fails otherwise)."""
    from msclip.cuda import contrastive_kernels, runtime, topk_kernels

    seen = []

    def recording(device):
        seen.append(torch.device(device))
        return runtime.launch_device(device)

    monkeypatch.setattr(topk_kernels, "launch_device", recording)
    monkeypatch.setattr(contrastive_kernels, "launch_device", recording)
    g = torch.Generator().manual_seed(0)
    stored = F.normalize(torch.randn(40, 32, generator=g), dim=1).to(loss_device, torch.float16)
    fused_topk(stored[:3], stored, 16)
    x, y, t, _ = _inputs(20, 24, loss_device, "clip")
    blockwise_contrastive_loss(x, y, t, None, kind="clip", impl="triton").backward()
    assert len(seen) >= 3 and {d.type for d in seen} == {torch.device(loss_device).type}


@pytest.mark.gpu
def test_a_product_without_memory_gives_way_to_the_scan(topk_device: str, monkeypatch) -> None:
    """The chunked products need room for a chunk of scores; where the device has none, the
    measured choice and a later search take the fused scan, with the same results."""
    from msclip.cuda import topk

    rng = np.random.default_rng(2)
    emb = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    exact = SearchIndex(emb, device="cpu").search(queries, 5, exact=True)
    index = SearchIndex(emb, device="auto")
    index._fused = FusedSearcher.for_index(index, torch.device(topk_device), "float16", "auto")

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("no room for the scores")

    monkeypatch.setattr(topk, "gemm_topk", no_memory)
    for _ in range(2):
        got = index.search(queries, 5)
        np.testing.assert_array_equal(got.ids, exact.ids)
    assert index._fused._picked == {"2-16": "fused"}
    index._fused._picked["2-16"] = "gemm"  # measured faster once, out of memory later
    np.testing.assert_array_equal(index.search(queries, 5).ids, exact.ids)
    assert index._fused._picked == {"2-16": "fused"}
