"""Benchmark of contrastive training (msclip.train) on CPU.

Prints:

1. training throughput (samples/s of optimiser steps: forward, backward, gradient reduction,
   AdamW) for the tiny test model and the 10-band ViT-B-16 (Llama3-MS-CLIP architecture, random
   weights), in one process and in two processes (``torch.distributed.run``, gloo), on synthetic
   batches of the same global size;
2. end-to-end throughput of the tiny model through :func:`msclip.train.train` on generated
   12-band 64x64 GeoTIFFs (reading, augmentation, tokenisation included), with and without the
   in-memory raster cache;
3. peak memory of one forward and backward pass of the ViT-B-16 for the same contrastive batch
   without accumulation, with the feature cache (``accum_steps``) and with gradient
   checkpointing: the growth of the peak resident set size (``ru_maxrss``) over the pass, each in
   a fresh process.

Every configuration runs in its own subprocess so that thread settings and peak memory do not
leak between them. Usage::

    python benchmarks/train.py            # everything (a few minutes on 2 cores)
    python benchmarks/train.py --quick    # the tiny model only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CAPTION = "a sentinel-2 image of irrigated cropland next to a river and a small village"


def _worker_setup(threads: int | None) -> tuple:
    import torch

    from msclip.train.distributed import init_distributed

    ctx = init_distributed("gloo", "cpu")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // ctx.world_size))
    return ctx, torch


def worker_throughput(args: argparse.Namespace) -> dict:
    """Optimiser steps on synthetic batches; samples/s of the global batch."""
    ctx, torch = _worker_setup(args.threads)
    import msclip
    from msclip.train.config import TrainConfig
    from msclip.train.distributed import all_reduce_gradients
    from msclip.train.loss import ContrastiveLoss
    from msclip.train.optim import build_optimizer, param_groups, select_trainable
    from msclip.train.step import contrastive_step

    torch.manual_seed(0)
    model = msclip.create_model(args.model).train()
    select_trainable(model, "all")
    loss_fn = ContrastiveLoss("clip")
    cfg = TrainConfig(lr=1e-4)
    groups = param_groups(model, loss_fn, cfg)
    params = [p for g in groups for p in g["params"]]
    opt = build_optimizer(groups, cfg)
    local = args.batch // ctx.world_size
    g = torch.Generator().manual_seed(ctx.rank)
    images = torch.randn(local, len(model.bands), model.image_size, model.image_size, generator=g)
    tokens = msclip.get_tokenizer(model)([f"{CAPTION} {i}" for i in range(local)])
    sizes = [local] * ctx.world_size

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        contrastive_step(model, loss_fn, images, tokens, ctx, sizes, args.accum)
        all_reduce_gradients(params, [model.clip.logit_scale], ctx)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(args.warmup):
        step()
    ctx.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    ctx.barrier()
    elapsed = time.perf_counter() - t0
    ctx.close()
    return {
        "samples_per_s": args.batch * args.steps / elapsed,
        "s_per_step": elapsed / args.steps,
        "threads": torch.get_num_threads(),
    }


def worker_memory(args: argparse.Namespace) -> dict:
    """Peak RSS growth of one forward + backward pass (no optimiser state)."""
    ctx, torch = _worker_setup(args.threads)
    import msclip
    from msclip.train.loss import ContrastiveLoss
    from msclip.train.step import contrastive_step

    torch.manual_seed(0)
    model = msclip.create_model(args.model).train()
    if args.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    loss_fn = ContrastiveLoss("clip")
    images = torch.randn(args.batch, len(model.bands), model.image_size, model.image_size)
    tokens = msclip.get_tokenizer(model)([f"{CAPTION} {i}" for i in range(args.batch)])
    # Gradient buffers exist in every configuration; allocate them before the baseline.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    contrastive_step(model, loss_fn, images, tokens, ctx, None, args.accum)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_growth_mib": (peak - base) / 1024,
        "peak_rss_mib": peak / 1024,
        "seconds": seconds,
    }


def worker_e2e(args: argparse.Namespace) -> dict:
    """msclip.train.train on generated GeoTIFFs; samples/s from its log (first step excluded)."""
    import csv

    import numpy as np
    import pandas as pd
    from affine import Affine

    import msclip
    from msclip.spectral.bands import S2_L2A_BANDS
    from msclip.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        rows = []
        for i in range(args.n_images):
            data = rng.integers(0, 5000, (12, 64, 64), dtype=np.uint16)
            msclip.write_geotiff(
                root / f"{i}.tif",
                data,
                crs="EPSG:32632",
                transform=Affine(10, 0, 0, 0, -10, 0),
                bands=list(S2_L2A_BANDS),
            )
            rows.append({"image": f"{i}.tif", "caption": f"{CAPTION} {i}"})
        pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
        cfg = TrainConfig(
            train_data=str(root / "captions.csv"),
            model=args.model,
            batch_size=args.batch,
            epochs=args.epochs,
            val_fraction=0.1,
            output_dir=str(root / "run"),
            progress=False,
            log_every=1,
            cache_images=args.cache,
            threads=args.threads,
            num_workers=args.num_workers,
        )
        t0 = time.perf_counter()
        train(cfg)
        total = time.perf_counter() - t0
        with open(root / "run" / "train_log.csv") as f:
            sps = [float(r["samples_per_s"]) for r in csv.DictReader(f)][1:]
    return {"samples_per_s": float(np.median(sps)), "wall_s": total}


# -- driver ------------------------------------------------------------------------------------
def run(mode: str, nproc: int = 1, **kw: object) -> dict:
    """Run one configuration in a fresh process (or ``nproc`` under torch.distributed.run)."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items() if v is not None]
    script = [str(Path(__file__).resolve()), "--worker", mode, *flags]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *script,
        ]
    else:
        cmd = [sys.executable, *script]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="msclip-tiny", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--accum", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grad-checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--n-images", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--num-workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        choices=["PASSIVE", "ACTIVE"],
        help="OMP_WAIT_POLICY of the measured processes (default PASSIVE)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        fn = {"throughput": worker_throughput, "memory": worker_memory, "e2e": worker_e2e}
        result = fn[args.worker](args)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return 0

    from tabulate import tabulate

    # OpenMP threads that spin while waiting collapse when the cores are shared with other
    # processes; by default the measured processes (children, which inherit it) let them sleep.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy

    cores = os.cpu_count()
    print(
        f"msclip.train benchmark: {cores} CPU cores, load average {os.getloadavg()[0]:.1f} at "
        f"start; OMP_WAIT_POLICY={args.omp_wait_policy}"
    )
    rows = []
    models = [("msclip-tiny", 64, 10, 2)]
    if not args.quick:
        models.append(("Llama3-MS-CLIP-Base", 4, 2, 1))  # the 10-band ViT-B-16
    for model, batch, steps, warmup in models:
        for nproc, threads in ((1, 1), (1, 2), (2, 1)):
            r = run(
                "throughput",
                nproc,
                model=model,
                batch=batch,
                steps=steps,
                warmup=warmup,
                threads=threads,
            )
            rows.append(
                [
                    model,
                    batch,
                    nproc,
                    r["threads"],
                    f"{r['samples_per_s']:.1f}",
                    f"{r['s_per_step']:.3f}",
                ]
            )
    print("\nTraining throughput on synthetic batches (global batch; AdamW step included)")
    print(
        tabulate(
            rows, headers=["model", "batch", "processes", "threads/proc", "samples/s", "s/step"]
        )
    )

    rows = []
    for threads, workers, cache, epochs in ((2, 0, 0, 1), (1, 1, 0, 1), (2, 0, 1, 3)):
        r = run(
            "e2e",
            1,
            model="msclip-tiny",
            batch=64,
            n_images=384,
            epochs=epochs,
            cache=cache,
            threads=threads,
            num_workers=workers,
        )
        rows.append(
            [
                "msclip-tiny",
                64,
                threads,
                workers,
                "yes" if cache else "no",
                epochs,
                f"{r['samples_per_s']:.1f}",
                f"{r['wall_s']:.1f}",
            ]
        )
    print(
        "\nEnd to end through msclip.train.train (384 GeoTIFFs 12x64x64, 1 process; median "
        "samples/s of the logged steps; wall time includes setup and validation)"
    )
    print(
        tabulate(
            rows,
            headers=[
                "model",
                "batch",
                "threads",
                "loader workers",
                "raster cache",
                "epochs",
                "samples/s",
                "wall s",
            ],
        )
    )

    if not args.quick:
        rows = []
        for accum, ckpt in ((1, 0), (4, 0), (1, 1)):
            r = run(
                "memory",
                1,
                model="Llama3-MS-CLIP-Base",
                batch=8,
                accum=accum,
                grad_checkpointing=ckpt,
            )
            label = (
                "gradient checkpointing"
                if ckpt
                else ("direct" if accum == 1 else f"feature cache, {accum} chunks")
            )
            rows.append(
                [
                    "ViT-B-16 (10 bands)",
                    8,
                    label,
                    f"{r['peak_growth_mib']:.0f}",
                    f"{r['peak_rss_mib']:.0f}",
                    f"{r['seconds']:.1f}",
                ]
            )
        print(
            "\nPeak memory of one forward + backward pass, contrastive batch 8 (fresh process "
            "each; growth over the resident set before the pass)"
        )
        print(
            tabulate(
                rows,
                headers=["model", "batch", "mode", "peak growth MiB", "peak RSS MiB", "seconds"],
            )
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
