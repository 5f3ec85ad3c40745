"""Tests of msclip.eval.metrics: cross-checks against scikit-learn on random inputs and
hand-worked examples of every AP@k definition and multi-label rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from msclip.eval import metrics as M
from msclip.eval.metrics import (
    AP_DEFINITIONS,
    DEFAULT_AP_DEFINITION,
    MetricInputError,
    average_precision,
    average_precision_at_k,
    balanced_accuracy,
    confusion_matrix,
    mean_average_precision,
    mean_average_precision_at_k,
    multilabel_accuracy,
    multilabel_predict,
    multilabel_report,
    per_class_accuracy,
    precision_recall_f1,
    single_label_report,
    targets_to_relevance,
    topk_accuracy,
)

SEEDS = [0, 1, 2, 3, 4]
TOL = 1e-6
REPO = Path(__file__).resolve().parents[2]


def _single_label(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(20, 200)), int(rng.integers(3, 12))
    scores = rng.normal(size=(n, c))
    if ties:
        # Coarse rounding produces many equal scores within rows and columns.
        scores = np.round(scores, 0)
    targets = rng.integers(0, c, size=n)
    return scores, targets


def _multi_label(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + seed)
    n, c = int(rng.integers(20, 200)), int(rng.integers(2, 10))
    scores = rng.normal(size=(n, c))
    if ties:
        scores = np.round(scores, 0)
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    targets[0] = 1  # every class has at least one positive
    return scores, targets


# --------------------------------------------------------------------------------------------
# Single-label metrics against scikit-learn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_top1_confusion_balanced_match_sklearn(seed: int, ties: bool) -> None:
    scores, targets = _single_label(seed, ties)
    c = scores.shape[1]
    pred = np.argmax(scores, axis=1)  # lowest index on ties, the documented rule
    assert topk_accuracy(scores, targets, 1) == pytest.approx(
        skm.accuracy_score(targets, pred), abs=TOL
    )
    np.testing.assert_array_equal(
        confusion_matrix(scores, targets),
        skm.confusion_matrix(targets, pred, labels=np.arange(c)),
    )
    assert balanced_accuracy(scores, targets) == pytest.approx(
        skm.balanced_accuracy_score(targets, pred), abs=TOL
    )
    expected_recall = skm.recall_score(
        targets, pred, labels=np.arange(c), average=None, zero_division=0
    )
    np.testing.assert_allclose(per_class_accuracy(scores, targets), expected_recall, atol=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_accuracy_matches_sklearn_without_ties(seed: int) -> None:
    scores, targets = _single_label(seed, ties=False)
    c = scores.shape[1]
    for k in sorted({1, 2, c - 1}):
        expected = skm.top_k_accuracy_score(targets, scores, k=k, labels=np.arange(c))
        assert topk_accuracy(scores, targets, k) == pytest.approx(expected, abs=TOL)


def test_topk_ties_break_towards_lower_index() -> None:
    scores = np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 2.0], [5.0, 5.0, 0.0]])
    # Rankings: row0 -> 0,1,2 ; row1 -> 1,2,0 ; row2 -> 0,1,2.
    assert topk_accuracy(scores, [0, 1, 1], 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, [2, 2, 1], 1) == 0.0
    assert topk_accuracy(scores, [2, 2, 1], 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, [2, 0, 2], 2) == 0.0


def test_topk_k_larger_than_classes_is_clamped() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert topk_accuracy(scores, [0, 1], 5) == 1.0
    assert topk_accuracy(scores, [0, 1], 1) == 0.0


def test_per_class_accuracy_nan_for_empty_class_excluded_from_mean() -> None:
    preds = np.array([0, 0, 1, 1])
    targets = np.array([0, 1, 1, 1])
    acc = per_class_accuracy(preds, targets, num_classes=3)
    np.testing.assert_allclose(acc[:2], [1.0, 2 / 3])
    assert math.isnan(acc[2])
    assert balanced_accuracy(preds, targets, num_classes=3) == pytest.approx((1.0 + 2 / 3) / 2)


def test_confusion_matrix_from_predicted_indices() -> None:
    cm = confusion_matrix([2, 0, 1, 1], [2, 1, 1, 0])
    expected = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(cm, expected)


def test_torch_inputs_equal_numpy_inputs() -> None:
    scores, targets = _single_label(7, ties=False)
    st = torch.tensor(scores, dtype=torch.float32, requires_grad=True)
    tt = torch.tensor(targets)
    s32 = scores.astype(np.float32)
    assert topk_accuracy(st, tt, 2) == topk_accuracy(s32, targets, 2)
    rel = targets_to_relevance(targets, scores.shape[1])
    ours_t = mean_average_precision_at_k(st, torch.tensor(rel), k=10)
    ours_n = mean_average_precision_at_k(s32, rel, k=10)
    np.testing.assert_allclose(ours_t.per_class, ours_n.per_class)
    assert isinstance(ours_t.mean, float)


# --------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------

# Ranking 0..5 by descending score; relevant items at ranks 1, 3 and 6 (R = 3).
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
HAND_REL = np.array([1, 0, 1, 0, 0, 1])


@pytest.mark.parametrize(
    ("k", "definition", "expected"),
    [
        # k = 2: top-2 holds one relevant item at rank 1, P@1 = 1, so S_k = 1.
        (2, "relevant_retrieved", 1.0),  # 1 / R_k = 1 / 1
        (2, "min_k_relevant", 0.5),  # 1 / min(2, 3)
        (2, "all_relevant", 1 / 3),  # 1 / R
        (2, "relevant_retrieved_positive", 1.0),  # all scores positive -> as relevant_retrieved
        # k = 3: relevant at ranks 1 and 3: S_k = 1 + 2/3 = 5/3.
        (3, "relevant_retrieved", 5 / 6),  # / 2
        (3, "min_k_relevant", 5 / 9),  # / min(3, 3)
        (3, "all_relevant", 5 / 9),  # / 3
        # k = 6 (= N): S_k = 1 + 2/3 + 3/6 = 13/6 and every denominator is 3.
        (6, "relevant_retrieved", 13 / 18),
        (6, "min_k_relevant", 13 / 18),
        (6, "all_relevant", 13 / 18),
        # k = 100 > N behaves as k = N.
        (100, "all_relevant", 13 / 18),
    ],
)
def test_ap_at_k_hand_examples(k: int, definition: str, expected: float) -> None:
    assert average_precision_at_k(HAND_SCORES, HAND_REL, k, definition) == pytest.approx(
        expected, abs=1e-12
    )


def test_ap_at_k_relevant_outside_top_k() -> None:
    # Only relevant item at rank 3; with k = 2 none is retrieved: 0 under every definition.
    scores, rel = np.array([3.0, 2.0, 1.0]), np.array([0, 0, 1])
    for definition in AP_DEFINITIONS:
        assert average_precision_at_k(scores, rel, 2, definition) == 0.0


def test_ap_at_k_positive_definition_drops_non_positive_scores() -> None:
    # Ranking: item0 (0.9), item2 (0.3), item1 (-0.1); relevant items 1 and 2.
    scores, rel = np.array([0.9, -0.1, 0.3]), np.array([0, 1, 1])
    # relevant at ranks 2 and 3: (1/2 + 2/3) / 2 = 7/12.
    assert average_precision_at_k(scores, rel, 3, "relevant_retrieved") == pytest.approx(7 / 12)
    # item1 scored <= 0 is not relevant: only rank 2 counts: (1/2) / 1.
    assert average_precision_at_k(scores, rel, 3, "relevant_retrieved_positive") == 0.5
    # Score exactly 0 counts as non-positive too; every relevant item masked -> 0, not NaN.
    assert average_precision_at_k([0.0, 1.0], [1, 0], 2, "relevant_retrieved_positive") == 0.0


def test_ap_at_k_ties_lower_index_first() -> None:
    scores = np.array([0.5, 0.5, 0.5])
    assert average_precision_at_k(scores, [0, 0, 1], 1) == 0.0
    assert average_precision_at_k(scores, [1, 0, 0], 1) == 1.0
    assert average_precision_at_k(scores, [0, 0, 1], 3) == pytest.approx(1 / 3)
    # -0.0 and 0.0 tie as well.
    assert average_precision_at_k([-0.0, 0.0], [0, 1], 1) == 0.0


def test_ap_no_relevant_policy() -> None:
    scores, rel = np.array([0.3, 0.2]), np.array([0, 0])
    for definition in AP_DEFINITIONS:
        assert math.isnan(average_precision_at_k(scores, rel, 2, definition))
        assert average_precision_at_k(scores, rel, 2, definition, no_relevant="zero") == 0.0
    assert math.isnan(average_precision(scores, rel))
    assert average_precision(scores, rel, no_relevant="zero") == 0.0

    all_scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    relevance = np.array([[1, 0], [0, 0]])
    res = mean_average_precision_at_k(all_scores, relevance, k=2)
    assert math.isnan(res.per_class[1])
    assert res.mean == 1.0  # the empty class is excluded from the mean
    res0 = mean_average_precision_at_k(all_scores, relevance, k=2, no_relevant="zero")
    assert res0.mean == 0.5  # ... or counted as 0
    assert res0.k == 2 and res0.definition == DEFAULT_AP_DEFINITION


@pytest.mark.parametrize("seed", SEEDS)
def test_all_relevant_with_k_ge_n_equals_sklearn_without_ties(seed: int) -> None:
    scores, targets = _multi_label(seed, ties=False)
    n, c = scores.shape
    for k in (n, n + 7):
        res = mean_average_precision_at_k(scores, targets, k, "all_relevant")
        expected = [skm.average_precision_score(targets[:, j], scores[:, j]) for j in range(c)]
        np.testing.assert_allclose(res.per_class, expected, atol=TOL)
    # relevant_retrieved also covers every relevant item once k >= N.
    res_rr = mean_average_precision_at_k(scores, targets, n, "relevant_retrieved")
    np.testing.assert_allclose(res_rr.per_class, expected, atol=TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_full_ap_matches_sklearn(seed: int, ties: bool) -> None:
    scores, targets = _multi_label(seed, ties)
    c = scores.shape[1]
    expected = np.array(
        [skm.average_precision_score(targets[:, j], scores[:, j]) for j in range(c)]
    )
    res = mean_average_precision(scores, targets)
    np.testing.assert_allclose(res.per_class, expected, atol=TOL)
    assert res.mean == pytest.approx(expected.mean(), abs=TOL)
    assert res.k is None and res.definition == "full"
    assert average_precision(scores[:, 0], targets[:, 0]) == pytest.approx(expected[0], abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_ap_at_k_vectorised_equals_per_query_reference(seed: int) -> None:
    """The matrix path equals a direct loop over ranks written from the definitions."""
    rng = np.random.default_rng(seed)
    n, c = 40, 4
    scores = np.round(rng.normal(size=(n, c)), 1)  # with ties
    rel = rng.random((n, c)) < 0.25
    for definition in AP_DEFINITIONS:
        for k in (1, 5, 17, 60):
            got = mean_average_precision_at_k(scores, rel, k, definition).per_class
            for j in range(c):
                order = sorted(range(n), key=lambda i, j=j: (-scores[i, j], i))[: min(k, n)]
                hits, total_p = 0, 0.0
                for rank, i in enumerate(order, start=1):
                    relevant = rel[i, j] and (
                        definition != "relevant_retrieved_positive" or scores[i, j] > 0
                    )
                    if relevant:
                        hits += 1
                        total_p += hits / rank
                r = int(rel[:, j].sum())
                denom = {
                    "relevant_retrieved": hits,
                    "relevant_retrieved_positive": hits,
                    "min_k_relevant": min(k, r),
                    "all_relevant": r,
                }[definition]
                want = float("nan") if r == 0 else (total_p / denom if denom else 0.0)
                np.testing.assert_allclose(got[j], want, atol=1e-12, equal_nan=True)


def test_single_label_map_uses_class_prompt_as_query() -> None:
    # 4 images, 2 classes. Class 0 ranks images by column 0: 1 (0.9), 0 (0.8), 2, 3.
    scores = np.array([[0.8, 0.1], [0.9, 0.2], [0.3, 0.7], [0.1, 0.6]])
    targets = np.array([0, 1, 0, 1])
    rel = targets_to_relevance(targets, 2)
    res = mean_average_precision_at_k(scores, rel, k=2, definition="all_relevant")
    # class 0: ranks 1..2 are images 1 (no), 0 (yes) -> (1/2) / 2 = 0.25.
    # class 1: column 1 ranks 2 (0.7, no), 3 (0.6, yes) -> (1/2) / 2 = 0.25.
    np.testing.assert_allclose(res.per_class, [0.25, 0.25])
    assert res.mean == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------
# Multi-label rules and metrics
# --------------------------------------------------------------------------------------------


def test_mean_others_rule_hand_example() -> None:
    scores = np.array([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    # Row 0: means of others: 1, 5/3, 4/3, 2 -> [T, F, T, F].
    # Row 1: means of others: 8/3, 4/3, 2, 2 -> [F, T, F, F] (2 > 2 is False).
    # Row 2: all equal -> nothing exceeds (strict).
    expected = np.array(
        [[True, False, True, False], [False, True, False, False], [False, False, False, False]]
    )
    np.testing.assert_array_equal(multilabel_predict(scores), expected)
    np.testing.assert_array_equal(multilabel_predict(scores, rule="mean_others"), expected)


def test_other_class_rule_hand_example() -> None:
    scores = np.array([[0.2, 0.5, 0.3, 0.3], [0.9, 0.1, 0.4, 0.2]])
    pred = multilabel_predict(scores, rule="other_class")
    np.testing.assert_array_equal(pred, [[False, True, False], [True, False, True]])
    assert pred.shape == (2, 3)


def test_threshold_rule_is_strict() -> None:
    scores = np.array([[0.5, 0.6, 0.4]])
    np.testing.assert_array_equal(
        multilabel_predict(scores, rule="threshold", threshold=0.5), [[False, True, False]]
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_multilabel_prf_and_accuracy_match_sklearn(seed: int, ties: bool) -> None:
    scores, targets = _multi_label(seed, ties)
    pred = multilabel_predict(scores, "mean_others").astype(int)
    if seed == 0:
        pred[:, 0] = 0  # a class never predicted: zero_division path
    for average in ("micro", "macro"):
        p, r, f = precision_recall_f1(pred, targets, average=average)
        kw = {"average": average, "zero_division": 0}
        assert p == pytest.approx(skm.precision_score(targets, pred, **kw), abs=TOL)
        assert r == pytest.approx(skm.recall_score(targets, pred, **kw), abs=TOL)
        assert f == pytest.approx(skm.f1_score(targets, pred, **kw), abs=TOL)
    p, r, f = precision_recall_f1(pred, targets, average="none")
    np.testing.assert_allclose(
        f, skm.f1_score(targets, pred, average=None, zero_division=0), atol=TOL
    )
    expected_acc = [skm.accuracy_score(targets[:, j], pred[:, j]) for j in range(pred.shape[1])]
    np.testing.assert_allclose(multilabel_accuracy(pred, targets), expected_acc, atol=TOL)


def test_multilabel_report_other_class_drops_other_column() -> None:
    scores = np.array([[0.2, 0.5, 0.3, 0.3], [0.9, 0.1, 0.4, 0.2], [0.1, 0.2, 0.6, 0.5]])
    targets_full = np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 0]])
    names = ["a", "b", "c", "other"]
    rep = multilabel_report(scores, targets_full, names, rule="other_class", k_ap=2)
    rep_short = multilabel_report(scores, targets_full[:, :3], names[:3], rule="other_class")
    assert rep.num_classes == 3
    assert list(rep.per_class["class_name"]) == ["a", "b", "c"]
    # preds: [[F,T,F],[T,F,T],[F,F,T]] equal the targets of the first 3 columns.
    np.testing.assert_allclose(rep.per_class["accuracy"], [1.0, 1.0, 1.0])
    assert rep.mean_accuracy == 1.0 and rep.micro_f1 == 1.0
    assert rep_short.macro_f1 == rep.macro_f1
    assert rep.to_dict()["rule"] == "other_class"


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_multilabel_report_consistent_with_sklearn(seed: int) -> None:
    scores, targets = _multi_label(seed, ties=False)
    c = scores.shape[1]
    rep = multilabel_report(scores, targets, k_ap=10_000, ap_definition="all_relevant")
    pred = multilabel_predict(scores).astype(int)
    kw = {"zero_division": 0}
    assert rep.macro_f1 == pytest.approx(skm.f1_score(targets, pred, average="macro", **kw))
    assert rep.micro_f1 == pytest.approx(skm.f1_score(targets, pred, average="micro", **kw))
    assert rep.micro_precision == pytest.approx(
        skm.precision_score(targets, pred, average="micro", **kw)
    )
    assert rep.macro_recall == pytest.approx(skm.recall_score(targets, pred, average="macro", **kw))
    ap = [skm.average_precision_score(targets[:, j], scores[:, j]) for j in range(c)]
    assert rep.map == pytest.approx(np.mean(ap), abs=TOL)
    assert rep.map_at_k == pytest.approx(np.mean(ap), abs=TOL)  # k >= N, tie-free
    assert list(rep.per_class.columns) == [
        "class_index",
        "class_name",
        "n",
        "n_predicted",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "ap",
        "ap_at_k",
    ]
    np.testing.assert_array_equal(rep.per_class["n"], targets.sum(axis=0))


# --------------------------------------------------------------------------------------------
# Single-label report
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_single_label_report_matches_sklearn(seed: int) -> None:
    scores, targets = _single_label(seed, ties=False)
    n, c = scores.shape
    names = [f"class {i}" for i in range(c)]
    rep = single_label_report(scores, targets, names, k_ap=10)
    pred = np.argmax(scores, axis=1)
    labels = np.arange(c)
    assert rep.n_samples == n and rep.num_classes == c
    assert rep.top1_accuracy == pytest.approx(skm.accuracy_score(targets, pred), abs=TOL)
    if c > 5:
        top5 = skm.top_k_accuracy_score(targets, scores, k=5, labels=labels)
        assert rep.top5_accuracy == pytest.approx(top5, abs=TOL)
    elif c == 5:
        assert rep.top5_accuracy == 1.0
    else:
        assert math.isnan(rep.top5_accuracy)
    assert rep.balanced_accuracy == pytest.approx(
        skm.balanced_accuracy_score(targets, pred), abs=TOL
    )
    assert rep.macro_f1 == pytest.approx(
        skm.f1_score(targets, pred, labels=np.arange(c), average="macro", zero_division=0),
        abs=TOL,
    )
    rel = targets_to_relevance(targets, c)
    assert rep.map_at_k == mean_average_precision_at_k(scores, rel, 10).mean
    assert rep.ap_definition == DEFAULT_AP_DEFINITION and rep.ap_k == 10
    assert list(rep.per_class.columns) == [
        "class_index",
        "class_name",
        "n",
        "n_predicted",
        "recall",
        "precision",
        "f1",
        "ap_at_k",
        "ap",
    ]
    assert list(rep.per_class["class_name"]) == names
    np.testing.assert_array_equal(rep.per_class["n"], np.bincount(targets, minlength=c))
    np.testing.assert_array_equal(rep.confusion, skm.confusion_matrix(targets, pred, labels=labels))
    assert set(rep.to_dict()) >= {"top1_accuracy", "top5_accuracy", "map_at_k", "ap_definition"}


def test_a_class_without_samples_is_left_out_of_the_macro_averages() -> None:
    """A class folder without images (warned as left out of the metrics) does not count as
    F1 0: perfect predictions of the other classes give macro F1 1.0, as balanced accuracy;
    its per-class row stays."""
    targets = np.array([0, 0, 1, 1, 2, 2])  # class 3 has no sample
    scores = np.eye(4)[targets] + 0.01
    rep = single_label_report(scores, targets, ["a", "b", "c", "glacier_lake"], k_ap=10)
    assert rep.macro_f1 == 1.0 and rep.balanced_accuracy == 1.0
    assert M.single_label_f1(scores, targets, num_classes=4) == 1.0
    row = rep.per_class.iloc[3]
    assert row["class_name"] == "glacier_lake" and row["n"] == 0 and math.isnan(row["recall"])
    # predictions of the empty class still count against the true class
    scores[0] = np.eye(4)[3]
    rep = single_label_report(scores, targets, ["a", "b", "c", "glacier_lake"], k_ap=10)
    assert rep.macro_f1 == pytest.approx(
        skm.f1_score(targets, scores.argmax(1), labels=[0, 1, 2], average="macro")
    )


def test_single_label_report_top5_nan_below_five_classes() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1]])
    rep = single_label_report(scores, [1, 2])
    assert math.isnan(rep.top5_accuracy)
    assert rep.top1_accuracy == 0.5
    assert list(rep.per_class["class_name"]) == ["0", "1", "2"]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    scores = np.zeros((4, 3))
    with pytest.raises(MetricInputError, match="scores have N = 4"):
        topk_accuracy(scores, [0, 1, 2])
    with pytest.raises(MetricInputError, match=r"\[0, 3\)"):
        topk_accuracy(scores, [0, 1, 2, 3])
    with pytest.raises(MetricInputError, match="values in"):
        confusion_matrix(scores, [0, -1, 2, 1])
    with pytest.raises(MetricInputError, match="integer class indices"):
        topk_accuracy(scores, [0.5, 1, 2, 0])
    with pytest.raises(MetricInputError, match="k must be >= 1"):
        topk_accuracy(scores, [0, 1, 2, 0], k=0)
    with pytest.raises(MetricInputError, match="positive integer"):
        topk_accuracy(scores, [0, 1, 2, 0], k=2.5)  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match=r"shape \[N, C\]"):
        topk_accuracy(np.zeros(4), [0, 1, 2, 0])
    with pytest.raises(MetricInputError, match="NaN or infinite"):
        topk_accuracy(np.array([[np.nan, 0.0]]), [0])
    with pytest.raises(MetricInputError, match="binary"):
        mean_average_precision_at_k(scores, np.full((4, 3), 2))
    with pytest.raises(MetricInputError, match=r"shape \(4, 3\)"):
        mean_average_precision_at_k(scores, np.zeros((4, 2)))
    with pytest.raises(MetricInputError, match="k must be >= 1"):
        average_precision_at_k([1.0, 0.0], [1, 0], k=-1)
    with pytest.raises(MetricInputError, match="unknown AP@k definition 'trec'"):
        average_precision_at_k([1.0, 0.0], [1, 0], k=1, definition="trec")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="no_relevant"):
        average_precision([1.0, 0.0], [1, 0], no_relevant="skip")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="unknown multi-label rule 'top1'"):
        multilabel_predict(scores, rule="top1")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="threshold"):
        multilabel_predict(scores, rule="threshold")
    with pytest.raises(MetricInputError, match="at least 2 classes"):
        multilabel_predict(np.zeros((3, 1)))
    with pytest.raises(MetricInputError, match="binary"):
        multilabel_report(scores, np.array([[0, 1, 3]] * 4))
    with pytest.raises(MetricInputError, match="class_names has 2 entries"):
        single_label_report(scores, [0, 1, 2, 0], class_names=["a", "b"])
    with pytest.raises(MetricInputError, match="unknown average"):
        precision_recall_f1(np.zeros((2, 2)), np.zeros((2, 2)), average="weighted")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="num_classes = 4"):
        confusion_matrix(scores, [0, 1, 2, 0], num_classes=4)
    # The error class is a ValueError so callers may catch either.
    assert issubclass(MetricInputError, ValueError)


# --------------------------------------------------------------------------------------------
# Documentation stays in sync
# --------------------------------------------------------------------------------------------


def test_docs_name_every_definition_and_rule() -> None:
    doc_md = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    module_doc = M.__doc__ or ""
    for text in (doc_md, module_doc):
        for name in (*AP_DEFINITIONS, *M.MULTILABEL_RULES, "1.7.3", "1.7.4", "zero_division"):
            assert name in text, name
    assert DEFAULT_AP_DEFINITION in AP_DEFINITIONS
