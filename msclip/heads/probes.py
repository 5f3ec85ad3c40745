"""Probes on frozen image features: kNN, logistic regression and ridge regression.

Every probe takes features ``[N, D]`` (numpy arrays, memory-mapped arrays or torch tensors, any
float dtype) computed once by the frozen encoder, and labels ``[N]`` (class indices,
single-label), ``[N, C]`` (0/1, multi-label) or targets ``[N]`` / ``[N, K]`` (regression). They
run on the CPU, need no GPU and are deterministic for a given seed.

* **kNN** on cosine similarity (Wu et al., CVPR 2018, "Unsupervised Feature Learning via
  Non-Parametric Instance Discrimination"; the protocol of DINO, Caron et al., ICCV 2021, and
  SMARTIES): each test image takes the ``k`` training images of highest cosine similarity, which
  vote with weight ``exp(sim / T)`` (``k = 20``, ``T = 0.07``), or with weight 1 (``k = 5``,
  unweighted, as torchgeo-bench). The score of class ``c`` is the weighted fraction of votes
  for ``c`` (in ``[0, 1]``); for multi-label data it is the weighted mean of the neighbours'
  0/1 labels of ``c``, so both read as probabilities. The similarity matrix is computed in
  blocks of training rows, keeping only the running top ``k``, so memory does not grow with the
  training set. Tie rule: among equal similarities the lower training index is taken (and ranks
  first), so the neighbours are the first ``k`` of a stable sort by similarity, descending.
* **Logistic regression** (the linear probe of CLIP, Radford et al., ICML 2021, and of
  torchgeo-bench): multinomial (softmax) for single-label data, binary for two classes and one
  binary problem per class (one-vs-rest) for multi-label data. It minimises scikit-learn's
  objective, ``mean_i loss_i + ||W||^2 / (2 C N)`` (intercept not penalised), with the same
  solver, SciPy's L-BFGS-B (Byrd et al., 1995; Zhu et al., 1997), in float64: scikit-learn
  ``LogisticRegression(C=C)`` reaches the same optimum (probabilities agree to 1e-4 and
  better when both converge). SciPy rather than ``torch.optim.LBFGS``: its line search and
  stopping rules are those of scikit-learn, it is deterministic, and float64 on a ``[N, D]``
  matrix is cheap on the CPU. The inverse regularisation ``C`` is swept over
  ``logspace(-7, 2, 20)`` from the smallest (strongest regularisation) up, each fit starting
  from the previous solution (warm start); the ``C`` with the best validation score wins (ties:
  the smallest ``C``), then the probe is refitted on train + validation.
* **Ridge regression** with an ``alpha`` sweep: the closed form, through one eigendecomposition
  of the (centred) Gram matrix shared by every ``alpha``; equal to scikit-learn ``Ridge``.

The heads trained by gradient descent (a batch-norm + linear head trained by AdamW, and the
text-initialised head) live in :mod:`msclip.heads.linear` and share the checks, results and
evaluation of this module.

Features are standardised (zero mean, unit variance per dimension, statistics of the fitting
set, population standard deviation, constant dimensions left unscaled) before the logistic and
ridge probes unless ``standardize=False``: the regularisation then means the same for every
encoder. kNN uses cosine similarity of the raw features.

Every probe returns a :class:`ProbeResult`: metrics with bootstrap 95% intervals
(:mod:`msclip.eval.bootstrap`), the chosen hyper-parameters and the test scores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from msclip.errors import HeadConfigError, HeadInputError
from msclip.eval.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    BatchedMetric,
    ConfidenceInterval,
    accuracy_metric,
    balanced_accuracy_metric,
    bootstrap_cis,
    multilabel_f1_metric,
    regression_metric,
    single_label_f1_metric,
)
from msclip.eval.metrics import mean_average_precision

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "TASKS",
    "LogisticModel",
    "ProbeResult",
    "RidgeModel",
    "SweepResult",
    "check_features",
    "check_labels",
    "check_targets",
    "evaluate_scores",
    "fit_logistic",
    "fit_ridge",
    "knn_neighbors",
    "knn_probe",
    "knn_scores",
    "knn_vote",
    "logistic_probe",
    "logistic_sweep",
    "ridge_probe",
    "ridge_sweep",
]

logger = logging.getLogger(__name__)

Task = Literal["single-label", "multi-label", "regression"]
#: The tasks a probe handles.
TASKS: tuple[str, ...] = ("single-label", "multi-label", "regression")
#: Inverse regularisation strengths swept by the logistic probe (torchgeo-bench's grid).
DEFAULT_CS: np.ndarray = np.logspace(-7, 2, 20)
#: Regularisation strengths swept by the ridge probe (half-decades; standardised features).
DEFAULT_ALPHAS: np.ndarray = np.logspace(-3, 5, 17)
#: Threshold on probabilities for multi-label F1 (strict ``>``).
MULTILABEL_THRESHOLD = 0.5

ArrayLike = Any  # numpy array (memmap included) or torch tensor
SelectionMetric = str | Callable[[np.ndarray, np.ndarray], float]

# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

_CHECK_ROWS = 16384  # rows per block when scanning large (memory-mapped) arrays


def _to_array(x: ArrayLike, name: str) -> np.ndarray:
    """numpy view of a tensor or array (memory maps stay maps; half floats stay half)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise HeadInputError(
            f"{name} must be a numpy array or torch tensor; got {type(x).__name__}: {err}"
        ) from err


def _nonfinite_rows(arr: np.ndarray) -> np.ndarray:
    bad: list[np.ndarray] = []
    for start in range(0, arr.shape[0], _CHECK_ROWS):
        block = np.asarray(arr[start : start + _CHECK_ROWS]).reshape(
            min(_CHECK_ROWS, arr.shape[0] - start), -1
        )
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if rows.size:
            bad.append(rows + start)
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def check_features(
    x: ArrayLike,
    name: str = "features",
    n_rows: int | None = None,
    dim: int | None = None,
    dtype: np.dtype | type | None = np.float64,
) -> np.ndarray:
    """Validate a feature matrix and return it as numpy.

    Args:
        x: Features ``[N, D]``.
        name: What the array is called in error messages.
        n_rows: Required ``N`` (e.g. the length of the labels).
        dim: Required ``D`` (e.g. the training features' width).
        dtype: Returned dtype; ``None`` keeps the input's (a memory map stays a map).

    Raises:
        HeadInputError: Not 2-D, empty, non-numeric, a wrong ``N`` or ``D``, or NaN/infinite
            values (the rows are named).
    """
    arr = _to_array(x, name)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise HeadInputError(f"{name} must be numeric features [N, D]; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise HeadInputError(f"{name} must have shape [N, D]; got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise HeadInputError(
            f"{name} is empty (shape {tuple(arr.shape)}); a probe needs at least one sample "
            "with at least one feature"
        )
    if n_rows is not None and arr.shape[0] != n_rows:
        raise HeadInputError(
            f"{name} has {arr.shape[0]} rows but its labels/targets have {n_rows}; give one "
            "label per feature row"
        )
    if dim is not None and arr.shape[1] != dim:
        raise HeadInputError(
            f"{name} has {arr.shape[1]} features per row but the training features have {dim}; "
            "use features of the same encoder and pooling"
        )
    bad = _nonfinite_rows(arr)
    if bad.size:
        raise HeadInputError(
            f"{name} has NaN or infinite values in {bad.size} row(s), e.g. rows "
            f"{bad[:10].tolist()}; recompute those features or drop the rows"
        )
    if dtype is not None:
        arr = np.asarray(arr, dtype=dtype)
    return arr


def check_labels(
    y: ArrayLike,
    name: str = "labels",
    n_rows: int | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, Task]:
    """Validate classification labels.

    Args:
        y: Class indices ``[N]`` (single-label) or a 0/1 matrix ``[N, C]`` (multi-label).
        name: What the array is called in error messages.
        n_rows: Required ``N``.
        num_classes: Number of classes ``C`` the indices must stay below / the width.

    Returns:
        ``(labels, task)``: int64 ``[N]`` and ``"single-label"``, or float64 0/1 ``[N, C]``
        and ``"multi-label"``.

    Raises:
        HeadInputError: Empty, a wrong length, NaN, non-integer or negative values, an index
            ``>= num_classes`` (the row and value are named), or non-binary multi-label values.
    """
    arr = _to_array(y, name)
    if arr.ndim not in (1, 2):
        raise HeadInputError(
            f"{name} must be class indices [N] or multi-hot labels [N, C]; got shape "
            f"{tuple(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise HeadInputError(f"{name} is empty; a probe needs at least one labelled sample")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise HeadInputError(
            f"{name} has {arr.shape[0]} rows but the features have {n_rows}; give one label "
            "per feature row"
        )
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise HeadInputError(f"{name} must be numeric class labels; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        nonfinite = ~np.isfinite(arr) if arr.ndim == 1 else ~np.isfinite(arr).all(axis=1)
        if nonfinite.any():
            rows = np.flatnonzero(nonfinite)
            raise HeadInputError(
                f"{name} has missing (NaN) labels at rows {rows[:10].tolist()}; drop or label "
                "those samples"
            )
    if arr.ndim == 2:
        if num_classes is not None and arr.shape[1] != num_classes:
            raise HeadInputError(
                f"{name} has {arr.shape[1]} label columns but num_classes = {num_classes}"
            )
        ok = (arr == 0) | (arr == 1)
        if not ok.all():
            r, c = np.argwhere(~ok)[0]
            raise HeadInputError(
                f"multi-label {name} must be 0/1; row {r}, class {c} holds {arr[r, c].item()!r}"
            )
        return arr.astype(np.float64), "multi-label"
    if np.issubdtype(arr.dtype, np.floating):
        frac = arr != np.round(arr)
        if frac.any():
            r = int(np.flatnonzero(frac)[0])
            raise HeadInputError(
                f"{name} must hold integer class indices; row {r} holds {arr[r].item()!r} "
                "(regression targets belong to the ridge probe or task='regression')"
            )
    labels = arr.astype(np.int64)
    if labels.min() < 0:
        r = int(np.argmin(labels))
        raise HeadInputError(
            f"{name} holds the negative class index {labels[r]} at row {r}; class indices start "
            "at 0 (drop unlabelled samples instead of marking them -1)"
        )
    if num_classes is not None and labels.max() >= num_classes:
        r = int(np.argmax(labels))
        raise HeadInputError(
            f"{name} holds class index {labels[r]} at row {r} but there are only "
            f"num_classes = {num_classes} classes (indices 0..{num_classes - 1})"
        )
    return labels, "single-label"


def check_targets(y: ArrayLike, name: str = "targets", n_rows: int | None = None) -> np.ndarray:
    """Validate regression targets; returns float64 ``[N, K]`` (a 1-D input is one output).

    Raises:
        HeadInputError: Empty, a wrong length, or NaN/infinite values (rows named).
    """
    arr = _to_array(y, name)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise HeadInputError(f"{name} must be numeric regression targets; got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise HeadInputError(
            f"{name} must be non-empty targets [N] or [N, K]; got shape "
            f"{tuple(_to_array(y, name).shape)}"
        )
    if n_rows is not None and arr.shape[0] != n_rows:
        raise HeadInputError(
            f"{name} has {arr.shape[0]} rows but the features have {n_rows}; give one target "
            "per feature row"
        )
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise HeadInputError(
            f"{name} has NaN or infinite values at rows {bad[:10].tolist()}"
            f"{' ...' if bad.size > 10 else ''}; drop those samples or fill their targets"
        )
    return arr


def _require_two_classes(labels: np.ndarray, task: str, name: str) -> None:
    if task == "single-label":
        present = np.unique(labels)
        if present.size < 2:
            raise HeadInputError(
                f"{name} hold a single class ({int(present[0])}); a classifier needs samples of "
                "at least 2 classes"
            )


def _num_classes(task: str, labels: Sequence[np.ndarray], num_classes: int | None) -> int:
    if task == "multi-label":
        return labels[0].shape[1]
    seen = max(int(lab.max()) for lab in labels) + 1
    if num_classes is None:
        return seen
    return int(num_classes)


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise HeadConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v > 0 and math.isfinite(v)):
        raise HeadConfigError(f"{name} must be a positive finite number; got {value!r}")
    return v


# --------------------------------------------------------------------------------------------
# Results and evaluation
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ProbeResult:
    """What one probe run produced, ready to be written as a record.

    Attributes:
        probe: Probe name (``knn``, ``logistic``, ``ridge``, ``linear``, ``text-linear`` ...).
        task: ``single-label``, ``multi-label`` or ``regression``.
        metrics: Metric name -> value on the test set.
        ci: Metric name -> bootstrap interval (empty when no resampling was asked for).
        hyperparameters: Every setting that produced the result, chosen ones included.
        scores: Test scores ``[N, C]`` (class probabilities or vote fractions) or regression
            predictions ``[N, K]``.
        n_train: Samples the final model was fitted on.
        n_test: Samples evaluated.
        extra: Anything else worth keeping (a sweep table, a training history).
    """

    probe: str
    task: str
    metrics: dict[str, float]
    ci: dict[str, ConfidenceInterval]
    hyperparameters: dict[str, Any]
    scores: np.ndarray = field(repr=False)
    n_train: int = 0
    n_test: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def predictions(self) -> np.ndarray:
        """Top-1 classes ``[N]`` (single-label; ties: lowest index), 0/1 ``[N, C]`` with the
        0.5 threshold (multi-label), or the regression predictions."""
        if self.task == "single-label":
            return np.argmax(self.scores, axis=1)
        if self.task == "multi-label":
            return (self.scores > MULTILABEL_THRESHOLD).astype(np.int64)
        return self.scores

    def to_record(self) -> dict[str, Any]:
        """A flat dict: probe, task, sample counts, ``hp_<name>`` hyper-parameters (sequences
        as strings), each metric with ``<metric>_ci_low`` / ``<metric>_ci_high``, and the
        interval settings."""
        rec: dict[str, Any] = {
            "probe": self.probe,
            "task": self.task,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }
        for k, v in self.hyperparameters.items():
            if isinstance(v, (list, tuple, np.ndarray)):
                v = " ".join(f"{float(x):.6g}" if _is_number(x) else str(x) for x in v)
            rec[f"hp_{k}"] = v
        for name, value in self.metrics.items():
            rec[name] = value
            if name in self.ci:
                rec[f"{name}_ci_low"] = self.ci[name].low
                rec[f"{name}_ci_high"] = self.ci[name].high
        if self.ci:
            any_ci = next(iter(self.ci.values()))
            rec["ci_confidence"] = any_ci.confidence
            rec["ci_resamples"] = any_ci.n_resamples
            rec["ci_seed"] = any_ci.seed
        return rec


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _map_metric() -> BatchedMetric:
    def fn(targets: np.ndarray, scores: np.ndarray) -> float:
        return mean_average_precision(scores, targets).mean

    return BatchedMetric("map", fn)


def _task_metrics(task: str, num_classes: int) -> dict[str, BatchedMetric]:
    if task == "single-label":
        m = {"top1_accuracy": accuracy_metric(1)}
        if num_classes >= 5:
            m["top5_accuracy"] = accuracy_metric(5)
        m["balanced_accuracy"] = balanced_accuracy_metric(num_classes)
        m["macro_f1"] = single_label_f1_metric("macro", num_classes)
        m["micro_f1"] = single_label_f1_metric("micro", num_classes)
        return m
    if task == "multi-label":
        return {
            "map": _map_metric(),
            "micro_f1": multilabel_f1_metric("micro", MULTILABEL_THRESHOLD),
            "macro_f1": multilabel_f1_metric("macro", MULTILABEL_THRESHOLD),
        }
    return {name: regression_metric(name) for name in ("rmse", "mae", "r2")}


def evaluate_scores(
    task: str,
    scores: ArrayLike,
    targets: ArrayLike,
    num_classes: int | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, ConfidenceInterval]]:
    """The metrics a probe reports, each with its bootstrap interval.

    * single-label: ``top1_accuracy``, ``top5_accuracy`` (``C >= 5``), ``balanced_accuracy``,
      ``macro_f1``, ``micro_f1`` (of the top-1 predictions);
    * multi-label: ``map`` (threshold-free), ``micro_f1`` and ``macro_f1`` of ``scores > 0.5``;
    * regression: ``rmse``, ``mae``, ``r2`` (means over outputs).

    Definitions: :mod:`msclip.eval.metrics` (``docs/metrics.md``).

    Args:
        task: One of :data:`TASKS`.
        scores: Class scores ``[N, C]`` (probabilities for multi-label) or predictions.
        targets: Class indices, multi-hot labels or regression targets.
        num_classes: ``C`` (the score width by default).
        n_resamples: Bootstrap resamples; 0 skips the intervals.
        confidence: Interval coverage.
        seed: Bootstrap seed.

    Returns:
        ``(metrics, intervals)``.
    """
    if task not in TASKS:
        raise HeadConfigError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    s = np.asarray(_to_array(scores, "scores"), dtype=np.float64)
    if task == "regression":
        t = check_targets(targets, "targets", n_rows=s.shape[0])
        s = s.reshape(t.shape)
    else:
        c = num_classes if num_classes is not None else s.shape[1]
        t, _ = check_labels(targets, "targets", n_rows=s.shape[0], num_classes=c)
    metrics = _task_metrics(task, s.shape[1] if s.ndim == 2 else 1)
    values = {name: float(m(t, s)) for name, m in metrics.items()}
    if n_resamples == 0:
        return values, {}
    cis = bootstrap_cis(metrics, t, s, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return values, cis


def _result(
    probe: str,
    task: str,
    scores: np.ndarray,
    targets: np.ndarray,
    hyperparameters: dict[str, Any],
    n_train: int,
    num_classes: int | None,
    n_resamples: int,
    confidence: float,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> ProbeResult:
    metrics, ci = evaluate_scores(task, scores, targets, num_classes, n_resamples, confidence, seed)
    return ProbeResult(
        probe=probe,
        task=task,
        metrics=metrics,
        ci=ci,
        hyperparameters=hyperparameters,
        scores=scores,
        n_train=n_train,
        n_test=int(scores.shape[0]),
        extra=extra or {},
    )


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
        results.append(
            _result(
                name, task, scores, t_labels, hp, train.shape[0], c, n_resamples, confidence, seed
            )
        )
    return results


# --------------------------------------------------------------------------------------------
# Standardisation and sweeps
# --------------------------------------------------------------------------------------------


def _standardizer(x: np.ndarray, enabled: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not enabled:
        return None, None
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, std


def _apply(x: np.ndarray, mean: np.ndarray | None, scale: np.ndarray | None) -> np.ndarray:
    if mean is None:
        return x
    return (x - mean) / scale


@dataclass(eq=False)
class SweepResult:
    """A regularisation sweep scored on a validation split.

    Attributes:
        parameter: ``"C"`` or ``"alpha"``.
        values: The swept values, in the order fitted.
        scores: Validation score of each (higher is better).
        best_index: Index of the chosen value (ties: the strongest regularisation).
        metric: Name of the validation score.
        n_iter: Solver iterations of each fit (logistic only).
    """

    parameter: str
    values: np.ndarray
    scores: np.ndarray
    best_index: int
    metric: str
    n_iter: list[int] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The chosen value."""
        return float(self.values[self.best_index])

    def to_table(self) -> list[dict[str, float]]:
        """One dict per swept value: the value and its validation score."""
        return [
            {self.parameter: float(v), f"val_{self.metric}": float(s)}
            for v, s in zip(self.values, self.scores, strict=True)
        ]


def _selection(
    metric: SelectionMetric | None, task: str, num_classes: int
) -> tuple[str, Callable[[np.ndarray, np.ndarray], float]]:
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    if metric is None:
        metric = "top1_accuracy" if task == "single-label" else "map"
    table = _task_metrics(task, num_classes)
    table.pop("top5_accuracy", None)
    if metric not in table:
        raise HeadConfigError(
            f"selection metric {metric!r} is not available for {task} probes; choose one "
            f"of {sorted(table)} or pass a function (targets, scores) -> float"
        )
    return metric, table[metric]


def _best_index(scores: np.ndarray) -> int:
    finite = np.where(np.isnan(scores), -np.inf, scores)
    return int(np.flatnonzero(finite == finite.max())[0])


# --------------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LogisticModel:
    """A fitted logistic-regression probe.

    Attributes:
        coef: ``[K, D]`` weights on the (standardised) features: one row per present class
            (multinomial), a single row (binary: the second class's log-odds) or one row per
            fitted label (one-vs-rest).
        intercept: ``[K]``.
        C: Inverse regularisation strength.
        task: ``single-label`` or ``multi-label``.
        num_classes: ``C`` of the probabilities returned.
        classes: Class (or label column) index of each row of ``coef``; for binary problems
            the two classes, negative first.
        mean: Feature means subtracted before the linear map (None: not standardised).
        scale: Feature standard deviations divided by.
        constant: Multi-label only: probability of each label column that was constant in
            training (0 or 1), NaN for fitted columns.
        n_iter: L-BFGS iterations.
        converged: Whether L-BFGS met its tolerance.
    """

    coef: np.ndarray
    intercept: np.ndarray
    C: float
    task: str
    num_classes: int
    classes: np.ndarray
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    constant: np.ndarray | None = None
    n_iter: int = 0
    converged: bool = True

    def decision_function(self, features: ArrayLike) -> np.ndarray:
        """Logits ``[N, K]`` of the fitted rows (see :attr:`coef`)."""
        x = check_features(features, "features", dim=self.coef.shape[1])
        return _apply(x, self.mean, self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, features: ArrayLike) -> np.ndarray:
        """Probabilities ``[N, num_classes]``: softmax over the classes seen in training (0 for
        classes absent from it), or per-label sigmoids (multi-label)."""
        z = self.decision_function(features)
        out = np.zeros((z.shape[0], self.num_classes))
        if self.task == "multi-label":
            out[:, self.classes] = _sigmoid(z)
            if self.constant is not None:
                fixed = ~np.isnan(self.constant)
                out[:, fixed] = self.constant[fixed]
            return out
        if len(self.classes) == 2 and self.coef.shape[0] == 1:
            p = _sigmoid(z[:, 0])
            out[:, self.classes[0]] = 1.0 - p
            out[:, self.classes[1]] = p
            return out
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out[:, self.classes] = e / e.sum(axis=1, keepdims=True)
        return out

    def predict(self, features: ArrayLike) -> np.ndarray:
        """Top-1 classes ``[N]`` or 0/1 labels ``[N, C]`` (probability > 0.5)."""
        p = self.predict_proba(features)
        if self.task == "multi-label":
            return (p > MULTILABEL_THRESHOLD).astype(np.int64)
        return np.argmax(p, axis=1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _multinomial_objective(
    x: np.ndarray, y: np.ndarray, l2: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    n, d = x.shape
    k = y.shape[1]

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        coef = w[: k * d].reshape(k, d)
        z = x @ coef.T + w[k * d :]
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        loss = float(np.mean(lse - (z * y).sum(axis=1))) + 0.5 * l2 * float(np.sum(coef**2))
        g = (np.exp(z - lse[:, None]) - y) / n
        # (x.T @ g).T rather than g.T @ x: BLAS reads the C-ordered x once, several times faster.
        grad = np.concatenate([((x.T @ g).T + l2 * coef).ravel(), g.sum(axis=0)])
        return loss, grad

    return f


def _binary_objective(
    x: np.ndarray, y: np.ndarray, l2: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Sum over the ``K`` columns of ``y`` of independent binary logistic objectives."""
    n, d = x.shape
    k = y.shape[1]

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        coef = w[: k * d].reshape(k, d)
        z = x @ coef.T + w[k * d :]
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z) / n) + 0.5 * l2 * float(np.sum(coef**2))
        g = (_sigmoid(z) - y) / n
        grad = np.concatenate([((x.T @ g).T + l2 * coef).ravel(), g.sum(axis=0)])
        return loss, grad

    return f


def _lbfgs(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    w0: np.ndarray,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int, bool]:
    from scipy import optimize

    # The options of scikit-learn's lbfgs solver, so both stop at the same place.
    res = optimize.minimize(
        objective,
        w0,
        method="L-BFGS-B",
        jac=True,
        options={
            "maxiter": max_iter,
            "maxls": 50,
            "gtol": tol,
            "ftol": 64 * np.finfo(float).eps,
        },
    )
    return res.x, int(res.nit), bool(res.success)


@dataclass
class _LogisticProblem:
    """Labels encoded for the solver."""

    task: str
    num_classes: int
    classes: np.ndarray  # row index -> class / label column
    y: np.ndarray  # [N, K] float targets of the solver
    binary: bool  # sigmoid rows (binary or one-vs-rest)
    constant: np.ndarray | None


def _logistic_problem(labels: np.ndarray, task: str, num_classes: int) -> _LogisticProblem:
    if task == "multi-label":
        col_mean = labels.mean(axis=0)
        varying = (col_mean > 0) & (col_mean < 1)
        if not varying.any():
            raise HeadInputError(
                "every label column of the training labels is constant (all 0 or all 1); a "
                "classifier needs positive and negative samples of at least one label"
            )
        constant = np.where(varying, np.nan, col_mean)
        if not varying.all():
            logger.warning(
                "label columns %s are constant in the training labels; their probability is "
                "fixed to that constant",
                np.flatnonzero(~varying)[:10].tolist(),
            )
        classes = np.flatnonzero(varying)
        return _LogisticProblem(task, num_classes, classes, labels[:, classes], True, constant)
    present = np.unique(labels)
    if present.size < num_classes:
        logger.warning(
            "classes %s have no training sample; their probability is 0",
            sorted(set(range(num_classes)) - set(present.tolist()))[:10],
        )
    if present.size == 2:
        y = (labels == present[1]).astype(np.float64)[:, None]
        return _LogisticProblem(task, num_classes, present, y, True, None)
    y = (labels[:, None] == present[None, :]).astype(np.float64)
    return _LogisticProblem(task, num_classes, present, y, False, None)


def _fit_problem(
    x: np.ndarray,
    prob: _LogisticProblem,
    C: float,
    tol: float,
    max_iter: int,
    w0: np.ndarray | None,
) -> tuple[np.ndarray, int, bool]:
    n, d = x.shape
    k = prob.y.shape[1]
    l2 = 1.0 / (C * n)
    objective = (_binary_objective if prob.binary else _multinomial_objective)(x, prob.y, l2)
    if w0 is None or w0.shape != ((d + 1) * k,):
        w0 = np.zeros((d + 1) * k)
    return _lbfgs(objective, w0, tol, max_iter)


def _model_from(
    w: np.ndarray,
    prob: _LogisticProblem,
    d: int,
    C: float,
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    n_iter: int,
    converged: bool,
) -> LogisticModel:
    k = prob.y.shape[1]
    return LogisticModel(
        coef=w[: k * d].reshape(k, d).copy(),
        intercept=w[k * d :].copy(),
        C=float(C),
        task=prob.task,
        num_classes=prob.num_classes,
        classes=prob.classes,
        mean=mean,
        scale=scale,
        constant=prob.constant,
        n_iter=n_iter,
        converged=converged,
    )


def _flat(model: LogisticModel) -> np.ndarray:
    return np.concatenate([model.coef.ravel(), model.intercept])


def _check_solver(C: Any, tol: Any, max_iter: Any) -> tuple[float, float, int]:
    return (
        _check_positive(C, "C"),
        _check_positive(tol, "tol"),
        _check_positive_int(max_iter, "max_iter"),
    )


def fit_logistic(
    features: ArrayLike,
    labels: ArrayLike,
    C: float = 1.0,
    num_classes: int | None = None,
    standardize: bool = True,
    tol: float = 1e-4,
    max_iter: int = 1000,
    init: LogisticModel | None = None,
) -> LogisticModel:
    """Fit an L2-regularised logistic regression by L-BFGS (scikit-learn's objective).

    Args:
        features: ``[N, D]``.
        labels: Class indices ``[N]`` (multinomial; binary for two classes) or 0/1 ``[N, C]``
            (one-vs-rest).
        C: Inverse regularisation strength (scikit-learn's ``C``).
        num_classes: ``C`` of the probabilities (``max + 1`` by default).
        standardize: Standardise the features with their mean and standard deviation first.
        tol: L-BFGS gradient tolerance (scikit-learn's ``tol``).
        max_iter: L-BFGS iterations at most.
        init: A fitted model of the same shape to start from (warm start).

    Returns:
        :class:`LogisticModel`.

    Raises:
        HeadInputError: Bad features or labels, or a single class.
        HeadConfigError: Non-positive ``C``, ``tol`` or ``max_iter``.
    """
    C, tol, max_iter = _check_solver(C, tol, max_iter)
    x = check_features(features, "features")
    y, task = check_labels(labels, "labels", x.shape[0], num_classes)
    _require_two_classes(y, task, "labels")
    prob = _logistic_problem(y, task, _num_classes(task, [y], num_classes))
    mean, scale = _standardizer(x, standardize)
    xs = _apply(x, mean, scale)
    w, nit, ok = _fit_problem(xs, prob, C, tol, max_iter, None if init is None else _flat(init))
    if not ok:
        logger.warning("L-BFGS did not converge in %d iterations at C = %g", max_iter, C)
    return _model_from(w, prob, x.shape[1], C, mean, scale, nit, ok)


def logistic_sweep(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    val_features: ArrayLike,
    val_labels: ArrayLike,
    Cs: Sequence[float] | np.ndarray = DEFAULT_CS,
    num_classes: int | None = None,
    standardize: bool = True,
    selection_metric: SelectionMetric | None = None,
    refit: bool = True,
    tol: float = 1e-4,
    max_iter: int = 1000,
) -> tuple[LogisticModel, SweepResult]:
    """Sweep ``C`` on a validation split, then refit on train + validation.

    The values are fitted in ascending order, each starting from the previous solution (the
    optimum moves continuously with ``C``, so warm starts save most iterations).

    Args:
        train_features: ``[N, D]``.
        train_labels: Class indices ``[N]`` or 0/1 labels ``[N, C]``.
        val_features: ``[M, D]``.
        val_labels: Labels of the validation rows.
        Cs: Values of ``C`` (default ``logspace(-7, 2, 20)``).
        num_classes: ``C`` of the probabilities (``max + 1`` over train and validation).
        standardize: Standardise features (statistics of the rows being fitted).
        selection_metric: Validation score, higher is better: ``top1_accuracy`` (default for
            single-label), ``balanced_accuracy``, ``macro_f1``, ``micro_f1``, ``map`` (default
            for multi-label), or a function ``(targets, probabilities) -> float``.
        refit: Refit on train + validation at the chosen ``C`` (else return the train fit).
        tol: L-BFGS tolerance.
        max_iter: L-BFGS iterations per fit.

    Returns:
        ``(model, sweep)``.
    """
    _, tol, max_iter = _check_solver(1.0, tol, max_iter)
    grid = np.sort(np.asarray([_check_positive(c, "C") for c in np.atleast_1d(Cs)]))
    if grid.size == 0:
        raise HeadConfigError("Cs is empty; give at least one value of C")
    x = check_features(train_features, "train_features")
    y, task = check_labels(train_labels, "train_labels", x.shape[0], num_classes)
    xv = check_features(val_features, "val_features", dim=x.shape[1])
    yv, v_task = check_labels(val_labels, "val_labels", xv.shape[0], num_classes)
    if v_task != task:
        raise HeadInputError(f"train_labels are {task} but val_labels are {v_task}")
    _require_two_classes(y, task, "train_labels")
    c = _num_classes(task, [y, yv], num_classes)
    metric_name, metric = _selection(selection_metric, task, c)
    prob = _logistic_problem(y, task, c)
    mean, scale = _standardizer(x, standardize)
    xs, xvs = _apply(x, mean, scale), _apply(xv, mean, scale)
    scores = np.empty(grid.size)
    iters: list[int] = []
    w = None
    models = []
    for i, C in enumerate(grid):
        w, nit, ok = _fit_problem(xs, prob, C, tol, max_iter, w)
        model = _model_from(w, prob, x.shape[1], C, None, None, nit, ok)
        scores[i] = metric(yv, model.predict_proba(xvs))
        iters.append(nit)
        models.append(model)
        logger.debug("C = %.3g: val %s = %.4f (%d iterations)", C, metric_name, scores[i], nit)
    best = _best_index(scores)
    sweep = SweepResult("C", grid, scores, best, metric_name, iters)
    if not refit:
        chosen = models[best]
        chosen.mean, chosen.scale = mean, scale
        return chosen, sweep
    x_all = np.concatenate([x, xv])
    y_all = np.concatenate([y, yv])
    prob_all = _logistic_problem(y_all, task, c)
    mean_all, scale_all = _standardizer(x_all, standardize)
    w0 = _flat(models[best]) if prob_all.classes.shape == prob.classes.shape else None
    w, nit, ok = _fit_problem(
        _apply(x_all, mean_all, scale_all), prob_all, sweep.best, tol, max_iter, w0
    )
    return _model_from(w, prob_all, x.shape[1], sweep.best, mean_all, scale_all, nit, ok), sweep


def logistic_probe(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    val_features: ArrayLike | None = None,
    val_labels: ArrayLike | None = None,
    Cs: Sequence[float] | np.ndarray = DEFAULT_CS,
    num_classes: int | None = None,
    standardize: bool = True,
    selection_metric: SelectionMetric | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ProbeResult:
    """Logistic-regression probe: ``C`` swept on the validation split, refit on train +
    validation, evaluated on the test split.

    With a single value in ``Cs`` there is nothing to choose: the probe is fitted on train +
    validation (when given) at that ``C``. Several values need a validation split.

    Returns:
        :class:`ProbeResult` (``probe="logistic"``; the sweep table in ``extra["sweep"]``).
    """
    grid = np.atleast_1d(np.asarray(Cs, dtype=np.float64))
    if (val_features is None or val_labels is None) and grid.size != 1:
        raise HeadConfigError(
            f"sweeping {grid.size} values of C needs a validation split (val_features, "
            "val_labels); pass one, or a single C"
        )
    test = check_features(test_features, "test_features")
    t_labels, _ = check_labels(test_labels, "test_labels", test.shape[0], num_classes)
    if grid.size == 1:
        x = check_features(train_features, "train_features")
        y, _ = check_labels(train_labels, "train_labels", x.shape[0], num_classes)
        if val_features is not None and val_labels is not None:
            xv = check_features(val_features, "val_features", dim=x.shape[1])
            yv, _ = check_labels(val_labels, "val_labels", xv.shape[0], num_classes)
            x, y = np.concatenate([x, xv]), np.concatenate([y, yv])
        if num_classes is None and y.ndim == 1:
            num_classes = int(max(y.max(), t_labels.max())) + 1
        model = fit_logistic(x, y, float(grid[0]), num_classes, standardize, tol, max_iter)
        sweep = None
        n_train = x.shape[0]
    else:
        if num_classes is None and t_labels.ndim == 1:
            tr = check_labels(train_labels, "train_labels")[0]
            va = check_labels(val_labels, "val_labels")[0]
            num_classes = int(max(tr.max(), va.max(), t_labels.max())) + 1
        model, sweep = logistic_sweep(
            train_features,
            train_labels,
            val_features,
            val_labels,
            grid,
            num_classes,
            standardize,
            selection_metric,
            True,
            tol,
            max_iter,
        )
        n_train = len(_to_array(train_labels, "train_labels")) + len(
            _to_array(val_labels, "val_labels")
        )
    scores = model.predict_proba(test)
    hp: dict[str, Any] = {
        "C": model.C,
        "standardize": standardize,
        "solver": "lbfgs",
        "tol": tol,
        "max_iter": max_iter,
        "n_iter": model.n_iter,
        "converged": model.converged,
    }
    extra: dict[str, Any] = {"model": model}
    if sweep is not None:
        hp["C_grid"] = sweep.values
        hp["selection_metric"] = sweep.metric
        extra["sweep"] = sweep.to_table()
    return _result(
        "logistic",
        model.task,
        scores,
        t_labels,
        hp,
        n_train,
        model.num_classes,
        n_resamples,
        confidence,
        seed,
        extra,
    )


# --------------------------------------------------------------------------------------------
# Ridge regression
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class RidgeModel:
    """A fitted ridge regression.

    Attributes:
        coef: ``[K, D]`` weights on the (standardised) features.
        intercept: ``[K]``.
        alpha: Regularisation strength.
        mean: Feature means subtracted first (None: not standardised).
        scale: Feature standard deviations divided by.
        single_output: Targets were 1-D: :meth:`predict` returns ``[N]``.
    """

    coef: np.ndarray
    intercept: np.ndarray
    alpha: float
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    single_output: bool = False

    def predict(self, features: ArrayLike) -> np.ndarray:
        """Predictions ``[N, K]`` (``[N]`` for a model fitted on 1-D targets)."""
        x = check_features(features, "features", dim=self.coef.shape[1])
        out = _apply(x, self.mean, self.scale) @ self.coef.T + self.intercept
        return out[:, 0] if self.single_output else out


class _RidgeSolver:
    """Eigendecomposition of the centred Gram (primal, ``N >= D``) or kernel (dual) matrix,
    shared by every ``alpha``: ``w(alpha) = V diag(1 / (e + alpha)) V^T X^T y``."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x_mean = x.mean(axis=0)
        self.y_mean = y.mean(axis=0)
        xc = x - self.x_mean
        yc = y - self.y_mean
        self.primal = x.shape[0] >= x.shape[1]
        if self.primal:
            self.evals, self.evecs = np.linalg.eigh(xc.T @ xc)
            self.proj = self.evecs.T @ (xc.T @ yc)  # [D, K]
        else:
            self.evals, self.evecs = np.linalg.eigh(xc @ xc.T)
            self.proj = self.evecs.T @ yc  # [N, K]
            self.xc = xc
        self.evals = np.clip(self.evals, 0.0, None)

    def solve(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        z = self.evecs @ (self.proj / (self.evals + alpha)[:, None])
        coef = (z if self.primal else self.xc.T @ z).T  # [K, D]
        return coef, self.y_mean - coef @ self.x_mean


def fit_ridge(
    features: ArrayLike,
    targets: ArrayLike,
    alpha: float = 1.0,
    standardize: bool = True,
) -> RidgeModel:
    """Fit ``min ||y - X w - b||^2 + alpha ||w||^2`` in closed form (scikit-learn ``Ridge``).

    Args:
        features: ``[N, D]``.
        targets: ``[N]`` or ``[N, K]``.
        alpha: Regularisation strength (> 0).
        standardize: Standardise the features first.

    Raises:
        HeadInputError: Bad features or targets (NaN rows are named).
        HeadConfigError: ``alpha <= 0``.
    """
    alpha = _check_positive(alpha, "alpha")
    x = check_features(features, "features")
    single = _to_array(targets, "targets").ndim == 1
    y = check_targets(targets, "targets", x.shape[0])
    mean, scale = _standardizer(x, standardize)
    coef, intercept = _RidgeSolver(_apply(x, mean, scale), y).solve(alpha)
    return RidgeModel(coef, intercept, alpha, mean, scale, single)


def _neg_relative_mse(scale: np.ndarray) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(targets: np.ndarray, preds: np.ndarray) -> float:
        return -float(np.mean(((preds - targets) ** 2).mean(axis=0) / scale))

    score.__name__ = "neg_relative_mse"
    return score


def ridge_sweep(
    train_features: ArrayLike,
    train_targets: ArrayLike,
    val_features: ArrayLike,
    val_targets: ArrayLike,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    standardize: bool = True,
    selection_metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
    refit: bool = True,
) -> tuple[RidgeModel, SweepResult]:
    """Sweep ``alpha`` on a validation split, then refit on train + validation.

    Args:
        train_features: ``[N, D]``.
        train_targets: ``[N]`` or ``[N, K]``.
        val_features: ``[M, D]``.
        val_targets: Targets of the validation rows.
        alphas: Values of ``alpha`` (default ``logspace(-3, 5, 17)``).
        standardize: Standardise the features (statistics of the rows being fitted).
        selection_metric: ``(targets [M, K], preds [M, K]) -> float``, higher is better. By
            default minus the validation MSE of each output divided by the variance of that
            output's training targets, averaged over outputs (scale-free, so outputs of
            different units weigh alike).
        refit: Refit on train + validation at the chosen ``alpha``.

    Returns:
        ``(model, sweep)``; ties go to the largest ``alpha``.
    """
    grid = np.sort(np.asarray([_check_positive(a, "alpha") for a in np.atleast_1d(alphas)]))
    if grid.size == 0:
        raise HeadConfigError("alphas is empty; give at least one value of alpha")
    x = check_features(train_features, "train_features")
    single = _to_array(train_targets, "train_targets").ndim == 1
    y = check_targets(train_targets, "train_targets", x.shape[0])
    xv = check_features(val_features, "val_features", dim=x.shape[1])
    yv = check_targets(val_targets, "val_targets", xv.shape[0])
    if yv.shape[1] != y.shape[1]:
        raise HeadInputError(
            f"train_targets have {y.shape[1]} outputs but val_targets have {yv.shape[1]}"
        )
    var = y.var(axis=0)
    var[var <= 0] = 1.0
    metric = selection_metric or _neg_relative_mse(var)
    name = getattr(metric, "__name__", "custom")
    mean, scale = _standardizer(x, standardize)
    solver = _RidgeSolver(_apply(x, mean, scale), y)
    xvs = _apply(xv, mean, scale)
    scores = np.empty(grid.size)
    for i, a in enumerate(grid):
        coef, intercept = solver.solve(a)
        scores[i] = metric(yv, xvs @ coef.T + intercept)
    # Ties go to the strongest regularisation: search the reversed grid.
    best = grid.size - 1 - _best_index(scores[::-1])
    sweep = SweepResult("alpha", grid, scores, best, name)
    if not refit:
        coef, intercept = solver.solve(sweep.best)
        return RidgeModel(coef, intercept, sweep.best, mean, scale, single), sweep
    return fit_ridge(
        np.concatenate([x, xv]), np.concatenate([y, yv]), sweep.best, standardize
    ), sweep


def ridge_probe(
    train_features: ArrayLike,
    train_targets: ArrayLike,
    test_features: ArrayLike,
    test_targets: ArrayLike,
    val_features: ArrayLike | None = None,
    val_targets: ArrayLike | None = None,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    standardize: bool = True,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ProbeResult:
    """Ridge probe for image-level regression: ``alpha`` swept on the validation split, refit on
    train + validation, evaluated on the test split (RMSE, MAE, R² with intervals).

    With a single ``alpha`` no validation split is needed (it is merged into training when
    given).
    """
    grid = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    test = check_features(test_features, "test_features")
    t = check_targets(test_targets, "test_targets", test.shape[0])
    if val_features is None or val_targets is None:
        if grid.size != 1:
            raise HeadConfigError(
                f"sweeping {grid.size} values of alpha needs a validation split (val_features, "
                "val_targets); pass one, or a single alpha"
            )
        model = fit_ridge(train_features, train_targets, float(grid[0]), standardize)
        sweep = None
        n_train = _to_array(train_features, "train_features").shape[0]
    elif grid.size == 1:
        x = np.concatenate([check_features(train_features), check_features(val_features)])
        y = np.concatenate(
            [check_targets(train_targets, "train_targets"), check_targets(val_targets)]
        )
        model = fit_ridge(x, y, float(grid[0]), standardize)
        sweep, n_train = None, x.shape[0]
    else:
        model, sweep = ridge_sweep(
            train_features, train_targets, val_features, val_targets, grid, standardize
        )
        n_train = _to_array(train_features, "f").shape[0] + _to_array(val_features, "f").shape[0]
    preds = model.predict(test).reshape(t.shape)
    hp: dict[str, Any] = {"alpha": model.alpha, "standardize": standardize, "solver": "eigh"}
    extra: dict[str, Any] = {"model": model}
    if sweep is not None:
        hp["alpha_grid"] = sweep.values
        hp["selection_metric"] = sweep.metric
        extra["sweep"] = sweep.to_table()
    return _result(
        "ridge", "regression", preds, t, hp, n_train, None, n_resamples, confidence, seed, extra
    )
