"""``msclip-finetune`` / ``python -m msclip.finetune``: probes and fine-tuning of the image tower.

Examples::

    # kNN and logistic probes on a benchmark dataset of evaluation.py (its own split files)
    msclip-finetune --model-name Llama3-MS-CLIP-Base --dataset EuroSAT_MS --method knn logistic
    # a CSV table (path, label[, split]) with a text-initialised head and LoRA on the tower
    msclip-finetune --model-name msclip-demo --csv tiles.csv --method text-init \\
        --encoder-mode lora --epochs 20
    # regression: value column, scaled
    msclip-finetune --model-name msclip-demo --csv cover.csv --task regression \\
        --value-columns cover --scale 0.01 --method ridge linear
    # everything from a YAML file, flags override it; continue a killed run
    msclip-finetune --config run.yaml --resume
    # dense: segmentation on image / label raster pairs (msclip-scenes dense writes index.csv)
    msclip-finetune --model-name msclip-demo --csv dense/index.csv --task segmentation \
        --decoder upernet --encoder-mode frozen --class-weights auto
    # every decoder x encoder mode, one comparison table (finished runs are skipped)
    msclip-finetune grid --decoders linear,fcn,upernet,segformer \
        --encoder-modes frozen,scratch --model-name msclip-demo --csv dense/index.csv \
        --task segmentation --output-dir runs/grid

Every option of :class:`msclip.heads.finetune.FinetuneRunConfig` is a flag (``--print-config``
shows them all as YAML). Outputs: ``<output-dir>/<method>/head.safetensors`` (head only, bound to
the encoder's fingerprint; use it with ``msclip-inference --run-classification --head``),
LoRA adapters or the fine-tuned tower, ``history.csv``, ``predictions.csv``, the protocol card
``<output-dir>/protocol.yaml``, and one metric record per method in ``--save-path`` merged with
the records of ``evaluation.py`` into ``summary.csv`` and ``report.md``.

Dense tasks (``--task segmentation``, ``pixel-regression`` or ``multi-task`` with
``--dense-tasks``) write ``<output-dir>/<decoder>-<mode>/dense_head.safetensors`` (use it with
``msclip-inference --run-scene --head``), ``history.csv``, ``test_images.csv`` and one record per
task. ``msclip-finetune grid`` runs every ``--decoders`` x ``--encoder-modes`` combination and
writes ``<output-dir>/comparison.csv`` and ``comparison.md``.

Exit status: 0 done; 1 done, but some images could not be read or had fewer valid pixels than
``--min-valid`` (default 0.5 for folders and CSV tables, as ``msclip-inference``; none for
benchmark datasets) (named, skipped, counted);
2 bad options or data (reported before any work); 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from msclip.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    add_dataclass_args,
    config_flags_note,
    config_from_namespace,
    finish_parser,
    plural,
    report_precision,
    run_cli,
    status,
)
from msclip.errors import ConfigError
from msclip.heads.runconfig import FinetuneRunConfig

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one kebab-case flag per run option, plus ``--config``."""
    p = argparse.ArgumentParser(
        prog="msclip-finetune",
        description="Probes (kNN, logistic, ridge, linear, text-initialised) on cached frozen "
        "features and fine-tuning of the image tower (LoRA, last-n, full, scratch) on labelled "
        "images: a benchmark dataset, a CSV table or a folder per class. 'msclip-finetune grid "
        "...' runs every decoder x encoder mode of a dense task (see msclip-finetune grid "
        "--help).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    p.add_argument(
        "--print-config", action="store_true", help="print the effective options as YAML and exit"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="debug logging (also with --quiet, which still leaves out the progress bars "
        "and status lines)",
    )
    # --bands: the spelling of msclip-inference and msclip-index for the same names
    add_dataclass_args(p, FinetuneRunConfig, aliases={"input_bands": ["--bands"]})
    return finish_parser(p)


def build_grid_parser() -> argparse.ArgumentParser:
    """``msclip-finetune grid``: the run options plus the decoders and encoder modes."""
    p = build_parser()
    p.prog = "msclip-finetune grid"
    p.description = (
        "Run every decoder x encoder mode of a dense task (each in <output-dir>/<decoder>-<mode>, "
        "finished runs skipped, killed ones resumed) and write one comparison table "
        "(<output-dir>/comparison.csv and .md), with the zero-shot MaskCLIP row for "
        "segmentation when the class names are known."
    )
    p.add_argument(
        "--decoders",
        default=argparse.SUPPRESS,
        help="comma-separated decoders (default linear,fcn,upernet,segformer)",
    )
    p.add_argument(
        "--encoder-modes",
        default=argparse.SUPPRESS,
        help="comma-separated encoder modes (default frozen,scratch)",
    )
    p.add_argument(
        "--zero-shot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the MaskCLIP zero-shot row (segmentation with class names)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line into ``cfg`` (defaults < ``--config`` < flags) and the program
    flags (``grid`` as the first word: the grid command and its flags)."""
    argv = list(argv or [])
    grid = bool(argv) and argv[0] == "grid"
    parser = build_grid_parser() if grid else build_parser()
    ns = vars(parser.parse_args(argv[1:] if grid else argv))
    extra: dict[str, object] = {"grid": grid}
    if grid:
        extra["decoders"] = ns.pop("decoders", "linear,fcn,upernet,segformer").split(",")
        extra["encoder_modes"] = ns.pop("encoder_modes", "frozen,scratch").split(",")
        extra["zero_shot"] = bool(ns.pop("zero_shot", True))
    yaml_path = ns.pop("config", None)
    program = {k: bool(ns.pop(k, False)) for k in ("print_config", "quiet", "verbose")}
    loaded = None
    if yaml_path is not None:
        from msclip.options import load_yaml

        loaded = load_yaml(yaml_path)  # read once: its options, and which ones it gives
    cfg = config_from_namespace(FinetuneRunConfig(), ns, yaml_path, loaded)
    if program["quiet"]:
        cfg.progress = False
    # the options given explicitly: those that do not apply to the run are named (_run)
    extra["flags_given"] = list(ns)
    extra["yaml_given"] = []
    if yaml_path is not None:
        if isinstance(loaded, dict):
            extra["yaml_given"] = [str(k).replace("-", "_") for k in loaded if k not in ns]
        extra["yaml_path"] = str(yaml_path)
    return argparse.Namespace(cfg=cfg, argv=argv, **program, **extra)


def _check_applicable(args: argparse.Namespace) -> None:
    """Refuse flags that do nothing in this run (an option of another task, data source, method
    or encoder mode: it would be ignored without a word), and warn about such keys of the
    ``--config`` file (a YAML file may be shared by several runs)."""
    cfg: FinetuneRunConfig = args.cfg
    flags = cfg.inapplicable(getattr(args, "flags_given", []), grid=args.grid)
    if flags:
        lines = []
        for line in flags:
            name, reason = line.split(":", 1)
            lines.append(f"--{name.replace('_', '-')}:{reason}")
        raise ConfigError(
            "options that do not apply to this run (leave them out):\n  " + "\n  ".join(lines)
        )
    for line in cfg.inapplicable(getattr(args, "yaml_given", []), grid=args.grid):
        print(f"warning: {args.yaml_path}: {line} (ignored)", file=sys.stderr)


def _fmt(v: object, metric: str = "") -> str:
    """A metric's value as printed: significant digits for one in the targets' units (a
    regression's RMSE of 3e-6 is not 0.0000), four decimals for scores."""
    from msclip.eval.definitions import metric_format

    return (
        "-" if v is None else (format(v, metric_format(metric)) if isinstance(v, float) else str(v))
    )


def _precision_line(args: argparse.Namespace) -> Callable[[Any], None]:
    """What a run calls with its model once loaded: the ``precision:`` status line every program
    prints (not with ``--quiet``; a grid's runs print it once per precision)."""
    said: set[str] = set()

    def say(model: Any) -> None:
        line = f"{model.precision}|{getattr(model, 'precision_reason', '')}"
        if line not in said:
            said.add(line)
            report_precision(model, model.device, quiet=bool(getattr(args, "quiet", False)))

    return say


def _run(args: argparse.Namespace) -> int:
    cfg: FinetuneRunConfig = args.cfg
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return EXIT_OK
    cfg.validate()
    _check_applicable(args)
    from tabulate import tabulate
    from tqdm.contrib.logging import logging_redirect_tqdm

    from msclip.eval.definitions import interval_header
    from msclip.heads.finetune import run_finetune

    if args.grid:
        return _run_grid(args)
    status(args, f"loading {cfg.model_name or cfg.ckpt_path} and the data ...")
    with logging_redirect_tqdm():
        result = run_finetune(cfg, command=["msclip-finetune", *args.argv],
                              on_model=_precision_line(args))  # fmt: skip
    if cfg.dense:
        return _print_dense(result)
    d = result.data
    sizes = ", ".join(f"{s} {len(ix)}" for s, ix in d.splits.items())
    n = len(d.names)
    unit = plural(n, "output") if d.task == "regression" else plural(n, "class", "classes")
    print(f"{d.name}: {d.task}, {unit}; {sizes}")
    rows = [
        [r["method"], r["metric"], _fmt(r["value"], r["metric"]),
         f"[{_fmt(r['ci_low'], r['metric'])}, {_fmt(r['ci_high'], r['metric'])}]"
         if r["ci_low"] is not None else "-",
         r["n_train"], r["n_test"], r["seconds"]]
        for r in result.table()
    ]  # fmt: skip
    print(
        tabulate(
            rows,
            headers=[
                "method",
                "metric",
                "value",
                interval_header(cfg.confidence),
                "train",
                "test",
                "s",
            ],
            floatfmt=("", "", "", "", "", "", ".1f"),
            disable_numparse=[2],  # each value formatted for its metric above
        )
    )
    for m in result.methods:
        print(f"{m.label}: head {m.files['head']}")
    print(f"protocol card: {result.output_dir / 'protocol.yaml'}")
    print(f"records merged into {result.save_path / 'summary.csv'} and "
          f"{result.save_path / 'report.md'}")  # fmt: skip
    if result.unreadable:
        shown = ", ".join(result.unreadable[:5])
        print(
            f"warning: {len(result.unreadable)} image(s) could not be read or had fewer valid "
            f"pixels than --min-valid ({args.cfg.valid_share() or 0}) and were "
            f"left out: {shown}{' ...' if len(result.unreadable) > 5 else ''}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def _print_dense(result: object) -> int:
    from tabulate import tabulate

    d = result.data  # type: ignore[attr-defined]
    sizes = ", ".join(f"{s} {len(ix)}" for s, ix in d.splits.items())
    tasks = "; ".join(
        f"{t.name}: {t.kind}, {len(t.names)} {'classes' if t.kind == 'segmentation' else 'output'}"
        for t in d.tasks
    )
    print(f"{d.name}: {tasks}; images {sizes}")
    columns = {
        "segmentation": (("miou", "mIoU"), ("miou_micro", "mIoU micro"),
                         ("overall_accuracy", "OA"), ("mean_f1", "mean F1")),
        "pixel_regression": (("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R2")),
    }  # fmt: skip
    for task, cols in columns.items():
        rows = [
            [m.label, *[_fmt(m.result.metrics.get(k), k) for k, _ in cols], m.result.n_train,
             m.result.n_test, m.seconds]
            for m in result.methods  # type: ignore[attr-defined]
            if m.record["task"] == task
        ]  # fmt: skip
        if rows:
            headers = ["run", *[h for _, h in cols], "train", "test", "s"]
            floatfmt = ("", *[""] * len(cols), "", "", ".1f")
            metrics = list(range(1, 1 + len(cols)))  # each formatted for its metric above
            print(tabulate(rows, headers=headers, floatfmt=floatfmt, disable_numparse=metrics))
    first = result.methods[0]  # type: ignore[attr-defined]
    print(f"dense head: {first.files['head']}")
    print(f"protocol card: {result.output_dir / 'protocol.yaml'}")  # type: ignore[attr-defined]
    print(f"records merged into {result.save_path / 'summary.csv'} and "  # type: ignore[attr-defined]
          f"{result.save_path / 'report.md'}")  # type: ignore[attr-defined]  # fmt: skip
    return EXIT_OK


def _run_grid(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from msclip.heads.dense_grid import run_grid

    cfg: FinetuneRunConfig = args.cfg
    status(args, f"grid: {','.join(args.decoders)} x {','.join(args.encoder_modes)} ...")
    with logging_redirect_tqdm():
        res = run_grid(cfg, args.decoders, args.encoder_modes, args.zero_shot,
                       command=["msclip-finetune", *args.argv],
                       on_model=_precision_line(args))  # fmt: skip
    print(res.markdown.read_text(), end="")
    print(f"ran {len(res.ran)}, skipped {len(res.skipped)} finished run(s)")
    print(f"wrote {res.csv} and {res.markdown}")
    return EXIT_OK


def _flags() -> dict[str, str]:
    out = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(FinetuneRunConfig)}
    # pretrained: create_model's weight-file argument, which this program takes as --ckpt-path
    # (its --pretrained is a switch)
    out.update(images="--dataset, --csv, --folders or --image-dir/--label-dir", head="--head",
               decoders="--decoders", encoder_modes="--encoder-modes",
               pretrained="--ckpt-path")  # fmt: skip
    return out


def _error_status(err: BaseException) -> int:
    config_flags_note(err, "model_name")
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``msclip-finetune``; returns the exit status (0 ok, 1 unreadable images, 2 bad
    options or data)."""
    return run_cli(argv, parse_args, _run, flags=_flags(), error_status=_error_status)


if __name__ == "__main__":
    from msclip.cli.common import exit_process

    exit_process(main())
