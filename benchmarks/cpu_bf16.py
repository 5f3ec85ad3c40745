"""Does bf16 on this CPU compute what float32 computes? What msclip's bf16 check finds here.

Prints the CPU (torch's dispatch level, bf16 and AMX flags, ``ONEDNN_MAX_CPU_ISA``), then for
each registered architecture the least cosines between bf16 and float32 outputs of the check's
replica of its towers (:mod:`msclip.precision_check`, measured now, not read from the cache),
the relative error of each bf16 product and normalisation of its image tower at its shapes (to
find the op where the replica disagrees), the demo model's own embeddings in bf16 against float32
with its trained weights (the check turned off for that), and what ``--precision auto`` picks on
this CPU.

Run: ``python benchmarks/cpu_bf16.py`` (seconds; no weights file needed).
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
import workload  # also puts this repository's msclip first on the path

import msclip
from msclip import factory
from msclip.hardware import cpu_info
from msclip.precision_check import BF16_CHECK_ENV, MIN_COSINE, _measure
from msclip.spectral.patch_embed import _patches_as_gemm


def op_errors(config: object) -> list[tuple[str, str, float]]:
    """Relative error of each kind of bf16 product and normalisation an image tower of
    ``config`` runs, at its shapes (batch 2), against float64 on the same bf16 inputs: where the
    replica disagrees, the op that does."""
    import torch.nn.functional as F

    vision = config.arch_cfg["vision_cfg"]
    width, patch = int(vision["width"]), int(vision.get("patch_size", 16))
    head = int(vision.get("head_width", 64))
    heads, size, bands = width // head, config.image_size, len(config.bands)
    tokens = (size // patch) ** 2 + 1
    mlp = int(width * float(vision.get("mlp_ratio", 4.0)))
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).bfloat16()

    def rel(fn, *xs: torch.Tensor) -> float:
        low, ref = fn(*xs).double(), fn(*(x.double() for x in xs))
        return float((low - ref).norm() / ref.norm())

    q, k, v = (randn(2, heads, tokens, head) for _ in range(3))
    # as the fused path has them: views of one QKV product [batch, tokens, 3, heads, head]
    qs, ks, vs = randn(2, tokens, 3, heads, head).permute(2, 0, 3, 1, 4)
    p = torch.softmax(randn(2, heads, tokens, tokens).float(), -1).bfloat16()
    x = randn(2 * tokens, width)
    cases = [
        (f"patch conv {bands}->{width}, {patch}x{patch}", f"2x{bands}x{size}x{size}",
         lambda a, w: F.conv2d(a, w, stride=patch),
         (randn(2, bands, size, size), randn(width, bands, patch, patch, scale=0.05))),
        ("patch projection, msclip's",
         f"{2 * tokens - 2}x{bands * patch * patch}x{width}", _patches_as_gemm,
         (randn(2, bands, size, size), randn(width, bands, patch, patch, scale=0.05))),
        ("qkv projection", f"{2 * tokens}x{width}x{3 * width}", F.linear,
         (x, randn(3 * width, width, scale=width**-0.5))),
        ("output projection", f"{2 * tokens}x{width}x{width}", F.linear,
         (x, randn(width, width, scale=width**-0.5))),
        ("MLP in", f"{2 * tokens}x{width}x{mlp}", F.linear,
         (x, randn(mlp, width, scale=width**-0.5))),
        ("MLP out", f"{2 * tokens}x{mlp}x{width}", F.linear,
         (randn(2 * tokens, mlp), randn(width, mlp, scale=mlp**-0.5))),
        ("scores q k^T", f"{tokens}x{head}x{tokens}", lambda a, b: a @ b.transpose(-1, -2), (q, k)),
        ("attention P v", f"{tokens}x{tokens}x{head}", torch.matmul, (p, v)),
        ("class token P v", f"1x{tokens}x{head}", torch.matmul, (p[:, :, :1], v)),
        ("scores, strided views", f"{tokens}x{head}x{tokens}",
         lambda a, b: a @ b.transpose(-1, -2), (qs, ks)),
        ("P v, v a strided view", f"{tokens}x{tokens}x{head}", torch.matmul, (p, vs)),
        ("fused attention (SDPA)", f"{tokens} tokens, heads of {head}",
         F.scaled_dot_product_attention, (q, k, v)),
        ("layer norm", f"{2 * tokens}x{width}", lambda a: F.layer_norm(a, (width,)), (x,)),
    ]  # fmt: skip
    return [(name, shape, rel(fn, *xs)) for name, shape, fn, xs in cases]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help
    info = cpu_info()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "all")
    print(f"machine: {info.kind}; {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"ONEDNN_MAX_CPU_ISA={isa}")  # fmt: skip
    emulated = workload.bf16_emulated()
    if emulated:
        print(f"bf16 {emulated}: auto picks fp32 and no check runs")
    for name in ("msclip-demo", "Llama3-MS-CLIP-Base"):
        config = factory._config_for(factory.get_model_entry(name), None)
        got = _measure(config)
        verdict = "agree" if min(got.values()) >= MIN_COSINE else "DISAGREE"
        print(f"{name}: replica cosines image {got['image']:.5f}, text {got['text']:.5f} "
              f"-> {verdict}")  # fmt: skip
        print("  bf16 ops at its image tower's shapes, relative error against float64 "
              "(bf16 rounding: about 2e-3):")  # fmt: skip
        for op, shape, err in op_errors(config):
            flag = "  <- WRONG" if err > 1e-2 else ""
            print(f"    {op:<28} {shape:<24} {err:9.1e}{flag}")
    x = torch.randn(4, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    fp32 = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
    os.environ[BF16_CHECK_ENV] = "0"
    bf16 = msclip.create_model("msclip-demo", pretrained=True, precision="bf16")
    del os.environ[BF16_CHECK_ENV]
    with torch.inference_mode():
        a, b = fp32.encode_image(x), bf16.encode_image(x.bfloat16()).float()
    cos = torch.nn.functional.cosine_similarity(a, b).min().item()
    print(f"msclip-demo, trained weights, bf16 against float32 embeddings: cosine {cos:.5f}")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        auto = msclip.create_model("msclip-demo", pretrained=True, precision="auto")
    print(f"--precision auto picks: {auto.precision} ({auto.precision_reason})")
    for w in seen:
        print(f"  {w.category.__name__}: {w.message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
