"""Percentile bootstrap confidence intervals for evaluation metrics.

The percentile bootstrap (Efron, 1979, "Bootstrap methods: another look at the jackknife"; Efron
and Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13): draw ``B`` resamples of the
``N`` evaluated samples with replacement, compute the metric on each, and report the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those ``B`` values (numpy's
default linear interpolation) around the metric of the full set. torchgeo-bench reports its probe
results the same way.

* Resamples are drawn from ``numpy.random.default_rng(seed)``, ``B`` rows of ``N`` indices, in
  row chunks whose size depends only on ``N``, so a given
  ``(N, B, seed)`` always gives the same resamples, and every metric of one call to
  :func:`bootstrap_cis` sees the same resamples (paired intervals).
* Any metric ``f(targets, scores) -> float`` works; it is called once per resample. The metrics
  built here (:func:`accuracy_metric`, :func:`balanced_accuracy_metric`,
  :func:`single_label_f1_metric`, :func:`multilabel_f1_metric`, :func:`regression_metric`) also
  carry a vectorised form that evaluates a whole chunk of resamples with a few array operations;
  it gives the same values as the plain form (tested).
* A resample on which the metric is undefined (NaN, e.g. R² of constant targets) is left out;
  :attr:`ConfidenceInterval.n_valid` says how many counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from msclip.eval.metrics import (
    MetricInputError,
    mean_absolute_error,
    precision_recall_f1,
    r2_score,
    root_mean_squared_error,
    single_label_f1,
    topk_accuracy,
)
from msclip.eval.metrics import balanced_accuracy as _balanced_accuracy

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "BatchedMetric",
    "ConfidenceInterval",
    "accuracy_metric",
    "balanced_accuracy_metric",
    "bootstrap_ci",
    "bootstrap_cis",
    "bootstrap_indices",
    "multilabel_f1_metric",
    "regression_metric",
    "single_label_f1_metric",
]

logger = logging.getLogger(__name__)

#: Resamples drawn when none is given.
DEFAULT_RESAMPLES = 1000
#: Coverage of the interval when none is given.
DEFAULT_CONFIDENCE = 0.95
#: Bound on the elements gathered per chunk of resamples (indices times per-sample width).
_CHUNK_ELEMENTS = 1 << 22

MetricFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its percentile bootstrap interval.

    Attributes:
        estimate: The metric on the full evaluated set.
        low: Lower bound (quantile ``(1 - confidence) / 2`` of the resampled values).
        high: Upper bound (quantile ``(1 + confidence) / 2``).
        confidence: Nominal coverage, e.g. 0.95.
        n_resamples: Resamples drawn.
        n_valid: Resamples on which the metric was defined (not NaN).
        seed: Seed of the resampling.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_valid: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict of the fields."""
        return asdict(self)


class BatchedMetric:
    """A metric of ``(targets, scores)`` with an optional vectorised bootstrap form.

    Args:
        name: Short name (used in logs).
        fn: ``fn(targets, scores) -> float`` on one (re)sample.
        batched: ``batched(targets, scores, idx) -> [B]`` for resample indices ``idx [B, N]``;
            must equal ``fn(targets[idx[b]], scores[idx[b]])`` for every row ``b``.
    """

    def __init__(
        self,
        name: str,
        fn: MetricFn,
        batched: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.batched = batched

    def __call__(self, targets: np.ndarray, scores: np.ndarray) -> float:
        return float(self.fn(targets, scores))

    def __repr__(self) -> str:
        return f"BatchedMetric({self.name!r}, vectorised={self.batched is not None})"


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _chunk_rows(n: int, width: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n * width))


def _index_chunks(n: int, n_resamples: int, seed: int, width: int = 1) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = _chunk_rows(n, 1)  # draw order depends on N only, whatever the metric
    for start in range(0, n_resamples, rows):
        block = rng.integers(0, n, size=(min(rows, n_resamples - start), n))
        # Split further for wide metrics without changing what was drawn.
        sub = _chunk_rows(n, width)
        for s in range(0, block.shape[0], sub):
            yield block[s : s + sub]


def bootstrap_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """The resample indices used for ``n`` samples: int64 ``[n_resamples, n]``.

    Args:
        n: Number of samples.
        n_resamples: Number of resamples ``B``.
        seed: Seed of ``numpy.random.default_rng``.
    """
    _check_args(n, n_resamples, DEFAULT_CONFIDENCE)
    return np.concatenate(list(_index_chunks(n, n_resamples, seed)), axis=0)


def _check_args(n: int, n_resamples: int, confidence: float) -> None:
    if n < 1:
        raise MetricInputError("cannot bootstrap an empty set (N = 0); evaluate at least 1 sample")
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise MetricInputError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise MetricInputError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence!r}")


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        t = x.detach().cpu()
        return (t.double() if t.is_floating_point() else t).numpy()
    return np.asarray(x)


def bootstrap_cis(
    metrics: Mapping[str, MetricFn | BatchedMetric],
    targets: Any,
    scores: Any,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, ConfidenceInterval]:
    """Percentile bootstrap intervals of several metrics over the same resamples.

    Args:
        metrics: Name -> metric ``f(targets, scores) -> float`` (a :class:`BatchedMetric` is
            evaluated vectorised).
        targets: Targets with the samples on the first axis (numpy array or torch tensor).
        scores: Scores or predictions with the samples on the first axis.
        n_resamples: Resamples ``B`` (1000 by default).
        confidence: Coverage of the interval (0.95 by default).
        seed: Seed of the resampling; the same seed gives the same intervals.

    Returns:
        Name -> :class:`ConfidenceInterval`.

    Raises:
        MetricInputError: An empty set, mismatched lengths, or bad ``n_resamples`` /
            ``confidence``. Errors of a metric itself propagate.
    """
    t = _as_array(targets, "targets")
    s = _as_array(scores, "scores")
    if t.ndim == 0 or s.ndim == 0:
        raise MetricInputError("targets and scores must have the samples on their first axis")
    n = t.shape[0]
    if s.shape[0] != n:
        raise MetricInputError(
            f"targets have {n} samples but scores have {s.shape[0]}; pass one score row per target"
        )
    _check_args(n, n_resamples, confidence)
    n_resamples = int(n_resamples)
    out: dict[str, ConfidenceInterval] = {}
    # Elements one sample contributes to a gathered chunk (bounds the memory of a chunk).
    width = max(1, int(np.prod(t.shape[1:])), int(np.prod(s.shape[1:])))
    q = 100.0 * np.array([(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    for name, metric in metrics.items():
        estimate = float(metric(t, s))
        values = np.empty(n_resamples, dtype=np.float64)
        batched = metric.batched if isinstance(metric, BatchedMetric) else None
        pos = 0
        for idx in _index_chunks(n, n_resamples, seed, width):
            if batched is not None:
                values[pos : pos + len(idx)] = batched(t, s, idx)
            else:
                for j, row in enumerate(idx):
                    values[pos + j] = float(metric(t[row], s[row]))
            pos += len(idx)
        valid = values[~np.isnan(values)]
        if valid.size < n_resamples:
            logger.debug(
                "%s: %d of %d resamples undefined (NaN), left out",
                name,
                n_resamples - valid.size,
                n_resamples,
            )
        low, high = np.percentile(valid, q).tolist() if valid.size else [float("nan"), float("nan")]
        out[name] = ConfidenceInterval(
            estimate=estimate,
            low=float(low),
            high=float(high),
            confidence=float(confidence),
            n_resamples=n_resamples,
            n_valid=int(valid.size),
            seed=int(seed),
        )
    return out


def bootstrap_ci(
    metric: MetricFn | BatchedMetric,
    targets: Any,
    scores: Any,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of one metric; see :func:`bootstrap_cis`.

    Args:
        metric: ``f(targets, scores) -> float``, e.g. ``lambda t, s: topk_accuracy(s, t)``.
        targets: Targets with the samples on the first axis.
        scores: Scores or predictions with the samples on the first axis.
        n_resamples: Resamples ``B``.
        confidence: Coverage of the interval.
        seed: Seed of the resampling.
    """
    return bootstrap_cis({"metric": metric}, targets, scores, n_resamples, confidence, seed)[
        "metric"
    ]


# --------------------------------------------------------------------------------------------
# Metrics with a vectorised bootstrap form
# --------------------------------------------------------------------------------------------


def _top1(scores: np.ndarray) -> np.ndarray:
    """Predicted classes from scores ``[N, C]`` (argmax, lowest index on ties) or ``[N]``."""
    return np.argmax(scores, axis=1) if scores.ndim == 2 else scores.astype(np.int64)


def _n_classes(num_classes: int | None, targets: np.ndarray, scores: np.ndarray) -> int:
    """``num_classes`` when given, else the width of the scores ``[N, C]``, else one more than the
    largest class index of the targets and predictions ``[N]``."""
    if num_classes is not None:
        return num_classes
    if scores.ndim == 2:
        return scores.shape[1]
    return int(max(targets.max(), scores.max())) + 1


def _class_counts(values: np.ndarray, mask: np.ndarray | None, c: int) -> np.ndarray:
    """Per-resample counts of each class: ``values [B, N]`` in ``[0, c)`` -> ``[B, c]``."""
    b = values.shape[0]
    flat = (values + c * np.arange(b)[:, None]).ravel()
    weights = None if mask is None else mask.ravel().astype(np.float64)
    counts = np.bincount(flat, weights=weights, minlength=b * c).reshape(b, c)
    return counts.astype(np.float64, copy=False)


def accuracy_metric(k: int = 1) -> BatchedMetric:
    """Top-k accuracy of single-label ``scores [N, C]`` (or predictions ``[N]`` for ``k = 1``).

    Same definition and tie rule as :func:`msclip.eval.metrics.topk_accuracy`.
    """

    def per_sample(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
        t = targets.astype(np.int64)
        if scores.ndim == 1:
            if k != 1:
                raise MetricInputError(f"top-{k} accuracy needs scores [N, C], not predictions")
            return (scores.astype(np.int64) == t).astype(np.float64)
        n, c = scores.shape
        target_scores = scores[np.arange(n), t][:, None]
        ahead = (scores > target_scores) | (
            (scores == target_scores) & (np.arange(c)[None, :] < t[:, None])
        )
        return (ahead.sum(axis=1) < min(k, c)).astype(np.float64)

    def fn(targets: np.ndarray, scores: np.ndarray) -> float:
        if scores.ndim == 2:
            return topk_accuracy(scores, targets, k)
        return float(per_sample(targets, scores).mean())

    def batched(targets: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return per_sample(targets, scores)[idx].mean(axis=1)

    return BatchedMetric(f"top{k}_accuracy", fn, batched)


def balanced_accuracy_metric(num_classes: int | None = None) -> BatchedMetric:
    """Balanced accuracy (mean recall over classes present in the resample) of single-label
    scores ``[N, C]`` or predictions ``[N]``; as :func:`msclip.eval.metrics.balanced_accuracy`."""

    def fn(targets: np.ndarray, scores: np.ndarray) -> float:
        return _balanced_accuracy(_top1(scores), targets, _n_classes(num_classes, targets, scores))

    def batched(targets: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        c = _n_classes(num_classes, targets, scores)
        t = targets.astype(np.int64)
        correct = _top1(scores) == t
        support = _class_counts(t[idx], None, c)
        hits = _class_counts(t[idx], correct[idx], c)
        recall = np.full_like(support, np.nan)
        np.divide(hits, support, out=recall, where=support > 0)
        return np.nanmean(recall, axis=1)

    return BatchedMetric("balanced_accuracy", fn, batched)


def single_label_f1_metric(average: str = "macro", num_classes: int | None = None) -> BatchedMetric:
    """Single-label macro F1 (over the classes with samples) or micro F1; as
    :func:`msclip.eval.metrics.single_label_f1`."""
    if average not in ("macro", "micro"):
        raise MetricInputError(f"average must be 'macro' or 'micro'; got {average!r}")

    def fn(targets: np.ndarray, scores: np.ndarray) -> float:
        return single_label_f1(
            _top1(scores), targets, _n_classes(num_classes, targets, scores), average
        )

    def batched(targets: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        c = _n_classes(num_classes, targets, scores)
        t = targets.astype(np.int64)
        p = _top1(scores)
        tp = _class_counts(t[idx], (p == t)[idx], c)
        true_count = _class_counts(t[idx], None, c)
        pred_count = _class_counts(p[idx], None, c)
        if average == "micro":
            tp, true_count, pred_count = (
                a.sum(axis=1, keepdims=True) for a in (tp, true_count, pred_count)
            )
        den = true_count + pred_count  # = 2 TP + FP + FN
        f1 = np.zeros_like(tp)
        np.divide(2 * tp, den, out=f1, where=den > 0)
        if average == "micro":
            return f1[:, 0]
        # Macro F1 averages over the classes with samples in the resample, as the plain form.
        present = true_count > 0
        return (f1 * present).sum(axis=1) / present.sum(axis=1)

    return BatchedMetric(f"{average}_f1", fn, batched)


def multilabel_f1_metric(average: str = "macro", threshold: float = 0.5) -> BatchedMetric:
    """Multi-label macro or micro F1 of ``scores [N, C] > threshold`` against binary targets
    ``[N, C]``; as :func:`msclip.eval.metrics.precision_recall_f1`."""
    if average not in ("macro", "micro"):
        raise MetricInputError(f"average must be 'macro' or 'micro'; got {average!r}")

    def fn(targets: np.ndarray, scores: np.ndarray) -> float:
        return precision_recall_f1(scores > threshold, targets, average)[2]

    def batched(targets: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        p = scores > threshold
        t = targets.astype(bool)
        tp = (p & t)[idx].sum(axis=1, dtype=np.float64)  # [B, C]
        fp = (p & ~t)[idx].sum(axis=1, dtype=np.float64)
        fn_ = (~p & t)[idx].sum(axis=1, dtype=np.float64)
        if average == "micro":
            tp, fp, fn_ = (a.sum(axis=1, keepdims=True) for a in (tp, fp, fn_))
        den = 2 * tp + fp + fn_
        f1 = np.zeros_like(tp)
        np.divide(2 * tp, den, out=f1, where=den > 0)
        return f1.mean(axis=1)

    return BatchedMetric(f"multilabel_{average}_f1", fn, batched)


def regression_metric(name: str) -> BatchedMetric:
    """``"rmse"``, ``"mae"`` or ``"r2"`` of predictions against targets (``[N]`` or ``[N, K]``;
    mean over outputs), as in :mod:`msclip.eval.metrics`. Arguments are ``(targets, preds)``."""
    plain = {"rmse": root_mean_squared_error, "mae": mean_absolute_error, "r2": r2_score}
    if name not in plain:
        raise MetricInputError(f"unknown regression metric {name!r}; choose rmse, mae or r2")

    def fn(targets: np.ndarray, preds: np.ndarray) -> float:
        return plain[name](preds, targets)

    def batched(targets: np.ndarray, preds: np.ndarray, idx: np.ndarray) -> np.ndarray:
        t = targets.reshape(targets.shape[0], -1).astype(np.float64)
        p = preds.reshape(preds.shape[0], -1).astype(np.float64)
        if name == "rmse":
            return np.sqrt(((p - t) ** 2)[idx].mean(axis=1)).mean(axis=1)
        if name == "mae":
            return np.abs(p - t)[idx].mean(axis=1).mean(axis=1)
        tb = t[idx]  # [B, N, K]
        ss_res = ((p - t) ** 2)[idx].sum(axis=1)
        ss_tot = ((tb - tb.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        r2 = np.full_like(ss_res, np.nan)
        varied = (tb.max(axis=1) > tb.min(axis=1)) & (ss_tot > 0)  # as metrics._r2_columns
        np.divide(ss_res, ss_tot, out=r2, where=varied)
        r2 = 1.0 - r2
        with np.errstate(all="ignore"):
            defined = ~np.isnan(r2)
            total = np.where(defined, r2, 0.0).sum(axis=1)
            count = defined.sum(axis=1)
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    return BatchedMetric(name, fn, batched)
