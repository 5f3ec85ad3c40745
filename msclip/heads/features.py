"""Frozen-encoder features, computed once per image and kept on disk.

Probes and heads trained on a frozen encoder need the same features every epoch; anchors such as
TerraTorch re-run the encoder each time (92.6 s per epoch of 256 ViT-B/16 tiles on a 2-core CPU,
see ``HEADS_ANCHORS.md``). msclip computes them once with its encoding engine
(:func:`msclip.encode.encode_batches`) and stores them as float16 in a memory-mapped file, so an
epoch reads ``N x D x 2`` bytes instead of running ``N`` forward passes.

What a feature is (:class:`FeatureSpec`):

- ``"embedding"``: the image embedding in the joint image-text space (what zero-shot
  classification uses; the text-initialised head starts from it);
- ``"cls"`` / ``"mean"``: the class token / the mean patch token of chosen blocks (default the
  last), after the tower's final layer norm, concatenated over blocks. The last block's class token
  is the feature of CLIP's own linear probes (Radford et al., ICML 2021, appendix A.2: the
  features before the projection to the joint space) and of the DINO/SMARTIES kNN protocol.

The cache (:class:`FeatureCache`) lives in ``<root>/<key>/`` where the key is a sha256 of the
model's fingerprint (:meth:`msclip.MSCLIP.fingerprint`), the feature spec, the preprocessing
(bands, image size, input bands, layout, sensor, nodata, valid-pixel rule) and the list of items
(files by path, images held in memory by their values), so a cache is never reused for anything
else. Files: ``features.f16`` (``[N, D]`` float16,
memory-mapped), ``done.u8`` (one byte per item: 0 to do, 1 encoded, 2 unreadable or skipped),
``stamps.i64`` (per item the size and modification time of its file) and ``meta.json``. Rows are
flushed before their done bytes, so a killed extraction resumes where it stopped and never trusts
a row it did not finish. An item whose file changed since (another size or modification time:
an image replaced or repaired) is encoded again, whether it had features or was unreadable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msclip.errors import HeadConfigError, HeadInputError
from msclip.io import write_json
from msclip.io.readers import input_stamp

__all__ = ["FeatureCache", "FeatureSpec", "extract_features"]

logger = logging.getLogger(__name__)

_TODO, _DONE, _BAD = 0, 1, 2


@dataclass(frozen=True)
class FeatureSpec:
    """Which features of the image tower to keep.

    Attributes:
        kind: ``"embedding"`` (joint-space image embedding), ``"cls"`` or ``"mean"`` (pooled
            tokens of ``layers``).
        layers: tapped blocks for ``cls``/``mean`` (negative from the end); default the last.
        normalize: L2-normalise each feature vector (after concatenation).
    """

    kind: str = "cls"
    layers: tuple[int, ...] = (-1,)
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("embedding", "cls", "mean"):
            raise HeadConfigError(
                f"feature kind must be 'embedding', 'cls' or 'mean', got {self.kind!r}",
                param="features",
            )
        if self.kind != "embedding" and not self.layers:
            raise HeadConfigError("give at least one block to pool", param="layers")

    def dim(self, model: Any) -> int:
        """Length of one feature vector for ``model``."""
        if self.kind == "embedding":
            return int(model.embed_dim)
        return int(model.width) * len(self.layers)

    def forward(self, model: Any) -> Any:
        """The function of a batch of images that yields these features."""
        if self.kind == "embedding":
            return model.encode_image
        layers, pool = list(self.layers), self.kind

        def run(images: torch.Tensor) -> torch.Tensor:
            out = model.forward_intermediates(images, layers=layers, pool=pool, norm=True)
            return torch.cat(out.pooled, dim=1)

        return run

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


def _preprocessing_facts(preprocess: Any) -> dict[str, Any]:
    from msclip.spectral.adapt import INPUT_RULES

    keys = ("bands", "image_size", "divisor", "resize_mode", "interpolation", "input_bands",
            "layout", "sensor", "pil_rgb", "strict_bands", "max_pixels", "downsample")  # fmt: skip
    return {**{k: getattr(preprocess, k, None) for k in keys}, "input_rules": INPUT_RULES}


def _item_names(items: Sequence[Any]) -> list[str]:
    """What names each item in the cache key: the absolute path of a file, the name of a tile,
    and for an image held in memory its kind, shape and a sha256 of its values (its display name
    gives only its kind and shape, so two arrays of one shape would share their features)."""
    from msclip.encode import item_name
    from msclip.tiling import Tile

    names = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            names.append(os.path.abspath(item_name(item)))
        elif isinstance(item, Tile):
            names.append(item_name(item))
        else:
            digest = _values_digest(item)
            names.append(item_name(item) if digest is None else f"{type(item).__name__} {digest}")
    return names


def _values_digest(item: Any) -> str | None:
    """sha256 of the values of an in-memory image (array, tensor, :class:`msclip.io.Raster`, PIL
    image) with its dtype and shape, or ``None`` for anything else."""
    from msclip.io import Raster

    h = hashlib.sha256()
    if isinstance(item, Raster):  # its band names and nodata decide what is read too
        h.update(json.dumps([list(item.bands), item.nodata], default=str).encode())
        item = item.data
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu().contiguous()
        h.update(f"{t.dtype} {list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(item, np.ndarray):
        a = np.ascontiguousarray(item)
        h.update(f"{a.dtype} {list(a.shape)}".encode())
        h.update(a.view(np.uint8).reshape(-1).data)
    elif all(hasattr(item, k) for k in ("mode", "size", "tobytes")):  # a PIL image
        h.update(f"{item.mode} {list(item.size)}".encode())
        h.update(item.tobytes())
    else:
        return None
    return h.hexdigest()


def _stamps(items: Sequence[Any]) -> np.ndarray:
    """``[N, 2]`` int64: size and modification time (ns) of each item's file (a path, or the
    scene of a tile; :func:`msclip.io.readers.input_stamp`: for a folder, of the files in it, for
    a VRT, of it and the files it reads); ``-1`` for a file that cannot be read, ``0`` for items
    without a file."""
    out = np.zeros((len(items), 2), dtype=np.int64)
    seen: dict[str, tuple[int, int]] = {}
    for i, item in enumerate(items):
        path = item if isinstance(item, (str, os.PathLike)) else getattr(item, "path", None)
        if path is None:
            continue
        key = os.fspath(path)
        if key not in seen:
            try:
                seen[key] = input_stamp(key)
            except OSError:
                seen[key] = (-1, -1)
        out[i] = seen[key]
    return out


class _Subset:
    """Items ``indices`` of a protocol dataset, renumbered ``0..len(indices) - 1``."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, k: int) -> str:
        name = getattr(self.dataset, "name", None)
        return str(name(self.indices[k])) if callable(name) else f"item {self.indices[k]}"

    def __getitem__(self, k: int) -> dict[str, Any]:
        return {**self.dataset[self.indices[k]], "index": k}


class FeatureCache:
    """Features of a list of images for one model, spec and preprocessing, on disk.

    Args:
        root: folder of caches (each in its own sub-folder named by its key).
        model: the (frozen) :class:`msclip.MSCLIP`.
        preprocess: its transform (``model.preprocess(...)``).
        items: file paths or scene tiles, in the order features are wanted.
        spec: which features.
        nodata: nodata value overriding the files'.
        min_valid: skip items with a smaller fraction of valid pixels (marked, not encoded).
        dataset: a dataset following the item protocol of :mod:`msclip.encode` whose item ``i``
            is ``items[i]`` (e.g. benchmark samples read by their layout); ``items`` then only
            name the images. Default: the files or tiles of ``items`` read by ``preprocess``.
        context: further facts that decide what the images hold (e.g. the dataset's reading
            rules), added to the cache key.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        model: Any,
        preprocess: Any,
        items: Sequence[Any],
        spec: FeatureSpec | None = None,
        nodata: float | None = None,
        min_valid: float | None = None,
        dataset: Any = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.items = list(items)
        self.spec = spec or FeatureSpec()
        self.nodata = nodata
        self.min_valid = min_valid
        self.dataset = dataset
        if dataset is not None and len(dataset) != len(self.items):
            raise HeadInputError(
                f"the dataset has {len(dataset)} items but {len(self.items)} names were given",
                param="images",
            )
        if not self.items:
            raise HeadInputError("no images to extract features from", param="images")
        self.dim = self.spec.dim(model)
        names = _item_names(self.items)
        facts = {
            "model": model.fingerprint(),
            "spec": self.spec.to_dict(),
            "preprocessing": _preprocessing_facts(preprocess),
            "nodata": nodata,
            "min_valid": min_valid,
            "items": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "n": len(names),
            "dim": self.dim,
        }
        if context:
            facts["context"] = context
        self.key = hashlib.sha256(
            json.dumps(facts, sort_keys=True, default=str).encode()
        ).hexdigest()[:32]
        self.facts = facts
        self.dir = Path(root).expanduser() / self.key

    # -- files ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.items)

    def _open(self) -> tuple[np.memmap, np.memmap]:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.is_file():
            write_json(meta, {"key": self.key, **self.facts})
        feats = np.lib.format.open_memmap(
            self.dir / "features.f16.npy",
            mode="r+" if (self.dir / "features.f16.npy").is_file() else "w+",
            dtype=np.float16, shape=(self.n, self.dim),
        )  # fmt: skip
        done_path = self.dir / "done.u8.npy"
        done = np.lib.format.open_memmap(
            done_path, mode="r+" if done_path.is_file() else "w+", dtype=np.uint8,
            shape=(self.n,),
        )  # fmt: skip
        if feats.shape != (self.n, self.dim) or done.shape != (self.n,):
            raise HeadInputError(
                f"feature cache {self.dir} has shapes {feats.shape} and {done.shape}, not "
                f"({self.n}, {self.dim}); delete the folder to rebuild it"
            )
        self._check_stamps(done)
        return feats, done

    def _check_stamps(self, done: np.memmap) -> None:
        """Mark to do the items whose file changed since they were cached, then record the
        current stamps (after the marks reach the disk)."""
        path = self.dir / "stamps.i64.npy"
        now = _stamps(self.items)
        before = None
        if path.is_file():
            try:
                before = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                before = None
        if before is None or before.shape != now.shape:
            changed = np.asarray(done) != _TODO  # no record to trust: every cached row again
        else:
            changed = (before != now).any(axis=1) & (np.asarray(done) != _TODO)
        if changed.any():
            logger.warning(
                "features: %d of %d images changed since they were cached (%s); encoding them "
                "again", int(changed.sum()), self.n, self.dir.name,
            )  # fmt: skip
            done[changed] = _TODO
            done.flush()
        if before is None or not np.array_equal(before, now):
            from msclip.io import atomic_write

            atomic_write(path, lambda tmp: np.save(tmp, now, allow_pickle=False), ".npy")

    def status(self) -> dict[str, int]:
        """Items encoded, unreadable or skipped, and still to do."""
        if not (self.dir / "done.u8.npy").is_file():
            return {"done": 0, "bad": 0, "todo": self.n}
        done = np.load(self.dir / "done.u8.npy", mmap_mode="r")
        return {
            "done": int((done == _DONE).sum()),
            "bad": int((done == _BAD).sum()),
            "todo": int((done == _TODO).sum()),
        }

    # -- extraction -------------------------------------------------------------------------
    def extract(
        self, batch_size: int = 32, workers: int = 0, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode the items not yet in the cache; return ``(features, ok)``.

        Returns:
            ``features``: ``[N, D]`` float16 memory map (rows of unreadable or skipped items are
            zero); ``ok``: ``[N]`` bool, the items that have features.
        """
        from msclip.encode import ImageDataset, encode_batches

        feats, done = self._open()
        todo = np.flatnonzero(done == _TODO)
        if len(todo):
            logger.info(
                "features: %d of %d images to encode (%s)", len(todo), self.n, self.dir.name
            )
            if self.dataset is not None:
                dataset: Any = _Subset(self.dataset, todo)
            else:
                dataset = ImageDataset(
                    [self.items[i] for i in todo], self.preprocess, self.min_valid, self.nodata
                )
            batches = encode_batches(
                self.model, dataset, batch_size=batch_size, workers=workers,
                normalize=self.spec.normalize, progress=progress, desc="features",
                forward=self.spec.forward(self.model),
            )  # fmt: skip
            for b in batches:
                rows = todo[b.indices]
                if len(rows):
                    feats[rows] = b.embeddings.astype(np.float16)
                    feats.flush()  # rows reach the disk before they are marked done
                bad = [todo[f.index] for f in b.failures] + [todo[i] for i in b.skipped]
                done[rows] = _DONE
                done[bad] = _BAD
                done.flush()
        ok = np.asarray(done) == _DONE
        return feats, ok


def extract_features(
    model: Any,
    preprocess: Any,
    items: Sequence[Any],
    spec: FeatureSpec | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    nodata: float | None = None,
    min_valid: float | None = None,
    dataset: Any = None,
    context: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[N, D]`` of ``items`` and the mask of items that have them.

    With ``cache_dir`` the features are kept in (and read back from) a :class:`FeatureCache`;
    without it they are computed in memory (float32). ``dataset`` and ``context``: see
    :class:`FeatureCache`.
    """
    spec = spec or FeatureSpec()
    if cache_dir is not None:
        cache = FeatureCache(
            cache_dir, model, preprocess, items, spec, nodata, min_valid, dataset, context
        )
        return cache.extract(batch_size, workers, progress)
    from msclip.encode import ImageDataset, encode_batches

    if dataset is None:
        dataset = ImageDataset(list(items), preprocess, min_valid, nodata)
    out = np.zeros((len(dataset), spec.dim(model)), np.float32)
    ok = np.zeros(len(dataset), bool)
    for b in encode_batches(
        model, dataset, batch_size=batch_size, workers=workers, normalize=spec.normalize,
        progress=progress, desc="features", forward=spec.forward(model),
    ):  # fmt: skip
        out[b.indices] = b.embeddings
        ok[b.indices] = True
    return out, ok
