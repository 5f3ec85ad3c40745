"""Command line of contrastive pretraining: ``msclip-train`` / ``python -m msclip.train``.

Examples::

    msclip-train --train-data data/captions.csv --model msclip-tiny --epochs 5
    msclip-train --config run.yaml --batch-size 256 --accum-steps 8
    torchrun --nproc_per_node=2 -m msclip.train --config run.yaml
    msclip-train --config run.yaml --resume latest

Every option of :class:`msclip.train.config.TrainConfig` is a flag; ``--print-config`` shows the
effective configuration as YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import NoReturn

from msclip.cli.common import (
    EXIT_PARTIAL,
    EXIT_USAGE,
    RANDOM_WEIGHTS,
    add_dataclass_args,
    config_flags_note,
    config_from_namespace,
    finish_parser,
    run_cli,
    setup_logging,
)
from msclip.errors import BadSampleError, ConfigError, OutputPathError, WeightsNotFoundError
from msclip.train.config import TrainConfig
from msclip.wording import plural

__all__ = ["build_arg_parser", "config_from_args", "main"]

logger = logging.getLogger(__name__)


#: Flags of the other msclip programs and of open_clip's training -> how this program says
#: the same.
OTHER_PROGRAMS_FLAGS = {
    "--model-name": "--model names the architecture here, and --init its weights",
    "--ckpt-path": "--init takes the checkpoint file here",
    "--pretrained": "--init pretrained loads the model's published weights here",
    "--no-pretrained": "--init random gives random weights here (the default)",
    "--save-path": "--output-dir is the folder of the run's files here",
    # open_clip's training flags (its users' habits)
    "--lock-text": "--trainable visual trains the image tower alone, the text tower frozen",
    "--lock-image": "--frozen-patterns 'visual.*' freezes the image tower",
    "--csv-img-key": "--image-column names the image column here",
    "--csv-caption-key": "--caption-columns names the caption column(s) here",
    "--csv-separator": "the separator is told from the table's header line here (comma, tab "
    "or semicolon)",
    "--wd": "--weight-decay here",
    "--save-frequency": "--save-every N writes a checkpoint every N steps here (default: at "
    "every epoch's end)",
    "--val-frequency": "--val-every N validates every N epochs here",
    "--accum-freq": "--accum-steps splits the batch into chunks here; --batch-size stays the "
    "contrastive batch",
    "--logs": "--output-dir is the folder of the run's files here",
    "--lr-scheduler": "--schedule cosine or constant here (--restart-steps for restarts)",
}


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusal of a flag of another msclip program says this
    program's spelling of it."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            given = {a.split("=", 1)[0] for a in message.split(":", 1)[1].split()}
            hints = [
                f"{flag}: {text}" for flag, text in OTHER_PROGRAMS_FLAGS.items() if flag in given
            ]
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)


def build_arg_parser(prog: str = "msclip-train") -> argparse.ArgumentParser:
    """Argument parser with one kebab-case flag per :class:`TrainConfig` option."""
    parser = _Parser(
        prog=prog,
        description="Contrastive (continual) pretraining of a multispectral CLIP model on "
        "image-caption pairs; one process or many (torchrun).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as YAML and exit",
    )
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars or training log lines (--progress off); errors, warnings about "
        "inputs left out and the final summary on stdout remain",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="debug logging (also with --quiet, which still leaves out the progress bars "
        "and status lines)",
    )
    # --workers: the spelling of msclip-inference, -evaluation, -index and -finetune; a bare
    # --resume continues the run in --output-dir, as msclip-finetune's --resume does
    add_dataclass_args(
        parser, TrainConfig, aliases={"num_workers": ["--workers"]}, bare={"resume": "latest"}
    )
    return finish_parser(parser)


def config_from_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, bool]:
    """Parse the command line into a config (defaults < ``--config`` YAML < flags).

    Returns:
        The config (not yet validated) and whether ``--print-config`` was given.
    """
    args = _parse(list(argv) if argv is not None else None)
    return args.cfg, args.print_config


class _TrainFormatter(logging.Formatter):
    """Progress records with their time and source; warnings and errors as ``warning: ...``
    lines, as every msclip program writes them."""

    def __init__(self, prefix: str) -> None:
        super().__init__(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"{self.prefix}{record.levelname.lower()}: {record.getMessage()}"
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def _logging(args: argparse.Namespace) -> Callable[[], None]:
    # malformed values are refused when the group is joined (msclip.train.distributed), with
    # the variable at fault; here they only choose the log prefix and level
    raw_rank, raw_world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    rank = int(raw_rank) if raw_rank.isdigit() else 0
    world = int(raw_world) if raw_world.isdigit() else 1
    prefix = f"[rank {rank}] " if world > 1 else ""
    return setup_logging(
        verbose=getattr(args, "verbose", False),
        quiet=getattr(args, "quiet", False),
        level=logging.INFO if rank == 0 else logging.WARNING,
        formatter=_TrainFormatter(prefix),
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The config (defaults < ``--config`` < flags) and the program's own flags."""
    ns = vars(build_arg_parser().parse_args(argv))
    yaml_path = ns.pop("config", None)
    program = {k: bool(ns.pop(k, False)) for k in ("print_config", "quiet", "verbose")}
    cfg = config_from_namespace(TrainConfig(), ns, yaml_path)
    if program["quiet"]:
        cfg.progress = False
    return argparse.Namespace(cfg=cfg, **program)


def _run(args: argparse.Namespace) -> int:
    cfg = args.cfg
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    cfg.validate()
    from tqdm.contrib.logging import logging_redirect_tqdm

    from msclip.train.trainer import train

    with logging_redirect_tqdm():
        result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {plural(result.steps, 'step')}; final loss {result.last_loss:.4f}")
        if result.metrics:
            last = result.metrics[-1]
            keys = [
                k
                for k in ("val_loss", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zs_top1")
                if k in last
            ]
            print("validation: " + ", ".join(f"{k} {float(last[k]):.4f}" for k in keys))
        print(f"model: {result.final_checkpoint}")
        print(f"logs: {result.output_dir / 'train_log.csv'}, {result.output_dir / 'metrics.csv'}")
    return 0


def _flags() -> dict[str, str]:
    # every TrainConfig option is the flag of the same name in kebab case; the model's weights
    # come from --init here (create_model's "pretrained" is --ckpt-path in the other programs)
    flags = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
    flags.update(pretrained="--init", ckpt_path="--init", model_name="--model")
    flags[RANDOM_WEIGHTS] = "--init random"
    return flags


def _error_status(err: BaseException) -> int:
    config_flags_note(err, "train_data")
    # weights that are not there (offline without the file) are a usage error, as in every
    # msclip program: the fix is a download and --init, before any step is trained; so is a
    # pair table that cannot be used (unreadable, no usable pair, too few to split off a
    # validation set), found before the first step; and an output folder that cannot be written,
    # a usage error in every msclip program
    usage = (ConfigError, WeightsNotFoundError, BadSampleError, OutputPathError)
    return EXIT_USAGE if isinstance(err, usage) else EXIT_PARTIAL


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed run, 2 bad options)."""
    return run_cli(
        argv, _parse, _run, flags=_flags(), error_status=_error_status, logging_setup=_logging
    )


if __name__ == "__main__":
    from msclip.cli.common import exit_process

    exit_process(main())
