"""``msclip-inference``: zero-shot classification, retrieval and scene maps from the command line.

Modes (one per run):

- ``--run-classification``: zero-shot labels for a set of images. The probabilities follow the
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
- ``index ...``: forwarded to :mod:`msclip.index.cli`.

Input problems are reported before any model work: an empty image set, an unknown template set,
duplicate class names, a missing checkpoint. An unreadable image is named in a warning and
skipped; the run then ends with exit status 1 (0 with ``--skip-bad``). Usage errors exit with 2.
Every output file is written atomically.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from msclip.cli.args import UsageError, fraction, non_negative_int, positive_int

__all__ = [
    "UsageError",
    "add_model_args",
    "add_query_args",
    "add_run_args",
    "build_parser",
    "encode_query_set",
    "load_model",
    "main",
    "output_path",
    "parse_args",
    "read_queries",
    "setup_logging",
    "text_cache_for",
    "write_csv",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Llama3-MS-CLIP-Base"
EXIT_OK, EXIT_BAD_IMAGES, EXIT_USAGE = 0, 1, 2


# -- shared helpers (also used by msclip.index.cli) --------------------------------------------
def add_model_args(
    p: argparse.ArgumentParser, default_model: str | None = DEFAULT_MODEL, inputs: bool = True
) -> Any:
    """``--model-name``, ``--ckpt-path``, ``--pretrained/--no-pretrained``, seed, device,
    precision and, with ``inputs``, the input-band flags (``--bands``, ``--sensor``,
    ``--layout``). Returns the argument group, for CLI-specific model flags."""
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
        type=int,
        default=0,
        help="random seed of the run (random weights with --no-pretrained, random subsets)",
    )
    g.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)",
    )
    g.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="weights cast once to bf16 are ~2x faster on CPUs with AVX-512 BF16",
    )
    if not inputs:
        return g
    g.add_argument(
        "--bands",
        nargs="+",
        default=None,
        help="band names of the input files' channels when the files do not name "
        "them (e.g. B02 B03 B04 B08)",
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


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Batch size, workers, progress and logging flags."""
    g = p.add_argument_group("execution")
    g.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per model call (default 32)"
    )
    g.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="DataLoader worker processes for decoding (default 0)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    g.add_argument("--verbose", "-v", action="store_true", help="debug logging")


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def setup_logging(verbose: bool = False) -> Callable[[], None]:
    """Send log records and Python warnings to stderr as ``warning: ...`` lines.

    Returns:
        A function that undoes the setup (``main`` calls it on return, so calling ``main``
        from Python leaves the process's logging as it was).
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowerLevelFormatter("%(levelname)s: %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.captureWarnings(True)

    def restore() -> None:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(old_level)

    return restore


def check_checkpoint(args: argparse.Namespace) -> None:
    """Refuse a missing ``--ckpt-path`` before any work."""
    if args.ckpt_path is not None and not Path(args.ckpt_path).expanduser().is_file():
        raise UsageError(f"checkpoint file not found: {args.ckpt_path} (--ckpt-path)")
    name = args.model_name
    is_file_name = name is not None and name.endswith((".safetensors", ".pt", ".pth"))
    if is_file_name and not Path(name).expanduser().is_file():
        raise UsageError(f"checkpoint file not found: {name} (--model-name)")


def load_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``(model, preprocess, tokenizer)`` from the model flags."""
    import torch

    from msclip.factory import get_tokenizer, load_model_from_args

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model_from_args(
        args.model_name, args.ckpt_path, args.pretrained, default_name=DEFAULT_MODEL,
        seed=args.seed, device=device, precision=args.precision,
    )  # fmt: skip
    preprocess = model.preprocess(input_bands=args.bands, layout=args.layout, sensor=args.sensor)
    return model, preprocess, get_tokenizer(model)


def encode_query_set(
    args: argparse.Namespace,
    model: Any,
    preprocess: Any,
    tokenizer: Any,
    queries: Sequence[str],
    query_images: Sequence[str],
) -> tuple[Any, list[str]]:
    """L2-normalised embeddings ``[Q, D]`` of text queries then query images, and their names.

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
        res = encode_images(model, preprocess, query_images, args.batch_size, 0)
        if res.failures:
            raise UsageError(
                "query images cannot be read: "
                + "; ".join(f"{f.name} ({f.reason})" for f in res.failures)
            )
        embs.append(res.embeddings)
        names += list(query_images)
    return np.concatenate(embs), names


def write_csv(df: Any, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV atomically (floats with 8 significant digits)."""
    from msclip.io import atomic_write

    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.8g"), ".csv")


def print_table(rows: list[list[Any]], headers: list[str], max_rows: int, total: int) -> None:
    """Print a tabulate table of at most ``max_rows`` rows."""
    from tabulate import tabulate

    print(tabulate(rows[:max_rows], headers=headers, floatfmt=".4f"))
    if total > max_rows:
        print(f"... {total - max_rows} more rows in the CSV")


def output_path(save_path: str | None, default_name: str) -> Path:
    """``--save-path`` as a file: ``results/<default_name>`` when unset, inside it when a folder."""
    if save_path is None:
        return Path("results") / default_name
    p = Path(save_path).expanduser()
    if p.is_dir() or save_path.endswith(os.sep):
        return p / default_name
    return p


# -- argument parsing ---------------------------------------------------------------------------
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
        help="exit 0 even when some images cannot be read (they are still reported)",
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
    c = p.add_argument_group("classification")
    c.add_argument(
        "--class-names",
        nargs="+",
        default=None,
        help="class names (a single comma-separated value is split at commas)",
    )
    c.add_argument("--classes-file", default=None, help=".txt (one per line) or .yaml file")
    c.add_argument(
        "--templates",
        default=None,
        help="template set name (eo, short, sentinel2; default eo) or a text file "
        "with one template per line containing {c}",
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
    c.add_argument(
        "--text-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cache prompt and query embeddings on disk (default on)",
    )
    c.add_argument(
        "--text-cache-dir",
        default=None,
        help="text cache folder (default $MSCLIP_CACHE_DIR/text or ~/.cache/msclip/text)",
    )
    add_query_args(p.add_argument_group("retrieval"), top_k=5)
    s = p.add_argument_group("scene")
    s.add_argument("--scene", default=None, help="the large GeoTIFF / COG to map")
    s.add_argument(
        "--tile-size",
        type=positive_int,
        default=None,
        help="tile side in pixels (default: the model's input size)",
    )
    s.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="step between tiles in pixels (default: the tile size)",
    )
    s.add_argument(
        "--max-nodata",
        type=fraction,
        default=0.5,
        help="skip tiles with a larger fraction of nodata pixels (default 0.5)",
    )
    s.add_argument("--nodata", type=float, default=None, help="nodata value overriding the file's")
    add_run_args(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the arguments (exits with status 2 on a usage error)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.class_names is not None and len(args.class_names) == 1 and "," in args.class_names[0]:
        args.class_names = [n.strip() for n in args.class_names[0].split(",") if n.strip()]
    has_classes = args.class_names is not None or args.classes_file is not None
    if args.class_names is not None and args.classes_file is not None:
        p.error("give class names either with --class-names or with --classes-file, not both")
    if args.run_classification:
        if args.images is None:
            p.error("--run-classification needs --images")
        if not has_classes:
            p.error("--run-classification needs --class-names or --classes-file")
    if args.run_retrieval:
        if args.images is None:
            p.error("--run-retrieval needs --images")
        if not (args.query or args.queries_file or args.query_image):
            p.error("--run-retrieval needs --query, --queries-file or --query-image")
    if args.run_scene:
        if args.scene is None:
            p.error("--run-scene needs --scene")
        if not (args.query or args.queries_file or has_classes):
            p.error(
                "--run-scene needs --query/--queries-file (similarity map) and/or "
                "--class-names/--classes-file (class map)"
            )
    if args.threshold is not None and not args.multi_label:
        p.error("--threshold applies to --multi-label; add --multi-label")
    return args


# -- input checks (before any work) ------------------------------------------------------------
def _class_names(args: argparse.Namespace) -> list[str] | None:
    from msclip.zero_shot import check_class_names, load_class_names

    if args.class_names is None and args.classes_file is None:
        return None
    names = (
        args.class_names if args.class_names is not None else load_class_names(args.classes_file)
    )
    return check_class_names(names)


def read_queries(args: argparse.Namespace) -> list[str]:
    """Text queries from ``--query`` and ``--queries-file`` (one per line), without duplicates."""
    queries = list(args.query or [])
    if args.queries_file:
        p = Path(args.queries_file).expanduser()
        if not p.is_file():
            raise UsageError(f"queries file not found: {p} (--queries-file)")
        queries += [q.strip() for q in p.read_text(encoding="utf-8").splitlines() if q.strip()]
    empty = [q for q in queries if not q.strip()]
    if empty:
        raise UsageError("empty --query given")
    return list(dict.fromkeys(queries))


def text_cache_for(args: argparse.Namespace, model: Any) -> Any:
    """The model's text embedding cache, or ``None`` with ``--no-text-cache``."""
    if not args.text_cache:
        return None
    from msclip.text_cache import TextEmbeddingCache

    return TextEmbeddingCache.for_model(model, args.text_cache_dir)


def _report_failures(failures: Sequence[Any], total: int, args: argparse.Namespace) -> int:
    if not failures:
        return EXIT_OK
    msg = f"{len(failures)} of {total} images could not be read and were skipped (named above)"
    print(f"warning: {msg}", file=sys.stderr)
    return EXIT_OK if args.skip_bad else EXIT_BAD_IMAGES


# -- modes --------------------------------------------------------------------------------------
def run_classification(args: argparse.Namespace) -> int:
    """``--run-classification``."""
    from msclip.encode import list_images
    from msclip.zero_shot import load_templates

    images = list_images(args.images)
    templates = load_templates(args.templates or "eo")
    names = _class_names(args)
    if names is None:
        raise UsageError("--run-classification needs --class-names or --classes-file")
    if args.multi_label and args.threshold is None and len(names) < 2:
        raise UsageError(
            "--multi-label compares each class with the others: give at least two "
            "classes, or a --threshold"
        )
    check_checkpoint(args)
    out_path = output_path(args.save_path, "classification.csv")

    import pandas as pd
    import torch

    from msclip.encode import encode_images
    from msclip.zero_shot import build_classifier, zero_shot_logits

    model, preprocess, tokenizer = load_model(args)
    progress = not args.quiet
    classifier = build_classifier(
        model, tokenizer, names, templates, cache=text_cache_for(args, model), progress=progress
    )
    res = encode_images(model, preprocess, images, args.batch_size, args.workers, progress=progress)
    logits = zero_shot_logits(torch.from_numpy(res.embeddings), classifier)
    probs = logits.softmax(dim=-1).double().numpy()
    if args.multi_label and len(probs):
        from msclip.eval.metrics import multilabel_predict

        if args.threshold is not None:
            present = multilabel_predict(probs, "threshold", args.threshold)
        else:
            # The published rule compares logits (100 x cosine), as evaluation.py does.
            present = multilabel_predict(logits.double().numpy(), "mean_others")
        labels = [";".join(n for n, on in zip(names, row) if on) for row in present]
    else:
        labels = [names[int(i)] for i in probs.argmax(axis=1)] if len(probs) else []
    paths = [images[i] for i in res.indices]
    df = pd.DataFrame({"Image": paths, "Class": labels})
    for j, n in enumerate(names):
        df[n] = probs[:, j]
    write_csv(df, out_path)

    if len(names) <= 6:
        headers = ["Image", "Class", *names]
        rows = [[Path(p).name, lab, *pr] for p, lab, pr in zip(paths, labels, probs)]
    else:
        headers = ["Image", "Class", "Probability", "Runner-up"]
        rows = []
        for p, lab, pr in zip(paths, labels, probs):
            order = pr.argsort()[::-1]
            rows.append(
                [Path(p).name, lab, pr[order[0]], f"{names[order[1]]} ({pr[order[1]]:.3f})"]
            )
    print_table(rows, headers, args.max_print, len(rows))
    print(
        f"{len(paths)} images classified into {len(names)} classes with {len(templates)} "
        f"templates; CSV: {out_path}"
    )
    return _report_failures(res.failures, len(images), args)


def _top_k(k: int, n: int) -> int:
    if k > n:
        print(f"note: --top-k {k} is more than the {n} images; returning {n}", file=sys.stderr)
    return min(k, n)


def run_retrieval(args: argparse.Namespace) -> int:
    """``--run-retrieval``."""
    from msclip.encode import list_images

    images = list_images(args.images)
    queries = read_queries(args)
    query_images = list_images(args.query_image) if args.query_image else []
    check_checkpoint(args)
    out_path = output_path(args.save_path, "retrieval.csv")

    import numpy as np
    import pandas as pd

    from msclip.encode import encode_images

    model, preprocess, tokenizer = load_model(args)
    progress = not args.quiet
    q_emb, q_names = encode_query_set(args, model, preprocess, tokenizer, queries, query_images)
    res = encode_images(model, preprocess, images, args.batch_size, args.workers, progress=progress)
    paths = [images[i] for i in res.indices]
    rows = []
    if paths:
        k = _top_k(args.top_k, len(paths))
        sims = q_emb @ res.embeddings.T
        for qi, q in enumerate(q_names):
            order = np.argsort(-sims[qi], kind="stable")[:k]
            rows += [[q, r + 1, paths[j], float(sims[qi, j])] for r, j in enumerate(order)]
    df = pd.DataFrame(rows, columns=["Query", "Rank", "Image", "Similarity"])
    write_csv(df, out_path)
    shown = [[q if len(q) <= 40 else q[:37] + "...", r, Path(im).name, s] for q, r, im, s in rows]
    print_table(shown, ["Query", "Rank", "Image", "Similarity"], args.max_print, len(rows))
    print(f"{len(q_names)} queries over {len(paths)} images; CSV: {out_path}")
    return _report_failures(res.failures, len(images), args)


def run_scene(args: argparse.Namespace) -> int:
    """``--run-scene``."""
    from msclip.scene import open_scene, scene_tiles

    names = _class_names(args)
    templates = None
    if names is not None:
        from msclip.zero_shot import load_templates

        templates = load_templates(args.templates or "eo")
    queries = read_queries(args)
    if not Path(args.scene).expanduser().is_file():
        raise UsageError(f"scene file not found: {args.scene} (--scene)")
    check_checkpoint(args)
    out_dir = Path(args.save_path).expanduser() if args.save_path else Path("results/scene")

    import numpy as np
    import pandas as pd
    import torch

    from msclip.encode import encode_images
    from msclip.scene import write_class_map, write_tile_map
    from msclip.zero_shot import build_classifier, encode_queries, zero_shot_probs

    model, preprocess, tokenizer = load_model(args)
    tile = args.tile_size or model.image_size
    info = open_scene(args.scene, tile, args.stride or tile)
    if info.crs is None:
        logger.warning("%s has no CRS: the maps are written without georeference", args.scene)
    tiles = scene_tiles(info)
    cache = text_cache_for(args, model)
    progress = not args.quiet
    res = encode_images(
        model,
        preprocess,
        tiles,
        args.batch_size,
        args.workers,
        progress=progress,
        max_nodata=args.max_nodata,
        nodata=args.nodata,
    )
    rr = np.array([tiles[i].grid_row for i in res.indices], dtype=int)
    cc = np.array([tiles[i].grid_col for i in res.indices], dtype=int)
    grid = (info.n_rows, info.n_cols)
    table = pd.DataFrame(
        {
            "Tile": [tiles[i].name for i in res.indices],
            "Row": [tiles[i].row for i in res.indices],
            "Col": [tiles[i].col for i in res.indices],
        }
    )
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
                tags={"msclip": "cosine similarity"},
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
        written += list(write_class_map(out_dir, labels, names, info, confidence=conf).values())
        table["Class"] = [names[int(i)] for i in probs.argmax(axis=1)] if len(probs) else []
        for j, n in enumerate(names):
            table[n] = probs[:, j]
    written.append(write_csv(table, out_dir / "tiles.csv"))
    n_skip = len(res.skipped)
    print(
        f"scene {info.path}: {info.width}x{info.height} px, {len(tiles)} tiles of {tile} px "
        f"(stride {info.stride}) in a {info.n_rows}x{info.n_cols} grid; {len(res.indices)} "
        f"encoded, {n_skip} skipped as nodata, {len(res.failures)} unreadable"
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
    return _report_failures(res.failures, len(tiles), args)


# -- entry point --------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``msclip-inference``; returns the exit status (0 ok, 1 unreadable images, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "index":
        from msclip.index.cli import main as index_main

        return index_main(argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    restore_logging = setup_logging(args.verbose)
    from msclip.errors import MSCLIPError

    try:
        if args.run_classification:
            return run_classification(args)
        if args.run_retrieval:
            return run_retrieval(args)
        return run_scene(args)
    except (UsageError, MSCLIPError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
