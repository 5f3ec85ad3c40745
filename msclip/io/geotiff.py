"""GeoTIFF writers: whole arrays (:func:`write_geotiff`) and row strips of rasters too large to
hold in memory (:class:`GeoTiffStripWriter`), both committed atomically through
:mod:`msclip.io.writers`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import BandError, LayoutError, RasterWriteError
from msclip.io.writers import atomic_write, commit, temp_path

__all__ = ["GeoTiffStripWriter", "write_geotiff"]


def _georeference(crs: Any, transform: Any, nodata: float | None) -> dict[str, Any]:
    """The profile entries of the georeference and nodata value that are given."""
    given = {"crs": crs, "transform": transform, "nodata": nodata}
    return {k: v for k, v in given.items() if v is not None}


def _create(path: str, profile: Mapping[str, Any]) -> Any:
    """``rasterio.open(path, "w", **profile)``; a raster written without georeference on purpose
    (a map of a scene that has none) is not reported by rasterio as lacking one."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, "w", **profile)


# Uncompressed bytes per strip of a compressed file written by write_geotiff. GDAL's own default
# is about 8 KB: one row of a 224 x 224 x 12-band uint16 tile, so 224 strips, each compressed on
# its own, which read in twice the time (measured on 32 such deflate tiles, rasterio open + read,
# 2-core Zen 4: 8.3 ms per tile with one-row strips, 4.1-4.7 ms with strips of 16 to 64 rows and
# the predictor below, 17 % smaller).
# Bands are written as bands, not colours: GDAL's default for 3 or 4 bands of 8-bit pixels is a
# red-green-blue picture, the fourth band an alpha channel, so a blue-green-red-NIR array read back
# lost its NIR band to a mask (and its pixels where NIR is 0), and a B02, B03, B04 array was
# labelled red, green, blue.
_BANDS_NOT_COLOURS = "MINISBLACK"

_STRIP_BYTES = 1 << 17
# compressions that take GDAL's PREDICTOR option
_PREDICTED = {"deflate", "lzw", "zstd", "lzma"}


def _predictor(dtype: Any, compress: str | None) -> int | None:
    """GDAL's predictor for ``dtype`` under ``compress``, the one rule of every msclip writer: the
    floating-point predictor (3) for floats, horizontal differencing (2) for integers wider than
    a byte, none for bytes or a compression that takes none."""
    dtype = np.dtype(dtype)
    if not compress or str(compress).lower() not in _PREDICTED:
        return None
    if dtype.kind == "f":
        return 3
    return 2 if dtype.kind in "iu" and dtype.itemsize > 1 else None


def _compressed_layout(
    arr: np.ndarray, compress: str, options: Mapping[str, Any]
) -> dict[str, Any]:
    """Strip height and predictor of a compressed file where ``options`` set neither (a caller's
    ``tiled``, ``blockysize`` or ``predictor`` is kept as given): strips of about
    :data:`_STRIP_BYTES`, the predictor of :func:`_predictor`."""
    keys = {str(k).lower(): v for k, v in options.items()}
    out: dict[str, Any] = {}
    if not keys.keys() & {"tiled", "blockysize"}:
        # a strip holds every band of its rows, or one band's where bands are stored apart
        bands = 1 if str(keys.get("interleave", "pixel")).lower() == "band" else arr.shape[0]
        row = bands * arr.shape[2] * arr.dtype.itemsize
        out["blockysize"] = max(1, min(arr.shape[1], _STRIP_BYTES // max(row, 1)))
    predictor = _predictor(arr.dtype, compress)
    if "predictor" not in keys and predictor is not None:
        out["predictor"] = predictor
    return out


def write_geotiff(
    path: str | os.PathLike,
    data: np.ndarray,
    crs: Any = None,
    transform: Any = None,
    bands: Sequence[str] | None = None,
    nodata: float | None = None,
    compress: str | None = "deflate",
    tags: Mapping[str, str] | None = None,
    *,
    creation_options: Mapping[str, Any] | None = None,
    band_tags: Sequence[Mapping[str, str]] | None = None,
    band_tags_ns: str | None = None,
) -> Path:
    """Write ``[C, H, W]`` (or ``[H, W]``) to a GeoTIFF atomically, band names as descriptions.

    Nothing time-dependent is written, so equal arguments give equal bytes (with the same GDAL).

    Args:
        path: output file; parent folders are created.
        data: pixel values, bands first; the file gets their dtype.
        crs: coordinate reference system (``"EPSG:32632"``, a ``rasterio.crs.CRS`` ...).
        transform: affine pixel-to-CRS transform.
        bands: one description per band (band names), set in band order.
        nodata: value marking missing pixels (``float("nan")`` for float data).
        compress: GDAL compression (``"deflate"``, ``"lzw"`` ...), ``None`` for none. A
            compressed file is written in strips of about 128 KiB (GDAL's default, ~8 KB, makes
            a 224 x 224 x 12-band tile read twice as slowly) with the predictor that suits the
            data type (2 for integers wider than a byte, 3 for floats), unless
            ``creation_options`` say otherwise.
        tags: dataset metadata (default domain).
        creation_options: further GDAL GTiff creation options, e.g.
            ``{"predictor": 2, "interleave": "pixel", "tiled": True}``.
        band_tags: one mapping of metadata per band (``{}`` for none).
        band_tags_ns: metadata domain of ``band_tags`` (e.g. ``"IMAGERY"``; default domain when
            ``None``).

    Returns:
        The written path.

    Raises:
        LayoutError: ``data`` is not 2-D or 3-D.
        BandError: ``bands`` or ``band_tags`` does not have one entry per band.
    """

    arr = data[None] if data.ndim == 2 else data
    if arr.ndim != 3:
        raise LayoutError(
            f"cannot write an array of shape {data.shape} as a GeoTIFF; pass [C, H, W] or [H, W]"
        )
    for what, items in (("band names", bands), ("band tag mappings", band_tags)):
        if items is not None and len(items) != arr.shape[0]:
            raise BandError(
                f"{len(items)} {what} for an array of {arr.shape[0]} bands (shape {arr.shape}); "
                "pass one per band"
            )
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": arr.shape[0],
        "height": arr.shape[1],
        "width": arr.shape[2],
        "dtype": arr.dtype.name,
        "photometric": _BANDS_NOT_COLOURS,
    }
    profile.update(_georeference(crs, transform, nodata))
    if compress:
        profile["compress"] = compress
        profile.update(_compressed_layout(arr, compress, creation_options or {}))
    if creation_options:
        profile.update(creation_options)

    def _write(tmp: str) -> None:
        with _create(tmp, profile) as dst:
            dst.write(arr)
            for i in range(1, arr.shape[0] + 1):
                if bands is not None:
                    dst.set_band_description(i, bands[i - 1])
                if band_tags is not None and band_tags[i - 1]:
                    dst.update_tags(i, ns=band_tags_ns, **band_tags[i - 1])
            if tags:
                dst.update_tags(**tags)

    return atomic_write(path, _write, suffix=".tif")


class GeoTiffStripWriter:
    """Write a large raster to a tiled, compressed GeoTIFF (or COG) row strip by row strip.

    Rows are appended top to bottom with :meth:`write`; they are buffered until a whole row of
    ``block_size`` blocks is complete and then written with one windowed write, so every block
    is compressed exactly once and memory holds at most ``count x block_size x width`` values.
    The file is written under a temporary name in the target folder and renamed onto ``path``
    by :meth:`close` (as :func:`atomic_write` does): a crash or :meth:`abort` leaves no partial
    file. With ``cog=True`` the finished GeoTIFF is copied by GDAL's COG driver (internal
    overviews, COG layout) before the rename; the copy streams block by block.

    GDAL caches blocks (written ones too) up to ``GDAL_CACHEMAX``, 5% of the RAM by default;
    keep it small around the writes of a large raster (``rasterio.Env(GDAL_CACHEMAX=...)``) to
    bound memory.

    Args:
        path: output file.
        width: columns.
        height: rows.
        count: bands.
        dtype: numpy dtype name of every band.
        crs: coordinate reference system.
        transform: affine pixel-to-CRS transform.
        nodata: nodata value of the file.
        band_names: band descriptions.
        block_size: tile side (a multiple of 16).
        compress: GDAL compression (``deflate``, ``zstd``, ``lzw`` ... or ``None``).
        cog: convert to a Cloud-Optimised GeoTIFF at the end.
        overview_resampling: resampling of the COG overviews (``nearest`` for classes,
            ``average`` for continuous values).
        tags: dataset metadata.
        scales: per-band scale factors (GDAL's ``scale``/``offset`` band metadata).
        offsets: per-band offsets.

    Raises:
        RasterWriteError: bad sizes or band names, rows that do not fit, or too few rows.
        OutputPathError: the output folder cannot be written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        count: int,
        dtype: str,
        crs: Any = None,
        transform: Any = None,
        nodata: float | None = None,
        band_names: Sequence[str] | None = None,
        block_size: int = 256,
        compress: str | None = "deflate",
        cog: bool = False,
        overview_resampling: str = "nearest",
        tags: dict[str, str] | None = None,
        scales: Sequence[float] | None = None,
        offsets: Sequence[float] | None = None,
    ) -> None:

        if width < 1 or height < 1 or count < 1:
            raise RasterWriteError(f"raster size must be positive, got {width}x{height}x{count}")
        if block_size < 16 or block_size % 16:
            raise RasterWriteError(
                f"block_size must be a positive multiple of 16, got {block_size}"
            )
        if band_names is not None and len(band_names) != count:
            raise RasterWriteError(f"{len(band_names)} band names for {count} bands")
        self.path = Path(path)
        self.width, self.height, self.count = int(width), int(height), int(count)
        self.dtype = np.dtype(dtype)
        self.block_size = int(block_size)
        self.cog = bool(cog)
        self.compress = compress
        self.overview_resampling = overview_resampling
        self.rows_written = 0
        self._buffer = np.empty((self.count, self.block_size, self.width), dtype=self.dtype)
        self._filled = 0
        self._flushed = 0
        tmp = temp_path(self.path, ".tif")
        self._tmp = tmp
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtype": self.dtype.name,
            "tiled": True,
            "blockxsize": self.block_size,
            "blockysize": self.block_size,
            "BIGTIFF": "IF_SAFER",
            "photometric": _BANDS_NOT_COLOURS,
        }
        if compress:
            profile["compress"] = compress
            predictor = _predictor(self.dtype, compress)
            if predictor is not None:
                profile["predictor"] = predictor
        profile.update(_georeference(crs, transform, nodata))
        try:
            self._dst = _create(tmp, profile)
            if band_names is not None:
                for i, name in enumerate(band_names, start=1):
                    self._dst.set_band_description(i, str(name))
            if tags:
                self._dst.update_tags(**tags)
            if scales is not None:
                self._dst.scales = tuple(float(s) for s in scales)
            if offsets is not None:
                self._dst.offsets = tuple(float(o) for o in offsets)
        except BaseException:
            self._cleanup()
            raise
        self._closed = False

    def __enter__(self) -> GeoTiffStripWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, rows: np.ndarray) -> None:
        """Append rows ``[count, n, width]`` (or ``[n, width]`` for one band) below those
        written so far."""
        if self._closed:
            raise RasterWriteError(f"the writer of {self.path} is closed")
        arr = rows[None] if rows.ndim == 2 else rows
        if arr.ndim != 3 or arr.shape[0] != self.count or arr.shape[2] != self.width:
            raise RasterWriteError(
                f"rows of shape {rows.shape} do not fit a {self.count}-band raster "
                f"{self.width} pixels wide (expected [{self.count}, n, {self.width}])"
            )
        n = arr.shape[1]
        if self.rows_written + n > self.height:
            raise RasterWriteError(
                f"{self.rows_written + n} rows written to a raster {self.height} rows high"
            )
        start = 0
        while start < n:
            take = min(self.block_size - self._filled, n - start)
            self._buffer[:, self._filled : self._filled + take] = arr[:, start : start + take]
            self._filled += take
            start += take
            if self._filled == self.block_size:
                self._flush()
        self.rows_written += n

    def update_tags(self, **tags: str) -> None:
        """Add dataset metadata known only once the rows are written (before :meth:`close`)."""
        if self._closed:
            raise RasterWriteError(f"the writer of {self.path} is closed")
        self._dst.update_tags(**tags)

    def _flush(self) -> None:
        from rasterio.windows import Window

        if not self._filled:
            return
        window = Window(0, self._flushed, self.width, self._filled)
        self._dst.write(self._buffer[:, : self._filled], window=window)
        self._flushed += self._filled
        self._filled = 0

    def close(self) -> Path:
        """Finish the file (all rows must have been written) and move it onto ``path``."""
        if self._closed:
            return self.path
        if self.rows_written != self.height:
            self.abort()
            raise RasterWriteError(
                f"only {self.rows_written} of {self.height} rows were written to {self.path}; "
                "nothing was saved"
            )
        final = self._tmp
        try:
            self._flush()
            self._dst.close()
            if self.cog:
                final = self._to_cog(self._tmp)
            commit(final, self.path)
        except BaseException:
            self._cleanup()
            if final != self._tmp and os.path.exists(final):
                os.unlink(final)  # the COG copy, when its rename failed
            raise
        finally:
            self._closed = True
            self._buffer = np.empty((0, 0, 0), dtype=self.dtype)
        if final != self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        return self.path

    def _to_cog(self, src: str) -> str:
        import rasterio.shutil

        dst = temp_path(self.path, ".cog.tif")
        options: dict[str, Any] = {
            "BLOCKSIZE": max(self.block_size, 256),
            "OVERVIEW_RESAMPLING": self.overview_resampling.upper(),
            "BIGTIFF": "IF_SAFER",
        }
        if self.compress:
            options["COMPRESS"] = self.compress.upper()
            predictor = _predictor(self.dtype, self.compress)
            if predictor is not None:
                # the COG driver's names (it ignores GTiff's "HORIZONTAL" without a word)
                options["PREDICTOR"] = {2: "STANDARD", 3: "FLOATING_POINT"}[predictor]
        try:
            rasterio.shutil.copy(src, dst, driver="COG", **options)
        except BaseException:
            if os.path.exists(dst):
                os.unlink(dst)
            raise
        return dst

    def abort(self) -> None:
        """Drop the partial file; ``path`` is left as it was."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._cleanup()

    def _cleanup(self) -> None:
        dst = getattr(self, "_dst", None)
        if dst is not None and not dst.closed:
            dst.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)
