"""Where msclip keeps what it computes once and reads again: one root for every cache folder.

The root is ``$MSCLIP_CACHE_DIR``, else ``~/.cache/msclip``. Its folders: ``sha256/`` file hashes
(:mod:`msclip.pretrained`), ``weights/`` converted checkpoints (:mod:`msclip.factory`), ``text/``
prompt embeddings (:mod:`msclip.text_cache`), ``features/`` the heads' frozen features
(:mod:`msclip.heads.finetune`) and ``kernels/`` kernel choices and checks measured per CPU
(:func:`machine_file`: :mod:`msclip.architecture`, :mod:`msclip.precision_check`). Deleting any
of them costs only the time to compute it again.

Where there is no home folder to find (``HOME`` unset and the user id missing from the password
database, as in a container run under an arbitrary user id) and ``MSCLIP_CACHE_DIR`` is not set,
the caches live in a private temporary folder for the life of the process, with one warning that
names the fix.

A cache that cannot be written (a read-only or full cache folder) or a kept file that cannot be
read is never an error: what it would have held is computed again. Each cache says so once per
process (:func:`note_unwritable`, :func:`note_damaged`), not on every call.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "cache_root",
    "machine_file",
    "machine_key",
    "note_damaged",
    "note_unwritable",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the root of msclip's caches.
CACHE_ENV = "MSCLIP_CACHE_DIR"

# what this process has said about its caches: one warning each (see note_unwritable)
_NOTED: set[tuple[str, str, str]] = set()


def cache_root() -> Path:
    """``$MSCLIP_CACHE_DIR``, else ``~/.cache/msclip``; without a home folder, a private
    temporary folder removed when the process ends (see the module docstring)."""
    env = os.environ.get(CACHE_ENV)
    try:
        return Path(env).expanduser() if env else Path("~/.cache/msclip").expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        return _process_root(env or "~/.cache/msclip")


@functools.cache
def _process_root(wanted: str) -> Path:
    from msclip.errors import MSCLIPWarning

    root = Path(tempfile.mkdtemp(prefix="msclip-cache-"))  # mode 0700: this user's alone
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    warnings.warn(
        f"msclip's caches cannot be kept in {wanted}: there is no home folder (HOME is unset "
        f"and user id {os.getuid() if hasattr(os, 'getuid') else '?'} has no entry in the "
        f"password database); they last for this process only, in {root}; set {CACHE_ENV} to "
        "a folder to keep them",
        MSCLIPWarning,
        stacklevel=3,
    )
    return root


def machine_key() -> str:
    """What a choice measured on this machine depends on besides its inputs: the CPU kind and
    torch build (:meth:`msclip.hardware.CPUInfo.key`) and torch's thread count
    (``<cpu key>-t<threads>``; a bandwidth-bound kernel and a compute-bound one rank differently
    on one thread than on all cores)."""
    import torch

    from msclip.hardware import cpu_info

    return f"{cpu_info().key()}-t{torch.get_num_threads()}"


def machine_file(kind: str, *parts: object) -> Path:
    """Where a choice or check measured on this machine is kept: ``kernels/`` of the cache root,
    one file per ``kind``, :func:`machine_key` and ``parts`` (what else the measurement depends
    on)."""
    name = "-".join([kind, machine_key(), *map(str, parts)])
    return cache_root() / "kernels" / f"{name}.json"


def _reason(err: BaseException) -> str:
    """The system's words for ``err`` (``Permission denied``), from the error msclip's writers
    wrapped where there is one; else the error's message."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__
    return str(err) or repr(err)


def note_unwritable(
    what: str, folder: Path, err: BaseException, then: str, fix: str | None = None
) -> None:
    """Say, once per process for ``what`` in ``folder``, that ``what`` cannot be kept in
    ``folder`` (read-only, full: ``err``), what follows (``then``) and the fix (``fix``; by
    default, setting ``$MSCLIP_CACHE_DIR``: right for the folders under :func:`cache_root`, not
    for a cache kept beside its data); later failures of the same cache are debug lines (a
    warning on every load or call would drown the rest)."""
    key = ("unwritable", what, str(folder))
    if key in _NOTED:
        logger.debug("%s not kept in %s: %s", what, folder, err)
        return
    _NOTED.add(key)
    if fix is None:
        fix = f"set {CACHE_ENV} to a writable folder with free space to keep it"
    logger.warning("cannot keep %s in %s (%s); %s; %s", what, folder, _reason(err), then, fix)


def note_damaged(
    what: str, path: Path, err: BaseException | str, then: str = "measuring it again"
) -> None:
    """Say, once per process for ``path``, that the kept ``what`` in ``path`` cannot be read
    (``err``: damaged, cut short, not msclip's) and what follows (``then``: it is measured or
    built again)."""
    key = ("damaged", what, str(path))
    if key in _NOTED:
        return
    _NOTED.add(key)
    reason = err if isinstance(err, str) else _reason(err)
    logger.warning("ignoring the damaged %s %s (%s); %s", what, path, reason, then)
