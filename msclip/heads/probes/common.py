"""What every probe shares: input checks, the task list and hyper-parameter grids, results
with bootstrap intervals (:class:`ProbeResult`, :func:`evaluate_scores`), standardisation and
the validation sweep (:class:`SweepResult`). See :mod:`msclip.heads.probes`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

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
        first = arr.reshape(-1)[0] if arr.size else None
        raise HeadInputError(
            f"{name} must be class indices 0..C-1 (or 0/1 columns); got dtype {arr.dtype}, "
            f"e.g. {first!r}: map class names to indices first, e.g. "
            "names, indices = np.unique(labels, return_inverse=True)"
        )
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
            # one column of class indices (scikit-learn's y.reshape(-1, 1)): flatten it
            column = (
                f"; class indices are a flat array [N] ({name}.ravel()), not one column"
                if arr.shape[1] == 1
                else ""
            )
            raise HeadInputError(
                f"multi-label {name} must be 0/1; row {r}, class {c} holds {arr[r, c].item()!r}"
                f"{column}"
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
        # C is taken as the largest code + 1: codes that are not 0..C-1 (1-based, or 10, 20 ...)
        # would add classes without a sample, which macro scores average in as zeros
        present = np.zeros(seen, dtype=bool)
        for lab in labels:
            present[lab] = True
        if not present.all():
            missing = np.flatnonzero(~present).tolist()
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise HeadInputError(
                f"the labels use class codes up to {seen - 1}, but these codes of 0..{seen - 1} "
                f"never occur: {shown}; class codes must be 0..C-1 (remap them, "
                "e.g. np.unique(labels, return_inverse=True)), or pass num_classes=C when those "
                "classes exist without samples here"
            )
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
        best_index: Index of the chosen value (ties: see :func:`_best_index`).
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


def _best_index(
    scores: np.ndarray, finer: np.ndarray | None = None, weakest: Literal["first", "last"] = "last"
) -> int:
    """The value a regularisation sweep chooses (scores: higher is better; NaN is worst).

    Ties of ``scores`` (equal within 1e-12, relative) are broken by ``finer``, a proper score of
    the same validation predictions (higher is better: minus the log-loss of a logistic probe,
    minus the relative MSE of a ridge probe), and remaining ties go to the weakest
    regularisation (``weakest``: the end of the sorted grid that regularises least). A coarse
    selection metric ties often on a small validation split: every ``C`` of the logistic grid
    may reach a validation top-1 of 1.0, and taking the first of them, ``C = 1e-7``, gives a
    head with all probabilities near uniform (a multi-label head then predicts no label at
    the 0.5 threshold). The proper score prefers the value whose probabilities fit the
    validation labels best; the weakest regularisation is the last resort because a penalty that
    changes nothing on held-out data has bought nothing.
    """

    def best_of(values: np.ndarray, among: np.ndarray) -> np.ndarray:
        v = np.where(np.isnan(values[among]), -np.inf, values[among])
        top = v.max()
        if not np.isfinite(top):
            return among
        return among[v >= top - 1e-12 * max(1.0, abs(top))]

    tied = best_of(np.asarray(scores, dtype=np.float64), np.arange(len(scores)))
    if finer is not None and tied.size > 1:
        tied = best_of(np.asarray(finer, dtype=np.float64), tied)
    return int(tied[-1] if weakest == "last" else tied[0])


def _neg_log_loss(task: str, targets: np.ndarray, probs: np.ndarray) -> float:
    """Minus the mean log-loss of probabilities (higher is better): the cross-entropy of the
    true class (single-label), or the binary cross-entropy averaged over labels (multi-label).
    Probabilities are clipped to [1e-15, 1 - 1e-15], so a class the fit never saw costs a finite
    amount."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)
    t = np.asarray(targets)
    if task == "multi-label":
        t = t.astype(np.float64)
        return float(np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
    return float(np.mean(np.log(p[np.arange(len(t)), t.astype(np.int64)])))
