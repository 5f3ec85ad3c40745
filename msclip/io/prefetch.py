"""The first input files of a run, read by a second process while the run starts.

A command-line run spends its first second or so on one core: importing torch (0.8-1.4 s on the
machines msclip is measured on), then loading the model; the files it encodes are read only after
the text tower has run. On a machine with a second core idle meanwhile, :func:`start_reads` forks,
before torch is imported, a process that reads the run's first files the way the run would
(:func:`msclip.io.readers.read_raster` with the run's settings) into memory shared with the run,
up to a byte budget; the run then takes those pixels instead of reading the files again. On a
2-core Zen 5 VM the 64-tile zero-shot run of ``benchmarks/inference.py`` took 4.98-5.36 s against
5.36-5.97 s with ``MSCLIP_STARTUP_READS=0`` (four runs of each, alternated): its 64 deflate
GeoTIFFs took 0.09-0.10 s of its time (their preprocessing) against 0.34-0.39 s, and it no longer
imports rasterio (GeoTIFF sizes are checked from their headers).

What is taken is exactly what the run's own read gives (the pixels, band names and nodata value;
not the georeference, which file encoding does not use), because the reading process keeps only
files it read without any warning or error (a Python warning, a log record at warning level, as
GDAL's warnings come through rasterio, or any output of a C library on standard output or error:
the run reads those files itself and reports them as usual), a file is taken only with the settings
it was read with and unchanged since (inode, size and modification time, of the files a VRT reads
too), and never twice. The reading process runs at the lowest priority (it only uses idle cores),
never writes to the terminal, ends at the run's first take (killed, after which the records of the
files it finished are read) or when the budget is spent, and dies with the run (Linux's parent-
death signal).

It starts only where it can help and fork is safe: on Linux, with two or more usable cores, no
other Python thread running and torch not yet imported (a forked copy of a process that has
started torch's thread pools is not safe to use; numpy's BLAS thread, idle then, is made safe
for fork by OpenBLAS, and the reading process never calls BLAS). It is given at most the run's
first :data:`MAX_FILES` files. ``MSCLIP_STARTUP_READS=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import select
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ENV", "StartupReads", "start_reads"]

logger = logging.getLogger(__name__)

#: Environment variable that turns the start-up reads off (``0``, ``off``, ``false``, ``no``; a
#: value that is no switch is warned about and read as on, as msclip's other switches are).
ENV = "MSCLIP_STARTUP_READS"
#: Most bytes of pixels read ahead by default (at most an eighth of the memory available).
DEFAULT_BUDGET = 256 << 20
#: Largest file (in pixels) the reading process reads: larger ones are left to the run, which
#: judges them (a whole scene given as an image is refused there, not read here).
MAX_PIXELS = 1 << 24
#: Most files the reading process is given (the first of the run's): their records (~0.3 KB
#: each) wait in a pipe of 1 MB until the run takes the first file; a reading process whose
#: pipe is full waits, idle, until it is stopped.
MAX_FILES = 2048

_PAGE = mmap.PAGESIZE


def _why_not() -> str | None:
    """Why the reads cannot start in this process (``None``: they can)."""
    from msclip.hardware import SWITCH_OFF, SWITCH_VALUES, env_setting, usable_cores  # torch-free

    if env_setting(ENV, "1", SWITCH_VALUES) in SWITCH_OFF:
        return f"{ENV}=0"
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return "not on Linux"
    if "torch" in sys.modules:
        return "torch is imported already"
    if threading.active_count() > 1:
        return "other threads run"
    if usable_cores() < 2:
        return "one usable core"
    return None


def _file_key(path: str) -> tuple[int, int, int] | None:
    """What tells that an input changed since it was read: the inode of the path (a file renamed
    over it) and :func:`msclip.io.readers.input_stamp` (size and modification time, of the files
    a VRT or a folder reads too: a band file rewritten under an unchanged VRT is a change)."""
    from msclip.io.readers import input_stamp

    try:
        return (os.stat(path).st_ino, *input_stamp(path))
    except OSError:
        return None


def _settings(
    bands: Sequence[str] | None, layout: str | None, sensor: str | None, nodata: float | None
) -> dict[str, Any]:
    """The :func:`~msclip.io.readers.read_raster` settings files are read ahead with, in the form
    :meth:`StartupReads.take` compares them in."""
    return {"bands": None if bands is None else tuple(bands), "layout": layout,
            "sensor": sensor, "nodata": nodata}  # fmt: skip


def _silenced() -> Any:
    """Make this (reading) process silent, and return a count of what it would have said.

    Whatever reading a file says is left for the run to say: standard output and error go to a
    file in memory, and every log record at warning level or above (GDAL's warnings come through
    rasterio's loggers) is counted instead of written. The count (log records plus bytes written
    to either stream, e.g. by a C library) changes while a file is read only where that file
    gave some message; such a file is not kept (the run reads it and shows the message)."""
    records = [0]

    class _Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records[0] += 1

    loggers = [logging.getLogger()]
    loggers += [
        x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)
    ]
    for each in loggers:  # the run's handlers write to its terminal: none of them here
        for handler in list(each.handlers):
            each.removeHandler(handler)
        each.propagate = True
    root = logging.getLogger()
    root.addHandler(_Count(logging.WARNING))
    root.setLevel(logging.WARNING)
    logging.disable(logging.NOTSET)
    try:
        sink = os.memfd_create("msclip-startup-reads")
    except (AttributeError, OSError):  # no memfd: a temporary file, unlinked at once
        import tempfile

        sink, name = tempfile.mkstemp(prefix="msclip-startup-reads-")
        os.unlink(name)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.dup2(sink, 1)
    os.dup2(sink, 2)

    def said() -> tuple[int, int]:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        return records[0], os.fstat(sink).st_size

    return said


class StartupReads:
    """Files read by a forked process (:func:`start_reads`); :meth:`take` them while encoding,
    :meth:`close` when the run is done. Safe to use from several threads."""

    def __init__(
        self, pid: int, fd: int, buf: mmap.mmap, settings: dict[str, Any], total: int
    ) -> None:
        self._pid: int | None = pid
        self._fd: int | None = fd
        self._buf: mmap.mmap | None = buf
        self.settings = settings
        self.total = total
        self._records: dict[str, dict[str, Any]] = {}
        self._pending = b""
        self._lock = threading.Lock()
        self.read = 0  # files the reading process read (known once it has ended)
        self.taken = 0

    # -- the reading process's side ---------------------------------------------------------------
    @staticmethod
    def _child(
        paths: Sequence[str], settings: dict[str, Any], buf: mmap.mmap, fd: int, parent: int
    ) -> None:
        """Read ``paths`` in order into ``buf``, one JSON line per file on ``fd``; never returns
        (``parent``: the run's process id)."""
        try:
            with contextlib.suppress(OSError):
                os.nice(19)  # idle cores only
            with contextlib.suppress(Exception):
                import ctypes

                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the run ended before the signal was set
                return
            said = _silenced()
            from msclip.io.readers import read_raster

            offset = 0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for path in paths:
                    key = _file_key(path)
                    if key is None:
                        continue
                    caught.clear()
                    before = said()
                    try:
                        raster = read_raster(path, max_pixels=MAX_PIXELS, **settings)
                    except Exception:  # the run reads it and says why
                        continue
                    if caught or said() != before:  # the run reads it and warns itself
                        continue
                    data = np.ascontiguousarray(raster.data)
                    if offset + data.nbytes > len(buf):
                        break  # the budget is spent
                    np.ndarray(data.shape, data.dtype, buffer=buf, offset=offset)[...] = data
                    line = json.dumps({
                        "path": path, "key": key, "offset": offset, "shape": list(data.shape),
                        "dtype": data.dtype.str, "bands": [str(b) for b in raster.bands],
                        "nodata": None if raster.nodata is None else float(raster.nodata),
                    }).encode() + b"\n"  # fmt: skip
                    if len(line) > select.PIPE_BUF:  # one atomic write per record, or none
                        continue
                    os.write(fd, line)
                    offset += -(-data.nbytes // _PAGE) * _PAGE
        finally:
            os._exit(0)

    # -- the run's side ---------------------------------------------------------------------------
    def _parse(self, chunk: bytes) -> None:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = json.loads(line)
                self._records[str(rec["path"])] = rec
                self.read += 1

    def _stop(self) -> None:
        """End the reading process and collect the records of the files it finished."""
        if self._pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self._pid, 0)
            self._pid = None
        if self._fd is not None:
            try:
                while chunk := os.read(self._fd, 1 << 16):
                    self._parse(chunk)
            except OSError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: for good) for the reading process to finish
        on its own; whether it has. Taking stops it at once instead."""
        import time

        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pid is not None:
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(self._pid, os.WNOHANG)
                    if not done:
                        if end is not None and time.monotonic() >= end:
                            return False
                        time.sleep(0.01)
                        continue
                self._pid = None
            return True

    def take(
        self,
        path: str | os.PathLike,
        *,
        bands: Sequence[str] | None = None,
        layout: str | None = None,
        sensor: str | None = None,
        nodata: float | None = None,
        window: Any = None,
        max_pixels: int | None = None,
        shorter_side: int | None = None,
    ) -> tuple[np.ndarray, tuple[str, ...], float | None] | None:
        """``(data, bands, nodata)`` of ``path`` as :func:`msclip.io.readers.read_raster` with
        these arguments gives them, where it was read ahead with the same settings and is
        unchanged since; else ``None`` (read it as usual). Each file is given once."""
        asked = _settings(bands, layout, sensor, nodata)
        if window is not None or shorter_side is not None or asked != self.settings:
            return None
        name = os.fsdecode(os.fspath(path))
        with self._lock:
            if self._buf is None:
                return None
            self._stop()
            rec = self._records.get(name)
            if rec is None or _file_key(name) != tuple(rec["key"]):
                return None
            shape = tuple(int(s) for s in rec["shape"])
            if max_pixels is not None and shape[1] * shape[2] > max_pixels:
                return None  # the run's read refuses it, with its own words
            del self._records[name]
            view = np.ndarray(shape, np.dtype(rec["dtype"]), buffer=self._buf, offset=rec["offset"])
            data = view.copy()
            del view
            with contextlib.suppress(AttributeError, OSError, ValueError):
                size = -(-data.nbytes // _PAGE) * _PAGE
                self._buf.madvise(mmap.MADV_REMOVE, int(rec["offset"]), size)  # memory back
            self.taken += 1
        nd = rec["nodata"]
        return data, tuple(rec["bands"]), None if nd is None else float(nd)

    def close(self) -> None:
        """Stop the reading process (if it still runs) and free the shared memory."""
        with self._lock:
            self._stop()
            if self._buf is not None:
                if self.total:
                    logger.debug(
                        "%d of %d input files were read during start-up, %d of them used",
                        self.read, self.total, self.taken,
                    )  # fmt: skip
                with contextlib.suppress(BufferError):
                    self._buf.close()
                self._buf = None
            self._records.clear()

    def __enter__(self) -> StartupReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_reads(
    paths: Sequence[str | os.PathLike],
    *,
    bands: Sequence[str] | None = None,
    layout: str | None = None,
    sensor: str | None = None,
    nodata: float | None = None,
    budget: int | None = None,
) -> StartupReads | None:
    """Fork a process that reads the first of ``paths`` (with these
    :func:`~msclip.io.readers.read_raster` settings) into memory shared with this one, within
    ``budget`` bytes of pixels (default: 256 MB, at most an eighth of the memory available to
    this process, :func:`msclip.hardware.available_memory`); ``None`` where it cannot start (see
    the module docstring) or there is nothing to read. The pixels stay in memory until taken."""
    why = _why_not()
    if why is not None:
        logger.debug("no start-up reads: %s", why)
        return None
    names = [os.fsdecode(os.fspath(p)) for p in paths[:MAX_FILES]]
    if budget is None:
        from msclip.hardware import available_memory  # torch-free; a container's limit counts

        available = available_memory()
        budget = DEFAULT_BUDGET if available is None else min(DEFAULT_BUDGET, available // 8)
    budget = -(-int(budget) // _PAGE) * _PAGE
    if not names or budget <= 0:
        return None
    settings = _settings(bands, layout, sensor, nodata)
    try:
        buf = mmap.mmap(-1, budget)  # shared and anonymous: pages exist once written
        r, w = os.pipe()
    except OSError as err:
        logger.debug("no start-up reads: %s", err)
        return None
    with contextlib.suppress(ImportError, AttributeError, OSError):
        import fcntl

        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)  # room for the records (Linux's default max)
    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
        with contextlib.suppress(Exception):
            stream.flush()
    parent = os.getpid()
    try:
        with warnings.catch_warnings():
            # Python 3.12 warns at a fork of a process with more than one thread: here the only
            # other one is numpy's BLAS thread, idle, which OpenBLAS makes safe for fork itself
            # and which the reading process never uses
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as err:
        os.close(r)
        os.close(w)
        buf.close()
        logger.debug("no start-up reads: %s", err)
        return None
    if pid == 0:  # pragma: no cover - the reading process (ends in os._exit)
        os.close(r)
        StartupReads._child(names, settings, buf, w, parent)
    os.close(w)
    return StartupReads(pid, r, buf, settings, len(names))
