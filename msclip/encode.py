"""The one batched image-encoding engine of msclip: items in, image-tower embeddings out.

Every place that runs the image tower over many images goes through :func:`encode_batches`:
zero-shot classification and retrieval over files, the embedding index (files and scene tiles),
benchmark evaluation (labelled datasets), training validation (image-caption pairs and class
folders) and the heads' feature cache.

The item protocol. A dataset's ``__getitem__`` never raises on a bad input; it returns a dict with
``"index"`` and one of

- ``"image"``: the preprocessed ``[C, H, W]`` tensor, plus any extra keys (``"target"``,
  ``"caption"`` ...) that travel with the image;
- ``"error"``: why the item cannot be read (unreadable file, unknown bands ...);
- ``"nodata"``: why the item was skipped on purpose (mostly nodata).

:func:`collate_items` stacks the images and gathers the extras of the good items, so a bad file
neither crashes a DataLoader worker nor prints a worker traceback: the engine names it (a log
warning), counts it, and either skips it or, with ``strict=True`` (a labelled benchmark, where one
bad file invalidates the dataset's numbers), raises one :class:`~msclip.errors.RasterReadError`
that names it.

Decoding and preprocessing run inside the dataset, so ``workers > 0`` overlaps them with the model
in DataLoader worker processes. The model runs under ``torch.inference_mode`` (or ``no_grad``
where the caller needs autograd-compatible tensors) in micro-batches of ``batch_size`` in the
model's own dtype: for bf16 on a CPU cast the weights once (``create_model(...,
precision="bf16")``); ``torch.autocast`` on the CPU is avoided on purpose (it disables the fused
attention path of ``nn.MultiheadAttention`` and was measured 3-7x slower at batch 8-32).

Threads. Items read in this process (``workers=0``) are read and preprocessed with one torch
thread: the tensor operations of one tile (nodata count, normalisation, ~10^6 values) take well
under a millisecond serially, but a parallel region on a small shared machine waits for its
slowest thread, and a descheduled one costs milliseconds (measured 45 ms per 224x224x12 tile with
two threads under load against 8 ms with one). The model call keeps every intra-op thread.
DataLoader worker processes use one thread each (PyTorch's default in workers). Without workers,
the items of a batch of a dataset that offers ``read_item`` (:class:`ImageDataset`: files and
scene tiles) are read on as many Python threads as torch has intra-op threads, at most
:data:`READ_THREADS` (and one per item), between model calls: decompressing a GeoTIFF releases
the GIL, so the cores the model leaves idle while one file is decoded read the others (64
deflate 224x224x12 tiles between model calls: 0.51-0.58 s on two threads against 0.61-0.75 s on
one, 2-core Zen 4). The rest of a read holds the GIL, and each thread takes it back many times
per tile, so more threads queue for it: on a 16-thread Xeon sixteen reading threads spent 12-14
ms per tile where one spent 5.2 ms. Their warnings are recorded item by item as with one thread
(:func:`read_items`).

GPU path. On CUDA the loader pins its batches (``pin_memory``) and the copies to the device are
non-blocking, so a worker's next batch is copied while the GPU computes; the workers of a bf16 or
fp16 model cast its images to that dtype before handing them over (:class:`CastImages`: the
model's own first step, half the bytes to move, the same embeddings); ``batch_size=None`` picks
the largest power of two whose estimated activations fit in half of the free device memory and
whose batches in flight fit in the host's memory and shared memory (:func:`auto_batch_size`), and
4 on a CPU (a ViT-B-16 batch of 4 already gives the matrix multiplications 788 rows: batches of 2
to 16 ran at the same images/s on Zen 4 in fp32 and bf16 and with the AVX2 kernels, while each
image adds ~15 MB of activations in fp32 and ~6 MB in bf16 to the run's peak memory). Outputs
equal the CPU fp32 ones within the tolerance of the precision (bf16: cosine > 0.999 to fp32 on the
tested models; fp32 on a GPU: about 1e-5, TF32 is not enabled by msclip).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from msclip.errors import (
    BandCoverageError,
    BandError,
    ImageSetError,
    InputTypeError,
    MSCLIPError,
    RasterReadError,
    shown_when_quiet,
)
from msclip.hardware import resolve_device
from msclip.memory import trim_heap
from msclip.tiling import Tile, nodata_fraction

__all__ = [
    "READ_THREADS",
    "CastImages",
    "EncodeResult",
    "EncodedBatch",
    "Failure",
    "ImageDataset",
    "LabelledDataset",
    "LabelledEncoding",
    "WarningTally",
    "auto_batch_size",
    "auto_workers",
    "collate_items",
    "encode_batches",
    "encode_dataset",
    "encode_images",
    "item_name",
    "item_with_warnings",
    "iter_encoded",
    "loader_args",
    "read_errors",
    "read_items",
    "shared_memory_free",
    "single_thread",
]

logger = logging.getLogger(__name__)

ImageItem = Any  # a path (str / os.PathLike) or a msclip.tiling.Tile


def read_errors() -> tuple[type[BaseException], ...]:
    """Everything a corrupt or unexpected file can raise while being decoded and preprocessed."""
    from rasterio.errors import RasterioError

    return (MSCLIPError, OSError, ValueError, RuntimeError, RasterioError)


def item_name(item: ImageItem) -> str:
    """Display name of an item: the path, ``path@row,col`` for a tile, and for an in-memory
    array or tensor its kind and shape (not its values)."""
    if isinstance(item, Tile):
        return item.name
    if hasattr(item, "shape") and hasattr(item, "dtype"):
        return f"{type(item).__name__}{list(item.shape)} {item.dtype}"
    return str(item)


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


# -- datasets following the item protocol ---------------------------------------------------------
class ImageDataset(Dataset):
    """Read and preprocess files or scene tiles (the item protocol: never raises on a bad item).

    Args:
        items: file paths or :class:`msclip.tiling.Tile` windows.
        preprocess: the model's transform (``model.preprocess()``, picklable).
        min_valid: skip items whose fraction of valid pixels (not nodata or NaN in every band)
            is below this (``None`` or 0: never skip); each good item reports its fraction as
            ``"valid"``.
        nodata: nodata value to use instead of the file's (e.g. 0 for L2A files that do not
            declare one).
        startup: files read ahead while the program started
            (:class:`msclip.io.prefetch.StartupReads`): taken instead of read where they hold
            the item as this dataset would read it. Not for DataLoader workers.
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        preprocess: Any,
        min_valid: float | None = None,
        nodata: float | None = None,
        startup: Any = None,
    ) -> None:
        if isinstance(items, (str, os.PathLike)):
            _refuse_folder(items)
        # one path is one item (not the characters of its name)
        self.items = [items] if isinstance(items, (str, os.PathLike)) else list(items)
        self.preprocess = preprocess
        self.min_valid = min_valid
        self.nodata = nodata
        self.startup = startup

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        return item_name(self.items[index])

    def _load(self, item: ImageItem) -> tuple[np.ndarray, tuple[str, ...], float | None, str]:
        pp = self.preprocess
        # ``nodata`` is the value a file stores: it is given to the reader, which compares it with
        # the stored values (a file read rescaled holds other values, its missing pixels NaN)
        if isinstance(item, Tile):
            raster = pp.read(item.path, window=item.window, nodata=self.nodata)
            data, names, nodata, _ = pp.load(raster)
            return data, names, nodata, item.name
        if isinstance(item, (str, os.PathLike)) and hasattr(pp, "read"):
            if self.startup is not None and hasattr(pp, "read_ahead"):
                ahead = pp.read_ahead(self.startup, item, nodata=self.nodata)
                if ahead is not None:
                    return ahead
            return pp.load(pp.read(item, nodata=self.nodata))
        data, names, nodata, where = pp.load(item)
        return data, names, nodata if self.nodata is None else self.nodata, where

    def __getitem__(self, index: int) -> dict[str, Any]:
        return item_with_warnings(self.read_item, index)

    def read_item(self, index: int) -> dict[str, Any]:
        """Item ``index`` of the protocol, without its warnings attached; safe to call from
        several threads at once (each item opens its own file handle)."""
        item = self.items[index]
        try:
            data, names, nodata, where = self._load(item)
            valid = 1.0 - nodata_fraction(data, nodata)
            if self.min_valid and valid < self.min_valid:
                self._check_bands(names)
                return {"index": index, "nodata": f"{valid:.0%} valid pixels", "valid": valid}
            x = self.preprocess.process(data, names, nodata, where)
        except read_errors() as err:
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        return {"index": index, "image": x, "valid": valid}

    def _check_bands(self, names: Sequence[str]) -> None:
        """Map the bands of a skipped item too, so that the run's band warnings count every
        item whose bands were read (not only the encoded ones)."""
        bands = getattr(self.preprocess, "bands", None)
        if bands is None:
            return
        from msclip.spectral.adapt import map_bands

        # a BandError: skipped anyway; an encoded item with such bands reports it
        with contextlib.suppress(BandError):
            map_bands(bands, names)


def _refuse_folder(path: str | os.PathLike) -> None:
    """Refuse one folder or glob pattern given where image files are: the items are read as
    given (each one image, its results numbered by its position), so a folder would be one
    unreadable image.

    Raises:
        ImageSetError: ``path`` is a folder or a pattern; the message names the call that lists
            its images.
    """
    from msclip.io.images import folder_or_pattern

    kind = folder_or_pattern(path)
    if kind is not None:
        s = os.fsdecode(os.fspath(path))
        raise ImageSetError(
            f"{s} is a {kind}, not an image file: give image files, e.g. "
            f"msclip.io.list_images([{s!r}]) (the files "
            f"{'below it' if kind == 'folder' else 'it matches'}, sorted)",
            param="items",
        )


def item_with_warnings(get: Callable[[Any], dict[str, Any]], index: Any) -> dict[str, Any]:
    """``get(index)``, an item of the protocol, with the warnings raised while reading it attached
    as picklable ``(category, text)`` pairs under ``"warnings"``. They travel with the item (also
    out of DataLoader workers) and the engine counts them once per pass (:class:`WarningTally`),
    instead of printing them once per image. A warning raised meanwhile by another thread is not
    the item's: it is shown as usual."""
    with _warnings_by_read() as (tag, caught):
        item = _read_tagged(tag, 0, get, index)
    if caught:
        item["warnings"] = caught[0]
    return item


def read_items(
    read: Callable[[int], dict[str, Any]], indices: Sequence[int], pool: Any
) -> list[dict[str, Any]]:
    """``read(i)`` for each of ``indices`` on the threads of ``pool`` (its ``map``), in order, each
    item with the warnings raised while reading it attached as :func:`item_with_warnings` attaches
    them.

    ``read`` must be safe to call from several threads; where it enters
    ``warnings.catch_warnings`` itself, it must hold a lock meanwhile (as
    :func:`msclip.io.readers.open_raster` does), so that no two such contexts interleave.
    """
    with _warnings_by_read() as (tag, caught):
        items = list(
            pool.map(lambda j: _read_tagged(tag, j, read, indices[j]), range(len(indices)))
        )
    for j, item in enumerate(items):
        if j in caught:
            item["warnings"] = caught[j]
    return items


@contextlib.contextmanager
def _warnings_by_read() -> Iterator[tuple[Any, dict[int, list[tuple[str, str]]]]]:
    """Record the warnings of tagged reads, by tag: yields ``(tag, caught)``, a thread-local
    whose ``slot`` a thread sets while it reads (:func:`_read_tagged`) and the ``slot ->
    [(category, text)]`` record.

    ``warnings.catch_warnings`` changes process-wide state and cannot be entered by several
    threads at once, so one context spans all the reads and the thread-local tag says which
    read a warning belongs to; a warning of a thread that is not reading is shown as usual.
    """
    import threading

    tag = threading.local()
    caught: dict[int, list[tuple[str, str]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            slot = getattr(tag, "slot", None)
            if slot is None:
                shown(message, category, filename, lineno, file, line)
            else:
                caught.setdefault(slot, []).append((category.__name__, str(message)))

        warnings.showwarning = record
        yield tag, caught


def _read_tagged(tag: Any, slot: int, read: Callable[[Any], dict[str, Any]], key: Any) -> Any:
    """``read(key)``, this thread's warnings recorded under ``slot`` (:func:`_warnings_by_read`)."""
    tag.slot = slot
    try:
        return read(key)
    finally:
        tag.slot = None


class _ThreadedReads(Dataset):
    """A dataset with ``read_item`` whose batches are read by :func:`read_items` on a pool of
    threads (the DataLoader's fetcher of a process without workers calls ``__getitems__``).

    The threads are :func:`_reading_pool`'s, which live as long as the process.
    """

    def __init__(self, dataset: Any, threads: int) -> None:
        self.dataset = dataset
        self.pool = _reading_pool(threads)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return read_items(self.dataset.read_item, list(indices), self.pool)


_POOLS: dict[int, Any] = {}
_POOLS_LOCK = threading.Lock()
_INHERITED: list[Any] = []


def _forget_pools() -> None:
    """In a forked process (a DataLoader worker), which has none of its parent's threads: make
    its own pools when it needs some. The parent's pool objects are kept, not deleted: deleting
    one would signal, through its queue, threads that are not there. The lock is new too: a
    thread of the parent may have held it at the fork."""
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()
    _INHERITED.extend(_POOLS.values())
    _POOLS.clear()


os.register_at_fork(after_in_child=_forget_pools)


def _reading_pool(threads: int) -> Any:
    """The process's pool of ``threads`` reading threads (a ``ThreadPoolExecutor``, its threads
    made on first use).

    Kept for the process's life rather than one per pass: new threads for every batch lost most
    of the gain (~7 ms each), and threads that end are a hazard for a fork that follows: with a
    pool per pass, ended by ``ThreadPool.terminate`` (which does not wait for its threads), a
    DataLoader worker forked next (a pass with ``workers`` after one without) hung in its first
    ``rasterio.open`` in 1 run of 6 of a test that alternates the two, and in none of 12 with
    threads that stay. The likely cause: a thread that ends runs GDAL's thread-local clean-up,
    which takes GDAL's locks, and a child forked meanwhile inherits a lock held by a thread it
    does not have. Idle threads waiting for work hold none.

    An executor rather than ``multiprocessing.pool.ThreadPool``: a ThreadPool still running when
    the interpreter tears its modules down warns (ResourceWarning), or fails with "Exception
    ignored in Pool.__del__" once multiprocessing's own globals are gone (seen at the end of
    every pytest-xdist worker on Python 3.12), while an executor's idle threads are told to end
    and joined at exit (they hold nothing then).
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor

            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="msclip-read")
        return pool


class LabelledDataset(Dataset):
    """The item protocol over a labelled dataset whose ``__getitem__`` returns ``(image, target,
    index)`` (:class:`msclip.eval.datasets.BenchmarkDataset`): read errors become error items.

    Args:
        dataset: the labelled dataset; its ``name_of(i)`` (when present) names a sample in
            messages.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        name_of = getattr(self.dataset, "name_of", None)
        return str(name_of(index)) if name_of is not None else f"sample {index}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return item_with_warnings(self._get, index)

    def _get(self, index: int) -> dict[str, Any]:
        try:
            image, target, _ = self.dataset[index]
        except read_errors() as err:
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        return {"index": index, "image": image, "target": target}


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(images)``; in a DataLoader worker straight into shared memory, through
    which the batch goes to the main process (stacked in private memory, it would be copied
    there once more when sent: 64 MB a batch of 32 Sentinel-2 tiles)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(images)
    first = images[0]
    shape = (len(images), *first.shape)
    storage = first.untyped_storage()._new_shared(math.prod(shape) * first.element_size())
    out = torch.empty(0, dtype=first.dtype).set_(storage).view(shape)
    return torch.stack(images, out=out)


class CastImages:
    """A collate function whose items' images are first cast to ``dtype``: what the model does
    first with them (``MSCLIP.encode_image`` casts its input to the weights' dtype), done in the
    DataLoader workers, so that a bf16 or fp16 model's batches cross the shared memory, the
    pinned copy and the copy to the GPU at half the bytes of float32, with the same values."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], dtype: torch.dtype) -> None:
        self.collate = collate
        self.dtype = dtype

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        cast = [
            {**it, "image": it["image"].to(self.dtype)}
            if isinstance(it, dict) and isinstance(it.get("image"), torch.Tensor)
            else it
            for it in items
        ]
        return self.collate(cast)


def collate_items(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate protocol items: ``images`` (stacked, or ``None``), ``indices`` of the good items,
    ``failures`` and ``skipped`` as ``(index, message)`` lists, ``skipped_valid`` as ``(index,
    valid fraction)`` of the skipped items that measured it, and each extra key as the list of
    the good items' values."""
    good = [it for it in items if "image" in it]
    out: dict[str, Any] = {
        "images": _stack([it["image"] for it in good]) if good else None,
        "indices": [int(it["index"]) for it in good],
        "failures": [(int(it["index"]), it["error"]) for it in items if "error" in it],
        "skipped": [(int(it["index"]), it["nodata"]) for it in items if "nodata" in it],
        "skipped_valid": [
            (int(it["index"]), float(it["valid"]))
            for it in items
            if "nodata" in it and "valid" in it
        ],
        "warnings": [(int(it["index"]), w) for it in items for w in it.get("warnings", ())],
    }
    for key in {k for it in good for k in it} - {"image", "index", "warnings"}:
        out[key] = [it[key] for it in good]
    return out


# -- threads and batch sizes ----------------------------------------------------------------------
@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed torch operations on one intra-op thread (restored afterwards).

    For the many small per-item operations of decoding and preprocessing (see the module
    docstring); the setting is process-wide in torch, so it is restored at once.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


#: Most Python threads that read the items of a batch without workers (see the module
#: docstring): two to four gave the best time per tile on 2 cores (4.0-4.2 ms against 5.0 on one
#: and 5.1 on eight); sixteen on a 16-thread Xeon took 12-14 ms where one took 5.2 ms. A read
#: holds the GIL for part of its time, which bounds what more threads can gain, and the threads
#: queue for the GIL the more of them there are.
READ_THREADS = 4

#: Images per model call on a CPU when none is given.
CPU_BATCH_SIZE = 4


#: Batches of a GPU run that can sit in host memory at once besides the workers' prefetched ones:
#: the one the main process holds and its pinned copy.
_HOST_BATCHES = 2
#: Batches each DataLoader worker prefetches (:func:`loader_args`).
_PREFETCH = 2


def shared_memory_free(path: str = "/dev/shm") -> int | None:
    """Free bytes of the shared-memory file system through which DataLoader workers hand their
    batches to the main process, or ``None`` where there is none (not Linux)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail * st.f_frsize)


def auto_batch_size(
    model: Any,
    device: Any = None,
    free_bytes: int | None = None,
    *,
    workers: int | None = None,
    host_bytes: int | None = None,
    shm_bytes: int | None = None,
    items: int | None = None,
) -> int:
    """Images per model call: 4 on a CPU; on a GPU the largest power of two (1 to 1024) whose
    estimated activation memory fits in half of the free device memory and whose batches in
    flight fit on the host, and, for a run of ``items`` images with workers, at most ``items /
    (2 * workers)``: every worker then reads (64 tiles in one batch of 512 were read by one of 8
    workers: 57 images/s end to end on an H200, against 419 images/s for 1,024 tiles in batches of
    64).

    The estimate per image for a ViT image tower of width ``w``, ``n`` tokens and ``h`` heads, in
    the model's dtype: ``n * w * 12`` values (residual stream, norms, the 4x MLP hidden layer and
    its activation, the QKV projections, with room for the allocator) plus ``2 * h * n^2``
    (attention scores, when no fused kernel avoids them).

    On the host, each of ``workers`` DataLoader workers prefetches two batches of preprocessed
    float32 images (``bands x size x size x 4`` bytes each) and the main process holds two more
    (a batch and its pinned copy): all of them must fit in a quarter of the available memory
    (:func:`msclip.hardware.available_memory`), and the workers' ones in half of the free shared
    memory (``/dev/shm``, 64 MB in a container started without ``--shm-size``), through which
    workers pass their batches. Without these bounds a large GPU (batch 1024, ~2.4 GB of 12-band
    224 x 224 tiles per batch) with 8 workers would hold ~44 GB of batches on the host.

    Args:
        model: an :class:`msclip.MSCLIP`.
        device: where it runs (default: the model's device).
        free_bytes: free device memory (default: ``torch.cuda.mem_get_info``).
        workers: DataLoader worker processes of the run (default: :func:`auto_workers`).
        host_bytes: host memory for this process's batches (default: the available memory,
            :func:`msclip.hardware.available_memory`, shared equally among the processes of a
            ``torchrun`` run on this machine, :func:`msclip.hardware.local_processes`).
        shm_bytes: shared memory for them (default: :func:`shared_memory_free`, shared the
            same way).
        items: images the run encodes, when known.
    """
    device = resolve_device(device)
    dev = torch.device(device) if device is not None else getattr(model, "device", None)
    if dev is None or dev.type != "cuda":
        return CPU_BATCH_SIZE
    if free_bytes is None:
        free_bytes = int(torch.cuda.mem_get_info(dev)[0])
    visual = model.clip.visual
    width = int(visual.transformer.width)
    grid = getattr(visual, "grid_size", (model.image_size // 16, model.image_size // 16))
    tokens = int(grid[0]) * int(grid[1]) + 1
    heads = int(getattr(visual.transformer.resblocks[0].attn, "num_heads", width // 64))
    itemsize = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    per_image = itemsize * (tokens * width * 12 + 2 * heads * tokens * tokens)
    fits = max(1, int(free_bytes * 0.5 // per_image))

    from msclip.hardware import available_memory, local_processes

    workers = auto_workers(dev) if workers is None else int(workers)
    per_input = (len(getattr(model, "bands", ())) or 3) * int(model.image_size) ** 2 * 4
    sharing = local_processes()  # torchrun's processes on this machine share its memory
    if host_bytes is None:
        host_bytes = available_memory()
        host_bytes = None if host_bytes is None else host_bytes // sharing
    if host_bytes is not None:
        in_flight = workers * _PREFETCH + _HOST_BATCHES
        fits = min(fits, max(1, int(host_bytes * 0.25 // (in_flight * per_input))))
    if workers > 0:
        if shm_bytes is None:
            shm_bytes = shared_memory_free()
            shm_bytes = None if shm_bytes is None else shm_bytes // sharing
        if shm_bytes is not None:
            shm_fits = max(1, int(shm_bytes * 0.5 // (workers * _PREFETCH * per_input)))
            if shm_fits < fits and shm_fits < 16:
                logger.warning(
                    "only %d MB of shared memory (/dev/shm) is free for the %d DataLoader "
                    "workers: GPU batches are limited to %d image%s; give the container more "
                    "(docker run --shm-size=8g) or pass --workers 0",
                    shm_bytes >> 20, workers, shm_fits, "" if shm_fits == 1 else "s",
                )  # fmt: skip
            fits = min(fits, shm_fits)
        if items is not None:
            fits = min(fits, max(1, int(items) // (2 * workers)))
    return int(min(1024, 2 ** int(math.log2(fits))))


def auto_workers(device: Any = None) -> int:
    """DataLoader worker processes when none are given: 0 on a CPU (decoding a tile costs a few
    milliseconds against a hundred or more in the model, and workers would take the model's
    cores), up to 16 feeding a GPU: this process's share of the cores but two (the process
    itself and the thread that pins batches), the cores it may use being divided among the
    processes of a ``torchrun`` run on this machine, one per GPU
    (:func:`msclip.hardware.cores_per_process`). A GPU outruns the readers: on an H200 with 16
    cores, 1,024 GeoTIFF tiles were encoded at 419 images/s with 8 workers and 523 with 16, the
    image tower alone running 10,000 images/s in bf16."""
    device = resolve_device(device)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        return 0
    from msclip.hardware import cores_per_process

    return int(min(16, max(1, cores_per_process() - 2)))


def loader_args(
    device: torch.device,
    batch_size: int,
    workers: int,
    collate: Callable[[list[Any]], dict[str, Any]],
    batch_sampler: Any = None,
) -> dict[str, Any]:
    """DataLoader arguments of :func:`encode_batches`: sequential batches (or the sampler's),
    pinned host memory for a CUDA model (non-blocking copies), two batches prefetched per worker.
    """
    args: dict[str, Any] = {"num_workers": workers, "collate_fn": collate}
    if batch_sampler is not None:
        args["batch_sampler"] = batch_sampler
    else:
        args.update(batch_size=batch_size, shuffle=False)
    if device.type == "cuda":
        args["pin_memory"] = True
    if workers > 0:
        args["prefetch_factor"] = _PREFETCH
    return args


# -- the engine -----------------------------------------------------------------------------------
@dataclass
class EncodedBatch:
    """One micro-batch of results.

    Attributes:
        indices: dataset positions of the encoded items.
        embeddings: ``[len(indices), D]`` float32 (numpy, or a tensor with ``to_numpy=False``).
        failures: items of this batch that could not be read.
        skipped: dataset positions of items skipped on purpose (mostly nodata).
        skipped_valid: fraction of valid pixels of each skipped item (aligned with ``skipped``;
            NaN where the dataset did not measure it).
        extra: what the collate function returned besides images, indices, failures, skipped
            (targets, tokens, captions ...).
    """

    indices: list[int]
    embeddings: Any
    failures: list[Failure] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped_valid: list[float] = field(default_factory=list)


class WarningTally:
    """Warnings raised while reading a run's items, each counted once per item.

    The engine reports each distinct warning once at the end of a run, with the number of items
    it concerns (``... (37 of 1024 images)``), instead of once per item. A tally kept over several
    passes (a training run's validations) reports a warning at the end of the first pass that
    meets it only.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], set[int]] = {}
        self.reported: set[tuple[str, str]] = set()

    def add(self, index: int, warning: tuple[str, str]) -> None:
        self.counts.setdefault(tuple(warning), set()).add(index)  # type: ignore[arg-type]

    def report(self, total: int, unit: str = "images") -> list[str]:
        """The summary lines, also logged as warnings of :mod:`msclip.encode`."""
        lines = []
        for key, indices in self.counts.items():
            if key in self.reported:
                continue
            self.reported.add(key)
            line = f"{key[1]} ({len(indices)} of {total} {unit})"
            (shown_when_quiet if _shown_when_quiet(key[0]) else logger).warning("%s", line)
            lines.append(line)
        return lines


def _shown_when_quiet(category: str) -> bool:
    """Whether msclip's warning class named ``category`` is shown under ``--quiet`` too."""
    import msclip.errors

    return bool(getattr(getattr(msclip.errors, category, None), "shown_when_quiet", False))


def _name_of(dataset: Any, index: int) -> str:
    name = getattr(dataset, "name", None)
    return str(name(index)) if callable(name) else f"item {index}"


def encode_batches(
    model: Any,
    dataset: Dataset,
    *,
    batch_size: int | None = None,
    workers: int = 0,
    batch_sampler: Any = None,
    collate: Callable[[list[Any]], dict[str, Any]] = collate_items,
    normalize: bool = True,
    strict: bool = False,
    progress: bool = False,
    desc: str = "images",
    to_numpy: bool = True,
    autocast: contextlib.AbstractContextManager | None = None,
    grad_mode: str = "inference",
    abort_on: tuple[type[BaseException], ...] = (BandCoverageError,),
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tally: WarningTally | None = None,
) -> Iterator[EncodedBatch]:
    """Encode a dataset that follows the item protocol, batch by batch, in order.

    Args:
        model: an :class:`msclip.MSCLIP` (``encode_image``, ``device``, ``embed_dim``).
        dataset: items as described in the module docstring; an optional ``name(i)`` method names
            item ``i`` in messages.
        batch_size: images per model call; ``None`` (default): :func:`auto_batch_size` (4 on a
            CPU, from free GPU and host memory on a GPU).
        workers: DataLoader worker processes for decoding (0: in this process).
        batch_sampler: a batch sampler instead of sequential batches (one shard per process in
            distributed validation).
        collate: batch builder; must return ``images``, ``indices``, ``failures``, ``skipped``.
        normalize: L2-normalise the embeddings.
        strict: raise :class:`~msclip.errors.RasterReadError` naming the first unreadable items
            (after the batch that holds them) instead of skipping and counting them.
        progress: show a tqdm bar.
        desc: label of the progress bar.
        to_numpy: float32 numpy embeddings on the CPU (else float32 tensors on the model's
            device; inference tensors with ``grad_mode="inference"``).
        autocast: a context the image tower runs in (e.g. CUDA autocast during training).
        grad_mode: ``"inference"`` (``torch.inference_mode``) or ``"no_grad"`` (tensors usable
            with autograd afterwards, for training code).
        abort_on: error classes that stop the whole run even without ``strict`` (an input the
            user asked to refuse, e.g. ``--strict-bands``).
        forward: what runs on each batch of images (default ``model.encode_image``; e.g. the
            pooled taps of :meth:`msclip.MSCLIP.forward_intermediates` for the heads' features).
        tally: the :class:`WarningTally` of a run of several passes (each warning is reported
            once, after the first pass that meets it); default: one for this pass.

    The warnings raised while reading items (in this process or in workers) are counted and
    logged once each when the run ends, with the number of items they concern.

    Raises:
        RasterReadError: ``strict`` and an item cannot be read.
        MSCLIPError: an item failed with one of ``abort_on``.
    """
    for name, value in (("batch_size", batch_size), ("workers", workers)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer))
        ):
            raise InputTypeError(f"{name} must be a whole number, got {value!r}", param=name)
    total = (
        sum(len(b) for b in batch_sampler) if batch_sampler is not None else len(dataset)  # type: ignore[arg-type]
    )
    if batch_size is None:
        batch_size = auto_batch_size(model, workers=workers, items=total)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if grad_mode not in ("inference", "no_grad"):
        raise ValueError(f"grad_mode must be 'inference' or 'no_grad', got {grad_mode!r}")
    device = getattr(model, "device", torch.device("cpu"))
    source: Dataset = dataset
    threads = min(batch_size, torch.get_num_threads(), READ_THREADS)
    if workers == 0 and threads > 1 and callable(getattr(dataset, "read_item", None)):
        source = _ThreadedReads(dataset, threads)  # see the module docstring
    dtype = getattr(model, "dtype", torch.float32)
    if workers > 0 and forward is None and dtype in (torch.bfloat16, torch.float16):
        # the model's first step, done by the workers: half the bytes to hand over and copy
        collate = CastImages(collate, dtype)
    loader = DataLoader(source, **loader_args(device, batch_size, workers, collate, batch_sampler))
    amp = autocast if autocast is not None else contextlib.nullcontext()
    from msclip.progress import progress_bar

    dim = int(getattr(model, "embed_dim", 0))
    tally = tally if tally is not None else WarningTally()
    fatal = {cls.__name__: cls for cls in abort_on}
    batches = iter(loader)
    with progress_bar(total=total, desc=desc, unit="img", disable=not progress) as bar:
        while True:
            # items read here (no workers) use one torch thread each (see the module docstring)
            with single_thread() if workers == 0 else contextlib.nullcontext():
                batch = next(batches, None)
            if batch is None:
                break
            for i, w in batch.get("warnings", ()):
                tally.add(i, w)
            failures = [Failure(i, _name_of(dataset, i), msg) for i, msg in batch["failures"]]
            for f in failures:
                cls_name, _, text = f.reason.partition(": ")
                if cls_name in fatal:
                    cls = fatal[cls_name]
                    param = "bands" if issubclass(cls, BandError) else None
                    # the path once: readers' messages mostly name the file already
                    where = "" if f.name in text else f"{f.name}: "
                    raise cls(f"{where}{text}", param=param)
            for f in failures:
                logger.warning("cannot read %s: %s%s", f.name, f.reason,
                               "" if strict else " (skipped)")  # fmt: skip
            if strict and failures:
                raise RasterReadError(
                    "; ".join(f"cannot read {f.name}: {f.reason}" for f in failures)
                )
            skipped = [i for i, _ in batch["skipped"]]
            measured = dict(batch.get("skipped_valid", ()))
            skipped_valid = [measured.get(i, math.nan) for i in skipped]
            for i, msg in batch["skipped"]:
                logger.debug("skipped %s (%s)", _name_of(dataset, i), msg)
            images = batch["images"]
            # the grad mode covers the model call only, never the caller's code between batches
            grad = torch.inference_mode() if grad_mode == "inference" else torch.no_grad()
            with grad:
                if images is not None:
                    with amp:
                        emb = (forward or model.encode_image)(images.to(device, non_blocking=True))
                    emb = emb.float()
                    if normalize:
                        emb = F.normalize(emb, dim=-1)
                    out: Any = emb.cpu().numpy() if to_numpy else emb
                else:
                    out = (
                        np.zeros((0, dim), np.float32)
                        if to_numpy
                        else torch.zeros((0, dim), device=device)
                    )
            extra = {
                k: v
                for k, v in batch.items()
                if k not in ("images", "indices", "failures", "skipped", "skipped_valid")
            }
            extra.pop("warnings", None)
            bar.update(len(batch["indices"]) + len(failures) + len(skipped))
            yield EncodedBatch(list(batch["indices"]), out, failures, skipped, extra, skipped_valid)
    if torch.device(device).type == "cpu":
        # the batches' activations, once they are done: each batch reuses the memory of the one
        # before (see msclip.memory.steady_heap)
        trim_heap()
    tally.report(total, "images" if desc != "tiles" else "tiles")


# -- files and tiles ------------------------------------------------------------------------------
@dataclass
class EncodeResult:
    """All results of :func:`encode_images`.

    Attributes:
        embeddings: ``[N_ok, D]`` float32, in input order.
        indices: input positions of the rows of ``embeddings``.
        failures: unreadable items, in input order.
        skipped: input positions of items skipped as mostly nodata.
        valid: fraction of valid pixels of each encoded item (aligned with ``indices``).
        skipped_valid: fraction of valid pixels of each skipped item (aligned with ``skipped``).
    """

    embeddings: np.ndarray
    indices: list[int]
    failures: list[Failure]
    skipped: list[int]
    valid: list[float] = field(default_factory=list)
    skipped_valid: list[float] = field(default_factory=list)


def iter_encoded(
    model: Any,
    preprocess: Any,
    items: Sequence[ImageItem],
    batch_size: int | None = None,
    workers: int = 0,
    normalize: bool = True,
    progress: bool = False,
    min_valid: float | None = None,
    nodata: float | None = None,
    desc: str = "images",
    abort_on: tuple[type[BaseException], ...] = (BandCoverageError,),
    startup: Any = None,
) -> Iterator[EncodedBatch]:
    """Encode files or scene tiles batch by batch (in input order); unreadable items are named,
    skipped and reported in each batch's ``failures``.

    Args:
        model: an :class:`msclip.MSCLIP`.
        preprocess: the model's transform (``model.preprocess(...)``).
        items: file paths or scene tiles.
        batch_size: images per model call (``None``: :func:`auto_batch_size`).
        workers: DataLoader worker processes for decoding.
        normalize: L2-normalise the embeddings.
        progress: show a tqdm bar.
        min_valid: skip (and count) items with a smaller fraction of valid pixels.
        nodata: nodata value overriding the files'.
        desc: label of the progress bar.
        abort_on: error classes that stop the run instead of being skipped and counted.
        startup: files read ahead while the program started
            (:class:`msclip.io.prefetch.StartupReads`), used without workers (a worker is a
            copy of this process and must not take from them).
    """
    dataset = ImageDataset(items, preprocess, min_valid, nodata, startup if not workers else None)
    yield from encode_batches(
        model, dataset, batch_size=batch_size, workers=workers, normalize=normalize,
        progress=progress, desc=desc, abort_on=abort_on,
    )  # fmt: skip


def encode_images(
    model: Any,
    preprocess: Any,
    paths: Sequence[ImageItem],
    batch_size: int | None = None,
    workers: int = 0,
    normalize: bool = True,
    progress: bool = False,
    min_valid: float | None = None,
    nodata: float | None = None,
    desc: str = "images",
    abort_on: tuple[type[BaseException], ...] = (BandCoverageError,),
    startup: Any = None,
) -> EncodeResult:
    """Encode every item; see :func:`iter_encoded` for the arguments.

    Returns:
        The embeddings of the readable items plus the list of failures (never raises on a bad
        file).
    """
    embs, indices, failures, skipped, valid, skipped_valid = [], [], [], [], [], []
    for b in iter_encoded(
        model, preprocess, paths, batch_size, workers, normalize, progress, min_valid, nodata,
        desc, abort_on, startup,
    ):  # fmt: skip
        embs.append(b.embeddings)
        indices.extend(b.indices)
        failures.extend(b.failures)
        skipped.extend(b.skipped)
        valid.extend(b.extra.get("valid", []))
        skipped_valid.extend(b.skipped_valid)
    dim = int(getattr(model, "embed_dim", 0))
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    return EncodeResult(emb, indices, failures, skipped, valid, skipped_valid)


# -- labelled datasets ----------------------------------------------------------------------------
@dataclass
class LabelledEncoding:
    """Embeddings and targets of a labelled dataset (:func:`encode_dataset`).

    Attributes:
        features: ``[N_ok, D]`` float32, in dataset order.
        targets: ``[N_ok]`` class indices or ``[N_ok, C]`` indicators.
        indices: dataset positions of the rows.
        failures: unreadable samples (empty unless ``skip_bad``).
        warnings: the warnings that the results may be wrong met while reading the samples
            (input the model says little about: bands it lacks, 8-bit pictures; the warnings
            ``--quiet`` still shows), each once with the number of samples it concerns
            (``{"category", "message", "count"}``), kept for the run's record.
    """

    features: np.ndarray
    targets: np.ndarray
    indices: np.ndarray
    failures: list[Failure]
    warnings: list[dict[str, Any]] = field(default_factory=list)


def encode_dataset(
    model: Any,
    dataset: Any,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = False,
    desc: str | None = None,
    skip_bad: bool = False,
    normalize: bool = True,
    abort_on: tuple[type[BaseException], ...] = (BandCoverageError,),
) -> LabelledEncoding:
    """L2-normalised image embeddings and targets of a whole labelled dataset, in dataset order.

    The dataset returns ``(image, target, index)`` and must carry the model's preprocessing (see
    :class:`msclip.eval.datasets.BenchmarkDataset`).

    Args:
        model: an :class:`msclip.MSCLIP`.
        dataset: the labelled dataset.
        batch_size: images per model call (``None``: :func:`auto_batch_size`).
        workers: DataLoader worker processes.
        progress: show a tqdm bar.
        desc: label of the bar (default: the dataset's name).
        skip_bad: name, skip and count unreadable samples instead of failing.
        normalize: L2-normalise the embeddings.
        abort_on: error classes that fail the whole dataset even with ``skip_bad`` (see
            :func:`encode_batches`).

    Raises:
        RasterReadError: a sample cannot be read (without ``skip_bad``).
        MSCLIPError: no sample could be encoded.
    """
    wrapped = LabelledDataset(dataset)
    feats, targets, idx, failures = [], [], [], []
    name = getattr(dataset, "name", "dataset")
    tally = WarningTally()
    for b in encode_batches(
        model, wrapped, batch_size=batch_size, workers=workers, normalize=normalize,
        strict=not skip_bad, progress=progress, desc=desc or str(name), abort_on=abort_on,
        tally=tally,
    ):  # fmt: skip
        feats.append(b.embeddings)
        targets += [np.asarray(t) for t in b.extra.get("target", [])]
        idx += b.indices
        failures += b.failures
    if not idx:
        reason = f" ({len(failures)} unreadable)" if failures else ""
        raise MSCLIPError(f"{name}: no sample could be encoded; the dataset is empty{reason}")
    # the warnings that the results may be wrong (those --quiet still shows)
    warned = [{"category": category, "message": text, "count": len(items)}
              for (category, text), items in tally.counts.items()
              if _shown_when_quiet(category)]  # fmt: skip
    return LabelledEncoding(
        np.concatenate(feats), np.stack(targets), np.asarray(idx, dtype=np.int64), failures,
        warned,
    )  # fmt: skip
