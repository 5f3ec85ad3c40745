"""Speed of the synthetic scene generator (msclip.synthetic).

Prints milliseconds per tile for each class at the given sizes (generation in memory, no file
I/O), the throughput of writing a small class-folder dataset of GeoTIFFs and of a dense dataset
(image, label and target GeoTIFFs), then the time and peak memory (NumPy allocations traced by
tracemalloc) of generating large multi-region scenes.

    python benchmarks/bench_scenes.py --sizes 64 128 --repeats 30 --scene-sizes 1024 2048
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Sequence

import numpy as np

from msclip.synthetic import (
    CLASSES,
    generate_dataset,
    generate_dense_dataset,
    generate_scene,
    generate_tile,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=30, help="tiles per class and size")
    parser.add_argument("--dataset-per-class", type=int, default=10)
    parser.add_argument("--scene-sizes", type=int, nargs="*", default=[1024])
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    for cls in CLASSES:  # warm the filter caches
        generate_tile(cls, min(args.sizes), rng)
    header = f"{'class':14s}" + "".join(f"{s:>4d}px ms" for s in args.sizes)
    print(header)
    totals = dict.fromkeys(args.sizes, 0.0)
    for cls in CLASSES:
        row = f"{cls:14s}"
        for size in args.sizes:
            start = time.perf_counter()
            for _ in range(args.repeats):
                generate_tile(cls, size, rng)
            ms = (time.perf_counter() - start) / args.repeats * 1000
            totals[size] += ms
            row += f"{ms:9.2f}"
        print(row)
    print(f"{'mean':14s}" + "".join(f"{totals[s] / len(CLASSES):9.2f}" for s in args.sizes))

    with tempfile.TemporaryDirectory() as tmp:
        n = args.dataset_per_class * len(CLASSES)
        start = time.perf_counter()
        generate_dataset(tmp, n_per_class=args.dataset_per_class, size=64, seed=0)
        dt = time.perf_counter() - start
    print(f"dataset: {n} tiles of 64x64 written in {dt:.2f} s ({n / dt:.0f} tiles/s, GeoTIFF+CSV)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_dense_dataset(tmp, n_per_class=args.dataset_per_class, size=64, seed=0)
        dt = time.perf_counter() - start
    print(f"dense dataset: {n} tiles of 64x64 with label and target in {dt:.2f} s "
          f"({n / dt:.0f} tiles/s, 3 GeoTIFFs each)")  # fmt: skip
    for size in args.scene_sizes:
        tracemalloc.start()
        start = time.perf_counter()
        image, label, _ = generate_scene(size, 0)
        dt = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        n_cls = len(np.unique(label))
        print(f"scene {size}x{size}: {dt:.1f} s, peak {peak / 2**20:.0f} MiB traced "
              f"({peak / label.size:.0f} B/pixel), {n_cls} classes")  # fmt: skip
        del image, label
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
