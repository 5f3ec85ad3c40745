"""Reading and writing rasters with their band identity.

GeoTIFF / Cloud-Optimised GeoTIFF through rasterio (band count, band descriptions, nodata, CRS,
transform, windowed reads), NumPy ``.npy`` / ``.npz`` arrays and 8-bit PNG / JPEG images. Every
reader returns a :class:`Raster` whose ``data`` is bands-first ``[C, H, W]`` and whose ``bands``
are canonical band names, so nothing downstream guesses band order.

Band names come, in this order, from the file's band descriptions (when they are band names),
from the caller's ``bands=``, or from the band count (13 = Sentinel-2 L1C, 12 = L2A, 10 = the
Llama3-MS-CLIP set, 4 = RGBN, 3 = RGB). Array layout (bands first or last) comes from the file
format (GeoTIFF, images), from metadata stored in an ``.npz`` (``layout`` entry), or from the
caller's ``layout=``; for a bare array it is accepted from the shape only when exactly one end
axis can hold the bands, otherwise the reader refuses and says how to declare it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import (
    BandError,
    LayoutError,
    OutputPathError,
    RasterReadError,
    RasterWriteError,
    UnsupportedFormatError,
)
from msclip.spectral.bands import COUNT_DEFAULTS, Band, default_bands_for_count, resolve_bands

__all__ = [
    "IMAGE_EXTENSIONS",
    "GeoTiffStripWriter",
    "Raster",
    "atomic_write",
    "read_raster",
    "to_chw",
    "write_geotiff",
]

logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)

GEOTIFF_EXTENSIONS = (".tif", ".tiff")
NUMPY_EXTENSIONS = (".npy", ".npz")
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_EXTENSIONS = GEOTIFF_EXTENSIONS + NUMPY_EXTENSIONS + PICTURE_EXTENSIONS


@dataclass
class Raster:
    """An image with named bands and (optionally) georeference.

    Attributes:
        data: pixel values ``[C, H, W]``, the file's dtype.
        bands: canonical band names, one per channel.
        nodata: value marking missing pixels, if any.
        crs: coordinate reference system (``rasterio.crs.CRS``) of georeferenced files.
        transform: affine pixel-to-CRS transform (``affine.Affine``) of georeferenced files.
        path: source file.
        band_source: where the band names came from: ``descriptions``, ``argument``, ``count``.
        meta: extra reader facts (window, original layout ...).
    """

    data: np.ndarray
    bands: tuple[str, ...]
    nodata: float | None = None
    crs: Any = None
    transform: Any = None
    path: str | None = None
    band_source: str = "argument"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise LayoutError(f"raster data must be [C, H, W], got shape {self.data.shape}")
        if len(self.bands) != self.data.shape[0]:
            raise BandError(
                f"{len(self.bands)} band names {list(self.bands)} for {self.data.shape[0]} "
                f"channels{f' in {self.path}' if self.path else ''}"
            )

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        return int(self.data.shape[2])

    def select(self, bands: Sequence[str | Band]) -> Raster:
        """A raster with only ``bands``, in that order."""
        wanted = [b.name for b in resolve_bands(bands)]
        missing = [b for b in wanted if b not in self.bands]
        if missing:
            raise BandError(f"bands {missing} are not in {self.path or 'the raster'}: {self.bands}")
        idx = [self.bands.index(b) for b in wanted]
        return replace(self, data=self.data[idx], bands=tuple(wanted))


def _names(bands: Sequence[str | Band] | None, sensor: str | None) -> tuple[str, ...] | None:
    return None if bands is None else tuple(b.name for b in resolve_bands(bands, sensor))


def _assign_bands(
    count: int,
    descriptions: Sequence[str | None],
    bands: Sequence[str | Band] | None,
    sensor: str | None,
    where: str,
) -> tuple[tuple[str, ...], str]:
    """Band names for a file, by the documented precedence."""
    given = _names(bands, sensor)
    if given is not None and len(given) != count:
        raise BandError(
            f"{where} has {count} bands but {len(given)} band names were given: {list(given)}"
        )
    from_desc: tuple[str, ...] | None = None
    if descriptions and all(descriptions):
        try:
            from_desc = tuple(b.name for b in resolve_bands(descriptions, sensor))  # type: ignore[arg-type]
        except BandError:
            logger.debug("%s: band descriptions %s are not band names", where, descriptions)
    if from_desc is not None:
        if given is not None and given != from_desc:
            raise BandError(
                f"{where} describes its bands as {list(from_desc)} but bands={list(given)} was "
                "given; drop the argument or fix the file's band descriptions"
            )
        return from_desc, "descriptions"
    if given is not None:
        return given, "argument"
    try:
        return default_bands_for_count(count), "count"
    except BandError as err:
        raise BandError(f"{where}: {err}") from None


def to_chw(
    array: np.ndarray, layout: str | None = None, n_bands: int | None = None, where: str = "array"
) -> tuple[np.ndarray, str]:
    """Return ``array`` as ``[C, H, W]`` and the layout it had (``CHW`` or ``HWC``).

    Args:
        array: 2-D (one band) or 3-D array.
        layout: ``"CHW"``, ``"HWC"`` or ``None``/``"auto"`` (decide from the shape, refusing when
            ambiguous).
        n_bands: expected band count, when known (from band names).
        where: file name for messages.

    Raises:
        LayoutError: the layout cannot be known.
    """
    if array.ndim == 2:
        return array[None], "CHW"
    if array.ndim != 3:
        raise LayoutError(f"{where}: expected a 2-D or 3-D array, got shape {array.shape}")
    lay = (layout or "auto").upper()
    if lay == "CHW":
        return array, "CHW"
    if lay == "HWC":
        return np.moveaxis(array, -1, 0), "HWC"
    if lay != "AUTO":
        raise LayoutError(f"layout must be 'CHW', 'HWC' or 'auto', got {layout!r}")
    first, last = array.shape[0], array.shape[-1]
    if n_bands is not None:
        first_ok, last_ok = first == n_bands, last == n_bands
    else:
        first_ok, last_ok = first in COUNT_DEFAULTS, last in COUNT_DEFAULTS
    if first_ok and not last_ok:
        return array, "CHW"
    if last_ok and not first_ok:
        return np.moveaxis(array, -1, 0), "HWC"
    raise LayoutError(
        f"{where}: cannot tell whether the bands of an array of shape {array.shape} are the "
        "first or the last axis; declare it with layout='CHW' or layout='HWC' "
        "(--layout on the command line) or name the bands"
    )


def _read_geotiff(
    path: str, bands: Sequence[str | Band] | None, sensor: str | None, window: Any
) -> Raster:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            names, source = _assign_bands(
                src.count, list(src.descriptions), bands, sensor, f"GeoTIFF {path}"
            )
            data = src.read(window=window)
            transform = src.window_transform(window) if window is not None else src.transform
            crs = src.crs
            nodata = src.nodata
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read GeoTIFF {path}: {err}") from err
    if data.size == 0:
        raise RasterReadError(f"GeoTIFF {path} holds no pixels (shape {data.shape})")
    has_geo = crs is not None
    return Raster(
        data, names, nodata, crs if has_geo else None, transform if has_geo else None, path,
        source, {"window": window},
    )  # fmt: skip


def _read_numpy(
    path: str, bands: Sequence[str | Band] | None, sensor: str | None, layout: str | None
) -> Raster:
    meta_layout = None
    descriptions: list[str | None] = []
    nodata = None
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                key = "data" if "data" in keys else ("image" if "image" in keys else None)
                if key is None:
                    arrays = [k for k in keys if npz[k].ndim in (2, 3)]
                    if len(arrays) != 1:
                        raise RasterReadError(
                            f"{path}: cannot tell which array is the image among {keys}; "
                            "store it under the key 'data'"
                        )
                    key = arrays[0]
                array = npz[key]
                if "layout" in keys:
                    meta_layout = str(npz["layout"])
                if "bands" in keys:
                    descriptions = [str(b) for b in npz["bands"].tolist()]
                if "nodata" in keys:
                    nodata = float(npz["nodata"])
        else:
            array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise RasterReadError(f"cannot read array file {path}: {err}") from err
    if layout is not None and meta_layout is not None and layout.upper() != meta_layout.upper():
        raise LayoutError(f"{path} declares layout {meta_layout!r} but layout={layout!r} was given")
    given = _names(bands, sensor)
    n_bands = len(given) if given is not None else (len(descriptions) or None)
    data, found = to_chw(array, layout or meta_layout, n_bands, where=path)
    if data.size == 0:
        raise RasterReadError(f"{path} holds an empty array of shape {array.shape}")
    names, source = _assign_bands(data.shape[0], descriptions, bands, sensor, path)
    return Raster(np.ascontiguousarray(data), names, nodata, path=path, band_source=source,
                  meta={"layout": found})  # fmt: skip


def _read_picture(path: str, bands: Sequence[str | Band] | None, sensor: str | None) -> Raster:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise RasterReadError(f"cannot read image {path}: {err}") from err
    names, source = _assign_bands(3, [], bands, sensor, path)
    return Raster(np.ascontiguousarray(np.moveaxis(rgb, -1, 0)), names, path=path,
                  band_source=source, meta={"layout": "HWC"})  # fmt: skip


def read_raster(
    path: str | os.PathLike,
    bands: Sequence[str | Band] | None = None,
    layout: str | None = None,
    sensor: str | None = None,
    window: Any = None,
) -> Raster:
    """Read an image file with its band names.

    Args:
        path: ``.tif``/``.tiff`` (GeoTIFF, COG), ``.npy``/``.npz``, ``.png``/``.jpg``/``.jpeg``.
        bands: band names of the file's channels, when the file does not name them.
        layout: ``CHW`` or ``HWC`` for arrays whose layout cannot be known from the file.
        sensor: sensor whose local band names apply (``hls_l30``, ``landsat89`` ...).
        window: ``rasterio.windows.Window`` to read part of a GeoTIFF.

    Raises:
        RasterReadError: missing, empty or corrupt file.
        UnsupportedFormatError: unknown extension.
        BandError: band names cannot be determined or do not fit the file.
        LayoutError: array layout cannot be determined.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise RasterReadError(f"image file not found: {p}")
    if os.path.isfile(p) and os.path.getsize(p) == 0:
        raise RasterReadError(f"image file is empty (0 bytes): {p}")
    ext = Path(p).suffix.lower()
    if ext in GEOTIFF_EXTENSIONS:
        return _read_geotiff(p, bands, sensor, window)
    if ext in NUMPY_EXTENSIONS:
        return _read_numpy(p, bands, sensor, layout)
    if ext in PICTURE_EXTENSIONS:
        return _read_picture(p, bands, sensor)
    raise UnsupportedFormatError(
        f"unsupported image format {ext!r} ({p}); supported: {', '.join(IMAGE_EXTENSIONS)}"
    )


def atomic_write(path: str | os.PathLike, write: Any, suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one rename.

    A crash leaves either the old file or the new one, never a half-written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp",
                               dir=target.parent)  # fmt: skip
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def write_geotiff(
    path: str | os.PathLike,
    data: np.ndarray,
    crs: Any = None,
    transform: Any = None,
    bands: Sequence[str] | None = None,
    nodata: float | None = None,
    compress: str | None = "deflate",
    tags: dict[str, str] | None = None,
) -> Path:
    """Write ``[C, H, W]`` (or ``[H, W]``) to a GeoTIFF atomically, band names as descriptions."""
    import rasterio

    arr = data[None] if data.ndim == 2 else data
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": arr.shape[0],
        "height": arr.shape[1],
        "width": arr.shape[2],
        "dtype": arr.dtype.name,
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = compress

    def _write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
            if bands is not None:
                for i, name in enumerate(bands, start=1):
                    dst.set_band_description(i, name)
            if tags:
                dst.update_tags(**tags)

    return atomic_write(path, _write, suffix=".tif")


# -- streaming GeoTIFF writer (row strips of large rasters) -----------------------------------
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
        import rasterio

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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tif",
                                       dir=self.path.parent)  # fmt: skip
        except OSError as err:
            raise OutputPathError(f"cannot write {self.path}: {err}") from err
        os.close(fd)
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
        }
        if compress:
            profile["compress"] = compress
            if np.issubdtype(self.dtype, np.floating):
                profile["predictor"] = 3
            elif self.dtype.itemsize > 1:
                profile["predictor"] = 2
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = transform
        if nodata is not None:
            profile["nodata"] = nodata
        try:
            self._dst = rasterio.open(tmp, "w", **profile)
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
        try:
            self._flush()
            self._dst.close()
            final = self._tmp
            if self.cog:
                final = self._to_cog(self._tmp)
            os.chmod(final, 0o666 & ~_UMASK)
            os.replace(final, self.path)
        except BaseException:
            self._cleanup()
            raise
        finally:
            self._closed = True
            self._buffer = np.empty((0, 0, 0), dtype=self.dtype)
        if final != self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        return self.path

    def _to_cog(self, src: str) -> str:
        import rasterio.shutil

        fd, dst = tempfile.mkstemp(prefix=f".{self.path.name}.cog.", suffix=".tif",
                                   dir=self.path.parent)  # fmt: skip
        os.close(fd)
        options: dict[str, Any] = {
            "BLOCKSIZE": max(self.block_size, 256),
            "OVERVIEW_RESAMPLING": self.overview_resampling.upper(),
            "BIGTIFF": "IF_SAFER",
        }
        if self.compress:
            options["COMPRESS"] = self.compress.upper()
            if np.issubdtype(self.dtype, np.floating):
                options["PREDICTOR"] = "FLOATING_POINT"
            elif self.dtype.itemsize > 1:
                options["PREDICTOR"] = "HORIZONTAL"
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
