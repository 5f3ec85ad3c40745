"""Exact top-k ranking: brute-force agreement, the tie rule, chunking, and agreement with the
embedding index's exact search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msclip import retrieval
from msclip.errors import DimensionMismatchError, InvalidEmbeddingsError
from msclip.index.search import SearchIndex
from msclip.retrieval import sort_top_k, top_k


def _brute(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = (q.astype(np.float64) @ x.astype(np.float64).T).astype(np.float32)
    ids = []
    for row in s:
        ids.append(sorted(range(len(row)), key=lambda j: (-row[j], j))[:k])
    ids = np.asarray(ids)
    return np.take_along_axis(s, ids, 1), ids


def test_matches_brute_force(rng):
    x = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    got = top_k(q, x, 10)
    s, i = _brute(q, x, 10)
    np.testing.assert_array_equal(got.ids, i)
    np.testing.assert_array_equal(got.scores, s)
    assert got.scores.dtype == np.float32 and got.ids.dtype == np.int64


def test_ties_go_to_the_lower_id_across_chunks(monkeypatch):
    x = np.zeros((50, 4), np.float32)
    x[[3, 17, 41, 42], 0] = 1.0  # four equal best scores, spread over chunks
    x[10, 0] = 0.5
    monkeypatch.setattr(retrieval, "_CHUNK_BYTES", 8 * 4 * 7)  # 7 rows per chunk
    got = top_k(np.array([[1.0, 0, 0, 0]], np.float32), x, 5)
    assert got.ids.tolist() == [[3, 17, 41, 42, 10]]
    assert got.scores.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.5]]
    # a cut inside a run of ties keeps the lowest ids
    assert top_k(np.array([[1.0, 0, 0, 0]], np.float32), x, 2).ids.tolist() == [[3, 17]]


def test_k_is_clamped_and_inputs_checked(rng):
    x = rng.normal(size=(3, 8)).astype(np.float32)
    assert top_k(torch.from_numpy(x[0]), x, 10).ids.shape == (1, 3)
    with pytest.raises(DimensionMismatchError, match="dimension 4"):
        top_k(np.ones((1, 4)), x, 1)
    with pytest.raises(InvalidEmbeddingsError, match="NaN"):
        top_k(np.full((1, 8), np.nan), x, 1)
    with pytest.raises(ValueError, match="positive integer"):
        top_k(x, x, 0)


def test_sort_rule():
    s, i = sort_top_k(np.array([[0.5, 0.9, 0.9, 0.1]]), np.array([[7, 9, 2, 1]]), 3)
    assert i.tolist() == [[2, 9, 7]] and s.tolist() == [[0.9, 0.9, 0.5]]


def test_same_ranking_as_the_index_exact_path(rng):
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[100] = x[5]  # an exact duplicate: a tie the rule must break the same way
    q = np.concatenate([x[[5]], rng.normal(size=(4, 32)).astype(np.float32)])
    ours = top_k(q, x, 12)
    index = SearchIndex(x, quantize=False).search(q, 12, exact=True)
    np.testing.assert_array_equal(ours.ids, index.ids)
    np.testing.assert_array_equal(ours.scores, index.scores)
    assert ours.ids[0, :2].tolist() == [5, 100]
