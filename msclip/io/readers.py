"""Reading rasters with their band identity.

GeoTIFF / Cloud-Optimised GeoTIFF, JPEG 2000 (``.jp2``, the band files of Sentinel-2 SAFE products)
and GDAL virtual rasters (``.vrt``: band files stacked, mosaicked or resampled by a small XML file,
as ``gdalbuildvrt -separate`` writes it) through rasterio (band count, band descriptions, nodata,
CRS, transform, windowed and reduced reads; the rules below for GeoTIFFs hold for all three),
NumPy ``.npy`` / ``.npz`` arrays and PNG / JPEG pictures
(at their true depth: 8- or 16-bit, greyscale or RGB,
turned upright as their EXIF orientation says). Every reader returns a :class:`Raster`
whose ``data`` is bands-first ``[C, H, W]`` and whose ``bands`` are canonical band names, so
nothing downstream guesses band order.

Pixels a GeoTIFF's own mask marks invalid (an alpha band, as ``gdalwarp -dstalpha`` writes, or an
internal / ``.msk`` mask) are missing pixels like nodata ones: every band of them is set to the
nodata value (the file's, else NaN for float data, else a value no valid pixel holds in all its
bands, returned as the raster's ``nodata``). An alpha band is not an image band: it is left out of
the data and of the band naming (:func:`read_image`).

Values a GeoTIFF declares scaled (GDAL band scale and offset, ``value = stored x scale + offset``,
as many Sentinel-2 L2A COGs declare ``0.0001`` and ``-0.1`` since processing baseline 04.00) are
read in the unit of msclip's reflectance models, reflectance x 10000 (L2A digital numbers without
the offset): a band whose scale is at most 0.01 declares reflectance and is multiplied by 10000
(except a thermal band, read in its declared unit, kelvin), others are taken in the stored unit.
The result is float32 and its missing pixels NaN. A file of integers (GeoTIFF or array file)
read as a sensor whose product defines a scale its files do not declare
(``sensor="landsat89_sr"``: Landsat Collection 2 surface reflectance, ``x 2.75e-5 - 0.2``) is
read with that scale in the same way, its thermal bands as stored. Other files without a scale
or offset are read unchanged, in their own dtype.

Band names come, in this order, from the file's band descriptions (when they are band names;
generic numbering such as ``band_1`` falls through to the count with a warning, other unknown
descriptions are refused), from the caller's ``bands=``, or from the band count (13 = Sentinel-2
L1C in ESA's order, with a warning naming the ``eurosat`` sensor, whose files put B8A last; 12 =
L2A, 10 = the Llama3-MS-CLIP set, 4 = RGBN, 3 = RGB; 3 or 4 GeoTIFF bands whose colour
interpretation puts red, green and blue in another order, as a blue-green-red file declares it,
get them in that order). Array layout (bands first or
last) comes from the file format (GeoTIFF, images), from metadata stored in an ``.npz``
(``layout`` entry), or from the caller's ``layout=``; for a bare array it is accepted from the
shape only when exactly one end axis can hold the bands, otherwise the reader refuses and says
how to declare it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import (
    AlphaBandWarning,
    BandError,
    DescribedBandsWarning,
    GenericBandNamesWarning,
    ImageTypeError,
    LayoutError,
    RasterReadError,
    RasterTooLargeError,
    UnknownBandError,
    UnsupportedFormatError,
)
from msclip.spectral.bands import Band, default_bands_for_count, get_sensor, resolve_bands
from msclip.spectral.layout import to_chw
from msclip.spectral.nodata import missing_pixels

__all__ = [
    "GEOTIFF_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "JP2_EXTENSIONS",
    "NUMPY_EXTENSIONS",
    "PICTURE_EXTENSIONS",
    "RASTER_EXTENSIONS",
    "VRT_EXTENSIONS",
    "Raster",
    "check_dtype",
    "check_pixels",
    "declares_scale",
    "image_bands",
    "input_stamp",
    "open_raster",
    "raster_band_names",
    "raster_format",
    "read_image",
    "read_raster",
    "thermal_bands",
    "to_chw",
    "too_large_picture",
    "vrt_sources",
]

logger = logging.getLogger(__name__)

GEOTIFF_EXTENSIONS = (".tif", ".tiff")
#: JPEG 2000 (Sentinel-2 SAFE products store each band so).
JP2_EXTENSIONS = (".jp2",)
#: GDAL virtual rasters: band files stacked, mosaicked or resampled by a small XML file.
VRT_EXTENSIONS = (".vrt",)
#: Rasters read through GDAL (rasterio), window by window and with their georeference.
RASTER_EXTENSIONS = GEOTIFF_EXTENSIONS + JP2_EXTENSIONS + VRT_EXTENSIONS
NUMPY_EXTENSIONS = (".npy", ".npz")
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_EXTENSIONS = RASTER_EXTENSIONS + NUMPY_EXTENSIONS + PICTURE_EXTENSIONS


def raster_format(path: str | os.PathLike) -> str:
    """The name of a GDAL raster's format by its extension, for messages."""
    ext = Path(path).suffix.lower()
    if ext in JP2_EXTENSIONS:
        return "JPEG 2000"
    if ext in VRT_EXTENSIONS:
        return "VRT"
    return "GeoTIFF"


def input_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """``(size, mtime_ns)`` of what reading an input reads, to tell when it changed.

    A file: its own size and modification time. A folder (the band files of one patch): the total
    size and latest time of the files under it (a file rewritten in place changes no folder time).
    A VRT: the total size and latest time of the VRT and of every file GDAL says it reads (a band
    file rewritten under an unchanged VRT is a change; a missing one counts 0 bytes, so its
    arrival is one too).

    Raises:
        OSError: the path itself cannot be read.
    """
    p = os.fspath(path)
    st = os.stat(p)
    if os.path.isdir(p):
        return _total_stamp(
            [os.path.join(root, n) for root, _, names in os.walk(p) for n in names],
            int(st.st_mtime_ns),
        )
    if Path(p).suffix.lower() not in VRT_EXTENSIONS:
        return int(st.st_size), int(st.st_mtime_ns)
    size, mtime = _total_stamp(vrt_sources(p), int(st.st_mtime_ns))
    return size + int(st.st_size), mtime


def vrt_sources(path: str | os.PathLike) -> list[str]:
    """Absolute paths of the files a VRT reads (as GDAL lists them, the VRT itself left out; a
    missing one included), or ``[]`` for a VRT GDAL cannot open (its reading names the reason)."""
    from rasterio.errors import RasterioError

    own = os.path.abspath(path)
    try:
        with open_raster(path) as src:
            files = [os.path.abspath(f) for f in src.files]
    except RasterioError:
        return []
    return [f for f in files if f != own]


def _total_stamp(files: Sequence[str], mtime: int) -> tuple[int, int]:
    size = 0
    for f in files:
        try:
            fs = os.stat(f)
        except OSError:
            continue
        size += int(fs.st_size)
        mtime = max(mtime, int(fs.st_mtime_ns))
    return size, mtime


@dataclass
class Raster:
    """An image with named bands and (optionally) georeference.

    Attributes:
        data: pixel values ``[C, H, W]``, the file's dtype (float32 in the reflectance models'
            unit when a GeoTIFF declares a band scale or offset; see the module docstring).
        bands: canonical band names, one per channel.
        nodata: value marking missing pixels, if any.
        crs: coordinate reference system (``rasterio.crs.CRS``) of georeferenced files.
        transform: affine pixel-to-CRS transform (``affine.Affine``) of georeferenced files.
        path: source file.
        band_source: where the band names came from: ``descriptions``, ``argument``,
            ``sensor`` (the sensor's band order, for unnamed bands), ``colorinterp`` (3 or 4
            unnamed bands whose colour interpretation puts red, green and blue in another
            order, such as blue, green, red), ``count``.
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
    colours: Sequence[str] | None = None,
    unscaled_integers: bool = False,
) -> tuple[tuple[str, ...], str]:
    """Band names for a file, by the documented precedence; ``colours``: a GeoTIFF's colour
    interpretation of each band (``red``, ``gray`` ...), which orders 3 or 4 unnamed bands;
    ``unscaled_integers``: the file stores integers and declares no scale (a sensor hint then
    names first the sensors whose product defines the scale of such numbers)."""
    known = get_sensor(sensor) if sensor is not None else None  # an unknown name fails here
    given = _names(bands, sensor)
    from_desc: tuple[str, ...] | None = None
    present = [d for d in descriptions if d]
    if present:
        try:
            from_desc = tuple(
                b.name for b in resolve_bands(descriptions, sensor, descriptions=True)
            )  # type: ignore[arg-type]
        except UnknownBandError:
            from_desc = None
        except BandError as err:
            # every description is a band name, but one band is named twice: say so, rather
            # than call them names msclip does not know
            if given is None:
                raise BandError(
                    f"{where}: {err}; fix the file's band descriptions or name its bands "
                    "(bands=[...])",
                    param="bands",
                ) from None
            from_desc = None
    if from_desc is not None and sensor is not None:
        from_desc = _own_names_if_not_the_sensors(from_desc, descriptions, known)
    if from_desc is not None:
        # bands= names the channels of files that do not name them: a file that does keeps its
        # names (a folder may mix both, such as arrays with bands= and GeoTIFFs stored in
        # another order); said where the same count is named otherwise, in case the caller
        # meant to rename the file's bands
        if given is not None and len(given) == count and given != from_desc:
            warnings.warn(
                f"a file describes its {count} bands as {', '.join(from_desc)}, not as the "
                f"band names given ({', '.join(given)}): its own names are used (the given "
                "names are for files that do not name their bands; fix a file's band "
                "descriptions to rename its bands)",
                DescribedBandsWarning,
                stacklevel=3,
            )
        return from_desc, "descriptions"
    if given is not None:
        if len(given) != count:
            raise BandError(
                f"{where} has {count} bands but {len(given)} band names were given: {list(given)}",
                param="bands",
            )
        return given, "argument"
    if known is not None and not (present and not all(_GENERIC_BAND.match(d) for d in present)):
        if len(known.bands) != count:
            raise BandError(
                f"{where} has {count} unnamed bands but the sensor {known.name} has "
                f"{len(known.bands)} ({', '.join(known.bands)}); name the file's bands "
                "(bands=[...])",
                param="bands",
            )
        return known.bands, "sensor"
    if present and not all(_GENERIC_BAND.match(d) for d in present):
        fits = _sensors_naming(descriptions, unscaled_integers) if sensor is None else []
        hint = (
            f"they are band names of {' and '.join(fits)}: pass sensor='{fits[0]}'"
            if fits
            else "name the bands (e.g. bands=['B02', 'B03', 'B04', 'B08']) rather than have "
            "them guessed from the band count"
        )
        raise BandError(
            f"{where} describes its bands as {list(descriptions)}, which are not band names "
            f"msclip knows; {hint}",
            param="sensor" if fits else "bands",
        )
    try:
        names = default_bands_for_count(count)
    except BandError as err:
        raise BandError(f"{where}: {err}", param=err.param) from None
    ordered = _colour_order(names, colours)
    if ordered is not None:
        if count == 4:
            warnings.warn(
                f"4 unnamed bands are taken as {', '.join(ordered)} (NAIP's bands in the order "
                "their colour interpretation gives); name them (bands=[...]) or pass the sensor "
                "to be sure",
                GenericBandNamesWarning,
                stacklevel=3,
            )
        return ordered, "colorinterp"
    if present:
        warnings.warn(
            f"band descriptions are generic numbering ({present[0]!r} ...): the bands are taken "
            f"from the band count ({count} bands: {', '.join(names)}); name them to be sure",
            GenericBandNamesWarning,
            stacklevel=3,
        )
    elif count == 13:
        # thirteen Sentinel-2 bands are stored in two orders: ESA's (B8A ninth) and that of the
        # EuroSAT multispectral GeoTIFFs (B8A last), which name no bands: read one in the other
        # order, the model's B8A, B11 and B12 get B09, B12 and B8A without a word
        warnings.warn(
            "13 unnamed bands are taken as Sentinel-2 L1C in ESA's order (..., B08, B8A, B09, "
            "B10, B11, B12); EuroSAT's multispectral GeoTIFFs put B8A last: read them with "
            "--sensor eurosat (sensor='eurosat'), or name the bands",
            GenericBandNamesWarning,
            stacklevel=3,
        )
    elif count == 4:
        # four bands are stored in two orders: NAIP red, green, blue, NIR and PlanetScope (and
        # most 4-band satellite products) blue, green, red, NIR
        warnings.warn(
            "4 unnamed bands are taken as red, green, blue, NIR (NAIP order); PlanetScope and "
            "other blue-green-red-NIR files need --sensor planetscope4 or their band names "
            "(bands=['B02', 'B03', 'B04', 'B08'])",
            GenericBandNamesWarning,
            stacklevel=3,
        )
    return names, "count"


def _own_names_if_not_the_sensors(
    with_sensor: tuple[str, ...],
    descriptions: Sequence[str | None],
    sensor: Any,
) -> tuple[str, ...]:
    """The band names of a file's descriptions read in ``sensor``'s numbering, or, where that
    reading makes one image of two sensors' bands while the descriptions alone name bands of one
    (a Sentinel-2 file described ``B02 ... B8A, B12`` read with ``hls_l30``: ``B05`` would become
    Landsat's near-infrared and ``B11`` its thermal band beside Sentinel-2's ``B8A`` and ``B12``),
    the descriptions' own names, with a warning: they are not in the sensor's numbering (a folder
    may mix the sensor's unnamed files with files of another that name their bands)."""
    from msclip.spectral.bands import BANDS

    if not all(descriptions):
        return with_sensor
    try:
        own = tuple(b.name for b in resolve_bands(descriptions, None, descriptions=True))  # type: ignore[arg-type]
    except BandError:
        return with_sensor
    if own == with_sensor:
        return with_sensor
    families = {BANDS[n].sensor for n in with_sensor}
    if len(families) <= len({BANDS[n].sensor for n in own}):
        return with_sensor
    warnings.warn(
        f"a file describes its bands as {', '.join(own)}, which are not all bands of the "
        f"sensor {sensor.name} (read in its numbering they would be "
        f"{', '.join(with_sensor)}, bands of two sensors in one image): its own names are used; "
        "pass the sensor only for the files in its numbering, or fix the file's band "
        "descriptions",
        DescribedBandsWarning,
        stacklevel=4,
    )
    return own


#: Position, in the default names of 3 or 4 bands (red, green, blue[, NIR]), of each colour
#: interpretation that names one of them.
_COLOUR_ROLE = {"red": 0, "green": 1, "blue": 2, "nir": 3}


def _colour_order(names: tuple[str, ...], colours: Sequence[str] | None) -> tuple[str, ...] | None:
    """The default names of 3 or 4 bands (red, green, blue[, NIR]) put in the order a file's
    colour interpretation gives (blue, green, red as a BGR file declares it), or ``None`` when it
    gives no other order (the default one, or not each of red, green, blue exactly once).

    In a 4-band file, the band that is not red, green or blue is the NIR one."""
    if colours is None or len(names) not in (3, 4) or len(colours) != len(names):
        return None
    idx = [_COLOUR_ROLE.get(str(c).lower()) for c in colours]
    if len(names) == 4 and 3 not in idx and idx.count(None) == 1:
        idx[idx.index(None)] = 3
    if sorted(i for i in idx if i is not None) != list(range(len(names))) or idx == sorted(idx):
        return None
    return tuple(names[i] for i in idx)  # type: ignore[index]


def _sensors_naming(
    descriptions: Sequence[str | None], unscaled_integers: bool = False
) -> list[str]:
    """The registered sensors whose local band names resolve every description; for
    ``unscaled_integers`` (integers with no declared scale) those whose product defines the scale
    of its stored numbers come first: ``SR_B4`` is a band of landsat89 and of landsat89_sr, and
    only the second reads Collection 2's stored numbers as reflectance."""
    from msclip.spectral.bands import SENSORS

    if not all(descriptions):
        return []
    fits = []
    for name in sorted(SENSORS):
        try:
            resolve_bands(descriptions, name, descriptions=True)  # type: ignore[arg-type]
        except BandError:
            continue
        fits.append(name)
    if unscaled_integers:
        fits.sort(key=lambda n: SENSORS[n].stored_scale is None)  # stable: by name within
    return fits


#: Band descriptions that only number the bands (``band_1``, ``Band 2``, ``channel3``, ``4``).
_GENERIC_BAND = re.compile(r"^\s*(band|channel|layer)?[\s_#-]*\d+\s*$", re.IGNORECASE)


def check_dtype(path: str, dtype: Any) -> None:
    """Refuse pixel values that are not real numbers (:class:`RasterReadError`): complex values
    (SAR single-look complex data), booleans, text, dates, records. Cast to float, they would be
    read as something else without a word (a complex value loses its imaginary part)."""
    dt = np.dtype(dtype)
    if dt.kind in "uif" and dt.fields is None:
        return
    if dt.kind == "c":
        fix = "store its amplitude (abs) or intensity (abs squared) as a real-valued raster"
    elif dt.kind == "b":
        fix = "a boolean mask is not an image; store the image's values"
    else:
        fix = "store the image as integer or floating-point values"
    raise RasterReadError(
        f"{path} holds {dt} values, which are not image values msclip reads: {fix}"
    )


# TIFF field types whose value is a whole number: SHORT, LONG, LONG8 (BigTIFF)
_TIFF_WHOLE = {3: "H", 4: "I", 16: "Q"}


def tiff_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of the first image of a TIFF or BigTIFF file (GeoTIFFs, COGs), from
    its header alone: ~30 us, where opening it with GDAL takes ~1 ms. For checks of many files
    before any is read (:func:`msclip.cli.common.refuse_large_images`); ``None`` where the file
    is not a TIFF or its first directory cannot be read this way (then ask GDAL)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or len(head) < 16:
                return None
            magic = struct.unpack(order + "H", head[2:4])[0]
            if magic not in (42, 43):  # classic TIFF, BigTIFF
                return None
            big = magic == 43
            # where the first directory is; its entry count; the size of an entry and of the
            # value field that ends each entry
            (first,) = (
                struct.unpack(order + "Q", head[8:16])
                if big
                else struct.unpack(order + "I", head[4:8])
            )
            count_fmt, entry, field_size = ("Q", 20, 8) if big else ("H", 12, 4)
            f.seek(first)
            raw = f.read(struct.calcsize(count_fmt))
            n = struct.unpack(order + count_fmt, raw)[0]
            if not 0 < n <= 4096:
                return None
            table = f.read(n * entry)
    except (OSError, struct.error, ValueError):
        return None
    size: dict[int, int] = {}
    for at in range(0, min(n, len(table) // entry) * entry, entry):
        tag, kind = struct.unpack_from(order + "HH", table, at)
        if tag in (256, 257) and kind in _TIFF_WHOLE:  # ImageWidth, ImageLength
            value = struct.unpack_from(order + _TIFF_WHOLE[kind], table, at + entry - field_size)
            size[tag] = value[0]
    if 256 not in size or 257 not in size:
        return None
    return size[257], size[256]


def check_pixels(path: str, height: int, width: int, max_pixels: int | None) -> None:
    """Refuse a raster of more than ``max_pixels`` pixels (:class:`RasterTooLargeError`)."""
    if max_pixels is not None and height * width > max_pixels:
        raise RasterTooLargeError(
            f"{path} is {width}x{height} pixels, far more than one image the model reads "
            f"(at most {max_pixels} pixels here): cut it into tiles (scene mode), or read it "
            "reduced through its overviews (downsampling)"
        )


def _alpha_bands(src: Any) -> list[int]:
    """1-based indexes of the bands whose colour interpretation is alpha, but for one that its
    description names as a band (``B08``, ``nir``): data that a writer's default marked alpha
    (GDAL's for the fourth of four 8-bit bands), not a mask."""
    from rasterio.enums import ColorInterp

    interp = list(src.colorinterp)
    descriptions = list(src.descriptions or ())
    return [
        i + 1
        for i, ci in enumerate(interp[: src.count])
        if ci == ColorInterp.alpha
        and not _names_a_band(descriptions[i] if i < len(descriptions) else None)
    ]


def _names_a_band(description: str | None) -> bool:
    if not description:
        return False
    try:
        resolve_bands([description], descriptions=True)
    except (BandError, UnknownBandError):
        return False
    return True


def image_bands(src: Any) -> list[int]:
    """1-based indexes of the image bands of an open rasterio dataset: every band but an alpha
    band (colour interpretation ``alpha``), which is a mask."""
    return _without(src.count, _alpha_bands(src))


def _without(count: int, alpha: list[int]) -> list[int]:
    bands = [i for i in range(1, count + 1) if i not in alpha]
    return bands or list(range(1, count + 1))


def _file_mask(
    src: Any, alpha: list[int], first_band: int, window: Any, out_shape: tuple[int, int] | None
) -> np.ndarray | None:
    """``[h, w]`` true where the file's own mask hides the pixel: an alpha band at 0, or a
    per-dataset (internal or ``.msk``) mask; ``None`` without one. A mask GDAL derives from the
    nodata value is not used: msclip's all-bands nodata rule applies instead."""
    from rasterio.enums import MaskFlags

    kw: dict[str, Any] = {} if out_shape is None else {"out_shape": out_shape}
    alpha = [b for b in alpha if b != first_band]
    if alpha:
        values = np.asarray(src.read(alpha[0], window=window, **kw))
        _check_alpha(values, alpha[0])
        return values == 0
    flags = src.mask_flag_enums[first_band - 1]
    # (a mask GDAL makes of an alpha band is the alpha band's: none when it is a named band)
    if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        return np.asarray(src.read_masks(first_band, window=window, **kw)) == 0
    return None


def _check_alpha(values: np.ndarray, band: int) -> None:
    """Warn when an alpha band holds values other than "hidden" (0) and "shown" (the type's
    largest value), as a data band does: GDAL marks the fourth of four 8-bit bands alpha by
    default, so a NAIP-style red, green, blue, NIR file written without band descriptions loses
    its NIR band to a mask. It is still read as a mask (a partly transparent alpha is one too);
    the warning says how to make it a band."""
    top = np.iinfo(values.dtype).max if values.dtype.kind in "iu" else 1.0
    if values.size and ((values != 0) & (values != top)).mean() > 0.5:
        warnings.warn(
            f"band {band} is marked alpha (a transparency mask) but most of its values are "
            f"neither 0 nor {top}, as in a data band: it is read as a mask, its zeros hiding "
            "pixels, not as a band; if it is a band (the NIR of a 4-band 8-bit file, which GDAL "
            "marks alpha by default), describe the file's bands (e.g. red, green, blue, nir) or "
            f"set its colour interpretation to undefined (gdal_edit.py -colorinterp_{band} "
            "undefined)",
            AlphaBandWarning,
            stacklevel=4,
        )


def _free_value(data: np.ndarray, invalid: np.ndarray) -> float | None:
    """An integer value that no valid pixel holds in every band (so it can mark the invalid
    ones by the all-bands nodata rule), or ``None`` when none of the candidates is free."""
    info = np.iinfo(data.dtype)
    uniform = (data == data[:1]).all(axis=0) & ~invalid
    used = set(np.unique(data[0][uniform]).tolist()) if uniform.any() else set()
    candidates = [info.max, info.min, 0]
    candidates += [v for k in range(1, 256) for v in (info.max - k, info.min + k)]
    for v in candidates:
        if v not in used:
            return float(v)
    return None


def declares_scale(src: Any, sensor: str | None = None, names: Sequence[str] | None = None) -> bool:
    """Whether an open dataset's values are read rescaled (as float32 with NaN for missing
    pixels: see the module docstring): it declares a band scale or offset on an image band, or
    its integer values are read as a ``sensor`` whose product defines one (``names``: its
    bands' names, see :func:`product_scale`)."""
    image = image_bands(src)
    if _declared_scale(src, image) is not None:
        return True
    integer = np.dtype(src.dtypes[image[0] - 1]).kind in "iu"
    return integer and product_scale(sensor, names) is not None


def product_scale(
    sensor: str | None, names: Sequence[str] | None = None
) -> tuple[float, float, float] | None:
    """The ``sensor``'s product scale (:func:`msclip.spectral.bands.stored_scale`) for a file
    whose bands are ``names``, or ``None`` when none of them is a band of the sensor: a file that
    names its bands as another sensor's (a Sentinel-2 file in a folder read with
    ``landsat89_sr``) keeps its own values. ``names`` ``None``: the sensor's scale."""
    from msclip.spectral.bands import stored_scale

    scale = stored_scale(sensor)
    if scale is None or names is None:
        return scale
    own = set(get_sensor(sensor).bands)  # type: ignore[arg-type]
    return scale if any(n in own for n in names) else None


def _declared_scale(src: Any, bands: list[int]) -> tuple[list[float], list[float]] | None:
    """``(scales, offsets)`` of ``bands`` when one of them is not ``(1, 0)``, else ``None``."""
    scale = [float(src.scales[b - 1]) for b in bands]
    offset = [float(src.offsets[b - 1]) for b in bands]
    return (scale, offset) if any(a != 1.0 or b != 0.0 for a, b in zip(scale, offset)) else None


#: A band scale at most this declares reflectance (0-1); larger ones keep the stored unit.
_REFLECTANCE_SCALE = 1e-2


#: Centre wavelength (um) beyond which a band measures emitted heat, not reflectance.
_THERMAL_UM = 3.0


def thermal_bands(names: Sequence[Any]) -> list[bool]:
    """Whether each band (a canonical name or a :class:`~msclip.spectral.bands.Band`) is a
    thermal band (centre beyond :data:`_THERMAL_UM`): a declared scale keeps its unit there."""
    from msclip.spectral.bands import BANDS

    out = []
    for n in names:
        band = BANDS.get(n if isinstance(n, str) else str(getattr(n, "name", n)))
        out.append(band is not None and band.center > _THERMAL_UM)
    return out


def _rescaled(
    data: np.ndarray,
    nodata: float | None,
    invalid: np.ndarray | None,
    scale: Sequence[float],
    offset: Sequence[float],
    thermal: Sequence[bool] | None = None,
) -> np.ndarray:
    """Float32 values in the reflectance models' unit (reflectance x 10000), missing pixels NaN.
    ``thermal`` bands (emitted, not reflected, radiation: Landsat ST_B10 declares 0.00341802
    kelvin per digital number) are taken in the declared unit whatever their scale.

    A band at the stored ``nodata`` value is NaN in that band alone (filled with the band's mean
    by the preprocessing) where the band's scale and offset make that value negative: it is then
    no measurement, as the offset stores a zero reflectance above it (Sentinel-2 L2A of
    processing baseline 04.00+: 0 would read -0.1 reflectance, Landsat Collection 2: -0.2, HLS's
    -9999: -0.9999), while the bands beside it hold data (the band files of one product do not
    end at the same pixel at a swath's edge). Elsewhere one band at ``nodata`` beside bands with
    data is a measurement (:mod:`msclip.spectral.nodata`)."""
    gone = missing_pixels(data, nodata)
    if invalid is not None:
        gone |= invalid
    hot = list(thermal) if thermal is not None else [False] * len(scale)
    unit = [10000.0 if 0 < abs(a) <= _REFLECTANCE_SCALE and not h else 1.0
            for a, h in zip(scale, hot)]  # fmt: skip
    a = np.asarray([s * u for s, u in zip(scale, unit)], np.float32)[:, None, None]
    b = np.asarray([o * u for o, u in zip(offset, unit)], np.float32)[:, None, None]
    out = data.astype(np.float32) * a + b
    if nodata is not None and not np.isnan(nodata):
        for c, (s_, o_) in enumerate(zip(scale, offset)):
            if s_ * nodata + o_ < 0:
                out[c][data[c] == nodata] = np.nan
    out[:, gone] = np.nan
    logger.debug("values rescaled by the file's scale %s and offset %s (x %s)", scale, offset, unit)
    return out


def read_image(
    src: Any,
    window: Any = None,
    *,
    out_shape: tuple[int, int] | None = None,
    resampling: Any = None,
    nodata: float | None = None,
    promote: bool = False,
    scaled: bool = True,
    default_scale: tuple[float, ...] | None = None,
    thermal: Sequence[bool] | None = None,
) -> tuple[np.ndarray, float | None]:
    """The image bands of an open rasterio dataset, with the pixels its mask marks invalid set
    missing; returns ``(data [C, h, w], nodata)``.

    Args:
        src: an open dataset.
        window: a rasterio window (default: the whole raster).
        out_shape: ``(h, w)`` of a decimated read.
        resampling: rasterio resampling of a decimated read.
        nodata: the value marking missing pixels (default: the file's).
        promote: integer data without a nodata value whose mask hides pixels is returned as
            float32 with NaN there (instead of marked with a free integer value).
        scaled: apply the file's band scale and offset (see the module docstring).
        default_scale: ``(scale, offset[, fill])`` of every image band of integer data when the file
            declares none (a sensor's :attr:`~msclip.spectral.bands.Sensor.stored_scale`: the
            product's stored digital numbers); applied as a declared one is, except to the
            ``thermal`` bands, whose product scale is another (Landsat's ST_B10: kelvin): they
            keep their stored values, as in a stack of band files
            (:func:`msclip.io.vrt.stack_band_files`).
        thermal: per image band, whether it is a thermal band (a declared scale then keeps its
            unit, kelvin, instead of declaring reflectance); by default none is.
    """
    alpha = _alpha_bands(src)  # the colour interpretation is read once per call
    bands = _without(src.count, alpha)
    shape = None if out_shape is None else (len(bands), *out_shape)
    kw: dict[str, Any] = {} if resampling is None else {"resampling": resampling}
    data = src.read(bands, window=window, out_shape=shape, **kw)
    nodata = src.nodata if nodata is None else nodata
    invalid = _file_mask(src, alpha, bands[0], window, out_shape)
    declared = _declared_scale(src, bands) if scaled else None
    if declared is None and scaled and default_scale is not None and data.dtype.kind in "iu":
        hot = list(thermal) if thermal is not None else [False] * len(bands)
        scales, offsets, nodata = _product_scaling(default_scale, hot, nodata)
        declared = (scales, offsets)
    if declared is not None:
        return _rescaled(data, nodata, invalid, *declared, thermal=thermal), None
    if invalid is None or not invalid.any():
        return data, nodata
    return _mark_missing(data, invalid, nodata, promote)


# one file opened at a time under open_raster's warning filter (see there)
_OPENING = threading.Lock()


@contextlib.contextmanager
def open_raster(path: str | os.PathLike) -> Iterator[Any]:
    """``rasterio.open(path)`` for reading, without rasterio's warning about a file that has no
    georeference: it is read as pixels (``crs`` None), and the programs that need a CRS say so in
    their own words, not rasterio for every tile.

    rasterio gives that warning while opening the file; the filter is set for the opening alone,
    under a lock: ``warnings.catch_warnings`` changes process-wide state, and files are opened by
    several threads at once (:func:`msclip.encode.read_items`).

    Raises:
        rasterio.errors.RasterioIOError: the file cannot be opened.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with _OPENING, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(path)
    with src:
        yield src


# a band token in a file name: B2, B02, B8A, B11 between separators (Sentinel-2, Landsat, HLS)
_BAND_TOKEN = re.compile(r"(?:^|[_\-.])(B\d{1,2}A?)(?=[_\-.]|$)", re.IGNORECASE)
# products whose file names number the bands their own way: HLS L30 (B05 is Landsat's NIR) and
# S30, and Landsat Collection 2 (LC09_L2SP_..._SR_B5.TIF: OLI's NIR, not Sentinel-2's B05)
_HLS_NAME = re.compile(r"^HLS\.([LS])30\.", re.IGNORECASE)
_LANDSAT_NAME = re.compile(r"^L([COTEM])(\d{2})_", re.IGNORECASE)
# Collection 2 Level-2 products: their SR_B* files and the ST_B10 and QA files beside them
_SURFACE_REFLECTANCE = re.compile(r"_SR_B\d|^L[CO]\d{2}_L2S[PR]_", re.IGNORECASE)


def band_from_file_name(path: str) -> str | None:
    """The band token of a band file's name (the last one: tile ids come first), or ``None``."""
    found = _BAND_TOKEN.findall(Path(path).stem)
    return found[-1] if found else None


def sensor_from_file_name(path: str) -> str | None:
    """The sensor whose band numbers a product's file name uses, when it is not Sentinel-2's:
    ``hls_l30``, ``hls_s30``, ``landsat89_sr`` (a Collection 2 Level-2 product, ``_L2SP_``, whose
    surface-reflectance files are ``_SR_B5``, its thermal band ``_ST_B10``) or
    ``landsat89`` (Landsat 8/9 Level-1); ``None`` for other names.

    Raises:
        BandError: a Landsat 4-7 file (TM, ETM+, MSS), whose band numbers msclip does not know.
    """
    name = Path(path).name
    hls = _HLS_NAME.match(name)
    if hls is not None:
        return "hls_l30" if hls.group(1).upper() == "L" else "hls_s30"
    landsat = _LANDSAT_NAME.match(name)
    if landsat is None:
        return None
    if landsat.group(1).upper() in "CO" and landsat.group(2) in ("08", "09"):
        return "landsat89_sr" if _SURFACE_REFLECTANCE.search(name) else "landsat89"
    raise BandError(
        f"{path} is a Landsat {int(landsat.group(2))} file, whose band numbers are not "
        "Sentinel-2's nor Landsat 8/9's; name the files' bands (bands=['B02', 'B03', ...], the "
        "Sentinel-2 band of each)",
        param="bands",
    )


def _refuse_landsat_as_sentinel2(
    declared: tuple[list[float], list[float]] | None, names: Sequence[str], where: str
) -> None:
    """Refuse Sentinel-2 band names (``B1`` ... ``B7`` read as B01 ... B07, or the band count's
    default) on a file that declares Landsat Collection 2's surface-reflectance scale
    (2.75e-5, -0.2), which no other product uses: its B5 is OLI's near-infrared, not the red
    edge B05 (:class:`BandError`); ``declared``: the file's :func:`_declared_scale`."""
    from msclip.spectral.bands import S2_L1C_BANDS, get_sensor

    scale, offset, _ = get_sensor("landsat89_sr").stored_scale  # type: ignore[misc]
    if declared is None or not any(n in S2_L1C_BANDS for n in names):
        return
    if np.allclose(declared[0], scale, rtol=1e-6) and np.allclose(declared[1], offset, rtol=1e-6):
        raise BandError(
            f"{where} declares Landsat Collection 2's surface-reflectance scale ({scale}, "
            f"{offset}) but its bands are read as Sentinel-2's {list(names)}, whose B05 is a red "
            "edge band, not Landsat's near-infrared: pass --sensor landsat89_sr (or hls_l30 for "
            "HLS L30), or name the bands",
            param="sensor",
        )


def _vrt_band_names(path: str, image: list[int], sensor: str | None) -> list[str] | None:
    """Canonical names of a VRT's undescribed ``image`` bands from the names of the band files
    they read (what ``gdalbuildvrt -separate`` writes: ``T32TQM_B8A_20m.jp2`` holds ``B8A``, in
    the order the files were given, often sorted with B11 and B12 before B8A), the numbering of
    ``sensor`` or of the product the file names show (as :func:`msclip.io.vrt.stack_band_files`
    names them); ``None`` when a band reads no file, several, another band than a file's first,
    or a file without a band in its name."""
    import xml.etree.ElementTree as ET

    from msclip.spectral.bands import resolve_band

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    files: dict[int, set[str]] = {}
    for band in root.iter("VRTRasterBand"):
        if any((e.text or "").strip() != "1" for e in band.iter("SourceBand")):
            return None  # a band of a multi-band file: its file name names no band
        sources = {Path(e.text.strip()).name for e in band.iter("SourceFilename") if e.text}
        files[int(band.get("band", "0"))] = sources
    picked = [files.get(i, set()) for i in image]
    if not all(len(f) == 1 for f in picked):
        return None
    names = [next(iter(f)) for f in picked]
    tokens = [band_from_file_name(n) for n in names]
    if not all(tokens):
        return None
    kinds = {sensor_from_file_name(n) for n in names} if sensor is None else {sensor}
    if len(kinds) != 1:
        return None
    try:
        return [resolve_band(t, next(iter(kinds))).name for t in tokens]  # type: ignore[arg-type]
    except BandError:
        return None


def _inside_window(window: Any, width: int, height: int, where: str) -> Any:
    """``window`` in whole pixels (offsets and sizes rounded to the nearest, as GDAL reads a
    fractional window) and cut to the raster: the part of a window from ``from_bounds`` that
    reaches past an edge holds no pixels, and the georeference must be that of what is read.

    Raises:
        RasterReadError: the window and the raster share no pixel, or is not a window.
    """
    from rasterio.windows import Window

    if not isinstance(window, Window):  # rasterio's ((row_start, row_stop), (col_start, col_stop))
        try:
            (r0, r1), (c0, c1) = window
            window = Window.from_slices((int(r0), int(r1)), (int(c0), int(c1)))
        except (TypeError, ValueError) as err:
            raise RasterReadError(
                f"{where}: window={window!r} is not a window; give a rasterio Window(col_off, "
                "row_off, width, height) or ((row_start, row_stop), (col_start, col_stop))"
            ) from err
    col, row = round(float(window.col_off)), round(float(window.row_off))
    right = col + round(float(window.width))
    bottom = row + round(float(window.height))
    w = min(right, width) - max(col, 0)
    h = min(bottom, height) - max(row, 0)
    if w <= 0 or h <= 0:
        raise RasterReadError(
            f"{where}: the window (columns {col} to {right}, rows {row} to {bottom}) lies outside "
            f"the raster's {width}x{height} pixels; give a window that overlaps it"
        )
    return Window(max(col, 0), max(row, 0), w, h)


def _name_bands(
    src: Any, path: str, kind: str, bands: Sequence[str | Band] | None, sensor: str | None
) -> tuple[list[int], tuple[str, ...], str]:
    """The image bands of an open GDAL raster, their names and where the names came from, from
    its header alone (no pixel is decoded)."""
    image = image_bands(src)
    check_dtype(path, src.dtypes[image[0] - 1])
    descriptions = [src.descriptions[i - 1] for i in image]
    colours = [src.colorinterp[i - 1].name for i in image]
    declared = _declared_scale(src, image)
    unscaled = np.dtype(src.dtypes[image[0] - 1]).kind in "iu" and declared is None
    from_files = None
    if kind == "VRT" and bands is None and not any(descriptions):
        from_files = _vrt_band_names(path, image, sensor)
    names, source = _assign_bands(
        len(image), descriptions, from_files or bands, sensor, f"{kind} {path}", colours,
        unscaled_integers=unscaled,
    )  # fmt: skip
    if from_files is not None:
        source = "file names"
    if sensor is None and source in ("descriptions", "count"):
        _refuse_landsat_as_sentinel2(declared, names, f"{kind} {path}")
    return image, names, source


def raster_band_names(
    path: str | os.PathLike,
    bands: Sequence[str | Band] | None = None,
    sensor: str | None = None,
    src: Any = None,
) -> tuple[str, ...]:
    """The band names :func:`read_raster` gives the image bands of a GDAL raster (GeoTIFF, COG,
    JPEG 2000, VRT), from its header alone: no pixel is decoded, so a damaged block does not
    stop it, and a large scene costs nothing to name. ``src``: the file already open (rasterio
    dataset), which is then not opened again.

    Raises:
        RasterReadError: the file cannot be opened.
        BandError: its bands cannot be named (pass ``bands=`` or ``sensor=``).
    """
    from rasterio.errors import RasterioIOError

    p = os.fspath(Path(path).expanduser())
    kind = raster_format(p)
    if src is not None:
        return _name_bands(src, p, kind, bands, sensor)[1]
    try:
        with open_raster(p) as src:
            return _name_bands(src, p, kind, bands, sensor)[1]
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read {kind} {p}: {gdal_reason(err)}") from err


def _read_geotiff(
    path: str,
    bands: Sequence[str | Band] | None,
    sensor: str | None,
    window: Any,
    max_pixels: int | None = None,
    shorter_side: int | None = None,
    nodata: float | None = None,
) -> Raster:
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError

    kind = raster_format(path)
    try:
        with open_raster(path) as src:
            image, names, source = _name_bands(src, path, kind, bands, sensor)
            if window is not None:
                window = _inside_window(window, src.width, src.height, f"{kind} {path}")
            h = int(window.height) if window is not None else src.height
            w = int(window.width) if window is not None else src.width
            out_shape = _reduced_shape(h, w, shorter_side)  # GDAL reads overviews if any
            if out_shape is None:
                check_pixels(path, h, w, max_pixels)
            try:
                data, nodata = read_image(
                    src, window, out_shape=out_shape,
                    resampling=Resampling.average if out_shape else Resampling.nearest,
                    nodata=nodata, default_scale=product_scale(sensor, names),
                    thermal=thermal_bands(names),
                )  # fmt: skip
            except MemoryError:
                rows, cols = out_shape or (h, w)
                raise RasterTooLargeError(
                    f"{path} is {w}x{h} pixels in {len(image)} bands: reading "
                    f"{cols}x{rows} of them at once does not fit in memory; cut it into tiles "
                    "(scene mode), or read it reduced (shorter_side=..., --downsample)"
                ) from None
            transform = src.transform
            if window is not None:
                transform = transform @ Affine.translation(window.col_off, window.row_off)
            if out_shape is not None:
                transform = transform @ Affine.scale(w / out_shape[1], h / out_shape[0])
            crs = src.crs
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read {kind} {path}: {gdal_reason(err)}") from err
    if data.size == 0:
        raise RasterReadError(f"{kind} {path} holds no pixels (shape {data.shape})")
    has_geo = crs is not None
    meta = {"window": window, "downsampled_from": (h, w) if out_shape else None}
    return Raster(
        data, names, nodata, crs if has_geo else None, transform if has_geo else None, path,
        source, meta,
    )  # fmt: skip


def _read_numpy(
    path: str,
    bands: Sequence[str | Band] | None,
    sensor: str | None,
    layout: str | None,
    max_pixels: int | None = None,
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
                check_dtype(path, array.dtype)
                if "layout" in keys:
                    meta_layout = str(npz["layout"])
                if "bands" in keys:
                    descriptions = [str(b) for b in npz["bands"].tolist()]
                if "nodata" in keys:
                    nodata = float(npz["nodata"])
        else:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
            check_dtype(path, array.dtype)
            if max_pixels is not None and array.ndim == 3:
                # bands are the shortest end axis: the other two are height and width
                hw = array.shape[1:] if array.shape[0] <= array.shape[-1] else array.shape[:2]
                check_pixels(path, int(hw[0]), int(hw[1]), max_pixels)
            elif max_pixels is not None and array.ndim == 2:
                check_pixels(path, *array.shape, max_pixels)
            array = np.array(array)
    except RasterReadError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if "pickle" in str(err) or "Python objects" in str(err):
            # never unpickled: loading a pickle runs whatever code the file holds
            what = (
                "an array of Python objects"
                if "object" in str(err).lower() and "pickled (object)" not in str(err)
                else "no NumPy array header (a pickle or another format)"
            )
            raise RasterReadError(
                f"{path} holds {what}; msclip never unpickles files (that runs code from the "
                "file): save the image as a numeric array (np.save(path, array.astype(np.float32)))"
            ) from err
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


def _product_scaled(raster: Raster, sensor: str | None) -> Raster:
    """An array file of integers read as a sensor whose product defines a scale (Landsat
    Collection 2 surface reflectance: ``x 2.75e-5 - 0.2``), read with it as a GeoTIFF that
    declares none is (:func:`read_image`; an array file declares no scale): float32 in
    reflectance x 10000, thermal bands as stored, missing pixels (at the array's ``nodata``,
    else at the product's fill value) NaN."""
    data = raster.data
    scale = product_scale(sensor, raster.bands)
    if scale is None or data.dtype.kind not in "iu":
        return raster
    hot = thermal_bands(raster.bands)
    scales, offsets, nodata = _product_scaling(scale, hot, raster.nodata)
    out = _rescaled(data, nodata, None, scales, offsets, thermal=hot)
    return replace(raster, data=out, nodata=None)


def _product_scaling(
    scale: Sequence[float], thermal: Sequence[bool], nodata: float | None
) -> tuple[list[float], list[float], float | None]:
    """A product's ``(scale, offset[, fill value])`` as the scale and offset of each band (the
    ``thermal`` bands keep their stored values: 1 and 0) and the nodata value: ``nodata``, else
    the product's fill value, for a file that names none."""
    scales = [1.0 if h else float(scale[0]) for h in thermal]
    offsets = [0.0 if h else float(scale[1]) for h in thermal]
    if nodata is None and len(scale) > 2:
        nodata = scale[2]
    return scales, offsets, nodata


def _reduced_shape(h: int, w: int, shorter_side: int | None) -> tuple[int, int] | None:
    """The shape of a raster read reduced so that its shorter side is ``shorter_side``, or
    ``None`` when it is not larger than that."""
    if shorter_side is None or min(h, w) <= shorter_side:
        return None
    scale = shorter_side / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _area_reduce(
    arr: np.ndarray, shape: tuple[int, int], invalid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``[C, H, W]`` pixels averaged over the areas that make up each pixel of ``shape``,
    leaving out ``invalid`` ones (as GDAL's average resampling leaves out nodata); integers are
    rounded back to their type. Returns the pixels and where no valid pixel contributed."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    valid = (
        torch.ones((1, 1, *arr.shape[1:]), dtype=torch.float32)
        if invalid is None
        else torch.from_numpy(~invalid).to(torch.float32)[None, None]
    )
    weight = F.adaptive_avg_pool2d(valid, shape)
    total = F.adaptive_avg_pool2d(x * valid, shape)
    out = (total / weight.clamp_min(1e-12))[0].numpy()
    empty = weight[0, 0].numpy() == 0
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(arr.dtype), (empty if invalid is not None and empty.any() else None)


def _read_picture(
    path: str,
    bands: Sequence[str | Band] | None,
    sensor: str | None,
    max_pixels: int | None,
    nodata: float | None = None,
    shorter_side: int | None = None,
) -> Raster:
    """PNG / JPEG at their true depth and band count: 8- or 16-bit, greyscale (one band), RGB;
    a palette is expanded to RGB; turned upright by the EXIF orientation a camera records (as
    every image viewer shows it). An alpha channel (or a palette's or colour key's transparency)
    is not a band: when it only says transparent or opaque (0 or its full value), its
    transparent pixels are missing ones (:func:`_alpha_mask`), set to ``nodata`` (else a value no
    opaque pixel holds, else NaN) as a GeoTIFF's masked pixels are; any other alpha is dropped.

    With ``shorter_side``, a larger picture is reduced to it by area averaging that leaves out
    the missing pixels (a JPEG is first decoded at the smallest of its 1/2, 1/4, 1/8 scales that
    is still larger), and ``max_pixels`` does not apply."""
    from PIL import Image, UnidentifiedImageError

    alpha = None
    reduced = None
    try:
        with Image.open(path) as img:
            original = (img.height, img.width)
            reduced = _reduced_shape(*original, shorter_side)
            if reduced is None:
                check_pixels(path, img.height, img.width, max_pixels)
            elif img.format == "JPEG":
                # decode at a reduced DCT scale no smaller than the target (either orientation)
                side = max(reduced)
                img.draft(img.mode, (side, side))
            mode = img.mode
            orientation = _exif_orientation(img)
            depth, colour = _png_header(path) if img.format == "PNG" else (8, -1)
            if depth == 16 and colour in (2, 4, 6):
                # 16-bit RGB, RGBA and grey + alpha: Pillow reduces these to 8 bits, GDAL does not
                arr, alpha = _read_png16(path, grey=colour == 4, alpha=colour in (4, 6))
            elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(img, dtype=np.uint16)[None]
            elif mode == "I":
                arr = np.asarray(img, dtype=np.int32)[None]
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float32)[None]
            elif mode in ("L", "1"):
                arr = np.asarray(img.convert("L"))[None]
            else:  # RGB, RGBA, LA, P (palette), CMYK, YCbCr ...: 8-bit RGB
                arr = np.moveaxis(np.asarray(img.convert("RGB")), -1, 0)
            if alpha is None and ("A" in img.getbands() or "transparency" in img.info):
                with contextlib.suppress(ValueError):  # a mode Pillow cannot give an alpha of
                    alpha = np.asarray(img.convert("RGBA").getchannel("A"))
    except Image.DecompressionBombError as err:
        raise too_large_picture(path, err) from err
    except (UnidentifiedImageError, OSError) as err:
        raise RasterReadError(f"cannot read image {path}: {err}") from err
    arr = _upright(arr, orientation)
    invalid = _alpha_mask(alpha)
    if invalid is not None:
        invalid = _upright(invalid[None], orientation)[0]
    meta: dict[str, Any] = {"layout": "HWC", "mode": mode}
    if reduced is not None:
        if orientation in (5, 6, 7, 8):
            reduced, original = reduced[::-1], original[::-1]
        arr, invalid = _area_reduce(arr, reduced, invalid)
        meta["downsampled_from"] = original
    if invalid is not None:
        arr, nodata = _mark_missing(np.array(arr), invalid, nodata)
    names, source = _assign_bands(arr.shape[0], [], bands, sensor, path)
    return Raster(np.ascontiguousarray(arr), names, nodata, path=path, band_source=source,
                  meta=meta)  # fmt: skip


def _alpha_mask(alpha: np.ndarray | None) -> np.ndarray | None:
    """``[H, W]`` true where an alpha channel marks a pixel missing, or ``None``.

    Only an alpha that is a mask counts: every value 0 (transparent) or the full value (opaque),
    with some 0. An alpha of other values (soft edges, or data kept in the channel: METER-ML
    stores near-infrared there) says nothing of which pixels are missing and is dropped."""
    if alpha is None or not np.issubdtype(alpha.dtype, np.integer):
        return None
    zero = alpha == 0
    if not zero.any() or not (zero | (alpha == np.iinfo(alpha.dtype).max)).all():
        return None
    return zero


def _mark_missing(
    data: np.ndarray, invalid: np.ndarray, nodata: float | None, promote: bool = False
) -> tuple[np.ndarray, float | None]:
    """``data`` with its ``invalid`` pixels set missing in every band, and the value that marks
    them: ``nodata`` when given and ``data``'s type holds it exactly; else, for integers, a value
    no valid pixel holds (unless ``promote``); else NaN (integers promoted to float32; ``None``
    returned). A ``nodata`` the type cannot hold (-9999 or 0.5 for 16-bit unsigned pixels) is no
    stored value of ``data``, so the marking value replaces it."""
    if nodata is not None and _holds(data.dtype, nodata):
        data[:, invalid] = nodata
        return data, nodata
    if not np.issubdtype(data.dtype, np.floating):
        free = None if promote else _free_value(data, invalid)
        if free is not None:
            data[:, invalid] = free
            return data, free
        data = data.astype(np.float32)
    data[:, invalid] = np.nan
    return data, None


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether pixels of ``dtype`` can store ``value`` (NaN: never; floats: as the nearest value
    of their type, as a file of that type stores its nodata value and the missing-pixel rule
    compares it; integers: exactly)."""
    if np.isnan(value):
        return False
    if np.issubdtype(dtype, np.floating):
        with np.errstate(over="ignore"):
            return bool(np.isfinite(dtype.type(value)))
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def too_large_picture(path: str, err: BaseException) -> RasterTooLargeError:
    """The refusal of a picture Pillow will not open (more than twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels: its ``DecompressionBombError``, ``err``)."""
    return RasterTooLargeError(
        f"{path} has more pixels than a picture is opened with ({err}): convert it to a "
        "GeoTIFF (gdal_translate) and cut it into tiles (scene mode), or reduce it"
    )


def _png_header(path: str) -> tuple[int, int]:
    """``(bit depth, colour type)`` of a PNG's IHDR chunk (colour type 0 grey, 2 RGB,
    3 palette, 4 grey + alpha, 6 RGBA); ``(8, -1)`` when it cannot be read."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[12:16] != b"IHDR":
        return 8, -1
    return head[24], head[25]


def _exif_orientation(img: Any) -> int:
    """The EXIF orientation tag (1-8) of an open picture; 1 (upright) when it has none."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except (ValueError, TypeError, OSError, SyntaxError):  # a damaged EXIF block: as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``[C, H, W]`` pixels as stored, turned as their EXIF ``orientation`` says they are
    shown (the TIFF/EXIF orientation values; Pillow's ``ImageOps.exif_transpose``)."""
    if orientation in (5, 6, 7, 8):
        arr = np.swapaxes(arr, 1, 2)  # rows become columns
    flip_rows = orientation in (3, 4, 7, 8)
    flip_cols = orientation in (2, 3, 6, 7)
    if flip_rows:
        arr = arr[:, ::-1]
    if flip_cols:
        arr = arr[:, :, ::-1]
    return arr


def gdal_reason(err: BaseException) -> str:
    """The message of a rasterio read error with GDAL's own cause: rasterio's text is often
    "Read failed. See previous exception for details.", the previous exception being chained."""
    parts: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip()
        if text and "See previous exception" not in text and not any(text in q for q in parts):
            parts.append(text)
        e = e.__cause__ or e.__context__
    return "; ".join(parts[:2]) if parts else (str(err) or type(err).__name__)


def _read_png16(
    path: str, grey: bool = False, alpha: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """A 16-bit RGB(A) PNG as ``[3, H, W]`` uint16; a 16-bit grey + alpha one (``grey``) as its
    grey band taken as red, green and blue, as an 8-bit one is; with its alpha band (``alpha``:
    the last one) as ``[H, W]`` beside, else ``None``. Pillow reduces these to 8 bits; GDAL does
    not."""
    from rasterio.errors import RasterioIOError

    try:
        with open_raster(path) as src:
            data = src.read([1, 1, 1] if grey else [1, 2, 3])
            mask = src.read(src.count) if alpha else None
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read 16-bit PNG {path}: {gdal_reason(err)}") from err
    if mask is not None:
        mask = mask.astype(np.uint16, copy=False)
    return data.astype(np.uint16, copy=False), mask


def read_raster(
    path: str | os.PathLike,
    bands: Sequence[str | Band] | None = None,
    layout: str | None = None,
    sensor: str | None = None,
    window: Any = None,
    max_pixels: int | None = None,
    shorter_side: int | None = None,
    nodata: float | None = None,
) -> Raster:
    """Read an image file with its band names.

    Args:
        path: ``.tif``/``.tiff`` (GeoTIFF, COG), ``.jp2`` (JPEG 2000), ``.vrt`` (a GDAL virtual
            raster: e.g. a product's band files stacked), ``.npy``/``.npz``,
            ``.png``/``.jpg``/``.jpeg``.
        bands: band names of the file's channels, when the file does not name them.
        layout: ``CHW`` or ``HWC`` for arrays whose layout cannot be known from the file.
        sensor: sensor whose local band names apply (``hls_l30``, ``landsat89`` ...).
        window: ``rasterio.windows.Window`` (or rasterio's ``((row_start, row_stop),
            (col_start, col_stop))``) to read part of a GDAL raster, in whole pixels
            (fractional offsets and sizes are rounded to the nearest); a window reaching past the
            raster's edges reads the part inside them, with that part's georeference (the
            ``window`` of :attr:`Raster.meta`).
        max_pixels: refuse (before reading the pixels) a raster with more pixels than this.
        shorter_side: read a GeoTIFF (or its window) or a PNG/JPEG picture reduced so that
            its shorter side has this many pixels when it is larger (average resampling, through
            a GeoTIFF's overviews when it has them); ``max_pixels`` then does not apply.
        nodata: the value of missing pixels as the file stores them, instead of the file's own
            (e.g. 0 for L2A files that declare none). A GeoTIFF read rescaled (a declared band
            scale or offset) compares it with its stored values and marks those pixels NaN.

    Raises:
        RasterReadError: missing, empty or corrupt file, or one whose values are not real
            numbers (complex, boolean, text, records; pickled objects are never loaded).
        RasterTooLargeError: more than ``max_pixels`` pixels.
        UnsupportedFormatError: unknown extension.
        BandError: band names cannot be determined or do not fit the file.
        LayoutError: array layout cannot be determined.
        TypeError: ``path`` is not a file path (an array or tensor goes to the model's
            preprocessing, ``model.preprocess()(array)``, instead).
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        hint = (
            "; an array or tensor is not read from a file: give it to the model's preprocessing, "
            "model.preprocess(input_bands=[...])(array)"
            if hasattr(path, "shape")
            else ""
        )
        raise ImageTypeError(
            f"path must be the path of an image file (str or os.PathLike), got "
            f"{type(path).__name__}{hint}"
        )
    p = os.fsdecode(os.fspath(path))
    if not os.path.exists(p):
        hint = (
            " (a pattern is expanded where images are given, not inside a list of paths; in "
            f"Python, msclip.io.list_images([{p!r}]) lists the files it matches)"
            if any(ch in os.path.basename(p) for ch in "*?[")
            else ""
        )
        if os.path.islink(p):  # the link is there, what it names is not (moved, unmounted)
            hint = f" (a symbolic link to {os.readlink(p)}, which does not exist)"
        raise RasterReadError(f"image file not found: {p}{hint}")
    if os.path.isdir(p):
        raise RasterReadError(
            f"{p} is a folder, not an image file; give the folder itself where images are given "
            f"(a list of paths names files; in Python, msclip.io.list_images([{p!r}]) lists its "
            "images)"
        )
    if os.path.isfile(p) and os.path.getsize(p) == 0:
        raise RasterReadError(f"image file is empty (0 bytes): {p}")
    ext = Path(p).suffix.lower()
    if ext in RASTER_EXTENSIONS:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            # GDAL opens UTF-8 paths only: a name in another encoding (Latin-1 bytes) cannot be
            # given to it in any form
            shown = p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise RasterReadError(
                f"{shown}: the file's name is not UTF-8 text, and GDAL cannot open such a "
                f"{raster_format(p)}; rename it (e.g. convmv -f latin1 -t utf8 --notest)"
            ) from None
        return _read_geotiff(p, bands, sensor, window, max_pixels, shorter_side, nodata)
    if ext in NUMPY_EXTENSIONS:
        raster = _read_numpy(p, bands, sensor, layout, max_pixels)
        return _product_scaled(raster if nodata is None else replace(raster, nodata=nodata), sensor)
    if ext in PICTURE_EXTENSIONS:
        # ``nodata`` applied there, with the picture's alpha mask (which keeps its pixels missing
        # under any ``nodata``)
        return _read_picture(p, bands, sensor, max_pixels, nodata, shorter_side)
    raise UnsupportedFormatError(
        f"unsupported image format {ext!r} ({p}); supported: {', '.join(IMAGE_EXTENSIONS)}"
    )
