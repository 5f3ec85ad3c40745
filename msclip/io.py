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
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import (
    BandError,
    GenericBandNamesWarning,
    ImageSetError,
    LayoutError,
    OutputPathError,
    RasterReadError,
    RasterTooLargeError,
    RasterWriteError,
    UnsupportedFormatError,
)
from msclip.spectral.bands import Band, default_bands_for_count, resolve_bands
from msclip.spectral.layout import to_chw

__all__ = [
    "IMAGE_EXTENSIONS",
    "TMP_PREFIX",
    "GeoTiffStripWriter",
    "ImageSet",
    "Raster",
    "atomic_write",
    "check_output",
    "commit",
    "current_umask",
    "fsync_dir",
    "jsonable",
    "list_image_set",
    "list_images",
    "read_raster",
    "temp_path",
    "to_chw",
    "write_bytes",
    "write_csv",
    "write_geotiff",
    "write_json",
    "write_text",
]

logger = logging.getLogger(__name__)


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
    present = [d for d in descriptions if d]
    if present:
        try:
            from_desc = tuple(b.name for b in resolve_bands(descriptions, sensor))  # type: ignore[arg-type]
        except BandError:
            from_desc = None
    if from_desc is not None:
        if given is not None and given != from_desc:
            raise BandError(
                f"{where} describes its bands as {list(from_desc)} but bands={list(given)} was "
                "given; drop the argument or fix the file's band descriptions"
            )
        return from_desc, "descriptions"
    if given is not None:
        return given, "argument"
    if present and not all(_GENERIC_BAND.match(d) for d in present):
        raise BandError(
            f"{where} describes its bands as {list(descriptions)}, which are not band names "
            "msclip knows; name the bands (e.g. bands=['B02', 'B03', 'B04', 'B08']) rather than "
            "have them guessed from the band count",
            param="bands",
        )
    try:
        names = default_bands_for_count(count)
    except BandError as err:
        raise BandError(f"{where}: {err}", param=err.param) from None
    if present:
        warnings.warn(
            f"band descriptions are generic numbering ({present[0]!r} ...): the bands are taken "
            f"from the band count ({count} bands: {', '.join(names)}); name them to be sure",
            GenericBandNamesWarning,
            stacklevel=3,
        )
    return names, "count"


#: Band descriptions that only number the bands (``band_1``, ``Band 2``, ``channel3``, ``4``).
_GENERIC_BAND = re.compile(r"^\s*(band|channel|layer)?[\s_#-]*\d+\s*$", re.IGNORECASE)


def _check_pixels(path: str, height: int, width: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise RasterTooLargeError(
            f"{path} is {height}x{width} pixels, far more than one image the model reads "
            f"(at most {max_pixels} pixels here): cut it into tiles (scene mode), or read it "
            "reduced through its overviews (downsampling)"
        )


def _read_geotiff(
    path: str,
    bands: Sequence[str | Band] | None,
    sensor: str | None,
    window: Any,
    max_pixels: int | None = None,
    shorter_side: int | None = None,
) -> Raster:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            names, source = _assign_bands(
                src.count, list(src.descriptions), bands, sensor, f"GeoTIFF {path}"
            )
            h = int(window.height) if window is not None else src.height
            w = int(window.width) if window is not None else src.width
            out_shape = None
            if shorter_side is not None and min(h, w) > shorter_side:
                # decimated read: GDAL uses the file's overviews when it has them
                scale = shorter_side / min(h, w)
                out_shape = (src.count, max(1, round(h * scale)), max(1, round(w * scale)))
            else:
                _check_pixels(path, h, w, max_pixels)
            data = src.read(
                window=window, out_shape=out_shape,
                resampling=Resampling.average if out_shape else Resampling.nearest,
            )  # fmt: skip
            transform = src.window_transform(window) if window is not None else src.transform
            if out_shape is not None:
                transform = transform * transform.scale(w / out_shape[2], h / out_shape[1])
            crs = src.crs
            nodata = src.nodata
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read GeoTIFF {path}: {err}") from err
    if data.size == 0:
        raise RasterReadError(f"GeoTIFF {path} holds no pixels (shape {data.shape})")
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
                if "layout" in keys:
                    meta_layout = str(npz["layout"])
                if "bands" in keys:
                    descriptions = [str(b) for b in npz["bands"].tolist()]
                if "nodata" in keys:
                    nodata = float(npz["nodata"])
        else:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
            if max_pixels is not None and array.ndim == 3:
                # bands are the shortest end axis: the other two are height and width
                hw = array.shape[1:] if array.shape[0] <= array.shape[-1] else array.shape[:2]
                _check_pixels(path, int(hw[0]), int(hw[1]), max_pixels)
            elif max_pixels is not None and array.ndim == 2:
                _check_pixels(path, *array.shape, max_pixels)
            array = np.array(array)
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


def _read_picture(
    path: str, bands: Sequence[str | Band] | None, sensor: str | None, max_pixels: int | None
) -> Raster:
    """PNG / JPEG at their true depth and band count: 8- or 16-bit, greyscale (one band), RGB;
    an alpha band is dropped, a palette is expanded to RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            _check_pixels(path, img.height, img.width, max_pixels)
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(img, dtype=np.uint16)[None]
            elif mode == "I":
                arr = np.asarray(img, dtype=np.int32)[None]
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float32)[None]
            elif mode in ("L", "1"):
                arr = np.asarray(img.convert("L"))[None]
            elif mode == "RGB" and img.format == "PNG" and _png_bit_depth(path) == 16:
                arr = _read_png16(path)
            else:  # RGB, RGBA, LA, P (palette), CMYK, YCbCr ...: 8-bit RGB
                arr = np.moveaxis(np.asarray(img.convert("RGB")), -1, 0)
    except (UnidentifiedImageError, OSError) as err:
        raise RasterReadError(f"cannot read image {path}: {err}") from err
    names, source = _assign_bands(arr.shape[0], [], bands, sensor, path)
    return Raster(np.ascontiguousarray(arr), names, path=path, band_source=source,
                  meta={"layout": "HWC", "mode": mode})  # fmt: skip


def _png_bit_depth(path: str) -> int:
    with open(path, "rb") as fh:
        head = fh.read(26)
    return head[24] if len(head) >= 25 and head[12:16] == b"IHDR" else 8


def _read_png16(path: str) -> np.ndarray:
    """A 16-bit RGB(A) PNG as ``[3, H, W]`` uint16 (Pillow reduces these to 8 bits; GDAL does
    not)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read()[:3].astype(np.uint16, copy=False)
    except RasterioIOError as err:
        raise RasterReadError(f"cannot read 16-bit PNG {path}: {err}") from err


def read_raster(
    path: str | os.PathLike,
    bands: Sequence[str | Band] | None = None,
    layout: str | None = None,
    sensor: str | None = None,
    window: Any = None,
    max_pixels: int | None = None,
    shorter_side: int | None = None,
) -> Raster:
    """Read an image file with its band names.

    Args:
        path: ``.tif``/``.tiff`` (GeoTIFF, COG), ``.npy``/``.npz``, ``.png``/``.jpg``/``.jpeg``.
        bands: band names of the file's channels, when the file does not name them.
        layout: ``CHW`` or ``HWC`` for arrays whose layout cannot be known from the file.
        sensor: sensor whose local band names apply (``hls_l30``, ``landsat89`` ...).
        window: ``rasterio.windows.Window`` to read part of a GeoTIFF.
        max_pixels: refuse (before reading the pixels) a raster with more pixels than this.
        shorter_side: read a GeoTIFF (or its window) reduced so that its shorter side has this
            many pixels when it is larger (average resampling, through the file's overviews when
            it has them); ``max_pixels`` then does not apply.

    Raises:
        RasterReadError: missing, empty or corrupt file.
        RasterTooLargeError: more than ``max_pixels`` pixels.
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
        return _read_geotiff(p, bands, sensor, window, max_pixels, shorter_side)
    if ext in NUMPY_EXTENSIONS:
        return _read_numpy(p, bands, sensor, layout, max_pixels)
    if ext in PICTURE_EXTENSIONS:
        return _read_picture(p, bands, sensor, max_pixels)
    raise UnsupportedFormatError(
        f"unsupported image format {ext!r} ({p}); supported: {', '.join(IMAGE_EXTENSIONS)}"
    )


# -- image sets ------------------------------------------------------------------------------
_GLOB_CHARS = "*?["


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _list_file(path: Path) -> list[tuple[str, str]]:
    """``(path, entry as written)`` of the files listed in a ``.txt`` (one per line) or ``.yaml``
    (list, or ``images:`` key) file; relative entries are relative to the list file's folder."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ImageSetError(f"cannot parse image list {path}: {err}") from err
        if isinstance(obj, dict):
            obj = obj.get("images", obj.get("paths"))
        if not isinstance(obj, list) or not all(isinstance(v, str) for v in obj):
            raise ImageSetError(
                f"{path}: expected a YAML list of image paths (or a mapping with an 'images' list)"
            )
        entries = obj
    else:
        entries = [
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
    return [(e if Path(e).is_absolute() else str(path.parent / e), e) for e in entries]


@dataclass(frozen=True)
class ImageSet:
    """Image files found by :func:`list_image_set`, with display names.

    Attributes:
        paths: the files, in order, without duplicates (as given or found, not resolved).
        names: per file, its path relative to the root of the specification that found it (the
            folder, the glob's fixed part, the list file's folder; a bare file name for a file
            given directly). When two files would get the same name, every name is taken
            relative to the common folder of all roots instead, so names are unique and never
            absolute paths of the machine.
    """

    paths: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in _GLOB_CHARS):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def list_image_set(specs: Sequence[str | os.PathLike], recursive: bool = True) -> ImageSet:
    """Expand image specifications into image files, in order, without duplicates.

    Each specification is a folder (its image files, sorted; sub-folders too when
    ``recursive``), a ``.txt`` or ``.yaml`` list of paths, a glob pattern (``**`` allowed), or an
    image file. Image files are those with an extension of :data:`IMAGE_EXTENSIONS`; other files
    in a folder are counted in one log warning per folder, not silently dropped.

    Raises:
        ImageSetError: a specification that matches nothing or names a missing file.
    """
    found_paths: list[tuple[str, str]] = []  # (path, root)
    for spec in specs:
        s = os.fspath(spec)
        p = Path(s).expanduser()
        if p.is_dir():
            files = [f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file()]
            images = sorted(str(f) for f in files if _is_image(f))
            others = sorted({f.suffix.lower() or "(none)" for f in files if not _is_image(f)})
            n_other = len(files) - len(images)
            if n_other:
                logger.warning(
                    "%s: %d file%s with other extensions (%s) %s not images and %s skipped",
                    p, n_other, "" if n_other == 1 else "s", ", ".join(others),
                    "is" if n_other == 1 else "are", "is" if n_other == 1 else "are",
                )  # fmt: skip
            if not images:
                raise ImageSetError(f"folder {p} holds no image files ({_extensions()})")
            found_paths += [(f, str(p)) for f in images]
        elif p.is_file() and p.suffix.lower() in (".txt", ".yaml", ".yml"):
            # relative entries are named as written; absolute ones relative to their common folder
            listed = _list_file(p)
            absolute = [f for f, given in listed if Path(given).is_absolute()]
            common = os.path.commonpath([os.path.dirname(f) for f in absolute]) if absolute else ""
            found_paths += [
                (f, common if Path(given).is_absolute() else str(p.parent)) for f, given in listed
            ]
        elif p.is_file():
            found_paths.append((s, str(p.parent)))
        elif any(ch in s for ch in _GLOB_CHARS):
            import glob

            pattern = os.path.expanduser(s)
            found = sorted(
                f
                for f in glob.glob(pattern, recursive=True)
                if Path(f).is_file() and _is_image(Path(f))
            )
            if not found:
                raise ImageSetError(f"pattern {s!r} matches no image files ({_extensions()})")
            root = _glob_root(pattern)
            found_paths += [(f, root) for f in found]
        else:
            raise ImageSetError(
                f"no such file or folder: {s}; images are given as folders, image files, "
                ".txt/.yaml lists of paths, or glob patterns",
                param="images",
            )
    unique: dict[str, str] = {}
    for f, root in found_paths:  # the first appearance keeps its place and root
        unique.setdefault(f, root)
    paths = list(unique)
    names = [os.path.relpath(f, unique[f]) for f in paths]
    if len(set(names)) != len(names):
        common = os.path.commonpath([os.path.abspath(r) for r in unique.values()])
        names = [os.path.relpath(os.path.abspath(f), common) for f in paths]
    return ImageSet(paths, names)


def list_images(specs: Sequence[str | os.PathLike], recursive: bool = True) -> list[str]:
    """The files of :func:`list_image_set` (without their display names)."""
    return list_image_set(specs, recursive).paths


def _extensions() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


# -- writing -----------------------------------------------------------------------------------
def check_output(path: str | os.PathLike, kind: str = "file", param: str = "save_path") -> Path:
    """Make sure an output can be written, before any work is done.

    Args:
        path: the file (``kind="file"``) or folder (``kind="dir"``) to be written.
        kind: ``"file"`` or ``"dir"``.
        param: the argument that gave the path (for the error's ``param``).

    Returns:
        The path (user-expanded).

    Raises:
        OutputPathError: a folder where a file is needed or the reverse, a file in the way of a
            folder to create, or a location that is not writable.
    """
    p = Path(path).expanduser()

    def fail(why: str) -> OutputPathError:
        return OutputPathError(f"cannot write {p}: {why}", param=param)

    if p.exists():
        if kind == "file" and p.is_dir():
            raise fail("it is a folder; give a file name")
        if kind == "dir" and not p.is_dir():
            raise fail("it is a file, not a folder")
        folder = p if kind == "dir" else p.parent
        if not os.access(p, os.W_OK):
            raise fail("it is not writable")
    else:
        folder = p.parent if kind == "file" else p
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise fail(f"{folder} is a file, so no folder can be created under it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise fail(f"the folder {folder} is not writable")
    return p


#: Prefix of the temporary files of :func:`atomic_write`; a directory's leftovers of a killed
#: write carry it (the index store removes them when it recovers).
TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Any, suffix: str = "") -> Path:
    """Call ``write(tmp_path)``, make the result durable, then move it onto ``path`` in one rename.

    The one writer of every file msclip produces. The temporary file lives in the target's
    directory (so the rename is atomic), is synced to disk before the rename and the directory
    after it (the ordering that survives a power cut: Pillai et al., "All File Systems Are Not
    Created Equal", OSDI 2014), and gets the permissions of a normally created file (``0666``
    less the umask) rather than ``mkstemp``'s ``0600``. A crash leaves either the old file or the
    new one, never a half-written file.

    Args:
        path: the target file; its folder is created when missing.
        write: a function that writes the whole content to the path it is given.
        suffix: suffix of the temporary file (some writers choose the format by it).

    Raises:
        OutputPathError: the target's folder cannot be created or written.
    """
    target = Path(path)
    tmp = temp_path(target, suffix)
    try:
        write(tmp)
        commit(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def temp_path(target: str | os.PathLike, suffix: str = "") -> str:
    """A new, empty temporary file beside ``target`` (for a write that :func:`commit` ends).

    Raises:
        OutputPathError: the target's folder cannot be created or written.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f"{TMP_PREFIX}{target.name}.", suffix=suffix or ".part", dir=target.parent
        )
    except OSError as err:
        raise OutputPathError(f"cannot write {target}: {err.strerror or err}") from err
    os.close(fd)
    return tmp


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make a finished temporary file durable and move it onto ``target`` in one rename: sync the
    file, give it the permissions of a normally created file (``0666`` less the umask), rename,
    then sync the folder (the order that survives a power cut; see :func:`atomic_write`)."""
    _fsync_file(os.fspath(tmp))
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)
    return Path(target)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def jsonable(x: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, NaN and infinity to ``None`` (JSON has
    no such numbers), paths to strings."""
    import math

    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 1, sort_keys: bool = False
) -> Path:
    """Write ``obj`` as JSON atomically, through :func:`jsonable` (NaN written as ``null``)."""
    import json

    text = json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return write_text(path, text + "\n")


def write_csv(df: Any, path: str | os.PathLike, float_format: str | None = None) -> Path:
    """Write a pandas DataFrame as CSV (no index column) atomically."""
    return atomic_write(
        path, lambda tmp: df.to_csv(tmp, index=False, float_format=float_format), ".csv"
    )


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
            commit(final, self.path)
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

        dst = temp_path(self.path, ".cog.tif")
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
