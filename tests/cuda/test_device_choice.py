"""GPU-path decisions that run without a GPU: launch devices, the reference top-k's memory,
integer device specs, a single process's current device."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from cuda_helpers import uncertifiable_search_set
from msclip.cuda import topk
from msclip.cuda.runtime import launch_device

from msclip import hardware


def test_launch_device_makes_a_cuda_device_current_and_leaves_the_cpu_alone() -> None:
    ctx = launch_device(torch.device("cuda", 1))
    assert isinstance(ctx, torch.cuda.device) and ctx.idx == 1  # entered only on a GPU
    assert isinstance(launch_device(torch.device("cpu")), contextlib.nullcontext)


def test_the_reference_top_k_takes_many_queries_a_batch_at_a_time(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    stored = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    queries = F.normalize(torch.randn(10, 16, generator=g), dim=1)
    whole = topk.topk_reference(queries, stored, 7, chunk_rows=64)
    calls = []
    real = topk.topk_reference

    def counting(q, *args, **kwargs):
        calls.append(q.shape[0])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(topk, "_QUERY_BATCH", 4)
    monkeypatch.setattr(topk, "topk_reference", counting)
    batched = counting(queries, stored, 7, chunk_rows=64)
    assert calls == [10, 4, 4, 2]  # scores of at most 4 queries held at once
    assert torch.equal(batched[1], whole[1])
    # a product of 4 queries may round otherwise than one of 10 (the BLAS blocks by shape)
    torch.testing.assert_close(batched[0], whole[0], rtol=0, atol=1e-6)


def test_an_int_device_is_asked_for_itself(monkeypatch) -> None:
    monkeypatch.delenv("MSCLIP_PRECISION", raising=False)  # the suite's fp32: auto decides
    monkeypatch.setattr(hardware, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "_cuda_bf16_supported", lambda index: index == 0)  # A100, T4
    assert hardware.choose_precision("auto", 1).precision == "fp16"
    assert hardware.choose_precision("auto", 0).precision == "bf16"
    assert hardware.choose_precision("auto", "cuda:1").precision == "fp16"


def test_one_process_makes_its_gpu_current(monkeypatch) -> None:
    from msclip.train import distributed

    current = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "_pick_device", lambda device, rank: torch.device(device))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    ctx = distributed.init_distributed(device="cuda:1")
    assert ctx.device == torch.device("cuda:1") and current == [torch.device("cuda:1")]
    assert distributed.init_distributed(device="cpu").device.type == "cpu" and len(current) == 1


@pytest.mark.parametrize(
    ("device", "scan", "current"), [("cpu", "cpu", []), ("cuda:1", "auto", [1]), (None, "auto", [])]
)
def test_index_search_scans_on_the_device_given(device, scan, current, monkeypatch) -> None:
    """--device cpu keeps the scan on the CPU; a GPU given is made current, where the search's
    auto scans (falling back to the CPU when its kernel fails there)."""
    import numpy as np

    from msclip.cli import index as cli
    from msclip.index.search import SearchIndex

    asked = []

    class Result:
        scores, ids = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64)

    class Fake:
        def search(self, *args, **kwargs):
            return Result()

    def from_store(store, **kwargs):
        asked.append(kwargs["device"])
        return Fake()

    made = []
    monkeypatch.setattr(SearchIndex, "from_store", staticmethod(from_store))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made.append(torch.device(d).index))
    cli._top_k(object(), np.zeros((1, 4), np.float32), 1, False, device)
    assert asked == [scan] and made == current


def test_no_gpu_bf16_warning_where_there_is_no_gpu(monkeypatch) -> None:
    """bf16 on 'cuda' without a GPU: the device check refuses it; no warning about emulated bf16
    on a GPU comes first."""
    import warnings

    monkeypatch.setattr(hardware, "_warned", set())
    monkeypatch.setattr(hardware, "_cuda_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.choose_precision("bf16", "cuda").precision == "bf16"
    monkeypatch.setattr(hardware, "_cuda_available", lambda: True)
    monkeypatch.setattr(hardware, "cuda_bf16_supported", lambda index=None: False)
    with pytest.warns(hardware.PerformanceWarning, match="compute capability"):
        hardware.choose_precision("bf16", "cuda")


def test_the_gemm_method_keeps_the_top_scan_scores_over_chunks(monkeypatch) -> None:
    """The GPU search's ``gemm`` candidates: the reference's top scores, over several chunks of
    rows, and no row left out scores above the last kept (what the bound rests on)."""
    g = torch.Generator().manual_seed(3)
    stored = F.normalize(torch.randn(500, 24, generator=g), dim=1)
    stored[200:240] = stored[:40]  # tied scores across chunks
    queries = F.normalize(torch.randn(6, 24, generator=g), dim=1)
    queries[5] = stored[7]
    ref_scores, _ = topk.topk_reference(queries, stored, 30)
    monkeypatch.setattr(topk, "_GEMM_BYTES", 6 * 4 * 64)  # chunks of 64 rows: 8 of them
    calls = []
    real = topk._scores
    monkeypatch.setattr(topk, "_scores", lambda q, part: calls.append(len(part)) or real(q, part))
    scores, ids = topk.gemm_topk(queries, stored, 30)
    assert calls == [64] * 7 + [52]
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-6)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # descending
    all_scores = queries @ stored.T
    torch.testing.assert_close(torch.gather(all_scores, 1, ids), scores, rtol=0, atol=1e-6)
    for q in range(6):
        left_out = torch.ones(500, dtype=torch.bool)
        left_out[ids[q]] = False
        assert bool((all_scores[q, left_out] <= scores[q, -1] + 1e-6).all())
    assert len(set(ids[5].tolist())) == 30 and {7, 207} <= set(ids[5].tolist())
    assert topk.gemm_topk(queries, stored[:5], 30)[1].shape == (6, 5)  # k above the rows: all
    for none in (topk.gemm_topk(queries, stored[:0], 30), topk.gemm_topk(queries, stored, 0)):
        assert none[0].shape == none[1].shape == (6, 0) and none[1].dtype == torch.int64


def test_the_reference_top_k_of_no_queries_or_no_rows_is_empty() -> None:
    stored = F.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(4)), dim=1)
    for q, x, k, shape in [(stored[:0], stored, 5, (0, 5)), (stored[:3], stored[:0], 5, (3, 0))]:
        s, i = topk.topk_reference(q, x, k)
        assert s.shape == i.shape == shape and i.dtype == torch.int64


def test_a_search_index_on_the_gemm_method_equals_exact_search(monkeypatch, caplog) -> None:
    """The ``gemm`` method runs wherever torch does (no Triton): on the CPU here, with
    duplicates and a query whose candidates cannot be certified (rescanned exactly)."""
    import logging

    import numpy as np

    from msclip.index.search import SearchIndex

    calls = []
    real = topk.gemm_topk
    monkeypatch.setattr(topk, "gemm_topk", lambda q, x, k: calls.append(k) or real(q, x, k))

    emb, queries = uncertifiable_search_set()
    exact = SearchIndex(emb, device="cpu").search(queries, 7, exact=True)
    for dtype in ("float16", "bfloat16"):
        index = SearchIndex(emb, device="auto")
        index._fused = topk.FusedSearcher.for_index(index, torch.device("cpu"), dtype, "gemm")
        with caplog.at_level(logging.DEBUG):
            got = index.search(queries, 7)
        np.testing.assert_array_equal(got.ids, exact.ids)
        np.testing.assert_array_equal(got.scores, exact.scores)
        assert calls == [32, 256] and "query 5 not certified, rescanning in float64" in caplog.text
        calls.clear()


def test_a_query_beyond_float16_is_not_certified_by_its_infinite_scan(caplog) -> None:
    """A query component above 65504 becomes infinity in the float16 device copy: every scan score
    is +-inf or NaN, and a last kept score of -inf bounded nothing yet certified wrong rows. Such a
    query is not certified: its longer list (all 60 rows here) is re-ranked exactly."""
    import logging

    import numpy as np

    from msclip.index.search import SearchIndex

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((60, 8)).astype(np.float32)
    emb[:, 0] = -np.abs(emb[:, 0])
    emb[[7, 20, 33], 0] *= -1  # three rows score +inf, the others -inf
    query = np.ones((1, 8), np.float32)
    query[0, 0] = 1e5
    exact = SearchIndex(emb, device="cpu").search(query, 5, exact=True)
    index = SearchIndex(emb, device="auto")
    index._fused = topk.FusedSearcher.for_index(index, torch.device("cpu"), "float16", "gemm")
    with caplog.at_level(logging.DEBUG):
        got = index.search(query, 5)
    np.testing.assert_array_equal(got.ids, exact.ids)
    np.testing.assert_array_equal(got.scores, exact.scores)
    assert "1 queries not certified, longer lists" in caplog.text


def test_an_unavailable_kernel_names_the_fallback_of_its_own_task(monkeypatch) -> None:
    """Without Triton (CUDA torch on Windows) or a GPU, each refusal says how to take that task's
    PyTorch path: a search is not told to change its loss."""
    import numpy as np
    from msclip.cuda import runtime
    from msclip.cuda.contrastive import check_loss_impl

    from msclip.errors import KernelUnavailableError
    from msclip.index.search import SearchIndex

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for triton in (True, False):
        monkeypatch.setattr(runtime, "triton_available", lambda triton=triton: triton)
        index = SearchIndex(np.eye(4, dtype=np.float32), device="cuda")
        with pytest.raises(KernelUnavailableError, match="device='cpu'") as info:
            index.search(np.ones(4, np.float32), 2)
        assert "loss" not in str(info.value)
        with pytest.raises(KernelUnavailableError, match="--loss-impl chunked"):
            check_loss_impl("triton", "cuda")
