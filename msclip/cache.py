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
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import warnings
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root", "machine_file"]

#: Environment variable naming the root of msclip's caches.
CACHE_ENV = "MSCLIP_CACHE_DIR"


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


def machine_file(kind: str, *parts: object) -> Path:
    """Where a choice or check measured on this machine is kept: ``kernels/`` of the cache root,
    one file per ``kind``, CPU kind and torch build (:meth:`msclip.hardware.CPUInfo.key`), torch
    thread count and ``parts`` (what else the measurement depends on)."""
    import torch

    from msclip.hardware import cpu_info

    name = "-".join([kind, cpu_info().key(), f"t{torch.get_num_threads()}", *map(str, parts)])
    return cache_root() / "kernels" / f"{name}.json"
