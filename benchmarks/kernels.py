"""Benchmark of msclip.cuda: blockwise contrastive loss and fused top-k search.

CPU (always): the chunked PyTorch loss against the plain loss of msclip.train.loss, forward and
backward, d = 512, fp32, at B = 4,096 and 16,384 (``--batches``): median time of ``--repeats``
runs after one warm-up, and the peak bytes of live torch tensors during one run
(:class:`msclip.cuda.memory.TensorMemoryTracker`; the CPU allocator keeps no statistics).

GPU (when torch sees one and Triton works):

* search: the two ways the GPU search finds candidates (it measures both and keeps the faster),
  the fused top-k kernel and float32 products with ``topk`` in large chunks
  (:func:`msclip.cuda.topk.gemm_topk`), then the kernel's reference with packed keys
  (:func:`msclip.cuda.topk.topk_reference`) and a plain ``matmul + topk`` of float16 scores,
  over 10^6 and 10^7 stored float16 embeddings (d = 512), 1, 100 and 1,000 queries, k = 10 (64
  candidates kept, as the search asks), with the fraction of the fused candidates that the
  gemm method also returns (near-ties may differ);
* loss: Triton vs plain vs chunked, time (CUDA events) and ``torch.cuda.max_memory_allocated``
  at B = 4,096 .. 65,536, and the largest power-of-two batch each fits in the free memory (the
  search for it stops where the next batch would take more than ``--capacity-seconds``: at
  B = 524,288 the chunked loss took under 60 s on one H200, the next size 162 s).

Run: ``python benchmarks/kernels.py`` (CPU part ~15 minutes on 2 cores and ~7 GB of RAM for the
plain loss at B = 16,384); ``--skip-cpu`` / ``--skip-gpu`` to run one part. Timings on a shared
machine vary; the load average is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from msclip.cuda.contrastive import DEFAULT_CHUNK, blockwise_contrastive_loss
from msclip.cuda.memory import TensorMemoryTracker

from msclip.train.loss import ContrastiveLoss


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line per fact of the machine the figures come from."""
    lines = [
        f"CPU: {_cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} torch threads, load average "
        + " ".join(f"{v:.1f}" for v in os.getloadavg()),
        f"torch {torch.__version__}",
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(
            f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
        )
    else:
        lines.append("GPU: none")
    return "\n".join(lines)


def _inputs(b: int, d: int, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g), dim=1).to(device).requires_grad_()
    y = F.normalize(torch.randn(b, d, generator=g), dim=1).to(device).requires_grad_()
    t = torch.tensor(math.log(30.0), device=device, requires_grad=True)
    return x, y, t


def _loss_fn(impl: str, kind: str, block: int | None) -> Callable[..., torch.Tensor]:
    plain = ContrastiveLoss(kind, init_logit_bias=-10.0)

    def run(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        bias = plain.logit_bias.to(x.device) if plain.logit_bias is not None else None
        if impl == "plain":
            return plain.to(x.device)(x, y, t)
        return blockwise_contrastive_loss(x, y, t, bias, kind=kind, impl=impl, block_size=block)

    return run


def _fwd_bwd(fn: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor, t: torch.Tensor):
    x.grad = y.grad = t.grad = None
    fn(x, y, t).backward()


def cpu_loss(batches: list[int], d: int, kind: str, repeats: int, block: int) -> None:
    print(f"\n== CPU: {kind} loss, forward + backward, d = {d}, fp32 ==")
    print(f"{'B':>7} {'impl':>8} {'time s':>9} {'peak tensor MiB':>16} {'B x B fp32 MiB':>15}")
    for b in batches:
        x, y, t = _inputs(b, d, "cpu")
        ref = None
        for impl in ("plain", "chunked"):
            fn = _loss_fn(impl, kind, block if impl == "chunked" else None)
            try:
                _fwd_bwd(fn, x, y, t)  # warm-up
                grads = (x.grad.clone(), y.grad.clone(), t.grad.clone())
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    _fwd_bwd(fn, x, y, t)
                    times.append(time.perf_counter() - t0)
                tracker = TensorMemoryTracker("cpu")
                with tracker:
                    _fwd_bwd(fn, x, y, t)
            except (RuntimeError, MemoryError) as exc:
                print(f"{b:>7} {impl:>8} failed: {str(exc).splitlines()[0][:80]}")
                continue
            note = ""
            if ref is None:
                ref = grads
            else:
                err = max(float((a - r).abs().max() / r.abs().max()) for a, r in zip(grads, ref))
                note = f"  (max gradient difference vs plain: {err:.1e} of the largest)"
            print(
                f"{b:>7} {impl:>8} {statistics.median(times):>9.2f} "
                f"{tracker.peak / 2**20:>16.1f} {b * b * 4 / 2**20:>15.0f}{note}"
            )
        del x, y, t


def _cuda_time(fn: Callable[[], None], repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gpu_loss(batches: list[int], d: int, kind: str, repeats: int, budget: float) -> None:
    print(f"\n== GPU: {kind} loss, forward + backward, d = {d}, fp32 ==")
    print(f"{'B':>7} {'impl':>8} {'time ms':>9} {'peak MiB':>10}")
    for b in batches:
        x, y, t = _inputs(b, d, "cuda")
        for impl in ("plain", "chunked", "triton"):
            fn = _loss_fn(impl, kind, None)
            try:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                sec = _cuda_time(lambda fn=fn, x=x, y=y, t=t: _fwd_bwd(fn, x, y, t), repeats)
                peak = torch.cuda.max_memory_allocated() - base
                print(f"{b:>7} {impl:>8} {sec * 1e3:>9.2f} {peak / 2**20:>10.0f}")
            except torch.cuda.OutOfMemoryError:
                print(f"{b:>7} {impl:>8} out of memory")
        del x, y, t
    print("largest power-of-two batch that fits (forward + backward):")
    for impl in ("plain", "chunked", "triton"):
        fn, best, b = _loss_fn(impl, kind, None), 0, 4096
        while b <= 1 << 22:
            took = _fits(fn, b, d)
            if took is None:
                break
            best = b
            # the loss is quadratic in B: the next size takes about 4x as long
            if 4 * took > budget:  # the bound is time, not memory
                print(f"  {impl}: stopped at B = {b} ({took:.1f} s; B = {2 * b} would take "
                      f"~{4 * took:.0f} s, over --capacity-seconds {budget:g})")  # fmt: skip
                break
            b *= 2
        print(f"  {impl:>8}: B = {best}")


def _fits(fn: Callable[..., torch.Tensor], b: int, d: int) -> float | None:
    """Seconds of one forward and backward pass at batch ``b``, None when it runs out of memory
    (a function, so that every tensor of a failed try is freed on return)."""
    torch.cuda.empty_cache()
    try:
        x, y, t = _inputs(b, d, "cuda")
        t0 = time.perf_counter()
        _fwd_bwd(fn, x, y, t)
        torch.cuda.synchronize()
        return time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        return None


def gpu_search(sizes: list[int], d: int, repeats: int, k: int = 10) -> None:
    from msclip.cuda.topk import fused_topk, gemm_topk, topk_reference

    keep = max(16, 1 << (2 * k + 16 - 1).bit_length())  # the candidates a search of k asks for
    print(f"\n== GPU: top-{k} inner-product search, float16 rows, d = {d}: {keep} candidates "
          "per query, as msclip.index asks the device for ==")  # fmt: skip
    print(f"{'N':>10} {'queries':>8} {'fused ms':>10} {'gemm ms':>10} {'keys ms':>10} "
          f"{'matmul+topk ms':>15} {'same ids':>9}")  # fmt: skip
    print(
        "(fused: the Triton scan; gemm: float32 products and topk in large chunks, the "
        "search's other method (the faster of the two is used); keys: the same products "
        "with the kernel's keys and tie rule, the kernel's reference; matmul+topk: float16 "
        "scores, no bound; same ids: fraction of the fused candidates that gemm also returns)"
    )
    for n in sizes:
        try:
            store = torch.empty((n, d), dtype=torch.float16, device="cuda")
            g = torch.Generator(device="cuda").manual_seed(0)
            for a in range(0, n, 1 << 20):
                part = torch.randn((min(1 << 20, n - a), d), device="cuda", generator=g)
                store[a : a + part.shape[0]] = F.normalize(part, dim=1).half()
        except torch.cuda.OutOfMemoryError:
            print(f"{n:>10} out of memory for the stored rows")
            continue
        for n_q in (1, 100, 1000):
            q = F.normalize(torch.randn((n_q, d), device="cuda", generator=g), dim=1).half()
            runs = {
                "fused": lambda q=q, x=store: fused_topk(q, x, keep),
                "gemm": lambda q=q, x=store: gemm_topk(q, x, keep),
                "keys": lambda q=q, x=store: topk_reference(q, x, keep),
                "plain": lambda q=q, x=store: torch.topk((q @ x.T).float(), keep, dim=1),
            }
            ids, ref = runs["fused"]()[1], runs["gemm"]()[1]
            same = float((ids[:, :, None] == ref[:, None, :]).any(-1).float().mean())
            cells = []
            for run in runs.values():
                try:
                    cells.append(f"{_cuda_time(run, repeats) * 1e3:.2f}")
                except torch.cuda.OutOfMemoryError:
                    cells.append("no memory")
            widths = (10, 10, 10, 15)
            print(f"{n:>10} {n_q:>8} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths))
                  + f" {same:>9.3f}")  # fmt: skip
        del store
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kind", choices=("clip", "siglip"), default="clip")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--block", type=int, default=DEFAULT_CHUNK, help="chunked tile edge")
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--search-sizes", type=int, nargs="+", default=[10**6, 10**7])
    parser.add_argument("--capacity-seconds", type=float, default=60.0,
                        help="time allowed to one forward and backward pass in the search for "
                        "the largest batch that fits (default: 60)")  # fmt: skip
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args(argv)
    print(machine())
    if not args.skip_cpu:
        cpu_loss(args.batches, args.dim, args.kind, args.repeats, args.block)
    if args.skip_gpu:
        return 0
    if not torch.cuda.is_available():
        print("\nno GPU visible to torch: the Triton and fused top-k figures need one")
        return 0
    from msclip.cuda.runtime import kernels_can_run

    if not kernels_can_run("cuda", "contrastive_kernels"):
        print("\nTriton does not run on this GPU: no kernel figures")
        return 0
    gpu_search(args.search_sizes, args.dim, max(5, args.repeats))
    gpu_loss(args.gpu_batches, args.dim, args.kind, max(3, args.repeats), args.capacity_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
