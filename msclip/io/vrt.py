"""One image from a product's band files: a GDAL virtual raster (VRT) that stacks them.

Sentinel-2 SAFE products keep each band in its own JPEG 2000 file (10, 20 and 60 m), and cloud
archives keep one COG per band; msclip reads an image as one raster whose bands it can name.
:func:`stack_band_files` writes the small XML file that GDAL reads as that raster (what
``gdalbuildvrt -separate -resolution highest`` writes, for users whose rasterio came without
GDAL's command-line tools): one band per file, on the finest grid among them, each coarser band
resampled by GDAL as it is read, and each band described by its canonical msclip name (from
``bands=`` or from the file names: ``T32TQM_20240101T102021_B8A_20m.jp2`` holds ``B8A``), so
that :func:`msclip.io.read_raster` and every program read it with its bands named.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple
from xml.sax.saxutils import escape

import numpy as np

from msclip.errors import BandError, RasterReadError

__all__ = ["stack_band_files"]

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}  # fmt: skip
_RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")

# the tile (or path/row) and acquisition that a product's band file names carry: SAFE band files
# (T32TQM_20240601T102021_B02_10m.jp2), older Earth Search COGs (S2B_32TQM_20240101_0_L2A_B02),
# HLS (HLS.S30.T32TQM.2024153T102021.v2.0.B02.tif) and Landsat (LC09_L2SP_193027_20240101_...)
_ACQUISITION = re.compile(
    r"(?:^|[_.])(T\d{2}[A-Z]{3}_\d{8}T\d{6})(?=_)"
    r"|^(S2[A-D]_\d{1,2}[A-Z]{3}_\d{8}_\d+)_"
    r"|^HLS\.[LS]30\.(T\d{2}[A-Z]{3}\.\d{7}T\d{6})\."
    r"|^L[COTEM]\d{2}_L\w{3}_(\d{6}_\d{8})_",
    re.IGNORECASE,
)
# a Sentinel-2 SAFE product folder: its level and processing baseline (N0510: 05.10)
# (the .SAFE suffix is part of the rule: BigEarthNet's patch folders are named as products too,
# S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57, and hold values without the offset)
_SAFE_NAME = re.compile(r"^S2[A-D]_MSI(L1C|L2A)_\d{8}T\d{6}_N(\d{4})_.*\.SAFE$", re.IGNORECASE)
#: Scale and offset of the values of SAFE products of processing baseline 04.00 and later
#: (reflectance x 10000 + 1000; BOA_ADD_OFFSET / RADIO_ADD_OFFSET -1000 in the product's XML).
_SAFE_OFFSET = (1e-4, -0.1)


class _BandFile(NamedTuple):
    """What the stack needs of one band file's header."""

    crs: Any
    bounds: Any
    res: tuple[float, float]
    transform: Any
    width: int
    height: int
    dtype: str
    nodata: float | None
    scale: float
    offset: float


def stack_band_files(
    files: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
    resampling: str = "nearest",
    scale: float | None = None,
    offset: float | None = None,
) -> Path:
    """Write a VRT stacking single-band rasters of one footprint into one multi-band image.

    Args:
        files: the band files (GeoTIFF, COG, JPEG 2000 ...), one band each, in the order of the
            stacked bands; their extents and CRS must agree, their resolutions may differ.
        path: the ``.vrt`` to write (atomically); its sources are named relative to it when they
            are on the same drive, so the folder can be moved as a whole.
        bands: the band of each file; default: read from the file names (``..._B02.jp2``).
        sensor: the sensor whose band numbering the names use (``landsat89``: ``B5`` is its
            near-infrared, not Sentinel-2's red edge); default: the one the file names show
            (``LC09_L2SP_..._SR_B5.TIF``: ``landsat89_sr``; ``LC08_L1TP_..._B5.TIF``:
            ``landsat89``; ``HLS.L30...B05.tif``: ``hls_l30``), else Sentinel-2's.
        resampling: how a coarser band is brought to the finest grid (GDAL's resampling names:
            ``nearest`` keeps the stored values, ``bilinear``, ``cubic``, ``average`` ...).
        scale, offset: a value scale and offset declared on every band (GDAL's, ``value =
            stored x scale + offset``), which msclip's readers apply: Sentinel-2 L2A band files
            of processing baseline 04.00 and later store reflectance x 10000 + 1000, declared
            only in the product's ``MTD_MSIL2A.xml`` (``BOA_ADD_OFFSET``), so their stack takes
            ``scale=1e-4, offset=-0.1``, as the same products' COGs declare it. Default: each
            file's own declared scale and offset (cloud COGs declare them), else ``1e-4, -0.1``
            for integer files inside a SAFE product of baseline 04.00 or later (L1C or L2A, told
            by the ``.SAFE`` folder's name, ``S2A_MSIL2A_..._N0510_...``), else the sensor's
            product scale for integer files (Landsat Collection 2 surface reflectance:
            ``2.75e-5, -0.2``, with its fill value 0 as nodata), else none. Given ones must agree
            with a scale a file declares itself.

    Returns:
        The written path.

    Raises:
        RasterReadError: a file cannot be opened.
        BandError: ``files`` is one path, a file holds more than one band, a band cannot be
            named, two files hold the same band, files of different products (or, by their
            names, of two tiles or acquisitions) are mixed, a file declares a scale other
            than the one given, or the files do not share a CRS, an extent or a data type.
        ValueError: ``path`` is not a ``.vrt``, or an unknown ``resampling``.
    """
    from rasterio.errors import RasterioIOError

    from msclip.io.readers import band_from_file_name, open_raster, sensor_from_file_name
    from msclip.io.writers import write_text
    from msclip.spectral.bands import resolve_band

    out = Path(path)
    if out.suffix.lower() != ".vrt":
        raise ValueError(f"the stack is written as a VRT: give a path ending in .vrt, not {out}")
    for what, v in (("scale", scale), ("offset", offset)):
        if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v)):
            raise ValueError(f"{what} must be a finite number, got {v!r}")
    if scale == 0:
        raise ValueError("scale must not be 0 (every value would read 0 + offset)")
    if resampling not in _RESAMPLINGS:
        raise ValueError(f"resampling must be one of {_RESAMPLINGS}, got {resampling!r}")
    if isinstance(files, (str, bytes, os.PathLike)):
        raise BandError(
            f"files is one path ({os.fsdecode(files)}): stack_band_files takes a list of band "
            "files, one per band (e.g. the R10m and R20m files of a SAFE product's IMG_DATA "
            "folder, each band once)",
            param="bands",
        )
    paths = [os.fspath(f) for f in files]
    if not paths:
        raise BandError("no band files given: pass one file per band", param="bands")
    if bands is not None and len(bands) != len(paths):
        raise BandError(
            f"{len(bands)} band names for {len(paths)} files; give one per file", param="bands"
        )
    infos: list[_BandFile] = []
    for p in paths:
        try:
            with open_raster(p) as src:
                if src.count != 1:
                    raise BandError(
                        f"{p} holds {src.count} bands: stack_band_files takes one file per band "
                        "(a multi-band file is already one image)"
                    )
                infos.append(_BandFile(src.crs, src.bounds, src.res, src.transform, src.width,
                                       src.height, src.dtypes[0], src.nodata,
                                       float(src.scales[0]), float(src.offsets[0])))  # fmt: skip
        except RasterioIOError as err:
            raise RasterReadError(f"cannot open band file {p}: {err}") from err
    if sensor is None and bands is None:
        found = {p: sensor_from_file_name(p) for p in paths}
        kinds = sorted(set(found.values()), key=str)
        if len(kinds) > 1:
            raise BandError(
                "the band files come from different products (" + ", ".join(
                    f"{Path(p).name}: {k or 'Sentinel-2'}" for p, k in found.items()
                ) + "); stack the files of one image",
                param="bands",
            )  # fmt: skip
        sensor = kinds[0]
    _refuse_two_acquisitions(paths)
    names = []
    for i, p in enumerate(paths):
        given = bands[i] if bands is not None else band_from_file_name(p)
        if given is None:
            raise BandError(
                f"no band in the name of {p} (such as _B02 or _B8A); name the files' bands "
                "(bands=['B02', 'B03', ...])",
                param="bands",
            )
        names.append(resolve_band(given, sensor).name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        held = "; ".join(
            f"{n} by " + ", ".join(p for p, m in zip(paths, names) if m == n) for n in twice
        )
        raise BandError(
            f"band(s) {twice} given by more than one file ({held}): give each band once (a "
            "SAFE product keeps a band at several resolutions, in R10m, R20m and R60m: take "
            "each from the finest)",
            param="bands",
        )
    first = infos[0]
    crs, bounds, dtype = first.crs, first.bounds, first.dtype
    finest = min(min(abs(f.res[0]), abs(f.res[1])) for f in infos)
    fine = min(infos, key=lambda f: abs(f.res[0]))  # the finest band: its grid is the stack's
    for p, f in zip(paths, infos):
        if f.crs != crs:
            raise BandError(f"{p} is in {f.crs}, {paths[0]} in {crs}: the band files of one "
                            "image share a CRS (warp them first, gdalwarp -t_srs)")  # fmt: skip
        if max(abs(x - y) for x, y in zip(f.bounds, bounds)) > finest / 2:
            raise BandError(f"{p} covers {tuple(f.bounds)}, {paths[0]} {tuple(bounds)}: the band "
                            "files of one image cover the same extent")  # fmt: skip
        if f.dtype != dtype:
            raise BandError(f"{p} holds {f.dtype} values, {paths[0]} {dtype}: the band files of "
                            "one image share a data type")  # fmt: skip
    gdal_type = _GDAL_TYPES.get(dtype)
    if gdal_type is None:
        raise BandError(f"band files of {dtype} values cannot be stacked (supported: "
                        f"{', '.join(_GDAL_TYPES)})")  # fmt: skip
    values = _band_values(paths, names, infos, dtype, sensor, scale, offset)
    width, height, t = fine.width, fine.height, fine.transform
    xml = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        xml.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    xml.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}"
               "</GeoTransform>")  # fmt: skip
    for i, (p, name, info, (a, b, fill)) in enumerate(zip(paths, names, infos, values), start=1):
        w, h, nodata = info.width, info.height, info.nodata
        source, relative = _source_name(p, out)
        kind = "ComplexSource" if nodata is not None else "SimpleSource"
        declared = fill if nodata is None else nodata  # the band's missing value, if any
        xml += [
            f'  <VRTRasterBand dataType="{gdal_type}" band="{i}">',
            f"    <Description>{escape(name)}</Description>",
            *([f"    <NoDataValue>{declared!r}</NoDataValue>"] if declared is not None else []),
            *([f"    <Offset>{b!r}</Offset>"] if (a, b) != (1.0, 0.0) else []),
            *([f"    <Scale>{a!r}</Scale>"] if (a, b) != (1.0, 0.0) else []),
            f'    <{kind} resampling="{resampling}">',
            f'      <SourceFilename relativeToVRT="{int(relative)}">{escape(source)}'
            "</SourceFilename>",
            "      <SourceBand>1</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
            f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
            *([f"      <NODATA>{nodata!r}</NODATA>"] if nodata is not None else []),
            f"    </{kind}>",
            "  </VRTRasterBand>",
        ]
    xml.append("</VRTDataset>\n")
    return write_text(out, "\n".join(xml))


def _band_values(
    paths: list[str],
    names: list[str],
    infos: list[_BandFile],
    dtype: str,
    sensor: str | None,
    scale: float | None,
    offset: float | None,
) -> list[tuple[float, float, float | None]]:
    """``(scale, offset, fill)`` that each band of the stack declares: the given ones, else the
    file's own, else the sensor's product scale (integer files; not the thermal bands, whose
    product scale is another), else none; ``fill``: the product's fill value, written as the
    band's nodata where the file names none."""
    from msclip.io.readers import thermal_bands
    from msclip.spectral.bands import stored_scale

    integer = np.dtype(dtype).kind in "iu"
    product = stored_scale(sensor) if integer else None
    out: list[tuple[float, float, float | None]] = []
    for p, info, hot in zip(paths, infos, thermal_bands(names)):
        safe = _safe_offset(p) if integer else None
        own = (info.scale, info.offset)
        if scale is not None or offset is not None:
            given = (
                1.0 if scale is None else float(scale),
                0.0 if offset is None else float(offset),
            )
            if own != (1.0, 0.0) and not np.allclose(own, given, rtol=1e-6, atol=1e-12):
                raise BandError(
                    f"{p} declares the scale {own[0]!r} and offset {own[1]!r} itself, and "
                    f"scale={given[0]!r}, offset={given[1]!r} were given: drop the arguments "
                    "(the file's own apply) or fix the file",
                    param="scale",
                )
            out.append((*given, None))
        elif own != (1.0, 0.0):
            out.append((*own, None))
        elif safe is not None:
            out.append((*safe, None))
        elif product is not None and not hot:
            fill = float(product[2]) if len(product) > 2 else None
            out.append((float(product[0]), float(product[1]), fill))
        else:
            out.append((1.0, 0.0, None))
    return out


def _refuse_two_acquisitions(paths: list[str]) -> None:
    """Refuse band files whose names carry two tiles or acquisitions (:class:`BandError`): such
    files of one tile and CRS cover the same extent, and would stack one date's red beside
    another's near-infrared."""
    found: dict[str, list[str]] = {}
    for p in paths:
        m = _ACQUISITION.search(Path(p).name)
        if m is not None:
            key = next(g for g in m.groups() if g).upper()
            found.setdefault(key, []).append(p)
    if len(found) > 1:
        raise BandError(
            "the band files are of "
            f"{len(found)} tiles or acquisitions (" + "; ".join(
                f"{k}: {', '.join(Path(p).name for p in v)}" for k, v in found.items()
            ) + "); stack the band files of one image",
            param="bands",
        )  # fmt: skip


def _safe_offset(path: str) -> tuple[float, float] | None:
    """:data:`_SAFE_OFFSET` for a band file inside a Sentinel-2 SAFE product of processing
    baseline 04.00 or later (told by the ``.SAFE`` folder's name, ``..._N0510_...``), whose
    files keep the offset in the product's XML only; ``None`` elsewhere."""
    for part in Path(os.path.abspath(path)).parts[:-1]:
        m = _SAFE_NAME.match(part)
        if m is not None:
            return _SAFE_OFFSET if int(m.group(2)) >= 400 else None
    return None


def _source_name(path: str, vrt: Path) -> tuple[str, bool]:
    """A band file's name in the VRT: relative to the VRT's folder when it can be, else
    absolute."""
    full = os.path.abspath(path)
    try:
        return os.path.relpath(full, os.path.abspath(vrt.parent)), True
    except ValueError:  # another drive (Windows)
        return full, False
