"""Batched image encoding: files or scene tiles -> image-tower embeddings.

Decoding and preprocessing (:class:`msclip.SpectralPreprocess`) run inside a
``torch.utils.data.Dataset``, so ``workers > 0`` overlaps them with the model in DataLoader worker
processes. A file that cannot be read or preprocessed does not stop the run or crash a worker: the
dataset returns a failure record, the failure is logged with the file's name, and the caller gets
the list at the end. Tiles that are mostly nodata (see :func:`msclip.scene.nodata_fraction`) are
skipped and reported separately.

The model runs under ``torch.inference_mode`` in micro-batches of ``batch_size`` in the model's
own dtype: for bf16 on a CPU, cast the weights once with ``create_model(..., precision="bf16")``;
``torch.autocast`` on the CPU is avoided on purpose (it disables the fused attention path of
``nn.MultiheadAttention`` and was measured 3-7x slower at batch 8-32).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from msclip.errors import ImageSetError, MSCLIPError
from msclip.scene import Tile, nodata_fraction

__all__ = [
    "EncodeResult",
    "EncodedBatch",
    "Failure",
    "ImageDataset",
    "ImageSetError",
    "encode_images",
    "item_name",
    "iter_encoded",
    "list_images",
]

logger = logging.getLogger(__name__)

ImageItem = Any  # a path (str / os.PathLike) or a msclip.scene.Tile

_OK, _ERROR, _NODATA = "ok", "error", "nodata"


def _read_errors() -> tuple[type[BaseException], ...]:
    # Everything a corrupt or unexpected file can raise while being decoded and preprocessed.
    from rasterio.errors import RasterioError

    return (MSCLIPError, OSError, ValueError, RuntimeError, RasterioError)


def item_name(item: ImageItem) -> str:
    """Display name of an item: the path, or ``path@row,col`` for a tile."""
    return item.name if isinstance(item, Tile) else str(item)


@dataclass(frozen=True)
class Failure:
    """An item that could not be encoded.

    Attributes:
        index: position in the input list.
        name: the file (or tile) name.
        reason: the error message.
    """

    index: int
    name: str
    reason: str


class ImageDataset(Dataset):
    """Read and preprocess files or tiles; never raises on a bad item.

    ``__getitem__`` returns ``(index, tensor | None, status, message)`` with ``status`` one of
    ``"ok"``, ``"error"`` (message says why) or ``"nodata"`` (the item is mostly nodata).

    Args:
        items: file paths or :class:`msclip.scene.Tile` windows.
        preprocess: the model's :class:`msclip.SpectralPreprocess` (picklable).
        max_nodata: skip items whose nodata fraction exceeds this (``None``: never skip).
        nodata: nodata value to use instead of the file's (e.g. 0 for L2A files that do not
            declare one).
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        preprocess: Callable[[Any], torch.Tensor],
        max_nodata: float | None = None,
        nodata: float | None = None,
    ) -> None:
        self.items = list(items)
        self.preprocess = preprocess
        self.max_nodata = max_nodata
        self.nodata = nodata

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, item: ImageItem) -> tuple[np.ndarray, tuple[str, ...], float | None, str]:
        pp = self.preprocess
        if isinstance(item, Tile):
            from msclip.io import read_raster

            raster = read_raster(
                item.path,
                bands=getattr(pp, "input_bands", None),
                sensor=getattr(pp, "sensor", None),
                window=item.window,
            )
            data, names, nodata, _ = pp.load(raster)
            return data, names, nodata, item.name
        return pp.load(item)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str, str]:
        item = self.items[index]
        try:
            data, names, nodata, where = self._load(item)
            if self.nodata is not None:
                nodata = self.nodata
            if self.max_nodata is not None:
                frac = nodata_fraction(data, nodata)
                if frac > self.max_nodata:
                    return index, None, _NODATA, f"{frac:.0%} nodata"
            if isinstance(item, Tile):
                # Partly-nodata tiles are expected at scene edges; the fill is not news there.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*nodata/NaN pixel values filled")
                    x = self.preprocess.process(data, names, nodata, where)
            else:
                x = self.preprocess.process(data, names, nodata, where)
            return index, x, _OK, ""
        except _read_errors() as err:
            return index, None, _ERROR, f"{type(err).__name__}: {err}"


def _collate(
    batch: list[tuple[int, torch.Tensor | None, str, str]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str, str]]]:
    ok = [(i, x) for i, x, status, _ in batch if status == _OK]
    others = [(i, status, msg) for i, _, status, msg in batch if status != _OK]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, others


@dataclass
class EncodedBatch:
    """One micro-batch of results.

    Attributes:
        indices: input positions of the encoded items.
        embeddings: ``[len(indices), D]`` float32.
        failures: items of this batch that could not be read.
        skipped: input positions of items skipped as mostly nodata.
    """

    indices: list[int]
    embeddings: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


@dataclass
class EncodeResult:
    """All results of :func:`encode_images`.

    Attributes:
        embeddings: ``[N_ok, D]`` float32, in input order.
        indices: input positions of the rows of ``embeddings``.
        failures: unreadable items, in input order.
        skipped: input positions of items skipped as mostly nodata.
    """

    embeddings: np.ndarray
    indices: list[int]
    failures: list[Failure]
    skipped: list[int]


def iter_encoded(
    model: Any,
    preprocess: Callable[[Any], torch.Tensor],
    items: Sequence[ImageItem],
    batch_size: int = 32,
    workers: int = 0,
    normalize: bool = True,
    progress: bool = False,
    max_nodata: float | None = None,
    nodata: float | None = None,
    desc: str = "images",
) -> Iterator[EncodedBatch]:
    """Encode ``items`` batch by batch (in input order), yielding each batch's results.

    Args:
        model: an :class:`msclip.MSCLIP` (``encode_image``, ``device``).
        preprocess: the model's preprocessing (``model.preprocess(...)``).
        items: file paths or scene tiles.
        batch_size: images per model call (about 32 is fastest for ViT-B-16 on a CPU).
        workers: DataLoader worker processes for decoding (0: in this process).
        normalize: L2-normalise the embeddings.
        progress: show a tqdm bar.
        max_nodata: skip items with a larger nodata fraction.
        nodata: nodata value overriding the files'.
        desc: label of the progress bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    items = list(items)
    dataset = ImageDataset(items, preprocess, max_nodata, nodata)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
    )
    device = getattr(model, "device", torch.device("cpu"))
    from tqdm.auto import tqdm

    with (
        tqdm(total=len(items), desc=desc, unit="img", disable=not progress) as bar,
        torch.inference_mode(),
    ):
        for indices, images, others in loader:
            failures, skipped = [], []
            for i, status, msg in others:
                if status == _NODATA:
                    skipped.append(i)
                    logger.debug("skipped %s (%s)", item_name(items[i]), msg)
                else:
                    failures.append(Failure(i, item_name(items[i]), msg))
                    logger.warning("cannot read %s: %s (skipped)", item_name(items[i]), msg)
            if images is not None:
                emb = model.encode_image(images.to(device))
                if normalize:
                    emb = F.normalize(emb.float(), dim=-1)
                arr = emb.float().cpu().numpy()
            else:
                arr = np.zeros((0, int(getattr(model, "embed_dim", 0))), np.float32)
            bar.update(len(indices) + len(others))
            yield EncodedBatch(indices, arr, failures, skipped)


def encode_images(
    model: Any,
    preprocess: Callable[[Any], torch.Tensor],
    paths: Sequence[ImageItem],
    batch_size: int = 32,
    workers: int = 0,
    normalize: bool = True,
    progress: bool = False,
    max_nodata: float | None = None,
    nodata: float | None = None,
) -> EncodeResult:
    """Encode every item; see :func:`iter_encoded` for the arguments.

    Returns:
        The embeddings of the readable items plus the list of failures (never raises on a bad
        file).
    """
    embs, indices, failures, skipped = [], [], [], []
    for b in iter_encoded(
        model, preprocess, paths, batch_size, workers, normalize, progress, max_nodata, nodata
    ):
        embs.append(b.embeddings)
        indices.extend(b.indices)
        failures.extend(b.failures)
        skipped.extend(b.skipped)
    dim = int(getattr(model, "embed_dim", 0))
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    return EncodeResult(emb, indices, failures, skipped)


# -- image sets ------------------------------------------------------------------------------

_GLOB_CHARS = "*?["


def _is_image(path: Path) -> bool:
    from msclip.io import IMAGE_EXTENSIONS

    return path.suffix.lower() in IMAGE_EXTENSIONS


def _list_file(path: Path) -> list[str]:
    """Paths listed in a ``.txt`` (one per line) or ``.yaml`` (list, or ``images:`` key) file;
    relative entries are relative to the list file's directory."""
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
    return [e if Path(e).is_absolute() else str(path.parent / e) for e in entries]


def list_images(specs: Sequence[str | os.PathLike], recursive: bool = True) -> list[str]:
    """Expand image specifications into a list of image files, in order, without duplicates.

    Each specification is a folder (its image files, sorted; sub-folders too when
    ``recursive``), a ``.txt`` or ``.yaml`` list of paths, a glob pattern (``**`` allowed), or an
    image file. Image files are those with an extension of :data:`msclip.io.IMAGE_EXTENSIONS`.

    Raises:
        ImageSetError: a specification that matches nothing or names a missing file.
    """
    out: list[str] = []
    for spec in specs:
        s = os.fspath(spec)
        p = Path(s).expanduser()
        if p.is_dir():
            found = sorted(
                str(f)
                for f in (p.rglob("*") if recursive else p.iterdir())
                if f.is_file() and _is_image(f)
            )
            if not found:
                raise ImageSetError(f"folder {p} holds no image files ({_extensions()})")
            out.extend(found)
        elif p.is_file() and p.suffix.lower() in (".txt", ".yaml", ".yml"):
            out.extend(_list_file(p))
        elif p.is_file():
            out.append(s)
        elif any(ch in s for ch in _GLOB_CHARS):
            import glob

            found = sorted(
                f
                for f in glob.glob(os.path.expanduser(s), recursive=True)
                if Path(f).is_file() and _is_image(Path(f))
            )
            if not found:
                raise ImageSetError(f"pattern {s!r} matches no image files ({_extensions()})")
            out.extend(found)
        else:
            raise ImageSetError(
                f"no such file or folder: {s}; --images takes folders, image files, .txt/.yaml "
                "lists of paths, or glob patterns"
            )
    return list(dict.fromkeys(out))


def _extensions() -> str:
    from msclip.io import IMAGE_EXTENSIONS

    return ", ".join(IMAGE_EXTENSIONS)
