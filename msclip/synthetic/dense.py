"""Dense targets of the synthetic scenes: land-cover labels and vegetation cover per pixel.

For dense prediction (semantic segmentation, per-pixel regression) every generated tile comes
with two rasters on exactly its grid (same CRS, transform and size):

* a **land-cover label** (``uint8``): the index in :data:`~msclip.synthetic.classes.CLASSES` of
  the class painted at each pixel, the main class and everything placed over it (coasts, rivers,
  lakes, patches, roads as ``urban``, clouds where their opacity reaches 0.3). Mixed pixels take
  the class that covers at least half of them. :data:`IGNORE_INDEX` (255) is reserved as the
  files' nodata / ignore value; the generator never writes it (every pixel has a class), so it is
  free for padding and masks downstream.
* a **fractional vegetation cover** (``float32``, 0-1, band ``fcover``): the share of the pixel
  covered by green vegetation, i.e. the summed abundance of the green-vegetation endmembers in
  the linear mixture that made the pixel's spectrum (the quantity FCOVER products estimate, Baret
  et al. 2013, Remote Sens. Environ. 137:299), blurred by the sensor's point-spread function like
  the image. It is ``NaN`` (the files' nodata) where the label is cloud, since the ground is not
  seen there.

Both come out of the composition that paints the image, without a random draw of their own, so
an image is the same, byte for byte, whether or not they are requested. :func:`generate_scene`
makes a larger scene of several land-cover regions for whole-scene prediction.

Dataset layout written by :func:`generate_dense_dataset` and :func:`write_scene`::

    DIR/images/<name>.tif    12-band uint16 L2A tile (as written by generate_dataset)
    DIR/labels/<name>.tif    uint8 land-cover class, nodata 255
    DIR/targets/<name>.tif   float32 fractional vegetation cover, nodata NaN
    DIR/index.csv            image,label,target,split   (paths relative to DIR)
    DIR/classes.csv          value,class,pixels         (label values and their pixel counts)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import SyntheticDataError
from msclip.io import check_output, write_geotiff
from msclip.synthetic.classes import CLASS_INDEX, CLASSES
from msclip.synthetic.dataset import (
    DEFAULT_CRS,
    GENERATOR_TAG,
    check_count,
    check_seed,
    class_list,
    iter_samples,
    tile_tags,
    tile_transform,
    warn_stale,
    write_csv,
    write_tile,
)
from msclip.synthetic.layouts import compose_landscape
from msclip.synthetic.tiles import generate_tile, observe, tile_shape

__all__ = [
    "DENSE_COLUMNS",
    "IGNORE_INDEX",
    "LABEL_BAND",
    "MAX_SCENE_SIDE",
    "SPLITS",
    "TARGET_BAND",
    "DenseDatasetSummary",
    "generate_dense_dataset",
    "generate_dense_tile",
    "generate_scene",
    "write_label",
    "write_scene",
    "write_target",
]

logger = logging.getLogger(__name__)

#: Label value reserved for nodata / ignore (never written by the generator).
IGNORE_INDEX = 255
#: Band description of the label rasters.
LABEL_BAND = "land_cover"
#: Band description of the target rasters: fractional (green) vegetation cover, 0-1.
TARGET_BAND = "fcover"
#: Columns of ``index.csv``.
DENSE_COLUMNS: tuple[str, ...] = ("image", "label", "target", "split")
#: Split names, in the order of the ``splits`` fractions.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Largest side of :func:`generate_scene`: memory grows with the area, about 250 bytes of arrays
#: per pixel at the peak (0.26 GiB at 1024 x 1024, 4 GiB at 4096 x 4096).
MAX_SCENE_SIDE = 4096
# Seed streams of their own, so that splits and scenes do not reuse the tiles' draws.
_SPLIT_STREAM = 30_000
_SCENE_STREAM = 40_000


def generate_dense_tile(
    cls: str, size: int | tuple[int, int] = 64, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tile with its land-cover label and vegetation-cover target.

    The image is the one :func:`~msclip.synthetic.tiles.generate_tile` returns for the same
    arguments (no extra random draw).

    Args:
        cls: class name (underscores and case are accepted).
        size: side in pixels, or ``(height, width)``.
        rng: random generator, or a seed for one.

    Returns:
        ``(image, label, target)``: ``uint16`` ``[12, H, W]``, ``uint8`` ``[H, W]`` (class index,
        see :data:`IGNORE_INDEX`) and ``float32`` ``[H, W]`` (0-1, ``NaN`` under cloud).

    Raises:
        UnknownClassError: unknown class name.
        SyntheticDataError: size below 8 pixels.
    """
    image, info = generate_tile(cls, size, rng)
    return image, info.label_map, info.fcover


def _check_region_size(region_size: Any) -> None:
    """Refuse a region size that is not a finite number of at least 16 pixels, saying which."""
    is_number = isinstance(region_size, (int, float, np.integer, np.floating))
    if not is_number or isinstance(region_size, (bool, np.bool_)):
        raise SyntheticDataError(
            f"region_size={region_size!r} is not a number; pass pixels, e.g. 128 (the default)",
            param="region_size",
        )
    if not math.isfinite(region_size):
        raise SyntheticDataError(
            f"region_size={region_size!r} is not a finite number; pass pixels, at least 16 "
            "(default 128; a region larger than the scene gives one region)",
            param="region_size",
        )
    if region_size < 16:
        raise SyntheticDataError(
            f"region_size={region_size!r} pixels is too small; use at least 16 (default 128)",
            param="region_size",
        )


def generate_scene(
    size: int | tuple[int, int] = 1024,
    rng: np.random.Generator | int | None = None,
    *,
    region_size: float = 128.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A large scene of several land-cover regions, with its label and target.

    Regions of forest, cropland, grassland, urban, bare soil, wetland, desert, burnt area and
    snow (each about ``region_size`` pixels across, irregular borders), crossed by rivers and
    roads, with lakes, and in some scenes a coast and clouds, seen by the same sensor model as
    the tiles (:func:`msclip.synthetic.layouts.compose_landscape`).

    Args:
        size: side in pixels, or ``(height, width)``; at most :data:`MAX_SCENE_SIDE`.
        rng: random generator, or a seed for one.
        region_size: typical side of a land-cover region in pixels (at least 16).

    Returns:
        ``(image, label, target)`` as in :func:`generate_dense_tile`.

    Raises:
        SyntheticDataError: size out of range, or ``region_size`` not a finite number of at
            least 16.
    """
    shape = tile_shape(size, "scene")
    if max(shape) > MAX_SCENE_SIDE:
        raise SyntheticDataError(
            f"scene size {size!r} exceeds {MAX_SCENE_SIDE} pixels a side (memory grows with the "
            "area); generate several scenes, or tiles with generate_dense_dataset"
        )
    _check_region_size(region_size)
    rng = np.random.default_rng(rng)
    scene = compose_landscape(rng, shape, float(region_size))
    image, target = observe(scene, rng)
    return image, scene.labels, target


def _geotiff_tags(tags: Mapping[str, Any] | None) -> dict[str, str] | None:
    return {k: str(v) for k, v in tags.items()} if tags else None


def write_label(
    path: str | os.PathLike[str],
    label: np.ndarray,
    *,
    transform: Any,
    crs: Any = DEFAULT_CRS,
    tags: Mapping[str, Any] | None = None,
) -> Path:
    """Write a land-cover label raster (``uint8``, nodata :data:`IGNORE_INDEX`) atomically.

    The band description is :data:`LABEL_BAND`; the tags ``CLASS_NAMES`` (the class of each
    value, comma-separated) and ``IGNORE_INDEX`` say how to read it.

    Args:
        path: output ``.tif`` path.
        label: ``[H, W]`` class indices in ``0..len(CLASSES)-1`` (or :data:`IGNORE_INDEX`).
        transform: affine transform, the image's.
        crs: coordinate reference system, the image's.
        tags: extra dataset metadata.

    Returns:
        The written path.

    Raises:
        SyntheticDataError: not 2-D, or values that are not class indices.
    """
    arr = np.asarray(label)
    valid = (arr < len(CLASSES)) | (arr == IGNORE_INDEX)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) or not valid.all():
        raise SyntheticDataError(
            f"label of shape {arr.shape} and dtype {arr.dtype} is not an [H, W] map of class "
            f"indices 0..{len(CLASSES) - 1} (or {IGNORE_INDEX}); pass TileInfo.label_map"
        )
    meta = {"CLASS_NAMES": ",".join(CLASSES), "IGNORE_INDEX": IGNORE_INDEX, **(tags or {})}
    return write_geotiff(
        path, arr.astype(np.uint8), crs=crs, transform=transform, bands=[LABEL_BAND],
        nodata=IGNORE_INDEX, tags=_geotiff_tags(meta), creation_options={"predictor": 2},
    )  # fmt: skip


def write_target(
    path: str | os.PathLike[str],
    target: np.ndarray,
    *,
    transform: Any,
    crs: Any = DEFAULT_CRS,
    tags: Mapping[str, Any] | None = None,
) -> Path:
    """Write a vegetation-cover target raster (``float32``, nodata ``NaN``) atomically.

    Args:
        path: output ``.tif`` path.
        target: ``[H, W]`` fractional vegetation cover (0-1, ``NaN`` where undefined).
        transform: affine transform, the image's.
        crs: coordinate reference system, the image's.
        tags: extra dataset metadata.

    Returns:
        The written path.

    Raises:
        SyntheticDataError: not a 2-D float map.
    """
    arr = np.asarray(target)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise SyntheticDataError(
            f"target of shape {arr.shape} and dtype {arr.dtype} is not an [H, W] float map; "
            "pass TileInfo.fcover"
        )
    meta = {
        "TARGET": "fraction of the pixel covered by green vegetation (0-1); NaN under cloud",
        **(tags or {}),
    }
    return write_geotiff(
        path, arr.astype(np.float32), crs=crs, transform=transform, bands=[TARGET_BAND],
        nodata=float("nan"), tags=_geotiff_tags(meta), creation_options={"predictor": 3},
    )  # fmt: skip


@dataclass(frozen=True)
class DenseDatasetSummary:
    """What :func:`generate_dense_dataset` / :func:`write_scene` wrote.

    Attributes:
        out_dir: dataset root.
        n_images: number of images written (each with a label and a target).
        splits: images per split.
        index_csv: path of ``index.csv``.
        classes_csv: path of ``classes.csv``.
        files: image paths relative to ``out_dir``.
    """

    out_dir: Path
    n_images: int
    splits: dict[str, int]
    index_csv: Path
    classes_csv: Path
    files: tuple[str, ...] = field(repr=False)


def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in splits)
    except (TypeError, ValueError) as err:
        raise SyntheticDataError(
            f"splits {splits!r} are not numbers; pass three fractions, e.g. (0.8, 0.1, 0.1)",
            param="splits",
        ) from err
    bad = [f for f in fr if not math.isfinite(f)]
    if bad:
        raise SyntheticDataError(
            f"splits {tuple(splits)!r} hold {bad[0]!r}, which is not a finite number; pass three "
            "fractions (train, val, test) in 0-1 summing to 1, e.g. (0.8, 0.1, 0.1)",
            param="splits",
        )
    if len(fr) != 3 or any(not 0 <= f <= 1 for f in fr) or not math.isclose(sum(fr), 1.0):
        raise SyntheticDataError(
            f"splits {tuple(splits)!r} are not three fractions (train, val, test) in 0-1 summing "
            "to 1; pass e.g. (0.8, 0.1, 0.1)",
            param="splits",
        )
    return fr  # type: ignore[return-value]


def _assign_splits(n: int, fractions: tuple[float, float, float], seed: int, ci: int) -> list[str]:
    """Split names of the ``n`` tiles of class ``ci``: a seeded shuffle cut by the fractions.

    The val and test counts are rounded (so a class of 10 tiles at 0.8/0.1/0.1 gives 8/1/1); the
    train split takes the rest, unless its fraction is 0: a split asked to be empty stays empty
    (the rest then goes to the larger of val and test).
    """
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    rest = n - n_val - n_test
    if rest and fractions[0] == 0:
        if fractions[2] >= fractions[1]:
            n_test += rest
        else:
            n_val += rest
    names = ["val"] * n_val + ["test"] * n_test
    names = ["train"] * (n - len(names)) + names
    order = np.random.default_rng((seed, _SPLIT_STREAM, ci)).permutation(n)
    return [names[k] for k in order]


def _write_dense(
    root: Path,
    name: str,
    image: np.ndarray,
    label: np.ndarray,
    target: np.ndarray,
    transform: Any,
    image_tags: Mapping[str, str],
    tags: Mapping[str, str],
    blocksize: int | None = None,
) -> tuple[str, str, str]:
    rel = (f"images/{name}.tif", f"labels/{name}.tif", f"targets/{name}.tif")
    write_tile(root / rel[0], image, transform=transform, tags=image_tags, blocksize=blocksize)
    write_label(root / rel[1], label, transform=transform, tags=tags)
    write_target(root / rel[2], target, transform=transform, tags=tags)
    return rel


def check_dense_output(out_dir: str | os.PathLike[str]) -> Path:
    """Refuse an output root (or its ``images``, ``labels``, ``targets`` folders) that cannot be
    written, before anything is generated.

    Raises:
        OutputPathError: a file in the way of one of the folders, or a folder not writable.
    """
    root = check_output(out_dir, kind="dir", param="out_dir")
    for sub in ("images", "labels", "targets"):
        check_output(root / sub, kind="dir", param="out_dir")
    return root


def _uncommit(root: Path) -> None:
    """Remove an earlier generation's tables before any raster is replaced: ``index.csv`` is
    written last, so a run stopped half-way leaves no table pairing a new image with an old
    label (training on such a folder is refused for the missing table, not done on mixed
    pairs)."""
    for table in ("index.csv", "classes.csv"):
        (root / table).unlink(missing_ok=True)


def _write_tables(root: Path, rows: list[list[str]], pixels: np.ndarray) -> tuple[Path, Path]:
    index_csv = write_csv(root / "index.csv", DENSE_COLUMNS, rows)
    class_rows = [[i, c, int(pixels[i])] for i, c in enumerate(CLASSES)]
    classes_csv = write_csv(root / "classes.csv", ("value", "class", "pixels"), class_rows)
    return index_csv, classes_csv


def generate_dense_dataset(
    out_dir: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    n_per_class: int = 20,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    progress: bool = False,
) -> DenseDatasetSummary:
    """Write tiles with their label and target rasters, ``index.csv`` and ``classes.csv``.

    The images are those of :func:`~msclip.synthetic.dataset.generate_dataset` with the same
    ``classes``, ``n_per_class``, ``size`` and ``seed``, byte for byte (with ``layout="flat"``
    they are the same files). Each class's tiles are split into train / val / test by a seeded
    shuffle (see the module docstring for the layout).

    Args:
        out_dir: dataset root (created).
        classes: main classes of the tiles (default: all).
        n_per_class: tiles per class.
        size: tile side in pixels, or ``(height, width)``.
        seed: base seed; the same seed writes the same bytes.
        splits: fractions of train, val and test tiles (per class).
        progress: show a tqdm progress bar (for command-line use).

    Returns:
        A :class:`DenseDatasetSummary`.

    Raises:
        SyntheticDataError: bad count, size, seed or splits.
        OutputPathError: the output root or one of its folders cannot be written.
        UnknownClassError: unknown class name.
    """
    fractions = _check_splits(splits)
    chosen = class_list(classes)
    tile_shape(size)
    check_seed(seed)
    check_count(n_per_class, "n_per_class")
    root = check_dense_output(out_dir)
    _uncommit(root)
    split_of = {c: _assign_splits(n_per_class, fractions, seed, CLASS_INDEX[c]) for c in chosen}
    for name, fraction in zip(SPLITS, fractions):
        if fraction > 0 and not any(name in v for v in split_of.values()):
            logger.warning(
                "split %s (fraction %g) gets no tile: %d tiles per class round to none; give "
                "more tiles per class (n_per_class) or a larger fraction",
                name, fraction, n_per_class,
            )  # fmt: skip
    samples = iter_samples(chosen, n_per_class, size, seed)
    if progress:
        from msclip.progress import progress_bar

        total = len(chosen) * n_per_class
        samples = progress_bar(samples, total=total, unit="tile", desc=f"dense -> {root}")
    rows: list[list[str]] = []
    counts = dict.fromkeys(SPLITS, 0)
    pixels = np.zeros(len(CLASSES), dtype=np.int64)
    done = dict.fromkeys(chosen, 0)
    for s in samples:
        split = split_of[s.info.main][done[s.info.main]]
        done[s.info.main] += 1
        tags = {"GENERATOR": GENERATOR_TAG, "CLASS": s.info.main, "SEED": str(seed)}
        transform = tile_transform(s.index, size)
        rel = _write_dense(root, s.name, s.image, s.info.label_map, s.info.fcover, transform,
                           tile_tags(s, seed), tags)  # fmt: skip
        rows.append([*rel, split])
        counts[split] += 1
        pixels += np.bincount(s.info.label_map.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
    index_csv, classes_csv = _write_tables(root, rows, pixels)
    logger.info("wrote %d dense tiles (%s) to %s", len(rows), counts, root)
    warn_stale(root, [f for row in rows for f in row[:3]], "index.csv")
    files = tuple(r[0] for r in rows)
    return DenseDatasetSummary(root, len(rows), counts, index_csv, classes_csv, files)


def write_scene(
    out_dir: str | os.PathLike[str],
    size: int | tuple[int, int] = 1024,
    seed: int = 0,
    *,
    region_size: float = 128.0,
    name: str = "scene",
) -> DenseDatasetSummary:
    """Write one large scene (:func:`generate_scene`) with its label and target rasters.

    The layout is that of :func:`generate_dense_dataset` with one row, split ``test``; the image
    is tiled in 256 x 256 blocks for windowed reading. The scene of seed ``s`` is drawn from the
    seed ``(s, 40000)``, a stream of its own.

    Args:
        out_dir: output root (created).
        size: side in pixels, or ``(height, width)``; at most :data:`MAX_SCENE_SIDE`.
        seed: seed; the same seed writes the same bytes.
        region_size: typical side of a land-cover region in pixels.
        name: file stem of the three rasters.

    Returns:
        A :class:`DenseDatasetSummary`.

    Raises:
        SyntheticDataError: bad size, seed or region size.
        OutputPathError: the output root or one of its folders cannot be written.
    """
    check_seed(seed)
    if not name or name in (".", "..") or any(c in name for c in "/\\:") or name.startswith("."):
        raise SyntheticDataError(
            f"name {name!r} must be a plain file stem (no folder separators, not empty or "
            "hidden): the rasters are <out>/images/<name>.tif, labels/ and targets/",
            param="name",
        )
    root = check_dense_output(out_dir)  # before minutes of generation, not after
    image, label, target = generate_scene(
        size, np.random.default_rng((seed, _SCENE_STREAM)), region_size=region_size
    )
    _uncommit(root)
    pixels = np.bincount(label.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
    present = [c for i, c in enumerate(CLASSES) if pixels[i]]
    tags = {"GENERATOR": GENERATOR_TAG, "LAYOUT": "landscape", "SEED": str(seed)}
    image_tags = {**tags, "CLASSES": ",".join(present)}
    transform = tile_transform(0, label.shape)
    rel = _write_dense(root, name, image, label, target, transform, image_tags, tags,
                       blocksize=256)  # fmt: skip
    index_csv, classes_csv = _write_tables(root, [[*rel, "test"]], pixels)
    logger.info("wrote a %dx%d scene of %d classes to %s", *label.shape, len(present), root)
    warn_stale(root, rel, "index.csv")
    return DenseDatasetSummary(root, 1, {"test": 1}, index_csv, classes_csv, (rel[0],))
