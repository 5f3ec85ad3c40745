"""Logistic regression by L-BFGS with a C sweep (see :mod:`msclip.heads.probes`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from msclip.errors import HeadConfigError, HeadInputError
from msclip.eval.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
)
from msclip.heads.probes.common import (
    DEFAULT_CS,
    MULTILABEL_THRESHOLD,
    ArrayLike,
    ProbeResult,
    SelectionMetric,
    SweepResult,
    _apply,
    _best_index,
    _check_positive,
    _check_positive_int,
    _neg_log_loss,
    _num_classes,
    _require_two_classes,
    _result,
    _selection,
    _standardizer,
    _to_array,
    check_features,
    check_labels,
)

logger = logging.getLogger(__name__)

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
        ``(model, sweep)``. The best validation score chooses ``C``; ties (frequent with
        top-1 accuracy on a small validation split) go to the lowest validation log-loss, then
        to the largest ``C`` (the weakest regularisation), never to the smallest ``C`` by grid
        order (whose near-uniform probabilities make a useless head).
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
    fit = np.empty(grid.size)  # minus the validation log-loss: breaks ties of the metric
    iters: list[int] = []
    w = None
    models = []
    for i, C in enumerate(grid):
        w, nit, ok = _fit_problem(xs, prob, C, tol, max_iter, w)
        model = _model_from(w, prob, x.shape[1], C, None, None, nit, ok)
        pv = model.predict_proba(xvs)
        scores[i] = metric(yv, pv)
        fit[i] = _neg_log_loss(task, yv, pv)
        iters.append(nit)
        models.append(model)
        logger.debug("C = %.3g: val %s = %.4f, log-loss %.4f (%d iterations)", C, metric_name,
                     scores[i], -fit[i], nit)  # fmt: skip
    best = _best_index(scores, fit, weakest="last")  # the grid ascends: the last C is weakest
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
            num_classes = _num_classes("single-label", [y, t_labels], None)
        model = fit_logistic(x, y, float(grid[0]), num_classes, standardize, tol, max_iter)
        sweep = None
        n_train = x.shape[0]
    else:
        if num_classes is None and t_labels.ndim == 1:
            tr = check_labels(train_labels, "train_labels")[0]
            va = check_labels(val_labels, "val_labels")[0]
            num_classes = _num_classes("single-label", [tr, va, t_labels], None)
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
        hp["C_grid"] = [float(v) for v in sweep.values]  # JSON-clean: records compare them
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
