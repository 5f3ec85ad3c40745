"""Image-tower throughput of the 10-band ViT-B-16 (Llama3-MS-CLIP architecture) on this machine.

Prints the machine (CPU model, torch's dispatch level, AVX-512/bf16/VNNI flags) and what
``--precision auto`` picks there; images/s of the model alone at batch 1, 8 and 32 in each
precision (fp32, bf16 weights cast once, int8 image tower; ``torch.autocast`` shown for
comparison), with the one ``auto`` picks marked; then the end-to-end figure from 224x224 12-band
uint16 GeoTIFF files to embeddings, through msclip's encoding engine as its programs read them
(``msclip.encode.encode_images``), and its ratio to the model alone at batch 32 (target: >= 0.90)
with the tower's own rate inside the run and the milliseconds per tile of the rest (reading,
collating, the engine: what a many-core CPU does between model calls), after the cost of opening
and of reading one tile on one thread and of reading batches on 1, 2, 4 ... threads; with the
DataLoader workers msclip's programs use on a CPU (none: on 2 cores a worker took the model's
cores, 0.83-0.85 against 0.91-0.96 for bf16 on Zen 4; ``--workers`` to choose).

When a CUDA GPU is present, the same on the GPU: images/s in fp32, bf16 (fp16 where bf16 is
missing) and ``auto``, at the batch size chosen from free memory
(:func:`msclip.encode.auto_batch_size`) and at 32, end to end with pinned memory, non-blocking
copies and DataLoader workers, then the same without pinned memory, and the loader alone
(reading and copying to the GPU, no model): the rate the end to end cannot pass.

Random weights: the architecture is the published one, so the figures are those of the real
model. Run: ``python benchmarks/encode.py [--quick] [--gpu-only | --cpu-only]``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import workload  # also puts this repository's msclip first on the path

import msclip


def model_throughput(model: msclip.MSCLIP, batch: int, seconds: float, autocast: bool) -> float:
    x = torch.randn(batch, len(model.bands), model.image_size, model.image_size)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        model.encode_image(x)  # warm-up
        n, start = 0, time.perf_counter()
        while True:
            model.encode_image(x)
            n += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return n / elapsed


def model_images_per_s(model: msclip.MSCLIP, n: int, batch: int) -> float:
    """Model-only images/s over ``n`` images in batches (same work as one end-to-end run: its
    last batch the rest, not a full one)."""
    x = torch.randn(batch, len(model.bands), model.image_size, model.image_size)
    with torch.inference_mode():
        start = time.perf_counter()
        for s in range(0, n, batch):
            model.encode_image(x[: min(batch, n - s)], normalize=True)
        return n / (time.perf_counter() - start)


def end_to_end(
    model: msclip.MSCLIP, paths: list[Path], batch: int, workers: int
) -> tuple[float, float]:
    """Images/s from the files to L2-normalised embeddings through msclip's encoding engine, as
    its programs read them (:func:`msclip.encode.encode_images`), and the seconds of the run
    spent in the image tower (the rest: reading, collating, the engine's own work)."""
    import logging

    from msclip.encode import encode_images

    preprocess = model.preprocess()
    engine_log = logging.getLogger("msclip.encode")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)  # B01 outside the model's range: expected for L2A files
    in_model = [0.0]
    encode = model.encode_image

    def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
        t = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            in_model[0] += time.perf_counter() - t

    model.encode_image = timed  # the engine calls model.encode_image
    try:
        start = time.perf_counter()
        res = encode_images(model, preprocess, [str(p) for p in paths], batch_size=batch,
                            workers=workers)  # fmt: skip
        elapsed = time.perf_counter() - start
    finally:
        del model.encode_image
        engine_log.setLevel(level)
    assert len(res.indices) == len(paths), res.failures
    return len(paths) / elapsed, in_model[0]


def read_costs(model: msclip.MSCLIP, paths: list[Path]) -> str:
    """Milliseconds per tile, on one thread, of opening a file alone and of reading one item as
    the engine does (open, read, band mapping, normalisation), then of reading batches of 32 on
    1, 2, 4 ... Python threads (the engine reads on at most msclip.encode.READ_THREADS): whether
    this machine's file system, its decoding or the threads' queue for the GIL is what the
    end-to-end figures wait for."""
    from msclip.encode import READ_THREADS, ImageDataset, _reading_pool, read_items, single_thread
    from msclip.io.readers import open_raster

    dataset = ImageDataset([str(p) for p in paths], model.preprocess())
    with single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # B01 outside the model's range: expected for L2A files
        dataset.read_item(0)  # warm-up
        start = time.perf_counter()
        for p in paths:
            with open_raster(p):
                pass
        opened = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(len(paths)):
            dataset.read_item(i)
        read = time.perf_counter() - start
        counts = sorted({1 << j for j in range(6) if 1 << j <= 32} | {torch.get_num_threads()})
        on_threads = []
        for n in counts:
            # the engine's own pools: threads that end before the end-to-end runs fork their
            # DataLoader workers are what msclip.encode._reading_pool keeps from happening
            pool = _reading_pool(n)
            read_items(dataset.read_item, list(range(min(n, len(paths)))), pool)  # warm-up
            start = time.perf_counter()
            for a in range(0, len(paths), 32):
                read_items(dataset.read_item, list(range(a, min(a + 32, len(paths)))), pool)
            on_threads.append((n, (time.perf_counter() - start) / len(paths) * 1e3))
    per = [t / len(paths) * 1e3 for t in (opened, read)]
    threads = ", ".join(f"{n}: {ms:.2f}" for n, ms in on_threads)
    return (f"one thread, per tile: opening {per[0]:.2f} ms, reading an item {per[1]:.2f} ms\n"
            f"  batches of 32 read on N threads, ms per tile (the engine uses at most "
            f"{READ_THREADS}): {threads}")  # fmt: skip


def write_tiles(folder: Path, n: int) -> list[Path]:
    from affine import Affine
    from rasterio.crs import CRS

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        data = rng.integers(0, 10000, size=(12, 224, 224), dtype=np.uint16)
        p = folder / f"tile_{i:03d}.tif"
        msclip.write_geotiff(p, data, CRS.from_epsg(32632),
                             Affine(10, 0, 500000 + 2240 * i, 0, -10, 5000000),
                             compress=None)  # fmt: skip
        paths.append(p)
    return paths


@contextlib.contextmanager
def _unpinned() -> Iterator[None]:
    """msclip's loader without ``pin_memory`` (its other arguments unchanged)."""
    import msclip.encode as engine

    real = engine.loader_args

    def unpinned(*args: Any, **kwargs: Any) -> dict[str, Any]:
        out = real(*args, **kwargs)
        out.pop("pin_memory", None)
        return out

    engine.loader_args = unpinned
    try:
        yield
    finally:
        engine.loader_args = real


def _gpu_end_to_end(
    model: msclip.MSCLIP, preprocess: Any, paths: list[Path], workers: int
) -> float:
    """Images/s of ``encode_images`` on the GPU, at the batch size it picks."""
    from msclip.encode import encode_images

    start = time.perf_counter()
    res = encode_images(model, preprocess, paths, batch_size=None, workers=workers)
    torch.cuda.synchronize()
    return len(res.indices) / (time.perf_counter() - start)


def gpu_figures(paths: list[Path], seconds: float) -> None:
    """Images/s on the GPU, model alone and end to end, per precision."""
    from msclip.encode import auto_batch_size, auto_workers
    from msclip.hardware import choose_precision, cuda_bf16_supported

    name = torch.cuda.get_device_name(0)
    auto = choose_precision("auto", "cuda")
    print(f"\nGPU: {name}; native bf16 {cuda_bf16_supported()}; auto picks {auto.summary()}")
    reduced = "bf16" if cuda_bf16_supported() else "fp16"
    handed_over: dict[str, torch.dtype] = {}  # the dtype of the batches the workers hand over
    for precision in ("fp32", reduced):
        model = msclip.create_model("Llama3-MS-CLIP-Base", device="cuda", precision=precision)
        batch = auto_batch_size(model)
        for b in sorted({32, batch}):
            x = torch.randn(b, len(model.bands), model.image_size, model.image_size, device="cuda")
            with torch.inference_mode():
                model.encode_image(x)
                torch.cuda.synchronize()
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    model.encode_image(x)
                    n += b
                torch.cuda.synchronize()
                rate = n / (time.perf_counter() - start)
            mark = " (chosen from free memory)" if b == batch else ""
            print(f"  {precision}: model alone at batch {b}{mark}: {rate:8.1f} images/s")
        workers = auto_workers("cuda")
        run_batch = auto_batch_size(model, workers=workers, items=len(paths))  # as encode picks
        preprocess = model.preprocess()
        rate = _gpu_end_to_end(model, preprocess, paths, workers)
        print(f"  {precision}: end to end from {len(paths)} GeoTIFFs, {workers} workers, batches "
              f"of {run_batch}, pinned memory: {rate:8.1f} images/s")  # fmt: skip
        # The same without pinning: batches pinned ahead take fresh page-locked memory while the
        # stream still holds earlier copies behind a slow model (fp32 ran at about reading and
        # model one after the other on an H200). There (2026-12-04) unpinned was 9 % faster in
        # fp32 and 8 % slower in bf16: pinning is not what keeps fp32 from overlapping.
        with _unpinned():
            rate = _gpu_end_to_end(model, preprocess, paths, workers)
        print(f"  {precision}: the same without pinned memory: {rate:8.1f} images/s")
        handed_over[precision] = model.dtype
        del model
        torch.cuda.empty_cache()
    # the readers alone: the same loader and copies to the GPU without a model, the rate the
    # end-to-end figures cannot pass (where they fall short of it, the model is not overlapped);
    # the batches as each precision's run hands them over (workers cast for a bf16/fp16 model)
    for name, dtype in handed_over.items():
        rate = reading_rate(paths, preprocess, workers, run_batch, dtype)
        print(f"  readers alone (the same loader and copies to the GPU, no model), {name} "
              f"batches: {rate:8.1f} images/s")  # fmt: skip


def reading_rate(
    paths: list[Path], preprocess: Any, workers: int, batch: int, dtype: torch.dtype
) -> float:
    """Images/s of msclip's loader alone on the GPU machine: the end to end's DataLoader
    (workers, pinned memory, batches in ``dtype`` as its workers hand them over) with each batch
    copied to the GPU, and no model."""
    from torch.utils.data import DataLoader

    from msclip.encode import CastImages, ImageDataset, collate_items, loader_args

    dataset = ImageDataset([str(p) for p in paths], preprocess)
    collate = collate_items if dtype == torch.float32 else CastImages(collate_items, dtype)
    loader = DataLoader(dataset, **loader_args(torch.device("cuda"), batch, workers, collate))
    n, start = 0, time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # B01 outside the model's range: expected for L2A files
        for b in loader:
            b["images"].to("cuda", non_blocking=True)
            n += len(b["indices"])
    torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timings")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--gpu-tiles", type=int, default=1024, help="tiles of the GPU's end to end")
    side = ap.add_mutually_exclusive_group()
    side.add_argument("--gpu-only", action="store_true", help="the GPU figures alone")
    side.add_argument(
        "--cpu-only", action="store_true", help="the CPU figures alone, even with a GPU present"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the end-to-end figure (default: what msclip's "
        "programs use on this device, msclip.encode.auto_workers: 0 on a CPU)",
    )
    args = ap.parse_args(argv)
    for flag in ("tiles", "gpu_tiles"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.workers is None:
        from msclip.encode import auto_workers

        args.workers = auto_workers("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = 3.0 if args.quick else 8.0
    if args.gpu_only:
        if not torch.cuda.is_available():
            print("no CUDA GPU here: no GPU figures")
            return 1
        with tempfile.TemporaryDirectory() as tmp:
            gpu_figures(write_tiles(Path(tmp), args.gpu_tiles), seconds)
        return 0
    from msclip.hardware import cpu_info
    from msclip.memory import steady_heap

    steady_heap()  # the C heap as msclip's programs on a CPU set it (msclip.memory)
    info = cpu_info()
    print(f"machine: {info.kind}; {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"msclip {msclip.__version__}")  # fmt: skip
    torch.manual_seed(0)
    # what create_model makes of auto here: the CPU flags, then the bf16 check of the towers
    # (msclip.precision_check), which can send a CPU with native bf16 back to fp32
    auto = msclip.create_model("Llama3-MS-CLIP-Base", precision="auto")
    print(f"--precision auto picks: {auto.precision} ({auto.precision_reason})")
    torch.manual_seed(0)
    fp32 = msclip.create_model("Llama3-MS-CLIP-Base", precision="fp32")
    models = {"fp32": fp32}
    auto_key = auto.precision
    if auto.precision == "fp32" and workload.on_fused_fp32(auto.precision_reason):
        auto_key = "fp32-fused"  # auto's fp32: the image tower on the fused oneDNN kernels
        models[auto_key] = auto
    emulated = workload.bf16_emulated()  # bf16 not timed then: minutes a batch
    if auto.precision == "bf16":
        models["bf16"] = auto
    elif not emulated:
        from msclip.errors import PrecisionError

        try:
            models["bf16"] = msclip.create_model("Llama3-MS-CLIP-Base", precision="bf16")
        except PrecisionError as err:
            print(f"bf16 skipped: {err}")
    else:
        print(f"bf16 skipped: {emulated}")
    models["int8"] = msclip.create_model("Llama3-MS-CLIP-Base", precision="int8")
    rows = []
    for batch in (1, 8, 32):
        row = [batch] + [model_throughput(m, batch, seconds, autocast=False)
                         for m in models.values()]  # fmt: skip
        auto_cast = (
            model_throughput(fp32, batch, seconds / 2, autocast=True)
            if batch > 1 and not emulated
            else float("nan")
        )
        rows.append((*row, auto_cast))
    print("\nimage tower, 10x224x224, images/s (auto's choice marked *)")
    names = [f"{p}{'*' if p == auto_key else ''}" for p in models]
    print(f"{'batch':>5} " + " ".join(f"{n:>8}" for n in names) + f" {'fp32+autocast':>14}")
    for batch, *vals in rows:
        print(f"{batch:>5} " + " ".join(f"{v:>8.2f}" for v in vals[:-1]) + f" {vals[-1]:>14.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_tiles(Path(tmp), args.tiles)
        print(f"\nend to end: {len(paths)} GeoTIFF tiles 224x224x12 uint16 -> embeddings, "
              f"batch 32, {args.workers} DataLoader worker(s); model-only measured right "
              "after, same conditions")  # fmt: skip
        print(f"  {read_costs(next(iter(models.values())), paths)}")
        for name, model in models.items():
            end_to_end(model, paths[:32], 32, args.workers)  # warm-up (file cache, workers)
            # The machine is shared and noisy: interleave model-only and end-to-end runs over
            # the same number of images and report the median of three ratios.
            pairs = []
            for _ in range(3):
                only = model_images_per_s(model, len(paths), 32)
                e2e, in_model = end_to_end(model, paths, 32, args.workers)
                pairs.append((e2e / only, e2e, only, in_model))
            ratio, e2e, only, in_model = sorted(pairs)[1]
            rest_ms = (len(paths) / e2e - in_model) / len(paths) * 1e3
            print(f"  {name}: {e2e:.2f} images/s end to end, model only {only:.2f} -> "
                  f"ratio {ratio:.2f} (target >= 0.90; ratios "
                  f"{', '.join(f'{p[0]:.2f}' for p in pairs)}); in the run the tower ran at "
                  f"{len(paths) / in_model:.2f} images/s, the rest took {rest_ms:.1f} ms per "
                  "tile")  # fmt: skip
    if args.cpu_only:
        return 0
    if torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp:
            # a GPU outruns its readers: enough tiles for the steady state, not the start
            gpu_figures(write_tiles(Path(tmp), args.gpu_tiles), seconds)
    else:
        print("\nno CUDA GPU here: no GPU figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
