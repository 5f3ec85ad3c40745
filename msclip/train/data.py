"""Image-caption data for contrastive pretraining.

* :func:`load_pairs` reads a CSV or Parquet table of image paths and one or more caption columns
  (the ``captions.csv`` written by :mod:`msclip.synthetic` is accepted as it is: ``image``,
  ``caption``, ``caption_2``, ``caption_3``, ``label``; paths relative to the table's folder).
  Rows whose image is missing or whose captions are all empty are found up front.
* :class:`PairDataset` reads rasters through the core (:class:`msclip.SpectralPreprocess`, so
  bands are matched by name) and applies band-agnostic augmentations to the band tensor: a random
  resized crop (the sampling of Szegedy et al. 2015, "Going deeper with convolutions", as in
  torchvision's ``RandomResizedCrop``) of the raw raster, resized to the model size, then
  horizontal and vertical flips.
* :class:`EpochBatchSampler` cuts a seeded permutation of each epoch into global batches and
  gives every process a contiguous slice, so that the features gathered across processes are in
  the same order as the batch of a single process.

Every random choice of a sample (its caption, crop and flips) comes from a generator seeded by
``(seed, epoch, index)``: the data stream does not depend on the number of processes or loader
workers, and a resumed run sees exactly the samples the interrupted run would have seen.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msclip.errors import BadSampleError, MSCLIPError, TooManyBadSamplesError
from msclip.io import IMAGE_EXTENSIONS
from msclip.io.images import class_folders, folder_images
from msclip.io.tables import table_separator, where_not_utf8
from msclip.spectral.nodata import missing_pixels
from msclip.spectral.preprocess import SpectralPreprocess

__all__ = [
    "BadSampleError",
    "ClassFolderDataset",
    "EpochBatchSampler",
    "PairCollator",
    "PairDataset",
    "PairTable",
    "ShardSampler",
    "TooManyBadSamplesError",
    "cut_captions",
    "image_key",
    "load_pairs",
    "row_label",
    "sample_crop",
    "split_pairs",
]

logger = logging.getLogger(__name__)

_CAPTION_N = re.compile(r"^caption_(\d+)$")


def _read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mark one sample as unreadable (not a bug in msclip)."""
    errors: list[type[BaseException]] = [MSCLIPError, OSError, ValueError]
    try:
        from rasterio.errors import RasterioError

        errors.append(RasterioError)
    except ImportError:  # rasterio is a dependency; stay importable without it anyway
        pass
    return tuple(errors)


_READ_ERRORS = _read_errors()


# -- tables ------------------------------------------------------------------------------------
@dataclass
class PairTable:
    """Usable image-caption pairs of a table.

    Attributes:
        paths: absolute image paths.
        captions: the non-empty captions of each image (one or more).
        rows: row number of each pair in the source table.
        n_rows: rows in the source table.
        bad: ``(row, path, reason)`` of rows dropped up front.
        source: the table file.
        digest: SHA-256 of the source table's content as read (every row's image path and
            captions as written, in order): a resumed run checks by it that its data is the
            run's, whatever path spells the file and wherever the table now lies.
    """

    paths: list[str]
    captions: list[list[str]]
    rows: list[int]
    n_rows: int
    bad: list[tuple[int, str, str]] = field(default_factory=list)
    source: str = ""
    digest: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> PairTable:
        """The pairs at ``indices`` (bad rows are kept in full, for counting)."""
        idx = list(indices)
        return PairTable(
            [self.paths[i] for i in idx],
            [self.captions[i] for i in idx],
            [self.rows[i] for i in idx],
            self.n_rows,
            list(self.bad),
            self.source,
            self.digest,
        )


def _read_table(path: str) -> Any:
    import pandas as pd

    try:
        if path.lower().endswith((".csv", ".tsv")):
            return pd.read_csv(path, sep=table_separator(path), dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except ImportError as err:
        raise BadSampleError(
            f"reading the Parquet table {path} needs pyarrow (pip install pyarrow), or convert "
            f"it to CSV ({err})"
        ) from err
    except UnicodeDecodeError as err:
        raise BadSampleError(
            f"table {path} is not UTF-8 text ({err.reason}{where_not_utf8(path)}); save it as "
            "UTF-8 (a spreadsheet's 'CSV UTF-8' format)"
        ) from None
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise BadSampleError(f"cannot read table {path}: {err}") from err


def caption_columns_of(columns: Sequence[str]) -> list[str]:
    """Default caption columns: ``caption`` then ``caption_<n>`` in numeric order."""
    numbered = sorted(
        ((int(m.group(1)), c) for c in columns if (m := _CAPTION_N.match(str(c)))),
    )
    out = ["caption"] if "caption" in columns else []
    return out + [c for _, c in numbered]


def _is_missing(value: Any) -> bool:
    """Whether a table cell is empty: ``None``, NaN, or pandas' ``NA`` / ``NaT`` (a Parquet
    column of pandas' nullable ``string`` dtype, or one ``convert_dtypes()`` made, holds ``NA``,
    whose ``str`` is the text ``<NA>``)."""
    if value is None:
        return True
    import pandas as pd

    try:
        missing = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return isinstance(missing, (bool, np.bool_)) and bool(missing)


def _as_text(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bytes):  # a Parquet binary column
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def _caption_cell(value: Any) -> str | list[str]:
    """The text of a caption cell; a list cell (a Parquet ``list<string>`` column, as captioning
    data sets such as RSICD are published with all captions of an image in one column) gives
    its non-empty texts."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [t for t in (_as_text(v) for v in value) if t]
    return _as_text(value)


def _first_struct(cells: Sequence[Any]) -> dict | None:
    """The first struct (dict) among caption cells and the items of their list cells (a
    Parquet ``struct`` column, or a list of them such as ``[{raw, tokens}, ...]``), or ``None``."""
    for v in cells:
        for item in v if isinstance(v, (list, tuple, np.ndarray)) else (v,):
            if isinstance(item, dict):
                return item
    return None


def _cell_texts(cell: str | list[str]) -> list[str]:
    if isinstance(cell, list):
        return cell
    return [cell] if cell else []


def row_label(r: int) -> str:
    """Where data row ``r`` (0-based) of a table is, as a reader counts: ``row 57 (line 58)``
    (the header is line 1)."""
    return f"row {r + 1} (line {r + 2})"


#: Rows of a pair table whose captions :func:`cut_captions` checks at most (spread evenly over
#: the table): tokenizing a long caption takes ~45 us, so a table of 10^6 long descriptions
#: would take most of a minute before the first step; 20,000 rows take about a second and
#: estimate the share of cut captions to within a percent.
CAPTION_CHECK_ROWS = 20_000


def cut_captions(
    table: PairTable, tokenizer: Any, most: int | None = CAPTION_CHECK_ROWS
) -> tuple[list[tuple[int, str]], int]:
    """``(row, caption)`` of the captions of ``table`` longer than the tokenizer's context
    (the text tower's 77 tokens): they are trained on as their first tokens, the words after
    the cut are never seen (:func:`msclip.tokenizer.cut_at_context`).

    Args:
        table: the pairs.
        tokenizer: the model's tokenizer.
        most: check the captions of at most this many rows, spread evenly over the table
            (``None``: every row).

    Returns:
        The cut captions found, and the number of captions checked.
    """
    from msclip.tokenizer import cut_at_context

    n = int(getattr(tokenizer, "context_length", 0) or 0)
    if not n or not hasattr(tokenizer, "encode"):
        return [], 0
    picked: Any = range(len(table.rows))
    if most is not None and len(table.rows) > most:
        picked = np.unique(np.linspace(0, len(table.rows) - 1, most).round().astype(np.int64))
    cut: list[tuple[int, str]] = []
    checked = 0
    for i in picked:
        r, captions = table.rows[int(i)], table.captions[int(i)]
        checked += len(captions)
        cut += [(r, c) for c in captions if cut_at_context(tokenizer, c, n)]
    return cut, checked


def load_pairs(
    path: str | os.PathLike,
    image_column: str = "image",
    caption_columns: Sequence[str] | None = None,
    data_root: str | os.PathLike | None = None,
) -> PairTable:
    """Read an image-caption table and drop rows that cannot be used.

    Args:
        path: ``.csv`` (comma- or tab-separated), ``.tsv`` or ``.parquet`` file.
        image_column: column of image paths; relative paths start from ``data_root``, or from
            the table's folder.
        caption_columns: caption columns (default: ``caption`` and ``caption_<n>``).
        data_root: base folder of relative image paths.

    Returns:
        The usable pairs and the dropped rows with their reasons (missing file, empty file,
        unsupported extension, no caption).

    Raises:
        BadSampleError: unreadable table or missing columns.
    """
    p = os.fspath(path)
    df = _read_table(p)
    columns = [str(c) for c in df.columns]
    if image_column not in columns:
        raise BadSampleError(
            f"table {p} has no image column {image_column!r}; its columns are {columns} "
            "(choose one with the option image_column)",
            param="image_column",
        )
    cols = list(caption_columns) if caption_columns else caption_columns_of(columns)
    missing = [c for c in cols if c not in columns]
    if not cols or missing:
        raise BadSampleError(
            f"table {p} has no caption column{'s ' + str(missing) if missing else ''}; its "
            f"columns are {columns} (name them with the option caption_columns)",
            param="caption_columns",
        )
    root = Path(data_root) if data_root is not None else Path(p).resolve().parent
    cells = df[image_column].tolist()
    embedded = next(
        (v for v in cells if isinstance(v, (dict, bytes, bytearray, list, tuple, np.ndarray))),
        None,
    )
    if embedded is not None:
        kind = type(embedded).__name__
        keys = f" with keys {sorted(map(str, embedded))}" if isinstance(embedded, dict) else ""
        raise BadSampleError(
            f"table {p}: image column {image_column!r} holds {kind} values{keys}, not file paths "
            "(images embedded in the table, as Hugging Face datasets stores them in Parquet, are "
            "not read); write the images out as files and give a column of their paths "
            "(image_column)",
            param="image_column",
        )
    images = [_as_text(v) for v in cells]
    for c in cols:
        struct = _first_struct(df[c].tolist())
        if struct is not None:  # its Python text would train as the caption
            raise BadSampleError(
                f"table {p}: caption column {c!r} holds struct values with keys "
                f"{sorted(map(str, struct))}, not texts; write the caption text of each into a "
                "column of strings or of lists of strings (caption_columns)",
                param="caption_columns",
            )
    caption_lists = [[_caption_cell(v) for v in df[c].tolist()] for c in cols]
    paths: list[str] = []
    captions: list[list[str]] = []
    rows: list[int] = []
    bad: list[tuple[int, str, str]] = []
    for r, image in enumerate(images):
        texts = [t for col in caption_lists for t in _cell_texts(col[r])]
        full = str(root / image) if image else ""
        if not image:
            bad.append((r, "", "empty image path"))
        elif not full.lower().endswith(IMAGE_EXTENSIONS):
            bad.append((r, full, f"unsupported image extension (supported: {IMAGE_EXTENSIONS})"))
        elif not os.path.isfile(full):
            bad.append((r, full, "image file not found" + _backslash_hint(root, image)))
        elif os.path.getsize(full) == 0:
            bad.append((r, full, "image file is empty"))
        elif not texts:
            bad.append((r, full, f"empty caption (columns {cols})"))
        else:
            paths.append(full)
            captions.append(texts)
            rows.append(r)
    for r, where, reason in bad[:20]:
        logger.warning("%s %s skipped: %s %s", p, row_label(r), reason, where)
    if len(bad) > 20:
        logger.warning("%s: %d more bad rows skipped", p, len(bad) - 20)
    digest = hashlib.sha256(
        json.dumps([image_column, cols, images, caption_lists]).encode("utf-8")
    ).hexdigest()
    return PairTable(paths, captions, rows, len(images), bad, p, digest)


def _backslash_hint(root: Path, image: str) -> str:
    """Why a path of a table written on Windows (``sea\\tile_0.tif``) is not found here, when
    the file of its ``/`` spelling is there: a backslash is a character of a file name on
    POSIX systems, not a folder separator."""
    if os.sep == "\\" or "\\" not in image:
        return ""
    if not os.path.isfile(root / image.replace("\\", "/")):
        return ""
    return " (its path separates folders with Windows backslashes: write them as '/')"


def image_key(path: str) -> str:
    """What makes two image paths of a table one image (``a/../a/x.tif`` is ``a/x.tif``)."""
    return os.path.normpath(path)


def split_pairs(table: PairTable, val_fraction: float, seed: int) -> tuple[PairTable, PairTable]:
    """Seeded random split into (train, validation) by image: validation holds
    ``val_fraction`` of the distinct images, and all rows of one image (a table of one row per
    caption, as many captioning sets come) fall on the same side, so that no held-out image is
    trained on. A table of distinct images is split as a random split of its rows."""
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(table.paths):
        groups.setdefault(image_key(path), []).append(i)
    members = list(groups.values())
    n = len(members)
    n_val = round(n * val_fraction)
    if n_val < 2 or n - n_val < 2:
        what = f"{n} distinct images ({len(table)} pairs)" if n < len(table) else f"{n} pairs"
        raise BadSampleError(
            f"{table.source}: {len(table)} usable pairs cannot be split with "
            f"val_fraction={val_fraction}: the {what} give each part fewer than 2; give a "
            "validation table (val_data) or change val_fraction",
            param="val_fraction",
        )
    perm = np.random.default_rng([seed, 0x5B11]).permutation(n)
    val_idx = sorted(i for g in perm[:n_val] for i in members[g])
    train_idx = sorted(i for g in perm[n_val:] for i in members[g])
    return table.subset(train_idx), table.subset(val_idx)


# -- augmentation ------------------------------------------------------------------------------
def sample_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    min_side: int = 1,
) -> tuple[int, int, int, int]:
    """Random resized crop box ``(top, left, h, w)``: area fraction in ``scale``, aspect ratio
    (w/h) log-uniform in ``ratio``; ten tries, then the centre crop of the clamped ratio.

    A side shorter than ``min_side`` (the model's patch) is widened about its centre to
    ``min_side``, or to the whole side of a smaller raster; the random draws stay the same.
    """
    top, left, h, w = _sample_crop(rng, height, width, scale, ratio)
    top, h = _widen(top, h, height, min_side)
    left, w = _widen(left, w, width, min_side)
    return top, left, h, w


def _widen(start: int, size: int, full: int, min_side: int) -> tuple[int, int]:
    """``(start, size)`` of a crop side widened about its centre to ``min_side`` (at most the
    whole side ``full``) when it is shorter."""
    if size >= min_side:
        return start, size
    wide = min(min_side, full)
    return min(max(0, start - (wide - size) // 2), full - wide), wide


def _sample_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class Augment:
    """Band-agnostic augmentation settings (see the module docstring)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5


# -- datasets ------------------------------------------------------------------------------------
class PairDataset(torch.utils.data.Dataset):
    """Image-caption pairs read as model input tensors.

    Items are addressed by ``(index, epoch)`` (from :class:`EpochBatchSampler`); an item is a
    dict ``{"index", "image", "caption"}`` or, when the image cannot be read,
    ``{"index", "bad": reason}``.

    Args:
        table: the pairs.
        preprocess: the model's preprocessing (bands by name, normalisation).
        seed: seed of captions and augmentations.
        augment: augmentation settings; ``None``: the model's centre crop.
        draw_captions: draw one of a pair's captions per epoch (training); else the first.
        cache: keep decoded rasters in memory.
    """

    def __init__(
        self,
        table: PairTable,
        preprocess: SpectralPreprocess,
        seed: int = 0,
        augment: Augment | None = None,
        draw_captions: bool = False,
        cache: bool = False,
    ) -> None:
        self.table = table
        self.draw_captions = draw_captions
        self.preprocess = preprocess
        self.seed = int(seed)
        self.augment = augment
        if augment is not None:
            # The crop already has the wanted aspect; resize it to the square model input.
            squash = copy.copy(preprocess)
            squash.resize_mode = "squash"
            self._train_preprocess = squash
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, tuple[str, ...], float | None, str]] = {}

    def __len__(self) -> int:
        return len(self.table)

    def _load(self, index: int) -> tuple[np.ndarray, tuple[str, ...], float | None, str]:
        if index in self._cache:
            return self._cache[index]
        loaded = self.preprocess.load(self.table.paths[index])
        if self.cache:
            self._cache[index] = loaded
        return loaded

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        from msclip.encode import item_with_warnings

        # A data warning (bands outside the model's range, nodata filled ...) travels with the
        # item, out of DataLoader workers too: the training loop shows each one once per run
        # (PairCollator, Trainer), validations once per run (their shared WarningTally).
        return item_with_warnings(self._get, key)

    def _get(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, int) else key
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 0xA06])
        captions = self.table.captions[index]
        caption = captions[0]
        if self.draw_captions and len(captions) > 1:
            caption = captions[int(rng.integers(len(captions)))]
        try:
            data, names, nodata, where = self._load(index)
            if data.size and missing_pixels(data, nodata).all():
                # filled with the band means it would be a constant image paired with a caption:
                # nothing to learn (a tile beyond a swath's edge); counted as a bad sample
                return {"index": index, "error": "no valid pixel: every pixel is nodata or NaN"}
            if self.augment is None:
                image = self.preprocess.process(data, names, nodata, where)
            else:
                a = self.augment
                # at least one patch per side: a smaller crop is still a readable image, and
                # the preprocessing refuses inputs under a patch (meant for too small rasters)
                top, left, h, w = sample_crop(
                    rng,
                    data.shape[1],
                    data.shape[2],
                    a.crop_scale,
                    a.crop_ratio,
                    min_side=self.preprocess.patch_size,
                )
                crop = data[:, top : top + h, left : left + w]
                image = self._train_preprocess.process(crop, names, nodata, where)
                if rng.random() < a.hflip:
                    image = image.flip(-1)
                if rng.random() < a.vflip:
                    image = image.flip(-2)
                image = image.contiguous()
        except _READ_ERRORS as err:
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        return {"index": index, "image": image, "caption": caption}

    def name(self, index: int) -> str:
        """The image file of pair ``index`` (for messages)."""
        return str(self.table.paths[index])


class PairCollator:
    """Stack images, tokenise captions, and set unreadable samples aside.

    Args:
        tokenizer: the model's tokenizer (``list[str] -> LongTensor``).
        n_bands: channels of an image (for an all-bad batch).
        image_size: side of an image.
        context_length: token positions of a caption.
        paths: image paths by index (for messages).
    """

    def __init__(
        self,
        tokenizer: Callable[[list[str]], torch.Tensor],
        n_bands: int,
        image_size: int,
        context_length: int,
        paths: Sequence[str],
    ) -> None:
        self.tokenizer = tokenizer
        self.n_bands = n_bands
        self.image_size = image_size
        self.context_length = context_length
        self.paths = paths

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if "error" not in it]
        bad = [
            (int(it["index"]), self.paths[it["index"]], it["error"])
            for it in items
            if "error" in it
        ]
        if good:
            images = torch.stack([it["image"] for it in good])
            tokens = self.tokenizer([it["caption"] for it in good])
        else:
            s = self.image_size
            images = torch.zeros((0, self.n_bands, s, s))
            tokens = torch.zeros((0, self.context_length), dtype=torch.long)
        return {
            "images": images,
            "tokens": tokens,
            "indices": torch.tensor([int(it["index"]) for it in good], dtype=torch.long),
            "captions": [it["caption"] for it in good],
            "bad": bad,
            "warnings": [tuple(w) for it in items for w in it.get("warnings", ())],
        }


# -- samplers ------------------------------------------------------------------------------------
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch (same in every process)."""
    return np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Global batches of one epoch, sliced for one process; optionally from a later step.

    The epoch's permutation is cut into ``steps = n // batch_size`` global batches (the last
    partial batch is dropped: a small batch would be a weak contrastive batch). Process ``rank``
    takes slice ``[rank * b, (rank + 1) * b)`` of each, ``b = batch_size // world_size``.

    Args:
        n: dataset length.
        batch_size: global batch.
        rank: this process.
        world_size: number of processes (must divide ``batch_size``).
        seed: data seed.
        epoch: epoch number (selects the permutation).
        start_step: first step to yield (resuming inside an epoch).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} processes")
        self.n = n
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.start_step = start_step
        self.steps = n // batch_size

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        lo = self.rank * self.local
        for step in range(self.start_step, self.steps):
            batch = perm[step * self.batch_size : (step + 1) * self.batch_size]
            yield [(int(i), self.epoch) for i in batch[lo : lo + self.local]]


class ShardSampler(torch.utils.data.Sampler):
    """Contiguous shard of ``range(n)`` for one process, in batches (evaluation)."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int) -> None:
        per = -(-n // world_size)
        self.indices = list(range(min(n, rank * per), min(n, (rank + 1) * per)))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield self.indices[i : i + self.batch_size]


# -- zero-shot class folders ---------------------------------------------------------------------
def class_display_name(folder: str) -> str:
    """Prompt text of a class folder: ``AnnualCrop`` -> ``annual crop``, ``sea_lake`` ->
    ``sea lake``."""
    text = re.sub(r"[_\-]+", " ", folder)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    return " ".join(text.lower().split())


class ClassFolderDataset(torch.utils.data.Dataset):
    """``<root>/<class>/<image>`` images with class labels (zero-shot validation).

    Args:
        root: folder of class folders.
        preprocess: the model's preprocessing.
        max_per_class: first images (sorted by name) per class; all when ``None``.

    Raises:
        BadSampleError: no class folder holds an image.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        preprocess: SpectralPreprocess,
        max_per_class: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.preprocess = preprocess
        self.classes: list[str] = []
        self.paths: list[str] = []
        self.labels: list[int] = []
        for d in class_folders(self.root):  # hidden folders and files skipped
            files = folder_images(d)
            if max_per_class is not None:
                files = files[:max_per_class]
            if not files:
                continue
            self.classes.append(d.name)
            self.paths += [str(f) for f in files]
            self.labels += [len(self.classes) - 1] * len(files)
        if len(self.classes) < 2:
            raise BadSampleError(
                f"zero-shot data {self.root} needs at least two class folders holding images "
                f"({', '.join(IMAGE_EXTENSIONS)}); found {self.classes}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from msclip.encode import item_with_warnings

        # counted by the encoding engine: once per run in training (a shared WarningTally)
        return item_with_warnings(self._get, index)

    def _get(self, index: int) -> dict[str, Any]:
        try:
            image = self.preprocess(self.paths[index])
        except _READ_ERRORS as err:
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        return {"index": index, "image": image, "label": self.labels[index]}

    def name(self, index: int) -> str:
        """The image file of sample ``index`` (for messages)."""
        return self.paths[index]
