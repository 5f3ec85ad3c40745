"""Dense heads on this machine: decoder training cost, streaming scene prediction, seams.

Prints:

1. the CPU (``torch.backends.cpu.get_cpu_capability()``), torch version and threads;
2. per decoder on msclip-demo's four taps (frozen encoder, 10 classes): parameters, seconds per
   training epoch over a fixed synthetic set (64 tiles of 64 x 64 x 12 with random labels,
   batch 8, AdamW), the same epoch on taps cached once (what a frozen encoder allows), and the
   peak RSS of a process that does only that;
3. streaming scene prediction with msclip-demo + a linear decoder (64-pixel tiles, overlap 16,
   cosine blending, batch 16) on 12-band uint16 scenes of 2,048², 4,096² and 10,980² pixels
   (tiled, deflate-compressed GeoTIFFs with smooth synthetic content, written strip by strip
   without holding the scene in memory): megapixels/s, tiles/s and the peak RSS of the
   predicting process (``resource.getrusage``, in a fresh subprocess; MiB), next to the RSS
   that importing msclip and building the model alone costs;
4. the seam error of hard tile cuts versus blended overlaps: (a) for a 3-layer 3x3 CNN
   (receptive field 7 px) whose untiled prediction is exact, the max / mean absolute error of
   the tiled outputs near tile borders; (b) for msclip-demo + a linear decoder (no untiled
   reference exists for a ViT run at its training size), the mean jump between neighbouring
   pixels across tile edges divided by the mean jump elsewhere (1.0 = no visible seam).

Run: ``python benchmarks/dense.py`` (all sizes; the 10,980² scene needs ~2 GB of disk and a
few minutes), ``--quick`` (2,048² only, shorter decoder timing), ``--sizes 2048 4096``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

N_CLASSES = 10
LAYERS = [0, 1, 2, 3]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _demo(frozen: bool = True):
    import torch

    import msclip

    torch.manual_seed(0)
    enc = msclip.create_model("msclip-demo", pretrained=True).eval()
    if frozen:
        enc.requires_grad_(False)
    return enc


# -- workers (each runs in its own process) --------------------------------------------------------
def worker_decoder(name: str, epochs: int) -> dict:
    import torch

    from msclip.heads.decoders import count_parameters
    from msclip.heads.dense import DenseTask, build_dense_model
    from msclip.heads.losses import SegmentationLoss

    enc = _demo()
    model = build_dense_model(enc, DenseTask("seg", num_outputs=N_CLASSES, decoder=name), LAYERS)
    g = torch.Generator().manual_seed(0)
    n, size, batch = 64, 64, 8
    x = torch.randn(n, len(enc.bands), size, size, generator=g)
    y = torch.randint(0, N_CLASSES, (n, size, size), generator=g)
    opt = torch.optim.AdamW(model.heads.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = SegmentationLoss(N_CLASSES)

    def epoch(cached: list | None = None, limit: int = n) -> float:
        model.train()
        start = time.perf_counter()
        for b, i in enumerate(range(0, limit, batch)):
            if cached is None:
                out = model(x[i : i + batch])["seg"]
            else:
                out = model.decode(cached[b], (size, size))["seg"]
            loss = loss_fn(out, y[i : i + batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    epoch(limit=batch)  # warm-up step (kernel selection, allocator)
    full = min(epoch() for _ in range(epochs))
    start = time.perf_counter()
    with torch.no_grad():
        cached = [model.encode(x[i : i + batch]) for i in range(0, n, batch)]
    encode_once = time.perf_counter() - start
    cached_epoch = min(epoch(cached) for _ in range(epochs))
    return {
        "decoder": name,
        "params": count_parameters(model.heads),
        "s_epoch": full,
        "s_epoch_cached": cached_epoch,
        "s_encode_once": encode_once,
        "peak_rss_mb": _peak_mb(),
    }


def worker_write_scene(path: str, size: int) -> dict:
    """A smooth 12-band uint16 scene written 64 rows at a time (a few MB in memory)."""
    from affine import Affine

    from msclip.io import GeoTiffStripWriter
    from msclip.spectral import S2_L2A_BANDS

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    cols = np.arange(size, dtype=np.float32)
    base = np.linspace(600, 3200, 12, dtype=np.float32)[:, None, None]
    amp = (700.0 * np.cos(np.arange(12, dtype=np.float32) / 3.0))[:, None, None]
    with GeoTiffStripWriter(path, size, size, 12, "uint16", "EPSG:32632",
                            Affine(10, 0, 600000, 0, -10, 5300000), 0, list(S2_L2A_BANDS),
                            block_size=256) as w:  # fmt: skip
        for r0 in range(0, size, 64):
            rows = np.arange(r0, min(r0 + 64, size), dtype=np.float32)[:, None]
            field = np.sin(cols / 173.0) * np.cos(rows / 211.0) + 0.5 * np.sin((cols + rows) / 67.0)
            strip = base + amp * field[None]
            strip += rng.integers(0, 32, size=strip.shape, dtype=np.uint8)
            w.write(np.clip(strip, 1, 65535).astype(np.uint16))
    return {"seconds": time.perf_counter() - start, "bytes": os.path.getsize(path),
            "peak_rss_mb": _peak_mb()}  # fmt: skip


def worker_predict(scene: str, out: str, batch: int) -> dict:
    import torch

    from msclip.heads.dense import DenseTask, build_dense_model
    from msclip.heads.scene_predict import predict_scene

    enc = _demo()
    model = build_dense_model(enc, DenseTask("seg", num_outputs=N_CLASSES), LAYERS).eval()
    model.predict(torch.zeros(1, len(enc.bands), 64, 64))  # warm-up
    rss_model = _rss_mb()
    peak_before = _peak_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # B01 outside the model's range: expected for L2A
        res = predict_scene(scene, out, model.predict, enc, tile_size=64, overlap=16,
                            batch_size=batch, progress=False)  # fmt: skip
    return {
        "seconds": res.seconds,
        "mpx_per_s": res.megapixels_per_s,
        "tiles": res.tiles,
        "tiles_per_s": res.tiles_per_s,
        "rss_after_model_mb": rss_model,
        "peak_before_predict_mb": peak_before,
        "peak_rss_mb": _peak_mb(),
        "out_bytes": os.path.getsize(out),
    }


def _subprocess(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- seam error ------------------------------------------------------------------------------------
def seam_errors(workdir: Path) -> None:
    import rasterio
    import torch

    import msclip
    from msclip.heads.dense import DenseTask, build_dense_model
    from msclip.heads.scene_predict import ScenePreprocess, predict_scene

    scene = workdir / "seam.tif"
    worker_write_scene(str(scene), 512)
    enc = _demo()
    prep = ScenePreprocess.from_model(enc)
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(12, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 4, 3, padding=1),
    ).eval()  # fmt: skip
    raster = msclip.read_raster(scene)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        ref = cnn(prep.with_input(raster.bands, raster.nodata)(raster.data)[None])[0].numpy()
    settings = [("hard cut", 0, "uniform"), ("uniform overlap 16", 16, "uniform"),
                ("cosine overlap 16", 16, "cosine")]  # fmt: skip
    print("\n## Seam error: 3-layer 3x3 CNN (receptive field 7 px), 512² scene, 64-px tiles")
    print("| tiling | max abs error | mean abs error | mean abs error within 4 px of a tile edge |")
    print("|---|---|---|---|")
    scale = float(np.abs(ref).mean())
    for label, ov, blend in settings:
        out = workdir / f"seam_{ov}_{blend}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict_scene(scene, out, cnn, prep, task="regression", tile_size=64, overlap=ov,
                          blend=blend, progress=False)  # fmt: skip
        with rasterio.open(out) as ds:
            got = ds.read()
        err = np.abs(got - ref)
        near = _edge_mask(512, 64, 64 - ov, 4)
        print(f"| {label} | {err.max():.4f} | {err.mean():.5f} | {err[:, near].mean():.5f} |")
    print(f"(mean |output| = {scale:.3f})")

    print("\n## Seam visibility: msclip-demo + linear decoder (random head), 512² scene")
    print("| tiling | jump across tile edges / jump elsewhere |")
    print("|---|---|")
    model = build_dense_model(enc, DenseTask("seg", num_outputs=N_CLASSES), LAYERS).eval()
    for label, ov, blend in settings:
        out = workdir / f"vis_{ov}_{blend}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict_scene(scene, out, model.predict, enc, task="regression", tile_size=64,
                          overlap=ov, blend=blend, progress=False)  # fmt: skip
        with rasterio.open(out) as ds:
            logits = ds.read()
        edges = _edge_columns(512, 64, 64 - ov)
        jump = np.abs(np.diff(logits, axis=2)).mean(axis=(0, 1))  # per column pair
        at = np.zeros(511, bool)
        at[[e - 1 for e in edges if 0 < e < 512]] = True
        print(f"| {label} | {jump[at].mean() / jump[~at].mean():.2f} |")


def _edge_columns(n: int, tile: int, stride: int) -> list[int]:
    from msclip.heads.scene_predict import tile_starts

    starts = tile_starts(n, tile, stride)
    return sorted({s for s in starts} | {s + tile for s in starts})


def _edge_mask(n: int, tile: int, stride: int, dist: int) -> np.ndarray:
    edges = [e for e in _edge_columns(n, tile, stride) if 0 < e < n]
    near1 = np.zeros(n, bool)
    for e in edges:
        near1[max(e - dist, 0) : e + dist] = True
    return near1[:, None] | near1[None, :]


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,048² only, shorter timings")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="scene sides")
    parser.add_argument("--decoders", nargs="+", default=["linear", "fcn", "upernet", "segformer"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: all CPUs; 1 is faster on a busy machine)",
    )
    parser.add_argument("--workdir", default=None, help="where scenes are written (temp dir)")
    parser.add_argument("--skip-decoders", action="store_true")
    parser.add_argument("--skip-seams", action="store_true")
    parser.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if args.threads is not None:
        os.environ["MSCLIP_BENCH_THREADS"] = str(args.threads)  # inherited by the workers
    torch.set_num_threads(int(os.environ.get("MSCLIP_BENCH_THREADS", os.cpu_count() or 1)))
    if args.worker:
        kind, *rest = args.worker
        if kind == "decoder":
            out = worker_decoder(rest[0], int(rest[1]))
        elif kind == "write":
            out = worker_write_scene(rest[0], int(rest[1]))
        else:
            out = worker_predict(rest[0], rest[1], int(rest[2]))
        print(json.dumps(out))
        return 0

    print("# msclip dense heads benchmark")
    print(f"CPU: {_cpu_name()}; torch.backends.cpu.get_cpu_capability() = "
          f"{torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads; {os.cpu_count()} logical CPUs; load average "
          f"{os.getloadavg()[0]:.1f} at start")  # fmt: skip
    sizes = args.sizes or ([2048] if args.quick else [2048, 4096, 10980])
    epochs = 1 if args.quick else 2

    if not args.skip_decoders:
        print("\n## Decoders on msclip-demo taps (blocks 0-3, width 128), frozen encoder, "
              f"{N_CLASSES} classes")  # fmt: skip
        print("64 tiles of 64x64x12, random labels, batch 8, AdamW; best of "
              f"{epochs} epoch(s) after a warm-up step; one process per decoder")  # fmt: skip
        print("| decoder | parameters | s / epoch (encoder run) | s / epoch (cached taps) "
              "| encode 64 tiles once (s) | peak RSS (MiB) |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for name in args.decoders:
            r = _subprocess(["decoder", name, str(epochs)])
            print(f"| {name} | {r['params']:,} | {r['s_epoch']:.2f} | {r['s_epoch_cached']:.2f} "
                  f"| {r['s_encode_once']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)  # fmt: skip

    ctx = tempfile.TemporaryDirectory() if args.workdir is None else None
    workdir = Path(ctx.name if ctx else args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print("\n## Streaming scene prediction: msclip-demo + linear decoder, 64-px tiles, "
              f"overlap 16, cosine blend, batch {args.batch_size}")  # fmt: skip
        print("| scene | input file | tiles | wall (s) | Mpx/s | tiles/s | RSS after import + "
              "model (MiB) | peak RSS (MiB) | output file |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for size in sizes:
            scene = workdir / f"scene_{size}.tif"
            if not scene.exists():
                _subprocess(["write", str(scene), str(size)])
            out = workdir / f"pred_{size}.tif"
            r = _subprocess(["predict", str(scene), str(out), str(args.batch_size)])
            print(f"| {size:,}² x 12 uint16 | {scene.stat().st_size / 1e6:.0f} MB | "
                  f"{r['tiles']:,} | {r['seconds']:.1f} | {r['mpx_per_s']:.3f} | "
                  f"{r['tiles_per_s']:.0f} | {r['rss_after_model_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['out_bytes'] / 1e6:.1f} MB |",
                  flush=True)  # fmt: skip
            out.unlink()
        if not args.skip_seams:
            seam_errors(workdir)
    finally:
        if ctx is not None:
            ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
