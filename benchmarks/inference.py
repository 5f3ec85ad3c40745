"""Zero-shot classification on this machine: each precision's speed, and the run against its floor.

The reference workload (``workload.py``): 64 generated 224x224x12 tiles, 10 classes x 50
templates, a Llama3-MS-CLIP-Base-sized release checkpoint given with ``--ckpt-path``.

Prints:

1. the machine: CPU model, torch's dispatch level and flags, and what ``--precision auto``
   picks and why;
2. the image tower alone (at the program's CPU batch size) in fp32 (OpenCLIP's arithmetic),
   fp32 on the fused oneDNN kernels (what ``auto`` runs on a CPU without native bf16), bf16
   (where native) and int8, images/s by wall time and by CPU time (less disturbed by other
   processes on a shared machine);
3. the end-to-end run with default flags (``python -m msclip.cli.inference
   --run-classification``, cold text cache: start-up, model load, text tower, reading, image
   tower, CSV) against its floor, the sum of three parts measured in the same run:

   - importing torch (``python -c "import torch"`` with the cyclic garbage collector paused and
     leaving without the interpreter's teardown, as msclip's programs import it and leave, see
     :mod:`msclip.cli.startup`),
   - the 500 prompts through the text tower, trimmed after the longest prompt (as the program
     does them),
   - the 64 images at the machine's GEMM bound: the matrix products of the image tower alone
     (the same shapes, in the chosen precision, without anything between them, each with the
     faster of torch's matmul and oneDNN's packed-weight linear kernel) for 64 images: the
     products the tower runs, so where its last block computes the class token alone (the
     fused CPU paths) that block's (the full tower at the same rate is printed beside);

   and the image tower's fraction of that GEMM bound (target >= 0.85) and the whole run's ratio
   to the floor (target <= 1.25).

Every figure is the best of a few runs, the parts interleaved (the machines are shared; the load
average is printed). Run: ``python benchmarks/inference.py [--repeats 3] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import workload  # this folder's helper (also puts the repository's msclip first on the path)

# the floor's torch import: as msclip's programs import it (the collector paused), then leave
TORCH_IMPORT = "import gc, os; gc.disable(); import torch; os._exit(0)"


def class_token_only(model) -> bool:
    """Whether the image tower runs its last block for the class token alone (what the image
    embedding reads; ``msclip.architecture``), as it does in this precision on this machine."""
    import torch

    from msclip.architecture import _class_token_only

    visual = model.clip.visual
    n = visual.grid_size[0] * visual.grid_size[1] + 1
    probe = torch.zeros(1, n, visual.transformer.width, dtype=model.dtype)
    with torch.inference_mode():
        return _class_token_only(visual, probe)


def image_flops(model, last_block_class_token: bool = False) -> float:
    """FLOPs of one image through the ViT tower: patch projection, QKV, attention products,
    output projection, MLP, final projection (multiply-adds counted as two); with
    ``last_block_class_token``, the last block's as the tower runs it then: the QKV projection of
    every token, the rest for the class token alone."""
    visual = model.clip.visual
    width = visual.transformer.width
    n = visual.grid_size[0] * visual.grid_size[1] + 1
    hidden = visual.transformer.resblocks[0].mlp.c_fc.out_features
    patch = visual.patch_size[0] * visual.patch_size[1] * len(model.bands)
    per_block = 2 * n * width * (3 * width + width + 2 * hidden) + 4 * n * n * width
    blocks = visual.transformer.layers * per_block
    if last_block_class_token:
        last = 2 * n * width * 3 * width + 2 * width * (width + 2 * hidden) + 4 * n * width
        blocks += last - per_block
    return 2 * (n - 1) * width * patch + blocks + 2 * width * model.embed_dim


def gemm_replay(model, batch: int, n_images: int, last_block_class_token: bool = False):
    """A function running only the matrix products of the image tower for ``n_images`` images
    (batches of ``batch``), in the model's dtype: the GEMM bound of the tower on this machine.

    Each weight product runs with the faster (timed here) of torch's ``matmul`` and oneDNN's
    linear kernel over a weight packed in its blocked layout (what msclip's bf16 CPU tower
    uses), so the bound is the best these shapes get on the machine, not the plain product's.
    With ``last_block_class_token`` the last block's products are those the tower runs then
    (:func:`class_token_only`): the QKV projection of every token, the class token's attention,
    output projection and MLP."""
    import torch

    visual = model.clip.visual
    width, dtype = visual.transformer.width, model.dtype
    n = visual.grid_size[0] * visual.grid_size[1] + 1
    heads = visual.transformer.resblocks[0].attn.num_heads
    hidden = visual.transformer.resblocks[0].mlp.c_fc.out_features
    patch = visual.patch_size[0] * visual.patch_size[1] * len(model.bands)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    x, h = rand(batch * n, width), rand(batch * n, hidden)
    w_qkv, w_out = rand(width, 3 * width), rand(width, width)
    w_fc, w_proj, w_patch = rand(width, hidden), rand(hidden, width), rand(patch, width)
    p_in = rand(batch * (n - 1), patch)
    q, k = rand(batch * heads, n, width // heads), rand(batch * heads, width // heads, n)
    a = rand(batch * heads, n, n)

    products = [fastest_product(a, w) for a, w in
                ((p_in, w_patch), (x, w_qkv), (x, w_out), (x, w_fc), (h, w_proj))]  # fmt: skip
    patch_mm, qkv_mm, out_mm, fc_mm, proj_mm = products
    blocks = visual.transformer.layers
    if last_block_class_token:  # the last block's products for the class tokens of a batch
        x1, h1 = rand(batch, width), rand(batch, hidden)
        q1, a1 = rand(batch * heads, 1, width // heads), rand(batch * heads, 1, n)
        last = [fastest_product(a, w) for a, w in ((x1, w_out), (x1, w_fc), (h1, w_proj))]
        blocks -= 1

    def run() -> None:
        with torch.inference_mode():
            for _ in range(n_images // batch):
                patch_mm()
                for _ in range(blocks):
                    qkv_mm()
                    torch.bmm(q, k)
                    torch.bmm(a, q)
                    out_mm()
                    fc_mm()
                    proj_mm()
                if last_block_class_token:
                    qkv_mm()
                    torch.bmm(q1, k)
                    torch.bmm(a1, q)
                    for product in last:
                        product()

    return run


def fastest_product(a, w):
    """``a @ w`` as the faster of torch's ``matmul`` and oneDNN's linear kernel over ``w``
    packed once (best of 10 calls each); the packed kernel is left out where torch lacks it."""
    import torch

    def plain():
        return a @ w

    candidates = [plain]
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if reorder is not None:
        linear = torch.ops.mkldnn._linear_pointwise
        try:
            with torch.inference_mode():
                packed_w = reorder(w.t().contiguous())
                linear(a, packed_w, None, "none", [], "")

            def packed():
                return linear(a, packed_w, None, "none", [], "")

            candidates.append(packed)
        except (RuntimeError, NotImplementedError):
            pass
    with torch.inference_mode():
        return min(candidates, key=lambda f: best_time(f, 10)[0])


def best_time(fn, repeats: int) -> tuple[float, float]:
    """Best wall seconds and best CPU seconds per intra-op thread of ``fn()``."""
    import torch

    fn()
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, (time.process_time() - c0) / torch.get_num_threads())
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (the best counts)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/msclip-bench"))
    ap.add_argument("--skip-precisions", action="store_true", help="only the floor analysis")
    args = ap.parse_args()
    paths = workload.prepare(args.workdir)

    import torch

    import msclip
    from msclip.hardware import cpu_info
    from msclip.memory import steady_heap
    from msclip.zero_shot import encode_texts, format_prompts

    steady_heap()  # the C heap as msclip's programs on a CPU set it (msclip.memory)
    info = cpu_info()
    print(f"machine: {info.kind}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    # what create_model makes of auto: the CPU flags, then the bf16 check of the towers
    # (msclip.precision_check), which can send a CPU with native bf16 back to fp32
    resolved = msclip.create_model("Llama3-MS-CLIP-Base", paths["ckpt"], precision="auto")
    fused_auto = workload.on_fused_fp32(resolved.precision_reason)
    print(f"--precision auto picks: {resolved.precision} ({resolved.precision_reason})")
    auto_row = "fp32-fused" if fused_auto else resolved.precision
    del resolved
    print(f"load average at start: {os.getloadavg()[0]:.2f}")

    from msclip.encode import auto_batch_size

    bs = auto_batch_size(None, "cpu")  # what the program uses
    x = torch.randn(bs, 10, 224, 224)
    if not args.skip_precisions:
        print(f"\nimage tower alone, batch {bs}, images/s (best of "
              f"{args.repeats}; by CPU time in brackets):")  # fmt: skip
        from msclip.errors import PrecisionError

        emulated = workload.bf16_emulated()
        for row in ("fp32", "fp32-fused", "bf16", "int8"):
            if row == "bf16" and emulated:
                print(f"  bf16        skipped: {emulated}")
                continue
            if row == "fp32-fused" and not fused_auto:
                continue  # auto's fp32 (a CPU without native bf16, or whose bf16 disagrees)
            precision = "auto" if row == "fp32-fused" else row
            try:
                model = msclip.create_model(
                    "Llama3-MS-CLIP-Base", paths["ckpt"], precision=precision
                )
            except PrecisionError as err:  # bf16 where this CPU's bf16 disagrees
                print(f"  {row:11s} refused: {err}")
                continue
            with torch.inference_mode():
                wall, cpu = best_time(lambda m=model: m.encode_image(x), args.repeats)
            mark = "  <- auto" if row == auto_row else ""
            print(f"  {row:11s} {bs / wall:6.2f}  ({bs / cpu:6.2f}){mark}")
            del model

    # -- the run against its floor ----------------------------------------------------------
    model = msclip.create_model("Llama3-MS-CLIP-Base", paths["ckpt"], precision="auto")
    tokenizer = msclip.get_tokenizer(model)
    templates = [t for t in paths["templates"].read_text().splitlines() if t.strip()]
    prompts = [p for c in workload.CLASSES for p in format_prompts(c, templates)]
    n = workload.N_TILES
    short = class_token_only(model)  # the products the tower runs, and no others, bound it
    replay = gemm_replay(model, bs, n, last_block_class_token=short)
    out = args.workdir / "out.csv"
    workload.run_measured(workload.classify_argv(paths, args.workdir / "warm", out))  # warm-up
    runs: dict[str, list[float]] = {
        k: [] for k in ("e2e", "torch", "text", "gemm", "tower", "gemm_cpu", "tower_cpu")
    }
    for r in range(args.repeats):
        cache = args.workdir / f"cold-{r}"
        shutil.rmtree(cache, ignore_errors=True)
        runs["e2e"].append(workload.run_measured(workload.classify_argv(paths, cache, out))[0])
        runs["torch"].append(workload.run_measured([sys.executable, "-c", TORCH_IMPORT])[0])
        with torch.inference_mode():
            t0 = time.perf_counter()
            encode_texts(model, tokenizer, prompts)
            runs["text"].append(time.perf_counter() - t0)
            wall, cpu = best_time(replay, 1)
            runs["gemm"].append(wall)
            runs["gemm_cpu"].append(cpu)

            def tower() -> None:
                for s in range(0, n, bs):
                    model.encode_image(x[: min(bs, n - s)])

            wall, cpu = best_time(tower, 1)
            runs["tower"].append(wall)
            runs["tower_cpu"].append(cpu)
    b = {k: min(v) for k, v in runs.items()}
    floor = b["torch"] + b["text"] + b["gemm"]
    flops = image_flops(model, last_block_class_token=short)
    full = image_flops(model)
    print(f"\nend to end: {n} tiles, {len(workload.CLASSES)} classes x {len(templates)} templates "
          f"({workload.template_source()}), default flags ({model.precision}), cold text cache; "
          f"best of {args.repeats}")  # fmt: skip
    print(f"  whole run                         {b['e2e']:7.2f} s")
    print(f"  floor                             {floor:7.2f} s")
    print(f"    torch import                    {b['torch']:7.2f} s")
    print(f"    {len(prompts)} prompts, trimmed           {b['text']:7.2f} s")
    print(
        f"    {n} images at the GEMM bound      {b['gemm']:7.2f} s  "
        f"({n * flops / b['gemm'] / 1e9:.0f} GFLOP/s, {flops / 1e9:.1f} GFLOP per image)"
    )
    if short:
        print(
            f"      (the tower's products: its last block runs the class token alone past the "
            f"QKV projection, {flops / 1e9:.1f} of the full tower's {full / 1e9:.1f} GFLOP per "
            f"image; the full tower at this rate: {b['gemm'] * full / flops:.2f} s)"
        )
    frac = b["gemm"] / b["tower"]
    frac_cpu = b["gemm_cpu"] / b["tower_cpu"]
    ratio = b["e2e"] / floor
    print(f"  image tower alone                 {b['tower']:7.2f} s  -> {frac:.0%} of the GEMM "
          f"bound (target >= 85%: {'met' if frac >= 0.85 else 'NOT met'}; by CPU time "
          f"{frac_cpu:.0%})")  # fmt: skip
    print(f"  whole run / floor                 {ratio:7.2f}x (target <= 1.25x: "
          f"{'met' if ratio <= 1.25 else 'NOT met'})")  # fmt: skip
    print("  runs (s): " + "; ".join(f"{k} " + ", ".join(f"{v:.2f}" for v in vs)
                                      for k, vs in runs.items()))  # fmt: skip
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
