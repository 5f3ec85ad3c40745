"""Benchmark metrics of msclip, written once and shared by zero-shot inference, benchmark
evaluation and training validation.

Inputs may be numpy arrays, torch tensors or nested sequences; everything is computed in float64
numpy and returned as plain Python floats, numpy arrays or small dataclasses. torch is never
imported here. The definitions below are also published as ``docs/metrics.md`` so that reports
can link to them; the two texts must stay in sync.

# Benchmark metrics

## Notation

- ``N`` samples (images), ``C`` classes.
- ``s[i, c]``: score of sample ``i`` for class ``c`` (logit, cosine similarity or probability;
  higher means "more likely"). Scores must be finite.
- Single-label targets ``y[i]`` in ``{0, ..., C-1}``; multi-label targets ``Y[i, c]`` in
  ``{0, 1}``.
- All arithmetic is done in float64.

## Ranking and ties

Whenever items are ranked by score (the classes of one image for top-k accuracy, the images of
one class for AP@k), the ranking is a **stable sort by score, descending: equal scores keep the
lower index first**. The top-1 prediction of an image is therefore the lowest-indexed class among
those with the maximal score (``numpy.argmax``).

## Single-label metrics

- **Top-k accuracy**: fraction of samples whose true class is among the first ``k`` classes of
  the sample's ranking. ``k > C`` is clamped to ``C`` without error (the result is then 1.0). The
  single-label report gives ``top5_accuracy = NaN`` when ``C < 5``.
- **Confusion matrix** ``M[t, p]``: number of samples with true class ``t`` and top-1 prediction
  ``p`` (rows are true classes, columns predictions; the scikit-learn convention).
- **Per-class accuracy** (= per-class recall) ``r_c = M[c, c] / sum_p M[c, p]``; ``NaN`` for a
  class without samples.
- **Balanced accuracy** (= mean per-class recall): mean of ``r_c`` over the classes with at least
  one sample (classes without samples are excluded, not counted as 0). Equal to scikit-learn
  ``balanced_accuracy_score``.
- **Per-class precision and F1** of the single-label report are those of the multi-label section
  applied to the one-hot top-1 predictions; ``macro_f1`` averages over the classes with at
  least one sample, as balanced accuracy does (see "Single-label F1").

## Average precision at k (retrieval view, "mAP@100")

For class ``c`` the class prompt is the query and the ``N`` images are the documents, ranked by
``s[:, c]`` (ties: lower index first). ``rel_i`` is 1 when the image at rank ``i`` is relevant
(single-label: its label is ``c``; multi-label: ``Y[., c] = 1``). With ``k' = min(k, N)``:
``R`` = relevant images in total; ``R_k = sum_{i <= k'} rel_i``; ``P@i = (1/i) sum_{j <= i}
rel_j``; ``S_k = sum_{i <= k'} rel_i * P@i``. The ``definition`` option selects the denominator:

- ``relevant_retrieved`` (default): ``S_k / R_k``, and 0 when ``R_k = 0 < R``. This is
  torchmetrics ``RetrievalMAP(top_k=k)`` / ``retrieval_average_precision(top_k=k)`` in versions
  1.0.0 to 1.7.3.
- ``relevant_retrieved_positive``: as ``relevant_retrieved``, but an image whose score is
  ``<= 0`` never counts as relevant (it keeps its rank). This is torchmetrics 1.7.4 and later
  (checked: 1.7.4, 1.8.0, 1.9.0).
- ``min_k_relevant``: ``S_k / min(k, R)`` (the most relevant images the top ``k`` can hold). No
  torchmetrics version uses it.
- ``all_relevant``: ``S_k / R`` (truncated AP: relevant images below rank ``k`` count as
  precision 0). With ``k >= N`` and no tied scores it equals scikit-learn
  ``average_precision_score``.

A query without any relevant image (``R = 0``) gets ``NaN`` and is excluded from the mean
(default, ``no_relevant="nan"``), or gets 0 and is included (``no_relevant="zero"``, which is
torchmetrics' default ``empty_target_action="neg"``). **mAP@k** is the mean of the per-class
AP@k over the classes, NaN excluded.

Provenance (read from the released torchmetrics sources): ``top_k`` first appeared in
torchmetrics 1.0.0 (pull request #1501); before that (e.g. 0.11.4) AP always used the full
ranking. From 1.0.0 the functional keeps the ``top_k`` highest-scored items and averages ``P@i``
over the relevant items among them, i.e. divides by the relevant items *retrieved*. 1.7.4 (pull
request #3160) added a step that zeroes the relevance of every item scored ``<= 0``; nothing else
changed up to 1.9.0. None of the versions read (0.11.4, 1.0.0, 1.7.3, 1.7.4, 1.8.0, 1.9.0)
divides by ``min(k, R)`` or ``R``. 1.7.3 and 1.9.0 were also run against this module on random
data (with ``no_relevant="zero"``) and agree with ``relevant_retrieved`` and
``relevant_retrieved_positive`` respectively to float32 precision. torchmetrics ranks with
``torch.topk``, whose order among equal scores is unspecified; msclip's tie rule is the one above.
The "mAP@100" published with the original model release used ``RetrievalMAP(top_k=100)`` on
logits ``100 * cos``, one query per class, default ``empty_target_action="neg"``; that release
(March 2025) predates torchmetrics 1.7.4 (#3160 was opened in July 2025), hence the default.

## Full average precision (threshold-free)

For one class, with the distinct scores ``t_1 > t_2 > ...`` as thresholds and ``P_n``, ``R_n``
the precision and recall of ``{i : s_i >= t_n}``: ``AP = sum_n (R_n - R_{n-1}) * P_n`` with
``R_0 = 0``. Tied scores enter together. This equals scikit-learn ``average_precision_score``.
A class without positives gets ``NaN`` (or 0 with ``no_relevant="zero"``); **mAP** is the mean
over classes, NaN excluded.

## Multi-label prediction rules

All comparisons are strict (``>``).

- ``mean_others`` (the published rule): class ``c`` is predicted present when
  ``s[i, c] > (sum_{j != c} s[i, j]) / (C - 1)`` (algebraically: above the row mean). ``C >= 2``.
- ``other_class``: the last column is an extra "other features" class whose score is the
  threshold: ``s[i, c] > s[i, C-1]`` for ``c < C-1``; the prediction has ``C-1`` columns and the
  "other" class is not evaluated.
- ``threshold``: ``s[i, c] > t`` for a given ``t``.

## Multi-label metrics

With ``TP_c``, ``FP_c``, ``FN_c`` the counts of class ``c``:

- **Per-class accuracy** ``a_c = (1/N) sum_i [pred[i, c] = Y[i, c]]``; **mean accuracy** is the
  mean of ``a_c`` over the classes.
- **Precision** ``TP / (TP + FP)``, **recall** ``TP / (TP + FN)``, **F1**
  ``2 TP / (2 TP + FP + FN)``; each is 0 when its denominator is 0.
- **Macro**: unweighted mean over all classes (a class without positives still has test
  images, its negatives: it counts, with recall and F1 0). **Micro**: the same formulas on the
  sums of ``TP``, ``FP``, ``FN``. Equal to scikit-learn ``precision_score`` / ``recall_score`` /
  ``f1_score`` with ``average="macro"`` / ``"micro"`` and ``zero_division=0``.
- **AP**, **mAP**, **AP@k**, **mAP@k** as above with relevance ``Y[:, c]``. With the
  ``other_class`` rule only the real classes (all but the last score column) are evaluated.

## Single-label F1

Per-class F1 of the top-1 predictions, ``2 TP_c / (2 TP_c + FP_c + FN_c)`` (0 when the
denominator is 0). **Macro F1** is its unweighted mean over the classes with at least one
sample: a class without samples (a class folder without images, a class a test split lacks) is
not measured, so it is left out, not counted as 0 (its per-class row stays, with F1 0 and recall
NaN; predictions of it still count against the true classes). scikit-learn:
``f1_score(average="macro", labels=<the classes present in the targets>, zero_division=0)``.
**Micro F1** uses the summed counts and equals the top-1 accuracy in the single-label case.

## Regression metrics

Predictions ``p[i, j]`` and targets ``t[i, j]`` for ``K`` outputs (a 1-D input is one output).
Both must be finite: a NaN or infinite value is refused with the offending rows named.

- **RMSE** ``sqrt(mean_i (p - t)^2)`` and **MAE** ``mean_i |p - t|``, per output.
- **R²** ``1 - SS_res / SS_tot`` with ``SS_res = sum_i (t - p)^2`` and
  ``SS_tot = sum_i (t - mean(t))^2``; ``NaN`` for an output whose targets are constant
  (``SS_tot = 0``: R² is undefined there; scikit-learn gives 1.0 or 0.0 by convention).
- The reported value of each is the unweighted mean over the outputs (NaN excluded for R²),
  scikit-learn's ``multioutput="uniform_average"`` (for RMSE: the mean of per-output RMSEs,
  as ``root_mean_squared_error``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from msclip.arrays import as_numpy
from msclip.errors import MetricInputError
from msclip.eval.definitions import AP_DEFINITIONS, DEFAULT_AP_DEFINITION, NO_RELEVANT_POLICIES
from msclip.zero_shot import MULTILABEL_RULES, MultiLabelRule, multilabel_predict

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike

    ArrayOrTensor = ArrayLike | torch.Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "AP_DEFINITIONS",
    "DEFAULT_AP_DEFINITION",
    "MULTILABEL_RULES",
    "NO_RELEVANT_POLICIES",
    "APResult",
    "MetricInputError",
    "MultiLabelReport",
    "RegressionReport",
    "SingleLabelReport",
    "average_precision",
    "average_precision_at_k",
    "balanced_accuracy",
    "confusion_matrix",
    "mean_absolute_error",
    "mean_average_precision",
    "mean_average_precision_at_k",
    "multilabel_accuracy",
    "multilabel_predict",
    "multilabel_report",
    "per_class_accuracy",
    "precision_recall_f1",
    "r2_score",
    "regression_report",
    "root_mean_squared_error",
    "single_label_f1",
    "single_label_report",
    "targets_to_relevance",
    "topk_accuracy",
]

APDefinition = Literal[
    "relevant_retrieved", "relevant_retrieved_positive", "min_k_relevant", "all_relevant"
]
NoRelevantPolicy = Literal["nan", "zero"]
Average = Literal["micro", "macro", "none"]


# --------------------------------------------------------------------------------------------
# Input conversion and validation
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Converts a numpy array, torch tensor or sequence to a numpy array without copying torch
    to the GPU or keeping the autograd graph."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        arr = as_numpy(x)  # float64 is exact for every floating torch dtype
        return arr.astype(np.float64) if arr.dtype.kind == "f" else arr
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise MetricInputError(
            f"{name} must be a numpy array, torch tensor or nested sequence of numbers; "
            f"got {type(x).__name__}: {err}"
        ) from err


def _as_scores(x: Any, name: str, ndim: int) -> np.ndarray:
    """Returns finite float64 scores of the given number of dimensions."""
    arr = _to_numpy(x, name)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise MetricInputError(f"{name} must be numeric; got dtype {arr.dtype}")
    if arr.ndim != ndim:
        want = "[N]" if ndim == 1 else "[N, C]"
        raise MetricInputError(
            f"{name} must have shape {want} ({ndim}-D); got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise MetricInputError(f"{name} is empty (shape {tuple(arr.shape)}); need N >= 1 samples")
    if ndim == 2 and arr.shape[1] == 0:
        raise MetricInputError(f"{name} has no classes (shape {tuple(arr.shape)}); need C >= 1")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise MetricInputError(
            f"{name} contains {bad} NaN or infinite value(s); scores must be finite "
            "(check the model output, e.g. for fp16 overflow)"
        )
    return arr


def _as_labels(x: Any, name: str, n: int | None, num_classes: int | None) -> np.ndarray:
    """Returns int64 class indices of shape [n] in [0, num_classes)."""
    arr = _to_numpy(x, name)
    if arr.ndim != 1:
        raise MetricInputError(
            f"{name} must be a 1-D array of class indices [N]; got shape {tuple(arr.shape)} "
            "(multi-label targets belong to the multilabel_* functions)"
        )
    if arr.shape[0] == 0:
        raise MetricInputError(f"{name} is empty; need N >= 1 samples")
    if n is not None and arr.shape[0] != n:
        raise MetricInputError(
            f"{name} has {arr.shape[0]} entries but the scores have N = {n} rows; "
            "pass one target per scored sample"
        )
    if np.issubdtype(arr.dtype, np.bool_):
        arr = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise MetricInputError(
                f"{name} must hold integer class indices; got non-integer float values"
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise MetricInputError(f"{name} must hold integer class indices; got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        raise MetricInputError(
            f"{name} has values in [{lo}, {hi}] but must lie in [0, {num_classes}) "
            f"for C = {num_classes} classes"
            if num_classes is not None
            else f"{name} has a negative class index {lo}; indices must be >= 0"
        )
    return arr


def _as_binary(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Returns a bool array of exactly ``shape`` whose input values were all 0 or 1."""
    arr = _to_numpy(x, name)
    if tuple(arr.shape) != tuple(shape):
        raise MetricInputError(
            f"{name} must have shape {tuple(shape)} to match the scores; got {tuple(arr.shape)}"
        )
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(bool, copy=False)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise MetricInputError(f"{name} must be binary (0/1 or bool); got dtype {arr.dtype}")
    is_zero = arr == 0
    is_one = arr == 1
    if not np.all(is_zero | is_one):
        bad = np.unique(arr[~(is_zero | is_one)])[:5]
        raise MetricInputError(
            f"{name} must be binary (0/1 or bool); found other values such as {bad.tolist()}"
        )
    return is_one


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise MetricInputError(f"{name} must be a positive integer; got {k!r}")
    if int(k) < 1:
        raise MetricInputError(f"{name} must be >= 1; got {int(k)}")
    return int(k)


def _check_definition(definition: str) -> str:
    if definition not in AP_DEFINITIONS:
        raise MetricInputError(
            f"unknown AP@k definition {definition!r}; choose one of {sorted(AP_DEFINITIONS)}"
        )
    return definition


def _check_no_relevant(no_relevant: str) -> float:
    if no_relevant not in NO_RELEVANT_POLICIES:
        raise MetricInputError(
            f"unknown no_relevant policy {no_relevant!r}; "
            f"choose one of {list(NO_RELEVANT_POLICIES)}"
        )
    return float("nan") if no_relevant == "nan" else 0.0


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a RuntimeWarning) when there is none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _macro_over_present(per_class: np.ndarray, cm: np.ndarray) -> float:
    """The mean of a per-class metric over the classes with at least one sample (rows of the
    confusion matrix ``cm`` with a count): single-label macro F1, whose classes without samples
    are not measured (see "Single-label F1")."""
    return _nanmean(np.where(cm.sum(axis=1) > 0, per_class, np.nan))


def _log_empty_classes(relevance: np.ndarray, no_relevant: str) -> None:
    empty = np.flatnonzero(relevance.sum(axis=0) == 0)
    if empty.size:
        logger.debug(
            "%d of %d classes have no relevant item (indices %s); their AP is %s",
            empty.size,
            relevance.shape[1],
            empty[:10].tolist(),
            "NaN and excluded from the mean" if no_relevant == "nan" else "0",
        )


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise MetricInputError(
            f"class_names has {len(names)} entries but there are C = {num_classes} classes"
        )
    return names


# --------------------------------------------------------------------------------------------
# Single-label metrics
# --------------------------------------------------------------------------------------------


def _rank_of_target(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each sample's true class in its stable descending ranking.

    A class is ranked before the target when its score is higher, or equal with a lower index;
    counting those is exact and O(N*C) without sorting.
    """
    n, c = scores.shape
    target_scores = scores[np.arange(n), targets][:, None]
    lower_index = np.arange(c)[None, :] < targets[:, None]
    ahead = (scores > target_scores) | ((scores == target_scores) & lower_index)
    return ahead.sum(axis=1)


def topk_accuracy(scores: ArrayOrTensor, targets: ArrayOrTensor, k: int = 1) -> float:
    """Top-k accuracy of single-label scores.

    Args:
        scores: Scores ``[N, C]``; higher is more likely.
        targets: True class indices ``[N]`` in ``[0, C)``.
        k: Number of top-ranked classes that may contain the true class. Values above ``C`` are
            clamped to ``C`` (then every sample counts as correct); no error is raised.

    Returns:
        Fraction of samples whose true class is within the top ``k`` (ties: lower class index
        ranks first).

    Raises:
        MetricInputError: On bad shapes, targets out of range or ``k < 1``.
    """
    s = _as_scores(scores, "scores", ndim=2)
    t = _as_labels(targets, "targets", n=s.shape[0], num_classes=s.shape[1])
    k = min(_check_k(k), s.shape[1])
    return float(np.mean(_rank_of_target(s, t) < k))


def _predictions(
    scores_or_preds: ArrayOrTensor, name: str, num_classes: int | None
) -> tuple[np.ndarray, int | None]:
    """Top-1 predictions from scores ``[N, C]`` (argmax, lowest index on ties) or passes integer
    predictions ``[N]`` through; returns them with the class count known so far."""
    arr = _to_numpy(scores_or_preds, name)
    if arr.ndim == 2:
        s = _as_scores(arr, name, ndim=2)
        if num_classes is not None and num_classes != s.shape[1]:
            raise MetricInputError(
                f"num_classes = {num_classes} but {name} has C = {s.shape[1]} columns"
            )
        return np.argmax(s, axis=1).astype(np.int64), s.shape[1]
    if arr.ndim == 1:
        return _as_labels(arr, name, n=None, num_classes=num_classes), num_classes
    raise MetricInputError(
        f"{name} must be scores [N, C] or predicted class indices [N]; got shape {tuple(arr.shape)}"
    )


def confusion_matrix(
    scores_or_preds: ArrayOrTensor, targets: ArrayOrTensor, num_classes: int | None = None
) -> np.ndarray:
    """Confusion matrix of single-label predictions.

    Args:
        scores_or_preds: Scores ``[N, C]`` (the top-1 prediction is the argmax, lowest index on
            ties) or predicted class indices ``[N]``.
        targets: True class indices ``[N]``.
        num_classes: Number of classes ``C``. Taken from the score width when omitted, else from
            the largest index seen (``max + 1``).

    Returns:
        int64 array ``[C, C]``; entry ``[t, p]`` counts samples of true class ``t`` predicted as
        ``p`` (rows true, columns predicted, as scikit-learn).

    Raises:
        MetricInputError: On bad shapes, mismatched ``N`` or indices outside ``[0, C)``.
    """
    if num_classes is not None:
        num_classes = _check_k(num_classes, "num_classes")
    preds, c = _predictions(scores_or_preds, "scores_or_preds", num_classes)
    t = _as_labels(targets, "targets", n=preds.shape[0], num_classes=c)
    if c is None:
        c = int(max(preds.max(), t.max())) + 1
    counts = np.bincount(t * c + preds, minlength=c * c)
    return counts.reshape(c, c).astype(np.int64)


def per_class_accuracy(
    scores_or_preds: ArrayOrTensor, targets: ArrayOrTensor, num_classes: int | None = None
) -> np.ndarray:
    """Per-class accuracy (= recall) of single-label predictions.

    Args:
        scores_or_preds: Scores ``[N, C]`` or predicted class indices ``[N]``.
        targets: True class indices ``[N]``.
        num_classes: Number of classes; see :func:`confusion_matrix`.

    Returns:
        float64 array ``[C]``: correct / samples of each class; ``NaN`` for classes without
        samples (excluded from :func:`balanced_accuracy`).
    """
    cm = confusion_matrix(scores_or_preds, targets, num_classes)
    support = cm.sum(axis=1)
    out = np.full(cm.shape[0], np.nan)
    has = support > 0
    out[has] = np.diag(cm)[has] / support[has]
    return out


def balanced_accuracy(
    scores_or_preds: ArrayOrTensor, targets: ArrayOrTensor, num_classes: int | None = None
) -> float:
    """Balanced accuracy: mean per-class recall over the classes that have samples.

    Args:
        scores_or_preds: Scores ``[N, C]`` or predicted class indices ``[N]``.
        targets: True class indices ``[N]``.
        num_classes: Number of classes; see :func:`confusion_matrix`.

    Returns:
        The mean of :func:`per_class_accuracy`, NaN entries excluded (equals scikit-learn
        ``balanced_accuracy_score``).
    """
    return _nanmean(per_class_accuracy(scores_or_preds, targets, num_classes))


def targets_to_relevance(targets: ArrayOrTensor, num_classes: int) -> np.ndarray:
    """One-hot relevance ``[N, C]`` of single-label targets: ``rel[i, c] = (y[i] == c)``.

    Args:
        targets: True class indices ``[N]``.
        num_classes: Number of classes ``C``.

    Returns:
        bool array ``[N, C]``.
    """
    c = _check_k(num_classes, "num_classes")
    t = _as_labels(targets, "targets", n=None, num_classes=c)
    return t[:, None] == np.arange(c)[None, :]


# --------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class APResult:
    """Per-class average precision and its mean.

    Attributes:
        per_class: float64 ``[C]``; NaN for classes without relevant items when
            ``no_relevant="nan"``.
        mean: Mean over ``per_class`` with NaN excluded (NaN when every class is NaN).
        k: Cut-off of AP@k, or None for the threshold-free AP.
        definition: AP@k definition name (a key of :data:`AP_DEFINITIONS`), or ``"full"``.
        no_relevant: Policy used for classes without relevant items.
    """

    per_class: np.ndarray
    mean: float
    k: int | None
    definition: str
    no_relevant: str


def _ap_at_k_columns(
    scores: np.ndarray,
    relevance: np.ndarray,
    k: int,
    definition: str,
    empty_value: float,
) -> np.ndarray:
    """AP@k of every column of validated ``scores`` / ``relevance`` ``[N, C]``."""
    n = scores.shape[0]
    kk = min(k, n)
    # Stable ascending sort of the negated scores == stable descending sort: ties keep the
    # lower index first. (-0.0 and 0.0 compare equal, so they tie too.)
    order = np.argsort(-scores, axis=0, kind="stable")[:kk]
    rel_sorted = np.take_along_axis(relevance, order, axis=0)
    if definition == "relevant_retrieved_positive":
        rel_sorted = rel_sorted & (np.take_along_axis(scores, order, axis=0) > 0)
    hits = rel_sorted.astype(np.float64)
    precision_at_i = np.cumsum(hits, axis=0) / np.arange(1, kk + 1, dtype=np.float64)[:, None]
    summed = (precision_at_i * hits).sum(axis=0)
    retrieved = hits.sum(axis=0)
    total = relevance.sum(axis=0).astype(np.float64)

    if definition in ("relevant_retrieved", "relevant_retrieved_positive"):
        denom = retrieved
    elif definition == "min_k_relevant":
        denom = np.minimum(float(k), total)
    else:  # all_relevant
        denom = total
    out = np.zeros(scores.shape[1], dtype=np.float64)
    ok = denom > 0
    out[ok] = summed[ok] / denom[ok]
    # denom == 0 with relevant items present means none was retrieved: AP 0 (already set).
    out[total == 0] = empty_value
    return out


def average_precision_at_k(
    scores: ArrayOrTensor,
    relevant: ArrayOrTensor,
    k: int = 100,
    definition: APDefinition = DEFAULT_AP_DEFINITION,
    *,
    no_relevant: NoRelevantPolicy = "nan",
) -> float:
    """Average precision of one ranked query, cut off at rank ``k``.

    Args:
        scores: Scores ``[N]`` of the items for this query; ranked descending, ties broken by
            lower index first.
        relevant: Binary relevance ``[N]`` (bool or 0/1).
        k: Cut-off rank; ``k > N`` behaves as ``k = N``.
        definition: Denominator, one of :data:`AP_DEFINITIONS` (see the module docstring).
        no_relevant: Value when no item is relevant: ``"nan"`` or ``"zero"``.

    Returns:
        AP@k in ``[0, 1]``, or NaN per ``no_relevant``.

    Raises:
        MetricInputError: On bad shapes, non-binary relevance, ``k < 1`` or an unknown option.
    """
    s = _as_scores(scores, "scores", ndim=1)
    rel = _as_binary(relevant, "relevant", s.shape)
    k = _check_k(k)
    definition = _check_definition(definition)
    empty = _check_no_relevant(no_relevant)
    return float(_ap_at_k_columns(s[:, None], rel[:, None], k, definition, empty)[0])


def mean_average_precision_at_k(
    scores: ArrayOrTensor,
    relevance: ArrayOrTensor,
    k: int = 100,
    definition: APDefinition = DEFAULT_AP_DEFINITION,
    *,
    no_relevant: NoRelevantPolicy = "nan",
) -> APResult:
    """Per-class AP@k with each class as a query over all samples, and their mean.

    For single-label data pass ``targets_to_relevance(targets, C)`` as ``relevance``: class
    ``c`` ranks all images by ``scores[:, c]`` and the relevant ones are those labelled ``c``.
    This is the published "mAP@100" with ``k=100``.

    Args:
        scores: Scores ``[N, C]``.
        relevance: Binary relevance ``[N, C]``.
        k: Cut-off rank; ``k > N`` behaves as ``k = N``.
        definition: Denominator, one of :data:`AP_DEFINITIONS`.
        no_relevant: Value for classes without relevant items: ``"nan"`` (excluded from the mean)
            or ``"zero"`` (counted as 0).

    Returns:
        :class:`APResult` with per-class values and the mean.

    Raises:
        MetricInputError: On bad shapes, non-binary relevance, ``k < 1`` or an unknown option.
    """
    s = _as_scores(scores, "scores", ndim=2)
    rel = _as_binary(relevance, "relevance", s.shape)
    k = _check_k(k)
    definition = _check_definition(definition)
    empty = _check_no_relevant(no_relevant)
    _log_empty_classes(rel, no_relevant)
    per_class = _ap_at_k_columns(s, rel, k, definition, empty)
    return APResult(per_class, _nanmean(per_class), k, definition, no_relevant)


def _full_ap_column(scores: np.ndarray, relevant: np.ndarray, empty_value: float) -> float:
    """Step-wise area under the precision-recall curve, ties grouped (scikit-learn AP)."""
    n_pos = int(relevant.sum())
    if n_pos == 0:
        return empty_value
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    rel_sorted = relevant[order].astype(np.float64)
    # Last position of every group of equal scores: each group is one threshold.
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(rel_sorted)[ends]
    predicted = (ends + 1).astype(np.float64)
    precision = tp / predicted
    recall = tp / n_pos
    recall_gain = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_gain * precision))


def average_precision(
    scores: ArrayOrTensor, relevant: ArrayOrTensor, *, no_relevant: NoRelevantPolicy = "nan"
) -> float:
    """Threshold-free average precision of one query (equal to scikit-learn
    ``average_precision_score``).

    Args:
        scores: Scores ``[N]``.
        relevant: Binary relevance ``[N]``.
        no_relevant: Value when no item is relevant: ``"nan"`` or ``"zero"``.

    Returns:
        ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds.
    """
    s = _as_scores(scores, "scores", ndim=1)
    rel = _as_binary(relevant, "relevant", s.shape)
    return _full_ap_column(s, rel, _check_no_relevant(no_relevant))


def mean_average_precision(
    scores: ArrayOrTensor, relevance: ArrayOrTensor, *, no_relevant: NoRelevantPolicy = "nan"
) -> APResult:
    """Per-class threshold-free AP (scikit-learn ``average_precision_score`` per column) and mAP.

    Args:
        scores: Scores ``[N, C]``.
        relevance: Binary relevance ``[N, C]``.
        no_relevant: Value for classes without positives: ``"nan"`` or ``"zero"``.

    Returns:
        :class:`APResult` with ``k=None`` and ``definition="full"``.
    """
    s = _as_scores(scores, "scores", ndim=2)
    rel = _as_binary(relevance, "relevance", s.shape)
    empty = _check_no_relevant(no_relevant)
    _log_empty_classes(rel, no_relevant)
    per_class = np.array(
        [_full_ap_column(s[:, c], rel[:, c], empty) for c in range(s.shape[1])], dtype=np.float64
    )
    return APResult(per_class, _nanmean(per_class), None, "full", no_relevant)


# --------------------------------------------------------------------------------------------
# Multi-label metrics
# --------------------------------------------------------------------------------------------


def _binary_pair(preds: ArrayOrTensor, targets: ArrayOrTensor) -> tuple[np.ndarray, np.ndarray]:
    p_arr = _to_numpy(preds, "preds")
    if p_arr.ndim != 2 or p_arr.shape[0] == 0:
        raise MetricInputError(
            f"preds must be binary predictions [N, C] with N >= 1; got shape {tuple(p_arr.shape)}"
        )
    p = _as_binary(p_arr, "preds", p_arr.shape)
    t = _as_binary(targets, "targets", p.shape)
    return p, t


def multilabel_accuracy(preds: ArrayOrTensor, targets: ArrayOrTensor) -> np.ndarray:
    """Per-class binary accuracy of multi-label predictions.

    Args:
        preds: Binary predictions ``[N, C]`` (e.g. from :func:`multilabel_predict`).
        targets: Binary targets ``[N, C]``.

    Returns:
        float64 ``[C]``: fraction of samples where prediction and target agree; the mean
        accuracy reported is its plain mean.
    """
    p, t = _binary_pair(preds, targets)
    return (p == t).mean(axis=0)


def precision_recall_f1(
    preds: ArrayOrTensor, targets: ArrayOrTensor, average: Average = "macro"
) -> tuple[Any, Any, Any]:
    """Precision, recall and F1 of binary multi-label (or one-hot) predictions.

    Undefined ratios (zero denominator) are 0, as scikit-learn with ``zero_division=0``.

    Args:
        preds: Binary predictions ``[N, C]``.
        targets: Binary targets ``[N, C]``.
        average: ``"macro"`` (unweighted mean over all classes), ``"micro"`` (from the summed
            counts) or ``"none"`` (per-class arrays).

    Returns:
        ``(precision, recall, f1)``: floats, or float64 arrays ``[C]`` for ``"none"``.

    Raises:
        MetricInputError: On bad shapes, non-binary values or an unknown ``average``.
    """
    if average not in ("micro", "macro", "none"):
        raise MetricInputError(
            f"unknown average {average!r}; choose one of ['micro', 'macro', 'none']"
        )
    p, t = _binary_pair(preds, targets)
    tp = (p & t).sum(axis=0).astype(np.float64)
    fp = (p & ~t).sum(axis=0).astype(np.float64)
    fn = (~p & t).sum(axis=0).astype(np.float64)
    if average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.zeros_like(num)
        np.divide(num, den, out=out, where=den > 0)
        return out

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    if average == "none":
        return precision, recall, f1
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SingleLabelReport:
    """Overall single-label metrics plus a per-class table.

    Attributes:
        n_samples: Number of samples ``N``.
        num_classes: Number of classes ``C``.
        top1_accuracy: Top-1 accuracy.
        top5_accuracy: Top-5 accuracy; NaN when ``C < 5``.
        balanced_accuracy: Mean per-class recall over classes with samples.
        macro_f1: Macro F1 of the top-1 predictions over the classes with samples (as
            ``balanced_accuracy``; classes without samples keep their per-class rows).
        map_at_k: Mean AP@k (class prompt as query over all images).
        map: Mean threshold-free AP.
        ap_k: The ``k`` of AP@k.
        ap_definition: AP@k definition name.
        no_relevant: Policy for classes without samples in AP.
        per_class: Columns ``class_index, class_name, n, n_predicted, recall, precision, f1,
            ap_at_k, ap`` (``recall`` is the per-class accuracy).
        confusion: Confusion matrix ``[C, C]`` (rows true, columns predicted).
    """

    n_samples: int
    num_classes: int
    top1_accuracy: float
    top5_accuracy: float
    balanced_accuracy: float
    macro_f1: float
    map_at_k: float
    map: float
    ap_k: int
    ap_definition: str
    no_relevant: str
    per_class: pd.DataFrame = field(repr=False)
    confusion: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, float | int | str]:
        """Overall metrics as a flat dict with stable snake_case keys (no per-class table)."""
        return {
            "n_samples": self.n_samples,
            "num_classes": self.num_classes,
            "top1_accuracy": self.top1_accuracy,
            "top5_accuracy": self.top5_accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "map_at_k": self.map_at_k,
            "map": self.map,
            "ap_k": self.ap_k,
            "ap_definition": self.ap_definition,
            "no_relevant": self.no_relevant,
        }


def single_label_report(
    scores: ArrayOrTensor,
    targets: ArrayOrTensor,
    class_names: Sequence[str] | None = None,
    k_ap: int = 100,
    ap_definition: APDefinition = DEFAULT_AP_DEFINITION,
    *,
    no_relevant: NoRelevantPolicy = "nan",
) -> SingleLabelReport:
    """All single-label benchmark metrics of one evaluation.

    Args:
        scores: Scores ``[N, C]`` (e.g. zero-shot logits).
        targets: True class indices ``[N]``.
        class_names: ``C`` names for the per-class table; defaults to ``"0"``, ``"1"``, ...
        k_ap: Cut-off of AP@k.
        ap_definition: AP@k definition, a key of :data:`AP_DEFINITIONS`.
        no_relevant: AP value of classes without samples: ``"nan"`` or ``"zero"``.

    Returns:
        :class:`SingleLabelReport`.
    """
    s = _as_scores(scores, "scores", ndim=2)
    n, c = s.shape
    t = _as_labels(targets, "targets", n=n, num_classes=c)
    names = _class_names(class_names, c)
    k_ap = _check_k(k_ap, "k_ap")
    _check_definition(ap_definition)
    _check_no_relevant(no_relevant)

    ranks = _rank_of_target(s, t)
    cm = confusion_matrix(s, t)
    recall = per_class_accuracy(s, t)
    relevance = targets_to_relevance(t, c)
    onehot_pred = targets_to_relevance(np.argmax(s, axis=1), c)
    precision, _, f1 = precision_recall_f1(onehot_pred, relevance, average="none")
    ap_k = mean_average_precision_at_k(s, relevance, k_ap, ap_definition, no_relevant=no_relevant)
    ap_full = mean_average_precision(s, relevance, no_relevant=no_relevant)

    per_class = pd.DataFrame(
        {
            "class_index": np.arange(c, dtype=np.int64),
            "class_name": names,
            "n": cm.sum(axis=1),
            "n_predicted": cm.sum(axis=0),
            "recall": recall,
            "precision": precision,
            "f1": f1,
            "ap_at_k": ap_k.per_class,
            "ap": ap_full.per_class,
        }
    )
    return SingleLabelReport(
        n_samples=n,
        num_classes=c,
        top1_accuracy=float(np.mean(ranks < 1)),
        top5_accuracy=float(np.mean(ranks < 5)) if c >= 5 else float("nan"),
        balanced_accuracy=_nanmean(recall),
        macro_f1=_macro_over_present(f1, cm),
        map_at_k=ap_k.mean,
        map=ap_full.mean,
        ap_k=k_ap,
        ap_definition=ap_definition,
        no_relevant=no_relevant,
        per_class=per_class,
        confusion=cm,
    )


@dataclass(eq=False)
class MultiLabelReport:
    """Overall multi-label metrics plus a per-class table.

    Attributes:
        n_samples: Number of samples ``N``.
        num_classes: Number of evaluated classes (without the "other" column).
        rule: Decision rule of :func:`multilabel_predict`.
        threshold: Threshold of the ``"threshold"`` rule, else None.
        mean_accuracy: Mean of the per-class binary accuracies.
        micro_precision: Micro-averaged precision.
        micro_recall: Micro-averaged recall.
        micro_f1: Micro-averaged F1.
        macro_precision: Macro-averaged precision.
        macro_recall: Macro-averaged recall.
        macro_f1: Macro-averaged F1.
        map: Mean threshold-free AP.
        map_at_k: Mean AP@k.
        ap_k: The ``k`` of AP@k.
        ap_definition: AP@k definition name.
        no_relevant: Policy for classes without positives in AP.
        per_class: Columns ``class_index, class_name, n, n_predicted, accuracy, precision,
            recall, f1, ap, ap_at_k``.
    """

    n_samples: int
    num_classes: int
    rule: str
    threshold: float | None
    mean_accuracy: float
    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    map: float
    map_at_k: float
    ap_k: int
    ap_definition: str
    no_relevant: str
    per_class: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Overall metrics as a flat dict with stable snake_case keys (no per-class table)."""
        return {
            "n_samples": self.n_samples,
            "num_classes": self.num_classes,
            "rule": self.rule,
            "threshold": self.threshold,
            "mean_accuracy": self.mean_accuracy,
            "micro_precision": self.micro_precision,
            "micro_recall": self.micro_recall,
            "micro_f1": self.micro_f1,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "map": self.map,
            "map_at_k": self.map_at_k,
            "ap_k": self.ap_k,
            "ap_definition": self.ap_definition,
            "no_relevant": self.no_relevant,
        }


def multilabel_report(
    scores: ArrayOrTensor,
    targets: ArrayOrTensor,
    class_names: Sequence[str] | None = None,
    rule: MultiLabelRule = "mean_others",
    threshold: float | None = None,
    k_ap: int = 100,
    ap_definition: APDefinition = DEFAULT_AP_DEFINITION,
    *,
    no_relevant: NoRelevantPolicy = "nan",
) -> MultiLabelReport:
    """All multi-label benchmark metrics of one evaluation.

    Args:
        scores: Scores ``[N, C]``; with ``rule="other_class"`` the last column is the "other
            features" class and only the first ``C - 1`` classes are evaluated.
        targets: Binary targets ``[N, C]``. With ``rule="other_class"`` either ``[N, C - 1]``
            or ``[N, C]`` (then the last, "other", column is dropped).
        class_names: Names of the evaluated classes; with ``"other_class"`` the name list may
            also include the "other" class last (it is dropped).
        rule: Decision rule, see :func:`multilabel_predict`.
        threshold: Threshold for ``rule="threshold"``.
        k_ap: Cut-off of AP@k.
        ap_definition: AP@k definition, a key of :data:`AP_DEFINITIONS`.
        no_relevant: AP value of classes without positives: ``"nan"`` or ``"zero"``.

    Returns:
        :class:`MultiLabelReport`.
    """
    s = _as_scores(scores, "scores", ndim=2)
    n, c_all = s.shape
    preds = multilabel_predict(s, rule=rule, threshold=threshold)
    c = preds.shape[1]
    class_scores = s[:, :c]

    t_arr = _to_numpy(targets, "targets")
    if rule == "other_class" and t_arr.ndim == 2 and t_arr.shape == (n, c_all):
        t_arr = t_arr[:, :c]
    t = _as_binary(t_arr, "targets", (n, c))
    if rule == "other_class" and class_names is not None and len(class_names) == c_all:
        class_names = list(class_names)[:c]
    names = _class_names(class_names, c)
    k_ap = _check_k(k_ap, "k_ap")
    _check_definition(ap_definition)
    _check_no_relevant(no_relevant)

    accuracy = multilabel_accuracy(preds, t)
    precision, recall, f1 = precision_recall_f1(preds, t, average="none")
    micro = precision_recall_f1(preds, t, average="micro")
    ap_full = mean_average_precision(class_scores, t, no_relevant=no_relevant)
    ap_k = mean_average_precision_at_k(
        class_scores, t, k_ap, ap_definition, no_relevant=no_relevant
    )
    per_class = pd.DataFrame(
        {
            "class_index": np.arange(c, dtype=np.int64),
            "class_name": names,
            "n": t.sum(axis=0).astype(np.int64),
            "n_predicted": preds.sum(axis=0).astype(np.int64),
            "accuracy": accuracy,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "ap": ap_full.per_class,
            "ap_at_k": ap_k.per_class,
        }
    )
    return MultiLabelReport(
        n_samples=n,
        num_classes=c,
        rule=rule,
        threshold=float(threshold) if rule == "threshold" and threshold is not None else None,
        mean_accuracy=float(accuracy.mean()),
        micro_precision=micro[0],
        micro_recall=micro[1],
        micro_f1=micro[2],
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        map=ap_full.mean,
        map_at_k=ap_k.mean,
        ap_k=k_ap,
        ap_definition=ap_definition,
        no_relevant=no_relevant,
        per_class=per_class,
    )


# --------------------------------------------------------------------------------------------
# Single-label F1 and regression metrics (used by the probes and heads of msclip.heads)
# --------------------------------------------------------------------------------------------

RegressionAverage = Literal["mean", "none"]


def single_label_f1(
    scores_or_preds: ArrayOrTensor,
    targets: ArrayOrTensor,
    num_classes: int | None = None,
    average: Average = "macro",
) -> Any:
    """F1 of single-label top-1 predictions.

    Args:
        scores_or_preds: Scores ``[N, C]`` (top-1 = argmax, lowest index on ties) or predicted
            class indices ``[N]``.
        targets: True class indices ``[N]``.
        num_classes: Number of classes; see :func:`confusion_matrix`.
        average: ``"macro"`` (mean over the classes with at least one sample, as
            :func:`balanced_accuracy`: a class without samples is not measured, so it is left
            out rather than counted as 0; its predictions still count as errors of the true
            classes), ``"micro"`` (summed counts; equals the top-1 accuracy) or ``"none"``
            (per-class array, every class; 0 for a class without samples).

    Returns:
        A float, or float64 ``[C]`` for ``"none"``. Equal to scikit-learn ``f1_score`` with
        ``labels`` the classes present in ``targets`` (``"macro"``) or ``range(C)``, and
        ``zero_division=0``.

    Raises:
        MetricInputError: On bad shapes, indices out of range or an unknown ``average``.
    """
    if average not in ("micro", "macro", "none"):
        raise MetricInputError(
            f"unknown average {average!r}; choose one of ['micro', 'macro', 'none']"
        )
    cm = confusion_matrix(scores_or_preds, targets, num_classes).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    if average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
    den = 2 * tp + fp + fn
    f1 = np.zeros_like(tp)
    np.divide(2 * tp, den, out=f1, where=den > 0)
    if average == "none":
        return f1
    if average == "macro":
        return _macro_over_present(f1, cm)
    return float(f1.mean())


def _as_regression(x: Any, name: str) -> np.ndarray:
    """Finite float64 ``[N, K]`` (a 1-D input becomes one column); NaN rows are named."""
    arr = _to_numpy(x, name)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise MetricInputError(f"{name} must be numeric; got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise MetricInputError(
            f"{name} must have shape [N] or [N, K] (K outputs); got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MetricInputError(f"{name} is empty (shape {tuple(arr.shape)}); need N >= 1 rows")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise MetricInputError(
            f"{name} has NaN or infinite values in {rows.size} row(s), e.g. rows "
            f"{rows[:10].tolist()}; drop or fill those rows before computing metrics"
        )
    return arr


def _regression_pair(preds: ArrayOrTensor, targets: ArrayOrTensor) -> tuple[np.ndarray, np.ndarray]:
    p = _as_regression(preds, "preds")
    t = _as_regression(targets, "targets")
    if p.shape != t.shape:
        raise MetricInputError(
            f"preds have shape {p.shape} but targets {t.shape}; pass one prediction per target "
            "(same N rows and K outputs)"
        )
    return p, t


def _check_regression_average(average: str) -> None:
    if average not in ("mean", "none"):
        raise MetricInputError(f"unknown average {average!r}; choose one of ['mean', 'none']")


def _rmse_columns(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.sqrt(((p - t) ** 2).mean(axis=0))


def _mae_columns(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.abs(p - t).mean(axis=0)


def _mean(values: np.ndarray) -> float:
    return float(values.mean())


def _regression_metric(
    preds: ArrayOrTensor,
    targets: ArrayOrTensor,
    average: str,
    columns: Callable[[np.ndarray, np.ndarray], np.ndarray],
    mean: Callable[[np.ndarray], float],
) -> Any:
    """``columns(p, t)`` of the checked ``[N, K]`` pair, per output (``average="none"``) or its
    ``mean`` over outputs (``"mean"``)."""
    _check_regression_average(average)
    p, t = _regression_pair(preds, targets)
    per_output = columns(p, t)
    return per_output if average == "none" else mean(per_output)


def _r2_columns(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    ss_res = ((t - p) ** 2).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    out = np.full(t.shape[1], np.nan)
    # Constant targets are told by their values, not by ss_tot > 0: the float mean of equal
    # values (seven times 0.7) can be off by one ulp, leaving ss_tot ~1e-32 and R² ~ -1e28.
    ok = (t.max(axis=0) > t.min(axis=0)) & (ss_tot > 0)
    out[ok] = 1.0 - ss_res[ok] / ss_tot[ok]
    return out


def root_mean_squared_error(
    preds: ArrayOrTensor, targets: ArrayOrTensor, average: RegressionAverage = "mean"
) -> Any:
    """Root mean squared error per output, and its mean over outputs.

    Args:
        preds: Predictions ``[N]`` or ``[N, K]``.
        targets: Targets of the same shape.
        average: ``"mean"`` (mean of the per-output RMSEs, scikit-learn
            ``root_mean_squared_error``) or ``"none"`` (float64 ``[K]``).

    Raises:
        MetricInputError: On mismatched shapes, an empty set or NaN/infinite values (the rows
            are named).
    """
    return _regression_metric(preds, targets, average, _rmse_columns, _mean)


def mean_absolute_error(
    preds: ArrayOrTensor, targets: ArrayOrTensor, average: RegressionAverage = "mean"
) -> Any:
    """Mean absolute error per output, and its mean over outputs.

    Args:
        preds: Predictions ``[N]`` or ``[N, K]``.
        targets: Targets of the same shape.
        average: ``"mean"`` or ``"none"`` (float64 ``[K]``).

    Raises:
        MetricInputError: As :func:`root_mean_squared_error`.
    """
    return _regression_metric(preds, targets, average, _mae_columns, _mean)


def r2_score(
    preds: ArrayOrTensor, targets: ArrayOrTensor, average: RegressionAverage = "mean"
) -> Any:
    """Coefficient of determination per output, and its mean over outputs.

    Args:
        preds: Predictions ``[N]`` or ``[N, K]``.
        targets: Targets of the same shape.
        average: ``"mean"`` (over outputs with a defined R², NaN when none is) or ``"none"``
            (float64 ``[K]``).

    Returns:
        ``1 - SS_res / SS_tot``; NaN for an output with constant targets (undefined).

    Raises:
        MetricInputError: As :func:`root_mean_squared_error`.
    """
    return _regression_metric(preds, targets, average, _r2_columns, _nanmean)


@dataclass(eq=False)
class RegressionReport:
    """Image-level regression metrics, mean over outputs plus a per-output table.

    Attributes:
        n_samples: Number of samples ``N``.
        num_outputs: Number of outputs ``K``.
        rmse: Mean over outputs of the per-output RMSE.
        mae: Mean over outputs of the per-output MAE.
        r2: Mean over outputs of the per-output R² (NaN excluded).
        per_output: Columns ``output_index, output_name, rmse, mae, r2, target_mean,
            target_std``.
    """

    n_samples: int
    num_outputs: int
    rmse: float
    mae: float
    r2: float
    per_output: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict[str, float | int]:
        """Overall metrics as a flat dict with stable snake_case keys (no per-output table)."""
        return {
            "n_samples": self.n_samples,
            "num_outputs": self.num_outputs,
            "rmse": self.rmse,
            "mae": self.mae,
            "r2": self.r2,
        }


def regression_report(
    preds: ArrayOrTensor,
    targets: ArrayOrTensor,
    output_names: Sequence[str] | None = None,
) -> RegressionReport:
    """All regression metrics of one evaluation.

    Args:
        preds: Predictions ``[N]`` or ``[N, K]``.
        targets: Targets of the same shape.
        output_names: ``K`` names for the per-output table; ``"0"``, ``"1"``, ... by default.

    Returns:
        :class:`RegressionReport`.

    Raises:
        MetricInputError: As :func:`root_mean_squared_error`, or a wrong number of names.
    """
    p, t = _regression_pair(preds, targets)
    n, k = t.shape
    if output_names is None:
        names = [str(i) for i in range(k)]
    else:
        names = [str(x) for x in output_names]
        if len(names) != k:
            raise MetricInputError(
                f"output_names has {len(names)} entries but there are K = {k} outputs"
            )
    rmse = _rmse_columns(p, t)
    mae = _mae_columns(p, t)
    r2 = _r2_columns(p, t)
    per_output = pd.DataFrame(
        {
            "output_index": np.arange(k, dtype=np.int64),
            "output_name": names,
            "rmse": rmse,
            "mae": mae,
            "r2": r2,
            "target_mean": t.mean(axis=0),
            "target_std": t.std(axis=0),
        }
    )
    return RegressionReport(
        n_samples=n,
        num_outputs=k,
        rmse=float(rmse.mean()),
        mae=float(mae.mean()),
        r2=_nanmean(r2),
        per_output=per_output,
    )
