"""Benchmark of the heads (msclip.heads) on CPU.

Prints:

1. the CPU (torch's capability string, model name, threads);
2. probes on a synthetic 10,000 x 768 feature set (10 clustered classes, seeded): kNN
   (k = 20 weighted by exp(sim / 0.07), plus k = 5 unweighted, from one neighbour search) of
   2,000 queries against the 10,000 rows; the 20-value C sweep of the logistic probe
   (logspace(-7, 2, 20), 8,000 train / 2,000 validation, warm starts, refit on all 10,000);
   the bootstrap intervals (1,000 resamples) of the five single-label metrics; and the ridge
   alpha sweep (17 values) on two regression targets;
3. the feature cache on the 10-band ViT-B/16 (the Llama3-MS-CLIP architecture, random weights):
   feature extraction images/s (GeoTIFFs of 10 bands, 224 x 224, written to a temporary folder,
   class tokens into :class:`msclip.heads.FeatureCache`), then one epoch of a batch-norm +
   linear probe (batch 32, AdamW, :func:`msclip.heads.finetune.train_loop`) from the cache (best
   of three, after one untimed epoch that pays the optimiser's one-off set-up) and from the raw
   images (each batch read, preprocessed and run through the frozen encoder, as anchors such as
   TerraTorch do every epoch), and the ratio of the two;
4. for each fine-tuning mode of the 10-band ViT-B/16 (the Llama3-MS-CLIP architecture, random
   weights): trainable parameters, seconds per training step at batch 8 (224 x 224, 10 bands; a
   batch-norm + linear head on the pooled embedding; AdamW with layer-wise decay 0.75; median of
   3 steps after one warm-up step), the peak resident set size of the process, and the size of
   what a checkpoint of the trained part holds (head only; adapters + head; trained blocks +
   head; the whole image tower + head), written as safetensors.

Every fine-tuning mode runs in its own subprocess, so peak memory does not leak between them.
Usage::

    python benchmarks/heads.py            # everything (several minutes on 2 cores)
    python benchmarks/heads.py --probes   # the probes only
    python benchmarks/heads.py --modes    # the fine-tuning modes only
    python benchmarks/heads.py --cache    # the feature cache only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = [
    ("frozen", {}),
    ("lora", {"rank": 8, "targets": ["q", "v"]}),
    ("lora", {"rank": 8, "targets": ["q", "v", "c_fc", "c_proj"]}),
    ("last-n", {"last_n": 2}),
    ("full", {}),
    ("scratch", {}),
]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def print_cpu() -> None:
    import torch

    print(f"CPU: {_cpu_name()} ({os.cpu_count()} cores)")
    print(
        f"torch {torch.__version__}: capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads"
    )
    # Other processes on the cores slow small parallel kernels down a lot: say how busy it was.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at start: {load}")


def clustered(n: int, d: int = 768, c: int = 10, seed: int = 0, sep: float = 0.12):
    """Features around ``c`` random centres (unit-variance noise), seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    y = rng.integers(0, c, size=n)
    x = (centres[y] * sep + rng.normal(size=(n, d))).astype(np.float32)
    return x, y


def bench_probes() -> None:
    import numpy as np

    from msclip.heads import DEFAULT_CS, evaluate_scores, knn_probe, logistic_sweep, ridge_sweep

    x, y = clustered(12_000)
    train, ytr, test, yte = x[:10_000], y[:10_000], x[10_000:], y[10_000:]
    print(f"\nProbes on {train.shape[0]:,} x {train.shape[1]} features, 10 classes (float32)")

    t0 = time.perf_counter()
    weighted, unweighted = knn_probe(train, ytr, test, yte, n_resamples=0)
    t_knn = time.perf_counter() - t0
    print(
        f"  kNN, {test.shape[0]:,} queries, k=20 weighted (T=0.07) + k=5 unweighted: "
        f"{t_knn:.2f} s  (top-1 {weighted.metrics['top1_accuracy']:.3f} / "
        f"{unweighted.metrics['top1_accuracy']:.3f})"
    )

    t0 = time.perf_counter()
    model, sweep = logistic_sweep(train[:8_000], ytr[:8_000], train[8_000:], ytr[8_000:])
    t_sweep = time.perf_counter() - t0
    acc = float(np.mean(model.predict(test) == yte))
    print(
        f"  logistic, {len(DEFAULT_CS)}-value C sweep (8,000 train / 2,000 val) + refit on "
        f"10,000: {t_sweep:.2f} s  (best C {sweep.best:.3g}, L-BFGS iterations "
        f"{sum(sweep.n_iter)} in the sweep, refit {model.n_iter}; test top-1 {acc:.3f})"
    )

    scores = model.predict_proba(test)
    t0 = time.perf_counter()
    _, ci = evaluate_scores("single-label", scores, yte, n_resamples=1000)
    t_boot = time.perf_counter() - t0
    print(
        f"  bootstrap, 1,000 resamples of {len(ci)} metrics on {test.shape[0]:,} samples: "
        f"{t_boot:.2f} s  (top-1 95% CI [{ci['top1_accuracy'].low:.3f}, "
        f"{ci['top1_accuracy'].high:.3f}])"
    )

    rng = np.random.default_rng(1)
    targets = np.stack([train @ rng.normal(size=768) / 30, train[:, 0] ** 2], axis=1)
    t0 = time.perf_counter()
    _, rsweep = ridge_sweep(train[:8_000], targets[:8_000], train[8_000:], targets[8_000:])
    t_ridge = time.perf_counter() - t0
    print(
        f"  ridge, {len(rsweep.values)}-value alpha sweep, 2 outputs (8,000 / 2,000) + refit: "
        f"{t_ridge:.2f} s  (best alpha {rsweep.best:.3g})"
    )


# --------------------------------------------------------------------------------------------
# Feature cache: extraction speed, probe epoch from the cache vs from raw images
# --------------------------------------------------------------------------------------------


def bench_cache(n: int = 64, batch: int = 32) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    import msclip
    from msclip.encode import ImageDataset, collate_items
    from msclip.heads import FeatureCache, FeatureSpec, LinearHead
    from msclip.heads.finetune import EncoderHead, train_loop
    from msclip.synthetic import write_tile

    torch.manual_seed(0)
    model = msclip.create_model("Llama3-MS-CLIP-Base")  # the architecture, random weights
    spec = FeatureSpec("cls")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    print(f"\nFeature cache, ViT-B/16 10 bands, {n} GeoTIFFs of 10 x 224 x 224 (uint16)")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n):
            path = Path(tmp) / f"img_{i:03d}.tif"
            data = rng.integers(1, 4000, (10, 224, 224)).astype(np.uint16)
            write_tile(path, data, band_names=model.bands)  # georeferenced, bands named
            files.append(str(path))
        pp = model.preprocess()
        cache = FeatureCache(Path(tmp) / "cache", model, pp, files, spec)
        t0 = time.perf_counter()
        feats, ok = cache.extract(batch_size=batch)
        t_extract = time.perf_counter() - t0
        print(f"  feature extraction (read, preprocess, encode, write float16): {t_extract:.1f} s, "
              f"{n / t_extract:.2f} images/s  ({ok.sum()} of {n} cached)")  # fmt: skip

        def loss_fn(out: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(out, torch.from_numpy(labels[rows]))

        def one_epoch(net: torch.nn.Module, head: torch.nn.Module, batches) -> float:
            groups = [{"params": list(head.parameters()), "lr": 1e-3}]
            t0 = time.perf_counter()
            train_loop(net, groups, n, batches, loss_fn, epochs=1, batch_size=batch, seed=0)
            return time.perf_counter() - t0

        from msclip.heads.linear import _rows

        head = LinearHead(spec.dim(model), 10)

        def from_cache(order, epoch):
            for b in order:
                yield _rows(feats, b), b

        warm = LinearHead(spec.dim(model), 10)  # one untimed epoch: the optimiser's first step
        one_epoch(warm, warm, from_cache)  # imports and initialises things once per process
        t_cache = min(one_epoch(h, h, from_cache) for h in
                      (LinearHead(spec.dim(model), 10) for _ in range(3)))  # fmt: skip
        dataset = ImageDataset(files, pp)
        head = LinearHead(spec.dim(model), 10)
        net = EncoderHead(model, head, spec, "frozen")

        def from_images(order, epoch):
            loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in order],
                                collate_fn=collate_items)  # fmt: skip
            for item in loader:
                yield item["images"], np.asarray(item["indices"])

        t_raw = one_epoch(net, head, from_images)
    print(f"  one linear-probe epoch over {n} samples (batch {batch}): from the cache "
          f"{t_cache * 1000:.1f} ms, from raw images (encoder re-run) {t_raw:.1f} s: "
          f"{t_raw / t_cache:,.0f}x")  # fmt: skip
    per_256 = t_raw / n * 256
    print(f"  scaled to TerraTorch's 256-sample epoch: {per_256:.1f} s from raw images "
          f"(TerraTorch measured 92.6 s on a 2-core Zen 3) vs {t_cache / n * 256 * 1000:.1f} ms "
          "from the cache")  # fmt: skip


# --------------------------------------------------------------------------------------------
# Fine-tuning modes (one subprocess each)
# --------------------------------------------------------------------------------------------


def worker_mode(mode: str, options: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    import msclip
    from msclip.heads import (
        FinetuneConfig,
        ImageHeadModel,
        LinearHead,
        LoRAConfig,
        apply_finetune_mode,
        count_parameters,
        finetune_param_groups,
        save_lora,
    )

    torch.manual_seed(0)
    rss_start = _rss_mb()
    model = msclip.create_model("Llama3-MS-CLIP-Base")  # the architecture, random weights
    lora = LoRAConfig(
        rank=options.get("rank", 8), targets=tuple(options.get("targets", ("q", "v")))
    )
    cfg = FinetuneConfig(mode, last_n=options.get("last_n", 1), lora=lora)
    apply_finetune_mode(model, cfg)
    head = LinearHead(model.clip.visual.output_dim, 10)
    net = ImageHeadModel(model, head)
    groups = finetune_param_groups(
        model, head, lr=1e-4, weight_decay=0.05, layer_decay=0.75, head_lr=1e-3
    )
    opt = torch.optim.AdamW(groups, foreach=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, len(model.bands), 224, 224, generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    net.train()
    times = []
    for step in range(4):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step > 0:  # the first step warms up (allocations, kernel selection)
            times.append(time.perf_counter() - t0)
    counts = count_parameters(model, head)

    # What a checkpoint of the trained part holds, written for real.
    with tempfile.TemporaryDirectory() as tmp:
        head_file = Path(tmp) / "head.safetensors"
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, head_file)
        size = head_file.stat().st_size
        if mode == "lora":
            adapters = Path(tmp) / "lora.safetensors"
            save_lora(model, adapters)
            size += adapters.stat().st_size
        elif mode != "frozen":
            trained = {
                n: p.detach().contiguous()
                for n, p in model.clip.named_parameters()
                if p.requires_grad
            }
            enc = Path(tmp) / "encoder.safetensors"
            save_file(trained, enc)
            size += enc.stat().st_size
    return {
        "mode": mode,
        "options": options,
        "trainable": counts.trainable,
        "encoder_trainable": counts.encoder_trainable,
        "encoder_total": counts.encoder_total,
        "s_per_step": statistics.median(times),
        "steps": [round(t, 3) for t in times],
        "peak_rss_mb": _rss_mb(),
        "rss_start_mb": rss_start,
        "checkpoint_bytes": size,
        "threads": torch.get_num_threads(),
    }


def bench_modes() -> None:
    print(
        "\nFine-tuning modes, ViT-B/16 10 bands (random weights), batch 8 x 10 x 224 x 224, "
        "BN + linear head (10 classes), AdamW"
    )
    header = (
        f"  {'mode':<22} {'trainable':>12} {'(encoder)':>12} {'s/step':>8} {'peak RSS':>9} "
        f"{'checkpoint':>11}"
    )
    print(header)
    for mode, options in MODES:
        cmd = [sys.executable, __file__, "--worker", json.dumps([mode, options])]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        result = None
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
        label = mode
        if mode == "lora":
            label += f" r{options['rank']} {'+'.join(options['targets'])}"
        if mode == "last-n":
            label += f" (n={options['last_n']})"
        if result is None:
            print(f"  {label:<22} failed:\n{proc.stderr[-2000:]}")
            continue
        print(
            f"  {label:<22} {result['trainable']:>12,} {result['encoder_trainable']:>12,} "
            f"{result['s_per_step']:>8.2f} {result['peak_rss_mb'] / 1024:>7.2f} GB "
            f"{result['checkpoint_bytes'] / 2**20:>8.2f} MB   steps {result['steps']}"
        )
    print(
        "  trainable = encoder + head; checkpoint = safetensors of the trained part only "
        "(head; adapters + head; trained blocks + head; whole image tower + head)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", action="store_true", help="run the probe benchmark only")
    parser.add_argument("--modes", action="store_true", help="run the fine-tuning modes only")
    parser.add_argument("--cache", action="store_true", help="run the feature-cache part only")
    parser.add_argument("--cache-images", type=int, default=64, help="images of that part")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, options = json.loads(args.worker)
        print("RESULT " + json.dumps(worker_mode(mode, options)), flush=True)
        return 0
    print_cpu()
    both = not (args.probes or args.modes or args.cache)
    if args.probes or both:
        bench_probes()
    if args.cache or both:
        bench_cache(args.cache_images)
    if args.modes or both:
        bench_modes()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
