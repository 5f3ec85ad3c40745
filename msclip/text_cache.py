"""On-disk cache of text-tower embeddings, keyed by model checkpoint and text.

Zero-shot classification encodes every (class, template) prompt: 10 classes x 50 templates is
500 text-tower passes, several seconds on a CPU, and the same for every run over new images. This
cache stores each prompt's raw embedding (float32, before normalisation) so a repeated run with
the same model skips the text tower entirely.

Layout: ``<root>/<model key>/`` holds ``model.json`` (what the key was made from) and shards
``shard-*.npz``, each with ``keys`` (sha256 hex of the UTF-8 text) and ``emb`` (``[N, D]``
float32). Shards are written atomically (temporary file + rename) and are never modified, so
concurrent runs and killed runs never leave a corrupt cache; when a directory holds more than
:data:`MAX_SHARDS` shards, ``put`` merges them into one. Files are read with
``np.load(allow_pickle=False)``.

The model key (:func:`model_cache_key`) is the model's fingerprint
(:meth:`msclip.MSCLIP.fingerprint`: the weight file's sha256 or a hash of the weights themselves,
the architecture, the precision of the weights and the preprocessing), the one model identity
msclip uses everywhere.

The root is ``$MSCLIP_CACHE_DIR/text`` when ``MSCLIP_CACHE_DIR`` is set, else
``~/.cache/msclip/text``.

Stable API::

    default_cache_dir() -> Path
    model_cache_key(model) -> str
    TextEmbeddingCache(model_key, root=None, meta=None)
    TextEmbeddingCache.for_model(model, root=None) -> TextEmbeddingCache
    cache.get_many(texts) -> dict[str, np.ndarray]   # only the texts found
    cache.put(texts, embeddings) -> None
    len(cache), cache.clear()
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msclip.cache import (  # CACHE_ENV: the caches' root (text: its text/)
    CACHE_ENV,
    cache_root,
    note_damaged,
    note_unwritable,
)
from msclip.io import atomic_write, write_json

__all__ = [
    "CACHE_ENV",
    "MAX_SHARDS",
    "TextEmbeddingCache",
    "default_cache_dir",
    "model_cache_key",
    "text_key",
]

logger = logging.getLogger(__name__)

#: Shards per model directory above which ``put`` merges them into one.
MAX_SHARDS = 32
# what follows a shard that cannot be read, and the fix where a root given by the caller (not
# under $MSCLIP_CACHE_DIR) cannot be written
_AGAIN = "encoding its texts again when asked for"
_ROOT_FIX = "give a writable text cache folder to keep them, or turn the text cache off"


def default_cache_dir() -> Path:
    """``$MSCLIP_CACHE_DIR/text`` if the variable is set, else ``~/.cache/msclip/text``."""
    return cache_root() / "text"


def text_key(text: str) -> str:
    """sha256 hex of the UTF-8 text (the cache key of one prompt)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_cache_key(model: Any) -> str:
    """Cache key of a model's text tower: its :meth:`~msclip.MSCLIP.fingerprint`."""
    return str(model.fingerprint())


class TextEmbeddingCache:
    """Raw text embeddings of one model on disk.

    Args:
        model_key: from :func:`model_cache_key` (any string unique to the text tower's weights).
        root: cache root (default :func:`default_cache_dir`).
        meta: facts written to ``model.json`` for people inspecting the cache.
    """

    def __init__(
        self,
        model_key: str,
        root: str | os.PathLike | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if not model_key or "/" in model_key or model_key.startswith("."):
            raise ValueError(f"model_key must be a plain non-empty name, got {model_key!r}")
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.model_key = model_key
        self.meta = dict(meta or {})
        self._entries: dict[str, np.ndarray] = {}
        self._loaded: set[str] = set()
        self._warned: set[str] = set()

    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        """Log a warning about the cache folder once per cache object (a folder that cannot be
        listed or written is met again by every lookup and every put of a run)."""
        if what not in self._warned:
            self._warned.add(what)
            logger.warning(message, *args)

    @classmethod
    def for_model(cls, model: Any, root: str | os.PathLike | None = None) -> TextEmbeddingCache:
        """The cache of ``model`` (an :class:`msclip.MSCLIP`)."""
        info = model.describe()
        meta = {k: info[k] for k in ("name", "arch", "checkpoint_sha256", "precision")}
        return cls(model_cache_key(model), root, meta=meta)

    @property
    def dir(self) -> Path:
        """Directory of this model's shards."""
        return self.root / self.model_key

    def __repr__(self) -> str:
        return f"TextEmbeddingCache(dir={str(self.dir)!r})"

    # -- reading -----------------------------------------------------------------------------
    def _shards(self) -> list[Path]:
        try:
            if not self.dir.is_dir():
                return []
            return sorted(
                p for p in self.dir.iterdir()
                if p.name.startswith("shard-") and p.name.endswith(".npz")
            )  # fmt: skip
        except OSError as err:  # a folder this user cannot list: no cache, as for writing
            self._warn_once(
                "read", "text cache: cannot read %s (%s); continuing without", self.dir, err
            )
            return []

    def _read_shard(self, path: Path) -> bool:
        try:
            with np.load(path, allow_pickle=False) as z:
                keys, emb = z["keys"], z["emb"]
        except FileNotFoundError:
            return False  # merged away by another process since it was listed
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            note_damaged("text cache shard", path, err, _AGAIN)
            return True
        width = next((len(e) for e in self._entries.values()), None)
        if emb.ndim != 2 or len(keys) != len(emb) or (width is not None and emb.shape[1] != width):
            note_damaged("text cache shard", path, f"keys {len(keys)}, embeddings {emb.shape}",
                         _AGAIN)  # fmt: skip
            return True
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():  # a damaged entry is encoded again, never served
            logger.warning("text cache: ignoring %d non-finite entries of %s",
                           int((~finite).sum()), path)  # fmt: skip
        for k, e, ok in zip(keys.tolist(), emb, finite):
            if ok:
                self._entries[str(k)] = e
        return True

    def _refresh(self) -> None:
        for path in self._shards():
            if path.name not in self._loaded and self._read_shard(path):
                self._loaded.add(path.name)

    def get_many(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Embeddings of the texts that are cached (float32 ``[D]`` each); others are absent."""
        self._refresh()
        out = {}
        for t in texts:
            e = self._entries.get(text_key(t))
            if e is not None:
                out[t] = np.array(e, dtype=np.float32)
        return out

    def __len__(self) -> int:
        self._refresh()
        return len(self._entries)

    # -- writing -----------------------------------------------------------------------------
    def _write_shard(self, keys: Sequence[str], emb: np.ndarray) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "model.json"
        if not meta_path.exists():
            write_json(meta_path, {"model_key": self.model_key, **self.meta})
        name = f"shard-{uuid.uuid4().hex}.npz"
        karr = np.asarray(list(keys), dtype="<U64")
        earr = np.ascontiguousarray(emb, dtype=np.float32)
        atomic_write(self.dir / name, lambda tmp: np.savez(tmp, keys=karr, emb=earr), ".npz")
        self._loaded.add(name)
        return self.dir / name

    def put(self, texts: Sequence[str], embeddings: np.ndarray) -> None:
        """Store the raw embeddings ``[N, D]`` of ``texts`` (one new shard, written atomically).

        Write failures (read-only or full disk) are logged, not raised: the cache is an
        optimisation and a run must not fail because of it.
        """
        texts = list(texts)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"embeddings of shape {emb.shape} do not fit {len(texts)} texts")
        if not texts:
            return
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():  # never kept: the next run encodes them again
            texts = [t for t, ok in zip(texts, finite) if ok]
            emb = emb[finite]
            if not texts:
                return
        keys = [text_key(t) for t in texts]
        try:
            self._write_shard(keys, emb)
        except OSError as err:
            # once per process and folder (a run may make several caches of one root), with the
            # fix of msclip's other caches when the root is theirs
            fix = None if self.root == default_cache_dir() else _ROOT_FIX
            note_unwritable("prompt embeddings", self.root, err, "prompts are encoded again by "
                            "every run", fix)  # fmt: skip
            return
        for k, e in zip(keys, emb):
            self._entries[k] = e
        shards = self._shards()
        if len(shards) > MAX_SHARDS:
            self._compact(shards)

    def _compact(self, shards: list[Path]) -> None:
        self._refresh()
        keys = list(self._entries)
        emb = np.stack([self._entries[k] for k in keys])
        try:
            kept = self._write_shard(keys, emb)
        except OSError as err:
            logger.warning("text cache: cannot compact %s (%s)", self.dir, err)
            return
        for p in shards:
            if p != kept:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        logger.debug("text cache: merged %d shards into %s", len(shards), kept.name)

    def clear(self) -> None:
        """Delete this model's cached embeddings."""
        for p in self._shards():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self._entries.clear()
        self._loaded.clear()
