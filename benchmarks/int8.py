"""``precision="int8"`` (CPU image tower with int8 dynamic linear layers): agreement and speed.

Agreement, on ``msclip-demo`` (a small trained model) over a held-out generated set
(``msclip.synthetic``, the classes named as a user would, msclip's default templates):

- cosine similarity of each int8 image embedding to its fp32 embedding (mean and minimum);
- agreement of the zero-shot top-1 labels with fp32's, and both accuracies.

Speed, on the ViT-B-16 10-band image tower (the Llama3-MS-CLIP architecture, random weights:
the figures are those of the real model): images/s of fp32, bf16 (where the CPU computes it
natively) and int8 at batch 32, best of a few interleaved runs, by wall time and by the
process's CPU time (less disturbed by other processes on a shared machine), with the machine it
ran on.

Run: ``python benchmarks/int8.py [--n-per-class 40] [--skip-speed]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import workload  # also puts this repository's msclip first on the path

import msclip
from msclip.hardware import cpu_info


def agreement(n_per_class: int, seed: int) -> None:
    from msclip.encode import encode_images
    from msclip.synthetic import CLASSES, class_slug, generate_dataset
    from msclip.synthetic.demo import USER_CLASS_NAMES
    from msclip.zero_shot import build_classifier, load_templates

    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, n_per_class=n_per_class, size=64, seed=seed)
        paths, labels = [], []
        for k, cls in enumerate(CLASSES):
            files = sorted((Path(tmp) / class_slug(cls)).glob("*.tif"))
            paths += files
            labels += [k] * len(files)
        y = np.asarray(labels)
        names = [USER_CLASS_NAMES[c] for c in CLASSES]
        out = {}
        for precision in ("fp32", "int8"):
            model = msclip.create_model("msclip-demo", pretrained=True, precision=precision)
            classifier = build_classifier(
                model, msclip.get_tokenizer(model), names, load_templates()
            )
            res = encode_images(model, model.preprocess(), paths, batch_size=64)
            pred = (torch.from_numpy(res.embeddings) @ classifier.T).argmax(1).numpy()
            out[precision] = (res.embeddings, pred)
    (e32, p32), (e8, p8) = out["fp32"], out["int8"]
    cos = (e32 * e8).sum(1)  # both L2-normalised
    print(
        f"msclip-demo, {len(y)} generated tiles ({len(CLASSES)} classes x {n_per_class}, "
        f"seed {seed}):"
    )
    print(f"  cosine(int8, fp32) of the image embeddings: mean {cos.mean():.5f}, "
          f"min {cos.min():.5f}")  # fmt: skip
    print(f"  zero-shot top-1 labels equal to fp32's: {(p8 == p32).mean():.1%}")
    print(f"  top-1 accuracy: fp32 {(p32 == y).mean():.1%}, int8 {(p8 == y).mean():.1%}")


def speed_precisions() -> list[str]:
    """The precisions timed here: bf16 only where this CPU computes it natively (emulated, one
    batch of the ViT-B-16 takes minutes), saying why it is left out."""
    emulated = workload.bf16_emulated()
    if emulated:
        print(f"\nbf16 not timed: {emulated}")
        return ["fp32", "int8"]
    return ["fp32", "bf16", "int8"]


def speed(repeats: int, batch: int) -> None:
    precisions = speed_precisions()
    torch.manual_seed(0)
    base = msclip.create_model("Llama3-MS-CLIP-Base", precision="fp32")
    path = Path(tempfile.mkdtemp()) / "vit.safetensors"
    msclip.save_checkpoint(base, path)
    del base
    models = {p: msclip.create_model(path, precision=p) for p in precisions}
    x = torch.randn(batch, 10, 224, 224)
    best = {p: (0.0, 0.0) for p in models}
    with torch.inference_mode():
        for m in models.values():
            m.encode_image(x[:2])
        for _ in range(repeats):
            for p, m in models.items():
                wall, cpu = time.perf_counter(), time.process_time()
                m.encode_image(x)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                w, c = batch / wall, batch / (cpu / torch.get_num_threads())
                best[p] = (max(best[p][0], w), max(best[p][1], c))
    path.unlink()
    print(f"\nViT-B-16 10-band image tower, batch {batch}, best of {repeats} (images/s):")
    for p, (w, c) in best.items():
        print(f"  {p:5s} wall {w:6.2f}   by CPU time {c:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    info = cpu_info()
    print(f"machine: {info.kind}; load average {os.getloadavg()[0]:.2f}; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    agreement(args.n_per_class, args.seed)
    if not args.skip_speed:
        speed(args.repeats, args.batch)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
