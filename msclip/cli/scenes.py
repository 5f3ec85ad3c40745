"""``msclip-scenes`` (``python -m msclip.synthetic``): write synthetic Sentinel-2 L2A data.

Subcommands::

    msclip-scenes examples --out benchmark_datasets/examples --seed 0
    msclip-scenes dataset --out DIR --n-per-class 100 --size 64 --seed 0
    msclip-scenes dense --out DIR --n-per-class 20 --size 64 --seed 0
    msclip-scenes scene --out DIR --size 1024 --seed 0
    msclip-scenes classes

Exit status: 0 on success, 2 on a usage error or a refused argument (one ``error: ...`` line on
standard error). The generator itself is :mod:`msclip.synthetic`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from msclip.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    finish_parser,
    fraction,
    parse_subcommand_args,
    plural,
    positive_int,
    run_cli,
    seed_int,
)

__all__ = ["build_parser", "main", "parse_args"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``error: ...`` line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


#: The output folder's flag, and the spelling of msclip-train and msclip-finetune.
OUT = ("--out", "--output-dir")


def _add_dataset_args(parser: argparse.ArgumentParser, n_per_class: int) -> None:
    """``--out``, ``--n-per-class``, ``--size`` and ``--seed`` of the tile-dataset commands."""
    parser.add_argument(*OUT, required=True, type=Path, help="dataset root folder")
    parser.add_argument("--n-per-class", type=positive_int, default=n_per_class,
                        help=f"tiles per class (default {n_per_class})")  # fmt: skip
    parser.add_argument(
        "--size", type=positive_int, default=64, help="tile side in pixels (default 64)"
    )
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")


def _add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default on)")  # fmt: skip


def build_parser(prog: str = "msclip-scenes") -> argparse.ArgumentParser:
    """The argument parser of ``msclip-scenes`` / ``python -m msclip.synthetic``."""
    parser = _Parser(
        prog=prog,
        description="Generate synthetic Sentinel-2 L2A tiles with land-cover labels and captions.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser(
        "examples", help="write the shipped sample tiles (flat folder + captions.csv)"
    )
    ex.add_argument(*OUT, required=True, type=Path, help="output folder")
    ex.add_argument("--n", type=positive_int, default=16, help="number of tiles (default 16)")
    ex.add_argument(
        "--size", type=positive_int, default=128, help="tile side in pixels (default 128)"
    )
    ex.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    ds = sub.add_parser(
        "dataset", help="write a class-folder dataset with captions.csv and labels.csv"
    )
    _add_dataset_args(ds, n_per_class=100)
    ds.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                    help="classes to generate (default: all; '_' may replace spaces)")  # fmt: skip
    ds.add_argument("--layout", choices=("folders", "flat"), default="folders",
                    help="one folder per class (EuroSAT-like, default) or flat")  # fmt: skip
    _add_progress_arg(ds)
    de = sub.add_parser(
        "dense",
        help="write tiles with land-cover label and vegetation-cover target rasters "
        "(images/, labels/, targets/, index.csv with seeded train/val/test splits)",
    )
    _add_dataset_args(de, n_per_class=20)
    de.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                    help="main classes of the tiles (default: all)")  # fmt: skip
    de.add_argument("--splits", nargs=3, type=fraction, default=[0.8, 0.1, 0.1],
                    metavar=("TRAIN", "VAL", "TEST"),
                    help="split fractions per class (default 0.8 0.1 0.1)")  # fmt: skip
    _add_progress_arg(de)
    sc = sub.add_parser(
        "scene",
        help="write one large scene of several land-cover regions with its label and target "
        "rasters (same layout as dense, split test)",
    )
    sc.add_argument(*OUT, required=True, type=Path, help="output root folder")
    sc.add_argument(
        "--size", type=positive_int, default=1024, help="scene side in pixels (default 1024)"
    )
    sc.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    sc.add_argument("--region-size", type=positive_int, default=128,
                    help="typical side of a land-cover region in pixels (default 128)")  # fmt: skip
    sc.add_argument("--name", default="scene", help="file stem of the rasters (default scene)")
    sub.add_parser("classes", help="list the classes, their synonyms and spectral sources")
    return finish_parser(parser)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; usage errors exit with status 2 (``SystemExit``)."""
    return parse_subcommand_args(build_parser(), argv)


def _run(args: argparse.Namespace) -> int:
    from msclip import synthetic
    from msclip.io import check_output

    if args.command != "classes":  # a file or an unwritable folder in the way: said at once
        check_output(args.out, kind="dir", param="out_dir")
    if args.command == "examples":
        summary = synthetic.generate_examples(args.out, n=args.n, size=args.size, seed=args.seed)
        print(f"wrote {plural(summary.n_images, 'example tile')} and {summary.captions_csv}")
    elif args.command == "dataset":
        summary = synthetic.generate_dataset(
            args.out, args.classes, args.n_per_class, args.size, args.seed, args.layout,
            progress=args.progress,
        )  # fmt: skip
        print(
            f"wrote {plural(summary.n_images, 'tile')} of "
            f"{plural(len(summary.counts), 'class', 'classes')}, "
            f"{summary.captions_csv} and {summary.labels_csv}"
        )
    elif args.command in ("dense", "scene"):
        if args.command == "dense":
            dense = synthetic.generate_dense_dataset(
                args.out, args.classes, args.n_per_class, args.size, args.seed, args.splits,
                progress=args.progress,
            )  # fmt: skip
        else:
            dense = synthetic.write_scene(
                args.out, args.size, args.seed, region_size=args.region_size, name=args.name
            )
        splits = ", ".join(f"{n} {s}" for s, n in dense.splits.items())
        what = "its label and target" if dense.n_images == 1 else "labels and targets"
        print(
            f"wrote {plural(dense.n_images, 'image')} with {what} ({splits}), "
            f"{dense.index_csv} and {dense.classes_csv}"
        )
    else:
        for i, cls in enumerate(synthetic.CLASSES):
            print(f"{i:2d} {cls:13s} synonyms: {', '.join(synthetic.CLASS_SYNONYMS[cls])}")
            print(f"   {'':13s} spectra: {synthetic.CLASS_SOURCES[cls]}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``msclip-scenes``; returns the exit status (0 ok, 2 usage or refused argument)."""
    return run_cli(argv, parse_args, _run, flags={"out_dir": "--out", "splits": "--splits"})


if __name__ == "__main__":
    from msclip.cli.common import exit_process

    exit_process(main())
