"""Offline demonstration of the heads: msclip-demo's probes vs its zero-shot accuracy vs a
``scratch`` encoder, and LoRA vs a frozen encoder where zero-shot is weak.

Data: scenes of msclip's own generator (:mod:`msclip.synthetic`), 14 land-cover classes, with a
seed (2027) used neither to train ``msclip-demo`` (seed 1, ``msclip/weights/msclip-demo.json``)
nor by its held-out zero-shot benchmark (seed 2026). Classes are named as a user would type them
("farmland", "city", "snow" ...). Two tasks on the same tiles:

* **12 bands**: the generated Sentinel-2 L2A tiles as they are, the bands msclip-demo was
  trained on; zero-shot is strong here. kNN and logistic probes must reach at least its accuracy.
* **RGB sensor**: the same tiles as a 3-band camera would record them (B04, B03, B02 only). The
  model reads them by band adaptation (missing bands filled), and zero-shot classification,
  which leans on the near-infrared and short-wave infrared bands, becomes weak. A frozen tower
  keeps its 12-band features; LoRA on the tower's attention adapts them to the new sensor.

Every number is printed by ``msclip-finetune`` runs (the commands are printed too) with the same
seeded splits (train / val / test = 60 / 15 / 25 % per class), the test split scored with
bootstrap 95% intervals. The gradient-trained heads use AdamW at 1e-2 for the head (few hundred
samples give few steps), 30 epochs; LoRA (rank 8, alpha 16) adapts q, v and the MLP at 3e-3 with
layer decay 0.75; ``scratch`` re-initialises the tower and trains all of it at 1e-3. Usage::

    python benchmarks/heads_demo.py [--n-per-class 80] [--epochs 30] [--out runs/heads_demo]

A second call over the same ``--out`` reuses its scenes (the same ``--n-per-class``) and resumes
its runs (``msclip-finetune --resume``: finished methods kept, killed ones continued, other
settings refused with the options that differ).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SEED = 2027
RGB = ("B04", "B03", "B02")


def make_data(out: Path, n_per_class: int) -> tuple[Path, Path, Path]:
    """The 12-band tiles, their RGB copies and the class-name file."""
    import numpy as np

    from msclip.io import read_raster
    from msclip.synthetic import generate_dataset, write_tile
    from msclip.synthetic.classes import CLASSES, class_slug
    from msclip.synthetic.demo import USER_CLASS_NAMES

    full, rgb = out / "scenes_12band", out / "scenes_rgb"
    if not (full / "labels.csv").is_file():
        generate_dataset(full, n_per_class=n_per_class, size=64, seed=SEED)
    held = len(list(full.glob("*/*.tif"))) // len(CLASSES)
    if held != n_per_class:  # an earlier run's scenes: reused only where they are these
        raise SystemExit(
            f"error: {full} holds {held} tiles per class from an earlier run, not "
            f"--n-per-class {n_per_class}; give that run's --n-per-class {held}, another --out, "
            f"or remove {out} to start again"
        )
    for tif in sorted(full.glob("*/*.tif")):
        target = rgb / tif.parent.name / tif.name
        if target.is_file():
            continue
        r = read_raster(tif)
        idx = [r.bands.index(b) for b in RGB]
        write_tile(target, np.asarray(r.data[idx], dtype=np.uint16), band_names=RGB)
    names = out / "classes.txt"
    names.write_text("".join(f"{class_slug(c)} = {USER_CLASS_NAMES[c]}\n" for c in CLASSES))
    return full, rgb, names


def run(argv: list[str]) -> dict[str, dict]:
    """One msclip-finetune run; returns method label -> its record."""
    from msclip.cli.finetune import main

    print("$ msclip-finetune " + shlex.join(argv), flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    print(f"  ({time.perf_counter() - t0:.0f} s, exit {code})", flush=True)
    if code != 0:
        raise SystemExit(code)
    i = argv.index("--output-dir")
    protocol = Path(argv[i + 1]) / "protocol.yaml"
    import yaml

    doc = yaml.safe_load(protocol.read_text())
    return doc["methods"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-class", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the trained heads")
    ap.add_argument("--out", default="runs/heads_demo")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    full, rgb, names = make_data(out, args.n_per_class)
    print(f"data: 14 classes x {args.n_per_class} generated tiles (seed {SEED}), 64 x 64 px, "
          f"12-band and RGB copies, {time.perf_counter() - t0:.0f} s")  # fmt: skip
    common = [
        "--model-name", "msclip-demo", "--classes", str(names), "--seed", "0",
        "--val-fraction", "0.15", "--test-fraction", "0.25", "--save-path", str(out / "results"),
        "--cache-dir", str(out / "cache"), "--epochs", str(args.epochs), "--quiet",
        "--precision", "fp32",  # the same numbers on every CPU kind
        # a run of an earlier call in --out: finished methods kept, killed ones continued,
        # other settings refused by msclip-finetune, naming them
        "--resume",
    ]  # fmt: skip
    results: dict[str, dict[str, dict]] = {}
    for task, folder in (("12 bands", full), ("RGB sensor", rgb)):
        tag = "12band" if task == "12 bands" else "rgb"
        res: dict[str, dict] = {}
        data = ["--folders", str(folder), "--dataset-name", f"demo-{tag}", *common]
        res.update(run([*data, "--method", "zero-shot", "knn", "logistic", "text-init",
                        "--output-dir", str(out / f"{tag}-frozen")]))  # fmt: skip
        head = ["--method", "linear", "--lr", "1e-2"]
        res.update(run([*data, *head, "--output-dir", str(out / f"{tag}-linear")]))
        res.update(run([*data, *head, "--encoder-mode", "lora", "--encoder-lr", "3e-3",
                        "--lora-targets", "q", "v", "c_fc", "c_proj", "--cache-images",
                        "--output-dir", str(out / f"{tag}-lora")]))  # fmt: skip
        scratch = ["--encoder-mode", "scratch", "--encoder-lr", "1e-3", "--layer-decay", "1.0",
                   "--cache-images"]  # fmt: skip
        res.update(run([*data, *head, *scratch, "--output-dir", str(out / f"{tag}-scratch")]))
        results[task] = res
    order = ["zero-shot", "knn", "knn-unweighted", "logistic", "linear", "text-init",
             "linear-lora", "linear-scratch"]  # fmt: skip
    what = {
        "zero-shot": "zero-shot (prompts, no training)",
        "knn": "kNN k=20, T=0.07 (frozen)",
        "knn-unweighted": "kNN k=5 unweighted (frozen)",
        "logistic": "logistic, C swept (frozen)",
        "linear": "BN + linear, AdamW (frozen)",
        "text-init": "text-initialised linear (frozen)",
        "linear-lora": "BN + linear + LoRA r8 (q, v, MLP)",
        "linear-scratch": "BN + linear, scratch encoder",
    }
    print("\nTop-1 accuracy on the test split (95% bootstrap interval):\n")
    print(f"| method | {' | '.join(results)} |")
    print("|---|" + "---|" * len(results))
    for m in order:
        cells = []
        for task in results:
            r = results[task][m]
            ci = r["ci"]["top1_accuracy"]
            cells.append(f"{r['metrics']['top1_accuracy']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]")
        print(f"| {what[m]} | {' | '.join(cells)} |")
    a = results["12 bands"]
    b = results["RGB sensor"]
    zs = a["zero-shot"]["metrics"]["top1_accuracy"]
    checks = {
        "kNN >= zero-shot (12 bands)": a["knn"]["metrics"]["top1_accuracy"] >= zs,
        "logistic >= zero-shot (12 bands)": a["logistic"]["metrics"]["top1_accuracy"] >= zs,
        "LoRA > frozen linear (RGB sensor)": b["linear-lora"]["metrics"]["top1_accuracy"]
        > b["linear"]["metrics"]["top1_accuracy"],
    }
    print()
    for k, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {k}")
    summary = {t: {m: r[m]["metrics"]["top1_accuracy"] for m in order} for t, r in results.items()}
    (out / "demo_table.json").write_text(json.dumps(summary, indent=1))
    print(f"\nrecords, summary.csv and report.md: {out / 'results'}; "
          f"total {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
