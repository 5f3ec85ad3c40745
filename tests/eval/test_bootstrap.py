"""Percentile bootstrap confidence intervals (msclip.eval.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import msclip.eval.bootstrap as B
from msclip.eval.bootstrap import (
    accuracy_metric,
    balanced_accuracy_metric,
    bootstrap_ci,
    bootstrap_cis,
    bootstrap_indices,
    multilabel_f1_metric,
    regression_metric,
    single_label_f1_metric,
)
from msclip.eval.metrics import MetricInputError, balanced_accuracy, topk_accuracy


def _single(rng, n=200, c=5):
    y = rng.integers(0, c, size=n)
    s = rng.normal(size=(n, c))
    s[np.arange(n), y] += 1.0
    return y, s


def test_interval_contains_estimate_and_is_seeded(rng) -> None:
    y, s = _single(rng)
    ci = bootstrap_ci(accuracy_metric(), y, s, n_resamples=300, seed=3)
    assert ci.estimate == pytest.approx(topk_accuracy(s, y))
    assert ci.low <= ci.estimate <= ci.high and ci.low < ci.high
    assert ci.n_resamples == ci.n_valid == 300 and ci.confidence == 0.95 and ci.seed == 3
    assert bootstrap_ci(accuracy_metric(), y, s, n_resamples=300, seed=3) == ci
    assert bootstrap_ci(accuracy_metric(), y, s, n_resamples=300, seed=4) != ci
    # torch inputs give the same interval
    same = bootstrap_ci(accuracy_metric(), torch.from_numpy(y), torch.from_numpy(s), 300, seed=3)
    assert same == ci
    narrower = bootstrap_ci(accuracy_metric(), y, s, n_resamples=300, confidence=0.5, seed=3)
    assert ci.low <= narrower.low <= narrower.high <= ci.high


def test_interval_shrinks_with_more_samples(rng) -> None:
    small = _single(rng, n=100)
    large = _single(rng, n=3000)
    w_small = bootstrap_ci(accuracy_metric(), *small, n_resamples=200)
    w_large = bootstrap_ci(accuracy_metric(), *large, n_resamples=200)
    assert (w_large.high - w_large.low) < 0.5 * (w_small.high - w_small.low)


def test_indices_are_deterministic_and_chunking_does_not_change_them(monkeypatch) -> None:
    idx = bootstrap_indices(37, 50, seed=1)
    assert idx.shape == (50, 37) and idx.min() >= 0 and idx.max() < 37
    ref = np.random.default_rng(1).integers(0, 37, size=(50, 37))
    np.testing.assert_array_equal(idx, ref)
    monkeypatch.setattr(B, "_CHUNK_ELEMENTS", 37 * 7)  # chunks of 7 resamples
    np.testing.assert_array_equal(bootstrap_indices(37, 50, seed=1), ref)


@pytest.mark.parametrize(
    "metric",
    [
        accuracy_metric(),
        accuracy_metric(3),
        balanced_accuracy_metric(),
        single_label_f1_metric("macro"),
        single_label_f1_metric("micro"),
    ],
    ids=repr,
)
def test_vectorised_single_label_metrics_equal_the_plain_loop(rng, metric) -> None:
    y, s = _single(rng, n=60, c=7)
    vec = bootstrap_ci(metric, y, s, n_resamples=64, seed=2)
    loop = bootstrap_ci(lambda t, x: metric.fn(t, x), y, s, n_resamples=64, seed=2)
    assert (vec.estimate, vec.low, vec.high) == pytest.approx(
        (loop.estimate, loop.low, loop.high), rel=1e-12
    )
    # predictions instead of scores (top-1 metrics)
    if metric.name != "top3_accuracy":
        p = s.argmax(axis=1)
        assert bootstrap_ci(metric, y, p, 64, seed=2).estimate == pytest.approx(vec.estimate)


def test_vectorised_macro_f1_leaves_out_classes_a_resample_lacks(rng) -> None:
    # Two samples per class: most resamples miss a class, which macro F1 does not measure
    # (single_label_f1); the vectorised form counted it as F1 0, pulling the interval down.
    y = np.repeat(np.arange(4), 2)
    s = rng.normal(size=(8, 4))
    metric = single_label_f1_metric("macro")
    idx = bootstrap_indices(8, 40, seed=1)
    expected = [metric.fn(y[row], s[row]) for row in idx]
    np.testing.assert_allclose(metric.batched(y, s, idx), expected, rtol=1e-12)


def test_vectorised_multilabel_and_regression_equal_the_plain_loop(rng) -> None:
    y = (rng.random((40, 6)) < 0.3).astype(np.int64)
    s = np.clip(y * 0.4 + rng.random((40, 6)) * 0.7, 0, 1)
    t = rng.normal(size=(40, 2))
    p = t + rng.normal(size=(40, 2)) * 0.5
    cases = [(multilabel_f1_metric(a), y, s) for a in ("macro", "micro")]
    cases += [(regression_metric(n), t, p) for n in ("rmse", "mae", "r2")]
    for metric, targets, scores in cases:
        vec = bootstrap_ci(metric, targets, scores, n_resamples=50, seed=5)
        loop = bootstrap_ci(lambda a, b, m=metric: m.fn(a, b), targets, scores, 50, seed=5)
        assert (vec.estimate, vec.low, vec.high) == pytest.approx(
            (loop.estimate, loop.low, loop.high), rel=1e-12
        ), metric.name


def test_several_metrics_share_resamples_and_any_function_works(rng) -> None:
    y, s = _single(rng)
    cis = bootstrap_cis(
        {
            "acc": accuracy_metric(),
            "acc_fn": lambda t, x: float(np.mean(x.argmax(1) == t)),
            "bal": lambda t, x: balanced_accuracy(x, t),
        },
        y,
        s,
        n_resamples=100,
    )
    assert cis["acc"] == cis["acc_fn"]
    assert cis["bal"].estimate == pytest.approx(balanced_accuracy(s, y))


def test_undefined_resamples_are_left_out(rng) -> None:
    t = np.zeros(6)
    t[0] = 1.0  # most resamples miss row 0: constant targets, R² undefined
    p = t + 0.1
    ci = bootstrap_ci(regression_metric("r2"), t, p, n_resamples=200, seed=0)
    assert 0 < ci.n_valid < 200 and np.isfinite(ci.low)


def test_bad_input() -> None:
    with pytest.raises(MetricInputError, match="empty set"):
        bootstrap_ci(accuracy_metric(), np.zeros(0, int), np.zeros((0, 3)))
    with pytest.raises(MetricInputError, match="targets have 3 samples but scores have 2"):
        bootstrap_ci(accuracy_metric(), np.zeros(3, int), np.zeros((2, 3)))
    with pytest.raises(MetricInputError, match="confidence must lie in"):
        bootstrap_ci(accuracy_metric(), np.zeros(3, int), np.zeros((3, 3)), confidence=95)
    with pytest.raises(MetricInputError, match="n_resamples must be a positive integer; got 0"):
        bootstrap_ci(accuracy_metric(), np.zeros(3, int), np.zeros((3, 3)), n_resamples=0)
    with pytest.raises(MetricInputError, match="unknown regression metric 'mse'"):
        regression_metric("mse")
