"""Per-pixel labelled data for dense heads: image / label raster pairs, checked and split.

A dense data set is a list of images, each with one raster per task on exactly its grid: a
class-index raster (``segmentation``) or a raster of values (``pixel-regression``). Sources:

* **two folders** (:func:`from_folders`): ``image_dir/<name>`` and ``label_dir/<name>`` matched
  by file name (an image without a label, or a label without an image, is refused by name);
* **a CSV table** (:func:`from_csv`): an image column and one column per task (relative paths
  start from the table's folder, or ``data_root``), with an optional ``split`` column. The
  table written by ``msclip-scenes dense`` (``index.csv``: ``image,label,target,split``) is used
  as it is: ``label`` holds the land-cover rasters, ``target`` the vegetation-cover rasters, and
  the ``classes.csv`` next to it names the classes.

Every pair is checked with rasterio before any work: same size, same CRS and same affine
transform (to 1e-4 of a pixel); a label raster with no georeference at all (a mask written from
an array) needs only the image's size, and is named in a warning; a mismatch raises
:class:`~msclip.errors.LabelRasterMismatchError` naming both files and what differs. Splits come
from the ``split`` column, else the seeded rule of :func:`msclip.heads.data.split_indices`
(images permuted by ``default_rng((seed, 0))``).

Reading (:class:`DenseSamples`): the image's raw values are normalised per pixel by
:class:`msclip.heads.scene_predict.ScenePreprocess` (the model's band selection, statistics and
wavelength mapping, no resizing: every pixel keeps its label). A label pixel equal to the label
file's nodata value (NaN when the nodata is NaN) becomes ``ignore_index``; a target pixel equal
to its file's nodata (or the ``nodata`` given), or NaN, becomes NaN, which the losses and
metrics mask out; pixels where every band of the image is nodata are masked the same way.
Regression targets are multiplied by the task's ``scale`` on reading (as image-level regression
does), so losses, metrics and predicted rasters are all in scaled units.

Training crops (:func:`random_crop_batch`): a square window of ``crop_size`` pixels at a seeded
random position and random horizontal / vertical flips, the same for the image and its targets;
images smaller than the crop are padded (image by reflection, labels with ``ignore_index``,
targets with NaN) so padding never counts.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msclip.errors import (
    HeadConfigError,
    HeadInputError,
    LabelRasterMismatchError,
    shown_when_quiet,
)

__all__ = [
    "DENSE_KINDS",
    "DenseData",
    "DenseSamples",
    "DenseTarget",
    "check_alignment",
    "from_csv",
    "from_folders",
    "random_crop_batch",
]

logger = logging.getLogger(__name__)

#: Kinds of dense targets.
DENSE_KINDS: tuple[str, ...] = ("segmentation", "pixel-regression")
_RASTER_EXT = (".tif", ".tiff")


@dataclass
class DenseTarget:
    """One task's targets in a dense data set.

    Attributes:
        name: the task's name (key of the model's outputs and of the records).
        kind: ``segmentation`` or ``pixel-regression``.
        column: where its rasters come from (CSV column, or ``label_dir``).
        names: class labels in class-index order, or the output's name.
        prompt_names: class names for prompts (zero-shot dense maps), when known.
        ignore_index: label value excluded from losses and metrics (segmentation).
        nodata: target value marking unlabelled pixels (regression; NaN always does).
        scale: regression targets are read as ``value * scale``.
    """

    name: str
    kind: str
    column: str
    names: list[str] = field(default_factory=list)
    prompt_names: list[str] | None = None
    ignore_index: int | None = 255
    nodata: float | None = None
    scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "column": self.column,
            "names": self.names,
            "prompt_names": self.prompt_names,
            "ignore_index": self.ignore_index,
            "nodata": self.nodata,
            "scale": self.scale,
        }


@dataclass
class DenseData:
    """Images, their per-task rasters and the splits.

    Attributes:
        name: the data's name in records.
        images: image paths.
        rasters: task name -> one raster path per image.
        tasks: the :class:`DenseTarget` of each task, in order.
        splits: ``train`` / ``val`` / ``test`` -> sorted indices into :attr:`images`.
        split_source: how each split was made.
        source: where the data came from (JSON-ready).
    """

    name: str
    images: list[str]
    rasters: dict[str, list[str]]
    tasks: list[DenseTarget]
    splits: dict[str, np.ndarray]
    split_source: dict[str, str]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def task(self, name: str) -> DenseTarget:
        for t in self.tasks:
            if t.name == name:
                return t
        raise HeadConfigError(f"no task {name!r}; tasks: {[t.name for t in self.tasks]}")

    def item_names(self) -> list[str]:
        return list(self.images)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts: source, tasks, split sizes and sources."""
        return {
            "name": self.name,
            "task": "+".join(t.kind for t in self.tasks),
            **self.source,
            "n_samples": len(self.images),
            "splits": {s: len(ix) for s, ix in self.splits.items()},
            "split_source": dict(self.split_source),
            "tasks": [t.to_dict() for t in self.tasks],
        }


# -- checks ---------------------------------------------------------------------------------------
def check_alignment(image: str | os.PathLike, raster: str | os.PathLike) -> bool:
    """Refuse a label / target raster that is not on its image's grid.

    A raster with no georeference at all (no CRS, no geotransform, no GCPs: a mask written from
    an array, a PNG) carries no place to compare; of the image's size, it is taken as on the
    image's pixel grid.

    Returns:
        Whether ``raster`` has no georeference and was taken as on the image's pixel grid.

    Raises:
        LabelRasterMismatchError: size, CRS or transform differ (both files named).
        HeadInputError: a file cannot be opened, or the raster has more than one band (a
            task reads one).
    """
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():  # an ungeoreferenced raster is handled below
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(image) as a, rasterio.open(raster) as b:
                problems = []
                if (a.height, a.width) != (b.height, b.width):
                    problems.append(f"size {a.width}x{a.height} vs {b.width}x{b.height}")
                # nothing but the size to compare with a raster that has no georeference
                no_georef = _no_georeference(b) and not _no_georeference(a)
                if not no_georef and a.crs != b.crs:
                    problems.append(f"CRS {a.crs} vs {b.crs}")
                if not no_georef and not _same_grid(a.transform, b.transform, a.width, a.height):
                    problems.append(
                        f"transform {tuple(a.transform)[:6]} vs {tuple(b.transform)[:6]}"
                    )
                bands = b.count
    except RasterioIOError as err:
        raise HeadInputError(f"cannot open {image} or {raster}: {err}") from err
    if bands != 1:  # a task reads band 1: the others would be dropped unseen
        raise HeadInputError(
            f"label raster {raster} (of image {image}) has {bands} bands; a dense task reads one "
            "band of class indices or values: convert a one-hot or colour mask to one band of "
            "class indices, and give each target band its own raster and task",
            param="images",
        )
    if problems:
        raise LabelRasterMismatchError(
            f"label raster {raster} is not on the grid of image {image}: "
            f"{'; '.join(problems)}; resample or crop the label to the image's grid",
            param="images",
        )
    return no_georef


def _no_georeference(ds: Any) -> bool:
    """Whether an open raster has no georeference: none that a map of it would carry
    (:func:`msclip.tiling.map_transform`: no CRS, the identity transform) and no GCPs."""
    from msclip.tiling import map_transform

    return map_transform(ds.crs, ds.transform) is None and not ds.gcps[0]


#: Largest offset, in pixels, between the corners of two grids taken as the same grid: float
#: rounding of the origins (a tool's reprojection arithmetic) is far below it in any CRS, a shift
#: by any visible fraction of a pixel is far above it.
GRID_TOLERANCE_PX = 1e-4


def _same_grid(a: Any, b: Any, width: int, height: int) -> bool:
    """Whether the affine transforms ``a`` and ``b`` put the corners of a ``width`` x ``height``
    raster at the same places, to :data:`GRID_TOLERANCE_PX` of ``a``'s pixels (a tolerance in
    pixels, not CRS units: the same for a metre grid and a degree grid)."""
    from affine import TransformNotInvertibleError

    try:
        inv = ~a
    except TransformNotInvertibleError:  # a degenerate transform: only itself is the same grid
        return a == b
    m = inv @ b  # b's pixel coordinates to a's
    for col, row in ((0, 0), (width, 0), (0, height), (width, height)):
        x, y = m @ (col, row)
        if abs(x - col) > GRID_TOLERANCE_PX or abs(y - row) > GRID_TOLERANCE_PX:
            return False
    return True


def _check_exists(paths: Sequence[str], where: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise HeadInputError(
            f"{where}: {len(missing)} file(s) not found, e.g. {missing[0]}", param="images"
        )


def _is_nodata(arr: np.ndarray, nodata: float) -> np.ndarray:
    """Where ``arr`` holds ``nodata`` (its NaN pixels when ``nodata`` is NaN)."""
    if math.isnan(nodata):
        return np.isnan(arr) if np.issubdtype(arr.dtype, np.floating) else np.zeros(arr.shape, bool)
    return arr == nodata


# -- classes -------------------------------------------------------------------------------------
def _classes_from_csv(path: Path) -> list[str] | None:
    """Class names in value order from a ``value,class`` table (more columns, such as colours,
    are left alone; the header's case and a spreadsheet's byte-order mark or semicolons do not
    matter, as for every table); ``None`` when it has no such columns.

    Raises:
        HeadInputError: an unreadable table, a value that is not a whole number, values that
            are not ``0..K-1``.
    """
    from msclip.heads.data import _read_table

    try:
        columns, rows = _read_table(path)
    except HeadInputError as err:
        raise HeadInputError(str(err), param="classes") from None
    by_name = {c.strip().lower(): c for c in columns}
    if "value" not in by_name or "class" not in by_name:
        return None
    rows = [{"value": r[by_name["value"]], "class": r[by_name["class"]]} for r in rows]
    values = []
    for line, r in enumerate(rows, start=2):
        text = (r["value"] or "").strip()
        try:
            values.append(int(text))
        except ValueError:
            raise HeadInputError(
                f"{path}, line {line}: class value {text!r} is not a whole number; give each "
                "class the label value of its pixels",
                param="classes",
            ) from None
    if sorted(values) != list(range(len(values))):
        codes = sorted(set(values))
        remap = ", ".join(f"{v} -> {i}" for i, v in enumerate(codes[:3]))
        raise HeadInputError(
            f"{path}: class values {values} are not 0..{len(values) - 1}: a dense head reads "
            "label rasters of class indices 0..K-1; if the values are a product's codes (ESA "
            f"WorldCover 10..100), remap the label rasters ({remap} ...) and number the table "
            "from 0 in the same order",
            param="classes",
        )
    by = {v: (r["class"] or "").strip() for v, r in zip(values, rows)}
    return [by[i] for i in range(len(by))]


def _class_names(
    classes: str | None, near: Path | None, label_paths: Sequence[str], ignore: int | None
) -> tuple[list[str], list[str] | None]:
    """``(labels, prompt names)`` of a segmentation task (see :func:`from_csv`)."""
    if classes is not None:
        if classes.endswith(".csv"):
            names = _classes_from_csv(Path(classes))
            if names is None:
                raise HeadInputError(
                    f"{classes}: a class table needs 'value' and 'class' columns", param="classes"
                )
            return names, list(names)
        from msclip.eval.datasets import load_classnames

        cl = load_classnames(classes)
        return list(cl.labels), list(cl.names)
    if near is not None and (near / "classes.csv").is_file():
        names = _classes_from_csv(near / "classes.csv")
        if names is not None:
            return names, list(names)
        shown_when_quiet.warning(
            "%s has no 'value' and 'class' columns: not read as the class list; the classes "
            "are numbered from the labels (give the class list: classes)",
            near / "classes.csv",
        )
    import rasterio

    top = -1
    seen: set[int] = set()
    for p in label_paths:
        with rasterio.open(p) as src:
            arr = src.read(1)
            nd = src.nodata
        v = arr[(arr != ignore) if ignore is not None else np.ones(arr.shape, bool)]
        if nd is not None:
            v = v[~_is_nodata(v, nd)]
        if v.size:
            top = max(top, int(v.max()))
            seen.update(int(x) for x in np.unique(v) if float(x).is_integer())
    if top < 0:
        raise HeadInputError("no labelled pixel in the label rasters", param="images")
    logger.info("no class names given: %d classes numbered from the labels", top + 1)
    if len(seen) >= 2 and 2 * len(seen) < top + 1:  # codes (10, 20 ... 100), not indices
        codes = sorted(seen)
        shown_when_quiet.warning(
            "the training labels hold %d values (%s) up to %d: the head gets %d classes, %d of "
            "them never seen; if the values are a product's codes (ESA WorldCover 10..100), "
            "remap the label rasters to 0..%d and give the class list (classes)",
            len(codes), ", ".join(map(str, codes[:12])) + (" ..." if len(codes) > 12 else ""),
            top, top + 1, top + 1 - len(codes), len(codes) - 1,
        )  # fmt: skip
    return [f"class_{i}" for i in range(top + 1)], None


# -- sources -------------------------------------------------------------------------------------
def _finish(
    name: str,
    images: list[str],
    rasters: dict[str, list[str]],
    tasks: list[DenseTarget],
    split_names: list[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    source: dict[str, Any],
    classes: str | None,
    near: Path | None,
    split_column: str | None = None,
) -> DenseData:
    from msclip.heads.data import SPLITS, _check_splits, split_indices

    if not images:
        raise HeadInputError(f"{name}: no image found", param="images")
    _check_exists(images, name)
    for t in tasks:
        _check_exists(rasters[t.name], f"{name} ({t.column})")
        pixel_grid = [b for a, b in zip(images, rasters[t.name]) if check_alignment(a, b)]
        if pixel_grid:  # an assumption about the input: said under --quiet too
            shown_when_quiet.warning(
                "%s: %d %s raster(s) of task %s have no georeference (e.g. %s); each is taken as "
                "on its image's pixel grid, whose size it has",
                name, len(pixel_grid), t.column, t.name, pixel_grid[0],
            )  # fmt: skip
    if split_names is not None:
        aliases = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}
        norm = [aliases.get(s.strip().lower(), s.strip().lower()) for s in split_names]
        bad = sorted({s for s in norm if s not in SPLITS})
        if bad:
            raise HeadInputError(f"{name}: unknown split names {bad}; use train, val, test")
        splits = {s: np.flatnonzero(np.asarray(norm) == s).astype(np.int64) for s in SPLITS}
        split_source = dict.fromkeys(SPLITS, "split column")
        for s in SPLITS:
            if len(splits[s]) == 0:  # the fractions do not apply: say what does
                raise HeadInputError(
                    f"{name}: the {s} split is empty (no row has {split_column or 'split'} = "
                    f"{s}); give it rows, or drop the column to split by the seeded rule",
                    param="split_column",
                )
    else:
        splits = split_indices(len(images), None, val_fraction, test_fraction, seed)
        note = f"seeded split (seed {seed}), val_fraction {val_fraction}, test_fraction " + str(
            test_fraction
        )
        split_source = dict.fromkeys(SPLITS, note)
    _check_splits(splits, len(images), name)
    for t in tasks:
        if t.kind == "segmentation" and not t.names:
            train = [rasters[t.name][i] for i in splits["train"]]
            t.names, t.prompt_names = _class_names(classes, near, train, t.ignore_index)
        elif t.kind == "pixel-regression" and not t.names:
            t.names = [t.column]
        if t.kind == "segmentation":
            _check_label_values(t, rasters[t.name])
    return DenseData(name, images, rasters, tasks, splits, split_source, source)


def _check_label_values(t: DenseTarget, paths: Sequence[str]) -> None:
    """Every label raster of a segmentation task holds class values ``0..K-1``, the ignore index
    or the file's nodata (before any work: a bad value in a test raster must not surface after
    training). A nodata value that is also a class hides that class's pixels: warned, once.

    Raises:
        LabelError: a value outside the classes, naming the file and the values.
    """
    import rasterio

    from msclip.errors import LabelError
    from msclip.heads.losses import ClassCounter

    k = len(t.names)
    counter = ClassCounter(k, t.ignore_index)  # its per-file count checks every value
    hidden: dict[int, int] = {}
    for path in paths:
        try:
            counter.update_file(path)
        except LabelError as err:
            if err.param in ("labels", "ignore_index"):  # another class list is no fix: not
                # class indices at all, or negative values (unlabelled pixels)
                raise LabelError(f"{err} (task {t.name!r})", param=err.param) from None
            raise LabelError(
                f"{err} (task {t.name!r}; or give the class list that includes them: classes)",
                param="classes",
            ) from None
        with rasterio.open(path) as src:
            nodata = src.nodata
        if nodata is not None and float(nodata).is_integer() and 0 <= int(nodata) < k:
            hidden[int(nodata)] = hidden.get(int(nodata), 0) + 1
    for value, n in hidden.items():
        logger.warning(
            "%d label raster(s) of task %s declare nodata %d, which is also the class %r: its "
            "pixels are ignored in training and metrics; if %d is a class, remove the nodata "
            "value from the label files (gdal_edit.py -unsetnodata)",
            n, t.name, value, t.names[value], value,
        )  # fmt: skip


def from_csv(
    path: str | os.PathLike,
    tasks: Sequence[DenseTarget],
    image_column: str = "image",
    split_column: str | None = "split",
    data_root: str | None = None,
    classes: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> DenseData:
    """Pairs listed in a CSV table (see the module docstring).

    Args:
        path: the table.
        tasks: the tasks; each reads its rasters from its ``column``.
        image_column: column of the image paths.
        split_column: column of split names, if the table has it.
        data_root: folder relative paths start from (default: the table's folder).
        classes: class-name file (``.txt``/``.yaml`` of :mod:`msclip.eval.datasets`, or a
            ``value,class`` CSV); default the ``classes.csv`` next to the table, else classes
            numbered from the labels.
        val_fraction, test_fraction, seed: the seeded split when there is no split column.
        name: the data's name (default: the table's folder name).

    Raises:
        HeadInputError: missing columns or files, a bad split name.
        LabelRasterMismatchError: an image and a raster on different grids.
    """
    from msclip.heads.data import _read_table

    p = Path(path)
    columns, rows = _read_table(p)  # commas, or a spreadsheet's semicolons or tabs
    wanted = [image_column, *(t.column for t in tasks)]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise HeadInputError(
            f"{p}: columns {missing} not found (columns: {columns}); name the image column "
            "with image_column and each task's with label_column or its column",
            param="label_column",
        )
    root = Path(data_root) if data_root else p.parent

    def full(line: int, row: dict[str, str], column: str) -> str:
        v = (row.get(column) or "").strip()
        if not v:  # the folder itself would be taken for the file
            raise HeadInputError(
                f"{p}, line {line}: the {column!r} cell is empty; give every row an image and "
                "a raster for each task, or drop the row",
                param="csv",
            )
        q = Path(v)
        return str(q if q.is_absolute() else root / q)

    images = [full(n, r, image_column) for n, r in enumerate(rows, start=2)]
    rasters = {t.name: [full(n, r, t.column) for n, r in enumerate(rows, start=2)] for t in tasks}
    splits = None
    if split_column and split_column in columns:
        splits = [r[split_column] for r in rows]
    label = name or (p.parent.name if p.stem == "index" else p.stem)
    source = {"source": "csv", "csv": str(p.resolve()), "root": str(root.resolve())}
    return _finish(
        label,
        images,
        rasters,
        list(tasks),
        splits,
        val_fraction,
        test_fraction,
        seed,
        source,
        classes,
        p.parent,
        split_column,
    )


def from_folders(
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    task: DenseTarget,
    classes: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> DenseData:
    """Images and label rasters in two folders, matched by file name.

    Raises:
        HeadInputError: an image without a label or a label without an image (named).
        LabelRasterMismatchError: an image and its label on different grids.
    """
    a, b = Path(image_dir), Path(label_dir)
    for d, what in ((a, "image_dir"), (b, "label_dir")):
        if not d.is_dir():
            raise HeadInputError(f"{d} is not a folder", param=what)
    # hidden files (macOS ._* forks, an interrupted write's .tmp-* file) are not samples
    imgs = {q.name: q for q in sorted(a.iterdir())
            if q.suffix.lower() in _RASTER_EXT and not q.name.startswith(".")}  # fmt: skip
    labs = {q.name: q for q in sorted(b.iterdir())
            if q.suffix.lower() in _RASTER_EXT and not q.name.startswith(".")}  # fmt: skip
    only_i, only_l = sorted(set(imgs) - set(labs)), sorted(set(labs) - set(imgs))
    if only_i or only_l:
        raise HeadInputError(
            f"images and labels are matched by file name: {len(only_i)} image(s) in {a} have no "
            f"label in {b} (e.g. {only_i[:3]}), {len(only_l)} label(s) have no image "
            f"(e.g. {only_l[:3]})",
            param="label_dir",
        )
    names = sorted(imgs)
    images = [str(imgs[n]) for n in names]
    rasters = {task.name: [str(labs[n]) for n in names]}
    source = {
        "source": "folders",
        "image_dir": str(a.resolve()),
        "label_dir": str(b.resolve()),
        "root": str(a.resolve()),
    }
    return _finish(
        name or a.name,
        images,
        rasters,
        [task],
        None,
        val_fraction,
        test_fraction,
        seed,
        source,
        classes,
        b.parent,
    )


# -- reading ------------------------------------------------------------------------------------
class DenseSamples:
    """Normalised images and their per-task targets, read on demand (kept in memory when
    ``keep`` is set).

    Args:
        data: the data set.
        preprocess: a :class:`~msclip.heads.scene_predict.ScenePreprocess` of the model.
        input_bands: band names of files that do not name their bands.
        sensor: sensor of local band names.
        nodata: image nodata value overriding the files'.
        keep: keep every read sample in memory.
    """

    def __init__(
        self,
        data: DenseData,
        preprocess: Any,
        input_bands: Sequence[str] | None = None,
        sensor: str | None = None,
        nodata: float | None = None,
        keep: bool = False,
    ) -> None:
        self.data = data
        self.preprocess = preprocess
        self.input_bands = input_bands
        self.sensor = sensor
        self.nodata = nodata
        self.keep = keep
        self._kept: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._preps: dict[tuple[Any, ...], Any] = {}

    def __len__(self) -> int:
        return len(self.data)

    def _prep(self, bands: tuple[str, ...], nodata: float | None) -> Any:
        key = (bands, nodata)
        if key not in self._preps:
            self._preps[key] = self.preprocess.with_input(bands, nodata)
        return self._preps[key]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(image [C_model, H, W] float32, {task: labels [H, W] int64 | targets [H, W]
        float32})``."""
        if i in self._kept:
            return self._kept[i]
        import rasterio

        from msclip.io import read_raster

        path = self.data.images[i]
        raster = read_raster(path, bands=self.input_bands, sensor=self.sensor)
        nodata = self.nodata if self.nodata is not None else raster.nodata
        prep = self._prep(tuple(raster.bands), nodata)
        image = prep(raster.data)
        valid = prep.valid(raster.data)
        targets: dict[str, torch.Tensor] = {}
        for t in self.data.tasks:
            with rasterio.open(self.data.rasters[t.name][i]) as src:
                arr = src.read(1)
                file_nodata = src.nodata
            if t.kind == "segmentation":
                ignore = 255 if t.ignore_index is None else int(t.ignore_index)
                # int64 first: an ignore index the label's own dtype cannot hold (300 in uint8,
                # 255 in int8) would wrap into a class
                missing = _is_nodata(arr, file_nodata) if file_nodata is not None else None
                lab = np.where(missing, 0, arr) if missing is not None else arr
                lab = lab.astype(np.int64)
                if missing is not None:
                    lab[missing] = ignore
                lab[~valid] = ignore
                targets[t.name] = torch.from_numpy(lab)
            else:
                val = arr.astype(np.float32)
                for nd in (file_nodata, t.nodata):
                    if nd is not None and not math.isnan(nd):
                        val[arr == nd] = np.nan
                val[~valid] = np.nan
                if t.scale != 1.0:
                    val = val * np.float32(t.scale)
                targets[t.name] = torch.from_numpy(val)
        item = (image, targets)
        if self.keep:
            self._kept[i] = item
        return item


def _fill_value(t: DenseTarget) -> float:
    if t.kind == "segmentation":
        return float(255 if t.ignore_index is None else t.ignore_index)
    return float("nan")


def random_crop_batch(
    samples: DenseSamples,
    rows: Sequence[int],
    crop_size: int,
    rng: np.random.Generator,
    flip: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A training batch: one random ``crop_size`` window (and flips) per image.

    Args:
        samples: the readable samples.
        rows: image indices of the batch.
        crop_size: side of the crops.
        rng: the batch's generator (seeded by the caller, so a resumed run draws the same).
        flip: random horizontal and vertical flips.

    Returns:
        ``(images [B, C, S, S], {task: [B, S, S]})``.
    """
    imgs, tgts = [], {t.name: [] for t in samples.data.tasks}
    s = int(crop_size)
    for i in rows:
        x, y = samples[int(i)]
        h, w = x.shape[-2:]
        ph, pw = max(0, s - h), max(0, s - w)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = torch.nn.functional.pad(x[None], (0, pw, 0, ph), mode=mode)[0]
            y = {
                k: torch.nn.functional.pad(
                    v, (0, pw, 0, ph), value=_fill_value(samples.data.task(k))
                )
                for k, v in y.items()
            }
            h, w = x.shape[-2:]
        r0 = int(rng.integers(0, h - s + 1))
        c0 = int(rng.integers(0, w - s + 1))
        fh, fv = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if flip else (False, False)
        xc = x[:, r0 : r0 + s, c0 : c0 + s]
        yc = {k: v[r0 : r0 + s, c0 : c0 + s] for k, v in y.items()}
        if fh:
            xc = xc.flip(-1)
            yc = {k: v.flip(-1) for k, v in yc.items()}
        if fv:
            xc = xc.flip(-2)
            yc = {k: v.flip(-2) for k, v in yc.items()}
        imgs.append(xc)
        for k, v in yc.items():
            tgts[k].append(v)
    return torch.stack(imgs), {k: torch.stack(v) for k, v in tgts.items()}
