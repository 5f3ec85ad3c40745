"""Giving memory back to the operating system: weight pages, library pages and the C heap.

Four measured sources of resident memory that no Python ``del`` returns (64-tile, 10-class,
50-template classification with Llama3-MS-CLIP-Base in fp32, CUDA build of torch, Linux):

* **Pages of a memory-mapped weight file.** A model loaded from a mapped checkpoint uses the
  file's pages as its weights; every page read once stays resident until the whole map is freed.
  The text tower's ~170 MB are read for the prompts and never again in an image run.
  :func:`release_mapped` drops them with ``madvise(MADV_DONTNEED)``: a later read faults them in
  again from the file (the page cache keeps them), so the values never change.
* **Pages of a converted source.** Converting a mapped fp32 checkpoint to bf16 reads every page
  of the map (:func:`release_pages`, used tensor by tensor while loading).
* **Pages of shared libraries.** A process keeps every page of library code it has run once:
  torch's start-up alone leaves ~0.5 GB resident with its CUDA build, of which ~140 MB is the
  code and read-only data of CUDA libraries (cuBLAS, cuDNN, NVRTC, nvJitLink, NCCL ...) that a
  run on the CPU never executes, and much of the rest code that registers operators once.
  :func:`release_library_pages` drops the pages of library mappings that are not writable and
  that the process has never written to (their code and read-only data, equal to the file; the
  same ``MADV_DONTNEED`` as above): what the run still executes faults in again from the page
  cache at its next call (measured: ~40 of 118 MB dropped at the start of the images came back,
  with no change in speed). The pages stay in the operating system's page cache, shared with
  other processes, so this lowers the run's resident set (what ``/usr/bin/time``, job
  schedulers and container limits count against it), not the machine's file cache.
* **The C heap.** glibc raises its ``mmap`` threshold after large blocks are freed, so the
  activations of later calls come from the heap, and freed heap memory is kept by the process
  (measured: ~180 MB kept after encoding 500 prompts). :func:`trim_heap` (``malloc_trim``) hands
  the free part back; msclip calls it after each phase of a run (prompts, the images, strips of
  a scene). Between the batches of a phase the opposite is wanted: the command-line programs on
  a CPU set :func:`steady_heap`, so each batch reuses the memory the one before freed instead of
  faulting it in again.

Everything here is a no-op outside Linux/glibc, and on tensors that are not what each function
needs (a page is only dropped where the kernel shows it unchanged: a weight's own page entries in
``/proc/self/pagemap``, or its whole map without a written page in ``/proc/self/smaps`` where
``pagemap`` cannot be trusted).
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import logging
import mmap
import os
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "mapped_file_regions",
    "release_library_pages",
    "release_mapped",
    "release_pages",
    "steady_heap",
    "trim_heap",
]

logger = logging.getLogger(__name__)

_MADV_DONTNEED = 4
_LIBC: list = []


def _libc():  # -> ctypes.CDLL | None
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux")
                         else None)  # fmt: skip
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _whole_pages(start: int, nbytes: int) -> tuple[int, int]:
    """The page-aligned range strictly inside ``[start, start + nbytes)`` (may be empty)."""
    page = mmap.PAGESIZE
    first = -(-start // page) * page
    last = (start + nbytes) // page * page
    return first, max(first, last)


def _drop(first: int, last: int) -> bool:
    libc = _libc()
    if libc is None or last <= first:
        return False
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) == 0


def release_pages(t: torch.Tensor) -> None:
    """Drop the resident pages of a tensor that is a private memory map of an unchanged file.

    Converting a mapped fp32 checkpoint to bf16 reads every page of the map; without this the
    process would keep the fp32 pages resident beside the bf16 weights until the whole map is
    freed. A later read of the tensor faults the pages in again from the file, so its values do
    not change. Only for tensors of a :class:`msclip.pretrained.Checkpoint` with ``mapped=True``
    that nothing has written to (on anonymous memory it would zero the data; see
    :func:`release_mapped` for the checked form); a no-op outside Linux.
    """
    if t.device.type != "cpu" or t.numel() == 0:
        return
    _drop(*_whole_pages(t.data_ptr(), t.numel() * t.element_size()))


def _file_mapping(line: str) -> tuple[int, int, str, str] | None:
    """``(start, end, permissions, path)`` of a mapping's line in ``/proc/self/maps`` (or its
    header line in ``smaps``) when the mapping is of a file, else ``None``."""
    head = line.split(None, 5)
    if len(head) != 6 or "-" not in head[0] or ":" in head[0] or len(head[1]) != 4:
        return None
    path = head[5].strip()
    if not path.startswith("/"):
        return None
    lo, hi = (int(x, 16) for x in head[0].split("-"))
    return lo, hi, head[1], path


def _file_mappings() -> list[tuple[int, int, str, str, int, int]]:
    """``(start, end, permissions, path, resident_bytes, anonymous_bytes)`` of each file-backed
    mapping of this process (``/proc/self/smaps``); empty where it cannot be read."""
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out: list[list] = []
    current: list | None = None
    for line in lines:
        head = line.split(None, 1)
        if head and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            found = _file_mapping(line)
            current = None if found is None else [*found, 0, 0]
            if current is not None:
                out.append(current)
        elif current is not None and line.startswith("Rss:"):
            current[4] = int(line.split()[1]) * 1024
        elif current is not None and line.startswith("Anonymous:"):
            current[5] = int(line.split()[1]) * 1024
    return [tuple(r) for r in out]  # type: ignore[misc]


def _private_file_ranges() -> list[tuple[int, int]] | None:
    """``(start, end)`` of each private file mapping (``/proc/self/maps``: ~2 ms where a read of
    ``smaps``, which counts every mapping's pages, takes 20-70 ms); None where it cannot be
    read."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = (_file_mapping(line) for line in lines)
    return [(lo, hi) for lo, hi, perms, _ in filter(None, found) if perms[3] == "p"]


def _inside(ranges: list[tuple[int, int]], t: torch.Tensor) -> bool:
    """Whether ``t``'s memory lies inside one of ``ranges`` (sorted by start, not overlapping, as
    the kernel lists mappings)."""
    start = t.data_ptr()
    i = bisect.bisect_right(ranges, (start, float("inf"))) - 1
    return i >= 0 and start + t.numel() * t.element_size() <= ranges[i][1]


# /proc/self/pagemap: one 64-bit entry per page of the address space; bit 63 the page is
# present, 62 swapped out, 61 a page of a file (or of shared anonymous memory)
_PM_PRESENT, _PM_SWAPPED, _PM_FILE = 1 << 63, 1 << 62, 1 << 61


def _pagemap_entries(first: int, n: int) -> np.ndarray | None:
    """The ``/proc/self/pagemap`` entries of ``n`` pages from the page-aligned ``first``, or
    ``None`` where they cannot be read."""
    import numpy as np

    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            raw = os.pread(fd, n * 8, first // mmap.PAGESIZE * 8)
        finally:
            os.close(fd)
    except OSError:
        return None
    return np.frombuffer(raw, dtype=np.uint64) if len(raw) == n * 8 else None


@functools.cache
def _pagemap_reliable() -> bool:
    """Whether ``pagemap`` reports pages as they are: a page this process has just written must
    read present and not a file's. Where it reads as absent (an emulated ``/proc`` that answers
    zeros), written pages would pass for unchanged ones, so it is not used."""
    page = mmap.PAGESIZE
    buf = (ctypes.c_char * (2 * page))()  # anonymous memory holding one whole page
    start = -(-ctypes.addressof(buf) // page) * page
    ctypes.memset(start, 1, page)
    entries = _pagemap_entries(start, 1)
    if entries is None:
        return False
    e = int(entries[0])
    return bool(e & _PM_PRESENT) and not e & _PM_FILE


def _written_pages(first: int, last: int) -> bool | None:
    """Whether the process wrote to a page of ``[first, last)`` (page-aligned, inside a private
    map of a file): such a page was copied on write, so it is present and no longer a page of
    the file, or swapped out (a file's pages are never swapped, they are read again). From
    ``/proc/self/pagemap``, the entries of these pages alone (8 bytes a page: ~1 ms for the
    weights of a ViT-B where ``smaps`` took 15-70 ms to count every mapping's pages); ``None``
    where it cannot be read."""
    import numpy as np

    n = (last - first) // mmap.PAGESIZE
    if n <= 0:
        return False
    entries = _pagemap_entries(first, n) if _pagemap_reliable() else None
    if entries is None:
        return None
    copied = (entries & np.uint64(_PM_PRESENT)) != 0
    copied &= (entries & np.uint64(_PM_FILE)) == 0
    return bool(copied.any() or ((entries & np.uint64(_PM_SWAPPED)) != 0).any())


def mapped_file_regions() -> list[tuple[int, int, str, int]]:
    """``(start, end, path, anonymous_bytes)`` of each file-backed private mapping of this process.

    ``anonymous_bytes`` is the kernel's count of pages of the map that the process has written
    to (copied on write): a region with 0 still equals its file. Empty outside Linux.
    """
    return [(lo, hi, path, anon) for lo, hi, perms, path, _, anon in _file_mappings()
            if perms[3] == "p"]  # fmt: skip


# A shared library's file name: libc.so.6, libtorch_cpu.so, _C.cpython-311-x86_64-linux-gnu.so
_SHARED_LIBRARY = re.compile(r"[^/]+\.so(?:\.[\d.]+)?")


def _is_shared_library(path: str) -> bool:
    return _SHARED_LIBRARY.fullmatch(os.path.basename(path)) is not None


def release_library_pages(device: Any = "cpu") -> int:
    """Drop the resident pages of shared libraries' code and read-only data.

    For programs that run on the CPU (``device``; nothing is done for another device, whose
    program executes its CUDA libraries), once their start-up is over and between phases (text,
    then images): each mapping of a shared library (``*.so``, ``*.so.N``) that is not writable and
    that the process has never written to (not its relocated or written pages) has its pages
    dropped. They still equal the file, so what the program executes again reads them in again
    (from the page cache: minor faults) and behaves as before; what ran once (operator
    registration, imports, CUDA libraries on a CPU) stays out. Data files mapped by the program
    (weights, index rows) are not libraries and are left alone.

    Returns:
        the resident bytes dropped (0 outside Linux, off the CPU or with nothing to drop).
    """
    if _libc() is None or torch.device(device).type != "cpu":
        return 0
    released = 0
    for lo, hi, perms, path, rss, anon in _file_mappings():
        if "w" in perms or anon or not rss or not _is_shared_library(path):
            continue
        if _drop(lo, hi):
            released += rss
    logger.debug("released %d bytes of library pages", released)
    return released


def release_mapped(
    tensors: Iterable[torch.Tensor], ranges: list[tuple[int, int]] | None = None
) -> int:
    """Drop the resident pages of tensors that live, unchanged, in a private map of a file.

    For weights used in one phase of a run only (the text tower once the prompts are encoded):
    each CPU tensor whose memory lies inside a private file mapping and whose pages the process
    has never written to has its whole pages dropped; a later read faults them in again from the
    file, so results do not change. Tensors elsewhere (anonymous memory, a converted copy) or
    with a written page are left alone; the other tensors of a map with written pages are still
    dropped. Each tensor's pages are looked up in ``/proc/self/pagemap`` (:func:`_written_pages`);
    where it cannot be read, a map counts as unchanged only when ``/proc/self/smaps`` counts no
    written page in it (:func:`mapped_file_regions`, 15-70 ms, read once).

    Args:
        tensors: the tensors whose pages to drop where they qualify.
        ranges: the private file maps, ``(start, end)`` sorted (:func:`_private_file_ranges`),
            read by the caller for calls made while no mapping changes; read here (``/proc/self/
            maps``, ~1 ms) when omitted.

    Returns:
        the size of the page ranges dropped, resident or not (0 outside Linux or when nothing
        qualified).
    """
    if _libc() is None:
        return 0
    tensors = [t for t in tensors if t.device.type == "cpu" and t.numel()]
    if ranges is None:
        ranges = _private_file_ranges() or []
    unchanged_maps: list[tuple[int, int]] | None = None  # smaps's, where pagemap is unreadable
    released = 0
    seen: set[int] = set()
    for t in tensors:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        if not _inside(ranges, t):
            continue
        first, last = _whole_pages(t.data_ptr(), t.numel() * t.element_size())
        written = _written_pages(first, last)
        if written is None:
            if unchanged_maps is None:
                unchanged_maps = sorted((lo, hi) for lo, hi, _, anon in mapped_file_regions()
                                        if anon == 0)  # fmt: skip
            written = not _inside(unchanged_maps, t)
        if not written and _drop(first, last):
            released += last - first
    logger.debug("released %d bytes of mapped weight pages", released)
    return released


# glibc's mallopt parameters, and the largest mmap threshold it accepts on a 64-bit system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD_MAX = 32 << 20
# free memory the heap's top may hold before glibc gives it back by itself (trim_heap still does)
_STEADY_TRIM_THRESHOLD = 1 << 30


def steady_heap() -> bool:
    """Let the C heap keep the memory that a model call frees for the next call, until
    :func:`trim_heap` hands it back.

    By default glibc gives large freed blocks back to the operating system (``munmap``, or
    trimming the heap's top), so the next call of a model faults the same memory in again,
    zeroed: 8,000-34,000 page faults per batch of 4 images in a ViT-B/16 tower in fp32. Here
    blocks up to 32 MB come from the heap and what a call frees stays there for the next (~250
    faults per batch), until :func:`trim_heap`, which msclip's programs call after each phase.
    Measured on a Zen 3 CPU: the image tower 5-7 % faster (838-858 against 900-908 ms per batch),
    the 64-tile Llama3-MS-CLIP-Base classification ~2 % (19.5-20.7 s against 20.2-21.5 s, runs
    alternated), for 25-60 MB more peak memory (0.84-0.90 GB against 0.81-0.84 GB: the heap's
    free blocks are not always where the next call's fit).

    Threads made from then on share the process's heap instead of each taking an arena of its
    own: the threads that read a batch's files (:func:`msclip.encode.read_items`) would otherwise
    each keep what they freed in their own arena, where neither the model nor the next batch's
    other reader reuses it (64-tile classification, bf16, 2-core Zen 4: peak 0.68 GB with an
    arena per reader, 0.65-0.67 GB shared, against 0.65 reading on one thread).

    Process-wide and for the rest of the process: called by the command-line programs running on
    a CPU, not by the library. Returns whether glibc took the settings (a no-op elsewhere).
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
    ok = bool(mallopt(_M_ARENA_MAX, 1)) and ok
    return bool(mallopt(_M_TRIM_THRESHOLD, _STEADY_TRIM_THRESHOLD)) and ok


def trim_heap() -> None:
    """Return the C heap's free memory to the operating system (glibc ``malloc_trim``).

    Cheap (well under a millisecond with a few hundred MB free) and harmless to call between
    phases of a run; a no-op where the C library has no ``malloc_trim``.
    """
    libc = _libc()
    fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if fn is not None:
        fn(ctypes.c_size_t(0))
