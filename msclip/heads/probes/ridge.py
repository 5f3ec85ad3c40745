"""Ridge regression with an alpha sweep (see :mod:`msclip.heads.probes`)."""

from __future__ import annotations

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
    DEFAULT_ALPHAS,
    ArrayLike,
    ProbeResult,
    SweepResult,
    _apply,
    _best_index,
    _check_positive,
    _result,
    _standardizer,
    _to_array,
    check_features,
    check_targets,
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
        ``(model, sweep)``. Ties of the selection metric go to the lowest validation relative
        MSE (the default metric itself, so only a coarser custom metric ties), then to the
        smallest ``alpha`` (the weakest regularisation), as in :func:`logistic_sweep`: the
        largest ``alpha`` by grid order would be a near-constant prediction.
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
    proper = _neg_relative_mse(var)
    metric = selection_metric or proper
    name = getattr(metric, "__name__", "custom")
    mean, scale = _standardizer(x, standardize)
    solver = _RidgeSolver(_apply(x, mean, scale), y)
    xvs = _apply(xv, mean, scale)
    scores = np.empty(grid.size)
    fit = np.empty(grid.size)  # the relative MSE breaks ties of a coarser custom metric
    for i, a in enumerate(grid):
        coef, intercept = solver.solve(a)
        preds = xvs @ coef.T + intercept
        scores[i] = metric(yv, preds)
        fit[i] = proper(yv, preds)
    best = _best_index(scores, fit, weakest="first")  # the grid ascends: the first is weakest
    sweep = SweepResult("alpha", grid, scores, best, name)
    if not refit:
        coef, intercept = solver.solve(sweep.best)
        return RidgeModel(coef, intercept, sweep.best, mean, scale, single), sweep
    both = np.concatenate([y, yv])
    # 1-D targets stay 1-D: the refitted model predicts [N] as the sweep's own would
    model = fit_ridge(
        np.concatenate([x, xv]), both[:, 0] if single else both, sweep.best, standardize
    )
    return model, sweep


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
        hp["alpha_grid"] = [float(v) for v in sweep.values]  # JSON-clean: records compare them
        hp["selection_metric"] = sweep.metric
        extra["sweep"] = sweep.to_table()
    return _result(
        "ridge", "regression", preds, t, hp, n_train, None, n_resamples, confidence, seed, extra
    )
