"""Tiling of large georeferenced rasters, and per-tile results written back as GeoTIFFs.

A scene (a GeoTIFF or Cloud-Optimised GeoTIFF, possibly much larger than the model's input) is
cut into square windows of ``tile_size`` pixels every ``stride`` pixels, row-major; only whole
windows are made, so a remainder narrower than a tile at the right and bottom edges is not
covered (a warning gives its size). Each window is read on its own (``rasterio`` windowed reads:
for a COG only the blocks the window touches are decoded).

Per-tile results (a similarity to a text query, a zero-shot label) form a grid of
``n_rows x n_cols`` values. They are written as a GeoTIFF in the scene's CRS whose cell ``(i, j)``
is the ``stride x stride`` square centred on tile ``(i, j)``: the scene's transform, translated
by ``(tile_size - stride) / 2`` pixels and scaled by ``stride``. When ``stride == tile_size`` the
cells are exactly the tiles' footprints.

Footprints are given in the scene's CRS (``bounds``: ``minx, miny, maxx, maxy``) and as lon/lat
rings in EPSG:4326 (corner points transformed with ``rasterio.warp.transform``, ordered
counter-clockwise as RFC 7946 asks of exterior rings), with longitudes in [-180, 180] (a raster
in EPSG:4326 on a 0-360 grid, or one reaching past 180 E, is brought back there). The ring of a
window is made of the window's own corners, so that a rotated or sheared geotransform gives the
tile, not the box around it. As GeoJSON (:func:`footprint_geometry`), a window across the
antimeridian is cut there into two polygons, and one around a pole (a tile of a polar
stereographic scene) is the polygon between its edge and that pole.

A pixel is *nodata* when every band equals the nodata value (the file's, or the caller's) or is
NaN or infinite; a tile whose fraction of valid pixels is below ``min_valid`` is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import OutputPathError, RasterReadError, TilingError
from msclip.io import write_geotiff, write_text
from msclip.spectral.nodata import missing_pixels

__all__ = [
    "SceneInfo",
    "Tile",
    "check_scene_format",
    "class_counts",
    "footprint_geometry",
    "footprint_lonlat",
    "georeference_warning",
    "map_transform",
    "nodata_fraction",
    "open_scene",
    "raster_bounds",
    "refuse_scene_as_output",
    "scene_tiles",
    "tile_grid",
    "window_footprint_lonlat",
    "write_class_map",
    "write_legend",
    "write_tile_map",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tile:
    """One window of a raster file.

    Attributes:
        path: the raster file.
        row: top pixel row of the window.
        col: left pixel column of the window.
        height: window height in pixels.
        width: window width in pixels.
        grid_row: row of the tile in the tile grid.
        grid_col: column of the tile in the tile grid.
    """

    path: str
    row: int
    col: int
    height: int
    width: int
    grid_row: int = 0
    grid_col: int = 0

    @property
    def window(self) -> Any:
        """``rasterio.windows.Window`` of the tile."""
        from rasterio.windows import Window

        return Window(self.col, self.row, self.width, self.height)

    @property
    def name(self) -> str:
        """Display name ``path@row,col`` (pixel offsets of the top-left corner)."""
        return f"{self.path}@{self.row},{self.col}"


@dataclass(frozen=True)
class SceneInfo:
    """What is needed to tile a scene and georeference per-tile results.

    Attributes:
        path: the scene file.
        width, height: size in pixels.
        count: number of bands.
        crs: ``rasterio.crs.CRS`` (``None`` for files without georeference).
        transform: pixel-to-CRS ``affine.Affine``.
        nodata: the file's nodata value.
        tile_size: window side in pixels.
        stride: step between windows in pixels.
        n_rows, n_cols: tile grid shape.
    """

    path: str
    width: int
    height: int
    count: int
    crs: Any
    transform: Any
    nodata: float | None
    tile_size: int
    stride: int
    n_rows: int
    n_cols: int

    @property
    def grid_transform(self) -> Any:
        """Transform of the tile grid (one cell per tile, centred on the tile)."""
        from affine import Affine

        off = (self.tile_size - self.stride) / 2.0
        return self.transform @ Affine.translation(off, off) @ Affine.scale(self.stride)


def tile_grid(height: int, width: int, tile_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of whole tiles that fit a ``height x width`` raster.

    Raises:
        TilingError: non-positive sizes, or a raster smaller than one tile.
    """
    if tile_size < 1 or stride < 1:
        raise TilingError(f"tile size and stride must be >= 1, got {tile_size} and {stride}")
    if height < tile_size or width < tile_size:
        raise TilingError(
            f"raster of {width}x{height} pixels is smaller than one tile of {tile_size} pixels; "
            "use a smaller tile size or classify the file as a single image",
            param="tile_size",
        )
    return (height - tile_size) // stride + 1, (width - tile_size) // stride + 1


def georeference_warning(path: str | os.PathLike) -> str | None:
    """What a scene lacks for georeferenced maps, in words, or ``None`` when it has a CRS (an
    unreadable file: ``None`` too, its reading says why)."""
    from rasterio.errors import RasterioIOError

    from msclip.io.readers import open_raster

    try:
        with open_raster(path) as src:
            if src.crs is not None:
                return None
            gcps, _ = src.gcps
            has_transform = not src.transform.is_identity
    except RasterioIOError:
        return None
    if has_transform:  # a pixel grid in coordinates of an unnamed CRS: kept, the CRS cannot be
        return (
            f"{path} has a geotransform but no CRS: the maps keep its grid (the same coordinates) "
            "without a CRS; assign the scene's CRS (gdal_edit.py -a_srs EPSG:<code> "
            f"{path}) for maps that GIS software places"
        )
    if gcps:
        return (
            f"{path} is georeferenced by {len(gcps)} ground control points only, which the maps "
            "do not carry: they are written without georeference; warp the scene first "
            f"(gdalwarp -t_srs EPSG:<code> {path} warped.tif) for georeferenced maps"
        )
    return f"{path} has no CRS: the maps are written without georeference"


def map_transform(crs: Any, transform: Any) -> Any:
    """The geotransform a map of a scene carries: the scene's, or ``None`` for a scene without
    georeference (no CRS and rasterio's identity transform; written, it would place the map at
    the origin, upside down, and look georeferenced to a GIS)."""
    if crs is None and (transform is None or transform.is_identity):
        return None
    return transform


#: GDAL drivers of the scenes read window by window (a VRT: e.g. a product's band files stacked).
SCENE_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG", "VRT")


def check_scene_format(path: str | os.PathLike, driver: str) -> None:
    """Refuse a scene whose format msclip cannot read window by window (a PNG or JPEG picture is
    read whole: every tile would be the whole picture).

    Raises:
        TilingError: not a GeoTIFF / COG, JPEG 2000 or VRT; the message says how to convert it.
    """
    if driver not in SCENE_DRIVERS:
        raise TilingError(
            f"{path} is a {driver} file: scenes are read window by window from GeoTIFF, COG, "
            f"JPEG 2000 or VRT files; convert it first (gdal_translate -of COG {path} scene.tif), "
            "or classify it as one image"
        )


def open_scene(
    path: str | os.PathLike, tile_size: int, stride: int | None = None, require_crs: bool = False
) -> SceneInfo:
    """Read a scene's header and compute its tile grid.

    Args:
        path: GeoTIFF / COG, JPEG 2000 or VRT.
        tile_size: window side in pixels (usually the model's input size).
        stride: step between windows (default ``tile_size``: no overlap).
        require_crs: refuse files without a CRS (needed to write georeferenced maps).

    Raises:
        RasterReadError: missing or unreadable file.
        TilingError: bad tile parameters, no CRS when required, or a raster smaller than a tile.
    """
    from rasterio.errors import RasterioIOError

    from msclip.io.readers import open_raster

    p = os.fspath(path)
    stride = tile_size if stride is None else stride
    if not os.path.isfile(p):
        raise RasterReadError(f"scene file not found: {p}")
    try:
        with open_raster(p) as src:
            width, height, count = src.width, src.height, src.count
            crs, transform, nodata = src.crs, src.transform, src.nodata
            check_scene_format(p, src.driver)
    except RasterioIOError as err:
        raise RasterReadError(f"cannot open scene {p}: {err}") from err
    if require_crs and crs is None:
        raise TilingError(f"{p} has no CRS: scene maps need a georeferenced raster")
    n_rows, n_cols = tile_grid(height, width, tile_size, stride)
    if stride > tile_size:
        logger.warning(
            "%s: a stride of %d pixels over tiles of %d: each map cell (the stride square "
            "centred on its tile) stands for a tile smaller than itself, and the map reaches %g "
            "pixels past the scene's edges; a stride up to the tile size maps what was read",
            p, stride, tile_size, (stride - tile_size) / 2,
        )  # fmt: skip
    uncovered = (
        width - ((n_cols - 1) * stride + tile_size),
        height - ((n_rows - 1) * stride + tile_size),
    )
    if any(uncovered):
        logger.warning(
            "%s: the last %d columns and %d rows are not covered by whole tiles of %d pixels "
            "every %d (a stride that divides width - tile and height - tile covers them)",
            p, *uncovered, tile_size, stride,
        )  # fmt: skip
    return SceneInfo(
        p, width, height, count, crs, transform, nodata, tile_size, stride, n_rows, n_cols
    )


def scene_tiles(info: SceneInfo) -> list[Tile]:
    """Every tile of the scene's grid, row-major."""
    t, s = info.tile_size, info.stride
    return [
        Tile(info.path, i * s, j * s, t, t, i, j)
        for i in range(info.n_rows)
        for j in range(info.n_cols)
    ]


def nodata_fraction(data: np.ndarray, nodata: float | None) -> float:
    """Fraction of pixels of ``data`` ``[C, H, W]`` where every band is nodata, NaN or
    infinite."""
    if data.size == 0:
        return 1.0
    return float(missing_pixels(data, nodata).mean())


def raster_bounds(transform: Any, row: int, col: int, height: int, width: int) -> tuple[float, ...]:
    """CRS bounds ``(minx, miny, maxx, maxy)`` of a pixel window."""
    xs, ys = [], []
    for r, c in ((row, col), (row, col + width), (row + height, col), (row + height, col + width)):
        x, y = transform @ (c, r)
        xs.append(x)
        ys.append(y)
    return (min(xs), min(ys), max(xs), max(ys))


def footprint_lonlat(crs: Any, bounds: Sequence[float]) -> list[list[float]]:
    """Counter-clockwise lon/lat ring (closed, 5 points) of CRS ``bounds`` in EPSG:4326."""
    from rasterio.warp import transform as warp

    minx, miny, maxx, maxy = bounds
    xs = [minx, maxx, maxx, minx, minx]
    ys = [miny, miny, maxy, maxy, miny]
    lon, lat = warp(crs, "EPSG:4326", xs, ys)
    return [[_wrap_lon(a), float(b)] for a, b in zip(lon, lat)]


def window_footprint_lonlat(
    crs: Any, transform: Any, row: int, col: int, height: int, width: int
) -> list[list[float]]:
    """Counter-clockwise lon/lat ring (closed, 5 points) of a pixel window's corners in
    EPSG:4326: the window itself under any geotransform (north-up, south-up, rotated, sheared),
    where the ring of its CRS bounds would be the box around a rotated window."""
    from rasterio.warp import transform as warp

    corners = [(row + height, col), (row + height, col + width), (row, col + width), (row, col)]
    t = transform  # x = a*col + b*row + c, y = d*col + e*row + f (affine's own '*' warns)
    xs = [t.a * c + t.b * r + t.c for r, c in corners]
    ys = [t.d * c + t.e * r + t.f for r, c in corners]
    area = sum(xs[i] * ys[i - 3] - xs[i - 3] * ys[i] for i in range(4))
    if area < 0:  # a south-up or mirrored transform turns the corners clockwise
        xs, ys = (xs[0], *xs[:0:-1]), (ys[0], *ys[:0:-1])
    lon, lat = warp(crs, "EPSG:4326", [*xs, xs[0]], [*ys, ys[0]])
    return [[_wrap_lon(a), float(b)] for a, b in zip(lon, lat)]


def _wrap_lon(lon: float) -> float:
    """A longitude in [-180, 180] (RFC 7946): PROJ leaves those of an EPSG:4326 raster on a
    0-360 grid, or reaching past 180 E, as they are (190 for 170 W); -180 and 180 stay."""
    lon = float(lon)
    if -180.0 <= lon <= 180.0 or not np.isfinite(lon):
        return lon
    return (lon + 180.0) % 360.0 - 180.0


def footprint_geometry(ring: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The GeoJSON geometry of a lon/lat ring (:func:`window_footprint_lonlat`): a ``Polygon``,
    or, for a window that crosses the antimeridian (its longitudes jump from near 180 to near
    -180), a ``MultiPolygon`` of its parts on either side, cut at +/-180 as RFC 7946 (3.1.9)
    asks, so that GIS software does not draw it around the globe. A window around a pole (its
    ring turns once around the globe's axis) is the ``Polygon`` between its edge, from -180 to
    180, and the pole's latitude. Longitudes are brought into [-180, 180] (rings stored by
    earlier versions may hold those of a 0-360 grid)."""
    ring = [(_wrap_lon(p[0]), float(p[1])) for p in ring]
    polar = _around_pole(ring)
    if polar is not None:
        return {"type": "Polygon", "coordinates": [polar]}
    lons = [p[0] for p in ring]
    if max(lons) - min(lons) <= 180:
        return {"type": "Polygon", "coordinates": [[[a, b] for a, b in ring]]}
    east = [(lon + 360.0 if lon < 0 else lon, lat) for lon, lat in ring]  # continuous
    parts = []
    for keep, shift in ((lambda x: x <= 180.0, 0.0), (lambda x: x >= 180.0, -360.0)):
        part = _clip_at_180(east, keep)
        if len(part) >= 3 and _ring_area([*part, part[0]]) != 0:  # not a sliver on the line
            closed = [*part, part[0]]
            parts.append([[[x + shift, y] for x, y in closed]])
    if len(parts) == 1:  # a window that only touches the antimeridian
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def _ring_area(ring: Sequence[Sequence[float]]) -> float:
    """Shoelace area of a closed ring (positive: counter-clockwise)."""
    return 0.5 * sum(
        ring[i][0] * ring[i + 1][1] - ring[i + 1][0] * ring[i][1] for i in range(len(ring) - 1)
    )


def _lon_step(a: float, b: float) -> float:
    """The change of longitude from ``a`` to ``b`` the short way round, in (-180, 180]."""
    d = (b - a) % 360.0
    return d - 360.0 if d > 180.0 else d


def _around_pole(ring: Sequence[tuple[float, float]]) -> list[list[float]] | None:
    """The counter-clockwise lon/lat ring of the area a ring around a pole encloses (bounded by
    the ring's edge from -180 to 180 and by the pole's latitude, +/-90), or ``None`` for a ring
    that does not go around a pole (its longitude steps add up to 0, not to +/-360)."""
    pts = list(ring[:-1]) if tuple(ring[0]) == tuple(ring[-1]) else list(ring)
    if len(pts) < 3:
        return None
    n = len(pts)
    steps = [_lon_step(pts[i][0], pts[(i + 1) % n][0]) for i in range(n)]
    turn = sum(steps)
    if abs(turn) < 180.0:
        return None
    # the edge unrolled (continuous longitudes over one turn), made eastward
    path = [(pts[0][0], pts[0][1])]
    for i, step in enumerate(steps):
        path.append((path[-1][0] + step, pts[(i + 1) % n][1]))
    if turn < 0:
        path = path[::-1]
    # one turn before and one after, so that the path covers -180 .. 180 wherever it starts
    long = [(x - 360.0, y) for x, y in path] + path[1:] + [(x + 360.0, y) for x, y in path[1:]]
    edge: list[list[float]] = []
    for (x0, y0), (x1, y1) in pairwise(long):
        if not edge:
            if x0 <= -180.0 < x1:
                edge.append([-180.0, y0 + (-180.0 - x0) / (x1 - x0) * (y1 - y0)])
            else:
                continue
        if x1 >= 180.0:
            edge.append([180.0, y0 + (180.0 - x0) / (x1 - x0) * (y1 - y0)])
            break
        edge.append([x1, y1])
    if len(edge) < 2 or edge[-1][0] != 180.0:
        return None
    if np.mean([lat for _, lat in pts]) >= 0:  # the north pole: the area above the edge
        return [*edge, [180.0, 90.0], [-180.0, 90.0], edge[0]]
    return [[-180.0, -90.0], [180.0, -90.0], *edge[::-1], [-180.0, -90.0]]


def _clip_at_180(ring: Sequence[tuple[float, float]], keep: Any) -> list[tuple[float, float]]:
    """The vertices of the part of a closed ring where ``keep(lon)`` holds, cut along lon = 180
    (Sutherland-Hodgman against one line; the ring's last point repeats its first)."""
    pts = list(ring[:-1]) if tuple(ring[0]) == tuple(ring[-1]) else list(ring)
    out: list[tuple[float, float]] = []
    for i, cur in enumerate(pts):
        prev = pts[i - 1]
        if keep(cur[0]) != keep(prev[0]) and cur[0] != prev[0]:
            t = (180.0 - prev[0]) / (cur[0] - prev[0])
            out.append((180.0, prev[1] + t * (cur[1] - prev[1])))
        if keep(cur[0]):
            out.append(cur)
    # a vertex on the line is kept by both sides, and may follow its own crossing point
    return [p for i, p in enumerate(out) if i == 0 or p != out[i - 1]]


def refuse_scene_as_output(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Refuse an output file that is the scene itself (the same file by any name: a relative
    path, a link): the map, moved onto it when finished, would replace the scene.

    Raises:
        OutputPathError: ``dst`` is ``src``.
    """
    try:
        same = os.path.samefile(src, dst)
    except OSError:  # no output there yet: nothing to destroy
        return
    if same:
        stem = Path(os.fspath(src)).stem
        raise OutputPathError(
            f"the output {os.fspath(dst)} is the scene {os.fspath(src)} itself: writing the map "
            f"there would destroy the scene; give another file (e.g. {stem}_map.tif)",
            param="dst",
        )


def write_tile_map(
    path: str | os.PathLike,
    values: np.ndarray,
    info: SceneInfo,
    names: Sequence[str] | None = None,
    nodata: float | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write per-tile values ``[n_rows, n_cols]`` or ``[B, n_rows, n_cols]`` as a GeoTIFF.

    The file has the scene's CRS and :attr:`SceneInfo.grid_transform`; ``names`` become band
    descriptions; tags record the scene and the tile grid (``msclip_scene``,
    ``msclip_tile_size``, ``msclip_stride``) beside ``tags``. Written atomically.

    Raises:
        OutputPathError: ``path`` is the scene itself.
    """
    refuse_scene_as_output(info.path, path)
    arr = values[None] if values.ndim == 2 else values
    if arr.shape[1:] != (info.n_rows, info.n_cols):
        raise ValueError(
            f"values of shape {values.shape} do not fit the {info.n_rows}x{info.n_cols} tile grid"
        )
    # Band descriptions are free text here (queries), not band names: write them directly.
    return write_geotiff(
        path,
        arr,
        crs=info.crs,
        transform=None if map_transform(info.crs, info.transform) is None else info.grid_transform,
        bands=names,
        nodata=nodata,
        tags={
            "msclip_scene": os.path.abspath(info.path),
            "msclip_tile_size": str(info.tile_size),
            "msclip_stride": str(info.stride),
            **(tags or {}),
        },
    )


def write_class_map(
    out_dir: str | os.PathLike,
    labels: np.ndarray,
    class_names: Sequence[str],
    info: SceneInfo,
    confidence: np.ndarray | None = None,
    stem: str = "class_map",
    tags: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write a zero-shot class map and its legend.

    Args:
        out_dir: output directory.
        labels: class index per tile ``[n_rows, n_cols]``, ``-1`` for skipped tiles.
        class_names: names of the class indices.
        info: the scene.
        confidence: optional probability of the chosen class per tile ``[n_rows, n_cols]``,
            written to its own file.
        stem: file name stem.
        tags: more tags of both GeoTIFFs (e.g. :meth:`msclip.MSCLIP.output_tags`).

    Returns:
        Paths of the written files: ``map`` (``<stem>.tif``, uint8 or uint16, nodata = the
        largest value of the dtype), ``legend_json``, ``legend_csv`` and, with ``confidence``,
        ``confidence`` (``<stem>_confidence.tif``, float32, NaN nodata).
    """
    out = Path(out_dir)
    n = len(class_names)
    dtype = np.uint8 if n < 255 else np.uint16
    fill = int(np.iinfo(dtype).max)
    arr = np.where(labels < 0, fill, labels).astype(dtype)
    named = {**(tags or {}), "msclip_class_names": json.dumps([str(c) for c in class_names])}
    paths = {
        "map": write_tile_map(out / f"{stem}.tif", arr, info, ["class"], nodata=fill, tags=named)
    }
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=n)
    paths.update(
        write_legend(out, stem, class_names, counts, fill, "tiles", int((labels < 0).sum()))
    )
    if confidence is not None:
        conf = np.where(labels < 0, np.nan, confidence).astype(np.float32)
        paths["confidence"] = write_tile_map(
            out / f"{stem}_confidence.tif", conf, info, ["probability"], nodata=float("nan"),
            tags=named,
        )  # fmt: skip
    return paths


def write_legend(
    out_dir: str | os.PathLike,
    stem: str,
    class_names: Sequence[str],
    counts: Sequence[int],
    nodata: int,
    unit: str = "tiles",
    skipped: int | None = None,
) -> dict[str, Path]:
    """Write ``<stem>_legend.json`` and ``<stem>_legend.csv``: each class value, name and count.

    Args:
        out_dir: output folder.
        stem: file name stem of the map.
        class_names: names of the class values 0, 1, ...
        counts: tiles or pixels of each class.
        nodata: the map's nodata value.
        unit: what ``counts`` count (``tiles`` or ``pixels``), the column name.
        skipped: tiles or pixels left as nodata, when known.

    Returns:
        ``{"legend_json": path, "legend_csv": path}``.
    """
    out = Path(out_dir)
    legend: dict[str, Any] = {
        "nodata": int(nodata),
        "classes": [
            {"value": i, "name": c, unit: int(counts[i])} for i, c in enumerate(class_names)
        ],
    }
    if skipped is not None:
        legend[f"skipped_{unit}"] = int(skipped)
    rows = [f"value,class,{unit}"] + [
        f"{i},{_csv_field(name)},{int(counts[i])}" for i, name in enumerate(class_names)
    ]
    return {
        "legend_json": write_text(out / f"{stem}_legend.json", json.dumps(legend, indent=1)),
        "legend_csv": write_text(out / f"{stem}_legend.csv", "\n".join(rows) + "\n"),
    }


def class_counts(path: str | os.PathLike, n_classes: int) -> tuple[np.ndarray, int]:
    """Pixels of each class value in band 1 of a class map, read block by block, and the number
    of nodata pixels."""
    from msclip.io.readers import open_raster

    counts = np.zeros(n_classes, dtype=np.int64)
    missing = 0
    with open_raster(path) as src:  # a map of a scene without georeference has none either
        nodata = src.nodata
        for _, window in src.block_windows(1):
            band = src.read(1, window=window).ravel()
            valid = band != nodata if nodata is not None else np.ones(band.shape, bool)
            missing += int((~valid).sum())
            counts += np.bincount(band[valid].astype(np.int64), minlength=n_classes)[:n_classes]
    return counts, missing


def _csv_field(value: str) -> str:
    if any(ch in value for ch in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value
