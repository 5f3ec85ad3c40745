"""``msclip-index`` / ``python -m msclip.index``: build, extend, search and describe an index.

Subcommands:

- ``build INDEX --images ... --scenes ...``: create the index (or resume a killed build of it):
  image files give one embedding each, scenes are tiled (``--tile-size``, ``--stride``; tiles with
  a fraction of valid pixels below ``--min-valid`` skipped). See :mod:`msclip.index.build`. Under
  ``torchrun --nproc_per_node N -m msclip.index build ...`` (one or several machines) every
  process encodes its own share and process 0 writes the index (:mod:`msclip.index.sharded`).
- ``add INDEX ...``: add more files or scenes to an existing index (already indexed ones are
  skipped); the model must be the one that built it.
- ``search INDEX --query TEXT | --query-image IMG``: top-k by cosine similarity; writes a CSV
  (``Query``, ``Rank``, ``Similarity``, ``Id``, ``Image``: the file's absolute path, and the
  window/geo columns) and, when results are georeferenced, a GeoJSON FeatureCollection of their
  footprints in EPSG:4326 (RFC 7946). A query model that differs from the index's (name,
  checkpoint hash, bands, preprocessing) is refused.
- ``info INDEX``: size, model, sources, disk usage.

For ``add`` and ``search`` the model defaults to the one named in the index manifest (its name, its
checkpoint file when that still exists, and random weights when the index was built without a
weight file).

Exit status: 0 ok, 1 some inputs unreadable (0 with ``--skip-bad``), 2 usage or input errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
    image_options,
    large_refusal,
    load_model,
    min_valid,
    model_inputs,
    non_negative_int,
    output_path,
    parse_subcommand_args,
    plural,
    positive_int,
    print_table,
    query_image_paths,
    read_queries,
    refuse_input_as_output,
    run_cli,
    run_device,
    run_record_path,
    seconds,
    write_table_and_record,
)

__all__ = ["build_parser", "main", "parse_args"]

logger = logging.getLogger(__name__)

#: What to do with a raster far larger than the model input (as msclip-inference refuses it).
_LARGE_IMAGE_FIX = "give it with --scenes to index it tile by tile"
_LARGE_QUERY_FIX = (
    "give a query image of about the model's input size (a crop of the scene), or index the "
    "scene tile by tile with --scenes"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``msclip-index``."""
    p = argparse.ArgumentParser(
        prog="msclip-index",
        description="Embedding indexes of images and scene tiles: build, add, search, info.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("build", "create an index, or resume a killed build"),
        ("add", "add files or scenes to an existing index"),
    ):
        b = sub.add_parser(name, help=text, description=text)
        b.add_argument("index", help="index directory")
        b.add_argument(
            "--images",
            nargs="+",
            default=[],
            help="folders, image files, .txt/.yaml lists or globs: one embedding each",
        )
        b.add_argument(
            "--scenes",
            nargs="+",
            default=[],
            help="large scenes (GeoTIFF / COG, JPEG 2000 or VRT; same forms) to cut into tiles",
        )
        b.add_argument(
            "--tile-size",
            type=positive_int,
            default=None,
            help="tile side in pixels (default: the model's input size)",
        )
        b.add_argument(
            "--stride",
            type=positive_int,
            default=None,
            help="step between tiles (default: the tile size)",
        )
        add_input_check_args(b)
        b.add_argument(
            "--commit-seconds",
            type=seconds,
            default=60.0,
            help="commit finished sources at least this often (default 60 s); a killed build "
            "keeps every committed source and loses the ones after (a source commits once it "
            "is whole: a large scene only when its last tile is encoded)",
        )
        b.add_argument(
            "--skip-bad", action="store_true", help="exit 0 even when some inputs cannot be read"
        )
        add_model_args(b)
        add_run_args(b)
        b.set_defaults(pretrained=None, seed=None)
    s = sub.add_parser(
        "search",
        help="search by text or image",
        description="The top-k embeddings of the index for each text query or query image "
        "(int8 short-list re-ranked exactly; --exact for a full float scan), as a CSV table "
        "and, for georeferenced hits, GeoJSON footprints.",
    )
    s.add_argument("index", help="index directory")
    add_query_args(s, top_k=10)
    s.add_argument(
        "--save-path", default=None, help="CSV of the results (default results/index_search.csv)"
    )
    s.add_argument(
        "--geojson",
        default=None,
        help="GeoJSON of georeferenced results (default: the CSV path with .geojson)",
    )
    s.add_argument(
        "--exact",
        action="store_true",
        help="exact float scan instead of the int8 short-list with exact re-ranking",
    )
    s.add_argument(
        "--max-print",
        type=non_negative_int,
        default=20,
        help="rows of the printed table (default 20; the CSV has all)",
    )
    add_text_cache_args(s)
    add_model_args(s)
    add_run_args(s)
    s.set_defaults(pretrained=None, seed=None)
    i = sub.add_parser(
        "info",
        help="describe an index",
        description="The index's size, sources, model (name, architecture, precision, "
        "checkpoint hash, bands, image size), disk use and dates.",
    )
    i.add_argument("index", help="index directory")
    i.add_argument("--json", action="store_true", help="print the full description as JSON")
    return finish_parser(p)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the arguments (exits with status 2 on a usage error)."""
    p = build_parser()
    args = parse_subcommand_args(p, argv)
    if args.command in ("build", "add") and not (args.images or args.scenes):
        p.error(f"{args.command} needs --images and/or --scenes")
    if args.command in ("build", "add") and not args.scenes:
        tiling = [f for f, v in (("--tile-size", args.tile_size), ("--stride", args.stride)) if v]
        if tiling:
            p.error(
                f"{' and '.join(tiling)} apply to the scenes of --scenes, which are tiled; "
                "--images are indexed whole: give the large rasters with --scenes, or leave "
                f"{' and '.join(tiling)} out"
            )
    if args.command == "search" and not (args.query or args.queries_file or args.query_image):
        p.error("search needs --query, --queries-file or --query-image")
    return args


# -- model defaults from the manifest -------------------------------------------------------------
def _warn_emulated_index_precision(args: argparse.Namespace) -> None:
    """Adding to a bf16 index on a CPU that emulates bf16: said once, in these words (the
    index's rows fix the precision; the general advice to use auto or fp32 would not apply)."""
    from msclip.hardware import cpu_bf16_native, cpu_info, device_type, warn_emulated_bf16

    if device_type(run_device(args)) != "cpu" or cpu_bf16_native():
        return
    cpu = cpu_info()
    warn_emulated_bf16(
        f"the index {args.index} holds bf16 embeddings, so adding to it runs the model in bf16, "
        f"which this CPU ({cpu.kind}) emulates: typically 100x or more slower than fp32; add to "
        "it on a machine with native bf16 or a GPU, or build a new index here (auto picks fp32)"
    )


def _auto_is_as_built(args: argparse.Namespace, manifest_model: dict[str, Any]) -> bool:
    """Whether ``auto`` here gives the arithmetic the index's rows were computed with where that
    is the fused fp32 path (``auto`` on a CPU without native bf16), which no explicit precision
    names: ``fp32`` is OpenCLIP's arithmetic, another path (and a slower one there)."""
    from msclip.errors import PrecisionError
    from msclip.factory import FUSED_FP32_NOTE
    from msclip.hardware import choose_precision

    reason = str(manifest_model.get("precision_reason") or "")
    if manifest_model.get("precision") != "fp32" or not reason.endswith(FUSED_FP32_NOTE):
        return False
    try:
        choice = choose_precision("auto", run_device(args))
    except PrecisionError:
        return False  # the index's precision, asked for by name, does not read the variable
    return choice.precision == "fp32" and choice.fused_fp32


def _model_defaults(
    args: argparse.Namespace, manifest_model: dict[str, Any] | None, writing: bool = False
) -> None:
    """Fill unset model flags from the index's model description (and, for ``build``/``add``
    into an existing index, the precision it was built in: its rows must be of one precision)."""
    if manifest_model is None:
        if args.pretrained is None:
            args.pretrained = True
        if args.seed is None:
            args.seed = 0
        return
    random_weights = str(manifest_model.get("checkpoint_sha256", "")).startswith("weights:")
    if args.seed is None:
        # random weights are drawn again from the seed the index recorded
        args.seed = int(manifest_model.get("init_seed", 0))
    if args.pretrained is False and not random_weights and args.ckpt_path is None:
        source = manifest_model.get("checkpoint_path") or manifest_model.get("name")
        raise UsageError(
            f"--no-pretrained: the index {args.index} was built with the weights of {source}, "
            "which it is searched and extended with; random weights would give other "
            "embeddings: drop --no-pretrained"
        )
    from msclip.hardware import device_type

    built = manifest_model.get("precision")
    if writing and built == "fp16" and device_type(run_device(args)) == "cpu":
        raise UsageError(
            f"the index {args.index} holds fp16 embeddings (built on a GPU without native bf16), "
            "and the rows of an index share one precision, which a CPU cannot compute: add to it "
            "on a GPU, or build a new index here"
        )
    if writing and getattr(args, "precision", None) in (None, "auto") and built:
        logger.info("precision %s, as the index %s was built", built, args.index)
        if not _auto_is_as_built(args, manifest_model):
            args.precision = str(built)
        # what the run reports (precision: ... (auto: as the index ... was built))
        args._precision_why = ("auto", f"as the index {args.index} was built")
        if built == "bf16":
            _warn_emulated_index_precision(args)
    if args.model_name is None and args.ckpt_path is None:
        ckpt = manifest_model.get("checkpoint_path")
        if ckpt and Path(ckpt).is_file():
            args.ckpt_path = ckpt
        if not (args.ckpt_path and args.ckpt_path.endswith(".safetensors")):
            # msclip .safetensors files describe their own architecture and bands.
            args.model_name = manifest_model.get("name")
    if args.pretrained is None:
        # "weights:<hash>": the index was built from weights not loaded from a file
        args.pretrained = not random_weights


def _existing(index: str) -> Any:
    """The index at ``index`` (:class:`msclip.index.store.IndexStore`), or ``None``."""
    from msclip.index.store import IndexNotFoundError, IndexStore

    try:
        return IndexStore.open(index)
    except IndexNotFoundError:
        return None


# -- search ---------------------------------------------------------------------------------------
def _top_k(
    store: Any, queries: np.ndarray, k: int, exact: bool, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The search. ``device`` is the --device given: ``cpu`` keeps the index off a GPU another
    job holds; ``cuda:<n>`` is made the current device, on which the search's ``auto`` scans
    when its kernel works there (else on the CPU, with a note in the log)."""
    import torch

    from msclip.index.search import SearchIndex

    where = "cpu" if device == "cpu" else "auto"
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        if dev.index is not None:
            torch.cuda.set_device(dev)
    index = SearchIndex.from_store(store, quantize=not exact, device=where)
    result = index.search(queries, k, exact=exact)
    return result.scores, result.ids


def _geojson(df: Any) -> dict[str, Any]:
    """The features of the rows of ``df`` with a footprint (a column at a time, and each
    footprint's geometry once: a query set of 10^4 lines gives 10^5 rows and more)."""
    from msclip.tiling import footprint_geometry

    rings = df["footprint"].tolist()
    keep = [i for i, ring in enumerate(rings) if isinstance(ring, str) and ring]
    names = [c for c in df.columns if c != "footprint"]
    part = df.iloc[keep]
    columns = [_json_column(part[c]) for c in names]
    geometries: dict[str, dict[str, Any]] = {}
    features = []
    for j, i in enumerate(keep):
        ring = rings[i]
        if ring not in geometries:
            geometries[ring] = footprint_geometry(json.loads(ring))
        features.append(
            {
                "type": "Feature",
                "geometry": geometries[ring],
                "properties": {c: col[j] for c, col in zip(names, columns)},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _json_column(series: Any) -> list[Any]:
    """A column's values as strict JSON (:func:`_json_value`); plain numeric columns at once."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biu":
        return series.tolist()
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        values = series.to_numpy(dtype=np.float64)
        return [v if ok else None for v, ok in zip(values.tolist(), np.isfinite(values).tolist())]
    return [_json_value(v) for v in series.tolist()]


def _json_value(value: Any) -> Any:
    """A metadata value as strict JSON (RFC 8259): missing values (NaN, NaT, pd.NA) and
    infinities as null, datetimes in ISO 8601, numpy scalars as Python ones (the columns of an
    index written through the Python API may hold any of them)."""
    import pandas as pd

    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (not isinstance(value, (str, list, dict)) and pd.isna(value)):
        return None
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (pd.Timestamp, pd.Timedelta)):
        return value.isoformat()
    return value


def _open(index: str) -> Any:
    from msclip.errors import IndexNotFoundError
    from msclip.index.store import IndexStore, folder_problem

    try:
        return IndexStore.open(index)
    except IndexNotFoundError as err:
        if folder_problem(index) is not None:  # a file: creating an index there fails too
            raise
        raise UsageError(
            f"{err}; create it with 'msclip-index build {index} --images ...'"
        ) from err


def _refuse_search_outputs(
    args: argparse.Namespace,
    store: Any,
    out: Path,
    gpath: Path,
    gflag: str,
    query_images: Sequence[str],
) -> None:
    """Refuse a search output inside the index folder (its files, or new files among them) or
    one that is an input of the search: the queries file, a query image, the weights, or a file
    of the index."""
    index_dir = Path(args.index).resolve()
    outputs = ((out, "--save-path"), (run_record_path(out), "--save-path"), (gpath, gflag))
    for path, flag in outputs:
        where = path.resolve()
        if where == index_dir or index_dir in where.parents:
            raise UsageError(
                f"{flag} {path} lies inside the index {args.index}: writing there would damage "
                f"it; give a path outside it (e.g. results/{path.name})"
            )
    inputs = [
        ("the queries file", args.queries_file),
        ("a query image", query_images),
        *model_inputs(args),
    ]
    refuse_input_as_output(out, inputs, "index_search.csv", beside=[run_record_path(out)])
    refuse_input_as_output(gpath, inputs, "index_search.geojson", flag=gflag)
    keys: set[str] | None = None  # the indexed files' keys (absolute paths), read only if needed
    for path, flag in outputs:
        if path.exists():
            keys = {s.key for s in store.sources} if keys is None else keys
            hit = next((p for p in (os.path.abspath(path), str(path.resolve())) if p in keys), None)
            if hit is not None:
                raise UsageError(
                    f"{flag} {path} is the indexed file {hit}: writing the results there would "
                    f"destroy it; give another file (e.g. results/{path.name})"
                )


def _run_search(args: argparse.Namespace) -> int:

    from msclip.index.build import COMPARE_KEYS, model_info
    from msclip.io import atomic_write, check_output
    from msclip.io.images import unique_names

    store = _open(args.index)
    queries = read_queries(args)
    query_images = query_image_paths(args)
    _model_defaults(args, store.model_info)
    check_checkpoint(args)
    out = check_output(output_path(args.save_path, "index_search.csv"))
    check_output(run_record_path(out))
    geojson = check_output(args.geojson, param="geojson") if args.geojson else None
    gpath = geojson if geojson is not None else out.with_suffix(".geojson")
    if gpath.resolve() == out.resolve():
        raise UsageError(
            f"the results table and the GeoJSON would both be {out}: give the table a .csv path "
            "(--save-path) and the GeoJSON its own (--geojson)"
        )
    if gpath.resolve() == run_record_path(out).resolve():
        raise UsageError(
            f"--geojson {gpath} is where the search writes the run record of {out}: give the "
            f"GeoJSON another path (e.g. {out.with_suffix('.geojson')})"
        )
    gflag = "--geojson" if geojson else "--save-path"
    _refuse_search_outputs(args, store, out, gpath, gflag, query_images)
    if store.count == 0:
        raise UsageError(
            f"index {args.index} is empty; add images with 'msclip-index add {args.index} "
            "--images ...'"
        )

    large = LargeCheck(query_images, _LARGE_QUERY_FIX, every_file=True)
    scan_device = args.device  # as given: load_model settles the model's device
    model, preprocess, tokenizer = load_model(args, options=image_options(args), large=large)
    store.check_compatible(model_info(model), keys=COMPARE_KEYS)
    q_emb, names = encode_query_set(
        args, model, preprocess, tokenizer, queries, query_images, _LARGE_QUERY_FIX
    )
    if args.top_k > store.count:
        print(
            f"note: --top-k {args.top_k} is more than the {plural(store.count, 'embedding')}; "
            f"returning {store.count}",
            file=sys.stderr,
        )
    scores, ids = _top_k(store, q_emb, args.top_k, args.exact, scan_device)
    hit_sources = _hit_sources(store, ids)
    df = _results_frame(store.metadata, names, scores, ids, hit_sources)
    written = write_table_and_record(
        df, out, model, args, "msclip-index", "index search", queries=list(names),
        top_k=min(args.top_k, store.count), exact=bool(args.exact),
        index={"path": str(args.index), "index_id": store.index_id, "embeddings": store.count},
    )  # fmt: skip
    geo = _geojson(df) if "footprint" in df.columns else {"features": []}
    notes = []
    if geo["features"] or geojson is not None:
        # an explicit --geojson is always written (an empty FeatureCollection when no result is
        # georeferenced), so it never holds an earlier search's results
        geo = {"type": "FeatureCollection", "features": geo["features"]}
        text = json.dumps(geo, separators=(",", ":"))
        written.append(atomic_write(gpath, lambda tmp: Path(tmp).write_text(text), ".geojson"))
        if not geo["features"]:
            notes.append(f"note: no result is georeferenced; {gpath} holds no features")
        elif len(geo["features"]) < len(df):  # the CSV's other rows: files without a CRS
            left = len(df) - len(geo["features"])
            rings = zip(df["Image"], df["footprint"])
            plain = sorted({str(im) for im, ring in rings if not (isinstance(ring, str) and ring)})
            shown = ", ".join(os.path.basename(f) for f in plain[:3])
            shown += f" and {len(plain) - 3} more" if len(plain) > 3 else ""
            one = left == 1
            notes.append(
                f"note: {left} of {plural(len(df), 'result')} {'is' if one else 'are'} not "
                f"georeferenced ({shown}: no CRS) and left out of {gpath}; the CSV lists "
                f"{'it' if one else 'them'}"
            )
    else:
        stale = gpath.is_file()
        if stale:  # an earlier search's footprints must not sit next to this CSV
            gpath.unlink()
        notes.append(
            "note: no result is georeferenced, no GeoJSON written"
            + (f" (removed the earlier {gpath})" if stale else "")
        )
    files = sorted({str(im) for im in df["Image"]})
    short = dict(zip(files, unique_names(files, [os.path.dirname(f) for f in files])))
    shown = [
        [q if len(q) <= 40 else q[:37] + "...", r, short[str(im)], w, s]
        for q, r, im, w, s in zip(
            df["Query"], df["Rank"], df["Image"], _windows(df), df["Similarity"]
        )
    ]
    print_table(
        shown, ["Query", "Rank", "Image", "Window", "Similarity"], args.max_print, len(shown)
    )
    for w in written:
        print(f"wrote {w}")
    for n in notes:
        print(n)
    _note_stale_hits(hit_sources.values())
    return EXIT_OK


def _results_frame(
    meta: Any,
    names: Sequence[str],
    scores: np.ndarray,
    ids: np.ndarray,
    hit_sources: dict[int, Any],
) -> Any:
    """The results table: ``Query``, ``Rank``, ``Similarity``, ``Id``, ``Image`` (the hit's
    file), then the hits' metadata columns but ``path``, one row per query and rank (built a
    column at a time: a row at a time took minutes for 10^4 queries)."""
    import pandas as pd

    k = ids.shape[1] if ids.ndim == 2 else 0
    flat = np.asarray(ids, dtype=np.int64).reshape(-1)
    hits = meta.iloc[flat].reset_index(drop=True)
    paths = hits["path"] if "path" in hits.columns else pd.Series([None] * len(hits))
    files = {}  # the hit's file, once per id
    for i, path in zip(flat.tolist(), paths.tolist()):
        if i not in files:
            files[i] = _hit_file(hit_sources.get(i), path)
    df = pd.DataFrame(
        {
            "Query": np.repeat(np.asarray(list(names), dtype=object), k),
            "Rank": np.tile(np.arange(1, k + 1, dtype=np.int64), len(names)),
            "Similarity": np.asarray(scores, dtype=np.float64).reshape(-1),
            "Id": flat,
            "Image": [files[i] for i in flat.tolist()],
        }
    )
    extra = hits.drop(columns=[c for c in ("path",) if c in hits.columns])
    # a metadata column named as one of the table's own (the Python API's may be named anyhow)
    # is kept beside it, under another name, and never replaces it
    taken = set(df.columns) | set(extra.columns)
    renamed = {}
    for c in extra.columns:
        if c in df.columns:
            new = f"metadata.{c}"
            while new in taken:
                new = f"metadata.{new}"
            renamed[c] = new
            taken.add(new)
    if renamed:
        print(
            "note: index metadata columns named as columns of the results are written as "
            + ", ".join(f"{new} ({old})" for old, new in renamed.items()),
            file=sys.stderr,
        )
        extra = extra.rename(columns=renamed)
    return pd.concat([df, extra], axis=1)


def _hit_file(source: Any, path: Any) -> Any:
    """A hit's file as an absolute path: its source key when that key is the row's file (the
    keys msclip-index writes), else the row's ``path`` as stored (keys of the Python API may be
    any text, e.g. ``bigearthnet:S2A_1``)."""
    from msclip.index.build import source_file

    if source is not None and path is not None and str(path):
        key_file, row = source_file(source.key), str(path)
        # an index of before absolute paths holds the path as given: the same file name
        if os.path.abspath(row) == key_file or os.path.basename(row) == os.path.basename(key_file):
            return key_file
    return path


def _hit_sources(store: Any, ids: np.ndarray) -> dict[int, Any]:
    """The source (:class:`msclip.index.store.SourceRange`) of each hit id that has one."""
    import bisect

    ranges = [r for r in store.sources if r.stop > r.start]
    starts = [r.start for r in ranges]
    out = {}
    for i in {int(i) for i in np.asarray(ids).ravel()}:
        j = bisect.bisect_right(starts, i) - 1
        if j >= 0 and ranges[j].start <= i < ranges[j].stop:
            out[i] = ranges[j]
    return out


def _note_stale_hits(sources: Iterable[Any]) -> None:
    """A note naming results whose file no longer exists or changed since it was indexed."""
    from msclip.index.build import source_file, stale_files

    # keys that are files (msclip-index's); the Python API's keys may be any text
    infos = {s.key: s.info for s in sources if os.path.isabs(source_file(s.key))}
    changed, vanished = stale_files(infos)
    files = {source_file(k) for k in infos}
    vanished += sorted(f for f in files - set(vanished) if not os.path.exists(f))
    for what, paths in (("no longer exist", vanished), ("changed since indexed", changed)):
        if paths:
            more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
            listed = ", ".join(paths[:5]) + more
            print(
                f"note: result files that {what} (their embeddings are of the files as "
                f"indexed): {listed}; build a new index of the current files to bring it up to "
                "date",
                file=sys.stderr,
            )


def _windows(df: Any) -> list[str]:
    if "tile" not in df.columns:
        return [""] * len(df)
    return [
        f"{int(r)},{int(c)} {int(h)}x{int(w)}" if t else "whole file"
        for t, r, c, h, w in zip(df["tile"], df["row"], df["col"], df["height"], df["width"])
    ]


# -- build / add / info ---------------------------------------------------------------------------
def _run_build(args: argparse.Namespace) -> int:
    from msclip.errors import BandCoverageError, ImageSetError, RasterTooLargeError
    from msclip.index.build import build_index
    from msclip.index.store import folder_problem
    from msclip.io import list_images

    problem = folder_problem(args.index)
    if problem is not None:  # before loading the model and planning the sources
        raise UsageError(problem)
    images = list_images(args.images) if args.images else []
    try:
        scenes = list_images(args.scenes) if args.scenes else []
    except ImageSetError as err:
        err.param = "scenes"  # named as --scenes, not as the images' flag
        raise
    store = _existing(args.index)
    existing = store.model_info if store is not None else None
    if args.command == "add" and existing is None:
        raise UsageError(
            f"no index at {args.index}; create it with 'msclip-index build {args.index} ...'"
        )
    _model_defaults(args, existing, writing=True)
    check_checkpoint(args)
    # files already in the index (one embedding each, from before the refusal) are not judged;
    # a file's key is its absolute path
    keys = {s.key for s in store.sources} if store is not None else set()
    new = [f for f in images if os.path.abspath(f) not in keys]
    group = _join_process_group(args)  # under torchrun: one share of the sources per process
    if group is not None and group.rank != 0:
        # status lines ("loading ...", "precision: ...") once, from process 0: the processes
        # compare their plans, model and precision, so the others' would only repeat them (32
        # copies on 32 processes); their warnings are still shown, as only they may meet them
        args.quiet = True
    try:
        large = LargeCheck(new, _LARGE_IMAGE_FIX)
        model, preprocess, _ = load_model(args, options=image_options(args), large=large)
        options = dict(
            tile_size=args.tile_size, stride=args.stride, min_valid=min_valid(args),
            nodata=args.nodata, batch_size=args.batch_size, workers=args.workers,
            progress=not args.quiet, commit_seconds=args.commit_seconds,
            must_exist=args.command == "add",
            # files past the ones judged from their headers above are refused as they are read
            abort_on=(BandCoverageError, RasterTooLargeError),
        )  # fmt: skip
        try:
            if group is None:
                report = build_index(args.index, model, preprocess, images, scenes, **options)
            else:
                from msclip.index.sharded import build_sharded

                report = build_sharded(
                    args.index, model, preprocess, images, scenes, **options, rank=group.rank,
                    world=group.world_size,
                )  # fmt: skip
        except RasterTooLargeError as err:  # the sources encoded before it are committed
            raise UsageError(large_refusal(str(err), _LARGE_IMAGE_FIX)) from err
        if group is not None and group.rank != 0:
            # process 0 adds every source (its failures too), prints the summary and gives the
            # status: a non-zero status here would make torchrun stop process 0
            return EXIT_OK
    finally:
        if group is not None:
            group.close()
    from tabulate import tabulate

    n_bad_tiles = report.failed_tiles
    n_bad_files = len(report.failures) - n_bad_tiles
    rows = [
        ["sources given", report.sources],
        ["already indexed (skipped)", report.skipped_done],
        ["changed since indexed", len(report.changed)],
        ["indexed with another tiling", len(report.retiled)],
        ["sources added", report.added],
        ["embeddings added", report.rows],
        ["skipped as nodata", report.nodata],
        ["unreadable files / tiles", f"{n_bad_files} / {n_bad_tiles}"],
        ["embeddings in the index", report.count],
    ]
    if report.moved:  # shown when there are some (an archive moved since it was indexed)
        rows.insert(3, ["moved since indexed", len(report.moved)])
    if report.retried:
        rows.insert(2, ["scenes with failed tiles retried", report.retried])
    print(tabulate(rows))
    code = EXIT_OK
    for shown, what, fix in (
        (
            report.changed,
            "indexed files that changed since they were indexed (their embeddings are of the "
            "old content; the index is append-only, so they are not encoded again)",
            "to index the current files, build a new index: 'msclip-index build NEW.index "
            f"--images ... --scenes ...' (the same inputs), then use it instead of {args.index}",
        ),
        (
            report.moved,
            "files given at a new path with the name, size and modification time of an indexed "
            "file that no longer exists at its indexed path (moved since indexed; the index "
            "names files by absolute path, so they are not encoded again: each image would have "
            "two rows)",
            "to index the files where they are now, build a new index of them: 'msclip-index "
            f"build NEW.index --images ... --scenes ...', then use it instead of {args.index}",
        ),
        (
            report.retiled,
            "files the index holds cut otherwise than asked (the index keeps one tiling per "
            "file, so they are not encoded again)",
            "to index them as asked, build a new index of these inputs ('msclip-index build "
            f"NEW.index ...'); to add to {args.index}, give them as it holds them (above)",
        ),
    ):
        if shown:  # their current content or tiling was not indexed: 1, or 0 with --skip-bad
            code = _warn_not_encoded(args, shown, what, fix)
    if report.failures:
        shown, rest = failure_summary(report.failures)
        more = f"; and {rest} more" if rest else ""
        counts = []
        if n_bad_files:
            counts.append(f"{n_bad_files} of {plural(report.files, 'image file')}")
        if n_bad_tiles:
            counts.append(f"{n_bad_tiles} of {plural(report.tiles, 'scene tile')}")
        verb = "was" if len(report.failures) == 1 else "were"
        print(
            f"warning: {' and '.join(counts)} could not be read and {verb} not indexed: "
            f"{shown}{more}; rerun the same command to retry them (only they are read again)",
            file=sys.stderr,
        )
        if report.count == 0:
            print(f"error: the index {args.index} holds no embeddings", file=sys.stderr)
            return EXIT_PARTIAL
        return EXIT_OK if args.skip_bad else EXIT_PARTIAL
    if report.count == 0:
        print(
            f"error: the index {args.index} holds no embeddings: every input was skipped "
            f"(fewer than {min_valid(args):.0%} valid pixels)",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return code


def _warn_not_encoded(args: argparse.Namespace, shown: list[str], what: str, fix: str) -> int:
    """Two warnings: ``what`` with the first ten of ``shown`` (and how many more), then the
    ``fix``; exit status 1, or 0 with --skip-bad."""
    more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
    print(f"warning: {what}: {len(shown)}: {', '.join(shown[:10])}{more}", file=sys.stderr)
    print(f"warning: {fix}", file=sys.stderr)
    return EXIT_OK if args.skip_bad else EXIT_PARTIAL


def _join_process_group(args: argparse.Namespace) -> Any:
    """Join torchrun's process group when there is one of several processes (``WORLD_SIZE``);
    each process then runs on its own local GPU when there are GPUs. ``None`` otherwise.

    On CPUs each process computes with its share of the cores this process may use: torchrun
    starts every process with one thread (``OMP_NUM_THREADS=1``), which would leave all but
    ``--nproc_per_node`` cores of a large machine idle."""
    from msclip.train.distributed import init_distributed, torchrun_world_size

    if torchrun_world_size() <= 1:
        return None
    import torch

    from msclip.hardware import cores_per_process

    group = init_distributed(device=args.device or "auto")
    if args.device is None:
        args.device = str(group.device)
    if group.device.type == "cpu":
        torch.set_num_threads(cores_per_process(group.local_world_size))
    return group


def _run_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    store = _open(args.index)
    info = store.info()
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return EXIT_OK
    m = info["model"]
    meta = store.metadata
    tiles = int(meta["tile"].sum()) if "tile" in meta.columns and len(meta) else 0
    geo = int(meta["footprint"].notna().sum()) if "footprint" in meta.columns else 0
    rows = [
        ["path", info["path"]],
        ["embeddings", f"{info['count']} x {info['dim']} float32"],
        ["from tiles / whole files", f"{tiles} / {info['count'] - tiles}"],
        ["georeferenced", geo],
        ["sources", info["sources"]],
        ["model", f"{m.get('name')} ({m.get('arch')}, {m.get('precision')})"],
        ["checkpoint sha256", m.get("checkpoint_sha256")],
        *(
            [["random weights", f"--no-pretrained --seed {m['init_seed']}"]]
            if "init_seed" in m
            else []
        ),
        ["bands", " ".join(m.get("bands", []))],
        ["image size", m.get("preprocessing", {}).get("image_size")],
        ["disk", f"{info['bytes']['total'] / 1e6:.2f} MB"],
        ["created / updated", f"{info['created']} / {info['updated']}"],
    ]
    print(tabulate(rows))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.command in ("build", "add"):
        return _run_build(args)
    if args.command == "search":
        return _run_search(args)
    return _run_info(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``msclip-index``; returns the exit status (see :mod:`msclip.cli.common`)."""
    return run_cli(argv, parse_args, _run)


if __name__ == "__main__":
    from msclip.cli.common import exit_process

    exit_process(main())
