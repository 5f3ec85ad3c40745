"""Benchmark of msclip.index: build, load/quantise cost, memory, latency and recall@10.

Synthesises L2-normalised embeddings, writes them through :class:`msclip.index.IndexWriter`
(1,000-row sources, as the tiles of one scene), then times :class:`msclip.index.SearchIndex`:

* datasets: ``gaussian`` (i.i.d. normal, normalised), ``clustered`` (CLIP-like: a shared mean
  direction, a few high-magnitude dimensions, a mixture of 3,000 clusters on the sphere with
  neighbours at cosine ~0.92, stored cluster by cluster as a scene's similar tiles are) and
  ``near-duplicates`` (the same with neighbours at cosine ~0.98, the hardest case for recall);
* queries: ``random`` (unrelated vectors), ``text-like`` (cosine 0.5 to one stored item, as a
  caption is to its image) and ``image-like`` (cosine 0.9, query by example);
* recall@10 of the default (int8 short-list) search against ``exact=True``;
* latency of one query (median over single-query calls) and of 100 queries in one batch;
* one-off cost of building the int8 copy, of loading it from the cache, and the resident memory
  they add (anonymous memory for the copy, file-backed pages for the memory map).

The machine is printed first (CPU model, torch's dispatch level, AVX-512 / VNNI / bf16 flags),
then for each set the kernels the index chose by measuring (:mod:`msclip.index.calibrate`: one
query and batches) with their measured cost, the one-off preparation of the chosen kernels, and
the targets of the CPU kind: 1 query <= 20 ms and 100 queries <= 0.2 s over 10^6 x 512 with
VNNI and native bf16, <= 40 ms and <= 1.0 s without. The plain float32 ``matmul + topk`` over
the same rows (torch, one product per chunk of rows, then ``topk``) is timed as the baseline the
default search must never be slower than.

The C heap is set as ``msclip-index search`` sets it on a CPU (:func:`msclip.memory.steady_heap`:
the blocks of scores each kernel call allocates come back from the heap instead of being faulted
in again: 100 queries over 10^6 rows in medians of 222-260 ms against 233-266 ms, minima 209-215
against 217-248, four runs of each alternated on a shared 2-core Zen 4); ``--default-heap``
measures glibc's
default instead, as a Python program calling ``SearchIndex.search`` gets unless it calls
``steady_heap`` itself.

Run: ``python benchmarks/index_search.py`` (about 8 minutes, 2 GB of /tmp and 6 GB of RAM);
``--sizes 100000`` for a quick run, ``--datasets clustered --sizes 1000000`` for the targets.
Timings on a shared machine vary; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from msclip.cli.common import plural
from msclip.index import IndexStore, IndexWriter, SearchIndex
from msclip.index.calibrate import REGIMES, regime
from msclip.index.store import SEARCH_CACHE_DIR

SOURCE_ROWS = 1000


def _normalise(a: np.ndarray) -> np.ndarray:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def gaussian_batches(n: int, d: int, seed: int) -> Iterator[np.ndarray]:
    """I.i.d. normal vectors, normalised, in batches of ``SOURCE_ROWS``."""
    rng = np.random.default_rng(seed)
    for s in range(0, n, SOURCE_ROWS):
        yield _normalise(rng.standard_normal((min(SOURCE_ROWS, n - s), d), dtype=np.float32))


def clustered_batches(
    n: int, d: int, seed: int, n_clusters: int = 3000, spread: float = 0.3
) -> Iterator[np.ndarray]:
    """CLIP-like vectors: common direction, 8 loud dimensions, tight clusters stored in order."""
    rng = np.random.default_rng(seed)
    mean = _normalise(rng.standard_normal((1, d), dtype=np.float32))[0]
    loud = np.ones(d, np.float32)
    loud[rng.choice(d, 8, replace=False)] = 6.0
    centres = _normalise(_normalise(rng.standard_normal((n_clusters, d), dtype=np.float32)) + mean)
    labels = np.sort(rng.integers(0, n_clusters, n))
    for s in range(0, n, SOURCE_ROWS):
        lab = labels[s : s + SOURCE_ROWS]
        noise = rng.standard_normal((len(lab), d), dtype=np.float32) * float(spread / np.sqrt(d))
        yield _normalise((centres[lab] + noise) * loud)


def make_queries(emb: np.ndarray, kind: str, n: int, seed: int) -> np.ndarray:
    """``random`` vectors, or vectors at a fixed cosine to random stored items."""
    rng = np.random.default_rng(seed)
    d = emb.shape[1]
    if kind == "random":
        return _normalise(rng.standard_normal((n, d), dtype=np.float32))
    cos = {"text-like": 0.5, "image-like": 0.9}[kind]
    base = np.asarray(emb[np.sort(rng.integers(0, len(emb), n))], dtype=np.float32)
    noise = rng.standard_normal((n, d), dtype=np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base
    noise = _normalise(noise)
    return _normalise(cos * base + float(np.sqrt(1 - cos**2)) * noise)


def rss() -> dict[str, int]:
    """Resident anonymous and file-backed memory of this process in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:", "VmRSS:")):
                key, value, _unit = line.split()
                out[key.rstrip(":")] = int(value) * 1024
    return out


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def recall_at_k(ids: np.ndarray, ref: np.ndarray) -> float:
    k = ref.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, ref)]))


def build(path: Path, batches: Iterator[np.ndarray], dim: int) -> tuple[float, int]:
    """Write the set (seconds, sources found already written). The data are the same on every run
    (seeded), so a ``--workdir`` of an earlier or interrupted run is resumed, not rewritten."""
    t0 = time.perf_counter()
    reused = 0
    with IndexWriter.open_or_create(path, dim, {"name": "synthetic", "dim": dim}) as writer:
        for i, batch in enumerate(batches):
            if writer.is_done(f"scene_{i:05d}.tif"):
                reused += 1
                continue
            rows = {
                "path": [f"scene_{i:05d}.tif"] * len(batch),
                "row": np.arange(len(batch)) // 32 * 224,
                "col": np.arange(len(batch)) % 32 * 224,
            }
            writer.add(batch, rows, source=f"scene_{i:05d}.tif")
    return time.perf_counter() - t0, reused


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def kernel_floors(size: int, dim: int, n_queries: int) -> tuple[float, float]:
    """Best times of the bare int8 kernels over a same-sized matrix: the floors under the
    machine's current load (seconds for 1 query by GEMV, for ``n_queries`` by GEMM)."""
    codes = torch.randint(-127, 128, (size, -(-dim // 64) * 64), dtype=torch.int8)
    ones = torch.ones(size, dtype=torch.bfloat16)
    q1 = torch.randn(1, codes.shape[1]).bfloat16()
    qn = torch.randint(-127, 128, (n_queries, codes.shape[1]), dtype=torch.int8)
    rows = (16 << 20) // (4 * n_queries)
    with torch.inference_mode():
        gemv = min(timed(lambda: torch.ops.aten._weight_int8pack_mm(q1, codes, ones), 10))
        gemm = min(
            timed(
                lambda: [torch._int_mm(qn, codes[s : s + rows].T) for s in range(0, size, rows)], 3
            )
        )
    return gemv, gemm


def plain_topk(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The baseline: float32 ``q @ rows.T`` per chunk of rows, then ``topk`` of each chunk and of
    the merged candidates (what a user would write with torch)."""
    qt = torch.from_numpy(q)
    rows = max(1024, (1 << 25) // (4 * emb.shape[1]))
    best_s, best_i = [], []
    for s in range(0, len(emb), rows):
        scores = qt @ torch.from_numpy(np.asarray(emb[s : s + rows])).T
        v, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_s.append(v)
        best_i.append(i + s)
    v, pick = torch.topk(torch.cat(best_s, 1), k, dim=1)
    return torch.gather(torch.cat(best_i, 1), 1, pick).numpy()


def targets(size: int) -> tuple[float, float] | None:
    """(1 query s, 100 queries s) targets of this CPU kind over 10^6 rows, else None."""
    from msclip.hardware import cpu_info

    if size != 1_000_000:
        return None
    info = cpu_info()
    return (0.020, 0.2) if info.native_bf16 and info.vnni else (0.040, 1.0)


def run(size: int, dim: int, dataset: str, k: int, n_queries: int, workdir: Path) -> None:
    path = workdir / f"{dataset}-{size}"
    if dataset == "gaussian":
        batches = gaussian_batches(size, dim, seed=size)
    else:  # "near-duplicates": clusters so tight that neighbours differ in the third decimal
        batches = clustered_batches(
            size, dim, seed=size, spread=0.3 if dataset == "clustered" else 0.15
        )
    build_s, reused = build(path, batches, dim)
    # an earlier run's int8 copy and kernel choice would turn the timings of building and
    # calibrating below into a cache's
    shutil.rmtree(path / SEARCH_CACHE_DIR, ignore_errors=True)
    store = IndexStore.open(path)
    again = f" ({reused:,} sources of an earlier run kept)" if reused else ""
    print(
        f"\n== {dataset} N={size:,} D={dim}: write {build_s:.1f} s{again}, "
        f"{mib(store.disk_usage()['total'])} on disk"
    )

    before = rss()
    built = SearchIndex.from_store(store)
    after = rss()
    anon, file = after["RssAnon"] - before["RssAnon"], after["RssFile"] - before["RssFile"]
    print(
        f"int8 copy built in {built.build_seconds:.2f} s; RSS +{mib(anon)} anon "
        f"(copy {mib(built.memory_bytes)}), +{mib(file)} file"
    )
    del built
    before = rss()
    index = SearchIndex.from_store(store)
    after = rss()
    anon = after["RssAnon"] - before["RssAnon"]
    print(
        f"int8 copy loaded from cache in {index.build_seconds:.2f} s (hit={index.cache_hit}); "
        f"RSS +{mib(anon)} anon"
    )

    for kind in ("random", "text-like", "image-like"):
        q = make_queries(store.embeddings, kind, n_queries, seed=1)
        t0 = time.perf_counter()
        ref = index.search(q, k, exact=True)
        exact_s = time.perf_counter() - t0
        got = index.search(q, k)
        rec = recall_at_k(got.ids, ref.ids)
        same = np.array_equal(got.ids, ref.ids) and np.array_equal(got.scores, ref.scores)
        small = recall_at_k(index.search(q, k, candidates=5 * k).ids, ref.ids)
        print(
            f"  {kind:<10} recall@{k}={rec:.4f} (identical to exact: {same}; with only "
            f"{5 * k} candidates {small:.4f}); exact path {n_queries} queries {exact_s:.2f} s"
        )

    gemv, gemm = kernel_floors(size, dim, n_queries)
    print(
        f"  bare int8 kernels now: GEMV 1 query {1e3 * gemv:.1f} ms "
        f"({size * dim / gemv / 1e9:.1f} GB/s), GEMM {n_queries} queries {1e3 * gemm:.0f} ms; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    q = make_queries(store.embeddings, "text-like", n_queries, seed=2)
    t0 = time.perf_counter()
    index.search(q[:1], k)  # first searches: calibration (or its cache) and kernel preparation
    index.search(q, k)
    first_s = time.perf_counter() - t0
    cal = index.calibration
    for n in (1, n_queries):
        chosen = index._pick_kernel(n)
        times = cal.timings.get(regime(n), {})
        shown = ", ".join(
            f"{name} {v * size * 1e3:.1f}" for name, v in sorted(times.items(), key=lambda x: x[1])
        )
        # the calibration times the products alone on a sample that fits in the caches: its
        # figures rank the kernels, they are not the latency of a scan of the whole index (one
        # query streams the codes from memory, slower than the sample's rate)
        sample_q = REGIMES[regime(n)]
        print(
            f"  kernel for {plural(n, 'query', 'queries')}: {chosen} "
            f"({'cached' if cal.cached else 'measured'}; products of "
            f"{plural(sample_q, 'query', 'queries')} on the {cal.rows:,}-row sample, in ms per "
            f"{size:,} rows: {shown})"
        )
    print(
        f"  first two searches (calibration or its cache + preparation of the chosen kernels): "
        f"{first_s:.2f} s; index memory now {mib(index.memory_bytes)}"
    )
    singles = [timed(lambda i=i: index.search(q[i : i + 1], k), 1)[0] for i in range(n_queries)]
    batch = timed(lambda: index.search(q, k), 5)
    exact1 = timed(lambda: index.search(q[:1], k, exact=True), 3)
    emb = store.embeddings
    plain1 = timed(lambda: plain_topk(emb, q[:1], k), 3)
    plain_n = timed(lambda: plain_topk(emb, q, k), 2)
    goal = targets(size)
    one, many = statistics.median(singles), statistics.median(batch)
    print(
        f"  1 query:    median {1e3 * one:.1f} ms, "
        f"min {1e3 * min(singles):.1f} ms (exact path {1e3 * min(exact1):.0f} ms; plain fp32 "
        f"matmul+topk {1e3 * min(plain1):.0f} ms)"
        + (
            f"; target <= {1e3 * goal[0]:.0f} ms: {'met' if one <= goal[0] else 'NOT met'}"
            if goal
            else ""
        )
    )
    print(
        f"  {n_queries} queries: median {many:.3f} s, min {min(batch):.3f} s (plain fp32 "
        f"matmul+topk {min(plain_n):.3f} s)"
        + (
            f"; target <= {goal[1]:.1f} s: {'met' if many <= goal[1] else 'NOT met'}"
            if goal and n_queries == 100
            else ""
        )
    )
    mem = rss()
    print(
        f"  process RSS now {mib(mem['VmRSS'])} (anon {mib(mem['RssAnon'])}, "
        f"file {mib(mem['RssFile'])})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=["gaussian", "clustered", "near-duplicates"],
        default=["gaussian", "clustered", "near-duplicates"],
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="kept if given; a later run with the same one reuses the sets written there",
    )
    parser.add_argument(
        "--default-heap",
        action="store_true",
        help="keep glibc's default heap settings (a Python program calling SearchIndex.search) "
        "instead of the steady heap that msclip-index search sets (msclip.memory.steady_heap)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from msclip.hardware import cpu_info
    from msclip.memory import steady_heap

    # As msclip-index search runs: it loads the query model, which sets the steady heap on a CPU,
    # so the scan's per-block scores reuse freed memory instead of faulting fresh pages in.
    heap = "glibc's default" if args.default_heap or not steady_heap() else "steady (msclip-index)"
    info = cpu_info()
    print(
        f"machine: {info.kind}; native bf16 {info.native_bf16}, int8 VNNI {info.vnni}\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()}; C heap: {heap}"
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="msclip-index-bench-"))
    try:
        for size in args.sizes:
            for dataset in args.datasets:
                run(size, args.dim, dataset, args.k, args.queries, workdir)
                if args.workdir is None:  # free the disk before the next, larger set
                    shutil.rmtree(workdir / f"{dataset}-{size}", ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
