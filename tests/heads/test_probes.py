"""Probes on frozen features (msclip.heads.probes): kNN against a brute-force NumPy reference,
logistic regression against scikit-learn, ridge against scikit-learn, sweeps, results and bad
input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from msclip.errors import HeadConfigError, HeadInputError
from msclip.eval.metrics import balanced_accuracy, mean_average_precision, topk_accuracy
from msclip.heads import (
    evaluate_scores,
    fit_logistic,
    fit_ridge,
    knn_neighbors,
    knn_probe,
    knn_scores,
    logistic_probe,
    logistic_sweep,
    ridge_probe,
    ridge_sweep,
)


def clustered(rng, n, d=16, c=4, sep=1.0):
    centers = rng.normal(size=(c, d))
    y = rng.integers(0, c, size=n)
    return (centers[y] * sep + rng.normal(size=(n, d))).astype(np.float32), y


# --------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------


def reference_knn(train, labels, query, k, temperature, num_classes):
    """Brute force in float64: the first k of a stable sort by (-similarity, index)."""
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ t.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sims, idx, axis=1)
    w = np.ones_like(s) if temperature is None else np.exp(s / temperature)
    onehot = np.eye(num_classes)[labels] if labels.ndim == 1 else labels.astype(np.float64)
    scores = np.einsum("qk,qkc->qc", w, onehot[idx]) / w.sum(axis=1, keepdims=True)
    return idx, s, scores


@pytest.mark.parametrize(("k", "temperature"), [(20, 0.07), (5, None), (7, 0.5)])
def test_knn_matches_brute_force(rng, k, temperature) -> None:
    train, y = clustered(rng, 300)
    query, _ = clustered(rng, 50)
    idx_ref, sims_ref, scores_ref = reference_knn(train, y, query, k, temperature, 4)
    sims, idx = knn_neighbors(train, query, k, chunk_size=37)  # blocks that split the set
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_allclose(sims, sims_ref, atol=1e-6)
    scores = knn_scores(train, y, query, k, temperature, num_classes=4, chunk_size=64)
    np.testing.assert_allclose(scores, scores_ref, atol=1e-5)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    # torch inputs give the same scores
    same = knn_scores(
        torch.from_numpy(train),
        torch.from_numpy(y),
        torch.from_numpy(query),
        k,
        temperature,
        num_classes=4,
    )
    np.testing.assert_allclose(same, scores, atol=1e-12)


def test_knn_multilabel_matches_brute_force(rng) -> None:
    train = rng.normal(size=(120, 8)).astype(np.float32)
    labels = (rng.random((120, 5)) < 0.3).astype(np.int64)
    query = rng.normal(size=(30, 8)).astype(np.float32)
    _, _, ref = reference_knn(train, labels, query, 10, 0.07, 5)
    scores = knn_scores(train, labels, query, k=10, temperature=0.07, chunk_size=50)
    np.testing.assert_allclose(scores, ref, atol=1e-5)
    assert scores.min() >= 0 and scores.max() <= 1


def test_knn_tie_rule_takes_lower_indices_across_blocks(rng) -> None:
    train = rng.normal(size=(16, 6)).astype(np.float32)
    v = rng.normal(size=6).astype(np.float32)
    for i in (12, 3, 7, 1):  # identical rows spread over blocks of 4
        train[i] = v
    sims, idx = knn_neighbors(train, v[None], k=3, chunk_size=4)
    assert idx[0].tolist() == [1, 3, 7]
    assert sims[0, 0] == sims[0, 1] == sims[0, 2]
    # With labels 0 and 1 on the tied rows, the vote reflects exactly those three.
    labels = np.zeros(16, dtype=np.int64)
    labels[[1, 12]] = 1
    scores = knn_scores(train, labels, v[None], k=3, temperature=None, chunk_size=4)
    np.testing.assert_allclose(scores, [[2 / 3, 1 / 3]])


def test_knn_probe_reports_weighted_and_unweighted(rng) -> None:
    train, y = clustered(rng, 400, sep=2.0)
    test, yt = clustered(np.random.default_rng(1), 100, sep=2.0)
    # The same centres are needed for the test set: draw both from one generator instead.
    x, labels = clustered(np.random.default_rng(2), 500, sep=2.0)
    train, y, test, yt = x[:400], labels[:400], x[400:], labels[400:]
    weighted, unweighted = knn_probe(train, y, test, yt, n_resamples=100)
    assert weighted.probe == "knn" and unweighted.probe == "knn-unweighted"
    assert weighted.hyperparameters["k"] == 20 and weighted.hyperparameters["temperature"] == 0.07
    assert unweighted.hyperparameters["k"] == 5
    for r in (weighted, unweighted):
        assert r.task == "single-label" and r.n_train == 400 and r.n_test == 100
        assert r.metrics["top1_accuracy"] == pytest.approx(topk_accuracy(r.scores, yt))
        assert r.metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy(r.scores, yt))
        assert r.metrics["top1_accuracy"] > 0.8
        ci = r.ci["top1_accuracy"]
        assert ci.low <= r.metrics["top1_accuracy"] <= ci.high and ci.n_resamples == 100
    np.testing.assert_allclose(
        unweighted.scores, knn_scores(train, y, test, 5, None, num_classes=4)
    )
    # Deterministic: a second run gives the same record.
    again = knn_probe(train, y, test, yt, n_resamples=100)
    assert again[0].to_record() == weighted.to_record()


def test_knn_top5_never_counts_a_class_without_a_vote() -> None:
    # 6 classes; the test image of class 0 sits among training images of class 5 only. Its
    # votes are [0, 0, 0, 0, 0, 1]: by the lower-index-first tie rule class 0 ranked second,
    # inside the top 5, and counted as a top-5 hit although no neighbour voted for it.
    train = np.repeat(np.eye(6), 6, axis=0) + 0.01 * np.arange(36)[:, None]
    labels = np.repeat(np.arange(6), 6)
    test = np.array([[0, 0, 0, 0, 0, 1.0], [1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]])
    results = knn_probe(train, labels, test, np.array([0, 0, 5]), k=5, n_resamples=20)
    for r in results:
        assert r.scores[0, 0] == 0 and topk_accuracy(r.scores, [0, 0, 5], 5) == 1.0
        assert r.metrics["top5_accuracy"] == pytest.approx(2 / 3)
        ci = r.ci["top5_accuracy"]
        assert ci.estimate == pytest.approx(2 / 3) and ci.high <= 1.0 and ci.n_valid == 20


def test_knn_probe_multilabel(rng) -> None:
    x = rng.normal(size=(200, 8)).astype(np.float32)
    labels = np.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 2] < 0], axis=1).astype(np.int64)
    (res,) = knn_probe(
        x[:150], labels[:150], x[150:], labels[150:], k=10, k_unweighted=None, n_resamples=50
    )
    assert res.task == "multi-label" and res.scores.shape == (50, 3)
    assert res.metrics["map"] == pytest.approx(
        mean_average_precision(res.scores, labels[150:]).mean
    )
    assert set(res.metrics) == {"map", "micro_f1", "macro_f1"}
    assert res.predictions.shape == (50, 3)


# --------------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------------


def _sklearn_proba(x, y, C):
    # float64 input: scikit-learn keeps float32 input in float32, which is less precise.
    return LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(np.float64(x), y)


@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_logistic_matches_sklearn_multinomial(rng, C) -> None:
    x, y = clustered(rng, 240, d=12, c=4, sep=0.7)
    test, _ = clustered(rng, 40, d=12, c=4)
    model = fit_logistic(x, y, C=C, standardize=False, tol=1e-10, max_iter=10000)
    ref = _sklearn_proba(x, y, C)
    ref_p = ref.predict_proba(np.float64(test))
    np.testing.assert_allclose(model.predict_proba(test), ref_p, atol=1e-6)
    assert model.converged


def test_logistic_matches_sklearn_binary_and_standardised(rng) -> None:
    x, y = clustered(rng, 200, d=10, c=2, sep=0.5)
    x = x * np.linspace(0.1, 30, 10) + 5.0  # features of very different scales
    test = x[:30] + rng.normal(size=(30, 10)).astype(np.float32)
    model = fit_logistic(x, y, C=0.5, tol=1e-10, max_iter=10000)  # standardised by default
    scaler = StandardScaler().fit(x)
    ref = _sklearn_proba(scaler.transform(x), y, 0.5)
    got = model.predict_proba(test)
    np.testing.assert_allclose(got, ref.predict_proba(scaler.transform(test)), atol=1e-6)
    assert model.coef.shape == (1, 10)  # one sigmoid row, as scikit-learn's binary problem


def test_logistic_multilabel_is_one_vs_rest(rng) -> None:
    x = rng.normal(size=(150, 6))
    labels = np.stack([x[:, 0] + 0.5 * rng.normal(size=150) > 0, x[:, 1] > 0.3], axis=1)
    labels = np.concatenate([labels, np.zeros((150, 1), bool)], axis=1).astype(np.int64)
    model = fit_logistic(x, labels, C=2.0, standardize=False, tol=1e-10, max_iter=10000)
    proba = model.predict_proba(x[:20])
    for c in range(2):
        ref = _sklearn_proba(x, labels[:, c], 2.0).predict_proba(x[:20])[:, 1]
        np.testing.assert_allclose(proba[:, c], ref, atol=1e-6)
    assert np.all(proba[:, 2] == 0.0)  # a label never present in training stays at 0


def test_logistic_absent_class_gets_zero_probability(rng) -> None:
    x, y = clustered(rng, 120, d=6, c=3)
    model = fit_logistic(x, y, C=1.0, num_classes=5, standardize=False, tol=1e-10)
    p = model.predict_proba(x[:10])
    assert p.shape == (10, 5) and np.all(p[:, 3:] == 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[:, :3], _sklearn_proba(x, y, 1.0).predict_proba(x[:10]), atol=1e-5)


def test_class_codes_that_are_not_0_to_c_minus_1_are_refused(rng) -> None:
    # 1-based codes would add an empty class 0, which macro scores average in as zeros
    x, y = clustered(rng, 160, d=6, c=3)
    for probe, kw in ((logistic_probe, {"Cs": [1.0]}), (knn_probe, {"k": 5})):
        with pytest.raises(HeadInputError, match=r"these codes of 0\.\.3 never occur: 0;"):
            probe(x[:100], y[:100] + 1, x[100:], y[100:] + 1, **kw)
    with pytest.raises(HeadInputError, match=r"never occur: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 \.\.\."):
        fit_logistic(x, (y + 1) * 10, C=1.0)
    # classes that exist without samples: num_classes says so
    assert fit_logistic(x, y + 1, C=1.0, num_classes=4).predict_proba(x[:2]).shape == (2, 4)


def test_sweep_picks_best_validation_C_and_refits_on_train_plus_val(rng) -> None:
    x, y = clustered(rng, 260, d=20, c=3, sep=0.35)
    xtr, ytr, xva, yva = x[:160], y[:160], x[160:], y[160:]
    cs = np.logspace(-4, 2, 7)
    model, sweep = logistic_sweep(xtr, ytr, xva, yva, cs, tol=1e-8)
    # Independent cold fits at every C, scored on the validation split.
    expected, losses = [], []
    for C in cs:
        m = fit_logistic(xtr, ytr, C=C, tol=1e-8)
        p = m.predict_proba(xva)
        expected.append(topk_accuracy(p, yva))
        losses.append(-np.mean(np.log(p[np.arange(len(yva)), yva])))
    np.testing.assert_allclose(sweep.scores, expected)
    tied = np.flatnonzero(np.array(expected) == max(expected))
    best = int(tied[np.argmin(np.array(losses)[tied])])  # ties: the lowest validation log-loss
    assert sweep.best == pytest.approx(cs[best]) and sweep.metric == "top1_accuracy"
    refit = fit_logistic(x, y, C=cs[best], tol=1e-8)
    np.testing.assert_allclose(model.predict_proba(xva), refit.predict_proba(xva), atol=1e-5)
    assert model.mean is not None and np.allclose(model.mean, x.astype(np.float64).mean(axis=0))
    # A custom selection metric and no refit.
    m2, s2 = logistic_sweep(
        xtr, ytr, xva, yva, cs, selection_metric="balanced_accuracy", refit=False
    )
    assert s2.metric == "balanced_accuracy"
    assert np.allclose(m2.mean, xtr.astype(np.float64).mean(axis=0))


def test_sweep_ties_go_to_the_lowest_log_loss_then_the_weakest_regularisation() -> None:
    from msclip.heads.probes.common import _best_index

    scores = np.array([1.0, 1.0, np.nan, 1.0, 0.5])
    assert _best_index(scores, np.array([-3.0, -1.0, 0.0, -2.0, 0.0])) == 1
    assert _best_index(scores, np.array([-1.0, -1.0, 0.0, -2.0, 0.0]), "last") == 1
    assert _best_index(scores, np.array([-1.0, -1.0, 0.0, -2.0, 0.0]), "first") == 0
    assert _best_index(scores) == 3 and _best_index(scores, weakest="first") == 0
    assert _best_index(np.full(3, np.nan)) == 2  # nothing scored: the weakest


@pytest.mark.parametrize("multilabel", [False, True])
def test_an_easy_validation_split_does_not_choose_the_smallest_C(rng, multilabel) -> None:
    """Every C of the default grid reaches a validation score of 1.0 on a few well-separated
    samples; the first of them (C = 1e-7) would be a head of near-uniform probabilities (no
    label above 0.5 for multi-label). The log-loss picks a C whose probabilities are confident."""
    centers = rng.normal(size=(4, 8)) * 6
    y = np.tile(np.arange(4), 12)  # every split balanced: equal intercepts at a tiny C
    x = (centers[y] + rng.normal(size=(48, 8))).astype(np.float32)
    if multilabel:
        y = np.eye(4, dtype=np.int64)[y]
    res = logistic_probe(x[:24], y[:24], x[36:], y[36:], x[24:36], y[24:36], n_resamples=0)
    sweep = res.extra["sweep"]
    key = "val_map" if multilabel else "val_top1_accuracy"
    assert all(row[key] == 1.0 for row in sweep)  # every C ties on the selection metric
    assert res.hyperparameters["C"] > 1e-3
    if multilabel:
        assert res.metrics["micro_f1"] > 0.9 and (res.scores.max(axis=1) > 0.5).all()
    else:
        assert res.scores.max(axis=1).min() > 0.5 and res.metrics["top1_accuracy"] == 1.0


def test_ridge_ties_of_a_coarse_metric_go_to_the_lowest_mse(rng) -> None:
    x = rng.normal(size=(120, 6))
    y = x @ rng.normal(size=6) + 0.1 * rng.normal(size=120)
    alphas = np.logspace(-3, 5, 17)

    def coarse(t, p):  # the same for every alpha
        return 0.0

    _, sweep = ridge_sweep(x[:80], y[:80], x[80:], y[80:], alphas, selection_metric=coarse)
    _, mse = ridge_sweep(x[:80], y[:80], x[80:], y[80:], alphas)
    assert sweep.best == mse.best and sweep.best < 10  # not the largest alpha by grid order


def test_logistic_probe_result(rng) -> None:
    x, y = clustered(rng, 300, d=10, c=5, sep=1.0)
    res = logistic_probe(
        x[:150],
        y[:150],
        x[250:],
        y[250:],
        x[150:250],
        y[150:250],
        Cs=np.logspace(-3, 1, 5),
        n_resamples=50,
    )
    assert res.probe == "logistic" and res.n_train == 250 and res.n_test == 50
    assert res.hyperparameters["C"] in np.logspace(-3, 1, 5)
    assert len(res.extra["sweep"]) == 5
    assert set(res.metrics) == {
        "top1_accuracy",
        "top5_accuracy",
        "balanced_accuracy",
        "macro_f1",
        "micro_f1",
    }
    assert res.metrics["micro_f1"] == pytest.approx(res.metrics["top1_accuracy"])
    rec = res.to_record()
    assert rec["hp_C"] == res.hyperparameters["C"] and "top1_accuracy_ci_low" in rec
    assert rec["ci_resamples"] == 50 and isinstance(rec["hp_C_grid"], str)
    # One C: no validation split needed.
    single = logistic_probe(x[:150], y[:150], x[250:], y[250:], Cs=[1.0], n_resamples=0)
    assert single.ci == {} and single.hyperparameters["C"] == 1.0
    with pytest.raises(HeadConfigError, match="needs a validation split"):
        logistic_probe(x[:150], y[:150], x[250:], y[250:])


# --------------------------------------------------------------------------------------------
# Ridge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(80, 10), (20, 40)])  # primal and dual solver paths
def test_ridge_matches_sklearn(rng, n, d) -> None:
    x = rng.normal(size=(n, d)) * np.linspace(0.5, 3, d) + 2.0
    y = x @ rng.normal(size=(d, 3)) + rng.normal(size=(n, 3)) + np.array([1.0, -5.0, 20.0])
    for alpha in (0.01, 3.0, 1000.0):
        model = fit_ridge(x, y, alpha, standardize=False)
        ref = Ridge(alpha=alpha).fit(x, y)
        np.testing.assert_allclose(model.coef, ref.coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(model.intercept, ref.intercept_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(model.predict(x), ref.predict(x), rtol=1e-6, atol=1e-8)
    one = fit_ridge(x, y[:, 0], 3.0)  # standardised, one output
    scaler = StandardScaler().fit(x)
    ref = Ridge(alpha=3.0).fit(scaler.transform(x), y[:, 0])
    assert one.predict(x).shape == (n,)
    np.testing.assert_allclose(one.predict(x), ref.predict(scaler.transform(x)), rtol=1e-6)


def test_ridge_sweep_and_probe(rng) -> None:
    x = rng.normal(size=(200, 12))
    y = np.stack([x @ rng.normal(size=12), 100 * x[:, 0] ** 2], axis=1) + rng.normal(size=(200, 2))
    alphas = np.logspace(-2, 4, 7)
    model, sweep = ridge_sweep(x[:120], y[:120], x[120:160], y[120:160], alphas)
    var = y[:120].var(axis=0)
    expected = []
    for a in alphas:
        pred = fit_ridge(x[:120], y[:120], a).predict(x[120:160])
        expected.append(-np.mean(((pred - y[120:160]) ** 2).mean(axis=0) / var))
    np.testing.assert_allclose(sweep.scores, expected, rtol=1e-8)
    assert sweep.best == alphas[int(np.argmax(expected))]
    np.testing.assert_allclose(
        model.predict(x[160:]), fit_ridge(x[:160], y[:160], sweep.best).predict(x[160:])
    )
    # 1-D targets: the refitted model predicts [N], as fit_ridge's and the unrefitted one's
    for refit in (True, False):
        one, _ = ridge_sweep(x[:120], y[:120, 0], x[120:160], y[120:160, 0], alphas, refit=refit)
        assert one.predict(x[160:]).shape == (40,)
    res = ridge_probe(
        x[:120], y[:120], x[160:], y[160:], x[120:160], y[120:160], alphas, n_resamples=50
    )
    assert res.task == "regression" and set(res.metrics) == {"rmse", "mae", "r2"}
    assert res.hyperparameters["alpha"] == sweep.best and res.scores.shape == (40, 2)
    assert res.ci["r2"].low <= res.metrics["r2"] <= res.ci["r2"].high


# --------------------------------------------------------------------------------------------
# Evaluation and bad input
# --------------------------------------------------------------------------------------------


def test_evaluate_scores_single_label_without_top5(rng) -> None:
    y = rng.integers(0, 3, size=30)
    s = rng.random((30, 3))
    metrics, ci = evaluate_scores("single-label", s, y, n_resamples=20)
    assert "top5_accuracy" not in metrics and set(ci) == set(metrics)
    with pytest.raises(HeadConfigError, match="unknown task 'ranking'"):
        evaluate_scores("ranking", s, y)


def test_bad_input_gives_clear_errors(rng) -> None:
    x, y = clustered(rng, 40, d=4, c=3)
    with pytest.raises(HeadInputError, match="train_features is empty"):
        knn_probe(np.zeros((0, 4)), np.zeros(0, int), x, y)
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(
        HeadInputError, match=r"NaN or infinite values in 1 row\(s\), e\.g\. rows \[7\]"
    ):
        fit_logistic(bad, y)
    with pytest.raises(
        HeadInputError, match=r"labels holds class index 7 at row 3 .* num_classes = 3"
    ):
        y2 = y.copy()
        y2[3] = 7
        fit_logistic(x, y2, num_classes=3)
    with pytest.raises(HeadInputError, match="negative class index -1 at row 0"):
        fit_logistic(x, np.r_[-1, y[1:]])
    with pytest.raises(HeadInputError, match=r"a single class \(2\)"):
        fit_logistic(x, np.full(40, 2))
    names = np.array(["sea", "forest", "urban"])[y]  # class names, as scikit-learn accepts
    with pytest.raises(HeadInputError, match=r"got dtype <U6, e\.g\. .*np\.unique\(labels"):
        knn_probe(x, names, x, names)
    with pytest.raises(HeadInputError, match="train_labels has 39 rows but the features have 40"):
        knn_probe(x, y[:39], x, y)
    with pytest.raises(HeadInputError, match=r"test_features has 3 features per row .* have 4"):
        knn_probe(x, y, x[:, :3], y)
    with pytest.raises(HeadInputError, match="row 1, class 0 holds 2"):
        fit_logistic(x[:3], np.array([[0, 1], [2, 0], [1, 1]]))
    # scikit-learn's y.reshape(-1, 1): one column of class indices, with the fix
    with pytest.raises(HeadInputError, match=r"holds 2; class indices are a flat array \[N\]"):
        fit_logistic(x, y.reshape(-1, 1))
    with pytest.raises(HeadInputError, match=r"missing \(NaN\) labels at rows \[4\]"):
        fit_logistic(x, np.where(np.arange(40) == 4, np.nan, y.astype(float)))
    targets = rng.normal(size=40)
    targets[[5, 9]] = np.nan
    with pytest.raises(
        HeadInputError, match=r"targets has NaN or infinite values at rows \[5, 9\]"
    ):
        fit_ridge(x, targets)
    with pytest.raises(HeadConfigError, match="k must be an integer >= 1; got 0"):
        knn_probe(x, y, x, y, k=0)
    with pytest.raises(HeadConfigError, match="C must be a positive finite number; got -1"):
        fit_logistic(x, y, C=-1)
    with pytest.raises(HeadConfigError, match="alpha must be a positive finite number; got 0"):
        fit_ridge(x, rng.normal(size=40), alpha=0)
    with pytest.raises(HeadConfigError, match="selection metric 'r2' is not available"):
        logistic_sweep(x, y, x, y, selection_metric="r2")
