"""The one durable way msclip writes files: temporary file, sync, rename, sync the folder.

Every output (CSV tables, JSON records, GeoTIFFs, indexes, caches, checkpoints) goes through
:func:`atomic_write` (or :func:`temp_path` + :func:`commit` for files written piece by piece), so
a crash leaves the old file or the new one, never a half-written one, and files get the
permissions of a normally created file. :func:`check_output` refuses an output location that
cannot be written before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import MSCLIPError, OutputPathError

__all__ = [
    "ABANDONED_TEMP_S",
    "TMP_PREFIX",
    "Table",
    "abandoned_temp",
    "atomic_write",
    "check_output",
    "commit",
    "current_umask",
    "fsync_dir",
    "jsonable",
    "lock_exclusive",
    "temp_path",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]


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

#: A temporary file (:data:`TMP_PREFIX`) older than this was left by a writer that died; a younger
#: one may be another process's write in progress (two nodes sharing one cache or index folder).
ABANDONED_TEMP_S = 3600


def abandoned_temp(path: str | os.PathLike, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file of msclip's writers that a crashed writer left: named
    with :data:`TMP_PREFIX` and older than :data:`ABANDONED_TEMP_S` (``now``: the time to
    compare with, default the current time). ``False`` for a file removed meanwhile."""
    import time

    p = Path(path)
    if not p.name.startswith(TMP_PREFIX):
        return False
    try:
        return (time.time() if now is None else now) - p.stat().st_mtime > ABANDONED_TEMP_S
    except OSError:  # removed by its writer meanwhile
        return False


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


#: Lock files held by :func:`lock_exclusive`: a child process forked meanwhile (a DataLoader
#: worker, a multiprocessing pool) closes its copies at once (:func:`_drop_locks_in_child`).
_HELD_LOCKS: weakref.WeakSet = weakref.WeakSet()


def _drop_locks_in_child() -> None:
    """Close, in a process just forked, the lock files its parent holds. A ``flock`` belongs to
    the open file, which a fork shares: a child holding a copy kept the lock after its parent
    died, and a DataLoader worker of a training run killed by SIGKILL (the out-of-memory killer)
    outlives it by up to 5 s, in which a resume was refused as 'another training run is
    writing'. Closing the child's copy leaves the parent's lock as it is."""
    for fh in list(_HELD_LOCKS):
        with contextlib.suppress(OSError, ValueError):
            fh.close()
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_drop_locks_in_child)


def lock_exclusive(fh: Any) -> bool | None:
    """Take an exclusive lock (``flock``, without waiting) on an open file that stands for a
    folder a process writes alone (an index, a training run's output), held until the file is
    closed or the process ends; processes forked from this one do not hold it (their copy of
    the file is closed in them).

    Returns:
        ``True``: held; ``False``: another process holds it (``fh`` is then closed); ``None``:
        locks are not available here (no ``fcntl``, or a file system that refuses them, as some
        network mounts do), so a second writer would not be noticed.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return False
    except OSError:
        return None
    _HELD_LOCKS.add(fh)
    return True


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
        OutputPathError: the target's folder cannot be created or written, the target is a
            folder, or the disk is full or read-only (an ``OSError`` of the location raised by
            ``write``, named by the target rather than the temporary file); the old file, if
            any, is left as it was.
    """
    return atomic_write_all([(path, write, suffix)])[0]


def atomic_write_all(items: Sequence[tuple[str | os.PathLike, Any, str]]) -> list[Path]:
    """Write files that belong together (a table and its record): each ``(path, write, suffix)``
    as in :func:`atomic_write`, but every temporary file is written before any target is
    replaced, so a failed write (a full disk, a folder in the way) leaves all the old files as
    they were. The targets are then replaced in order; should a rename fail after the first, the
    targets not replaced are removed, so that no old file sits beside new ones as their
    companion.

    Raises:
        OutputPathError: as :func:`atomic_write`.
    """
    done: list[tuple[Path, str]] = []
    try:
        for path, write, suffix in items:
            target = Path(path)
            tmp = temp_path(target, suffix)
            done.append((target, tmp))
            try:
                write(tmp)
            except OSError as err:
                raise _write_error(target, err) from err
        for i, (target, tmp) in enumerate(done):
            try:
                commit(tmp, target)
            except BaseException:
                # new files are in place: the old ones not replaced would pass for their
                # companions (with none replaced yet, every old file stays)
                for stale, _ in done[i:] if i else []:
                    with contextlib.suppress(OSError):
                        stale.unlink()
                raise
    except BaseException:
        for _, tmp in done:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return [target for target, _ in done]


#: Errors of the disk or the location (not of the content being written): full disk or quota,
#: read-only file system, no permission, file too large, a folder or file in the way.
_LOCATION_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EISDIR", "ENOTDIR")
    if hasattr(errno, name)
)


def _write_error(target: Path, err: OSError) -> OSError:
    """An :class:`OutputPathError` naming ``target`` (not the temporary file) for an error of the
    disk or the location; any other error as it was raised."""
    if isinstance(err, MSCLIPError) or err.errno not in _LOCATION_ERRNOS:
        return err
    if target.is_dir():
        why = "it is a folder; give a file name"
    elif err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why = f"{err.strerror} (free some space in {target.parent} or write elsewhere)"
    else:
        why = err.strerror or str(err)
    return OutputPathError(f"cannot write {target}: {why}")


#: Bytes of the target's name kept in the name of its temporary file.
_TEMP_NAME_BYTES = 180


def temp_path(target: str | os.PathLike, suffix: str = "") -> str:
    """A new, empty temporary file beside ``target`` (for a write that :func:`commit` ends).

    Raises:
        OutputPathError: the target's folder cannot be created or written.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # the target's name, cut to leave room for the prefix and mkstemp's part within the
        # 255 bytes a file name may have (a table named at that length is written too)
        name = os.fsdecode(os.fsencode(target.name)[:_TEMP_NAME_BYTES])
        fd, tmp = tempfile.mkstemp(
            prefix=f"{TMP_PREFIX}{name}.", suffix=suffix or ".part", dir=target.parent
        )
    except OSError as err:
        raise OutputPathError(f"cannot write {target}: {err.strerror or err}") from err
    os.close(fd)
    return tmp


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make a finished temporary file durable and move it onto ``target`` in one rename: sync the
    file, give it the permissions of a normally created file (``0666`` less the umask), rename,
    then sync the folder (the order that survives a power cut; see :func:`atomic_write`).

    Raises:
        OutputPathError: the target is a folder, or the sync or rename fails for lack of space
            or permission; ``tmp`` is left for the caller to remove.
    """
    try:
        _fsync_file(os.fspath(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except OSError as err:
        raise _write_error(Path(target), err) from err
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
    """Write a pandas DataFrame (or a :class:`Table`) as CSV (UTF-8, no index column)
    atomically.

    A file name that is not valid UTF-8 (Python holds its bytes as surrogates) is written as the
    bytes it has on disk, so the CSV names that very file, instead of failing with a
    ``UnicodeEncodeError`` after the whole run."""
    return atomic_write(path, csv_writer(df, float_format), ".csv")


class Table:
    """A small result table of named columns, written as CSV exactly as pandas writes a
    DataFrame with ``to_csv(index=False, float_format=...)``: the standard library's ``csv``
    with minimal quoting, floats in ``float_format``, missing values (``None``, NaN) empty.

    For the programs that make one table at the end of a run (classification, retrieval), so
    that they do not import pandas for it: ~0.17 s after torch, 2 % of a 64-tile zero-shot
    classification (2-core Zen 4). :func:`csv_writer` takes either.

    Args:
        columns: column name -> values, all of one length.
    """

    def __init__(self, columns: dict[str, Sequence[Any]] | None = None) -> None:
        self._columns: dict[str, list[Any]] = {}
        for name, values in (columns or {}).items():
            self[name] = values

    @classmethod
    def from_rows(cls, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
        """A table of ``rows``, each holding one value per column."""
        if any(len(r) != len(columns) for r in rows):
            raise ValueError(f"every row must hold {len(columns)} values ({list(columns)})")
        table = cls()
        table._columns = {str(name): [r[j] for r in rows] for j, name in enumerate(columns)}
        return table

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()), []))

    def __getitem__(self, name: str) -> list[Any]:
        return self._columns[name]

    def __setitem__(self, name: str, values: Sequence[Any]) -> None:
        values = list(values)
        if self._columns and len(values) != len(self):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(self)} rows")
        self._columns[str(name)] = values

    def rows(self) -> list[list[Any]]:
        """The rows, each a list of one value per column."""
        return [list(r) for r in zip(*self._columns.values())] if self._columns else []

    def to_csv(
        self,
        path: str | os.PathLike,
        index: bool = False,
        float_format: str | None = None,
        errors: str = "strict",
    ) -> None:
        """Write the table to ``path`` (pandas' signature, without an index column)."""
        import csv
        import math

        if index:
            raise ValueError("a Table has no index column to write")

        def cell(v: Any) -> Any:
            if v is None:
                return ""
            if isinstance(v, (float, np.floating)):
                if math.isnan(v):
                    return ""
                return float_format % v if float_format else str(v)
            if isinstance(v, np.generic):
                return v.item()
            return v

        with open(path, "w", encoding="utf-8", errors=errors, newline="") as f:
            out = csv.writer(f, lineterminator=os.linesep)
            out.writerow(self.columns)
            out.writerows([cell(v) for v in r] for r in self.rows())


def csv_writer(df: Any, float_format: str | None = None) -> Any:
    """The ``write`` function of :func:`write_csv` for :func:`atomic_write` or
    :func:`atomic_write_all`."""

    def write(tmp: str | os.PathLike) -> None:
        df.to_csv(tmp, index=False, float_format=float_format, errors="surrogateescape")

    return write
