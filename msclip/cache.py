"""Where msclip keeps what it computes once and reads again: one root for every cache folder.

The root is ``$MSCLIP_CACHE_DIR``, else ``~/.cache/msclip``. Its folders: ``sha256/`` file hashes
(:mod:`msclip.pretrained`), ``weights/`` converted checkpoints (:mod:`msclip.factory`), ``text/``
prompt embeddings (:mod:`msclip.text_cache`), ``features/`` the heads' frozen features
(:mod:`msclip.heads.finetune`) and ``kernels/`` kernel choices measured per CPU
(:mod:`msclip.architecture`). Deleting any of them costs only the time to compute it again.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

#: Environment variable naming the root of msclip's caches.
CACHE_ENV = "MSCLIP_CACHE_DIR"


def cache_root() -> Path:
    """``$MSCLIP_CACHE_DIR``, else ``~/.cache/msclip``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/msclip").expanduser()
