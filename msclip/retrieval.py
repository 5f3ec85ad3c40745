"""Exact top-k ranking by cosine similarity, with one deterministic tie rule.

Retrieval in the published Llama3-MS-CLIP protocol (Marimo et al., ECML PKDD 2025,
arXiv:2503.15969) ranks images by the raw cosine between the L2-normalised query embedding and the
image embeddings. This module is the one implementation of that ranking: ``msclip-inference
--run-retrieval`` calls :func:`top_k`, and the embedding index's exact search path
(:mod:`msclip.index.search`) orders its candidates with :func:`sort_top_k`, so both return the same
ids and scores for the same embeddings.

Scores are computed in float64 and rounded to float32, so a score does not depend on the batch,
the chunking or the path that produced it. **Tie rule:** rows are sorted by score descending; equal
scores by the lower item id (position) first.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from msclip.errors import DimensionMismatchError, InvalidEmbeddingsError

__all__ = ["Ranking", "sort_top_k", "top_k"]

_CHUNK_BYTES = 1 << 26  # float64 item rows per chunk of the scan


class Ranking(NamedTuple):
    """Top-k result of a batch of queries.

    Attributes:
        scores: ``[Q, k]`` float32 similarities, descending along each row.
        ids: ``[Q, k]`` int64 item positions, ties broken by the lower position.
    """

    scores: np.ndarray
    ids: np.ndarray


def sort_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of candidates by score descending, ties by lower id, and keep ``k`` columns.

    Args:
        scores: ``[Q, M]`` candidate scores.
        ids: ``[Q, M]`` candidate ids (any order).
        k: columns to keep (``k <= M``).
    """
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _matrix(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise InvalidEmbeddingsError(
            f"{name} must be a numeric matrix [N, D], got dtype {arr.dtype} shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InvalidEmbeddingsError(f"{name} contain NaN or infinity")
    return arr


def top_k(queries: Any, items: Any, k: int) -> Ranking:
    """The ``k`` items most similar to each query (inner product; cosine for unit vectors).

    Args:
        queries: ``[Q, D]`` (or ``[D]``) embeddings, numpy or torch; L2-normalise them (and
            ``items``) for cosine similarity.
        items: ``[N, D]`` embeddings.
        k: results per query; clamped to ``N``.

    Returns:
        :class:`Ranking` with ``[Q, min(k, N)]`` scores and ids, by the module's tie rule.

    Raises:
        InvalidEmbeddingsError: non-numeric, non-finite or badly shaped inputs.
        DimensionMismatchError: queries and items of different dimensions.
        ValueError: ``k`` is not a positive integer.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q = _matrix(queries, "queries").astype(np.float64)
    x = _matrix(items, "items")
    if q.shape[1] != x.shape[1]:
        raise DimensionMismatchError(
            f"queries have dimension {q.shape[1]} but items have {x.shape[1]}; encode both with "
            "the same model"
        )
    n = x.shape[0]
    k = min(int(k), n)
    if k == 0 or q.shape[0] == 0:
        return Ranking(np.empty((q.shape[0], k), np.float32), np.empty((q.shape[0], k), np.int64))
    rows = max(1, _CHUNK_BYTES // (8 * max(1, x.shape[1])))
    best_s = np.empty((q.shape[0], 0), np.float32)
    best_i = np.empty((q.shape[0], 0), np.int64)
    for start in range(0, n, rows):
        chunk = x[start : start + rows].astype(np.float64)
        s = (q @ chunk.T).astype(np.float32)
        ids = np.broadcast_to(np.arange(start, start + chunk.shape[0], dtype=np.int64), s.shape)
        if s.shape[1] > k:
            # keep every score >= the k-th largest, so ties at the cut survive to the sort
            kth = np.partition(s, s.shape[1] - k, axis=1)[:, s.shape[1] - k : s.shape[1] - k + 1]
            keep = s >= kth
            width = int(keep.sum(axis=1).max())
            order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
            s = np.take_along_axis(s, order, 1)
            ids = np.take_along_axis(ids, order, 1)
            s = np.where(np.take_along_axis(keep, order, 1), s, -np.inf).astype(np.float32)
        best_s, best_i = sort_top_k(
            np.concatenate([best_s, s], axis=1), np.concatenate([best_i, ids], axis=1), k
        )
    return Ranking(best_s, best_i)
