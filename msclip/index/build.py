"""Encode folders, lists and the tiles of large scenes into an embedding index, resumably.

Inputs are *sources*: an image file (one embedding) or a large GeoTIFF / COG scene cut into
windows of ``tile_size`` pixels every ``stride`` pixels (:mod:`msclip.tiling`; one embedding per
tile, tiles with fewer than ``min_valid`` valid pixels skipped). Sources are encoded in order with
:func:`msclip.encode.iter_encoded` (batched, DataLoader workers, ``torch.inference_mode``) and
handed whole to :class:`msclip.index.store.IndexWriter`, which commits them atomically. Every
``commit_seconds`` the staged sources are committed, so a build killed at any instant loses at
most that much work; rerunning the same build skips the committed sources (keyed by absolute
path) and never sees a half-written index (the store's commit protocol).

Each embedding (L2-normalised float32) gets one metadata row:

========== ================================================================================
column     meaning
========== ================================================================================
path       the file (absolute path, as in the source key)
tile       True for a scene tile, False for a whole file
row, col   top-left pixel of the window (0, 0 for a whole file)
height,    window size in pixels (the raster size for a whole GeoTIFF; -1 when unknown)
width
crs        CRS of the file (``EPSG:32632`` or WKT), missing when not georeferenced
minx ...   ``minx, miny, maxx, maxy``: window bounds in that CRS (NaN when not georeferenced)
footprint  JSON ring ``[[lon, lat], ...]`` of the window in EPSG:4326 (counter-clockwise)
========== ================================================================================

The manifest's model description (:func:`model_info`) names the model, checkpoint hash, bands,
precision and preprocessing; the store refuses to add embeddings of another model, and search
refuses queries from a model that differs in the fields of :data:`COMPARE_KEYS`.

Each source is stored with its file's size and modification time (``mtime_ns``) as they were
when it was planned for encoding. The store is append-only, so a file that changed after it was
indexed keeps its old embeddings; a resumed build or an ``add`` compares the files given to it
with their stamps (one ``stat`` per given file, none for the rest of the index), names the
changed ones in :class:`BuildReport` (``changed``) and does not encode them again under their
old keys: the fix is a new index. Search notes results whose file changed or is gone. Sources
of indexes written before the stamps existed are taken as unchanged.

A scene whose tiles partly fail to read is added with its readable tiles and the windows of the
failed ones; the next run of the same build reads only those windows again, as the source
``<scene key>#retry-<n>``, until none fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msclip.encode import Failure, iter_encoded
from msclip.errors import BandCoverageError, shown_when_quiet
from msclip.index.store import MANIFEST_NAME, IndexStore, IndexWriter
from msclip.tiling import (
    SceneInfo,
    Tile,
    open_scene,
    raster_bounds,
    scene_tiles,
    window_footprint_lonlat,
)

__all__ = [
    "COMPARE_KEYS",
    "RETRY_MARK",
    "BuildReport",
    "EncodedSource",
    "Source",
    "add_encoded",
    "build_index",
    "drop_spool",
    "encode_sources",
    "file_stamp",
    "model_info",
    "pending_work",
    "plan_sources",
    "source_file",
    "stale_files",
]

logger = logging.getLogger(__name__)

#: Model description fields a query model must share with the index (precision may differ:
#: bf16 and fp32 embeddings of one checkpoint are interchangeable for search).
COMPARE_KEYS = ("name", "arch", "checkpoint_sha256", "bands", "embed_dim", "preprocessing")

#: Separates a scene's key from the number of a retry of its failed tiles (a source of its own).
RETRY_MARK = "#retry-"


def source_file(key: str) -> str:
    """The file of a source key (a retry of a scene's failed tiles names the scene's key)."""
    base, mark, n = key.rpartition(RETRY_MARK)
    return base if mark and n.isdigit() else key


def file_stamp(path: str | os.PathLike) -> dict[str, int] | None:
    """``{"size", "mtime_ns"}`` of a source (:func:`msclip.io.readers.input_stamp`: a VRT's
    include the files it reads), or ``None`` when it cannot be read."""
    from msclip.io.readers import input_stamp

    try:
        size, mtime = input_stamp(path)
    except OSError:
        return None
    return {"size": size, "mtime_ns": mtime}


def model_info(model: Any) -> dict[str, Any]:
    """JSON description of a model stored in the index manifest (:meth:`msclip.MSCLIP.describe`,
    plus the fact that stored embeddings are L2-normalised and the version of the rules that
    turn an input file into the model's input, :data:`msclip.spectral.adapt.INPUT_RULES`: an
    ``add`` under other rules is refused, so that one index never mixes rows of one file read two
    ways). The checkpoint path is made absolute, so that ``add`` and ``search`` run from another
    folder find the weights; it is information only: the checkpoint hash identifies the
    weights."""
    from msclip.spectral.adapt import INPUT_RULES

    info = {**model.describe(), "normalized": True, "input_rules": INPUT_RULES}
    if info.get("checkpoint_path"):
        info["checkpoint_path"] = os.path.abspath(info["checkpoint_path"])
    return info


@dataclass
class Source:
    """One input of a build: a whole image file, or a scene and its tiles.

    Attributes:
        path: the file as given.
        key: the source key in the index (absolute path; ``<path>#retry-<n>`` for a retry of a
            scene's failed tiles).
        scene: the scene's tiling, for scene sources.
        tiles: the scene's windows (``None`` for a whole file).
        stamp: the file's size and mtime when planned (:func:`file_stamp`; ``None``: missing).
    """

    path: str
    key: str
    scene: SceneInfo | None = None
    tiles: list[Tile] | None = None
    stamp: dict[str, int] | None = None

    @property
    def file(self) -> str:
        """The file's absolute path."""
        return source_file(self.key)

    @property
    def items(self) -> list[Any]:
        """What the encoder reads: the path, or the tiles."""
        return [self.path] if self.tiles is None else list(self.tiles)


@dataclass
class BuildReport:
    """What a build did.

    Attributes:
        sources: sources given.
        skipped_done: sources already in the index as given (resumed build or repeated add);
            the ``changed``, ``moved`` and ``retiled`` ones are not counted here, so that
            ``skipped_done``, ``changed``, ``moved``, ``retiled``, ``retried`` and the sources
            encoded partition ``sources``.
        retried: scenes whose failed tiles were read again.
        added: sources committed by this run (a retry of failed tiles counts its scene).
        rows: embeddings added by this run.
        files: image files read by this run.
        tiles: scene tiles read by this run.
        nodata: files or tiles skipped as mostly nodata.
        failures: unreadable files or tiles.
        failed_tiles: how many of ``failures`` are scene tiles (the rest are files).
        changed: files given to this run, already indexed, whose size or mtime differ from when
            they were encoded (their embeddings are of the old content; not encoded again).
        moved: files given to this run under a path the index does not hold, with the name, size
            and mtime of an indexed file that no longer exists at its indexed path (an archive
            moved since it was indexed), each as ``"path (indexed as old path)"``;
            not encoded again, which would give every such image two rows.
        retiled: files given to this run, already indexed otherwise (as tiles of another size
            or stride, as one image and now as a scene, or the reverse), each with both
            tilings (``"path (indexed as ..., given as ...)"``; not encoded again).
        count: embeddings in the index after the run.
    """

    sources: int = 0
    skipped_done: int = 0
    retried: int = 0
    added: int = 0
    rows: int = 0
    files: int = 0
    tiles: int = 0
    nodata: int = 0
    failures: list[Failure] = field(default_factory=list)
    failed_tiles: int = 0
    changed: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    retiled: list[str] = field(default_factory=list)
    count: int = 0


def plan_sources(
    images: Sequence[str] = (),
    scenes: Sequence[str] = (),
    tile_size: int = 224,
    stride: int | None = None,
) -> list[Source]:
    """Sources for image files and tiled scenes, in order, one per distinct absolute path (a file
    listed both as an image and as a scene is one image, with a warning) and one per file: a file
    reached again through a link (a linked folder given beside its target, a symbolic or hard
    link) is indexed once, under its first path, with a warning, so that search results do not
    fill with copies of one image.

    Raises:
        RasterReadError, TilingError: a scene is missing, unreadable or smaller than a tile.
    """
    out: list[Source] = []
    seen: set[str] = set()
    files: dict[tuple[int, int], str] = {}  # (device, inode) -> the first path of the file
    linked: list[tuple[str, str]] = []  # (a path, the earlier path of the same file)
    images = _expand_folders(images, "images")
    scenes = _expand_folders(scenes, "scenes")

    def again(key: str) -> bool:
        """Whether ``key`` is a file already planned under another path."""
        try:
            st = os.stat(key)
        except OSError:  # missing or unreadable: the build names it
            return False
        first = files.setdefault((st.st_dev, st.st_ino), key)
        if first != key:
            linked.append((key, first))
        return first != key

    for p in images:
        key = os.path.abspath(p)
        if key not in seen and not again(key):
            seen.add(key)
            out.append(Source(str(p), key, stamp=file_stamp(key)))
    whole = set(seen)
    for p in scenes:
        key = os.path.abspath(p)
        if key not in whole and key not in seen and again(key):
            continue
        if key in whole:
            # one source per path (its key): the image listing came first
            shown_when_quiet.warning(
                "%s is given both as an image and as a scene: indexed once, as one image; give "
                "it only as a scene to cut it into tiles",
                p,
            )
            whole.discard(key)  # once per file
            continue
        if key in seen:
            continue
        seen.add(key)
        stamp = file_stamp(key)  # before reading: a later change then shows as a change
        info = open_scene(p, tile_size, stride)
        out.append(Source(str(p), key, info, scene_tiles(info), stamp))
    from msclip.io.images import note_linked

    note_linked(linked, "indexed")
    return out


def _expand_folders(given: Any, param: str) -> list[Any]:
    """``given`` (one path or several) with each folder and glob pattern replaced by the image
    files it holds, as ``msclip-index build`` lists them (:func:`msclip.io.list_images`): a
    folder in a Python call is its images, not one unreadable image.

    Raises:
        ImageSetError: a folder holds no images, or a pattern matches none (before anything is
            written).
    """
    from msclip.errors import ImageSetError
    from msclip.io import list_images
    from msclip.io.images import folder_or_pattern

    # one path is one entry (not the characters of its name)
    entries = [given] if isinstance(given, (str, os.PathLike)) else list(given)
    out: list[Any] = []
    for p in entries:
        if not isinstance(p, (str, os.PathLike)):
            out.append(p)  # the build names what it cannot read
            continue
        if folder_or_pattern(p) is None:
            out.append(p)
            continue
        try:
            out += list_images([p])
        except ImageSetError as err:
            err.param = param
            raise
    return out


def stale_files(infos: Mapping[str, Mapping[str, Any] | None]) -> tuple[list[str], list[str]]:
    """``(changed, vanished)``: the files of stamped sources (``{key: info}``) whose size or
    mtime differ from their stamp, and those that no longer exist; sources without a stamp
    (indexes written before stamps) are not checked."""
    stamps: dict[str, list[Mapping[str, Any]]] = {}
    for key, info in infos.items():
        if info is not None and "size" in info and "mtime_ns" in info:
            stamps.setdefault(source_file(key), []).append(info)
    changed, vanished = [], []
    for path, known in sorted(stamps.items()):
        now = file_stamp(path)
        if now is None:
            vanished.append(path)
        elif any(_changed(k, now) for k in known):
            changed.append(path)
    return changed, vanished


def _retry_key(writer: IndexWriter, key: str) -> tuple[str, str]:
    """``(last committed key of the scene, key of its next retry)``."""
    last, n = key, 1
    while writer.is_done(f"{key}{RETRY_MARK}{n}"):
        last, n = f"{key}{RETRY_MARK}{n}", n + 1
    return last, f"{key}{RETRY_MARK}{n}"


def retry_source(source: Source, key: str, windows: Sequence[Sequence[int]]) -> Source:
    """The source that reads again the ``windows`` (``[row, col, height, width]``) of a scene."""
    known = {(t.row, t.col, t.height, t.width): t for t in source.tiles or []}
    tiles = [
        known.get(tuple(int(v) for v in w)) or Tile(source.path, *(int(v) for v in w))
        for w in windows
    ]
    return Source(source.path, key, source.scene, tiles, source.stamp)


def pending_work(
    writer: IndexWriter, sources: Sequence[Source], report: BuildReport
) -> list[Source | None]:
    """What is left to encode of each planned source, in order: the source itself when not in
    the index, a retry of the failed tiles of a scene (:func:`retry_source`), or ``None``
    (done, changed since it was indexed, moved since it was indexed, or indexed with another
    tiling). Fills ``report``'s ``skipped_done``, ``retried``, ``changed``, ``moved`` and
    ``retiled`` (only the given sources are compared with their stamps: one ``stat`` each, at
    planning time, whatever the size of the index; a ``stat`` more for each indexed file whose
    name and stamp a new source shares)."""
    work: list[Source | None] = []
    changed: set[str] = set()
    retiled: dict[str, str] = {}
    moved: dict[str, str] = {}
    gone: dict[str, bool] = {}  # indexed file -> whether it no longer exists (stat once)
    stamped: dict[tuple[str, int, int], list[str]] | None = None  # read only when needed
    for s in sources:
        if not writer.is_done(s.key):
            if stamped is None:
                stamped = _stamped_files(writer)
            old = _moved_from(s, stamped, gone)
            if old is not None:  # never two rows of one image under two paths
                moved[s.file] = f"{s.file} (indexed as {old})"
                work.append(None)
                continue
            work.append(s)
            continue
        info = writer.source_info(s.key)
        if _changed(info, s.stamp):  # never mix two versions of a file
            changed.add(source_file(s.key))
            work.append(None)
            continue
        before, now = _tiling(info), _source_tiling(s)
        if before is not ... and before != now:  # one tiling per file
            retiled[s.file] = (
                f"{s.file} (indexed as {_tiling_text(before)}, given as {_tiling_text(now)})"
            )
            work.append(None)
            continue
        last, retry = _retry_key(writer, s.key)
        failed = (writer.source_info(last) or {}).get("failed_tiles")
        if failed and s.tiles is not None:
            report.retried += 1
            work.append(retry_source(s, retry, failed))
        else:
            report.skipped_done += 1
            work.append(None)
    report.changed = sorted(changed)
    report.moved = [moved[k] for k in sorted(moved)]
    report.retiled = [retiled[k] for k in sorted(retiled)]
    return work


def _stamped_files(writer: IndexWriter) -> dict[tuple[str, int, int], list[str]]:
    """The indexed files by ``(name, size, mtime_ns)`` as stamped when they were encoded
    (sources without a stamp, of indexes written before stamps, are left out)."""
    out: dict[tuple[str, int, int], list[str]] = {}
    for key, info in writer.source_infos.items():
        if not info or "size" not in info or "mtime_ns" not in info:
            continue
        file = source_file(key)
        if not os.path.isabs(file):  # keys of the Python API may be any text
            continue
        files = out.setdefault((os.path.basename(file), info["size"], info["mtime_ns"]), [])
        if file not in files:
            files.append(file)
    return out


def _moved_from(
    source: Source, stamped: Mapping[tuple[str, int, int], list[str]], gone: dict[str, bool]
) -> str | None:
    """The indexed file ``source`` was moved from: one of the same name, size and mtime that no
    longer exists at its indexed path; ``None`` when there is none."""
    if source.stamp is None:
        return None
    sig = (os.path.basename(source.file), source.stamp["size"], source.stamp["mtime_ns"])
    for old in stamped.get(sig, ()):
        if old == source.file:
            continue
        if old not in gone:
            gone[old] = not os.path.lexists(old)
        if gone[old]:
            return old
    return None


def _source_tiling(source: Source) -> list[int] | None:
    """How a source is cut: ``[tile size, stride]`` of a scene, ``None`` for one image (as its
    source information stores it, :func:`add_encoded`)."""
    if source.scene is None:
        return None
    return [int(source.scene.tile_size), int(source.scene.stride)]


def _tiling(info: Mapping[str, Any] | None) -> Any:
    """The tiling a stored source was indexed with (:func:`_source_tiling`), or ``...`` when its
    source information does not say (indexes written before it was stored)."""
    if not info or "tiling" not in info:
        return ...
    t = info["tiling"]
    return None if t is None else [int(v) for v in t]


def _tiling_text(tiling: list[int] | None) -> str:
    if tiling is None:
        return "one image"
    size, stride = tiling
    return f"tiles of {size} px every {stride} px"


def _changed(info: Mapping[str, Any] | None, stamp: Mapping[str, int] | None) -> bool:
    """Whether a stored source's stamp differs from its file's stamp now (unknown: unchanged)."""
    if not info or "size" not in info or "mtime_ns" not in info or stamp is None:
        return False
    return (info["size"], info["mtime_ns"]) != (stamp["size"], stamp["mtime_ns"])


def _geo_columns(crs: Any, transform: Any, row: int, col: int, h: int, w: int) -> dict[str, Any]:
    if crs is None or transform is None:
        return {
            "crs": None,
            "minx": np.nan,
            "miny": np.nan,
            "maxx": np.nan,
            "maxy": np.nan,
            "footprint": None,
        }
    bounds = raster_bounds(transform, row, col, h, w)
    try:
        ring = json.dumps(window_footprint_lonlat(crs, transform, row, col, h, w))
    except (ValueError, RuntimeError) as err:  # a CRS PROJ cannot transform to lon/lat
        logger.warning("no lon/lat footprint for a window of CRS %s: %s", crs, err)
        ring = None
    crs_text = crs.to_string() if hasattr(crs, "to_string") else str(crs)
    return {
        "crs": crs_text,
        "minx": bounds[0],
        "miny": bounds[1],
        "maxx": bounds[2],
        "maxy": bounds[3],
        "footprint": ring,
    }


def _file_row(path: str, key: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": key,
        "tile": False,
        "row": 0,
        "col": 0,
        "height": -1,
        "width": -1,
    }
    crs = transform = None
    from msclip.io.readers import RASTER_EXTENSIONS, open_raster

    if Path(path).suffix.lower() in RASTER_EXTENSIONS:  # georeferenced: footprint and size
        from rasterio.errors import RasterioIOError

        try:
            with open_raster(path) as src:
                row["height"], row["width"] = src.height, src.width
                crs, transform = src.crs, src.transform
        except RasterioIOError as err:
            logger.debug("no header for %s: %s", path, err)
    row.update(_geo_columns(crs, transform, 0, 0, row["height"], row["width"]))
    return row


def _tile_row(source: Source, tile: Tile) -> dict[str, Any]:
    info = source.scene
    row: dict[str, Any] = {
        "path": source.file,
        "tile": True,
        "row": tile.row,
        "col": tile.col,
        "height": tile.height,
        "width": tile.width,
    }
    row.update(_geo_columns(info.crs, info.transform, tile.row, tile.col, tile.height, tile.width))
    return row


@dataclass
class EncodedSource:
    """The encoding of one source (see :func:`encode_sources`).

    Attributes:
        position: the source's position in the build plan.
        embeddings: ``[n, D]`` float32 (L2-normalised).
        rows: the ``n`` metadata rows.
        failures: unreadable files or tiles of the source.
        nodata: tiles (or the file) skipped as mostly nodata.
        unreadable: a whole file that could not be read (not marked done: retried next time).
        stamp: the file's stamp when the source was planned (see :class:`Source`).
        failed_tiles: windows ``[row, col, height, width]`` of the tiles that could not be read
            (stored with the scene: the next run reads them again).
        items: files or tiles the source had to read.
    """

    position: int
    embeddings: np.ndarray
    rows: list[dict[str, Any]]
    failures: list[Failure] = field(default_factory=list)
    nodata: int = 0
    unreadable: bool = False
    stamp: dict[str, int] | None = None
    failed_tiles: list[list[int]] = field(default_factory=list)
    items: int = 1


def encode_sources(
    model: Any,
    preprocess: Any,
    sources: Sequence[Source],
    positions: Sequence[int] | None = None,
    *,
    min_valid: float = 0.5,
    nodata: float | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = False,
    abort_on: tuple[type[BaseException], ...] = (BandCoverageError,),
) -> Iterator[EncodedSource]:
    """Encode sources in order and yield each one as soon as all its items are done.

    Args:
        model: an :class:`msclip.MSCLIP`.
        preprocess: its preprocessing.
        sources: the sources to encode.
        positions: their positions in the build plan (default ``0, 1, ...``).
        min_valid: skip files and tiles with a smaller fraction of valid pixels (not nodata).
        nodata: nodata value overriding the files'.
        batch_size: images per model call (``None``: chosen for the device).
        workers: DataLoader worker processes.
        progress: show a progress bar.
        abort_on: error classes of an item that stop the build (raised as they are) instead of
            failing the item, e.g. :class:`~msclip.errors.RasterTooLargeError` for a scene
            given as an image file when ``preprocess`` bounds the pixels of a file.
    """
    positions = list(range(len(sources))) if positions is None else list(positions)
    dim = int(model.embed_dim)
    items: list[Any] = []
    owner: list[int] = []  # source of each item
    ends: list[int] = []  # one past the last item of each source
    for si, s in enumerate(sources):
        its = s.items
        items += its
        owner += [si] * len(its)
        ends.append(len(items))
    parts: list[list[np.ndarray]] = [[] for _ in sources]
    rows: list[list[dict[str, Any]]] = [[] for _ in sources]
    fails: list[list[Failure]] = [[] for _ in sources]
    skipped = [0] * len(sources)
    nxt = 0

    def finished(upto: int) -> Iterator[EncodedSource]:
        nonlocal nxt
        while nxt < len(sources) and ends[nxt] <= upto:
            s = sources[nxt]
            emb = np.concatenate(parts[nxt]) if parts[nxt] else np.zeros((0, dim), np.float32)
            failed_tiles = [
                [t.row, t.col, t.height, t.width]
                for f in fails[nxt]
                if isinstance(t := items[f.index], Tile)
            ]
            yield EncodedSource(
                positions[nxt], emb, rows[nxt], fails[nxt], skipped[nxt],
                unreadable=bool(fails[nxt]) and s.tiles is None, stamp=s.stamp,
                failed_tiles=failed_tiles, items=len(s.items),
            )  # fmt: skip
            parts[nxt], rows[nxt] = [], []
            nxt += 1

    for batch in iter_encoded(
        model, preprocess, items, batch_size, workers, True, progress, min_valid, nodata,
        desc="index", abort_on=abort_on,
    ):  # fmt: skip
        for j, i in enumerate(batch.indices):
            si = owner[i]
            item = items[i]
            src = sources[si]
            row = _tile_row(src, item) if isinstance(item, Tile) else _file_row(src.path, src.file)
            parts[si].append(batch.embeddings[j : j + 1])
            rows[si].append(row)
        for f in batch.failures:
            fails[owner[f.index]].append(f)
        for i in batch.skipped:
            skipped[owner[i]] += 1
        done_upto = max([*batch.indices, *[f.index for f in batch.failures], *batch.skipped])
        yield from finished(done_upto + 1)
    yield from finished(len(items))


def build_index(
    path: str | os.PathLike,
    model: Any,
    preprocess: Any,
    images: Sequence[str] = (),
    scenes: Sequence[str] = (),
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    min_valid: float = 0.5,
    nodata: float | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = False,
    commit_seconds: float = 60.0,
    must_exist: bool = False,
    on_source: Callable[[int], None] | None = None,
    abort_on: tuple[type[BaseException], ...] = (BandCoverageError,),
) -> BuildReport:
    """Add images and scene tiles to the index at ``path`` (created if needed), resumably.

    One process. Under ``torchrun`` use :func:`msclip.index.sharded.build_sharded` (what
    ``msclip-index build`` does in a process group): every process encodes its own share of the
    sources and the first one alone writes the index.

    Args:
        path: index directory.
        model: an :class:`msclip.MSCLIP`.
        preprocess: its preprocessing (``model.preprocess(...)``).
        images: image files, one embedding each; a folder stands for the images below it and
            a glob pattern for the files it matches, as in ``msclip-index build``.
        scenes: large rasters to tile (files, folders or glob patterns).
        tile_size: tile side in pixels (default: the model's input size).
        stride: step between tiles (default: ``tile_size``).
        min_valid: skip files and tiles with a smaller fraction of valid pixels (not nodata).
        nodata: nodata value overriding the files'.
        batch_size: images per model call (``None``: chosen for the device).
        workers: DataLoader worker processes.
        progress: show a progress bar.
        commit_seconds: commit staged sources at least this often (0: after every source).
        must_exist: refuse to create a new index (``add``).
        on_source: called with the plan position of each source this process has encoded (and,
            when distributed, handed over), e.g. to report progress.
        abort_on: error classes of an item that stop the build (see :func:`encode_sources`);
            the sources encoded before are committed.

    Neither ``images`` nor ``scenes`` creates an empty index (a start for later adds), with a
    warning that nothing was given.

    Raises:
        IndexNotFoundError: ``must_exist`` and there is no index at ``path``.
        IndexMismatchError: the index was built with another model or preprocessing.
    """
    if must_exist:
        IndexStore.open(path)  # raises IndexNotFoundError with a clear message
    tile = tile_size or int(model.image_size)
    sources = plan_sources(images, scenes, tile, stride)
    report = BuildReport(sources=len(sources))
    info = model_info(model)
    existed = (Path(path) / MANIFEST_NAME).exists()
    with IndexWriter.open_or_create(path, int(model.embed_dim), info) as writer:
        if not images and not scenes:  # an empty index is a start for later adds: say so
            logger.warning(
                "%s: no images or scenes given, nothing to encode; %s", path,
                "the index is unchanged" if existed else "created an empty index (add to it "
                "with build_index(..., images=[...], scenes=[...]) or 'msclip-index add')",
            )  # fmt: skip
        todo = [w for w in pending_work(writer, sources, report) if w is not None]
        not_encoded = (
            report.skipped_done + len(report.changed) + len(report.moved) + len(report.retiled)
        )
        if not_encoded:
            logger.info("%s: %d of %d sources already indexed, skipped", path, not_encoded,
                        len(sources))  # fmt: skip
        last_commit = time.monotonic()
        for done in encode_sources(
            model, preprocess, todo, min_valid=min_valid, nodata=nodata,
            batch_size=batch_size, workers=workers, progress=progress, abort_on=abort_on,
        ):  # fmt: skip
            staged = add_encoded(writer, todo[done.position], done, report)
            if staged and time.monotonic() - last_commit >= commit_seconds:
                writer.commit()
                last_commit = time.monotonic()
            if on_source is not None:
                on_source(done.position)
        writer.commit()
        report.count = writer.count
        drop_spool(Path(path))
    return report


#: Folder of an index where the processes of a sharded build other than the first leave their
#: encoded sources for process 0 (:mod:`msclip.index.sharded`).
SPOOL_DIR = "spool"


#: The files of a sharded build's spool beside the encodings (:mod:`msclip.index.sharded`): the
#: processes' signs of life and errors, and the runs' marks.
SPOOL_SIGNS = ("alive-*", "failed-*", "run-*")


def drop_spool(path: Path) -> None:
    """Remove ``path/spool`` once every source is committed (by the writer, which holds the
    index's lock): the encodings other processes left are then of committed sources, their
    signs of life and errors of no use, and a temporary file is what a process killed while it
    spooled a source left (no later run would take it: it stayed for good, as large as the
    source's embeddings). The run marks of :mod:`msclip.index.sharded` go too."""
    from msclip.io import TMP_PREFIX

    spool = path / SPOOL_DIR
    if not spool.is_dir():
        return
    for pattern in ("source-*.npz", *SPOOL_SIGNS, f"{TMP_PREFIX}*"):
        for f in spool.glob(pattern):
            with contextlib.suppress(IsADirectoryError, PermissionError):
                f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # what else a user put there stays
        spool.rmdir()


def add_encoded(
    writer: IndexWriter, source: Source, done: EncodedSource, report: BuildReport
) -> bool:
    """Stage one encoded source in the writer and account for it in ``report``; returns whether
    it was staged (an unreadable whole file is not: a later run retries it). The source is
    stored with its file's stamp and the windows of its tiles that could not be read."""
    report.failures += done.failures
    report.failed_tiles += len(done.failed_tiles)
    report.nodata += done.nodata
    if source.tiles is None:
        report.files += done.items
    else:
        report.tiles += done.items
    if done.unreadable:
        return False
    info: dict[str, Any] = dict(done.stamp or {})
    info["tiling"] = _source_tiling(source)  # a later run given another tiling is told
    if done.failed_tiles:
        info["failed_tiles"] = done.failed_tiles
    writer.add(done.embeddings, done.rows if done.rows else None, source=source.key, info=info)
    report.added += source.key == source.file  # a retry adds to a scene already counted
    report.rows += len(done.embeddings)
    return True
