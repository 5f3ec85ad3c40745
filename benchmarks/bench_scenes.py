"""Speed of the synthetic scene generator (msclip.synthetic).

Prints milliseconds per tile for each class at the given sizes (generation in memory, no file
I/O), then the throughput of writing a small class-folder dataset of GeoTIFFs.

    python benchmarks/bench_scenes.py --sizes 64 128 --repeats 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from msclip.synthetic import CLASSES, generate_dataset, generate_tile


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=30, help="tiles per class and size")
    parser.add_argument("--dataset-per-class", type=int, default=10)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
