"""Regression metrics and single-label F1 of msclip.eval.metrics, cross-checked with
scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from msclip.eval.bootstrap import bootstrap_ci, regression_metric
from msclip.eval.metrics import (
    MetricInputError,
    mean_absolute_error,
    r2_score,
    regression_report,
    root_mean_squared_error,
    single_label_f1,
)


@pytest.fixture()
def data(rng):
    t = rng.normal(size=(50, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([0.0, 5.0, -2.0])
    p = t + rng.normal(size=t.shape) * np.array([0.5, 3.0, 0.05])
    return p, t


def test_regression_metrics_match_sklearn(data) -> None:
    p, t = data
    np.testing.assert_allclose(
        root_mean_squared_error(p, t, average="none"),
        skm.root_mean_squared_error(t, p, multioutput="raw_values"),
        rtol=1e-12,
    )
    assert root_mean_squared_error(p, t) == pytest.approx(skm.root_mean_squared_error(t, p))
    np.testing.assert_allclose(
        mean_absolute_error(p, t, average="none"),
        skm.mean_absolute_error(t, p, multioutput="raw_values"),
        rtol=1e-12,
    )
    assert mean_absolute_error(p, t) == pytest.approx(skm.mean_absolute_error(t, p))
    np.testing.assert_allclose(
        r2_score(p, t, average="none"), skm.r2_score(t, p, multioutput="raw_values"), rtol=1e-12
    )
    assert r2_score(p, t) == pytest.approx(skm.r2_score(t, p))
    # One output given as 1-D arrays, and torch tensors.
    assert r2_score(torch.from_numpy(p[:, 1]), t[:, 1]) == pytest.approx(
        skm.r2_score(t[:, 1], p[:, 1])
    )


def test_regression_report(data) -> None:
    p, t = data
    rep = regression_report(p, t, output_names=["a", "b", "c"])
    assert rep.n_samples == 50 and rep.num_outputs == 3
    assert rep.rmse == pytest.approx(skm.root_mean_squared_error(t, p))
    assert rep.mae == pytest.approx(skm.mean_absolute_error(t, p))
    assert rep.r2 == pytest.approx(skm.r2_score(t, p))
    assert list(rep.per_output["output_name"]) == ["a", "b", "c"]
    assert set(rep.to_dict()) == {"n_samples", "num_outputs", "rmse", "mae", "r2"}
    with pytest.raises(MetricInputError, match="output_names has 2 entries"):
        regression_report(p, t, output_names=["a", "b"])


def test_r2_of_constant_targets_is_nan_and_left_out_of_the_mean() -> None:
    t = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    p = np.array([[1.0, 0.1], [1.2, 0.9], [0.9, 2.0]])
    per = r2_score(p, t, average="none")
    assert np.isnan(per[0]) and per[1] == pytest.approx(skm.r2_score(t[:, 1], p[:, 1]))
    assert r2_score(p, t) == pytest.approx(per[1])


def test_r2_of_constant_targets_whose_float_mean_is_off_by_an_ulp_is_nan() -> None:
    # seven times 0.7 averages to 0.7 + 1 ulp: SS_tot ~1e-32 > 0 gave R² ~ -8e27, not NaN
    t = np.full(7, 0.7)
    assert ((t - t.mean()) ** 2).sum() > 0
    assert np.isnan(r2_score(t + 0.01, t))
    assert np.isnan(regression_report(t + 0.01, t).r2)
    ci = bootstrap_ci(regression_metric("r2"), t, t + 0.01, n_resamples=20)
    assert ci.n_valid == 0 and np.isnan(ci.low)


def test_regression_bad_input_names_rows_and_shapes() -> None:
    t = np.arange(6.0).reshape(3, 2)
    bad = t.copy()
    bad[2, 1] = np.nan
    with pytest.raises(MetricInputError, match=r"targets has NaN or infinite values .* rows \[2\]"):
        root_mean_squared_error(t, bad)
    with pytest.raises(MetricInputError, match=r"preds have shape \(3, 2\) but targets \(2, 2\)"):
        mean_absolute_error(t, t[:2])
    with pytest.raises(MetricInputError, match="empty"):
        r2_score(np.zeros(0), np.zeros(0))
    with pytest.raises(MetricInputError, match="unknown average 'max'"):
        r2_score(t, t, average="max")


def test_single_label_f1_matches_sklearn(rng) -> None:
    c = 6
    y = rng.integers(0, c - 1, size=80)  # class 5 never appears in the targets
    s = rng.normal(size=(80, c))
    pred = s.argmax(axis=1)
    for average in ("macro", "micro"):
        ref = skm.f1_score(y, pred, average=average, labels=range(c), zero_division=0)
        if average == "macro":  # class 5, without samples, is left out (not counted as 0)
            ref = skm.f1_score(y, pred, average=average, labels=range(c - 1), zero_division=0)
        assert single_label_f1(s, y, average=average) == pytest.approx(ref)
    np.testing.assert_allclose(
        single_label_f1(pred, y, num_classes=c, average="none"),
        skm.f1_score(y, pred, average=None, labels=range(c), zero_division=0),
    )
    assert single_label_f1(s, y, average="micro") == pytest.approx(np.mean(pred == y))
    with pytest.raises(MetricInputError, match="unknown average 'weighted'"):
        single_label_f1(s, y, average="weighted")
