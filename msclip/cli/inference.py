"""``msclip-inference``: zero-shot classification, retrieval and scene maps from the command line.

Modes (one per run):

- ``--run-classification``: zero-shot labels for a set of images, or, with ``--head
  my_head.safetensors`` (written by ``msclip-finetune``), the labels (or regression values) of a
  trained head: same table and CSV, the classes come from the head, and a head trained on
  another encoder is refused (both fingerprints named). The probabilities follow the
  protocol published with Llama3-MS-CLIP (Marimo et al., ECML PKDD 2025, arXiv:2503.15969; see
  :mod:`msclip.zero_shot`). The CSV has ``Image``, ``Class`` and one probability column per class
  name. ``--multi-label`` marks every class whose logit exceeds the mean logit of the
  other classes (the published multi-label rule, :func:`msclip.eval.metrics.multilabel_predict`);
  ``--threshold T`` marks classes with probability above ``T`` instead.
- ``--run-retrieval``: rank images by cosine similarity to text queries (``--query``,
  ``--queries-file``) or to query images (``--query-image``); CSV ``Query``, ``Rank``, ``Image``,
  ``Similarity`` (raw cosine of L2-normalised embeddings, no templates or scaling).
- ``--run-scene``: tile one large georeferenced scene and write, in the scene's CRS, a GeoTIFF of
  the similarity of every tile to each ``--query`` and/or a zero-shot class map with a legend.
- ``index ...``: forwarded to :mod:`msclip.cli.index`.

Input problems are reported before any model work: an empty image set, an unknown template set,
duplicate class names, a missing checkpoint. An unreadable image is named in a warning and
skipped; the run then ends with exit status 1 (0 with ``--skip-bad``). Usage errors exit with 2.
Every output file is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where the work starts (--help stays light)
    import numpy as np

from msclip.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    LargeCheck,
    UsageError,
    add_input_check_args,
    add_model_args,
    add_query_args,
    add_run_args,
    add_text_cache_args,
    check_checkpoint,
    encode_query_set,
    failure_summary,
    finish_parser,
    flag_wording,
    fraction,
    image_options,
    keep_reads_ahead,
    large_refusal,
    load_model,
    min_valid,
    model_inputs,
    need_file,
    non_negative_int,
    output_path,
    plural,
    positive_int,
    print_table,
    query_image_paths,
    read_queries,
    reads_ahead,
    refuse_input_as_output,
    run_cli,
    run_device,
    run_record_path,
    status,
    text_cache_for,
    write_table_and_record,
)
from msclip.errors import BandCoverageError, RasterTooLargeError

__all__ = ["build_parser", "main", "parse_args"]

logger = logging.getLogger(__name__)

#: What a run stops at, as a usage error (:func:`_input_refusals`), rather than skip.
_ABORT_ON = (BandCoverageError, RasterTooLargeError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``msclip-inference``."""
    p = argparse.ArgumentParser(
        prog="msclip-inference",
        description="Zero-shot classification, retrieval and scene maps with a multispectral "
        "CLIP model. 'msclip-inference index ...' runs the embedding index tool.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--run-classification", action="store_true", help="zero-shot classification")
    mode.add_argument("--run-retrieval", action="store_true", help="text or image retrieval")
    mode.add_argument(
        "--run-scene",
        action="store_true",
        help="similarity and class maps over the tiles of one large scene",
    )
    add_model_args(p)
    g = p.add_argument_group("inputs")
    g.add_argument(
        "--images",
        nargs="+",
        default=None,
        help="folders, image files, .txt/.yaml lists of paths, or glob patterns",
    )
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="exit 0 even when some images (or tiles of a scene) cannot be read (they are still "
        "reported)",
    )
    g.add_argument(
        "--max-print",
        type=non_negative_int,
        default=20,
        help="rows of the printed table (default 20; the CSV has all)",
    )
    g.add_argument(
        "--save-path",
        default=None,
        help="output CSV (classification, retrieval; default results/<mode>.csv) or "
        "output folder (scene; default results/scene)",
    )
    g.add_argument(
        "--downsample",
        action="store_true",
        help="read GeoTIFFs (through their overviews) and PNG/JPEG pictures larger than the "
        "model input reduced to it instead of refusing those far larger than the input; or use "
        "--run-scene to tile a GeoTIFF",
    )
    add_input_check_args(g)
    c = p.add_argument_group("classification")
    c.add_argument(
        "--class-names",
        nargs="+",
        action="extend",
        default=None,
        help="class names (a single comma-separated value is split at commas)",
    )
    c.add_argument(
        "--classes-file", default=None, help=".txt (one per line), one-column .csv or .yaml file"
    )
    c.add_argument(
        "--templates",
        default=None,
        help="template set name (eo, short, sentinel2; default eo) or a text file "
        "with one template per line containing {c}",
    )
    c.add_argument(
        "--head",
        default=None,
        help="classify (or regress) with a head trained by msclip-finetune (.safetensors) "
        "instead of zero-shot; the model defaults to the encoder the head was trained on",
    )
    c.add_argument(
        "--head-task",
        default=None,
        help="with --run-scene --head: the task of a multi-task dense head (default: its first)",
    )
    c.add_argument(
        "--adapters",
        default=None,
        help="LoRA adapter file of a --head trained with LoRA (default: the one next to it)",
    )
    c.add_argument(
        "--multi-label",
        action="store_true",
        help="multi-label: classes whose logit exceeds the mean logit of the others "
        "(the published rule)",
    )
    c.add_argument(
        "--threshold",
        type=fraction,
        default=None,
        help="with --multi-label: classes whose probability exceeds this instead",
    )
    add_text_cache_args(c)
    add_query_args(p.add_argument_group("retrieval"), top_k=5)
    s = p.add_argument_group("scene")
    s.add_argument(
        "--scene", default=None, help="the large raster to map (GeoTIFF / COG, JPEG 2000, VRT)"
    )
    s.add_argument(
        "--tile-size",
        type=positive_int,
        default=None,
        help="tile side in pixels (default: the model's input size; with --head, the size of "
        "the crops the head was trained on)",
    )
    s.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="step between tiles in pixels (default: the tile size)",
    )
    s.add_argument(
        "--dense",
        action="store_true",
        help="a per-pixel zero-shot class map with no trained head (MaskCLIP: the last block's "
        "patch tokens in the joint space), predicted on overlapping tiles and blended",
    )
    s.add_argument(
        "--overlap",
        type=non_negative_int,
        default=None,
        help="with --dense: pixels shared by neighbouring tiles (default a quarter of a tile)",
    )
    add_run_args(p)
    return finish_parser(p)


def _split_class_names(values: Sequence[str]) -> list[str]:
    """The class names of ``--class-names``: one value holding commas is split at them
    (``"forest,river,sea"``); of several values, each is a name, less the commas and spaces
    around it, which separate names (``forest, river, sea`` reaches the program as ``forest,``
    ``river,`` ``sea``: no class is named ``forest,``). A comma inside one of several values is
    kept (``"Beaches, dunes, sands" forest``)."""
    if len(values) == 1 and "," in values[0]:
        return [n.strip() for n in values[0].split(",") if n.strip()]
    names = [v.strip().strip(",").strip() for v in values]
    return [n for n, v in zip(names, values) if n or "," not in v]  # a lone "," separates


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the arguments (exits with status 2 on a usage error)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.class_names is not None:
        args.class_names = _split_class_names(args.class_names)
    has_classes = args.class_names is not None or args.classes_file is not None
    if args.class_names is not None and args.classes_file is not None:
        p.error("give class names either with --class-names or with --classes-file, not both")
    if args.head is not None and not (args.run_classification or args.run_scene):
        p.error("--head applies to --run-classification and --run-scene")
    if args.head_task is not None and not (args.run_scene and args.head):
        p.error("--head-task applies to --run-scene --head")
    if args.run_scene and args.head is not None and args.dense:
        p.error("--dense is the zero-shot map; --head predicts with a trained dense head: not both")
    if args.adapters is not None and args.head is None:
        p.error("--adapters applies to --head")
    if args.run_classification:
        if args.images is None:
            p.error("--run-classification needs --images")
        if not has_classes and args.head is None:
            p.error("--run-classification needs --class-names or --classes-file (or --head)")
    if args.run_retrieval:
        if args.images is None:
            p.error("--run-retrieval needs --images")
        if not (args.query or args.queries_file or args.query_image):
            p.error("--run-retrieval needs --query, --queries-file or --query-image")
    if args.run_scene:
        if args.scene is None:
            p.error("--run-scene needs --scene")
        if not (args.query or args.queries_file or has_classes or args.head):
            p.error(
                "--run-scene needs --query/--queries-file (similarity map) and/or "
                "--class-names/--classes-file (class map)"
            )
    if args.threshold is not None and not (args.multi_label or args.head):
        p.error("--threshold applies to --multi-label; add --multi-label")
    if args.dense and not (args.run_scene and has_classes):
        p.error("--dense makes a class map of a scene: use it with --run-scene and class names")
    if args.dense and (args.query or args.queries_file):
        p.error(
            "--dense (a per-pixel class map) does not make the similarity map of --query / "
            "--queries-file: run --run-scene --query without --dense for that map"
        )
    if args.overlap is not None and not (args.dense or (args.run_scene and args.head)):
        p.error("--overlap applies to --dense and --run-scene --head")
    if args.dense or (args.run_scene and args.head):
        # per-pixel maps blend overlapping tiles and predict every tile with data
        ignored = [flag for flag, given in (("--stride", args.stride is not None),
                                            ("--min-valid", args.min_valid is not None),
                                            ("--max-nodata", args.max_nodata is not None))
                   if given]  # fmt: skip
        if ignored:
            p.error(
                f"{', '.join(ignored)} do(es) not apply to a per-pixel map (--dense, --head on "
                "a scene): tiles overlap by --overlap and every tile with data is predicted "
                "(nodata pixels stay nodata)"
            )
    _refuse_other_modes_flags(p, args)
    return args


_CLASSIFY, _RETRIEVE, _SCENE = "--run-classification", "--run-retrieval", "--run-scene"
#: The modes each mode-specific flag applies to (flag: its destination, the modes).
_FLAG_MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "--images": ("images", (_CLASSIFY, _RETRIEVE)),
    "--downsample": ("downsample", (_CLASSIFY, _RETRIEVE)),
    "--class-names": ("class_names", (_CLASSIFY, _SCENE)),
    "--classes-file": ("classes_file", (_CLASSIFY, _SCENE)),
    "--templates": ("templates", (_CLASSIFY, _SCENE)),
    "--multi-label": ("multi_label", (_CLASSIFY,)),
    "--threshold": ("threshold", (_CLASSIFY,)),
    "--query": ("query", (_RETRIEVE, _SCENE)),
    "--queries-file": ("queries_file", (_RETRIEVE, _SCENE)),
    "--query-image": ("query_image", (_RETRIEVE,)),
    "--top-k": ("top_k", (_RETRIEVE,)),
    "--scene": ("scene", (_SCENE,)),
    "--tile-size": ("tile_size", (_SCENE,)),
    "--stride": ("stride", (_SCENE,)),
}


def _refuse_other_modes_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A flag of another mode is a usage error (status 2): the run would ignore it."""
    mode = _CLASSIFY if args.run_classification else _RETRIEVE if args.run_retrieval else _SCENE
    ignored = [
        flag
        for flag, (dest, modes) in _FLAG_MODES.items()
        if mode not in modes and getattr(args, dest) != p.get_default(dest)
    ]
    if ignored:
        where = {f: " / ".join(_FLAG_MODES[f][1]) for f in ignored}
        p.error(
            f"{mode} does not use {', '.join(ignored)}: "
            + "; ".join(f"{f} applies to {m}" for f, m in where.items())
            + f"; remove {'it' if len(ignored) == 1 else 'them'} or run that mode"
        )


# -- input checks (before any work) ------------------------------------------------------------
def _class_names(args: argparse.Namespace) -> list[str] | None:
    from msclip.zero_shot import check_class_names, load_class_names

    if args.class_names is None and args.classes_file is None:
        return None
    names = (
        args.class_names if args.class_names is not None else load_class_names(args.classes_file)
    )
    return check_class_names(names)


def _report_failures(
    failures: Sequence[Any], total: int, args: argparse.Namespace, unit: str = "image"
) -> int:
    if not failures:
        return EXIT_OK
    shown, rest = failure_summary(failures)
    more = f"; and {rest} more (see the log)" if rest else ""
    print(
        f"warning: {len(failures)} of {plural(total, unit)} could not be read and "
        f"{'was' if len(failures) == 1 else 'were'} skipped: {shown}{more}",
        file=sys.stderr,
    )
    return EXIT_OK if args.skip_bad else EXIT_PARTIAL


def _nothing_scored(
    done: str,
    skipped: Sequence[int],
    failures: Sequence[Any],
    total: int,
    args: argparse.Namespace,
    unit: str = "image",
) -> int:
    """Exit status 1 with one line when no input could be used (all skipped or unreadable)."""
    why = []
    if skipped:
        why.append(f"{len(skipped)} skipped with {_skip_reason(args)}")
    if failures:
        why.append(f"{len(failures)} unreadable")
    print(
        f"error: no {unit} could be {done}: of {plural(total, unit)}, {' and '.join(why)}",
        file=sys.stderr,
    )
    return EXIT_PARTIAL


_PROGRAM = "msclip-inference"


def _table_output(
    args: argparse.Namespace, default_name: str, inputs: Sequence[tuple[str, Any]]
) -> Path:
    """The result table of a run and, beside it, its run record: both checked writable and
    neither one of the run's ``inputs`` (:func:`refuse_input_as_output`)."""
    from msclip.io import check_output

    out_path = check_output(output_path(args.save_path, default_name))
    record = check_output(run_record_path(out_path))
    refuse_input_as_output(out_path, inputs, default_name, beside=[record])
    return out_path


def _check_scene_outputs(args: argparse.Namespace, outputs: Sequence[Path]) -> None:
    """Every file a scene run may write: none of them one of its inputs, each writable (a folder
    in the way, or a file that cannot be replaced), before the model loads."""
    from msclip.io import check_output

    refuse_input_as_output(outputs, _scene_inputs(args), "scene")
    for output in outputs:
        check_output(output)


def _image_counts(
    given: int, scored: int, skipped: Sequence[int], failures: Sequence[Any]
) -> dict[str, int]:
    """The ``images`` entry of a run record."""
    return {"given": given, "scored": scored, "skipped_nodata": len(skipped),
            "unreadable": len(failures)}  # fmt: skip


def _finish_run(
    done: str,
    scored: bool,
    skipped: Sequence[int],
    failures: Sequence[Any],
    names: Sequence[str],
    args: argparse.Namespace,
) -> int:
    """The end of a run over an image set: name the skipped and unreadable inputs, and the exit
    status (1 with one line when nothing could be ``done``)."""
    _report_skipped(skipped, names, args)
    code = _report_failures(failures, len(names), args)
    if not scored:
        return _nothing_scored(done, skipped, failures, len(names), args)
    return code


#: Columns of the classification CSV and of the scene's tiles.csv beside the class columns.
_TABLE_COLUMNS = ("Image", "Class", "valid_fraction", "status", "Tile", "Row", "Col")


def _check_classes(
    names: Sequence[str], multi_label: bool = False, queries: Sequence[str] = ()
) -> None:
    columns = (*_TABLE_COLUMNS, *(f"Similarity: {q}" for q in queries))
    clash = [n for n in names if n.strip() in columns]
    if clash:  # its probability column would replace (or be replaced by) the table's own
        raise UsageError(
            f"class name(s) {clash} are also column names of the output table "
            f"({', '.join(columns)}); name the class otherwise (e.g. '{clash[0]} class')"
        )
    joined = [n for n in names if ";" in n]
    if multi_label and joined:  # the Class column joins the present classes with ';'
        raise UsageError(
            f"class name(s) {joined} hold ';', which separates the classes of an image in the "
            f"Class column of --multi-label; name the class otherwise (e.g. "
            f"'{joined[0].replace(';', ',')}')"
        )
    if len(names) < 2:
        raise UsageError(
            f"zero-shot classification chooses among classes: give at least two "
            f"(got {list(names)}); for a yes/no question add its opposite, e.g. "
            f"'{names[0] if names else 'forest'}' and 'other'"
        )


def _encode_files(
    args: argparse.Namespace, model: Any, preprocess: Any, paths: list[str], reads: Any = None
) -> Any:
    """Encode the image files of classification or retrieval with the shared input rules
    (``reads``: the files read while the program started, :func:`reads_ahead`)."""
    from msclip.encode import encode_images

    with _input_refusals():
        return encode_images(
            model, preprocess, paths, args.batch_size, args.workers, progress=not args.quiet,
            min_valid=min_valid(args), nodata=args.nodata, abort_on=_ABORT_ON, startup=reads,
        )  # fmt: skip


@contextlib.contextmanager
def _input_refusals() -> Iterator[None]:
    """Inputs the run stops at (:data:`_ABORT_ON`, met while reading) as the program's usage
    errors, with their fixes: an image far larger than the model reads, and under
    ``--strict-bands`` input the model says little about."""
    try:
        yield
    except RasterTooLargeError as err:
        raise UsageError(large_refusal(str(err))) from err
    except BandCoverageError as err:
        raise UsageError(_coverage_refusal(str(err))) from err


def _coverage_refusal(message: str) -> str:
    """``--strict-bands``'s refusal with the hint that fits: ``--bands`` only helps files whose
    bands are misnamed, never display-scaled (8-bit) pictures."""
    hint = "refused by --strict-bands; without it the run goes on with one warning"
    if "8-bit input" not in message:
        hint += "; if the files' bands are named wrongly, name them with --bands"
    return f"{message} ({hint})"


#: Skipped images named in the note (all of them with -v, and in the CSV's status column).
NAMED_SKIPPED = 5


def _skip_reason(args: argparse.Namespace) -> str:
    return f"fewer than {min_valid(args):.0%} valid pixels (--min-valid)"


def _report_skipped(skipped: Sequence[int], names: Sequence[str], args: argparse.Namespace) -> None:
    """One note naming the images skipped as mostly nodata (the first few; all with -v)."""
    if not skipped:
        return
    shown = [names[i] for i in skipped]
    if len(shown) > NAMED_SKIPPED and not args.verbose:
        listed = ", ".join(shown[:NAMED_SKIPPED])
        listed += f" and {len(shown) - NAMED_SKIPPED} more (all with -v)"
    else:
        listed = ", ".join(shown)
    print(
        f"note: {len(skipped)} of {plural(len(names), 'image')} skipped: {_skip_reason(args)}: "
        f"{listed}",
        file=sys.stderr,
    )


def _with_unscored_rows(
    table: Any,
    names: Sequence[str],
    indices: Sequence[int],
    skipped: Sequence[int],
    skipped_valid: Sequence[float],
    failures: Sequence[Any],
    args: argparse.Namespace,
) -> Any:
    """The table (:class:`msclip.io.Table`) of the scored images plus one row per skipped or
    unreadable image, in input order, with a last ``status`` column: ``ok``, ``skipped: <why>``
    (``valid_fraction`` says how much was valid) or ``unreadable: <error>``; the scores of those
    rows are empty."""
    import math

    from msclip.io import Table

    columns = [*table.columns, "status"]
    by_input = {int(i): [*row, "ok"] for i, row in zip(indices, table.rows())}

    def unscored(image: str, status: str, valid: float | None = None) -> list[Any]:
        cells = {"Image": image, "valid_fraction": valid, "status": status}
        if "Class" in columns:
            cells["Class"] = ""
        return [cells.get(c) for c in columns]

    for k, i in enumerate(skipped):
        valid = skipped_valid[k] if k < len(skipped_valid) else math.nan
        by_input[int(i)] = unscored(names[i], f"skipped: {_skip_reason(args)}", valid)
    for f in failures:
        by_input[int(f.index)] = unscored(names[f.index], f"unreadable: {flag_wording(f.reason)}")
    return Table.from_rows(columns, [by_input[i] for i in sorted(by_input)])


# -- modes --------------------------------------------------------------------------------------
def _head_model_args(args: argparse.Namespace, encoder: dict[str, Any], head_path: str) -> None:
    """Without --model-name / --ckpt-path, load the encoder the head was trained on: its
    fine-tuned file, else the weight file it was loaded from, else its random weights' seed,
    else its registered name."""
    if args.model_name is not None or args.ckpt_path is not None:
        return
    if encoder.get("encoder_file"):
        f = Path(encoder["encoder_file"])
        if not f.is_file():
            f = Path(head_path).parent / f.name
        if f.is_file():
            args.model_name = str(f)
            return
    ckpt = encoder.get("checkpoint_path")
    if ckpt and Path(ckpt).is_file():
        args.ckpt_path = ckpt
        if not ckpt.endswith(".safetensors"):  # a release file names no architecture
            args.model_name = encoder.get("name")
        return
    if encoder.get("init_seed") is not None and args.pretrained:
        # random weights drawn by a program (--no-pretrained --seed N): drawn again
        args.pretrained = False
        args.seed = int(encoder["init_seed"])
    args.model_name = encoder.get("name")


def _head_precision_args(args: argparse.Namespace, info: dict[str, Any], dense: bool) -> None:
    """Under ``--precision auto`` (and no ``MSCLIP_PRECISION``), run the encoder in fp32 when the
    head was trained on an fp32 encoder: a run that trains the image tower, or a dense head,
    loads fp32 whatever the machine (:func:`msclip.heads.runs.run_precision`), and so does one
    given ``--precision fp32``. Its predictions are then the run's own (bf16 features moved the
    probabilities by ~2e-3); frozen image-level heads keep the machine's choice, as their
    features were extracted in it."""
    import os

    from msclip.hardware import PRECISION_ENV

    if args.precision != "auto" or os.environ.get(PRECISION_ENV, "").strip():
        return
    settings = info.get("settings") or {}
    trained = settings.get("precision") or "auto"
    mode = (info.get("encoder") or {}).get("mode") or settings.get("encoder_mode") or "frozen"
    if trained == "fp32" or (trained == "auto" and (dense or mode != "frozen")):
        args.precision = "fp32"
        why = "a dense head" if dense else (
            "its image tower trained" if mode != "frozen" else "--precision fp32"
        )  # fmt: skip
        status(args, f"the head was trained on the encoder in fp32 ({why}): it runs in fp32 "
                     "here too (--precision bf16 for the machine's faster precision)")  # fmt: skip
        # what the precision line and the run's record say: auto was asked for, the head chose
        args._precision_why = ("auto", f"the head was trained on the encoder in fp32 ({why})")


def _head_band_args(args: argparse.Namespace, info: dict[str, Any], paths: Sequence[str]) -> None:
    """Without --bands / --sensor, name the images' bands as the head's training run named them
    (its --input-bands / --sensor) when the first readable image reads with those names: a
    head trained on files that do not name their bands would otherwise read the same kind of
    file with the bands guessed from their count (four unnamed bands as NAIP's red, green,
    blue, NIR, not the B02 B03 B04 B08 it was trained on). Files that name their bands keep
    their names; files of another band count are read as before."""
    if args.bands is not None or args.sensor is not None:
        return
    settings = info.get("settings") or {}
    bands, sensor = settings.get("input_bands"), settings.get("sensor")
    if not bands and not sensor:
        return
    from msclip.heads.checkpoint import first_bands

    bands = [str(b) for b in bands] if bands else None
    trained = first_bands(paths, bands, sensor)  # None: no image reads with those names
    if trained is None or trained[1] != list(info.get("input_bands") or trained[1]):
        return
    args.bands, args.sensor = bands, sensor
    given = " ".join(
        ([f"--bands {' '.join(bands)}"] if bands else [])
        + ([f"--sensor {sensor}"] if sensor else [])
    )
    status(args, f"images that do not name their bands are read as the head's training images "
                 f"were: {given} (pass --bands or --sensor to read them otherwise)")  # fmt: skip


def _run_inputs(args: argparse.Namespace, image_set: Any) -> list[tuple[str, Any]]:
    """The files a classification or retrieval run reads, for :func:`refuse_input_as_output`."""
    return [("the image", image_set.paths), ("the image list", args.images), *_other_inputs(args)]


def _scene_inputs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The files a scene run reads, for :func:`refuse_input_as_output`."""
    return [("the scene", args.scene), *_other_inputs(args)]


def _other_inputs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The files every mode may read besides its images: text files, weights, head, adapters."""
    return [
        ("the classes file", getattr(args, "classes_file", None)),
        ("the templates file", getattr(args, "templates", None)),
        ("the queries file", getattr(args, "queries_file", None)),
        *model_inputs(args),
        ("the head", getattr(args, "head", None)),
        ("the adapter file", getattr(args, "adapters", None)),
    ]


def _map_outputs(out_dir: Path, stem: str) -> list[Path]:
    """The files of a per-pixel map named ``stem`` in ``out_dir``: the map and its legend."""
    return [out_dir / f"{stem}{end}" for end in (".tif", "_legend.json", "_legend.csv")]


def _check_head_bands(
    trained: Sequence[str] | None,
    paths: Sequence[str],
    names: Sequence[str],
    args: argparse.Namespace,
) -> None:
    """Warn when the first readable input has other bands than the head's training images."""
    from msclip.heads.checkpoint import first_bands, warn_other_bands

    found = first_bands(paths, args.bands, args.sensor) if trained else None
    if found is not None:
        warn_other_bands(trained, found[1], names[found[0]])


def run_head_classification(args: argparse.Namespace) -> int:
    """``--run-classification --head``: the scores of a trained head."""
    from msclip.heads.checkpoint import bind_head, predict_images, read_head
    from msclip.heads.dense_head import DENSE_HEAD_FORMAT, head_file_format
    from msclip.io import list_image_set

    if head_file_format(args.head) == DENSE_HEAD_FORMAT:
        raise UsageError(
            f"{args.head} is a dense (per-pixel) head (segmentation or pixel regression): use it "
            "with --run-scene --scene <raster>; --run-classification --head takes an image-level "
            "head (head.safetensors of msclip-finetune --task classification / multi-label / "
            "regression)"
        )
    image_set = list_image_set(args.images)
    ckpt = read_head(args.head)
    names = list(ckpt.names)
    if args.threshold is not None and ckpt.task != "multi-label":
        raise UsageError(
            f"--threshold {args.threshold} decides the labels of a multi-label head; the head "
            f"{args.head} is a {ckpt.task} head: leave --threshold out"
        )
    given = _class_names(args)
    if given is not None and [n.lower() for n in given] != [n.lower() for n in names]:
        raise UsageError(
            f"the head {args.head} classifies into {names}; --class-names/--classes-file name "
            f"{given}: leave them out (the head carries its classes)"
        )
    if args.adapters is not None:
        need_file(args.adapters, "adapter file", "--adapters", "a LoRA adapter file")
    _head_model_args(args, ckpt.encoder, args.head)
    _head_precision_args(args, {**ckpt.info, "encoder": ckpt.encoder}, dense=False)
    _head_band_args(args, ckpt.info, image_set.paths)
    check_checkpoint(args)
    out_path = _table_output(args, "classification.csv", _run_inputs(args, image_set))
    min_valid(args)

    from msclip.encode import ImageDataset
    from msclip.io import Table

    large = LargeCheck(image_set.paths)
    model, preprocess, _ = load_model(args, options=image_options(args), large=large)
    bind_head(ckpt, model, args.adapters)
    _check_head_bands(ckpt.info.get("input_bands"), image_set.paths, image_set.names, args)
    dataset = ImageDataset(image_set.paths, preprocess, min_valid(args), args.nodata)
    with _input_refusals():
        scores, indices, failures, skipped, valid = predict_images(
            ckpt, model, dataset, args.batch_size, args.workers, progress=not args.quiet,
            abort_on=_ABORT_ON,
        )  # fmt: skip
    shown = [image_set.names[i] for i in indices]
    task = ckpt.task
    table = Table({"Image": shown})
    if task == "regression":
        for j, n in enumerate(names):
            table[n] = scores[:, j] if len(scores) else []
        headers = ["Image", *names]
        rows = [[im, *sc] for im, sc in zip(shown, scores)]
    else:
        if task == "multi-label":
            threshold = 0.5 if args.threshold is None else args.threshold
            present = scores > threshold
            labels = [";".join(n for n, on in zip(names, row) if on) for row in present]
        else:
            labels = [names[int(i)] for i in scores.argmax(axis=1)] if len(scores) else []
        table["Class"] = labels
        for j, n in enumerate(names):
            table[n] = scores[:, j] if len(scores) else []
        headers, rows = _class_table(
            shown, labels, scores, names, present if task == "multi-label" else None
        )
    table["valid_fraction"] = valid
    table = _with_unscored_rows(table, image_set.names, indices, skipped, [], failures, args)
    write_table_and_record(
        table, out_path, model, args, _PROGRAM, "classification with a trained head",
        head={"path": str(args.head), "method": ckpt.method, "task": task, "outputs": list(names),
              "threshold": threshold if task == "multi-label" else None},
        images=_image_counts(len(image_set.names), len(shown), skipped, failures),
    )  # fmt: skip
    # Regression values are in the targets' units, whatever their scale (a canopy height in
    # km, a biomass in g/m²): significant digits, not four decimals that print 3e-6 as 0.0000.
    fmt = ".6g" if task == "regression" else ".4f"
    print_table(rows, headers, args.max_print, len(rows), fmt)
    what = (
        f"regressed ({plural(len(names), 'output')})"
        if task == "regression"
        else f"classified into {plural(len(names), 'class', 'classes')}"
    )
    print(
        f"{plural(len(shown), 'image')} {what} by the {ckpt.method} head {args.head} "
        f"(encoder {ckpt.encoder.get('fingerprint')}); CSV: {out_path}"
    )
    return _finish_run("scored", bool(shown), skipped, failures, image_set.names, args)


def _class_table(
    shown: Sequence[str],
    labels: Sequence[str],
    probs: np.ndarray,
    names: Sequence[str],
    present: np.ndarray | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the printed classification table.

    Multi-label (``present`` given): the classes marked present, each with its probability (no
    runner-up: the runner-up of a single-label reading may well be a class marked present).
    Single-label: every probability for up to six classes, else the class and the runner-up.
    """
    if present is not None:
        rows = []
        for im, pr, on in zip(shown, probs, present):
            found = sorted(((pr[j], names[j]) for j in range(len(names)) if on[j]), reverse=True)
            text = ", ".join(f"{n} ({v:.3f})" for v, n in found) or "(none)"
            rows.append([im, text, len(found)])
        return ["Image", "Classes present (probability)", "Count"], rows
    if len(names) <= 6:
        return ["Image", "Class", *names], [
            [im, lab, *pr] for im, lab, pr in zip(shown, labels, probs)
        ]
    import numpy as np

    rows = []
    for im, lab, pr in zip(shown, labels, probs):
        top = int(np.argmax(pr))  # the predicted class (the first of equal ones, as its label)
        rest = np.where(np.arange(len(pr)) == top, -np.inf, pr)
        second = int(np.argmax(rest))  # never the predicted class itself, even on a tie
        rows.append([im, lab, pr[top], f"{names[second]} ({pr[second]:.3f})"])
    return ["Image", "Class", "Probability", "Runner-up"], rows


def _images_only_from_here(model: Any, tokenizer: Any) -> None:
    """The prompts are encoded: give back the text tower's weight pages, the tokenizer's tables
    and, on the CPU, the pages of library code that ran for the text only (each read again if
    used again; :mod:`msclip.memory`)."""
    from msclip.memory import release_library_pages, trim_heap

    model.release_text_pages()
    release = getattr(tokenizer, "release", None)
    if callable(release):
        release()
    trim_heap()
    release_library_pages(model.device)


def run_classification(args: argparse.Namespace) -> int:
    """``--run-classification``."""
    if args.head is not None:
        return run_head_classification(args)
    from msclip.io import list_image_set

    image_set = list_image_set(args.images)
    with reads_ahead(args, image_set.paths) as reads:  # before torch is imported
        return _classify(args, image_set, reads)


def _classify(args: argparse.Namespace, image_set: Any, reads: Any) -> int:
    from msclip.zero_shot import load_templates

    templates = load_templates(args.templates or "eo")
    names = _class_names(args)
    if names is None:
        raise UsageError("--run-classification needs --class-names or --classes-file")
    _check_classes(names, multi_label=args.multi_label)
    check_checkpoint(args)
    out_path = _table_output(args, "classification.csv", _run_inputs(args, image_set))
    min_valid(args)

    from msclip.zero_shot import build_classifier, classify

    large = LargeCheck(image_set.paths)
    model, preprocess, tokenizer = load_model(args, options=image_options(args), large=large)
    reads = keep_reads_ahead(args, reads)  # the workers are known now
    progress = not args.quiet
    classifier = build_classifier(
        model, tokenizer, names, templates, cache=text_cache_for(args, model), progress=progress
    )
    _images_only_from_here(model, tokenizer)
    res = _encode_files(args, model, preprocess, image_set.paths, reads)
    model.release_weight_pages()  # the model calls are done (msclip.memory)
    from msclip.io import Table

    rule = None
    if args.multi_label:
        rule = "threshold" if args.threshold is not None else "mean_others"
    result = classify(res.embeddings, classifier, names, multi_label=rule, threshold=args.threshold)
    labels = result.labels()
    shown = [image_set.names[i] for i in res.indices]
    table = Table({"Image": shown, "Class": labels})
    for j, n in enumerate(names):
        table[n] = result.probs[:, j]
    table["valid_fraction"] = res.valid
    table = _with_unscored_rows(
        table, image_set.names, res.indices, res.skipped, res.skipped_valid, res.failures, args
    )
    write_table_and_record(
        table, out_path, model, args, _PROGRAM, "zero-shot classification",
        classes=list(names), multi_label=rule, threshold=args.threshold,
        templates={"set": str(args.templates or "eo"), "count": len(templates)},
        images=_image_counts(len(image_set.names), len(shown), res.skipped, res.failures),
    )  # fmt: skip

    headers, rows = _class_table(shown, labels, result.probs, names, result.present)
    print_table(rows, headers, args.max_print, len(rows))
    print(
        f"{plural(len(shown), 'image')} classified into {plural(len(names), 'class', 'classes')}"
        f" with {plural(len(templates), 'template')}; CSV: {out_path}"
    )
    return _finish_run("classified", bool(shown), res.skipped, res.failures, image_set.names, args)


def _top_k(k: int, n: int) -> int:
    if k > n:
        print(f"note: --top-k {k} is more than the {plural(n, 'image')}; returning {n}",
              file=sys.stderr)  # fmt: skip
    return min(k, n)


def run_retrieval(args: argparse.Namespace) -> int:
    """``--run-retrieval``."""
    from msclip.io import list_image_set

    image_set = list_image_set(args.images)
    with reads_ahead(args, image_set.paths) as reads:  # before torch is imported
        return _retrieve(args, image_set, reads)


def _retrieve(args: argparse.Namespace, image_set: Any, reads: Any) -> int:
    queries = read_queries(args)
    query_images = query_image_paths(args)
    check_checkpoint(args)
    out_path = _table_output(
        args, "retrieval.csv", [*_run_inputs(args, image_set), ("a query image", query_images)]
    )
    min_valid(args)

    from msclip.retrieval import top_k

    large = LargeCheck(image_set.paths)
    model, preprocess, tokenizer = load_model(args, options=image_options(args), large=large)
    reads = keep_reads_ahead(args, reads)  # the workers are known now
    q_emb, q_names = encode_query_set(args, model, preprocess, tokenizer, queries, query_images)
    _images_only_from_here(model, tokenizer)
    res = _encode_files(args, model, preprocess, image_set.paths, reads)
    model.release_weight_pages()
    from msclip.io import Table

    shown = [image_set.names[i] for i in res.indices]
    rows = []
    if shown:
        ranking = top_k(q_emb, res.embeddings, _top_k(args.top_k, len(shown)))
        for qi, q in enumerate(q_names):
            rows += [
                [q, r + 1, shown[int(j)], float(sc), res.valid[int(j)]]
                for r, (j, sc) in enumerate(zip(ranking.ids[qi], ranking.scores[qi]))
            ]
    columns = ["Query", "Rank", "Image", "Similarity", "valid_fraction"]
    write_table_and_record(
        Table.from_rows(columns, rows), out_path, model, args, _PROGRAM, "retrieval",
        queries=list(q_names), top_k=min(args.top_k, len(shown)),
        images=_image_counts(len(image_set.names), len(shown), res.skipped, res.failures),
    )  # fmt: skip
    table = [[q if len(q) <= 40 else q[:37] + "...", r, im, sc] for q, r, im, sc, _ in rows]
    print_table(table, ["Query", "Rank", "Image", "Similarity"], args.max_print, len(rows))
    print(
        f"{plural(len(q_names), 'query', 'queries')} over {plural(len(shown), 'image')}; "
        f"CSV: {out_path}"
    )
    return _finish_run("ranked", bool(shown), res.skipped, res.failures, image_set.names, args)


def run_scene(args: argparse.Namespace) -> int:
    """``--run-scene``."""
    from msclip.io import check_output
    from msclip.tiling import open_scene, scene_tiles

    if args.head is not None:
        return _head_scene(args)
    names = _class_names(args)
    templates = None
    queries = read_queries(args)
    if names is not None:
        _check_classes(names, queries=queries)
        from msclip.zero_shot import load_templates

        templates = load_templates(args.templates or "eo")
    need_file(args.scene, "scene file", "--scene", "a raster file")
    check_checkpoint(args)
    out_dir = check_output(args.save_path or "results/scene", kind="dir")
    outputs = (
        _map_outputs(out_dir, "dense_class_map")
        if args.dense
        else [out_dir / n for n in _SCENE_OUTPUTS]
    )
    _check_scene_outputs(args, outputs)
    if args.dense:
        _refuse_int8_dense(args)
    min_valid(args)

    import numpy as np
    import pandas as pd
    import torch

    from msclip.encode import encode_images
    from msclip.tiling import write_class_map, write_tile_map
    from msclip.zero_shot import build_classifier, encode_queries, zero_shot_probs

    _check_scene(args)
    model, preprocess, tokenizer = load_model(args)
    tile = args.tile_size or model.image_size
    if tile < model.patch_size:
        raise UsageError(
            f"--tile-size {tile} is smaller than the model's {model.patch_size}-pixel patch; "
            f"give at least {model.patch_size} (the model reads {model.image_size})"
        )
    if args.dense:
        _check_overlap(args, tile)
        return _dense_scene(args, model, tokenizer, names, templates, tile, out_dir)
    info = open_scene(args.scene, tile, args.stride or tile)
    _warn_georeference(args.scene)
    tiles = scene_tiles(info)
    cache = text_cache_for(args, model)
    progress = not args.quiet
    with _input_refusals():
        res = encode_images(
            model, preprocess, tiles, args.batch_size, args.workers, progress=progress,
            min_valid=min_valid(args), nodata=args.nodata, desc="tiles",
        )  # fmt: skip
    if not len(res.indices):  # no map to write: every tile is nodata or unreadable
        _warn_other_outputs(out_dir, [])  # an earlier run's maps stay: they are not this one's
        _report_failures(res.failures, len(tiles), args, "tile")
        return _nothing_scored("encoded", res.skipped, res.failures, len(tiles), args, "tile")
    rr = np.array([tiles[i].grid_row for i in res.indices], dtype=int)
    cc = np.array([tiles[i].grid_col for i in res.indices], dtype=int)
    grid = (info.n_rows, info.n_cols)
    table = pd.DataFrame(
        {
            "Tile": [tiles[i].name for i in res.indices],
            "Row": [tiles[i].row for i in res.indices],
            "Col": [tiles[i].col for i in res.indices],
            "valid_fraction": res.valid,
        }
    )
    tags = model.output_tags()  # the model that made the maps
    written: list[Path] = []
    if queries:
        q = encode_queries(model, tokenizer, queries, cache).numpy()
        sims = res.embeddings @ q.T
        maps = np.full((len(queries), *grid), np.nan, dtype=np.float32)
        maps[:, rr, cc] = sims.T
        written.append(
            write_tile_map(
                out_dir / "similarity.tif",
                maps,
                info,
                queries,
                nodata=float("nan"),
                tags={"msclip": "cosine similarity", **tags},
            )
        )
        for j, text in enumerate(queries):
            table[f"Similarity: {text}"] = sims[:, j]
    if names is not None:
        classifier = build_classifier(
            model, tokenizer, names, templates, cache=cache, progress=progress
        )
        probs = zero_shot_probs(torch.from_numpy(res.embeddings), classifier).numpy()
        labels = np.full(grid, -1, dtype=np.int64)
        conf = np.full(grid, np.nan, dtype=np.float32)
        if len(probs):
            labels[rr, cc] = probs.argmax(axis=1)
            conf[rr, cc] = probs.max(axis=1)
        written += list(
            write_class_map(out_dir, labels, names, info, confidence=conf, tags=tags).values()
        )
        table["Class"] = [names[int(i)] for i in probs.argmax(axis=1)] if len(probs) else []
        for j, n in enumerate(names):
            table[n] = probs[:, j]
    facts: dict[str, Any] = {"scene": str(args.scene), "queries": list(queries)}
    if names is not None:
        facts.update(
            classes=list(names),
            templates={"set": str(args.templates or "eo"), "count": len(templates)},
        )
    written += write_table_and_record(
        table, out_dir / "tiles.csv", model, args, _PROGRAM, "scene tile maps", **facts,
        grid={"rows": info.n_rows, "cols": info.n_cols, "tile": tile, "stride": info.stride},
        tiles=_image_counts(len(tiles), len(res.indices), res.skipped, res.failures),
    )  # fmt: skip
    _warn_other_outputs(out_dir, written)
    n_skip = len(res.skipped)
    print(
        f"scene {info.path}: {info.width}x{info.height} px, {plural(len(tiles), 'tile')} of "
        f"{tile} px (stride {info.stride}) in a {info.n_rows}x{info.n_cols} grid; "
        f"{len(res.indices)} encoded, {n_skip} skipped as nodata (fewer than "
        f"{min_valid(args):.0%} valid pixels), {len(res.failures)} unreadable"
    )
    if queries:
        from tabulate import tabulate

        stats = (
            [
                [t, float(np.nanmin(m)), float(np.nanmean(m)), float(np.nanmax(m))]
                for t, m in zip(queries, maps)
            ]
            if len(res.indices)
            else []
        )
        print(tabulate(stats, headers=["Query", "Min", "Mean", "Max"], floatfmt=".4f"))
    if names is not None and len(probs):
        from tabulate import tabulate

        counts = np.bincount(probs.argmax(axis=1), minlength=len(names))
        print(tabulate([[n, int(c)] for n, c in zip(names, counts)], headers=["Class", "Tiles"]))
    for w in written:
        print(f"wrote {w}")
    return _report_failures(res.failures, len(tiles), args, "tile")


def _dense_scene(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    names: list[str],
    templates: list[str],
    tile: int,
    out_dir: Path,
) -> int:
    """``--run-scene --dense``: a blended per-pixel zero-shot class map of the whole scene."""
    from tabulate import tabulate

    from msclip.heads.maskclip import MaskCLIP
    from msclip.heads.scene_predict import predict_scene
    from msclip.tiling import class_counts, write_legend
    from msclip.zero_shot import build_classifier

    classifier = build_classifier(
        model, tokenizer, names, templates, cache=text_cache_for(args, model),
        progress=not args.quiet,
    )  # fmt: skip
    _images_only_from_here(model, tokenizer)
    _warn_georeference(args.scene)
    final = out_dir / "dense_class_map.tif"
    with _input_refusals():
        result = predict_scene(
            args.scene, _pending(final), MaskCLIP(model, classifier).eval(), model,
            task="segmentation", tile_size=tile, overlap=args.overlap,
            batch_size=args.batch_size, bands=args.bands, sensor=args.sensor, nodata=args.nodata,
            class_names=names, device=model.device, progress=not args.quiet,
            tags={"msclip": "zero-shot dense class map (MaskCLIP)"}, skip_unreadable=True,
            strict_bands=args.strict_bands,
        )  # fmt: skip
    if not result.tiles_run:
        _warn_other_outputs(out_dir, [])  # an earlier run's maps stay: they are not this one's
        return _no_data_scene(args, result)
    result.path = _keep(result.path, final)
    counts, missing = class_counts(result.path, len(names))
    legend = write_legend(
        out_dir, "dense_class_map", names, counts, int(result.nodata), "pixels", missing
    )
    written = [result.path, *legend.values()]
    _warn_other_outputs(out_dir, written)
    print(
        f"scene {args.scene}: {result.width}x{result.height} px, {plural(result.tiles, 'tile')} "
        f"of {tile} px ({result.tiles_run} with data), {result.megapixels_per_s:.2f} "
        f"megapixels/s; band 1 class, band 2 confidence (%)"
    )
    total = max(1, int(counts.sum()))
    rows = [[n, int(c), 100.0 * c / total] for n, c in zip(names, counts)]
    print(tabulate(rows, headers=["Class", "Pixels", "%"], floatfmt=".1f"))
    for w in written:
        print(f"wrote {w}")
    return _report_unreadable_tiles(args, result)


def _check_overlap(args: argparse.Namespace, tile: int, default: str = "the model input") -> None:
    """Refuse an ``--overlap`` a per-pixel map cannot take (tiles must move forward), naming
    the flags, before any tile is read; ``default`` says where a tile size not given by
    ``--tile-size`` comes from."""
    if args.overlap is not None and not 0 <= args.overlap < tile:
        raise UsageError(
            f"--overlap {args.overlap} must be less than the tile size, {tile} pixels "
            f"({'--tile-size' if args.tile_size else default}); give at most "
            f"{tile - 1} (default a quarter of the tile)"
        )


def _refuse_int8_dense(args: argparse.Namespace) -> None:
    """``--dense`` reads the float weights of the last block's attention (MaskCLIP), which an
    int8 tower no longer has: refused before the model loads."""
    from msclip.hardware import PRECISION_ENV, choose_precision

    choice = choose_precision(args.precision, run_device(args))
    if choice.precision == "int8":
        asked = choice.requested == "int8"
        given = "--precision int8" if asked else f"{PRECISION_ENV}=int8"
        raise UsageError(
            f"--dense reads the float attention weights of the image tower's last block "
            f"(MaskCLIP), which {given} replaces by int8 layers: use --precision auto or fp32 "
            f"for the dense map" + ("" if asked else f" (or unset {PRECISION_ENV})")
        )


def _check_scene(args: argparse.Namespace) -> None:
    """What is wrong with the scene file as a whole, said once before the model loads: a format
    that cannot be read window by window, or bands that cannot be named (it failed once per
    tile before)."""
    from rasterio.errors import RasterioIOError

    from msclip.errors import BandError, TilingError, UnsupportedFormatError
    from msclip.io.readers import open_raster, raster_band_names
    from msclip.tiling import check_scene_format

    try:
        with open_raster(args.scene) as src:
            try:
                check_scene_format(args.scene, src.driver)
            except TilingError as err:
                raise UsageError(f"{err} (--run-classification)") from err
            try:  # the header only
                raster_band_names(args.scene, bands=args.bands, sensor=args.sensor, src=src)
            except (BandError, UnsupportedFormatError) as err:
                raise UsageError(flag_wording(str(err))) from err
    except RasterioIOError:
        return  # unreadable: the run names the file and GDAL's reason


#: What a tile-map run may write in its folder.
_SCENE_OUTPUTS = ("similarity.tif", "class_map.tif", "class_map_confidence.tif",
                  "class_map_legend.json", "class_map_legend.csv", "tiles.csv",
                  "tiles.csv.json")  # fmt: skip


def _warn_other_outputs(out_dir: Path, written: Sequence[Path]) -> None:
    """Name the scene outputs in ``out_dir`` that this run did not write (an earlier run's, of
    another scene or other settings): beside this run's files they would pass for its own."""
    from msclip.errors import shown_when_quiet

    mine = {Path(w).name for w in written}
    # the tile maps' files and any per-pixel map's (dense_<name>.tif and its legend)
    dense = sorted(p.name for p in out_dir.glob("dense_*") if p.is_file())
    others = [n for n in _SCENE_OUTPUTS if n not in mine and (out_dir / n).exists()]
    others += [n for n in dense if n not in mine]
    if others:
        shown_when_quiet.warning(
            "%s also holds %s of an earlier run, not of this one (their tags name the scene "
            "they map); remove them, or give each run its own --save-path",
            out_dir, ", ".join(others),
        )  # fmt: skip


def _warn_georeference(scene: str) -> None:
    from msclip.tiling import georeference_warning

    why = georeference_warning(scene)
    if why:
        logger.warning("%s", why)


def _pending(final: Path) -> Path:
    """Where a per-pixel map is written before it is known to hold data: beside ``final``, under
    the temporary-file prefix, so that an all-nodata result never replaces an earlier run's map."""
    from msclip.io import TMP_PREFIX

    return final.with_name(f"{TMP_PREFIX}{final.name}.pending.tif")


def _keep(pending: Path, final: Path) -> Path:
    """Move a finished per-pixel map onto its name."""
    from msclip.io.writers import commit

    return commit(pending, final)


def _report_unreadable_tiles(args: argparse.Namespace, result: Any) -> int:
    """Name the tiles of a per-pixel map that could not be read (damaged blocks of the scene;
    their pixels are nodata in the map) as the other runs name unreadable images: exit status 1,
    0 with ``--skip-bad``."""
    if not result.unreadable:
        return EXIT_OK
    # each with GDAL's reason, which names its own block: the first few (-v logs them all)
    shown = ["{} ({})".format(*entry.partition(": ")[::2]) for entry in result.unreadable[:3]]
    n = len(result.unreadable)
    more = f"; and {n - len(shown)} more" if n > len(shown) else ""
    for entry in result.unreadable[len(shown) :]:
        logger.info("unreadable tile of %s: %s", args.scene, entry)
    print(
        f"warning: {n} of {plural(result.tiles, 'tile')} of {args.scene} could not be read "
        f"and {'was' if n == 1 else 'were'} left out; the pixels no readable tile covers are "
        f"nodata in the map: {'; '.join(shown)}{more}",
        file=sys.stderr,
    )
    return EXIT_OK if args.skip_bad else EXIT_PARTIAL


def _no_data_scene(args: argparse.Namespace, result: Any) -> int:
    """Exit status 1 with one line when no tile of a per-pixel scene map held data (the map,
    all nodata, is not kept; an earlier run's map of that name is left as it was)."""
    Path(result.path).unlink(missing_ok=True)
    if result.unreadable:
        _report_unreadable_tiles(args, result)
        print(
            f"error: no tile of {args.scene} could be read or held data; no map written",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    print(
        f"error: no tile of {args.scene} holds data: its {plural(result.tiles, 'tile')} are all "
        "nodata (check --nodata and the scene's nodata value); no map written",
        file=sys.stderr,
    )
    return EXIT_PARTIAL


def _head_scene(args: argparse.Namespace) -> int:
    """``--run-scene --head``: a trained dense head streamed over the whole scene."""
    from tabulate import tabulate

    from msclip.heads.dense_head import DENSE_HEAD_FORMAT, head_file_format, read_dense_head
    from msclip.heads.scene_predict import predict_scene_with_head
    from msclip.io import check_output

    if head_file_format(args.head) != DENSE_HEAD_FORMAT:
        raise UsageError(
            f"{args.head} is an image-level head (classification or regression of whole images): "
            "use it with --run-classification; --run-scene --head takes a dense head "
            "(dense_head.safetensors of msclip-finetune --task segmentation / pixel-regression)"
        )
    need_file(args.scene, "scene file", "--scene", "a raster file")
    if args.adapters is not None:
        need_file(args.adapters, "adapter file", "--adapters", "a LoRA adapter file")
    ckpt = read_dense_head(args.head)
    entry = ckpt.task(args.head_task)
    _check_head_bands(ckpt.info.get("input_bands"), [args.scene], [args.scene], args)
    _head_model_args(args, ckpt.encoder, args.head)
    _head_precision_args(args, {**ckpt.info, "encoder": ckpt.encoder}, dense=True)
    check_checkpoint(args)
    out_dir = check_output(args.save_path or "results/scene", kind="dir")
    stem = f"dense_{entry['name']}".replace("-", "_")
    _check_scene_outputs(args, _map_outputs(out_dir, stem))
    model, _, _ = load_model(args)
    # the head's training crops, the windows its test images were scored in
    tile = args.tile_size or ckpt.crop_size(model)
    _check_overlap(args, tile, "the head's training crops")
    _warn_georeference(args.scene)
    final = out_dir / f"{stem}.tif"
    with _input_refusals():
        result = predict_scene_with_head(
            args.scene, _pending(final), ckpt, model, task=entry["name"],
            adapters=args.adapters, tile_size=tile, overlap=args.overlap,
            batch_size=args.batch_size, bands=args.bands, sensor=args.sensor, nodata=args.nodata,
            progress=not args.quiet, skip_unreadable=True, strict_bands=args.strict_bands,
        )  # fmt: skip
    if not result.tiles_run:
        _warn_other_outputs(out_dir, [])
        return _no_data_scene(args, result)
    result.path = _keep(result.path, final)
    written = [result.path]
    what = (
        "band 1 class, band 2 confidence (%)"
        if result.task == "segmentation"
        else f"band(s) {', '.join(result.band_names)}"
    )
    print(
        f"scene {args.scene}: {result.width}x{result.height} px, {plural(result.tiles, 'tile')} "
        f"({result.tiles_run} with data), {result.megapixels_per_s:.2f} megapixels/s; "
        f"{entry['kind']} head {ckpt.method}: {what}"
    )
    if result.task == "segmentation":
        from msclip.tiling import class_counts, write_legend

        names = list(entry["names"])
        counts, missing = class_counts(result.path, len(names))
        legend = write_legend(out_dir, stem, names, counts, int(result.nodata), "pixels", missing)
        written += list(legend.values())
        total = max(1, int(counts.sum()))
        rows = [[n, int(c), 100.0 * c / total] for n, c in zip(names, counts) if c]
        print(tabulate(rows, headers=["Class", "Pixels", "%"], floatfmt=".1f"))
    _warn_other_outputs(out_dir, written)
    for w in written:
        print(f"wrote {w}")
    return _report_unreadable_tiles(args, result)


# -- entry point --------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    if args.run_classification:
        return run_classification(args)
    if args.run_retrieval:
        return run_retrieval(args)
    return run_scene(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``msclip-inference``; returns the exit status (see :mod:`msclip.cli.common`: 0 ok,
    1 unreadable images, 2 usage or input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "index":
        from msclip.cli.index import main as index_main

        return index_main(argv[1:])
    return run_cli(
        argv,
        parse_args,
        _run,
        flags={"head": "--head", "adapters": "--adapters", "task": "--head-task"},
    )


if __name__ == "__main__":
    from msclip.cli.common import exit_process

    exit_process(main())
