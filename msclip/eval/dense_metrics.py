"""Dense (per-pixel) metrics streamed over batches, tiles or whole scenes.

Nothing here holds predictions: segmentation metrics accumulate a ``K x K`` confusion matrix
(int64), regression metrics a few float64 sums per output, so any number of pixels can be
evaluated in constant memory, and accumulators of different tiles or workers add up
(:meth:`SegmentationMetrics.merge`, :meth:`RegressionMetrics.merge`): the sum of per-tile
confusion matrices is exactly the whole image's matrix.

# Segmentation

``M[t, p]`` counts pixels of true class ``t`` predicted as ``p``, over pixels whose target is
not ``ignore_index`` (a prediction made on an ignored pixel counts nowhere). With
``TP_c = M[c, c]``, ``FP_c = sum_t M[t, c] - TP_c``, ``FN_c = sum_p M[c, p] - TP_c``:

- ``overall_accuracy = sum_c TP_c / sum M``;
- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``;
  ``precision_c = TP_c / (TP_c + FP_c)``; ``recall_c = TP_c / (TP_c + FN_c)``;
- a class absent from both targets and predictions has ``TP + FP + FN = 0``: its IoU and F1
  are NaN (undefined) and it is **excluded** from the means, so it neither helps nor hurts
  (counting it as 0 or 1 would change mIoU with the number of unused classes). A class present
  in the targets but never predicted, or predicted but absent from the targets, has IoU 0 and
  counts;
- ``miou`` (macro) = mean of ``IoU_c`` over the classes with a defined IoU; ``mean_f1`` likewise;
  ``mean_accuracy`` = mean recall over the classes with target pixels;
- ``miou_micro = sum_c TP_c / sum_c (TP_c + FP_c + FN_c)`` (pixels pooled over classes; every
  counted pixel that is wrong adds one FP and one FN);
- when ``ignore_index`` is itself a class number (``0`` = "no data" in a ``K``-class label set),
  that class is excluded from every metric: its row is NaN and it is left out of the means and
  of the micro sums (a valid pixel predicted as it still counts as an FN of its true class).

# Regression

Over valid pixels (target finite, not ``nodata``, inside an optional mask; predictions must be
finite there), per output channel, with error ``e = y_hat - y``:
``rmse = sqrt(mean e^2)``, ``mae = mean |e|``, ``bias = mean e``,
``r2 = 1 - sum e^2 / sum (y - mean y)^2`` (NaN when the targets are constant). The target
mean and spread are merged across batches with Chan, Golub and LeVeque's pairwise update
("Algorithms for computing the sample variance", The American Statistician 1983), so the
streamed values agree with a one-shot computation to float64 rounding. With several outputs the
overall figures are the means over outputs (per-output rows in ``per_class``).

# Records

:meth:`SegmentationMetrics.compute` and :meth:`RegressionMetrics.compute` return a plain dict
``{"task", "main_metric", "metrics", "per_class", "confusion_matrix", "dense_settings"}``; the
first five are keys of msclip's evaluation records (:func:`msclip.eval.report.make_record`) and
``dense_settings`` holds ``ignore_index`` or ``nodata``. Merge it into a record with
``record.update(result)``; ``metrics`` holds only numbers, so ``summary.csv`` and
``summary_long.csv`` take them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from msclip.errors import MetricInputError
from msclip.eval.metrics import _to_numpy

__all__ = [
    "RegressionMetrics",
    "SegmentationMetrics",
    "confusion_matrix",
    "segmentation_scores",
]


def _class_names(names: Sequence[str] | None, k: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(k)]
    names = [str(n) for n in names]
    if len(names) != k:
        raise MetricInputError(f"{len(names)} class names given for {k} classes")
    return names


def confusion_matrix(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """``K x K`` int64 confusion matrix (rows: target, columns: prediction) of label maps.

    Args:
        pred: predicted classes of any shape, or scores with one more axis at position 1
            (``[B, K, H, W]`` against ``[B, H, W]`` targets; argmax is taken).
        target: target classes; pixels equal to ``ignore_index`` are skipped.
        num_classes: ``K``.
        ignore_index: label value to skip (``None``: none).

    Raises:
        MetricInputError: shapes that do not match, or values outside ``0..K-1``.
    """
    p = _to_numpy(pred, "pred")
    t = _to_numpy(target, "target")
    if p.ndim == t.ndim + 1 and p.shape[:1] + p.shape[2:] == t.shape:
        if p.shape[1] != num_classes:
            raise MetricInputError(
                f"scores have {p.shape[1]} channels for {num_classes} classes (shape {p.shape})"
            )
        p = p.argmax(axis=1)
    if p.shape != t.shape:
        raise MetricInputError(
            f"predictions of shape {p.shape} do not match targets of shape {t.shape}"
        )
    for name, a in (("pred", p), ("target", t)):
        integral = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)
        if not integral and not np.all(a == np.round(a)):
            raise MetricInputError(f"{name} must hold integer class indices ({a.dtype})")
    t = t.astype(np.int64, copy=False).ravel()
    p = p.astype(np.int64, copy=False).ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    for name, a in (("target", t), ("pred", p)):
        if a.size and (int(a.min()) < 0 or int(a.max()) >= num_classes):
            bad = np.unique(a[(a < 0) | (a >= num_classes)])[:10].tolist()
            also = f" and are not the ignore index {ignore_index}" if name == "target" else ""
            raise MetricInputError(
                f"{name} values {bad} fall outside the {num_classes} classes "
                f"0..{num_classes - 1}{also}"
            )
    k = int(num_classes)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(a), np.nan, dtype=np.float64)
    np.divide(a, b, out=out, where=b > 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def segmentation_scores(
    matrix: Any, class_names: Sequence[str] | None = None, ignore_index: int | None = None
) -> dict[str, Any]:
    """Every segmentation metric of a confusion matrix (definitions in the module docstring);
    a class whose number is ``ignore_index`` is excluded from all of them.

    Returns:
        ``{"task": "segmentation", "main_metric": "miou", "metrics": {...}, "per_class":
        [...], "confusion_matrix": [[...]]}``.
    """
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise MetricInputError(f"a confusion matrix must be K x K, got shape {m.shape}")
    k = m.shape[0]
    names = _class_names(class_names, k)
    tp = np.diag(m).astype(np.float64)
    support = m.sum(axis=1).astype(np.float64)
    predicted = m.sum(axis=0).astype(np.float64)
    fp, fn = predicted - tp, support - tp
    total = float(m.sum())
    iou = _div(tp, tp + fp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    precision = _div(tp, predicted)
    recall = _div(tp, support)
    counted = np.ones(k, dtype=bool)
    if ignore_index is not None and 0 <= ignore_index < k:
        counted[ignore_index] = False
        for values in (iou, f1, precision, recall):
            values[ignore_index] = np.nan
    union = float((tp + fp + fn)[counted].sum())
    metrics: dict[str, Any] = {
        "n_pixels": int(total),
        "num_classes": k,
        "overall_accuracy": float(tp.sum() / total) if total else float("nan"),
        "miou": _nanmean(iou),
        "miou_micro": float(tp[counted].sum() / union) if union else float("nan"),
        "mean_f1": _nanmean(f1),
        "mean_accuracy": _nanmean(recall),
        "classes_evaluated": int((~np.isnan(iou)).sum()),
    }
    per_class = [
        {
            "class_index": i,
            "class_name": names[i],
            "n": int(support[i]),
            "n_predicted": int(predicted[i]),
            "iou": float(iou[i]),
            "f1": float(f1[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
        }
        for i in range(k)
    ]
    return {
        "task": "segmentation",
        "main_metric": "miou",
        "metrics": metrics,
        "per_class": per_class,
        "confusion_matrix": m.tolist(),
    }


class SegmentationMetrics:
    """Streamed segmentation metrics through a confusion matrix.

    Args:
        num_classes: ``K``.
        ignore_index: target value excluded from every metric (``None``: none).
        class_names: names for the per-class rows.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if int(num_classes) < 1:
            raise MetricInputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = _class_names(class_names, self.num_classes)
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Forget every update."""
        self.confusion[:] = 0

    def update(self, pred: Any, target: Any) -> np.ndarray:
        """Add a batch: class maps (or ``[B, K, ...]`` scores) and targets. Returns the batch's
        own confusion matrix."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.confusion += cm
        return cm

    def merge(self, other: SegmentationMetrics | np.ndarray) -> SegmentationMetrics:
        """Add another accumulator's (or a raw) confusion matrix; returns ``self``."""
        m = other.confusion if isinstance(other, SegmentationMetrics) else np.asarray(other)
        if m.shape != self.confusion.shape:
            raise MetricInputError(
                f"cannot merge a {m.shape} confusion matrix into {self.confusion.shape}"
            )
        self.confusion += m.astype(np.int64)
        return self

    def compute(self) -> dict[str, Any]:
        """Record-ready results (:func:`segmentation_scores`); adds ``ignore_index``."""
        out = segmentation_scores(self.confusion, self.class_names, self.ignore_index)
        out["dense_settings"] = {"ignore_index": self.ignore_index}
        return out


class RegressionMetrics:
    """Streamed per-pixel RMSE, MAE, bias and R² with nodata masked.

    Args:
        num_outputs: output channels ``K``.
        nodata: target value marking unlabelled pixels (NaN targets always are).
        pred_scale: predictions are divided by it first (the loss's target ``scale``, so that
            metrics are in target units).
        output_names: names of the per-output rows.
    """

    def __init__(
        self,
        num_outputs: int = 1,
        nodata: float | None = None,
        pred_scale: float = 1.0,
        output_names: Sequence[str] | None = None,
    ) -> None:
        if int(num_outputs) < 1:
            raise MetricInputError(f"num_outputs must be >= 1, got {num_outputs}")
        if not math.isfinite(pred_scale) or pred_scale == 0:
            raise MetricInputError(f"pred_scale must be finite and non-zero, got {pred_scale}")
        self.num_outputs = int(num_outputs)
        self.nodata = nodata
        self.pred_scale = float(pred_scale)
        self.output_names = _class_names(output_names, self.num_outputs)
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        k = self.num_outputs
        self.n = np.zeros(k, dtype=np.int64)
        self.sse = np.zeros(k)  # sum e^2
        self.sae = np.zeros(k)  # sum |e|
        self.se = np.zeros(k)  # sum e
        self.mean_y = np.zeros(k)
        self.m2_y = np.zeros(k)  # sum (y - mean y)^2
        self.min_y = np.full(k, np.inf)  # tell constant targets exactly (R² undefined)
        self.max_y = np.full(k, -np.inf)

    def update(self, pred: Any, target: Any, mask: Any = None) -> None:
        """Add a batch.

        Args:
            pred: ``[B, K, H, W]`` (or ``[B, H, W]`` when ``K = 1``).
            target: same shape as ``pred`` (``[B, H, W]`` also accepted for ``[B, 1, H, W]``).
            mask: optional ``[B, H, W]`` boolean, true where pixels count.

        Raises:
            MetricInputError: shapes that do not match, or non-finite predictions at valid
                pixels.
        """
        p = _to_numpy(pred, "pred").astype(np.float64, copy=False)
        t = _to_numpy(target, "target").astype(np.float64, copy=False)
        if p.ndim == 4 and t.ndim == 3 and p.shape[1] == 1:
            t = t[:, None]  # [B, H, W] targets of a one-output head, as the loss accepts
        if p.shape != t.shape:
            raise MetricInputError(
                f"predictions of shape {p.shape} do not match targets of shape {t.shape}"
            )
        k = self.num_outputs
        if p.ndim == 4:
            if p.shape[1] != k:
                raise MetricInputError(f"expected {k} output channels, got shape {p.shape}")
            p = np.moveaxis(p, 1, 0).reshape(k, -1)
            t = np.moveaxis(t, 1, 0).reshape(k, -1)
        elif k == 1:
            p, t = p.reshape(1, -1), t.reshape(1, -1)
        else:
            raise MetricInputError(f"{k} outputs need [B, {k}, H, W] arrays, got shape {p.shape}")
        valid = np.isfinite(t)
        if self.nodata is not None and not math.isnan(self.nodata):
            valid &= t != self.nodata
        if mask is not None:
            mk = _to_numpy(mask, "mask").astype(bool).reshape(-1)
            if mk.size != t.shape[1]:
                raise MetricInputError(
                    f"mask of {mk.size} pixels for {t.shape[1]} target pixels per output"
                )
            valid &= mk[None, :]
        for c in range(k):
            v = valid[c]
            y = t[c][v]
            if not y.size:
                continue
            yh = p[c][v] / self.pred_scale
            if not np.all(np.isfinite(yh)):
                raise MetricInputError(
                    f"{int((~np.isfinite(yh)).sum())} non-finite predictions at valid pixels "
                    f"of output {self.output_names[c]!r}"
                )
            e = yh - y
            n_b = y.size
            mean_b = float(y.mean())
            m2_b = float(((y - mean_b) ** 2).sum())
            n_a = int(self.n[c])
            n = n_a + n_b
            delta = mean_b - self.mean_y[c]
            self.m2_y[c] += m2_b + delta * delta * n_a * n_b / n
            self.mean_y[c] += delta * n_b / n
            self.n[c] = n
            self.min_y[c] = min(self.min_y[c], float(y.min()))
            self.max_y[c] = max(self.max_y[c], float(y.max()))
            self.sse[c] += float((e * e).sum())
            self.sae[c] += float(np.abs(e).sum())
            self.se[c] += float(e.sum())

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        """Add another accumulator's sums; returns ``self``."""
        if other.num_outputs != self.num_outputs:
            raise MetricInputError("cannot merge accumulators with different output counts")
        for c in range(self.num_outputs):
            n_a, n_b = int(self.n[c]), int(other.n[c])
            if not n_b:
                continue
            n = n_a + n_b
            delta = other.mean_y[c] - self.mean_y[c]
            self.m2_y[c] += other.m2_y[c] + delta * delta * n_a * n_b / n
            self.mean_y[c] += delta * n_b / n
            self.n[c] = n
        self.min_y = np.minimum(self.min_y, other.min_y)
        self.max_y = np.maximum(self.max_y, other.max_y)
        self.sse += other.sse
        self.sae += other.sae
        self.se += other.se
        return self

    def compute(self) -> dict[str, Any]:
        """Record-ready results: ``{"task": "pixel_regression", "main_metric": "rmse",
        "metrics", "per_class" (one row per output), "confusion_matrix": None}``."""
        n = self.n.astype(np.float64)
        rmse = np.sqrt(_div(self.sse, n))
        mae = _div(self.sae, n)
        bias = _div(self.se, n)
        r2 = np.full(self.num_outputs, np.nan)
        # Constant targets by their values: m2_y of equal values can be a rounding residue
        # (~1e-32) rather than 0, which would give R² ~ -1e28 instead of NaN.
        ok = (self.m2_y > 0) & (n > 0) & (self.max_y > self.min_y)
        r2[ok] = 1.0 - self.sse[ok] / self.m2_y[ok]
        rows = [
            {
                "class_index": c,
                "class_name": self.output_names[c],
                "n": int(self.n[c]),
                "rmse": float(rmse[c]),
                "mae": float(mae[c]),
                "bias": float(bias[c]),
                "r2": float(r2[c]),
                "target_mean": float(self.mean_y[c]) if self.n[c] else float("nan"),
            }
            for c in range(self.num_outputs)
        ]
        metrics = {
            "n_pixels": int(self.n.max()) if self.n.size else 0,
            "num_outputs": self.num_outputs,
            "rmse": _nanmean(rmse),
            "mae": _nanmean(mae),
            "bias": _nanmean(bias),
            "r2": _nanmean(r2),
        }
        return {
            "task": "pixel_regression",
            "main_metric": "rmse",
            "metrics": metrics,
            "per_class": rows,
            "confusion_matrix": None,
            "dense_settings": {"nodata": self.nodata, "pred_scale": self.pred_scale},
        }
