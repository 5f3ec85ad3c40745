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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import BandError, LayoutError, RasterReadError, UnsupportedFormatError
from msclip.spectral.bands import COUNT_DEFAULTS, Band, default_bands_for_count, resolve_bands

__all__ = [
    "IMAGE_EXTENSIONS",
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
        compress: GDAL compression (``"deflate"``, ``"lzw"`` ...), ``None`` for none.
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
    import rasterio

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
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = compress
    if creation_options:
        profile.update(creation_options)

    def _write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
            for i in range(1, arr.shape[0] + 1):
                if bands is not None:
                    dst.set_band_description(i, bands[i - 1])
                if band_tags is not None and band_tags[i - 1]:
                    dst.update_tags(i, ns=band_tags_ns, **band_tags[i - 1])
            if tags:
                dst.update_tags(**tags)

    return atomic_write(path, _write, suffix=".tif")
