"""Crash-safe on-disk store for an embedding index: append-only, memory-mappable, resumable.

An index is a directory::

    index/
      manifest.json        commit point: format, dim, dtype, count, caller's model dict, parts
      embeddings.f32       raw little-endian float32 rows [count, dim], appended in place
      meta/part-NNNNNN.jsonl
                           metadata rows and source keys of one commit (columnar JSON Lines), with
                           each source's information (e.g. the file's size and mtime when encoded)
      search_cache/        optional derived data of :mod:`msclip.index.search` (safe to delete)
      spool/               encodings of a sharded build waiting to be added
                           (:mod:`msclip.index.sharded`; removed when the build ends)
      .writer.lock         advisory lock held by the one live writer

Commit protocol (shadow paging with an atomic rename as the commit point, the scheme of
LevelDB's MANIFEST/CURRENT pair): a commit appends its rows to ``embeddings.f32`` past the
committed length, writes its metadata part under a temporary name and renames it into place, makes
both durable with ``fsync``, and only then replaces ``manifest.json`` through ``os.replace`` (POSIX
``rename(2)`` is atomic) followed by an ``fsync`` of the directory, as recommended by Pillai et al.,
"All File Systems Are Not Created Equal", OSDI 2014. Readers trust nothing the manifest does not
name: rows past ``count`` in ``embeddings.f32`` and parts it does not list are leftovers of a killed
commit. They are invisible to readers and removed by the next writer, so a build killed at any
instant leaves the last committed index, and a restarted build skips the sources already committed.

Why one contiguous embeddings file rather than shards: it is always a single ``np.memmap``, so
search never concatenates or compacts, and the committed prefix is never rewritten.

Why columnar JSON Lines for the metadata rather than Parquet or CSV: it needs no optional dependency
(an index written where pyarrow exists stays readable where it does not), it round-trips integers,
floats (including NaN), booleans, strings with missing values and datetimes exactly, which CSV does
not, and the first line of a part holds its source keys so a resuming writer reads only that line.
The cost is size: JSON is not compressed, which is small next to the float32 embeddings.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from msclip.arrays import as_numpy
from msclip.errors import (
    CorruptIndexError,
    DimensionMismatchError,
    DuplicateSourceError,
    IndexFormatError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidEmbeddingsError,
    MetadataError,
    ModelInfoError,
)
from msclip.io import TMP_PREFIX, fsync_dir, write_bytes
from msclip.io.images import INDEX_MARKERS
from msclip.io.writers import lock_exclusive

try:  # POSIX advisory locks; on other platforms a second writer is not detected
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_COMMIT_ROWS",
    "FORMAT_VERSION",
    "CorruptIndexError",
    "DimensionMismatchError",
    "DuplicateSourceError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexStore",
    "IndexWriter",
    "InvalidEmbeddingsError",
    "MetadataError",
    "ModelInfoError",
    "SourceRange",
    "folder_problem",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "msclip-embedding-index"
FORMAT_VERSION = 1
PART_FORMAT_NAME = "msclip-embedding-index-part"
MANIFEST_NAME, EMBEDDINGS_NAME = INDEX_MARKERS  # what image listings recognise an index by
META_DIR = "meta"
SEARCH_CACHE_DIR = "search_cache"
LOCK_NAME = ".writer.lock"
DEFAULT_COMMIT_ROWS = 16384
_DTYPE = np.dtype("<f4")
_PART_RE = re.compile(r"^part-(\d{6,})\.jsonl$")
# A resumed build must not mistake a user's directory for a half-created index.
_OWN_NAMES = {MANIFEST_NAME, EMBEDDINGS_NAME, META_DIR, SEARCH_CACHE_DIR, LOCK_NAME, "spool"}
_NORM_TOLERANCE = 1e-3
# Model description entries that say why or where, not what: never a reason to refuse a model
# (the same weights copied elsewhere, or named by another relative path, have the same hash).
_SAFE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_INFORMATIONAL_KEYS = ("precision_reason", "checkpoint_path", "init_seed")


# ------------------------------------------------------------------------------ small utilities
@dataclass(frozen=True)
class SourceRange:
    """The contiguous id range one source (e.g. one file or scene) produced.

    Attributes:
        key: The source key given to :meth:`IndexWriter.add`.
        start: First embedding id of the source.
        stop: One past the last id; equal to ``start`` for a source that produced no rows.
        info: The source's information given to :meth:`IndexWriter.add` (``None`` when none was
            given, as in indexes written before it existed).
    """

    key: str
    start: int
    stop: int
    info: dict[str, Any] | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Commit point: atomically replace ``manifest.json`` (kept separate so tests can fail it)."""
    data = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode("utf-8")
    write_bytes(directory / MANIFEST_NAME, data)
    fsync_dir(directory)


def _normalise_model_info(model_info: Mapping[str, Any]) -> dict[str, Any]:
    """Return the JSON round trip of ``model_info`` so stored and given dicts compare equal."""
    if not isinstance(model_info, Mapping):
        raise ModelInfoError(
            f"model_info must be a mapping such as {{'name': ..., 'checkpoint_sha256': ...}}, "
            f"got {type(model_info).__name__}"
        )
    try:
        text = json.dumps(dict(model_info), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelInfoError(
            f"model_info must hold only JSON values (str, numbers, bools, None, lists, dicts): "
            f"{exc}; convert tuples of arrays, paths or numpy scalars to plain Python values"
        ) from exc
    return json.loads(text)


def _normalise_json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The JSON round trip of a mapping of plain values, or :class:`MetadataError` naming it."""
    if not isinstance(value, Mapping):
        raise MetadataError(f"{what} must be a mapping, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise MetadataError(
            f"{what} must hold only JSON values (str, numbers, bools, None, lists, dicts): {exc}"
        ) from exc


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


_MISSING = object()


def _short(value: Any) -> str:
    if value is _MISSING:
        return "<absent>"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _diff_model_info(
    stored: Mapping[str, Any], given: Mapping[str, Any], keys: Iterable[str] | None
) -> list[tuple[str, Any, Any]]:
    flat_s, flat_g = _flatten(stored), _flatten(given)
    if keys is None:
        # informational entries (why a precision was chosen) do not make another model
        names = sorted((set(flat_s) | set(flat_g)) - set(_INFORMATIONAL_KEYS))
    else:
        wanted = [keys] if isinstance(keys, str) else list(keys)
        names = sorted(
            n
            for n in set(flat_s) | set(flat_g)
            if any(n == k or n.startswith(f"{k}.") for k in wanted)
        )
        # A requested key absent on both sides is equal on both sides, so it cannot differ.
    return [
        (n, flat_s.get(n, _MISSING), flat_g.get(n, _MISSING))
        for n in names
        if flat_s.get(n, _MISSING) != flat_g.get(n, _MISSING)
    ]


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptIndexError(
            f"{what} {path} is not valid JSON ({exc}); the index is damaged, rebuild it"
        ) from exc


# ---------------------------------------------------------------------- metadata column coding
def _rows_to_frame(rows: Any, n: int) -> pd.DataFrame:
    """Turn the caller's rows (frame, list of dicts, dict of columns or None) into a frame."""
    if rows is None:
        frame = pd.DataFrame(index=pd.RangeIndex(n))
    elif isinstance(rows, pd.DataFrame):
        frame = rows.reset_index(drop=True)
    elif isinstance(rows, Mapping):
        try:
            frame = pd.DataFrame({str(k): list(v) for k, v in rows.items()})
        except ValueError as exc:
            raise MetadataError(f"metadata columns have different lengths: {exc}") from exc
    elif isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)):
        if any(not isinstance(r, Mapping) for r in rows):
            raise MetadataError(
                "metadata rows must be mappings (one dict per embedding), a dict of columns or a "
                "pandas DataFrame"
            )
        frame = pd.DataFrame.from_records(list(rows)) if len(rows) else pd.DataFrame()
        frame = frame.reindex(pd.RangeIndex(len(rows)))
    else:
        raise MetadataError(
            f"metadata rows of type {type(rows).__name__} are not supported; pass a pandas "
            "DataFrame, a list of dicts, a dict of columns or None"
        )
    if len(frame) != n:
        raise MetadataError(
            f"got {len(frame)} metadata rows for {n} embeddings; pass exactly one row per embedding"
        )
    bad = [c for c in frame.columns if not isinstance(c, str)]
    if bad:
        raise MetadataError(f"metadata column names must be strings, got {bad!r}")
    if frame.columns.has_duplicates:
        dupes = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise MetadataError(f"metadata has duplicate column names {dupes!r}; rename them")
    return frame


def _encode_column(name: str, series: pd.Series) -> dict[str, Any]:
    """Encode one column as ``{"name", "kind", "values"}`` with an exact JSON representation."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return {"name": name, "kind": dtype.name, "values": series.to_numpy().tolist()}
    if pd.api.types.is_datetime64_any_dtype(dtype):
        values = [None if pd.isna(v) else v.isoformat() for v in series]
        return {"name": name, "kind": str(dtype), "values": values}
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "biuf":
        # pandas nullable Int64 / Float64 / boolean: keep the dtype, missing values as null
        values = [None if pd.isna(v) else v for v in series.astype(object)]
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        return {"name": name, "kind": dtype.name, "values": values}
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred in ("string", "empty"):
        values = [
            None if (v is None or (not isinstance(v, str) and pd.isna(v))) else v for v in series
        ]
        return {"name": name, "kind": "str", "values": values}
    if inferred in ("integer", "floating", "mixed-integer-float", "boolean", "decimal"):
        converted = pd.Series(pd.array(series.tolist()), name=name)
        if converted.dtype != series.dtype and converted.dtype != object:
            return _encode_column(name, converted)
    if inferred in ("datetime", "datetime64"):
        return _encode_column(name, pd.to_datetime(series))
    raise MetadataError(
        f"metadata column {name!r} holds {inferred} values that the index cannot store exactly; "
        "store strings (e.g. a geometry as WKT via geom.wkt, a list as JSON text) or numbers"
    )


def _decode_column(col: Mapping[str, Any], n: int, where: Path) -> pd.Series:
    kind, values = col["kind"], col["values"]
    if len(values) != n:
        raise CorruptIndexError(
            f"metadata column {col['name']!r} in {where} has {len(values)} values for {n} rows; "
            "the index is damaged, rebuild it"
        )
    if kind == "str":
        return pd.Series(values, dtype=None if any(v is not None for v in values) else object)
    if kind.startswith("datetime64"):
        tz = kind.split(",", 1)[1].strip(" ]") if "," in kind else None
        parsed = pd.to_datetime(
            pd.Series(values, dtype=object), format="ISO8601", utc=tz is not None
        )
        if tz is not None:
            parsed = parsed.dt.tz_convert(tz)
        return parsed.astype(kind)
    try:
        np_dtype = np.dtype(kind)
    except TypeError:
        return pd.Series(pd.array(values, dtype=kind))
    return pd.Series(np.asarray(values, dtype=np_dtype))


def _concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """``pd.concat`` of metadata frames, in which an integer or boolean column that some frames
    lack becomes a nullable column (pandas would fill it with NaN as float64, changing integers
    above 2**53, such as S2 cell ids or nanosecond stamps)."""
    if len(frames) == 1:
        return frames[0]
    names = {n for f in frames for n in f.columns}
    partial = {n for n in names if any(n not in f.columns for f in frames)}
    # only columns of integers (or booleans) wherever they are present: a column that holds
    # floats somewhere is float64 anyway, and stays plain
    exact = {n for n in partial if all(_whole_kind(f[n].dtype) for f in frames if n in f.columns)}
    fixed = []
    for f in frames:
        cast = {
            n: _NULLABLE[(f[n].dtype.kind, f[n].dtype.itemsize)]
            for n in exact & set(f.columns)
            if isinstance(f[n].dtype, np.dtype)
        }
        fixed.append(f.astype(cast) if cast else f)
    return pd.concat(fixed, ignore_index=True, sort=False)


def _whole_kind(dtype: Any) -> bool:
    """Integers or booleans, numpy's or pandas' nullable ones."""
    if isinstance(dtype, np.dtype):
        return dtype.kind in "biu" and (dtype.kind, dtype.itemsize) in _NULLABLE
    return isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "biu"


#: pandas' nullable dtypes of numpy's integer and boolean ones, by (kind, item size).
_NULLABLE = {("b", 1): "boolean", **{("i", k): f"Int{8 * k}" for k in (1, 2, 4, 8)},
             **{("u", k): f"UInt{8 * k}" for k in (1, 2, 4, 8)}}  # fmt: skip


def _staged_conflict(
    staged: Iterable[pd.DataFrame],
    seen: Mapping[str, set[str]],
    frame: pd.DataFrame,
    kinds: Mapping[str, str],
) -> str | None:
    """The first column of ``frame`` (of kinds ``kinds``, :func:`_value_kind`) that cannot be
    stored in one part with the same column of the ``staged`` frames (integers and strings,
    say), or ``None``. ``seen`` holds each column's kinds among the staged frames, which were
    checked together as they came: a frame of a kind already there adds no new kind of value."""
    for name, kind in kinds.items():
        if kind in seen.get(name, {kind}):
            continue
        before = [f[[name]] for f in staged if name in f.columns]
        try:
            _encode_column(name, _concat_frames([*before, frame[[name]]])[name])
        except MetadataError:
            return str(name)
    return None


def _value_kind(series: pd.Series) -> str:
    """The stored kind of a column (:func:`_encode_column`, which refuses unstorable values), or
    ``empty`` where every value is missing (stored as strings, yet joining any kind)."""
    coded = _encode_column(str(series.name), series)
    values = coded["values"]
    if values and all(v is None or (isinstance(v, float) and v != v) for v in values):
        return "empty"
    return str(coded["kind"])


# ------------------------------------------------------------------------------- part files
def _part_name(index: int) -> str:
    return f"part-{index:06d}.jsonl"


def _encode_part(
    frame: pd.DataFrame, sources: list[list[Any]], start: int, infos: list[Any] | None = None
) -> bytes:
    columns = [_encode_column(name, frame[name]) for name in frame.columns]
    header = {
        "format": PART_FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "start": start,
        "count": len(frame),
        "sources": sources,
        "columns": [[c["name"], c["kind"]] for c in columns],
    }
    if infos is not None and any(i is not None for i in infos):
        # a separate list, one entry per source: readers that predate it ignore it
        header["source_info"] = infos
    lines = [json.dumps(header, allow_nan=False)]
    lines.extend(json.dumps(c, allow_nan=True) for c in columns)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _read_part_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline()
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptIndexError(
            f"metadata part {path} has a damaged header ({exc}); rebuild"
        ) from exc
    if not isinstance(header, dict) or header.get("format") != PART_FORMAT_NAME:
        raise CorruptIndexError(f"{path} is not a metadata part of an msclip index; rebuild")
    sources = header.get("sources")
    if not isinstance(sources, list) or not all(
        isinstance(s, list) and len(s) == 3 and isinstance(s[0], str) for s in sources
    ):
        raise CorruptIndexError(f"metadata part {path} has a damaged list of sources; rebuild")
    return header


def _source_infos(header: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """Per source of a part header, its information (``None`` where there is none)."""
    infos = header.get("source_info")
    n = len(header["sources"])
    if not isinstance(infos, list) or len(infos) != n:
        return [None] * n
    return [i if isinstance(i, dict) else None for i in infos]


def _read_part_frame(path: Path) -> pd.DataFrame:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        header = json.loads(lines[0])
        cols = [json.loads(line) for line in lines[1:] if line]
        n = int(header["count"])
        data = {c["name"]: _decode_column(c, n, path) for c in cols}
    except (ValueError, IndexError, KeyError, TypeError) as exc:  # JSON and decoding errors
        if isinstance(exc, CorruptIndexError):
            raise
        raise CorruptIndexError(
            f"metadata part {path} is damaged ({exc}); rebuild the index"
        ) from exc
    return (
        pd.DataFrame(data, index=pd.RangeIndex(n)) if data else pd.DataFrame(index=pd.RangeIndex(n))
    )


# --------------------------------------------------------------------------------- manifest
def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be an index folder (it is a file, or under one), or ``None``."""
    directory = Path(path)
    for place in (directory, *directory.parents):
        if place.exists():
            if place.is_dir():
                return None
            what = "is a file" if place == directory else f"is under the file {place}"
            return (
                f"{directory} {what}, not an index folder; give the path of an index folder (a "
                "new path for msclip-index build)"
            )
    return None


def _load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    problem = folder_problem(directory)
    if problem is not None:
        raise IndexNotFoundError(problem, param="index")
    if not path.is_file():
        raise IndexNotFoundError(
            f"no embedding index at {directory} ({MANIFEST_NAME} missing)", param="index"
        )
    manifest = _read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path} is not the manifest of an msclip embedding index")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(
            f"index {directory} has format version {version!r}, this msclip reads up to "
            f"{FORMAT_VERSION}; upgrade msclip"
        )
    missing = [
        k for k in ("dim", "dtype", "count", "model", "parts", "index_id") if k not in manifest
    ]
    if missing:
        raise CorruptIndexError(f"manifest {path} lacks the fields {missing}; rebuild the index")
    if manifest["dtype"] != "float32":
        raise IndexFormatError(
            f"index {directory} stores {manifest['dtype']!r}; only float32 is read"
        )
    _check_manifest_fields(path, manifest)
    return manifest


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_manifest_fields(path: Path, manifest: Mapping[str, Any]) -> None:
    """Raise :class:`CorruptIndexError` unless the manifest's fields have the types and sums
    msclip writes (a damaged or hand-edited manifest must not reach the readers)."""
    bad = [
        name
        for name, ok in (
            ("dim", _is_int(manifest["dim"], 1)),
            ("count", _is_int(manifest["count"], 0)),
            ("model", isinstance(manifest["model"], dict)),
            # a file-name part of the search cache (msclip writes uuid4 hex): never a path
            (
                "index_id",
                isinstance(manifest["index_id"], str)
                and _SAFE_ID.fullmatch(manifest["index_id"]) is not None,
            ),
            ("parts", isinstance(manifest["parts"], list)),
        )
        if not ok
    ]
    if not bad:
        expected = 0
        for i, part in enumerate(manifest["parts"]):
            if not (
                isinstance(part, dict)
                and isinstance(part.get("file"), str)
                and not Path(part["file"]).is_absolute()
                and ".." not in Path(part["file"]).parts
                and part.get("start") == expected
                and _is_int(part.get("count"), 0)
                and _is_int(part.get("bytes"), 1)
            ):
                bad.append(f"parts[{i}]")
                break
            expected += part["count"]
        else:
            if expected != manifest["count"]:
                bad.append("count (not the sum of the parts' counts)")
    if bad:
        raise CorruptIndexError(
            f"manifest {path} has damaged fields {bad}; the index is damaged, rebuild it"
        )


def _check_files(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Raise :class:`CorruptIndexError` unless every file the manifest names is complete."""
    need = int(manifest["count"]) * int(manifest["dim"]) * _DTYPE.itemsize
    emb = directory / EMBEDDINGS_NAME
    have = emb.stat().st_size if emb.is_file() else -1
    if have < need:
        raise CorruptIndexError(
            f"{emb} holds {max(have, 0)} bytes but the manifest commits {manifest['count']} rows "
            f"({need} bytes); the index is damaged, rebuild it"
        )
    for part in manifest["parts"]:
        path = directory / part["file"]
        size = path.stat().st_size if path.is_file() else -1
        if size != part["bytes"]:
            raise CorruptIndexError(
                f"metadata part {path} is {'missing' if size < 0 else f'{size} bytes'}, the "
                f"manifest says {part['bytes']} bytes; the index is damaged, rebuild it"
            )


def _check_compatible(
    manifest: Mapping[str, Any], model_info: Mapping[str, Any], keys: Any
) -> None:
    given = _normalise_model_info(model_info)
    diffs = _diff_model_info(manifest["model"], given, keys)
    if diffs:
        detail = "; ".join(f"{n}: index has {_short(a)}, given {_short(b)}" for n, a, b in diffs)
        names = [n for n, _, _ in diffs]
        built = {n: a for n, a, _ in diffs}.get("precision")
        hint = (
            f"; its rows are in {built}: use that precision (--precision {built})"
            if built is not None
            else ""
        )
        hint += _random_weights_hint(manifest["model"], names)
        if names == ["input_rules"]:
            stored = manifest["model"].get("input_rules")
            built = (
                f"msclip's input rules {stored}"
                if stored is not None
                else "the input rules of an msclip that did not record them"
            )
            raise IndexMismatchError(
                f"the index's rows were read under {built} (band names, band mapping, product "
                f"scales), this msclip reads files under rules "
                f"{given.get('input_rules')}: the same file would give another row; build a new "
                "index from all the sources (msclip-index build into a new folder) instead of "
                "adding to this one",
                fields=names,
            )
        raise IndexMismatchError(
            f"the index was built with another model ({detail}); query it with the model that "
            f"built it, or rebuild the index with this model{hint}",
            fields=names,
        )


def _random_weights_hint(stored: Mapping[str, Any], names: list[str]) -> str:
    """How to draw the random weights of an index built with them again, when they differ."""
    if "checkpoint_sha256" not in names:
        return ""
    if not str(stored.get("checkpoint_sha256", "")).startswith("weights:"):
        return ""
    seed = stored.get("init_seed")
    if seed is None:
        return (
            "; the index's weights were not loaded from a file (random weights, or weights "
            "changed in memory): random weights need the seed it was built with (--seed)"
        )
    return (
        f"; the index's weights were drawn at random with seed {seed}: use --no-pretrained "
        f"--seed {seed}"
    )


# ----------------------------------------------------------------------------------- reader
class IndexStore:
    """Read-only view of a committed index, a snapshot as of :meth:`open`.

    Rows a writer commits after :meth:`open` are not seen; open the store again to see them.

    Example:
        >>> store = IndexStore.open("archive.index")
        >>> store.check_compatible(model_info)
        >>> emb = store.embeddings          # np.memmap [count, dim] float32, nothing loaded
        >>> store.metadata.loc[[3, 17]]     # caller columns of ids 3 and 17
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        """Use :meth:`open`; this constructor trusts an already validated manifest."""
        self.path = path
        self._manifest = manifest
        self._embeddings: np.ndarray | None = None
        self._metadata: pd.DataFrame | None = None
        self._sources: list[SourceRange] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> IndexStore:
        """Open the index at ``path`` and check that the committed files are complete.

        Args:
            path: The index directory.

        Returns:
            The store.

        Raises:
            IndexNotFoundError: No index at ``path``.
            IndexFormatError: The manifest is of another format or a newer version.
            CorruptIndexError: A file the manifest names is missing or truncated.
        """
        directory = Path(path)
        manifest = _load_manifest(directory)
        _check_files(directory, manifest)
        return cls(directory, manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest."""
        return json.loads(json.dumps(self._manifest))

    @property
    def count(self) -> int:
        """Number of committed embeddings."""
        return int(self._manifest["count"])

    def __len__(self) -> int:
        return self.count

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._manifest["dim"])

    @property
    def dtype(self) -> np.dtype:
        """On-disk dtype of the embeddings (little-endian float32)."""
        return _DTYPE

    @property
    def model_info(self) -> dict[str, Any]:
        """A copy of the model description the index was built with."""
        return json.loads(json.dumps(self._manifest["model"]))

    @property
    def index_id(self) -> str:
        """Random identifier fixed at creation; keys derived caches to this index."""
        return str(self._manifest["index_id"])

    @property
    def embeddings_path(self) -> Path:
        """The raw float32 file; only its first ``count * dim`` values are committed."""
        return self.path / EMBEDDINGS_NAME

    @property
    def embeddings(self) -> np.ndarray:
        """Read-only memory map of the committed embeddings, shape ``[count, dim]``, float32.

        Equivalent to ``np.memmap(store.embeddings_path, "<f4", "r", shape=(count, dim))``; pages
        are read from disk on first access, nothing is loaded up front.
        """
        if self._embeddings is None:
            if self.count == 0:
                arr = np.empty((0, self.dim), dtype=_DTYPE)
                arr.flags.writeable = False
                self._embeddings = arr
            else:
                self._embeddings = np.memmap(
                    self.embeddings_path, dtype=_DTYPE, mode="r", shape=(self.count, self.dim)
                )
        return self._embeddings

    @property
    def metadata(self) -> pd.DataFrame:
        """Caller columns of every row, indexed by embedding id (read once, then cached).

        Columns are the union over all :meth:`IndexWriter.add` calls; rows of an add that lacked a
        column hold a missing value there.
        """
        if self._metadata is None:
            frames = []
            for part in self._manifest["parts"]:
                frame = _read_part_frame(self.path / part["file"])
                if len(frame) != part["count"]:
                    raise CorruptIndexError(
                        f"metadata part {part['file']} has {len(frame)} rows, the manifest says "
                        f"{part['count']}; rebuild the index"
                    )
                frames.append(frame)
            nonempty = [f for f in frames if len(f)]
            if not nonempty:
                meta = pd.DataFrame(index=pd.RangeIndex(self.count))
            elif len(nonempty) == 1:
                meta = nonempty[0]
            else:
                meta = _concat_frames(nonempty)
            meta.index = pd.RangeIndex(self.count, name="id")
            self._metadata = meta
        return self._metadata

    @property
    def sources(self) -> list[SourceRange]:
        """Committed sources in commit order with their id ranges."""
        if self._sources is None:
            self._sources = []
            for part in self._manifest["parts"]:
                header = _read_part_header(self.path / part["file"])
                infos = _source_infos(header)
                for (key, start, n), info in zip(header["sources"], infos):
                    self._sources.append(SourceRange(key, int(start), int(start) + int(n), info))
        return list(self._sources)

    def check_compatible(
        self, model_info: Mapping[str, Any], *, keys: Iterable[str] | None = None
    ) -> None:
        """Refuse a query model that differs from the one that built the index.

        Nested dicts are compared field by field and named with dotted paths
        (``preprocessing.mean``); a field present on one side only counts as different.

        Args:
            model_info: The querying model's description, in the form given to
                :meth:`IndexWriter.open_or_create`.
            keys: Compare only these top-level or dotted fields (e.g. ``["name",
                "checkpoint_sha256"]``); all fields when None.

        Raises:
            IndexMismatchError: Some compared field differs; ``exc.fields`` lists them.
        """
        _check_compatible(self._manifest, model_info, keys)

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk: ``embeddings``, ``metadata``, ``search_cache`` and ``total``."""
        usage = {"embeddings": 0, "metadata": 0, "search_cache": 0, "other": 0}
        for root, _dirs, files in os.walk(self.path):
            rel = Path(root).relative_to(self.path).parts
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # a writer may clean up meanwhile
                    size = (Path(root) / name).stat().st_size
                    if not rel and name == EMBEDDINGS_NAME:
                        usage["embeddings"] += size
                    elif rel[:1] == (META_DIR,):
                        usage["metadata"] += size
                    elif rel[:1] == (SEARCH_CACHE_DIR,):
                        usage["search_cache"] += size
                    else:
                        usage["other"] += size
        usage["total"] = sum(usage.values())
        return usage

    def info(self) -> dict[str, Any]:
        """Summary: path, count, dim, dtype, number of sources and parts, bytes on disk, model."""
        return {
            "path": str(self.path),
            "format_version": self._manifest["format_version"],
            "count": self.count,
            "dim": self.dim,
            "dtype": "float32",
            "sources": sum(int(p.get("sources", 0)) for p in self._manifest["parts"]),
            "parts": len(self._manifest["parts"]),
            "bytes": self.disk_usage(),
            "model": self.model_info,
            "created": self._manifest.get("created"),
            "updated": self._manifest.get("updated"),
        }

    def __repr__(self) -> str:
        return f"IndexStore({str(self.path)!r}, count={self.count}, dim={self.dim})"


# ----------------------------------------------------------------------------------- writer
@dataclass
class _Pending:
    embeddings: np.ndarray
    rows: pd.DataFrame
    source: str | None
    info: dict[str, Any] | None = None


def _as_matrix(embeddings: Any, dim: int) -> np.ndarray:
    arr = as_numpy(embeddings)  # numpy or a torch tensor of any float dtype
    if arr.dtype.kind != "f":
        raise InvalidEmbeddingsError(
            f"embeddings must be floating point, got dtype {arr.dtype}; pass the model's float "
            "output"
        )
    if arr.ndim != 2:
        raise InvalidEmbeddingsError(
            f"embeddings must be a 2-D array [n, {dim}], got shape {arr.shape}; use "
            "x.reshape(1, -1) for a single vector"
        )
    if arr.shape[1] != dim:
        raise DimensionMismatchError(
            f"embeddings have dimension {arr.shape[1]} but the index stores {dim}-d vectors; use "
            "the model the index was created for, or another index"
        )
    arr = np.ascontiguousarray(arr, dtype=_DTYPE)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise InvalidEmbeddingsError(
            f"embeddings rows {bad[:10].tolist()} contain NaN or infinity; drop or fix them"
        )
    return arr


class IndexWriter:
    """Appends embeddings and metadata to an index; the only writer of its directory.

    Rows are staged in memory by :meth:`add` and committed in batches (every ``commit_rows`` rows,
    on :meth:`commit`, and on :meth:`close`); a killed process loses only uncommitted rows, whose
    sources :meth:`is_done` then reports as not done. Use it as a context manager.

    Example:
        >>> with IndexWriter.open_or_create("archive.index", dim=512, model_info=info) as w:
        ...     for path in files:
        ...         if w.is_done(path):
        ...             continue
        ...         emb, rows = encode_scene(path)   # all tiles of one scene
        ...         w.add(emb, rows, source=path)
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], lock: BinaryIO | None, commit_rows: int
    ) -> None:
        """Use :meth:`open_or_create`."""
        self.path = path
        self.commit_rows = commit_rows
        self._manifest = manifest
        self._lock = lock
        self._pending: list[_Pending] = []
        self._staged_kinds: dict[str, set[str]] = {}  # each column's kinds in the staged rows
        self._pending_rows = 0
        self._pending_sources: set[str] = set()
        self._done: set[str] = set()
        self._info: dict[str, dict[str, Any]] = {}  # committed and staged sources' information
        self._warned_norm = False
        for part in manifest["parts"]:
            header = _read_part_header(path / part["file"])
            self._done.update(str(s[0]) for s in header["sources"])
            for src, info in zip(header["sources"], _source_infos(header)):
                if info is not None:
                    self._info[str(src[0])] = info

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        dim: int,
        model_info: Mapping[str, Any],
        *,
        commit_rows: int = DEFAULT_COMMIT_ROWS,
    ) -> IndexWriter:
        """Open the index at ``path`` for appending, creating it if absent.

        Opening an existing index recovers from a killed writer: uncommitted rows at the end of
        the embeddings file and unreferenced temporary or part files are removed.

        Args:
            path: Index directory (created with its parents if missing).
            dim: Embedding dimension; must equal the stored one for an existing index.
            model_info: JSON-serialisable description of the model and preprocessing (name,
                checkpoint sha256, bands, ...); stored at creation and compared on reopening.
            commit_rows: Commit automatically once this many rows are staged.

        Returns:
            The writer, holding the directory's write lock until :meth:`close`.

        Raises:
            IndexLockedError: Another process holds the index open for writing.
            DimensionMismatchError: ``dim`` differs from the stored dimension.
            IndexMismatchError: ``model_info`` differs from the stored description.
            IndexFormatError: ``path`` is a non-empty directory that is not an index.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidEmbeddingsError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(commit_rows, bool) or not isinstance(commit_rows, int) or commit_rows < 1:
            raise ValueError(f"commit_rows must be a positive integer, got {commit_rows!r}")
        model = _normalise_model_info(model_info)
        directory = Path(path)
        problem = folder_problem(directory)
        if problem is not None:
            from msclip.errors import OutputPathError

            raise OutputPathError(problem, param="index")
        # A user's folder is refused before anything is written into it (the lock file, or the
        # folder itself); the check is repeated under the lock against a concurrent creator.
        if directory.is_dir() and not (directory / MANIFEST_NAME).exists():
            cls._refuse_foreign(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from msclip.errors import OutputPathError

            raise OutputPathError(
                f"cannot create the index folder {directory} ({exc.strerror or exc}); give an "
                "index path in a folder you can write to",
                param="index",
            ) from exc
        lock = cls._acquire_lock(directory)
        try:
            if (directory / MANIFEST_NAME).exists():
                manifest = _load_manifest(directory)
                if manifest["dim"] != int(dim):
                    raise DimensionMismatchError(
                        f"index {directory} stores {manifest['dim']}-d embeddings, got dim={dim}; "
                        "use another index path for this model"
                    )
                _check_compatible(manifest, model, None)
                cls._recover(directory, manifest)
            else:
                cls._refuse_foreign(directory)
                manifest = cls._create(directory, int(dim), model)
        except BaseException:
            cls._release_lock(lock)
            raise
        return cls(directory, manifest, lock, commit_rows)

    @staticmethod
    def _refuse_foreign(directory: Path) -> None:
        """Raise :class:`IndexFormatError` when ``directory`` holds files of its own."""
        foreign = sorted(
            p.name
            for p in directory.iterdir()
            if p.name not in _OWN_NAMES and not p.name.startswith(TMP_PREFIX)
        )
        if foreign:
            raise IndexFormatError(
                f"{directory} is not empty ({foreign[:5]}) and holds no index; choose an "
                "empty or new directory"
            )

    @staticmethod
    def _acquire_lock(directory: Path) -> BinaryIO | None:
        try:
            fh = open(directory / LOCK_NAME, "a+b")  # noqa: SIM115 - held open as the lock
        except OSError as exc:
            from msclip.errors import OutputPathError

            if (directory / MANIFEST_NAME).exists():
                raise OutputPathError(
                    f"cannot write to the index {directory} ({exc.strerror}): it can be "
                    "searched where it is; to add to it, copy it to a writable place",
                    param="index",
                ) from exc
            raise OutputPathError(
                f"cannot write to the folder {directory} ({exc.strerror}): give an index path "
                "in a folder you can write to",
                param="index",
            ) from exc
        held = lock_exclusive(fh)
        if held is False:
            raise IndexLockedError(
                f"another process is writing to the index {directory}; wait for it to finish "
                "(an index has one writer at a time)"
            )
        if held is None:  # no locks here (some network mounts, not POSIX)
            logger.info("cannot lock %s: a second writer would not be noticed", directory)
        return fh

    @staticmethod
    def _release_lock(lock: BinaryIO | None) -> None:
        if lock is not None and not lock.closed:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()

    @staticmethod
    def _create(directory: Path, dim: int, model: dict[str, Any]) -> dict[str, Any]:
        (directory / META_DIR).mkdir(exist_ok=True)
        with open(
            directory / EMBEDDINGS_NAME, "wb"
        ) as fh:  # empty, or leftovers of a killed create
            os.fsync(fh.fileno())
        now = _now()
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "index_id": uuid.uuid4().hex,
            "dim": dim,
            "dtype": "float32",
            "byteorder": "little",
            "count": 0,
            "model": model,
            "embeddings": EMBEDDINGS_NAME,
            "parts": [],
            "created": now,
            "updated": now,
        }
        _write_manifest(directory, manifest)
        logger.info("created embedding index %s (dim=%d)", directory, dim)
        return manifest

    @staticmethod
    def _recover(directory: Path, manifest: dict[str, Any]) -> None:
        """Drop what a killed writer left beyond the last commit."""
        _check_files(directory, manifest)
        committed = int(manifest["count"]) * int(manifest["dim"]) * _DTYPE.itemsize
        emb = directory / EMBEDDINGS_NAME
        size = emb.stat().st_size
        if size > committed:
            logger.warning(
                "index %s: dropping %d uncommitted bytes of an interrupted write",
                directory,
                size - committed,
            )
            with open(emb, "r+b") as fh:
                fh.truncate(committed)
                os.fsync(fh.fileno())
        referenced = {Path(p["file"]).name for p in manifest["parts"]}
        meta = directory / META_DIR
        meta.mkdir(exist_ok=True)
        for folder in (directory, meta):
            for entry in folder.iterdir():
                stray = entry.name.startswith(TMP_PREFIX) or (
                    folder == meta and _PART_RE.match(entry.name) and entry.name not in referenced
                )
                if stray and entry.is_file():
                    logger.warning(
                        "index %s: removing leftover %s of an interrupted write",
                        directory,
                        entry.name,
                    )
                    entry.unlink()

    # -- state ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._manifest["dim"])

    @property
    def count(self) -> int:
        """Committed rows (staged rows not included)."""
        return int(self._manifest["count"])

    @property
    def pending_rows(self) -> int:
        """Rows staged by :meth:`add` and not yet committed."""
        return self._pending_rows

    @property
    def model_info(self) -> dict[str, Any]:
        """A copy of the stored model description."""
        return json.loads(json.dumps(self._manifest["model"]))

    def is_done(self, source: str | os.PathLike[str]) -> bool:
        """Whether ``source`` was committed, or staged in this writer (so skip it).

        Args:
            source: A source key as given to :meth:`add`.
        """
        key = os.fspath(source)
        return key in self._done or key in self._pending_sources

    @property
    def done_sources(self) -> frozenset[str]:
        """Keys of all committed sources."""
        return frozenset(self._done)

    @property
    def source_infos(self) -> Mapping[str, dict[str, Any]]:
        """Information of every committed or staged source that has some, by key (read-only)."""
        return dict(self._info)

    def source_info(self, source: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The information stored with a committed or staged source (a copy), ``None`` when it
        has none (or is not in the index)."""
        info = self._info.get(os.fspath(source))
        return None if info is None else json.loads(json.dumps(info))

    # -- writing ----------------------------------------------------------------------------
    def add(
        self,
        embeddings: Any,
        rows: pd.DataFrame
        | Sequence[Mapping[str, Any]]
        | Mapping[str, Sequence[Any]]
        | None = None,
        *,
        source: str | os.PathLike[str] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Stage all embeddings of one source with one metadata row each.

        Pass every row of a source in one call (e.g. all tiles of a scene): the source is marked
        done when the batch holding it commits. A source that yields nothing may be added with
        zero rows so that a resumed build skips it too. Ids are assigned in add order.

        Args:
            embeddings: Float matrix ``[n, dim]`` (numpy or torch); stored as float32. Rows should
                be L2-normalised so that search scores are cosine similarities.
            rows: ``n`` metadata rows: a DataFrame, a list of dicts or a dict of columns, with
                str, int, float, bool or datetime values (geometries as WKT strings); None for no
                columns.
            source: Key of the input that produced the rows (e.g. the file path); None adds rows
                no resumed build can skip.
            info: JSON-serialisable facts about the source kept with its key (e.g. the file's
                size and modification time when it was encoded); see :meth:`source_info`.

        Raises:
            DuplicateSourceError: ``source`` was already committed or staged.
            DimensionMismatchError: The embedding dimension differs from the index's.
            InvalidEmbeddingsError: Not a finite float matrix.
            MetadataError: Row count differs from the embeddings, or a value cannot be stored.
        """
        self._check_open()
        arr = _as_matrix(embeddings, self.dim)
        frame = _rows_to_frame(rows, arr.shape[0])
        # fail now, not at commit time, on unstorable values
        kinds = {name: _value_kind(frame[name]) for name in frame.columns}
        key = None if source is None else os.fspath(source)
        if key is not None and not isinstance(key, str):
            raise MetadataError(
                f"source must be a str or a path, got {type(key).__name__} {key!r}; decode it"
            )
        # the staged rows are read only when a column gets a new kind (a generator: an add
        # must not cost the length of the staged list)
        staged = (p.rows for p in self._pending)
        clash = _staged_conflict(staged, self._staged_kinds, frame, kinds)
        if clash is not None:
            raise MetadataError(
                f"metadata column {clash!r} of source {key!r} holds values of another kind than "
                "the rows staged before it (e.g. integers and strings), which one part cannot "
                "store exactly; give the column one kind in every source (e.g. all strings)"
            )
        if info is not None and key is None:
            raise MetadataError("source info needs a source key; pass source= with info=")
        info_json = None if info is None else _normalise_json(info, "source info")
        if key is not None and self.is_done(key):
            raise DuplicateSourceError(
                f"source {key!r} is already in the index; check writer.is_done(source) before "
                "encoding it"
            )
        if arr.shape[0] and not self._warned_norm:
            norms = np.linalg.norm(arr, axis=1)
            if np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
                self._warned_norm = True
                logger.warning(
                    "embeddings are not L2-normalised (norms %.4g..%.4g); search scores will be "
                    "inner products, not cosine similarities",
                    norms.min(),
                    norms.max(),
                )
        self._pending.append(_Pending(arr, frame, key, info_json))
        for name, kind in kinds.items():
            self._staged_kinds.setdefault(name, set()).add(kind)
        self._pending_rows += arr.shape[0]
        if key is not None:
            self._pending_sources.add(key)
            if info_json is not None:
                self._info[key] = info_json
        if self._pending_rows >= self.commit_rows:
            self.commit()

    def commit(self) -> None:
        """Write the staged rows and make them part of the index (a no-op with nothing staged)."""
        self._check_open()
        if not self._pending:
            return
        start = self.count
        arr = (
            self._pending[0].embeddings
            if len(self._pending) == 1
            else np.concatenate([p.embeddings for p in self._pending])
        )
        nonempty = [p.rows for p in self._pending if len(p.rows)]
        if len(nonempty) > 1:
            frame = _concat_frames(nonempty)
        elif nonempty:
            frame = nonempty[0]
        else:
            frame = pd.DataFrame(index=pd.RangeIndex(0))
        frame = frame.reindex(pd.RangeIndex(arr.shape[0]))
        sources: list[list[Any]] = []
        infos: list[Any] = []
        offset = start
        for p in self._pending:
            if p.source is not None:
                sources.append([p.source, offset, int(p.embeddings.shape[0])])
                infos.append(p.info)
            offset += p.embeddings.shape[0]
        part_bytes = _encode_part(frame, sources, start, infos)

        # 1. rows past the committed length: invisible until the manifest says otherwise
        committed_bytes = start * self.dim * _DTYPE.itemsize
        with open(self.path / EMBEDDINGS_NAME, "r+b") as fh:
            fh.seek(committed_bytes)
            fh.truncate()
            fh.write(arr.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        # 2. metadata part under a name no committed manifest references yet
        part_file = f"{META_DIR}/{_part_name(self._next_part_index())}"
        write_bytes(self.path / part_file, part_bytes)
        fsync_dir(self.path / META_DIR)
        # 3. commit point
        manifest = dict(self._manifest)
        manifest["parts"] = [
            *self._manifest["parts"],
            {
                "file": part_file,
                "start": start,
                "count": int(arr.shape[0]),
                "bytes": len(part_bytes),
                "sources": len(sources),
            },
        ]
        manifest["count"] = start + int(arr.shape[0])
        manifest["updated"] = _now()
        _write_manifest(self.path, manifest)

        self._manifest = manifest
        self._done.update(s[0] for s in sources)
        self._pending.clear()
        self._pending_sources.clear()
        self._staged_kinds.clear()
        self._pending_rows = 0
        logger.info(
            "index %s: committed %d rows from %d sources (total %d)",
            self.path,
            arr.shape[0],
            len(sources),
            manifest["count"],
        )

    def _next_part_index(self) -> int:
        used = [
            int(m.group(1))
            for p in self._manifest["parts"]
            if (m := _PART_RE.match(Path(p["file"]).name))
        ]
        return max(used, default=-1) + 1

    def _check_open(self) -> None:
        if self._lock is None or self._lock.closed:
            raise RuntimeError(f"the writer of {self.path} is closed; open a new IndexWriter")

    def close(self) -> None:
        """Commit staged rows and release the write lock (idempotent)."""
        if self._lock is None or self._lock.closed:
            return
        try:
            self.commit()
        finally:
            self._release_lock(self._lock)

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Staged sources are complete (add takes a whole source), so they are committed even
        # when the build loop raised: a restarted build then skips them.
        self.close()

    def __repr__(self) -> str:
        return (
            f"IndexWriter({str(self.path)!r}, count={self.count}, pending={self.pending_rows}, "
            f"dim={self.dim})"
        )
