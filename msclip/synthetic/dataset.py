"""Synthetic datasets on disk: georeferenced tiles, captions and class tables.

:func:`generate_dataset` writes a EuroSAT-like class-folder (or flat) dataset of tiles with a
``captions.csv`` and a ``labels.csv``; :func:`generate_examples` writes the shipped sample tiles
of ``benchmark_datasets/examples``. Tiles are written through :func:`msclip.io.write_geotiff` as
deflate-compressed GeoTIFFs with band names, centre wavelengths and bandwidths (from the band
registry), a UTM CRS and a 10 m transform; nothing time-dependent is written, so a seed gives the
same bytes.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import SyntheticDataError
from msclip.io import atomic_write, check_output, write_geotiff
from msclip.spectral.bands import BANDS
from msclip.synthetic.captions import make_captions
from msclip.synthetic.classes import CLASS_INDEX, CLASSES, canonical_class, class_slug
from msclip.synthetic.spectra import BAND_NAMES
from msclip.synthetic.tiles import TileInfo, generate_tile, tile_shape

__all__ = [
    "CAPTION_COLUMNS",
    "DEFAULT_CRS",
    "DEFAULT_ORIGIN",
    "GENERATOR_TAG",
    "PIXEL_SIZE",
    "DatasetSummary",
    "Sample",
    "generate_dataset",
    "generate_examples",
    "iter_samples",
    "tile_transform",
    "write_tile",
]

logger = logging.getLogger(__name__)

#: Value of the ``GENERATOR`` tag of every written file. It names the module the generator was
#: first published in and is kept as the identifier of its output, so that files written before
#: and after the move to :mod:`msclip.synthetic` stay byte-identical.
GENERATOR_TAG = "msclip.data.scenes"

#: A UTM CRS (zone 32N: central Europe) for the generated tiles.
DEFAULT_CRS = "EPSG:32632"
#: Upper-left corner (easting, northing, metres) of the first tile of a dataset.
DEFAULT_ORIGIN = (300000.0, 5100000.0)
#: Ground sampling distance of the generated tiles (the 10 m bands of Sentinel-2).
PIXEL_SIZE = 10.0
_GRID_COLUMNS = 100
# Horizontal differencing before deflate (smaller files for smooth images), pixel interleaved.
_CREATION_OPTIONS = {"predictor": 2, "interleave": "pixel"}


def tile_transform(
    index: int, size: int | tuple[int, int], origin: tuple[float, float] = DEFAULT_ORIGIN
) -> Any:
    """Affine transform of the ``index``-th tile of a dataset, tiles on a grid without overlap.

    Args:
        index: position of the tile in the dataset (0-based).
        size: tile side in pixels, or ``(height, width)``.
        origin: upper-left corner of tile 0 in metres.

    Returns:
        ``affine.Affine`` with 10 m pixels.
    """
    from rasterio.transform import Affine

    h, w = tile_shape(size)
    row, col = divmod(int(index), _GRID_COLUMNS)
    step_x, step_y = (w + 8) * PIXEL_SIZE, (h + 8) * PIXEL_SIZE  # an 80 m gap between tiles
    x0, y0 = origin[0] + col * step_x, origin[1] - row * step_y
    return Affine(PIXEL_SIZE, 0.0, x0, 0.0, -PIXEL_SIZE, y0)


def write_tile(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    transform: Any = None,
    crs: str = DEFAULT_CRS,
    band_names: Sequence[str] = BAND_NAMES,
    tags: Mapping[str, str] | None = None,
    blocksize: int | None = None,
) -> Path:
    """Write a tile as a georeferenced, deflate-compressed GeoTIFF, atomically.

    The file has one ``uint16`` band per name with the name as band description, the centre
    wavelength and bandwidth (from the band registry) in the GDAL ``IMAGERY`` metadata domain,
    nodata 0, a UTM CRS and a 10 m transform. Nothing time-dependent is written, so equal inputs
    give equal bytes.

    Args:
        path: output ``.tif`` path (parent folders are created).
        array: ``[bands, H, W]`` digital numbers, ``uint16`` or integers in ``0..65535``.
        transform: ``affine.Affine``; default: tile 0 of :func:`tile_transform`.
        crs: coordinate reference system.
        band_names: one name per band (default: the 12 L2A bands).
        tags: extra dataset metadata.
        blocksize: write square internal tiles of this side (a multiple of 16) instead of
            strips, for windowed reading of large scenes.

    Returns:
        The written path.

    Raises:
        SyntheticDataError: wrong shape, a value that does not fit ``uint16``, or a block size
            that is not a positive multiple of 16.
    """
    arr = np.asarray(array)
    names = tuple(band_names)
    if arr.ndim != 3 or arr.shape[0] != len(names):
        raise SyntheticDataError(
            f"tile array of shape {arr.shape} does not match {len(names)} band names; "
            f"pass [bands, H, W] with bands = {', '.join(names)}"
        )
    if arr.dtype != np.uint16:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 65535:
            raise SyntheticDataError(
                f"tile array of dtype {arr.dtype} (range {arr.min()}..{arr.max()}) is not uint16 "
                "digital numbers; scale reflectance by 10000 and cast to uint16"
            )
        arr = arr.astype(np.uint16)
    if transform is None:
        transform = tile_transform(0, arr.shape[1:])
    options: dict[str, Any] = dict(_CREATION_OPTIONS)
    if blocksize is not None:
        if blocksize < 16 or blocksize % 16:
            raise SyntheticDataError(
                f"blocksize={blocksize!r} is not a positive multiple of 16 (GeoTIFF tiles); "
                "pass e.g. 256"
            )
        options.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    wavelengths = [
        {"CENTRAL_WAVELENGTH_UM": f"{b.center:g}", "FWHM_UM": f"{b.bandwidth:g}"}
        if (b := BANDS.get(name)) is not None
        else {}
        for name in names
    ]
    return write_geotiff(
        path,
        arr,
        crs=crs,
        transform=transform,
        bands=names,
        nodata=0,
        compress="deflate",
        tags={k: str(v) for k, v in tags.items()} if tags else None,
        creation_options=options,
        band_tags=wavelengths,
        band_tags_ns="IMAGERY",
    )


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Path:
    """Write a UTF-8 CSV table (``\\n`` line ends) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), suffix=".csv")


#: Columns of ``captions.csv``.
CAPTION_COLUMNS: tuple[str, ...] = ("image", "caption", "caption_2", "caption_3", "label")


@dataclass(frozen=True)
class Sample:
    """A generated image with its captions.

    Attributes:
        name: file stem (``forest_0003``).
        index: position in the generation order (used for the tile's map position).
        image: ``uint16`` ``[12, H, W]`` digital numbers.
        captions: three captions.
        info: what the tile shows.
    """

    name: str
    index: int
    image: np.ndarray = field(repr=False)
    captions: tuple[str, ...]
    info: TileInfo


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`generate_dataset` / :func:`generate_examples` wrote.

    Attributes:
        out_dir: dataset root.
        n_images: number of tiles written.
        counts: tiles per class.
        captions_csv: path of ``captions.csv``.
        labels_csv: path of ``labels.csv`` (``None`` for the examples).
        files: tile paths relative to ``out_dir``.
    """

    out_dir: Path
    n_images: int
    counts: dict[str, int]
    captions_csv: Path
    labels_csv: Path | None
    files: tuple[str, ...] = field(repr=False)


def check_count(value: Any, param: str) -> None:
    """Refuse a tile count that is not a whole number of at least 1 (``param`` names it)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SyntheticDataError(
            f"{param}={value!r} is not a whole number of tiles of at least 1; pass e.g. 10",
            param=param,
        )


def check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticDataError(f"seed {seed!r} is not a non-negative integer; pass e.g. seed=0")


def class_list(classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return CLASSES
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c.strip()]
    names = {canonical_class(c) for c in classes}
    if not names:
        raise SyntheticDataError("empty class list; name at least one of: " + ", ".join(CLASSES))
    return tuple(c for c in CLASSES if c in names)


def iter_samples(
    classes: Sequence[str] | None = None,
    n_per_class: int = 1,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
) -> Iterator[Sample]:
    """Generate image-caption samples in memory, class by class.

    Tile ``i`` of class ``c`` is seeded by ``(seed, index of c in CLASSES, i)``, so it does not
    depend on which other classes are generated or how many.

    Args:
        classes: class names (default: all of :data:`CLASSES`).
        n_per_class: tiles per class.
        size: tile side in pixels, or ``(height, width)``.
        seed: base seed.

    Yields:
        :class:`Sample` objects.
    """
    check_count(n_per_class, "n_per_class")
    check_seed(seed)
    chosen = class_list(classes)
    width = max(4, len(str(n_per_class - 1)))
    index = 0
    for cls in chosen:
        ci = CLASS_INDEX[cls]
        for i in range(n_per_class):
            rng = np.random.default_rng((seed, ci, i))
            image, info = generate_tile(cls, size, rng)
            caps = make_captions(info, np.random.default_rng((seed, ci, i, 1)), n=3)
            yield Sample(f"{class_slug(cls)}_{i:0{width}d}", index, image, tuple(caps), info)
            index += 1


def tile_tags(sample: Sample, seed: int) -> dict[str, str]:
    return {
        "GENERATOR": GENERATOR_TAG,
        "CLASS": sample.info.main,
        "LAYOUT": sample.info.layout,
        "SECONDARY": ",".join(sample.info.secondary),
        "CAPTION": sample.captions[0],
        "SEED": str(seed),
    }


def generate_dataset(
    out_dir: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    n_per_class: int = 100,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    layout: str = "folders",
    *,
    progress: bool = False,
) -> DatasetSummary:
    """Write a labelled, captioned dataset of synthetic tiles.

    With ``layout="folders"`` (EuroSAT-like) tiles go to
    ``<out_dir>/<class_slug>/<class_slug>_<i>.tif``; with ``layout="flat"`` all go to
    ``out_dir``. ``captions.csv`` has the columns of :data:`CAPTION_COLUMNS` (``image`` relative
    to ``out_dir`` with ``/`` separators, ``label`` the class name); ``labels.csv`` has
    ``index,label,folder,count``.

    Args:
        out_dir: dataset root (created).
        classes: class names (default: all).
        n_per_class: tiles per class.
        size: tile side in pixels, or ``(height, width)``.
        seed: base seed; the same seed writes the same bytes.
        layout: ``"folders"`` or ``"flat"``.
        progress: show a tqdm progress bar (for command-line use).

    Returns:
        A :class:`DatasetSummary`.

    Raises:
        SyntheticDataError: bad layout, count or size.
        UnknownClassError: unknown class name.
    """
    if layout not in ("folders", "flat"):
        raise SyntheticDataError(f"unknown dataset layout {layout!r}; use 'folders' or 'flat'")
    chosen = class_list(classes)
    tile_shape(size)
    check_seed(seed)
    check_count(n_per_class, "n_per_class")
    root = check_output(out_dir, kind="dir", param="out_dir")
    total = len(chosen) * n_per_class
    uncommit(root, ("captions.csv", "labels.csv"))
    samples = iter_samples(chosen, n_per_class, size, seed)
    if progress:
        from msclip.progress import progress_bar

        samples = progress_bar(samples, total=total, unit="tile", desc=f"scenes -> {root}")
    rows: list[list[str]] = []
    files: list[str] = []
    counts = {c: 0 for c in chosen}
    for s in samples:
        rel = f"{class_slug(s.info.main)}/{s.name}.tif" if layout == "folders" else f"{s.name}.tif"
        write_tile(
            root / rel, s.image, transform=tile_transform(s.index, size), tags=tile_tags(s, seed)
        )
        rows.append([rel, *s.captions, s.info.main])
        files.append(rel)
        counts[s.info.main] += 1
    captions_csv = write_csv(root / "captions.csv", CAPTION_COLUMNS, rows)
    label_rows = [
        [i, c, class_slug(c) if layout == "folders" else ".", counts[c]]
        for i, c in enumerate(chosen)
    ]
    labels_csv = write_csv(root / "labels.csv", ("index", "label", "folder", "count"), label_rows)
    logger.info("wrote %d synthetic tiles of %d classes to %s", len(files), len(chosen), root)
    warn_stale(root, files)
    return DatasetSummary(root, len(files), counts, captions_csv, labels_csv, tuple(files))


def uncommit(root: Path, tables: Sequence[str]) -> None:
    """Remove an earlier generation's ``tables`` before any of its tiles is replaced: they are
    written last, so a run stopped half-way leaves no table pairing a new tile with an old
    caption or label (a reader of the folder then fails on the missing table instead)."""
    for table in tables:
        (root / table).unlink(missing_ok=True)


def warn_stale(root: Path, written: Sequence[str], table: str = "captions.csv") -> None:
    """Name the rasters an earlier generation left in ``root`` that this one did not write: they
    are in no table (``table``), but a reader of folders would take them."""
    mine = {Path(f).as_posix() for f in written}
    stale = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tif")
                   if p.relative_to(root).as_posix() not in mine)  # fmt: skip
    if stale:
        logger.warning(
            "%s holds %d tile(s) this run did not write (%s%s), from an earlier generation: "
            "they are not in %s; remove them, or generate into an empty folder",
            root, len(stale), ", ".join(stale[:3]), " ..." if len(stale) > 3 else "", table,
        )  # fmt: skip


def generate_examples(
    out_dir: str | os.PathLike[str], n: int = 16, size: int | tuple[int, int] = 128, seed: int = 0
) -> DatasetSummary:
    """Write the shipped sample tiles: a flat folder ``sea_01.tif``, ``forest_01.tif`` ...

    Classes are taken in :data:`CLASSES` order, cycling when ``n`` exceeds their number, and
    ``captions.csv`` (columns :data:`CAPTION_COLUMNS`) lists them.

    Args:
        out_dir: output folder (created).
        n: number of tiles.
        size: tile side in pixels, or ``(height, width)``.
        seed: base seed.

    Returns:
        A :class:`DatasetSummary` (``labels_csv`` is ``None``).
    """
    check_count(n, "n")
    check_seed(seed)
    tile_shape(size)
    root = check_output(out_dir, kind="dir", param="out_dir")
    rows: list[list[str]] = []
    files: list[str] = []
    counts: dict[str, int] = {}
    uncommit(root, ("captions.csv",))
    for k in range(n):
        cls = CLASSES[k % len(CLASSES)]
        ci = CLASS_INDEX[cls]
        rep = k // len(CLASSES)
        # A seed stream of its own (the 10_000 offset), so examples differ from dataset tiles.
        image, info = generate_tile(cls, size, np.random.default_rng((seed, 10_000 + ci, rep)))
        caps = make_captions(info, np.random.default_rng((seed, 10_000 + ci, rep, 1)), n=3)
        counts[cls] = counts.get(cls, 0) + 1
        sample = Sample(f"{class_slug(cls)}_{counts[cls]:02d}", k, image, tuple(caps), info)
        rel = f"{sample.name}.tif"
        write_tile(
            root / rel, image, transform=tile_transform(k, size), tags=tile_tags(sample, seed)
        )
        rows.append([rel, *caps, cls])
        files.append(rel)
    captions_csv = write_csv(root / "captions.csv", CAPTION_COLUMNS, rows)
    logger.info("wrote %d example tiles to %s", n, root)
    warn_stale(root, files)
    return DatasetSummary(root, n, counts, captions_csv, None, tuple(files))
