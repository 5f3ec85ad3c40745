"""GPU-path decisions that run without a GPU: launch devices, the reference top-k's memory,
integer device specs, a single process's current device."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
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
