"""The GPU path, tested on the CPU where it can be forced: batch size from free device memory,
pinned loader batches, worker counts, bf16 against fp32 within the documented tolerance; the
one-thread reading of items; the preprocessing fast path equals torchvision's."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import msclip
from msclip.encode import (
    CPU_BATCH_SIZE,
    auto_batch_size,
    auto_workers,
    collate_items,
    encode_images,
    loader_args,
    single_thread,
)


@pytest.fixture(scope="module")
def vit_b():
    """The Llama3-MS-CLIP architecture on the meta device (sizes only, no memory)."""
    from msclip.factory import _build, _config_for, get_model_entry

    return _build(_config_for(get_model_entry("Llama3-MS-CLIP-Base"), None), meta=True)


def test_batch_size_from_free_gpu_memory(vit_b) -> None:
    assert auto_batch_size(vit_b, "cpu") == CPU_BATCH_SIZE == 4
    host = {"workers": 8, "host_bytes": 1 << 50, "shm_bytes": 1 << 50}  # the host never binds
    sizes = [auto_batch_size(vit_b, "cuda:0", free_bytes=g << 30, **host) for g in (1, 8, 80)]
    assert all(s & (s - 1) == 0 for s in sizes)  # powers of two
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] <= 1024
    # ViT-B/16 (197 tokens, width 768, fp32): ~12 MB of activations per image -> 1 GB free, 32
    assert sizes[0] == 32
    assert auto_batch_size(vit_b, "cuda", free_bytes=1 << 20, **host) == 1  # never zero


def test_gpu_batch_size_fits_the_batches_in_flight_on_the_host(vit_b, caplog) -> None:
    """Workers' prefetched batches and the main process's two fit in a quarter of the host's
    available memory, the workers' ones in half of the free shared memory."""
    per_input = 10 * 224 * 224 * 4  # the 10-band float32 tile, ~2 MB
    gpu = 139 << 30  # a large GPU alone would allow 1024
    assert auto_batch_size(vit_b, "cuda", free_bytes=gpu, workers=0, host_bytes=1 << 50) == 1024
    # 8 workers x 2 prefetched + 2 = 18 batches in 16 GB / 4: 118 images -> 64
    host = 16 << 30
    assert host * 0.25 // (18 * per_input) == 118
    got = auto_batch_size(vit_b, "cuda", free_bytes=gpu, workers=8, host_bytes=host,
                          shm_bytes=1 << 50)  # fmt: skip
    assert got == 64
    # without workers only the main process's two batches: 4 GB / (2 x 2 MB) -> 1024
    assert auto_batch_size(vit_b, "cuda", free_bytes=gpu, workers=0, host_bytes=host) == 1024
    # a container's default 64 MB of /dev/shm: 16 prefetched batches in 32 MB -> 1 image, said
    with caplog.at_level(logging.WARNING, logger="msclip.encode"):
        got = auto_batch_size(vit_b, "cuda", free_bytes=gpu, workers=8, host_bytes=1 << 50,
                              shm_bytes=64 << 20)  # fmt: skip
    assert got == 1
    assert "64 MB of shared memory" in caplog.text and "--shm-size" in caplog.text
    assert "--workers 0" in caplog.text
    caplog.clear()  # shared memory is not read without workers
    got = auto_batch_size(vit_b, "cuda", free_bytes=gpu, workers=0, host_bytes=1 << 50,
                          shm_bytes=64 << 20)  # fmt: skip
    assert got == 1024 and not caplog.text


def test_command_line_batch_size_counts_the_workers_given(monkeypatch) -> None:
    """``load_model`` settles the workers first and sizes the batch for them."""
    import argparse

    from msclip.cli import common

    seen = {}

    def fake_batch(model, device, free_bytes=None, *, workers=None, **_):
        seen["workers"] = workers
        return 256

    monkeypatch.setattr("msclip.encode.auto_batch_size", fake_batch)
    monkeypatch.setattr("msclip.encode.auto_workers", lambda device: 6)
    args = argparse.Namespace(
        model_name="msclip-tiny", ckpt_path=None, pretrained=False, seed=0, device="cpu",
        precision="fp32", batch_size=None, workers=None, quiet=True,
    )  # fmt: skip
    common.load_model(args)
    assert args.workers == 6 and seen["workers"] == 6 and args.batch_size == 256
    args.batch_size, args.workers = None, 3
    common.load_model(args)
    assert seen["workers"] == 3


def test_library_default_batch_is_the_devices(make_geotiff, monkeypatch) -> None:
    """encode_images without a batch size calls the model with the device's batch (4 on a CPU)."""
    paths = [make_geotiff(f"b{i}.tif", size=(32, 32), seed=i)[0] for i in range(11)]
    model = msclip.create_model("msclip-tiny", precision="fp32")
    seen: list[int] = []
    encode = type(model).encode_image

    def spy(self, x, *a, **k):
        seen.append(x.shape[0])
        return encode(self, x, *a, **k)

    monkeypatch.setattr(type(model), "encode_image", spy)
    res = encode_images(model, model.preprocess(), paths)
    assert seen == [4, 4, 3] and len(res.embeddings) == 11


def test_loader_arguments_and_workers_by_device() -> None:
    cuda = loader_args(torch.device("cuda"), 64, 4, collate_items)
    assert cuda["pin_memory"] and cuda["num_workers"] == 4 and cuda["prefetch_factor"] == 2
    cpu = loader_args(torch.device("cpu"), 32, 0, collate_items)
    assert "pin_memory" not in cpu and cpu["batch_size"] == 32 and "prefetch_factor" not in cpu
    assert auto_workers("cpu") == 0 and 1 <= auto_workers("cuda") <= 16


class _Tiles(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "image": torch.full((3, 4, 5), float(i))}


def _collate_noting_shared(items: list) -> dict:
    out = collate_items(items)
    out["stacked_in_shared_memory"] = out["images"].is_shared()  # before it is sent
    return out


def test_workers_stack_their_batches_in_shared_memory() -> None:
    """A worker's batch is stacked where it is sent from, not copied there afterwards; in the
    main process it stays in ordinary memory."""
    from torch.utils.data import DataLoader

    got = list(DataLoader(_Tiles(), batch_size=2, num_workers=1, collate_fn=_collate_noting_shared))
    assert [b["stacked_in_shared_memory"] for b in got] == [True, True, True]
    assert torch.cat([b["images"] for b in got]).flatten(1).amax(1).tolist() == [0, 1, 2, 3, 4]
    assert [b["images"].shape for b in got][-1] == (1, 3, 4, 5)
    alone = collate_items([_Tiles()[i] for i in range(2)])["images"]
    assert not alone.is_shared() and alone.is_contiguous()


def test_bf16_embeddings_agree_with_fp32(make_geotiff) -> None:
    """The tolerance documented for reduced-precision runs (GPU bf16 and CPU bf16 alike)."""
    from msclip.errors import PrecisionError
    from msclip.precision_check import MIN_COSINE, cpu_bf16_agreement

    paths = [make_geotiff(f"t{i}.tif", size=(64, 64), seed=i)[0] for i in range(6)]
    fp32 = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
    verdict = cpu_bf16_agreement(fp32.config)  # None where bf16 is emulated (not checked)
    if verdict is not None and min(verdict.values()) < MIN_COSINE:  # wrong bf16 here: refused
        with pytest.raises(PrecisionError, match="disagrees with float32"):
            msclip.create_model("msclip-demo", pretrained=True, precision="bf16")
        return
    out = {}
    for precision in ("fp32", "bf16"):
        model = msclip.create_model("msclip-demo", pretrained=True, precision=precision)
        out[precision] = encode_images(model, model.preprocess(), paths, batch_size=4).embeddings
    cos = (out["fp32"] * out["bf16"]).sum(1)
    assert cos.min() > 0.999 and not np.array_equal(out["fp32"], out["bf16"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_outputs_match_cpu_fp32(make_geotiff) -> None:
    paths = [make_geotiff(f"g{i}.tif", size=(64, 64), seed=i)[0] for i in range(8)]
    cpu = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
    ref = encode_images(cpu, cpu.preprocess(), paths, batch_size=4).embeddings
    for precision, tol in (("fp32", 1e-4), ("auto", None)):
        gpu = msclip.create_model("msclip-demo", pretrained=True, device="cuda",
                                  precision=precision)  # fmt: skip
        got = encode_images(gpu, gpu.preprocess(), paths, batch_size=None, workers=2).embeddings
        if tol is not None:
            np.testing.assert_allclose(got, ref, atol=tol)
        assert (got * ref).sum(1).min() > 0.999


def test_items_are_read_with_one_thread_and_threads_come_back(make_geotiff) -> None:
    seen = []

    class Recording(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict:
            seen.append(torch.get_num_threads())
            return {"index": i, "image": torch.zeros(10, 32, 32)}

    torch.set_num_threads(2)
    model = msclip.create_model("msclip-tiny")
    from msclip.encode import encode_batches

    batches = list(encode_batches(model, Recording(), batch_size=2))
    assert sum(len(b.indices) for b in batches) == 3
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_preprocessing_without_resize_equals_torchvision(make_geotiff) -> None:
    from torchvision.transforms import functional as TF

    model = msclip.create_model("msclip-tiny")
    path, data = make_geotiff("p.tif", count=10, size=(32, 32))
    got = model.preprocess()(path)
    stats = model.config.stats
    x = torch.from_numpy(data.astype(np.float32))
    mean = [stats.mean[b] for b in model.bands]
    std = [stats.std[b] for b in model.bands]
    resized = TF.center_crop(TF.resize(x, [32], antialias=True), [32, 32])
    assert torch.equal(got, TF.normalize(resized, mean=mean, std=std))


def test_cores_and_processes_of_this_machine(monkeypatch) -> None:
    from msclip import hardware

    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert hardware.usable_cores() == 3  # the affinity mask, not the machine's count
    for raw, want in (("4", 4), ("0", 1), ("x", 1), (" 2", 2)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", raw)
        assert hardware.local_processes() == want, raw
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert hardware.local_processes() == 1


def test_torchrun_processes_share_the_cores_and_host_memory(vit_b, monkeypatch) -> None:
    """Eight GPU processes of one machine under torchrun: workers and batches waiting on the host
    are each process's share, not eight times the machine's."""
    from msclip import hardware

    monkeypatch.setattr(hardware, "usable_cores", lambda: 32)
    monkeypatch.setattr(hardware, "available_memory", lambda: 64 << 30)
    monkeypatch.setattr("msclip.encode.shared_memory_free", lambda: 64 << 30)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers("cuda") == 16  # at most 16
    alone = auto_batch_size(vit_b, "cuda", free_bytes=139 << 30)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert auto_workers("cuda") == 2  # 32 cores / 8 processes - 2
    shared = auto_batch_size(vit_b, "cuda", free_bytes=139 << 30)
    # alone: 16 workers, 34 batches of ~2.4 MB images in 64 GB / 4 -> 195 -> 128; one of 8
    # processes: 2 workers, 6 batches in 8 GB / 4 -> 139 -> 128
    assert (alone, shared) == (128, 128)
    monkeypatch.setattr(hardware, "usable_cores", lambda: 6)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert auto_workers("cuda") == 4  # 6 cores - 2


def test_a_small_gpu_run_gives_every_worker_batches(vit_b, monkeypatch) -> None:
    """64 images with 8 workers: batches of 4 (16 batches, two per worker), not one batch of
    64 that one worker reads alone; a large run keeps the batch the memory allows."""
    monkeypatch.setattr("msclip.encode.shared_memory_free", lambda: 64 << 30)
    big = dict(free_bytes=139 << 30, host_bytes=1 << 50, workers=8)
    assert auto_batch_size(vit_b, "cuda", **big, items=64) == 4
    assert auto_batch_size(vit_b, "cuda", **big, items=100) == 4  # 100 / 16 -> 6 -> 4
    assert auto_batch_size(vit_b, "cuda", **big, items=10**6) == 1024
    assert auto_batch_size(vit_b, "cuda", **big, items=3) == 1
    assert auto_batch_size(vit_b, "cuda", **{**big, "workers": 0}, items=64) == 1024


def test_index_processes_under_torchrun_compute_with_their_share_of_the_cores(monkeypatch) -> None:
    """torchrun starts each process with one thread; on CPUs the index build gives each its
    share of the cores."""
    import argparse

    from msclip import hardware
    from msclip.cli import index as index_cli
    from msclip.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(hardware, "usable_cores", lambda: 16)
    ctx = distributed.DistContext(
        rank=0, world_size=2, local_world_size=2, device=torch.device("cpu")
    )
    monkeypatch.setattr(distributed, "init_distributed", lambda device: ctx)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        args = argparse.Namespace(device=None)
        assert index_cli._join_process_group(args) is ctx
        assert torch.get_num_threads() == 8 and args.device == "cpu"
    finally:
        torch.set_num_threads(before)


def test_workers_hand_a_half_precision_models_images_over_in_its_dtype(
    make_geotiff, monkeypatch
) -> None:
    """DataLoader workers cast a bf16 model's images to bf16, the model's own first step: half
    the bytes through shared memory and to the device, the same embeddings bit for bit."""
    paths = [make_geotiff(f"h{i}.tif", size=(32, 32), seed=i)[0] for i in range(5)]
    seen: list[torch.dtype] = []
    out = {}
    for precision in ("fp32", "bf16"):
        model = msclip.create_model("msclip-tiny", precision="fp32")
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        encode = model.encode_image

        def spy(images, *args, _encode=encode, **kwargs):
            seen.append(images.dtype)
            return _encode(images, *args, **kwargs)

        monkeypatch.setattr(model, "encode_image", spy)
        for workers in (0, 1):
            seen.clear()
            got = encode_images(model, model.preprocess(), paths, batch_size=2, workers=workers)
            out[precision, workers] = got.embeddings
            cast = precision == "bf16" and workers > 0
            assert seen == [torch.bfloat16 if cast else torch.float32] * 3
    assert np.array_equal(out["bf16", 0], out["bf16", 1])
    assert np.array_equal(out["fp32", 0], out["fp32", 1])
    assert not np.array_equal(out["fp32", 1], out["bf16", 1])
