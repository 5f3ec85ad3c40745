"""``python -m msclip.cli.demo``: regenerate the ``msclip-demo`` model from nothing.

Generates the training scenes and captions (:func:`msclip.synthetic.demo.prepare_data`), trains
the ``msclip-demo`` architecture from random weights with ``msclip-train`` and the options of
:data:`msclip.synthetic.demo.TRAIN_ARGS`, and writes a JSON card recording how it was made beside
the result; ``--install`` replaces the shipped ``msclip/weights/msclip-demo.safetensors`` with it.
The model is trained on generated scenes only and is **not for real use**.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from msclip.cli.common import positive_int, run_cli, seed_int
from msclip.io import atomic_write, write_json

__all__ = ["main"]


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m msclip.cli.demo", description="Regenerate the msclip-demo model."
    )
    ap.add_argument("--out", default="runs/msclip-demo", help="work folder (data, checkpoints)")
    ap.add_argument(
        "--n-per-class", type=positive_int, default=200, help="generated tiles per class"
    )
    ap.add_argument("--size", type=positive_int, default=64, help="tile side in pixels")
    ap.add_argument("--data-seed", type=seed_int, default=1, help="seed of the generated scenes")
    ap.add_argument("--epochs", type=positive_int, default=20)
    ap.add_argument("--install", action="store_true",
                    help="replace the shipped msclip/weights/msclip-demo.safetensors (and its "
                         "card) with the result; without it the result stays in --out")  # fmt: skip
    args = ap.parse_args(argv)
    from msclip.synthetic.demo import TRAIN_ARGS

    least = _least_n_per_class(TRAIN_ARGS)
    if args.n_per_class < least:  # said before generating, and with the flag this command has
        ap.error(
            f"--n-per-class {args.n_per_class} gives too few training pairs for the recipe's "
            f"batch size ({_flag(TRAIN_ARGS, '--batch-size')}) after its validation share; "
            f"use --n-per-class {least} or more (default 200)"
        )
    return args


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _least_n_per_class(train_args: list[str]) -> int:
    """The fewest tiles per class whose training part fills one batch of the recipe (the
    validation part is ``round(n * val_fraction)`` of the ``n`` tiles, as in msclip-train)."""
    from msclip.synthetic import CLASSES

    batch, val = int(_flag(train_args, "--batch-size")), float(_flag(train_args, "--val-fraction"))
    k = 1
    while (n := k * len(CLASSES)) - round(n * val) < batch or round(n * val) < 2:
        k += 1
    return k


def _run(args: argparse.Namespace) -> int:
    from msclip.cli.train import main as train_main
    from msclip.synthetic.demo import TRAIN_ARGS, WEIGHTS, prepare_data

    out = Path(args.out)
    start = time.time()
    table = prepare_data(out / "data", args.n_per_class, args.size, args.data_seed)
    run = out / "run"
    # "--resume latest" continues an interrupted run in the same work folder (fresh otherwise).
    train_argv = [*TRAIN_ARGS, "--train-data", str(table), "--epochs", str(args.epochs),
                  "--output-dir", str(run), "--resume", "latest"]  # fmt: skip
    code = train_main(train_argv)
    if code != 0:
        return code
    elapsed = time.time() - start
    final = run / "final.safetensors"
    metrics: dict = {}
    if (run / "metrics.csv").exists():
        with open(run / "metrics.csv", newline="") as f:
            metrics = list(csv.DictReader(f))[-1]
    card = {
        "model": "msclip-demo",
        "warning": "trained on generated scenes only; not for real use",
        "command": " ".join(["python -m msclip.cli.demo", *args.argv]),
        "train_args": train_argv,
        "data": {
            "generator": "msclip.synthetic",
            "n_per_class": args.n_per_class,
            "size": args.size,
            "seed": args.data_seed,
        },
        "wall_time_s": round(elapsed, 1),
        "final_validation": metrics,
        "size_bytes": final.stat().st_size,
    }
    print(json.dumps(card, indent=2))
    if args.install:
        WEIGHTS.mkdir(exist_ok=True)
        atomic_write(WEIGHTS / "msclip-demo.safetensors",
                     lambda tmp: shutil.copyfile(final, tmp), ".safetensors")  # fmt: skip
        write_json(WEIGHTS / "msclip-demo.json", card, indent=2)
        print(f"installed {WEIGHTS / 'msclip-demo.safetensors'}")
    else:
        write_json(out / "msclip-demo.json", card, indent=2)
        print(f"model: {final} (card {out / 'msclip-demo.json'}); the shipped msclip-demo is "
              "unchanged: use this one with --ckpt-path, or re-run with --install")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status (0 ok, 1 training failed, 2 usage)."""
    return run_cli(argv, _parse, _run)


if __name__ == "__main__":
    from msclip.cli.common import exit_process

    exit_process(main())
