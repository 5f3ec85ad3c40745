"""Does bf16 on this CPU compute what float32 computes? What msclip's bf16 check finds here.

Prints the CPU (torch's dispatch level, bf16 and AMX flags, ``ONEDNN_MAX_CPU_ISA``), then for
each registered architecture the least cosines between bf16 and float32 outputs of the check's
replica of its towers (:mod:`msclip.precision_check`, measured now, not read from the cache),
the demo model's own embeddings in bf16 against float32 with its trained weights (the check
turned off for that), and what ``--precision auto`` picks on this CPU.

Run: ``python benchmarks/cpu_bf16.py`` (seconds; no weights file needed).
"""

from __future__ import annotations

import os
import warnings

import torch
import workload  # noqa: F401  (puts this repository's msclip first on the path)

import msclip
from msclip import factory
from msclip.hardware import cpu_info
from msclip.precision_check import BF16_CHECK_ENV, MIN_COSINE, _measure


def main() -> int:
    info = cpu_info()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "all")
    print(f"machine: {info.kind}; {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"ONEDNN_MAX_CPU_ISA={isa}")  # fmt: skip
    if not info.native_bf16:
        print("no native bf16 on this CPU: auto picks fp32 and no check runs")
    for name in ("msclip-demo", "Llama3-MS-CLIP-Base"):
        config = factory._config_for(factory.get_model_entry(name), None)
        got = _measure(config)
        verdict = "agree" if min(got.values()) >= MIN_COSINE else "DISAGREE"
        print(f"{name}: replica cosines image {got['image']:.5f}, text {got['text']:.5f} "
              f"-> {verdict}")  # fmt: skip
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
