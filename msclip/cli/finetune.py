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

Every option of :class:`msclip.heads.finetune.FinetuneRunConfig` is a flag (``--print-config``
shows them all as YAML). Outputs: ``<output-dir>/<method>/head.safetensors`` (head only, bound to
the encoder's fingerprint; use it with ``msclip-inference --run-classification --head``),
LoRA adapters or the fine-tuned tower, ``history.csv``, ``predictions.csv``, the protocol card
``<output-dir>/protocol.yaml``, and one metric record per method in ``--save-path`` merged with
the records of ``evaluation.py`` into ``summary.csv`` and ``report.md``.

Exit status: 0 done; 1 done, but some images could not be read (named, skipped, counted);
2 bad options or data (reported before any work); 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from msclip.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    add_dataclass_args,
    config_from_namespace,
    run_cli,
    status,
)
from msclip.heads.runconfig import FinetuneRunConfig

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one kebab-case flag per run option, plus ``--config``."""
    p = argparse.ArgumentParser(
        prog="msclip-finetune",
        description="Probes (kNN, logistic, ridge, linear, text-initialised) on cached frozen "
        "features and fine-tuning of the image tower (LoRA, last-n, full, scratch) on labelled "
        "images: a benchmark dataset, a CSV table or a folder per class.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    p.add_argument(
        "--print-config", action="store_true", help="print the effective options as YAML and exit"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_dataclass_args(p, FinetuneRunConfig)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line into ``cfg`` (defaults < ``--config`` < flags) and the program
    flags."""
    ns = vars(build_parser().parse_args(argv))
    yaml_path = ns.pop("config", None)
    program = {k: bool(ns.pop(k, False)) for k in ("print_config", "quiet", "verbose")}
    cfg = config_from_namespace(FinetuneRunConfig(), ns, yaml_path)
    if program["quiet"]:
        cfg.progress = False
    return argparse.Namespace(cfg=cfg, argv=list(argv or []), **program)


def _fmt(v: object) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _run(args: argparse.Namespace) -> int:
    cfg: FinetuneRunConfig = args.cfg
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return EXIT_OK
    cfg.validate()
    from tabulate import tabulate
    from tqdm.contrib.logging import logging_redirect_tqdm

    from msclip.heads.finetune import run_finetune

    status(args, f"loading {cfg.model_name or cfg.ckpt_path} and the data ...")
    with logging_redirect_tqdm():
        result = run_finetune(cfg, command=["msclip-finetune", *args.argv])
    d = result.data
    sizes = ", ".join(f"{s} {len(ix)}" for s, ix in d.splits.items())
    n = len(d.names)
    unit = ("output" if n == 1 else "outputs") if d.task == "regression" else (
        "class" if n == 1 else "classes")  # fmt: skip
    print(f"{d.name}: {d.task}, {n} {unit}; {sizes}")
    rows = [
        [r["method"], r["metric"], r["value"],
         f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r["ci_low"] is not None else "-",
         r["n_train"], r["n_test"], r["seconds"]]
        for r in result.table()
    ]  # fmt: skip
    print(
        tabulate(
            rows,
            headers=["method", "metric", "value", "95% CI", "train", "test", "s"],
            floatfmt=".4f",
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
            f"warning: {len(result.unreadable)} image(s) could not be read or were skipped and "
            f"were left out: {shown}{' ...' if len(result.unreadable) > 5 else ''}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def _flags() -> dict[str, str]:
    out = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(FinetuneRunConfig)}
    out.update(images="--dataset, --csv or --folders", head="--head")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``msclip-finetune``; returns the exit status (0 ok, 1 unreadable images, 2 bad
    options or data)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def parse(a: list[str]) -> argparse.Namespace:
        ns = parse_args(a)
        ns.argv = a
        return ns

    return run_cli(argv, parse, _run, flags=_flags())


if __name__ == "__main__":
    sys.exit(main())
