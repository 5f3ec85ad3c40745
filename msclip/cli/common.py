"""Pieces shared by every msclip command-line program.

One home for what the programs have in common: argument types, the model / execution / text-cache
/ query flags, a logging set-up that is undone when ``main`` returns, turning the model flags into a
model, table and CSV output, and :func:`run_cli`, the one wrapper that turns what a program raises
into its exit status and a one-line message.

Exit status of every msclip command:

=====  ==========================================================================================
0      success
1      the run finished, but some inputs failed and were reported (unreadable images, a failed
       dataset); ``--skip-bad`` makes unreadable images count as success. Also when no input
       could be used at all (every image skipped under ``--min-valid`` or unreadable, even
       with ``--skip-bad``): one ``error:`` line says why, the CSV still lists every input
2      usage or input error: bad flags, missing or unusable files or models, an output that
       cannot be written; reported before the work where it can be known before
130    interrupted (Ctrl-C)
143    terminated (SIGTERM: ``kill``, a job scheduler, torchrun); clean-up runs as for Ctrl-C
141    the reader of the output went away (``msclip-... | head``): the program stops quietly,
       as Unix tools stopped by SIGPIPE do (128 + 13)
70     internal error: an exception no rule above covers (a defect in msclip or below it), with
       its traceback; never a verdict on the inputs (``EX_SOFTWARE`` of ``sysexits.h``)
=====  ==========================================================================================

Library errors never name command-line flags. An :class:`msclip.errors.MSCLIPError` may carry
``param``, the name of the argument at fault; :func:`run_cli` appends the flag that sets it (the
program's own table first, then :data:`FLAGS`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from msclip.errors import MSCLIPError, UsageError, not_a_file
from msclip.wording import plural

__all__ = [
    "DEFAULT_MODEL",
    "EARLY_CHECK_FILES",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_PIPE_CLOSED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "FLAGS",
    "LARGE_FACTOR",
    "LARGE_FIX",
    "RANDOM_WEIGHTS",
    "LargeCheck",
    "Terminated",
    "UsageError",
    "add_dataclass_args",
    "add_input_check_args",
    "add_model_args",
    "add_query_args",
    "add_run_args",
    "add_text_cache_args",
    "check_checkpoint",
    "config_flags_note",
    "config_from_namespace",
    "device_arg",
    "encode_query_set",
    "error_line",
    "exit_process",
    "exit_status_epilog",
    "finish_parser",
    "flag_hint",
    "flag_wording",
    "fraction",
    "image_options",
    "large_refusal",
    "load_model",
    "min_valid",
    "model_from_args",
    "model_inputs",
    "need_file",
    "no_pretrained_with_file",
    "non_negative_int",
    "output_path",
    "plural",
    "positive_int",
    "print_table",
    "read_queries",
    "refuse_large_images",
    "report_precision",
    "run_cli",
    "run_device",
    "seconds",
    "setup_logging",
    "status",
    "text_cache_for",
    "write_csv",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Llama3-MS-CLIP-Base"
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Status after SIGTERM (128 + 15: a job scheduler's stop, ``kill``, torchrun's shutdown).
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that its clean-up runs as after Ctrl-C: no
    temporary file left behind, an index commits what it staged."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


#: Status when standard output was closed by its reader (128 + SIGPIPE, as Unix tools).
EXIT_PIPE_CLOSED = 141
#: Status of an unexpected exception (``EX_SOFTWARE``): told apart from a run whose inputs failed.
EXIT_INTERNAL = 70

#: Library parameter name -> the flag that sets it (shared by every program).
FLAGS: dict[str, str] = {
    "pretrained": "--ckpt-path",
    "ckpt_path": "--ckpt-path",
    "model_name": "--model-name",
    "bands": "--bands",
    "input_bands": "--bands",
    "sensor": "--sensor",
    "layout": "--layout",
    "images": "--images",
    "scenes": "--scenes",
    "query_image": "--query-image",
    "class_names": "--class-names or --classes-file",
    "templates": "--templates",
    "tile_size": "--tile-size",
    "stride": "--stride",
    "dataset_dir": "--dataset-dir",
    "save_path": "--save-path",
    "precision": "--precision",
    "device": "--device",
}


# -- argument types -------------------------------------------------------------------------------
def _number(kind: Callable[[str], Any], text: str, expected: str) -> Any:
    """``kind(text)``, or argparse's error in the words of the flag's rule (argparse would say
    "invalid positive_int value", the name of the function)."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _number(int, text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _number(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a random seed, an integer in [0, 2**63 - 1]."""
    from msclip.options import MAX_SEED

    value = _number(int, text, f"an integer in [0, {MAX_SEED}]")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_SEED}], got {text}")
    return value


def device_arg(text: str) -> str | None:
    """argparse type: a torch device name; ``auto`` (as in ``msclip-train`` and
    ``msclip-finetune``) is ``None``, the device the run picks (a GPU where torch sees one)."""
    return None if text.strip().lower() == "auto" else text


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = _number(float, text, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0 (NaN or infinity would never come)."""
    value = _number(float, text, "a number of seconds >= 0")
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text}")
    return value


class BandNames(argparse.Action):
    """``--bands``: the names as separate words, or in one value separated by commas or spaces
    (``--bands B02,B03,B04,B08``, ``--bands "B02 B03"``). No band name holds either, and a band
    name is read from a value's first word (as a file's description ``B4, central wavelength
    665 nm`` names B04): ``B02,B03,B04,B08`` would otherwise be the one band B02."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        names = [n for v in values for n in re.split(r"[,\s]+", v) if n]
        if not names:
            parser.error(f"argument {option_string}: no band names in {values}")
        setattr(namespace, self.dest, names)


# -- flags ----------------------------------------------------------------------------------------
#: What exit status 1 means in each program (``None``: the program has no such status).
PARTIAL_MEANING: dict[str, str | None] = {
    "msclip-inference": "the run finished, but some inputs failed and were reported (unreadable "
    "images or tiles; also when no input could be used at all)",
    "msclip-index": "the run finished, but some inputs failed and were reported (unreadable "
    "images or tiles; also when no input could be used at all)",
    "msclip-evaluation": "the run finished, but a dataset failed or unreadable samples were left "
    "out (named in the records and report.md)",
    "msclip-train": "training failed after it started (too many bad samples, a failed step)",
    "msclip-finetune": "the run finished, but some images could not be read or had fewer valid "
    "pixels than --min-valid (named, skipped, counted)",
    "msclip-scenes": None,
}


def exit_status_epilog(prog: str) -> str:
    """The end of a program's ``--help``: its exit statuses (the table of this module's
    docstring, in the words of that program)."""
    partial = PARTIAL_MEANING.get(prog.split()[0], PARTIAL_MEANING["msclip-inference"])
    one = f"; 1 {partial}" if partial else ""
    return (
        f"exit status: 0 success{one}; 2 bad flags or input (missing or unusable files or "
        "models, an output that cannot be written), said before any work where it can be; "
        "70 internal error (a defect, with its traceback); 130 interrupted (Ctrl-C); 141 the "
        "reader of the output went away; 143 terminated (SIGTERM). The same for every msclip "
        "program: see docs/inference.md, 'Bad input and exit status'."
    )


def finish_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a program's parser what every msclip program has: ``--version`` and its exit
    statuses at the end of ``--help``, both in each subcommand too (``msclip-index search
    --version``, as after the program's name). Returns ``p``."""
    from msclip._version import __version__

    parsers = [p]
    while parsers:
        parser = parsers.pop()
        if "--version" not in parser._option_string_actions:
            parser.add_argument(
                "--version",
                action="version",
                version=f"{p.prog.split()[0]} (msclip) {__version__}",
                help="print the program's version and exit",
            )
        parser.epilog = exit_status_epilog(parser.prog)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
                # a subcommand's --help opens with what the program's --help says of it
                for choice in action._choices_actions:
                    sub = action.choices[choice.dest]
                    if sub.description is None and choice.help:
                        sub.description = choice.help[0].upper() + choice.help[1:] + "."
    return p


def add_model_args(
    p: argparse.ArgumentParser,
    default_model: str | None = DEFAULT_MODEL,
    inputs: bool = True,
    subsets: bool = False,
) -> Any:
    """``--model-name``, ``--ckpt-path``, ``--pretrained/--no-pretrained``, seed, device,
    precision and, with ``inputs``, the input-band flags (``--bands``, ``--sensor``,
    ``--layout``); ``subsets``: the seed also draws the program's random subsets. Returns the
    argument group, for program-specific model flags."""
    g = p.add_argument_group("model")
    default = f"default {default_model}, or" if default_model else "or"
    g.add_argument(
        "--model-name",
        default=None,
        help=f"registered model name or msclip .safetensors file ({default} the architecture "
        "stored in --ckpt-path)",
    )
    g.add_argument("--ckpt-path", default=None, help="checkpoint file with the weights")
    g.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load the model's published weights (--no-pretrained: random weights)",
    )
    g.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="random seed of the run (random weights with --no-pretrained"
        + (", random subsets" if subsets else "")
        + "; default 0)",
    )
    g.add_argument(
        "--device",
        type=device_arg,
        default=None,
        help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:1 ...",
    )
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        default="auto",
        help="auto (default): bf16 where the CPU (AVX512_BF16/AMX) or GPU computes it natively, "
        "else fp32 on a CPU and fp16 on a GPU; bf16 on a CPU without native bf16 is ~100x "
        "slower; int8: CPU image tower with int8 linear layers (opt-in, slightly different "
        "embeddings)",
    )
    if not inputs:
        return g
    g.add_argument(
        "--bands",
        "--input-bands",  # the spelling of msclip-train and msclip-finetune
        nargs="+",
        action=BandNames,
        default=None,
        help="band names of the input files' channels when the files do not name "
        "them (e.g. B02 B03 B04 B08, or B02,B03,B04,B08)",
    )
    g.add_argument("--sensor", default=None, help="sensor whose local band names apply")
    g.add_argument(
        "--layout",
        choices=("CHW", "HWC"),
        default=None,
        help="axis layout of .npy/.npz arrays that cannot be told from the shape",
    )
    return g


def add_query_args(g: Any, top_k: int) -> None:
    """``--query``, ``--queries-file``, ``--query-image`` and ``--top-k`` (retrieval, search)."""
    g.add_argument("--query", nargs="+", action="extend", default=None, help="text queries")
    g.add_argument("--queries-file", default=None, help="text file with one query per line")
    g.add_argument(
        "--query-image",
        nargs="+",
        action="extend",
        default=None,
        help="query images (image-to-image retrieval)",
    )
    g.add_argument(
        "--top-k", type=positive_int, default=top_k, help=f"results per query (default {top_k})"
    )


def add_text_cache_args(g: Any) -> None:
    """``--text-cache/--no-text-cache`` and ``--text-cache-dir``."""
    g.add_argument(
        "--text-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cache prompt and query embeddings on disk (default on)",
    )
    g.add_argument(
        "--text-cache-dir",
        default=None,
        help="text cache folder (default $MSCLIP_CACHE_DIR/text or ~/.cache/msclip/text)",
    )


#: Default of ``--min-valid``: images and tiles with fewer valid pixels are skipped and counted.
MIN_VALID = 0.5


def add_input_check_args(g: Any, nodata: bool = True) -> None:
    """``--min-valid`` (with the older ``--max-nodata``), ``--nodata`` and ``--strict-bands``:
    the same input rules for every mode."""
    g.add_argument(
        "--min-valid",
        type=fraction,
        default=None,
        help="skip (and count) images and tiles whose fraction of valid pixels (not nodata or "
        f"NaN in every band) is below this (default {MIN_VALID}); never scored",
    )
    g.add_argument("--max-nodata", type=fraction, default=None, help=argparse.SUPPRESS)
    if nodata:
        g.add_argument(
            "--nodata", type=float, default=None, help="nodata value overriding the files'"
        )
    g.add_argument(
        "--strict-bands",
        action="store_true",
        help="refuse inputs that lack most of the model's bands, or 8-bit pictures for a model "
        "of reflectance values (default: one warning per run)",
    )


def min_valid(args: argparse.Namespace) -> float:
    """The valid-pixel threshold from ``--min-valid`` or the older ``--max-nodata`` (``1 - x``)."""
    if args.min_valid is not None and args.max_nodata is not None:
        raise UsageError("give --min-valid or --max-nodata (the older form), not both")
    if args.max_nodata is not None:
        return 1.0 - args.max_nodata
    return MIN_VALID if args.min_valid is None else args.min_valid


def add_run_args(p: argparse.ArgumentParser, workers: int | None = None) -> Any:
    """Batch size, workers, progress and logging flags; returns the argument group.

    ``--batch-size`` and ``--workers`` left unset are chosen for the device once the model is
    loaded (:func:`load_model`; :func:`msclip.encode.auto_batch_size`, ``auto_workers``)."""
    g = p.add_argument_group("execution")
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per model call (default: 4 on a CPU; on a GPU the largest power of two "
        "that fits in half of its free memory, and small enough for every worker to read)",
    )
    default = "0 on a CPU; with a GPU the cores but two, up to 16"
    default = default if workers is None else str(workers)
    g.add_argument(
        "--workers",
        type=non_negative_int,
        default=workers,
        help=f"DataLoader worker processes for decoding (default {default})",
    )
    g.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars, status lines (loading, precision) or warnings about settings; "
        "errors, the notes and warnings about skipped, unreadable, unused or changed inputs and "
        "about results that may be wrong (an input lacking most bands, guessed band names, a "
        "head scoring other bands) (on stderr) and the run's summary (on stdout) remain",
    )
    g.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="debug logging (also with --quiet, which still leaves out the progress bars "
        "and status lines)",
    )
    return g


# -- logging --------------------------------------------------------------------------------------
class _LowerLevelFormatter(logging.Formatter):
    """``warning: ...`` lines; warnings and errors name the programs' flags where the library's
    message names its arguments (:func:`flag_wording`), as the run's summaries do."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        text = super().format(record)
        return flag_wording(text) if record.levelno >= logging.WARNING else text


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Python warnings as log records: msclip's own as their message alone (they say what and
    what to do); others with their category and source (no code line)."""
    from msclip.errors import MSCLIPWarning

    if category.__name__ == "NotGeoreferencedWarning":
        # rasterio says it for every open of a file without georeference; the programs say once
        # what it means for their outputs (msclip.tiling.georeference_warning)
        logger.debug("%s: %s", category.__name__, message)
        return
    if issubclass(category, MSCLIPWarning):
        text = str(message)
    else:
        text = f"{category.__name__}: {message} ({filename}:{lineno})"
    if getattr(category, "shown_when_quiet", False):
        from msclip.errors import shown_when_quiet

        shown_when_quiet.warning("%s", text)
    else:
        logging.getLogger("py.warnings").warning("%s", text)


def setup_logging(
    verbose: bool = False,
    quiet: bool = False,
    level: int | None = None,
    fmt: str = "%(levelname)s: %(message)s",
    datefmt: str | None = None,
    formatter: logging.Formatter | None = None,
) -> Callable[[], None]:
    """Send log records and Python warnings to stderr as ``warning: ...`` lines.

    Args:
        verbose: debug level.
        quiet: errors, and the warnings of :data:`msclip.errors.shown_when_quiet` only.
        level: the level otherwise (default ``WARNING``).
        fmt: record format (level names are written in lower case).
        datefmt: date format of ``%(asctime)s``.
        formatter: replaces the formatter made of ``fmt`` and ``datefmt``.

    Returns:
        A function that undoes the set-up (:func:`run_cli` calls it when the program returns, so
        calling ``main`` from Python leaves the process's logging as it was).
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter or _LowerLevelFormatter(fmt, datefmt))
    old_level = root.level
    root.addHandler(handler)
    from msclip.errors import shown_when_quiet

    shown_level = shown_when_quiet.level
    if verbose:
        root.setLevel(logging.DEBUG)
    elif quiet:  # errors, and the warnings of the logger that is shown all the same
        root.setLevel(logging.ERROR)
        shown_when_quiet.setLevel(logging.WARNING)
    else:
        root.setLevel(level or logging.WARNING)
    import warnings

    old_show = warnings.showwarning
    warnings.showwarning = _show_warning

    def restore() -> None:
        warnings.showwarning = old_show
        root.removeHandler(handler)
        root.setLevel(old_level)
        shown_when_quiet.setLevel(shown_level)

    return restore


# -- model ----------------------------------------------------------------------------------------
def check_checkpoint(args: argparse.Namespace) -> None:
    """Refuse a missing ``--ckpt-path`` (or a ``--model-name`` file), and ``--no-pretrained``
    with a checkpoint file as ``--model-name``, before any work."""
    ckpt = getattr(args, "ckpt_path", None)
    if ckpt is not None and not Path(ckpt).expanduser().is_file():
        raise UsageError(_missing(ckpt, "--ckpt-path"))
    name = getattr(args, "model_name", None)
    is_file_name = name is not None and name.endswith((".safetensors", ".pt", ".pth"))
    if is_file_name and not Path(name).expanduser().is_file():
        raise UsageError(_missing(name, "--model-name"))
    why = no_pretrained_with_file(name, getattr(args, "pretrained", None) is not False)
    if why is not None:
        raise UsageError(why)


def _missing(path: str | os.PathLike, flag: str) -> str:
    """Why the file a flag names cannot be read (missing, a folder, a broken link)."""
    from msclip.pretrained import missing_checkpoint_message

    return f"{missing_checkpoint_message(Path(path).expanduser())} ({flag})"


def no_pretrained_with_file(model_name: str | None, pretrained: bool) -> str | None:
    """The refusal of ``--no-pretrained`` (``pretrained`` false) with a checkpoint file as
    ``--model-name``, or ``None`` where the two agree: the file's weights would be loaded all the
    same, and the run would say random weights were asked for."""
    from msclip.factory import names_checkpoint_file

    if pretrained or not names_checkpoint_file(model_name):
        return None
    return (
        f"--no-pretrained asks for random weights, but --model-name {model_name} is a checkpoint "
        "file, whose weights are loaded: drop --no-pretrained to use the file, or give a "
        "registered model name as --model-name for random weights of its architecture"
    )


def model_from_args(
    model_name: str | None,
    ckpt_path: str | os.PathLike | None,
    pretrained: bool,
    default_name: str | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> Any:
    """Turn ``--model-name``, ``--ckpt-path`` and ``--pretrained`` into a model.

    Args:
        model_name: ``--model-name`` (a registered name or an msclip ``.safetensors``).
        ckpt_path: ``--ckpt-path``; an msclip ``.safetensors`` describes its own architecture, so
            ``--model-name`` may then be left out.
        pretrained: ``--pretrained/--no-pretrained`` (ignored with ``--ckpt-path``; refused
            with a checkpoint file as ``model_name``).
        default_name: model used when neither names an architecture.
        seed: seeds torch first, so ``--no-pretrained`` gives the same random weights each run.
        **kwargs: passed to :func:`msclip.create_model` (device, precision, ...).

    Raises:
        UsageError: no architecture can be determined, the checkpoint file does not exist, or
            ``--no-pretrained`` with a checkpoint file as ``--model-name``.
    """
    import torch

    from msclip.errors import CheckpointMismatchError
    from msclip.factory import create_model, describes_itself, names_checkpoint_file

    why = no_pretrained_with_file(model_name, pretrained)
    if why is not None:
        raise UsageError(why)
    if seed is not None:
        torch.manual_seed(seed)
    if ckpt_path is not None:
        ckpt = Path(ckpt_path).expanduser()
        if not ckpt.is_file():
            raise UsageError(_missing(ckpt, "--ckpt-path"))
        if model_name is None and describes_itself(ckpt):
            return create_model(ckpt, **kwargs)
        name = model_name or default_name
        if name is None:
            raise UsageError(f"{ckpt} does not describe its architecture; pass --model-name")
        try:
            return create_model(name, ckpt, **kwargs)
        except CheckpointMismatchError as err:
            if model_name is not None:
                raise
            # the default architecture was assumed: say so, and how to name the file's own
            raise CheckpointMismatchError(
                f"{err} {ckpt.name} does not describe its architecture, so the default model "
                f"{name} was assumed: name the checkpoint's architecture with --model-name"
            ) from err
    name = model_name or default_name
    if name is None:
        raise UsageError("no model given: pass --model-name (or --ckpt-path)")
    if names_checkpoint_file(model_name) and not describes_itself(Path(model_name).expanduser()):
        arch = default_name or "ViT-B-16"
        raise UsageError(
            f"{model_name} does not describe its architecture (no msclip metadata), so it cannot "
            f"be given as --model-name: give it as the checkpoint and name its architecture "
            f"(--model-name {arch} --ckpt-path {model_name})"
        )
    drawn = not pretrained and seed is not None and not names_checkpoint_file(name)
    return create_model(name, True if pretrained else None, seed=seed if drawn else None, **kwargs)


def status(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr (not with ``--quiet``)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def _check_before_loading(args: argparse.Namespace, default_name: str | None) -> Any:
    """Check what can fail cheaply before the model is built: band names, and that published
    weights are present (returns their path so they are not looked up twice)."""
    sensor = getattr(args, "sensor", None)
    if sensor is not None:
        from msclip.errors import BandError
        from msclip.spectral.bands import get_sensor

        try:
            get_sensor(sensor)
        except BandError as err:
            raise BandError(str(err), param="sensor") from None
    bands = getattr(args, "bands", None)
    if bands:
        from msclip.errors import BandError
        from msclip.spectral.bands import resolve_bands

        try:
            resolve_bands(bands, sensor)
        except BandError as err:
            if err.param is not None:
                raise
            raise type(err)(str(err), param="bands") from None
    if args.ckpt_path is not None or not args.pretrained:
        return None
    name = args.model_name or default_name
    if name is None or name.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")):
        return None
    from msclip.factory import get_model_entry
    from msclip.pretrained import resolve_weights

    return resolve_weights(get_model_entry(name))


#: Images with more pixels than this many model inputs are refused as one image (memory would
#: grow with the file): tile them with --run-scene, or read them reduced with --downsample.
LARGE_FACTOR = 64

#: How many image files :func:`refuse_large_images` judges from their headers before any is
#: encoded. The rest are refused when they are read, with the same message (the readers check
#: the size before reading pixels): a header costs ~30 us for a TIFF read directly and ~1 ms for
#: another format opened with GDAL on a local disk (more on network storage), so an archive of a
#: million tiles is not opened twice, once by every process.
EARLY_CHECK_FILES = 256

#: The fix the command line offers for a raster far larger than the model input (it replaces the
#: library's generic advice, which names no flag).
LARGE_FIX = (
    "map a large scene with --run-scene (tile by tile), or add --downsample to read it reduced "
    "to the model input"
)


def image_options(args: argparse.Namespace) -> Any:
    """The ``options`` of :func:`load_model` that bound one image's size: at most
    :data:`LARGE_FACTOR` model inputs, or read reduced with ``--downsample``."""

    def options(model: Any) -> dict[str, Any]:
        downsample = getattr(args, "downsample", False)  # msclip-index has no --downsample
        return {"max_pixels": LARGE_FACTOR * model.image_size**2, "downsample": downsample}

    return options


def _input_size(args: argparse.Namespace) -> int | None:
    """The model's input side from its registered architecture, without building the model
    (``None`` when the model is a checkpoint file: then the check waits for the model)."""
    name = args.model_name or (DEFAULT_MODEL if args.ckpt_path is None else None)
    if name is None or name.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")):
        return None
    from msclip.errors import MSCLIPError
    from msclip.factory import get_arch_config, get_model_entry

    try:
        size = get_arch_config(get_model_entry(name).arch)["vision_cfg"]["image_size"]
    except (MSCLIPError, OSError, KeyError, ValueError):
        return None
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def large_refusal(message: str, fix: str = LARGE_FIX) -> str:
    """The library's refusal of a large raster (met while reading) with its generic advice
    replaced by the program's ``fix`` (its flags)."""
    facts, sep, _ = message.partition(": cut it into tiles")
    return f"{facts}: {fix}" if sep else f"{message}; {fix}"


def refuse_large_images(
    args: argparse.Namespace,
    paths: Sequence[str],
    fix: str = LARGE_FIX,
    image_size: int | None = None,
    every_file: bool = False,
) -> bool:
    """Refuse an image far larger than the model input, before any is encoded: only the headers
    of GeoTIFFs and PNG/JPEG pictures are read (arrays, and files whose header cannot be read,
    are checked when they are read). GeoTIFFs and pictures pass with ``--downsample``.

    Only the first :data:`EARLY_CHECK_FILES` files are judged here, so that the common mistake
    (a scene given as an image, a small folder holding one) is refused at once; the caller's
    encoding must refuse the others as they are read (``abort_on=(RasterTooLargeError, ...)``
    with the preprocessing of :func:`image_options`).

    Args:
        args: the parsed flags.
        paths: the image files.
        fix: what the program offers instead (its flags).
        image_size: the model's input side; by default the registered architecture's, known
            before the model is built for a model name but not for a checkpoint file.
        every_file: judge every file (a few query images: their encoding would call such a file
            unreadable, without the fix).

    Returns:
        Whether the check ran: ``False`` when the input size is not known yet (call again with
        ``image_size=model.image_size`` once the model is loaded).

    Raises:
        UsageError: the first such image, with the flags that handle it.
    """
    size = image_size or _input_size(args)
    if size is None:
        return False
    max_pixels = LARGE_FACTOR * size**2
    from msclip.errors import RasterTooLargeError
    from msclip.io.readers import (
        GEOTIFF_EXTENSIONS,
        PICTURE_EXTENSIONS,
        RASTER_EXTENSIONS,
        check_pixels,
        tiff_size,
        too_large_picture,
    )

    for path in paths if every_file else paths[:EARLY_CHECK_FILES]:
        ext = Path(path).suffix.lower()
        try:
            if ext in RASTER_EXTENSIONS and not getattr(args, "downsample", False):
                # a TIFF's header alone (~30 us against ~1 ms for GDAL, and no import of
                # rasterio, 0.1 s, for a run whose files were read ahead), else GDAL's account
                found = (tiff_size(path) if ext in GEOTIFF_EXTENSIONS else None) or _gdal_size(path)
                if found is None:
                    continue  # named when the file is read
                height, width = found
            elif ext in PICTURE_EXTENSIONS:
                from PIL import Image

                try:
                    with Image.open(path) as img:
                        height, width = img.height, img.width
                except Image.DecompressionBombError as err:  # too large for Pillow to open
                    raise UsageError(large_refusal(str(too_large_picture(path, err)), fix)) from err
                if getattr(args, "downsample", False):
                    continue  # read reduced to the model input
            else:
                continue
        except (OSError, ValueError):  # named when the file is read
            continue
        try:
            check_pixels(path, height, width, max_pixels)  # the readers' own rule and words
        except RasterTooLargeError as err:
            raise UsageError(large_refusal(str(err), fix)) from err
    return True


def _gdal_size(path: str) -> tuple[int, int] | None:
    """``(height, width)`` of a raster as GDAL opens it; ``None`` where it cannot."""
    from rasterio.errors import RasterioError

    from msclip.io.readers import open_raster

    try:
        with open_raster(path) as src:
            return src.height, src.width
    except (OSError, ValueError, RasterioError):
        return None


@dataclass(frozen=True)
class LargeCheck:
    """Image files :func:`load_model` judges with :func:`refuse_large_images`: before the model
    is built when its input size is known from the flags, else (a checkpoint file) right after.

    Attributes:
        paths: the image files.
        fix: what the program offers instead (its flags).
        every_file: judge every file, not only the first :data:`EARLY_CHECK_FILES`.
    """

    paths: Sequence[str]
    fix: str = LARGE_FIX
    every_file: bool = False


def run_device(args: argparse.Namespace) -> str:
    """The device of a run: ``--device``, else ``cuda`` where torch sees a GPU, else ``cpu``."""
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    args: argparse.Namespace,
    default_name: str | None = DEFAULT_MODEL,
    options: Callable[[Any], dict[str, Any]] | None = None,
    large: LargeCheck | None = None,
) -> tuple[Any, Any, Any]:
    """``(model, preprocess, tokenizer)`` from the model flags (and the input-band flags).

    Band names, the presence of the weights and (with ``large``) image files far larger than the
    model input are checked before the model is built, and a status line says that the model is
    loading.

    Args:
        args: the parsed flags.
        default_name: model when none is named.
        options: a function of the model returning more options of ``model.preprocess``
            (``max_pixels``, ``downsample``).
        large: image files to refuse when far larger than the model input.
    """
    checked = True
    if large is not None:
        checked = refuse_large_images(args, large.paths, large.fix, every_file=large.every_file)
    name = args.model_name or (Path(args.ckpt_path).name if args.ckpt_path else default_name)
    import torch

    from msclip.factory import get_tokenizer
    from msclip.hardware import choose_precision

    device = run_device(args)
    args.device = device
    choose_precision(args.precision, device)  # a precision the device refuses: before loading
    status(args, f"loading {name} ...")
    weights = _check_before_loading(args, default_name)
    model = model_from_args(
        args.model_name, weights if weights is not None else args.ckpt_path, args.pretrained,
        default_name=default_name, seed=args.seed, device=device, precision=args.precision,
    )  # fmt: skip
    why = getattr(args, "_precision_why", None)  # a precision the program chose for the user
    if why is not None:
        from msclip.factory import FUSED_FP32_NOTE

        fused = model.precision_reason.endswith(FUSED_FP32_NOTE)  # auto's path, kept as it ran
        model.precision_requested = why[0]
        model.precision_reason = why[1] + (FUSED_FP32_NOTE if fused else "")
    if large is not None and not checked:  # a checkpoint file: its input size is known now
        refuse_large_images(
            args, large.paths, large.fix, model.image_size, every_file=large.every_file
        )
    from msclip.encode import auto_batch_size, auto_workers
    from msclip.memory import release_library_pages, steady_heap

    release_library_pages(device)  # on the CPU: library code that ran once (msclip.memory)
    if torch.device(device).type == "cpu":
        steady_heap()  # model calls reuse the memory the one before freed (msclip.memory)

    if getattr(args, "workers", 0) is None:
        args.workers = auto_workers(device)
    if getattr(args, "batch_size", 0) is None:
        items = len(large.paths) if large is not None and large.paths else None
        args.batch_size = auto_batch_size(
            model, device, workers=getattr(args, "workers", None), items=items
        )
    report_precision(model, device, quiet=getattr(args, "quiet", False))
    preprocess = model.preprocess(
        input_bands=getattr(args, "bands", None),
        layout=getattr(args, "layout", None),
        sensor=getattr(args, "sensor", None),
        strict_bands=getattr(args, "strict_bands", False),
        **(options(model) if options is not None else {}),
    )
    return model, preprocess, get_tokenizer(model)


@contextlib.contextmanager
def reads_ahead(args: argparse.Namespace, paths: Sequence[str]) -> Any:
    """The run's first image files read by a second process while the program starts
    (:mod:`msclip.io.prefetch`; ``None`` where that cannot start), stopped when the run ends.

    Started for runs that read whole files with the files' own band names (no ``--bands``, no
    ``--downsample``) and without DataLoader workers (``--workers`` 0 or automatic; a run that
    loads its model on a GPU, whose workers read instead, stops them once its workers are known:
    :func:`keep_reads_ahead`). Call it before torch is imported.
    """
    reads = None
    if (
        getattr(args, "bands", None) is None
        and not getattr(args, "downsample", False)
        and not getattr(args, "workers", None)
    ):
        from msclip.io.prefetch import start_reads

        reads = start_reads(
            paths, layout=getattr(args, "layout", None), sensor=getattr(args, "sensor", None),
            nodata=getattr(args, "nodata", None),
        )  # fmt: skip
    try:
        yield reads
    finally:
        if reads is not None:
            reads.close()


def keep_reads_ahead(args: argparse.Namespace, reads: Any) -> Any:
    """``reads`` (:func:`reads_ahead`) where the run encodes in this process, else stopped and
    ``None`` (DataLoader workers read the files)."""
    if reads is not None and getattr(args, "workers", 0):
        reads.close()
        return None
    return reads


def report_precision(model: Any, device: Any = None, quiet: bool = False) -> None:
    """Print the run's precision and why it was chosen (one ``precision:`` status line on stderr;
    none with ``quiet``: the run's records and summaries still carry the precision)."""
    if quiet:
        return
    asked = getattr(model, "precision_requested", None) or "fp32"
    where = f" on {device}" if device is not None else ""
    print(
        f"precision: {model.precision}{where} ({asked}: {getattr(model, 'precision_reason', '')})",
        file=sys.stderr,
    )


def text_cache_for(args: argparse.Namespace, model: Any) -> Any:
    """The model's text embedding cache, or ``None`` with ``--no-text-cache``."""
    if not args.text_cache:
        return None
    from msclip.text_cache import TextEmbeddingCache

    return TextEmbeddingCache.for_model(model, args.text_cache_dir)


def need_file(path: str | os.PathLike, what: str, flag: str, give: str) -> None:
    """Refuse a ``path`` given to ``flag`` that is missing (``"WHAT not found: PATH"``) or is a
    folder or a device (said as what it is, with ``give``, what to give instead)."""
    why = not_a_file(Path(path).expanduser(), give)
    if why == "not found":
        raise UsageError(f"{what} not found: {path} ({flag})")
    if why is not None:
        raise UsageError(f"{what} {path} {why} ({flag})")


# -- queries (retrieval and index search) -------------------------------------------------------
def read_queries(args: argparse.Namespace) -> list[str]:
    """Text queries from ``--query`` and ``--queries-file`` (one per line; blank lines and lines
    starting with ``#`` skipped, as in msclip's other text lists), without duplicates."""
    queries = list(args.query or [])
    if args.queries_file:
        p = Path(args.queries_file).expanduser()
        need_file(p, "queries file", "--queries-file", "a text file with one query per line")
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise UsageError(
                f"queries file {p} is not UTF-8 text ({err.reason} at byte {err.start}); save it "
                "as UTF-8 (--queries-file)"
            ) from None
        lines = (q.strip() for q in text.splitlines())
        from_file = [q for q in lines if q and not q.startswith("#")]
        if not from_file:
            raise UsageError(f"queries file {p} holds no query (one per line) (--queries-file)")
        queries += from_file
    empty = [q for q in queries if not q.strip()]
    if empty:
        raise UsageError("empty --query given")
    unique = list(dict.fromkeys(queries))
    if len(unique) < len(queries):
        from collections import Counter

        again = [q for q, n in Counter(queries).items() if n > 1]  # in the order given
        shown = ", ".join(repr(q) for q in again[:3]) + (
            f" and {len(again) - 3} more" if len(again) > 3 else ""
        )
        repeated = plural(len(queries) - len(unique), "repeated query", "repeated queries")
        print(
            f"note: {repeated} (given more than once in --query / --queries-file) searched "
            f"once: {shown}",
            file=sys.stderr,
        )
    return unique


def query_image_paths(args: argparse.Namespace) -> list[str]:
    """The files of ``--query-image`` (checked before the model is built).

    Raises:
        ImageSetError: a missing file or nothing readable, naming ``--query-image``.
    """
    if not getattr(args, "query_image", None):
        return []
    from msclip.errors import ImageSetError
    from msclip.io import list_images

    try:
        return list_images(args.query_image)
    except ImageSetError as err:
        raise ImageSetError(str(err), param="query_image") from None


def encode_query_set(
    args: argparse.Namespace,
    model: Any,
    preprocess: Any,
    tokenizer: Any,
    queries: Sequence[str],
    query_images: Sequence[str],
    large_fix: str = LARGE_FIX,
) -> tuple[Any, list[str]]:
    """L2-normalised embeddings ``[Q, D]`` of text queries then query images, and their names.

    Args:
        large_fix: what the program offers for a query image far larger than the model input
            (its flags), in place of the library's generic advice.

    Raises:
        UsageError: a query image cannot be read.
    """
    import numpy as np

    from msclip.encode import encode_images
    from msclip.zero_shot import encode_queries

    embs, names = [], []
    if queries:
        embs.append(encode_queries(model, tokenizer, queries, text_cache_for(args, model)).numpy())
        names += list(queries)
    if query_images:
        threshold = min_valid(args) if hasattr(args, "min_valid") else MIN_VALID
        res = encode_images(model, preprocess, query_images, args.batch_size, 0,
                            min_valid=threshold, nodata=getattr(args, "nodata", None))  # fmt: skip
        if res.failures:
            large = "RasterTooLargeError: "

            def why(reason: str) -> str:
                if reason.startswith(large):  # the program's flags, not the library's advice
                    return large_refusal(reason[len(large) :], large_fix)
                return reason

            raise UsageError(
                "query images cannot be read (--query-image): "
                + "; ".join(f"{f.name} ({why(f.reason)})" for f in res.failures)
            )
        if len(res.skipped):
            shown = "; ".join(
                f"{query_images[i]} ({v:.0%} valid)" for i, v in zip(res.skipped, res.skipped_valid)
            )
            raise UsageError(
                f"query images with fewer than {threshold:.0%} valid pixels (nodata or NaN): "
                f"{shown}; give a query image with data (--query-image), or lower --min-valid"
            )
        embs.append(res.embeddings)
        names += list(query_images)
    return np.concatenate(embs), names


# -- run configurations (dataclasses) as flags ----------------------------------------------------
def add_dataclass_args(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    skip: Sequence[str] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
    bare: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One kebab-case flag per field of the run-configuration dataclass ``cls``.

    Flags parse to strings (or lists of strings) and are converted by the config's own
    ``update`` (:func:`msclip.options.update_options`), so YAML values and flags follow one rule;
    booleans are ``--flag`` / ``--no-flag``. Use ``argument_default=argparse.SUPPRESS`` on the
    parser so that only the flags given on the command line override the YAML file.

    Args:
        parser: a parser or argument group.
        cls: the dataclass.
        skip: fields that get no flag.
        aliases: field name -> further flags that set it (the spelling the other msclip
            programs use for the same option).
        bare: field name -> the value its flag takes when given without one.

    Returns:
        Field name -> flag (for :func:`run_cli`'s hints).
    """
    import dataclasses
    import typing

    from msclip.options import field_help, option_types, unwrap_optional

    hints = option_types(cls)
    defaults = cls()
    flags = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        flags[f.name] = flag
        names = [flag, *(aliases or {}).get(f.name, ())]
        tp, optional = unwrap_optional(hints[f.name])
        default = getattr(defaults, f.name)
        shown = list(default) if isinstance(default, tuple) else default
        help_text = field_help(f)
        if default is not None and "default" not in help_text:  # unset, or said in the text
            help_text += f" (default: {shown!r})"
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, help=help_text)
        elif origin is tuple and Ellipsis not in typing.get_args(tp):
            parser.add_argument(*names, nargs=len(typing.get_args(tp)), metavar="V", help=help_text)
        elif origin in (list, tuple):
            parser.add_argument(
                *names,
                nargs="*" if not optional else "+",
                metavar="V",
                help=help_text,
                # band names split at commas, as the other programs' --bands (BandNames)
                **({"action": BandNames} if f.name.endswith("bands") else {}),
            )
        elif bare and f.name in bare:
            parser.add_argument(
                *names, nargs="?", const=bare[f.name], metavar=f.name.upper(), help=help_text
            )
        else:
            parser.add_argument(*names, metavar=f.name.upper(), help=help_text)
    return flags


def config_flags_note(err: BaseException, example: str) -> None:
    """After a run configuration's list of problems (a ``ConfigError`` naming its options by
    their field names, no single ``param``), say on stderr how those names are written as flags.

    Args:
        err: the error the run raised.
        example: a field of the configuration shown with its flag (``"train_data"``).
    """
    from msclip.errors import ConfigError

    if isinstance(err, ConfigError) and err.param is None:
        flag = "--" + example.replace("_", "-")
        print(
            f"note: every option is also a flag of the same name in kebab case ({example}: {flag})",
            file=sys.stderr,
        )


def config_from_namespace(
    config: Any,
    values: dict[str, Any],
    yaml_path: str | os.PathLike | None = None,
    yaml_values: Mapping[str, Any] | None = None,
) -> Any:
    """Fill a run configuration: its defaults, then the YAML file, then the given flags.

    Args:
        config: a fresh dataclass instance with an ``update(values, source)`` method.
        values: parsed flags (only those given: parse with ``argument_default=SUPPRESS``);
            ``--option none`` clears an optional list.
        yaml_path: the ``--config`` file.
        yaml_values: its options, when the caller has read it already (it is then not read
            again: one file, one content).

    Returns:
        ``config``, updated (not yet validated).

    Raises:
        ConfigError: unknown options and values of the wrong type, listed together with the
            value problems of the other options when ``config`` has ``problems(skip)``.
    """
    from msclip.errors import ConfigError
    from msclip.options import load_yaml, option_types, unwrap_optional

    problems: list[str] = []
    refused: set[str] = set()

    def update(values: dict[str, Any], source: str) -> None:
        """Set ``values``, keeping (not raising) what does not fit, so that every problem of the
        run's options is reported at once, not the type errors alone."""
        try:
            config.update(values, source=source)
        except ConfigError as err:
            problems.extend(getattr(err, "problems", [str(err)]))
            refused.update(getattr(err, "options", ()))

    if yaml_path is not None:
        update(load_yaml(yaml_path) if yaml_values is None else yaml_values, str(yaml_path))
    hints = option_types(type(config))
    cli: dict[str, Any] = {}
    for name, value in values.items():
        _, optional = unwrap_optional(hints[name])
        if optional and isinstance(value, list) and len(value) == 1 and value[0].lower() == "none":
            value = None
        cli[name] = value
    update(cli, "command line")
    if problems:
        check = getattr(config, "problems", None)  # the value checks, where a config has them
        if check is not None:
            problems.extend(check(skip=refused))
        raise ConfigError("bad configuration:\n  " + "\n  ".join(problems))
    return config


# -- outputs --------------------------------------------------------------------------------------
# Extensions of other table and data formats: a results table is written as CSV whatever its
# name, so ``--save-path hits.parquet`` gave a CSV named .parquet that pandas.read_parquet and GIS
# software could not open.
_NOT_CSV_SUFFIXES = (
    ".parquet", ".pq", ".tsv", ".tab", ".json", ".geojson", ".xlsx", ".xls", ".feather",
    ".arrow", ".gpkg", ".shp", ".npy", ".npz",
)  # fmt: skip


def output_path(save_path: str | None, default_name: str) -> Path:
    """``--save-path`` as a file: ``results/<default_name>`` when unset, inside it when a folder.

    Raises:
        UsageError: a file name with the extension of another format (the table is CSV).
    """
    if save_path is None:
        return Path("results") / default_name
    p = Path(save_path).expanduser()
    if p.is_dir() or save_path.endswith(os.sep):
        return p / default_name
    if p.suffix.lower() in _NOT_CSV_SUFFIXES:
        raise UsageError(
            f"--save-path {save_path}: the results table is written as CSV (comma-separated), "
            f"not {p.suffix}; give a .csv path (e.g. {p.with_suffix('.csv')})"
        )
    return p


def refuse_input_as_output(
    out: Path | Sequence[Path],
    inputs: Sequence[tuple[str, Any]],
    default_name: str,
    flag: str = "--save-path",
    beside: Sequence[Path] = (),
) -> None:
    """Refuse an output file that is one of the run's inputs (an image, the classes, templates
    or queries file, the weights): the atomic write would replace it by the table or map.

    Files are compared by identity (device and inode, through symbolic links), so an input given
    by another name (a link, a hard link, a relative path) is caught too. Nothing is read unless
    an output file exists already.

    Args:
        out: the output file (:func:`output_path`), or every file the run may write.
        inputs: ``(what, paths)`` pairs; ``paths`` may be ``None``, a path, a list of paths, or
            a function returning them (called only when an output exists: e.g. the weight files
            of a registered model name).
        default_name: the output's default file name, for the hint.
        flag: the flag that gave ``out``.
        beside: files written beside the output file ``out`` (its run record).

    Raises:
        UsageError: an output is the same file as an input.
    """
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    existing: dict[tuple[int, int], Path] = {}
    for o in [*outs, *beside]:
        try:
            st = os.stat(o)
        except OSError:  # not there yet (or unreadable): nothing to destroy
            continue
        existing[(st.st_dev, st.st_ino)] = Path(o)
    if not existing:
        return
    for what, given in inputs:
        if callable(given):
            given = given()
        for path in [given] if isinstance(given, (str, os.PathLike)) else given or []:
            try:
                st = os.stat(Path(path).expanduser())
            except (OSError, ValueError):  # a missing or unreadable input: not this file
                continue
            hit = existing.get((st.st_dev, st.st_ino))
            if hit is None:
                continue
            if len(outs) == 1 and Path(hit) != Path(outs[0]):  # a file beside the output
                raise UsageError(
                    f"{flag} {outs[0]}: the run also writes {hit}, which is {what} {path} of "
                    f"this run: writing it would destroy the input; give another file (e.g. "
                    f"results/{default_name})"
                )
            if len(outs) == 1:
                raise UsageError(
                    f"{flag} {hit} is {what} {path} of this run: writing the output there "
                    f"would destroy it; give another file (e.g. results/{default_name})"
                )
            raise UsageError(
                f"{flag} {hit.parent}: the run writes {hit.name} there, which is {what} {path} "
                f"of this run: writing it would destroy the input; give another folder (e.g. "
                f"results/{default_name})"
            )


def model_inputs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The files the model flags name, as inputs of :func:`refuse_input_as_output`: the
    checkpoint, an msclip model file, and the weight files of a registered model name."""
    from msclip.factory import names_checkpoint_file

    return [
        ("the checkpoint", args.ckpt_path),
        ("the model file", args.model_name if names_checkpoint_file(args.model_name) else None),
        (f"the weights of {args.model_name}", lambda: registered_weight_files(args.model_name)),
    ]


def registered_weight_files(name: str | None) -> list[Path]:
    """The weight files on this machine of a registered model name (the one shipped in the
    package, or those in the Hugging Face cache), without any download; ``[]`` for another
    name."""
    from msclip.pretrained import MODELS, WEIGHTS_DIR

    entry = MODELS.get(str(name)) if name is not None else None
    if entry is None:
        return []
    files = [WEIGHTS_DIR / entry.package_file] if entry.package_file else []
    if entry.hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in entry.filenames:
            with contextlib.suppress(Exception):  # a cache that cannot be read holds nothing
                found = try_to_load_from_cache(entry.hub_id, filename)
                if isinstance(found, str):
                    files.append(Path(found))
    return files


#: Float format of the programs' result tables (8 significant digits).
CSV_FLOATS = "%.8g"


def write_csv(df: Any, path: str | os.PathLike) -> Path:
    """Write a result table as CSV atomically (floats with 8 significant digits)."""
    from msclip.io import write_csv as _write

    return _write(df, path, float_format=CSV_FLOATS)


def parse_subcommand_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse a command line of a program with subcommands (``dest="command"``). A flag the
    subcommand does not know is refused by the subcommand's parser, so the usage and help it
    points to are the subcommand's (argparse's own refusal names the program only)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        subcommands = next(
            (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}
        )
        sub = subcommands.get(getattr(args, "command", None), parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def run_record_path(table: Path) -> Path:
    """Where the run record of a result table lives: beside it, ``<table name>.json``."""
    return table.with_name(table.name + ".json")


def write_table_and_record(
    df: Any,
    table: Path,
    model: Any,
    args: argparse.Namespace,
    program: str,
    mode: str,
    **facts: Any,
) -> list[Path]:
    """Write a result table (CSV, as :func:`write_csv`) and beside it the record of the run that
    produced it (:func:`run_record_path`), as one atomic pair: both are written to temporary
    files before either replaces an earlier run's, so a failed write never leaves a new table
    beside an old record or the reverse.

    The record holds the model as :meth:`msclip.MSCLIP.describe` gives it (name, checkpoint hash
    and path, bands, precision and why, preprocessing, fingerprint, seed of random weights), the
    device and CPU, ``facts`` (the mode's own settings and counts), library versions, the
    command line, its parsed flags and the working directory the paths in them are relative to.
    The table keeps its columns; the record says what made it.

    Returns:
        The table and the record.
    """
    import json

    from msclip.io.writers import atomic_write_all, csv_writer

    record = _run_record(table, model, args, program, mode, facts)
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    return atomic_write_all(
        [
            (table, csv_writer(df, float_format=CSV_FLOATS), ".csv"),
            (run_record_path(table), lambda tmp: Path(tmp).write_text(text, "utf-8"), ".json"),
        ]
    )


def _run_record(
    table: Path,
    model: Any,
    args: argparse.Namespace,
    program: str,
    mode: str,
    facts: dict[str, Any],
) -> dict[str, Any]:
    from datetime import datetime, timezone

    from msclip.hardware import library_versions
    from msclip.io import jsonable

    device = getattr(model, "device", None)
    hardware: dict[str, Any] = {"device": str(device)}
    if getattr(device, "type", "cpu") == "cpu":
        from msclip.hardware import cpu_info

        hardware["cpu"] = cpu_info().to_dict()
    else:
        import torch

        with contextlib.suppress(RuntimeError, AssertionError, ValueError):
            hardware["gpu"] = torch.cuda.get_device_name(device)
    flags = {
        k: v for k, v in sorted(vars(args).items())
        if k != "argv" and not k.startswith("_")
        and isinstance(v, (str, int, float, bool, list, tuple, type(None)))
    }  # fmt: skip
    record = {
        "program": program,
        "mode": mode,
        "table": table.name,
        "model": model.describe(),
        "hardware": hardware,
        **facts,
        "versions": library_versions(),
        "command": [program, *getattr(args, "argv", sys.argv[1:])],
        "arguments": flags,
        "cwd": os.getcwd(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return jsonable(_record_values(record))


def _record_values(x: Any) -> Any:
    """A run record's values as strict JSON keeps them: a NaN or infinite flag (``--nodata nan``)
    as its text (JSON has no such numbers, and ``null`` would read as "not given"), and a path
    that is not valid UTF-8 with its undecodable bytes written as ``\\xNN`` (the bytes stay
    legible; a lone surrogate would not be valid UTF-8)."""
    if isinstance(x, dict):
        return {k: _record_values(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_record_values(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, str):
        try:
            return x.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            return x.encode("utf-8", "backslashreplace").decode("ascii")
    return x


def _legible(value: Any) -> Any:
    """``value`` with each control character of a text (a newline, a tab, an escape, a line
    separator) written as Python escapes it (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``): a terminal
    would otherwise break the line, move the columns or take it as a command. Other values and
    texts without such characters are returned as they are."""
    if not isinstance(value, str) or not _CONTROL.search(value):
        return value
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], value)


#: Characters that break a table's lines or columns: C0 and C1 controls (tab, newline, escape,
#: DEL, NEL) and the line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def print_table(
    rows: list[list[Any]], headers: list[str], max_rows: int, total: int, floatfmt: str = ".4f"
) -> None:
    """Print a tabulate table of at most ``max_rows`` rows (nothing when there are no rows);
    ``floatfmt``: the numbers' format (``.4f`` suits scores and probabilities, not values in a
    user's units, which take significant digits). Control characters in a text (a file name
    holding a newline or a tab) are shown escaped, as ``\\n`` or ``\\t``, so that every row stays
    one line of aligned columns; the CSV keeps the names as they are."""
    if not rows:
        return
    from tabulate import tabulate

    shown = [[_legible(v) for v in row] for row in rows[:max_rows]]
    print(tabulate(shown, headers=[_legible(h) for h in headers], floatfmt=floatfmt))
    if total > max_rows:
        print(f"... {plural(total - max_rows, 'more row')} in the CSV")


# -- leaving ---------------------------------------------------------------------------------------
def exit_process(code: int | None) -> NoReturn:
    """End a command-line process with ``code`` without the interpreter's teardown.

    Python's own exit destroys every module and runs the static destructors of torch's C++
    libraries, which touches library pages never used by the run: measured +128 MB of peak
    resident memory (and time) with torch's CUDA wheel on a CPU. A finished command has nothing
    left to tear down, so this does what the exit needs, in the interpreter's order, and stops
    there: threading's exit hooks, which tell idle ``concurrent.futures`` workers (msclip's
    reading threads among them) to end, and the join of non-daemon threads (both
    ``threading._shutdown``, the interpreter's own first step of exiting; a join of non-daemon
    threads alone waited forever for idle executor workers), then the ``atexit`` callbacks
    (logging, multiprocessing, temporary files), a flush of stdout and stderr, then
    ``os._exit``. Only for the entry points of the programs: their ``main`` functions return the
    status as usual.
    """
    import atexit
    import signal
    import threading

    status = int(code or 0) if isinstance(code, int) or code is None else 1

    def leave_now(signum: int, frame: Any) -> None:
        # Ctrl-C again (or SIGTERM) while the process ends: it ends now, with no traceback of
        # the exit hook the signal fell in ("Exception ignored in atexit callback ...")
        os._exit(status or 128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: signals are not its own
            signal.signal(sig, leave_now)
    threading._shutdown()  # present in every supported Python (3.10 on)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # a stream the process was started without: nothing to flush
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away: nothing more can be said
            status = status or EXIT_PIPE_CLOSED
        except (OSError, ValueError):
            status = status or 1
    os._exit(status)


# -- the wrapper ----------------------------------------------------------------------------------
def _open_closed_std_streams() -> None:
    """Give a standard stream the process was started without (``>&-``, ``2>&-``, a daemon's or
    a scheduler's closed descriptor) the null device.

    Python leaves ``sys.stdout`` or ``sys.stderr`` ``None`` then and the descriptor free: a
    progress bar or the flush at exit raised ``AttributeError`` (an internal error, with a
    traceback into the standard output when only standard error was closed, as ``print`` to a
    ``None`` file writes to standard output), and the first file the run opened would take
    descriptor 1 or 2 and receive what a library writes there. What would be written to a
    closed stream is dropped; the run writes its files and ends with its own status.
    """
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
            free = False
        except OSError:
            free = True
        mode = "r" if fd == 0 else "w"
        try:  # the streams stay open as long as the process, as the ones Python makes
            if free:  # occupied by the null device, so that no file the run opens takes it
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
                stream = open(fd, mode, encoding="utf-8", closefd=False)  # noqa: SIM115
            else:  # already another file's: left to it
                stream = open(os.devnull, mode, encoding="utf-8")  # noqa: SIM115
        except OSError:
            continue
        setattr(sys, name, stream)


def _output_closed() -> int:
    """Standard output was closed by its reader (``| head``): nothing more can be said there.

    Later writes (and the flush when the process ends) go to the null device instead of raising
    again; the run ends quietly with :data:`EXIT_PIPE_CLOSED`."""
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
    return EXIT_PIPE_CLOSED


def _escape_unencodable() -> Callable[[], None]:
    """Let standard output (and a standard error replaced by the caller) write what its encoding
    cannot (a non-ASCII file or class name with ``PYTHONIOENCODING=ascii`` or a Latin-1 locale; a
    file name that is not UTF-8) as escapes such as ``\\xe9``, as Python writes standard error,
    instead of stopping the run with a ``UnicodeEncodeError`` half-way through its table.

    Returns:
        A function that puts the streams' error handlers back.
    """
    changed = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if errors != "strict" or not hasattr(stream, "reconfigure"):
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (OSError, ValueError):  # a closed stream: nothing will be written to it anyway
            continue
        changed.append((stream, errors))

    def restore() -> None:
        for stream, errors in changed:
            with contextlib.suppress(OSError, ValueError):
                stream.reconfigure(errors=errors)

    return restore


_ARGUMENT_FORMS = (
    # bands=['B02', 'B03'] / bands=[...] -> --bands B02 B03 / --bands ...
    (re.compile(r"\bbands=\[([^\]]*)\]"),
     lambda m: "--bands " + " ".join(re.findall(r"[^\s,'\"]+", m.group(1)))),
    (re.compile(r"\blayout=['\"]?(CHW|HWC)['\"]?"), lambda m: f"--layout {m.group(1)}"),
    (re.compile(r"\bsensor=['\"]?([\w-]+)['\"]?"), lambda m: f"--sensor {m.group(1)}"),
    (re.compile(r"\bnodata=(-?[\d.]+(?:e[-+]?\d+)?)"), lambda m: f"--nodata {m.group(1)}"),
)  # fmt: skip
_RANDOM_WEIGHTS = re.compile(r"\bpretrained=(None|False)\b")


def flag_wording(message: str, random_weights: str = "--no-pretrained") -> str:
    """A library message with its argument forms (``bands=[...]``, ``layout='CHW'``,
    ``sensor='x'``, ``pretrained=None``) written as the programs' flags (``--bands ...``,
    ``--layout CHW``, ``random_weights``: how the program asks for random weights, a flag of
    its own, never a value of the checkpoint flag)."""
    for pattern, repl in _ARGUMENT_FORMS:
        message = pattern.sub(repl, message)
    return _RANDOM_WEIGHTS.sub(random_weights, message)


def failure_summary(failures: Sequence[Any], limit: int = 10, others: int = 5) -> tuple[str, int]:
    """``name (reason)`` of each unreadable input (``.name``, ``.reason``), for a run's warning.

    A reason shared by several inputs (the same error but for the file's own name) is said once,
    for the first of them, followed by the others' names (``others`` of them, then a count):
    twelve band files of one product refused for the same cause make one entry, not twelve.

    Returns:
        ``(text, not_shown)``: the first ``limit`` reasons, and how many inputs they leave out.
    """
    groups: dict[str, list[tuple[Any, str]]] = {}  # reason less the name -> (input, reason)
    for f in failures:
        reason = flag_wording(str(f.reason))
        key = reason.replace(str(f.name), "\0") if f.name else reason
        groups.setdefault(key, []).append((f, reason))
    parts = []
    for fs in list(groups.values())[:limit]:
        text = f"{fs[0][0].name} ({fs[0][1]})"
        names = [str(f.name) for f, _ in fs[1:]]
        if names:
            shown = ", ".join(names[:others])
            rest = f" and {len(names) - others} more" if len(names) > others else ""
            text += f", and the same for {shown}{rest}"
        parts.append(text)
    not_shown = sum(len(fs) for fs in list(groups.values())[limit:])
    return "; ".join(parts), not_shown


def flag_hint(err: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """`` (command-line option: --x)`` for an error whose ``param`` a flag sets, else ``""``."""
    param = getattr(err, "param", None)
    if not param:
        return ""
    flag = (flags or {}).get(param) or FLAGS.get(param)
    return f" (command-line option: {flag})" if flag else ""


#: Key of a program's ``flags`` table whose value is how it asks for random weights
#: (``--no-pretrained`` by default; ``--init random`` in msclip-train).
RANDOM_WEIGHTS = "(random weights)"


def error_line(err: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """The one ``error: ...`` line of a library error in a program: argument forms written as
    flags (:func:`flag_wording`; the error's own ``param='x'`` as ``--flag x``), and the flag
    named once when the message does not name it already."""
    message = flag_wording(str(err), (flags or {}).get(RANDOM_WEIGHTS, "--no-pretrained"))
    param = getattr(err, "param", None)
    flag = ((flags or {}).get(param) or FLAGS.get(param)) if param else None
    if flag:
        message = re.sub(rf"\b{re.escape(param)}=(['\"]?)([^'\"\s)]+)\1", rf"{flag} \2", message)
        if flag in message:
            return f"error: {message}"
    return f"error: {message}{flag_hint(err, flags)}"


def run_cli(
    argv: Sequence[str] | None,
    parse: Callable[[list[str]], argparse.Namespace],
    run: Callable[[argparse.Namespace], int],
    *,
    flags: Mapping[str, str] | None = None,
    error_status: Callable[[BaseException], int] | None = None,
    logging_setup: Callable[[argparse.Namespace], Callable[[], None]] | None = None,
) -> int:
    """Parse ``argv``, set up logging, run, and map what is raised to an exit status.

    Args:
        argv: the arguments (``sys.argv[1:]`` when ``None``).
        parse: the program's argument parsing (argparse's own exits are honoured: ``--help``
            gives 0, a usage error 2).
        run: the program; returns its exit status.
        flags: the program's parameter -> flag table for hints (see :func:`flag_hint`).
        error_status: status of an :class:`~msclip.errors.MSCLIPError` or ``OSError`` raised by
            ``run`` (default 2, :data:`EXIT_USAGE`).
        logging_setup: replaces :func:`setup_logging` (called with the parsed arguments).

    Returns:
        The exit status (see the module docstring).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _open_closed_std_streams()
    from msclip.cli.startup import pause_collector_during_import

    for name in ("torch", "open_clip"):  # ~0.3 s less start-up each (msclip.cli.startup)
        pause_collector_during_import(name)  # before parsing: a flag's check may import torch
    restore_stdout = _escape_unencodable()
    try:
        return _run_cli(argv, parse, run, flags, error_status, logging_setup)
    except Exception:
        # What _run_cli has no rule for, in parsing, set-up or the run: a defect, not a verdict
        # on the inputs. The traceback is what a report needs, and the status tells it from a
        # finished run with failed inputs (1) for scripts and schedulers.
        import traceback

        traceback.print_exc()
        print("error: internal error (the traceback above says where); please report it with "
              "the command that was run", file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL
    finally:
        restore_stdout()


def _run_cli(
    argv: list[str],
    parse: Callable[[list[str]], argparse.Namespace],
    run: Callable[[argparse.Namespace], int],
    flags: Mapping[str, str] | None,
    error_status: Callable[[BaseException], int] | None,
    logging_setup: Callable[[argparse.Namespace], Callable[[], None]] | None,
) -> int:
    try:
        args = parse(argv)
    except BrokenPipeError:  # --help into a closed pipe
        return _output_closed()
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    except (MSCLIPError, OSError) as err:  # OSError: a --config file that cannot be read
        print(error_line(err, flags), file=sys.stderr)
        return EXIT_USAGE
    args.argv = list(argv)  # the command line as given (records, run cards)
    if logging_setup is not None:
        restore = logging_setup(args)
    else:
        restore = setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return run(args)
    except BrokenPipeError:
        return _output_closed()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (MSCLIPError, OSError) as err:
        # OSError: an output that cannot be written, a disk that is full: one line, no traceback
        logger.debug("traceback", exc_info=True)
        print(error_line(err, flags), file=sys.stderr)
        return error_status(err) if error_status is not None else EXIT_USAGE
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated):
            print("terminated", file=sys.stderr)
            return EXIT_TERMINATED
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)
        restore()
