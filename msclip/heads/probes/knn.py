"""kNN on cosine similarity (see :mod:`msclip.heads.probes`)."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from msclip.errors import HeadInputError
from msclip.eval.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    BatchedMetric,
    bootstrap_cis,
)
from msclip.heads.probes.common import (
    ArrayLike,
    ProbeResult,
    _check_positive,
    _check_positive_int,
    _num_classes,
    _require_two_classes,
    _result,
    check_features,
    check_labels,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------

_QUERY_BLOCK = 1024


def _normalized_block(x: np.ndarray, start: int, stop: int) -> torch.Tensor:
    block = torch.from_numpy(np.ascontiguousarray(x[start:stop], dtype=np.float32))
    return F.normalize(block, dim=1)


def _merge_topk(vals: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row of ``vals``, ties to the lower id; the columns of ``vals``
    and ``ids`` are in ascending id order and so is the result."""
    kk = min(k, vals.shape[1])
    kth = torch.topk(vals, kk, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    greater = vals > kth
    equal = vals == kth
    need = kk - greater.sum(dim=1, keepdim=True)
    selected = greater | (equal & (torch.cumsum(equal, dim=1) <= need))
    cols = torch.nonzero(selected)[:, 1].view(vals.shape[0], kk)  # row-major: ascending columns
    return vals.gather(1, cols), ids.gather(1, cols)


def _block_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row of a similarity block with the tie rule of
    :func:`_merge_topk`, columns returned in ascending order.

    ``torch.topk`` is fast but picks arbitrarily among values equal to the k-th; that only
    matters in rows where such a value is also left out, which are redone exactly.
    """
    kk = min(k, sims.shape[1])
    top = torch.topk(sims, kk, dim=1)
    kth = top.values[:, -1:]
    cols = top.indices
    crossing = (sims == kth).sum(dim=1) != (top.values == kth).sum(dim=1)
    if crossing.any():
        rows = torch.nonzero(crossing)[:, 0]
        sub = sims[rows]
        _, exact = _merge_topk(sub, torch.arange(sims.shape[1]).expand_as(sub), kk)
        cols[rows] = exact
    cols = torch.sort(cols, dim=1).values
    return sims.gather(1, cols), cols


def knn_neighbors(
    train_features: ArrayLike,
    query_features: ArrayLike,
    k: int = 20,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` training rows most cosine-similar to each query row.

    Similarities are float32 dot products of L2-normalised rows, computed in blocks of
    ``chunk_size`` training rows (and 1024 queries) while only the running top ``k`` is kept,
    so memory is ``O(Q k + 1024 chunk_size)`` whatever the training set size.

    Args:
        train_features: ``[N, D]``.
        query_features: ``[Q, D]``.
        k: Neighbours per query (clamped to ``N``).
        chunk_size: Training rows per block.

    Returns:
        ``(similarities [Q, k] float32, indices [Q, k] int64)``, each row sorted by similarity,
        descending; among equal similarities the lower training index is taken and comes first.
    """
    k = _check_positive_int(k, "k")
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    train = check_features(train_features, "train_features", dtype=None)
    query = check_features(query_features, "query_features", dim=train.shape[1], dtype=None)
    n, q = train.shape[0], query.shape[0]
    k = min(k, n)
    best_v = torch.empty(q, 0)
    best_i = torch.empty(q, 0, dtype=torch.int64)
    queries = [
        (s, _normalized_block(query, s, min(q, s + _QUERY_BLOCK)))
        for s in range(0, q, _QUERY_BLOCK)
    ]
    with torch.inference_mode():
        for t0 in range(0, n, chunk_size):
            block = _normalized_block(train, t0, min(n, t0 + chunk_size))
            ids = torch.arange(t0, t0 + block.shape[0])
            new_v, new_i = [], []
            for s, qb in queries:
                # The block's own top k first (one pass over the block), then an exact merge of
                # those k with the running k: ids stay in ascending column order throughout.
                block_v, block_c = _block_topk(qb @ block.T, k)
                vals = torch.cat([best_v[s : s + qb.shape[0]], block_v], dim=1)
                idx = torch.cat([best_i[s : s + qb.shape[0]], ids[block_c]], dim=1)
                v, i = _merge_topk(vals, idx, k)
                new_v.append(v)
                new_i.append(i)
            best_v, best_i = torch.cat(new_v), torch.cat(new_i)
        # Rows are in ascending index order; a stable descending sort keeps lower indices first.
        order = torch.sort(best_v, dim=1, descending=True, stable=True).indices
        sims_sorted = best_v.gather(1, order)
        idx_sorted = best_i.gather(1, order)
    return sims_sorted.numpy(), idx_sorted.numpy()


def knn_vote(
    similarities: np.ndarray,
    indices: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    k: int | None = None,
    temperature: float | None = 0.07,
) -> np.ndarray:
    """Class scores from the neighbours of :func:`knn_neighbors`.

    Args:
        similarities: ``[Q, k']`` sorted descending (as returned).
        indices: ``[Q, k']`` training indices.
        train_labels: Training class indices ``[N]`` or 0/1 labels ``[N, C]``.
        num_classes: ``C``.
        k: Use the first ``k`` neighbours (all by default); the first ``k`` of the ``k'`` are
            the ``k`` nearest under the same tie rule.
        temperature: Weight ``exp(sim / T)``; ``None`` for unweighted votes.

    Returns:
        float64 ``[Q, C]``: the weighted fraction of neighbours of each class (single-label,
        rows sum to 1) or the weighted mean of the neighbours' 0/1 labels (multi-label); both in
        ``[0, 1]``.
    """
    k = similarities.shape[1] if k is None else min(int(k), similarities.shape[1])
    sims = torch.from_numpy(np.ascontiguousarray(similarities[:, :k], dtype=np.float64))
    idx = torch.from_numpy(np.ascontiguousarray(indices[:, :k], dtype=np.int64))
    if temperature is None:
        w = torch.ones_like(sims)
    else:
        # Shifted by each row's largest similarity: the same after normalisation, never overflows.
        w = torch.exp((sims - sims[:, :1]) / float(temperature))
    labels = torch.from_numpy(np.asarray(train_labels))
    if labels.ndim == 1:
        scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64)
        scores.scatter_add_(1, labels[idx], w)
    else:
        labels = labels.to(torch.float64)
        scores = torch.cat(
            [
                torch.einsum("qk,qkc->qc", w[a : a + 4096], labels[idx[a : a + 4096]])
                for a in range(0, sims.shape[0], 4096)
            ]
        )
    return (scores / w.sum(dim=1, keepdim=True)).numpy()


def knn_scores(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    query_features: ArrayLike,
    k: int = 20,
    temperature: float | None = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 8192,
) -> np.ndarray:
    """kNN class scores of query features (see :func:`knn_neighbors` and :func:`knn_vote`).

    Args:
        train_features: ``[N, D]``.
        train_labels: Class indices ``[N]`` or 0/1 labels ``[N, C]``.
        query_features: ``[Q, D]``.
        k: Neighbours.
        temperature: ``T`` of the ``exp(sim / T)`` weights; ``None`` votes unweighted.
        num_classes: ``C`` for single-label labels (``max + 1`` by default).
        chunk_size: Training rows per similarity block.

    Returns:
        float64 ``[Q, C]`` in ``[0, 1]``.
    """
    train = check_features(train_features, "train_features", dtype=None)
    labels, task = check_labels(train_labels, "train_labels", train.shape[0], num_classes)
    c = _num_classes(task, [labels], num_classes)
    if temperature is not None:
        _check_positive(temperature, "temperature")
    sims, idx = knn_neighbors(train, query_features, k, chunk_size)
    return knn_vote(sims, idx, labels, c, None, temperature)


def _voted_topk_metric(k: int) -> BatchedMetric:
    """Top-k accuracy of kNN vote fractions in which a class without a vote never counts.

    Votes leave most classes at exactly 0; by the tie rule of top-k accuracy (lower index
    first) those zeros would fill the top ``k`` behind the voted classes, so a test image whose
    class no neighbour voted for would count as correct whenever fewer than ``k`` classes got
    votes and its class has a low index."""

    def per_sample(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
        t = targets.astype(np.int64)
        n, c = scores.shape
        own = scores[np.arange(n), t][:, None]
        ahead = (scores > own) | ((scores == own) & (np.arange(c)[None, :] < t[:, None]))
        return ((ahead.sum(axis=1) < min(k, c)) & (own[:, 0] > 0)).astype(np.float64)

    def fn(targets: np.ndarray, scores: np.ndarray) -> float:
        return float(per_sample(targets, scores).mean())

    def batched(targets: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return per_sample(targets, scores)[idx].mean(axis=1)

    return BatchedMetric(f"top{k}_accuracy", fn, batched)


def _recount_top5(
    result: ProbeResult,
    targets: np.ndarray,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> None:
    """Replace a single-label kNN result's ``top5_accuracy`` (and its interval, drawn from the
    same resamples as the others) by :func:`_voted_topk_metric`'s."""
    if "top5_accuracy" not in result.metrics:
        return
    metric = _voted_topk_metric(5)
    result.metrics["top5_accuracy"] = metric(targets, result.scores)
    if n_resamples:
        result.ci.update(
            bootstrap_cis(
                {"top5_accuracy": metric}, targets, result.scores, n_resamples, confidence, seed
            )
        )


def knn_probe(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
    k_unweighted: int | None = 5,
    num_classes: int | None = None,
    chunk_size: int = 8192,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> list[ProbeResult]:
    """kNN probes: weighted (``k``, ``T``) and, beside it, unweighted ``k_unweighted``.

    The neighbours are searched once (for the larger ``k``); both votes read them.

    Args:
        train_features: ``[N, D]``.
        train_labels: Class indices ``[N]`` or 0/1 labels ``[N, C]``.
        test_features: ``[Q, D]``.
        test_labels: Labels of the test rows, same kind as ``train_labels``.
        k: Neighbours of the weighted vote (DINO / SMARTIES: 20).
        temperature: ``T`` of the weighted vote (0.07).
        k_unweighted: Neighbours of the unweighted vote (torchgeo-bench: 5); None skips it.
        num_classes: ``C`` for single-label labels (``max + 1`` over train and test).
        chunk_size: Training rows per similarity block.
        n_resamples: Bootstrap resamples of the intervals (0: none).
        confidence: Interval coverage.
        seed: Bootstrap seed.

    Returns:
        ``[weighted result, unweighted result]`` (one element when ``k_unweighted`` is None).
        Their ``top5_accuracy`` counts an image as correct only when its class got a vote and
        ranks within the first 5: the classes without a vote all score 0, and by the lower
        index first tie rule they would otherwise fill the top 5 (with 5 unweighted
        neighbours, usually 1 to 3 classes get votes).

    Raises:
        HeadInputError: Bad features or labels (see :func:`check_features`,
            :func:`check_labels`), or training labels of a single class.
        HeadConfigError: ``k < 1`` or a non-positive temperature.
    """
    train = check_features(train_features, "train_features", dtype=None)
    labels, task = check_labels(train_labels, "train_labels", train.shape[0], num_classes)
    test = check_features(test_features, "test_features", dim=train.shape[1], dtype=None)
    t_labels, t_task = check_labels(test_labels, "test_labels", test.shape[0], num_classes)
    if t_task != task:
        raise HeadInputError(f"train_labels are {task} but test_labels are {t_task}")
    _require_two_classes(labels, task, "train_labels")
    c = _num_classes(task, [labels, t_labels], num_classes)
    k = _check_positive_int(k, "k")
    temperature = _check_positive(temperature, "temperature")
    ks = [k] + ([_check_positive_int(k_unweighted, "k_unweighted")] if k_unweighted else [])
    k_max = max(ks)
    if k_max > train.shape[0]:
        logger.warning(
            "k = %d exceeds the %d training samples; using all of them", k_max, train.shape[0]
        )
    sims, idx = knn_neighbors(train, test, k_max, chunk_size)
    results = []
    for kk, temp in ((k, temperature), *(((k_unweighted, None),) if k_unweighted else ())):
        scores = knn_vote(sims, idx, labels, c, kk, temp)
        name = "knn" if temp is not None else "knn-unweighted"
        hp = {
            "k": min(kk, train.shape[0]),
            "k_requested": kk,
            "temperature": temp if temp is not None else "none",
            "weighting": "exp(sim/T)" if temp is not None else "uniform",
            "similarity": "cosine",
        }
        result = _result(
            name, task, scores, t_labels, hp, train.shape[0], c, n_resamples, confidence, seed
        )
        if task == "single-label":
            _recount_top5(result, t_labels, n_resamples, confidence, seed)
        results.append(result)
    return results
