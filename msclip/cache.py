"""Where msclip keeps what it computes once and reads again: one root for every cache folder.

The root is ``$MSCLIP_CACHE_DIR``, else ``~/.cache/msclip``. Its folders: ``sha256/`` file hashes
(:mod:`msclip.pretrained`), ``weights/`` converted checkpoints (:mod:`msclip.factory`), ``text/``
prompt embeddings (:mod:`msclip.text_cache`), ``features/`` the heads' frozen features
(:mod:`msclip.heads.finetune`) and ``kernels/`` kernel choices and checks measured per CPU
(:func:`machine_file`: :mod:`msclip.architecture`, :mod:`msclip.precision_check`). Deleting any
of them costs only the time to compute it again.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root", "machine_file"]

#: Environment variable naming the root of msclip's caches.
CACHE_ENV = "MSCLIP_CACHE_DIR"


def cache_root() -> Path:
    """``$MSCLIP_CACHE_DIR``, else ``~/.cache/msclip``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/msclip").expanduser()


def machine_file(kind: str, *parts: object) -> Path:
    """Where a choice or check measured on this machine is kept: ``kernels/`` of the cache root,
    one file per ``kind``, CPU kind and torch build (:meth:`msclip.hardware.CPUInfo.key`), torch
    thread count and ``parts`` (what else the measurement depends on)."""
    import torch

    from msclip.hardware import cpu_info

    name = "-".join([kind, cpu_info().key(), f"t{torch.get_num_threads()}", *map(str, parts)])
    return cache_root() / "kernels" / f"{name}.json"
