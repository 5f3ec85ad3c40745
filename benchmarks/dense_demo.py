"""Offline demonstration of the dense heads: decoders on the frozen msclip-demo encoder vs the
same decoders trained with the encoder from scratch, and zero-shot MaskCLIP maps.

Data (generated, nothing downloaded): ``msclip-scenes dense`` tiles of ``--size`` pixels with
their land-cover label rasters. Training and validation tiles come from seed ``--train-seed``;
the test tiles from a held-out seed ``--test-seed`` (other landscapes, other noise draws), and
nothing was tuned on them. The default seeds (2028, 2029) are used nowhere else: not by the
generated sets msclip-demo was trained on (seed 1) or scored on (2026), nor by the image-level
demonstration (2027). The run is :func:`msclip.heads.dense_grid.run_grid` (the same code as
``msclip-finetune grid``), so the table printed is the grid's ``comparison.md``.

Usage::

    python benchmarks/dense_demo.py --out /tmp/dense_demo            # the documented table
    python benchmarks/dense_demo.py --out /tmp/dd --n-per-class 3 --epochs 1   # a smoke run

Prints the CPU kind, the settings, the mIoU table (decoders x {frozen, scratch} plus the
zero-shot row) and the wall time. Resumable: finished runs are skipped when run again.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import time
from pathlib import Path

CLASSES = ["sea", "forest", "desert", "cropland", "urban", "snow and ice", "grassland",
           "wetland"]  # fmt: skip


def _write_index(root: Path, train_dir: Path, test_dir: Path) -> Path:
    rows = []
    for folder, keep in ((train_dir, ("train", "val")), (test_dir, ("test",))):
        with open(folder / "index.csv", newline="") as f:
            for r in csv.DictReader(f):
                split = r["split"] if keep != ("test",) else "test"
                if split not in keep:
                    split = "train"
                rows.append([str(folder / r["image"]), str(folder / r["label"]),
                             str(folder / r["target"]), split])  # fmt: skip
    index = root / "index.csv"
    with open(index, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "target", "split"])
        w.writerows(rows)
    shutil.copy(train_dir / "classes.csv", root / "classes.csv")
    return index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/msclip_dense_demo")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-per-class", type=int, default=12, help="training tiles per class")
    p.add_argument("--n-test", type=int, default=4, help="held-out test tiles per class")
    p.add_argument("--train-seed", type=int, default=2028)
    p.add_argument("--test-seed", type=int, default=2029)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--decoders", default="linear,fcn,upernet,segformer")
    p.add_argument("--modes", default="frozen,scratch")
    p.add_argument("--channels", type=int, default=64, help="fcn/upernet/segformer width")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from msclip.heads.dense_grid import run_grid
    from msclip.heads.runconfig import FinetuneRunConfig
    from msclip.synthetic import generate_dense_dataset

    t0 = time.perf_counter()
    root = Path(args.out)
    train_dir, test_dir = root / "train_data", root / "test_data"
    if not (train_dir / "index.csv").is_file():
        generate_dense_dataset(train_dir, CLASSES, args.n_per_class, args.size,
                               args.train_seed, (0.85, 0.15, 0.0))  # fmt: skip
    if not (test_dir / "index.csv").is_file():
        generate_dense_dataset(test_dir, CLASSES, args.n_test, args.size, args.test_seed,
                               (0.0, 0.0, 1.0))  # fmt: skip
    index = _write_index(root, train_dir, test_dir)
    cfg = FinetuneRunConfig(
        csv=str(index), task="segmentation", model_name="msclip-demo", epochs=args.epochs,
        batch_size=args.batch_size, decoder_channels=args.channels, output_dir=str(root / "runs"),
        save_path=str(root / "results"), dataset_name="generated-dense", progress=False,
        seed=0, cache_images=True,
    )  # fmt: skip
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print(f"data: {len(CLASSES)} tile classes x {args.n_per_class} tiles (seed "
          f"{args.train_seed}, train/val) + {args.n_test} per class (held-out seed "
          f"{args.test_seed}, test), {args.size} px; epochs {args.epochs}, batch "
          f"{args.batch_size}, decoder width {args.channels}")  # fmt: skip
    from msclip.errors import MSCLIPError

    try:
        res = run_grid(cfg, args.decoders.split(","), args.modes.split(","), zero_shot=True)
    except MSCLIPError as err:  # e.g. too few tiles for a validation split: one line, status 2
        print(f"error: {err} (this demo: raise --n-per-class, or --n-test)", file=sys.stderr)
        return 2
    print(res.markdown.read_text())
    print(f"wall time {time.perf_counter() - t0:.0f} s; ran {len(res.ran)}, skipped "
          f"{len(res.skipped)}; tables {res.csv}, {res.markdown}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
