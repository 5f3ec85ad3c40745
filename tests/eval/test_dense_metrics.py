"""Streamed dense metrics against plain one-shot NumPy references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from msclip.errors import MetricInputError
from msclip.eval.dense_metrics import (
    RegressionMetrics,
    SegmentationMetrics,
    confusion_matrix,
    segmentation_scores,
)
from msclip.eval.report import write_json

K, IGNORE = 5, 255


def _labels(seed: int, shape=(3, 40, 37)) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    target = r.integers(0, K, size=shape)
    pred = np.where(r.random(shape) < 0.6, target, r.integers(0, K, size=shape))
    target[r.random(shape) < 0.15] = IGNORE
    # Predictions made where the target is ignored must count nowhere: make them all class 4.
    pred[target == IGNORE] = 4
    return pred, target


def _reference(pred: np.ndarray, target: np.ndarray) -> dict:
    """One-shot NumPy reference written with loops over classes."""
    keep = target != IGNORE
    p, t = pred[keep], target[keep]
    iou, f1 = [], []
    for c in range(K):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
    tp_all = np.sum(p == t)
    return {
        "overall_accuracy": tp_all / t.size,
        "iou": np.array(iou),
        "f1": np.array(f1),
        "miou": np.nanmean(iou),
        "miou_micro": tp_all / (tp_all + 2 * np.sum(p != t)),
    }


def test_streamed_segmentation_metrics_match_numpy_with_ignore_index():
    acc = SegmentationMetrics(K, IGNORE, [f"c{i}" for i in range(K)])
    preds, targets = [], []
    for seed in range(4):
        p, t = _labels(seed)
        acc.update(torch.as_tensor(p), t)  # tensors and arrays both accepted
        preds.append(p)
        targets.append(t)
    ref = _reference(np.concatenate(preds), np.concatenate(targets))
    out = acc.compute()
    m = out["metrics"]
    assert m["overall_accuracy"] == pytest.approx(ref["overall_accuracy"], abs=1e-12)
    assert m["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert m["miou_micro"] == pytest.approx(ref["miou_micro"], abs=1e-12)
    assert [r["iou"] for r in out["per_class"]] == pytest.approx(ref["iou"].tolist(), abs=1e-12)
    assert [r["f1"] for r in out["per_class"]] == pytest.approx(ref["f1"].tolist(), abs=1e-12)
    assert m["n_pixels"] == sum(int((t != IGNORE).sum()) for t in targets)
    assert out["main_metric"] == "miou" and out["task"] == "segmentation"
    assert out["dense_settings"] == {"ignore_index": IGNORE}
    # The matrix itself, counted pixel by pixel.
    t_all, p_all = np.concatenate(targets).ravel(), np.concatenate(preds).ravel()
    manual = np.zeros((K, K), dtype=np.int64)
    for ti, pi in zip(t_all, p_all):
        if ti != IGNORE:
            manual[ti, pi] += 1
    assert np.array_equal(acc.confusion, manual)


def test_ignored_pixels_never_count_even_as_false_positives():
    target = np.array([[0, 1], [IGNORE, IGNORE]])
    pred = np.array([[0, 1], [2, 2]])  # class 2 predicted only on ignored pixels
    out = segmentation_scores(confusion_matrix(pred, target, 3, IGNORE))
    assert out["metrics"]["miou"] == 1.0 and out["metrics"]["overall_accuracy"] == 1.0
    row = out["per_class"][2]
    # Class 2 is absent from both targets and (counted) predictions: NaN, left out of the mean.
    assert math.isnan(row["iou"]) and math.isnan(row["f1"])
    assert out["metrics"]["classes_evaluated"] == 2


def test_an_ignore_index_that_is_a_class_number_is_excluded_from_every_metric():
    # 0 = "no data" in a 3-class label set: predictions of 0 on valid pixels are errors of the
    # true class, but class 0 itself is no class to score (it scored IoU 0 and halved the mean)
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([1, 2, 1, 0, 2, 2])
    acc = SegmentationMetrics(3, ignore_index=0)
    acc.update(pred, target)
    out = acc.compute()
    ious = [r["iou"] for r in out["per_class"]]
    assert math.isnan(ious[0]) and math.isnan(out["per_class"][0]["precision"])
    assert ious[1] == pytest.approx(0.5) and ious[2] == 1.0  # the pixel predicted 0: an FN of 1
    m = out["metrics"]
    assert m["miou"] == pytest.approx(0.75) and m["classes_evaluated"] == 2
    assert m["miou_micro"] == pytest.approx(3 / 4)  # TP 1 + 2 over TP + FP + FN of classes 1, 2
    assert m["overall_accuracy"] == pytest.approx(3 / 4)
    # the same matrix without the ignore index: class 0 has IoU 0 and counts
    plain = segmentation_scores(acc.confusion)["metrics"]
    assert plain["miou"] == pytest.approx(0.5) and plain["classes_evaluated"] == 3


def test_absent_and_missed_classes():
    # Class 1 is in the targets but never predicted (IoU 0, counts); class 2 is absent (NaN).
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0])
    out = segmentation_scores(confusion_matrix(pred, target, 3, None))
    ious = [r["iou"] for r in out["per_class"]]
    assert ious[0] == pytest.approx(0.5) and ious[1] == 0.0 and math.isnan(ious[2])
    assert out["metrics"]["miou"] == pytest.approx(0.25)
    assert out["metrics"]["mean_accuracy"] == pytest.approx(0.5)


def test_sum_of_per_tile_matrices_equals_the_whole_image_matrix():
    p, t = _labels(7, shape=(301, 257))
    whole = confusion_matrix(p, t, K, IGNORE)
    acc = SegmentationMetrics(K, IGNORE)
    for r in range(0, 301, 64):
        for c in range(0, 257, 50):
            part = SegmentationMetrics(K, IGNORE)
            part.update(p[r : r + 64, c : c + 50], t[r : r + 64, c : c + 50])
            acc.merge(part)
    assert np.array_equal(acc.confusion, whole)
    assert whole.sum() == int((t != IGNORE).sum())


def test_scores_are_arg_maxed_and_bad_inputs_refused():
    r = np.random.default_rng(0)
    scores = r.normal(size=(2, K, 6, 7))
    target = r.integers(0, K, size=(2, 6, 7))
    assert np.array_equal(
        confusion_matrix(scores, target, K), confusion_matrix(scores.argmax(1), target, K)
    )
    with pytest.raises(MetricInputError, match=r"target values \[5\] fall outside the 5 classes"):
        confusion_matrix(target, np.where(target == 0, 5, target), K, IGNORE)
    with pytest.raises(MetricInputError, match="do not match"):
        confusion_matrix(target[:, :3], target, K)
    with pytest.raises(MetricInputError, match="cannot merge"):
        SegmentationMetrics(K).merge(np.zeros((3, 3)))


def test_record_ready_results_serialise():
    acc = SegmentationMetrics(3, IGNORE)
    acc.update(np.array([[0, 1]]), np.array([[0, 2]]))
    out = acc.compute()
    assert set(out) == {"task", "main_metric", "metrics", "per_class", "confusion_matrix",
                        "dense_settings"}  # fmt: skip
    assert all(isinstance(v, (int, float)) for v in out["metrics"].values())


def _regression_batches(seed: int):
    r = np.random.default_rng(seed)
    for _ in range(5):
        target = r.normal(1000.0, 3.0, size=(2, 2, 9, 11))  # large mean: tests the streaming
        pred = target + r.normal(0.5, 2.0, size=target.shape)
        target[r.random(target.shape) < 0.1] = -9999.0
        target[r.random(target.shape) < 0.05] = np.nan
        pred[target == -9999.0] = np.nan  # predictions at nodata pixels are never read
        mask = r.random((2, 9, 11)) > 0.1
        yield pred * 10.0, target, mask  # predictions are in scaled units (scale 10)


def test_streamed_regression_metrics_match_numpy_with_nodata_masked(tmp_path):
    acc = RegressionMetrics(2, nodata=-9999.0, pred_scale=10.0, output_names=["a", "b"])
    ps, ts, ms = [], [], []
    for p, t, m in _regression_batches(0):
        acc.update(torch.as_tensor(p), t, m)
        ps.append(p / 10.0)
        ts.append(t)
        ms.append(m)
    p, t, m = np.concatenate(ps), np.concatenate(ts), np.concatenate(ms)
    out = acc.compute()
    rmse, r2 = [], []
    for c in range(2):
        v = np.isfinite(t[:, c]) & (t[:, c] != -9999.0) & m
        e = p[:, c][v] - t[:, c][v]
        y = t[:, c][v]
        row = out["per_class"][c]
        assert row["n"] == v.sum()
        assert row["rmse"] == pytest.approx(np.sqrt(np.mean(e**2)), rel=1e-12)
        assert row["mae"] == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
        assert row["bias"] == pytest.approx(np.mean(e), rel=1e-12)
        ref_r2 = 1 - np.sum(e**2) / np.sum((y - y.mean()) ** 2)
        assert row["r2"] == pytest.approx(ref_r2, rel=1e-9)
        rmse.append(row["rmse"])
        r2.append(ref_r2)
    assert out["metrics"]["rmse"] == pytest.approx(np.mean(rmse))
    assert out["metrics"]["r2"] == pytest.approx(np.mean(r2), rel=1e-9)
    assert out["main_metric"] == "rmse" and out["task"] == "pixel_regression"
    # Two half accumulators merged give the same figures.
    a, b = RegressionMetrics(2, -9999.0, 10.0), RegressionMetrics(2, -9999.0, 10.0)
    for i, (pp, tt, mm) in enumerate(_regression_batches(0)):
        (a if i % 2 else b).update(pp, tt, mm)
    merged = a.merge(b).compute()["per_class"]
    for x, y in zip(merged, out["per_class"]):
        assert x["r2"] == pytest.approx(y["r2"], rel=1e-9)
        assert x["rmse"] == pytest.approx(y["rmse"], rel=1e-12)
    path = write_json(tmp_path / "r.json", out)
    assert json.loads(path.read_text())["metrics"]["rmse"] == pytest.approx(out["metrics"]["rmse"])


def test_regression_r2_of_constant_targets_with_a_rounding_residue_is_nan():
    # m2_y of seven 0.7s is ~1e-32 rather than 0 (the float mean is off by an ulp)
    t = np.full((1, 1, 7), 0.7)
    acc = RegressionMetrics()
    acc.update(t + 0.01, t)
    assert math.isnan(acc.compute()["metrics"]["r2"])
    a, b = RegressionMetrics(), RegressionMetrics()
    a.update(t[..., :3] + 0.01, t[..., :3])
    b.update(t[..., 3:] + 0.01, t[..., 3:])
    assert math.isnan(a.merge(b).compute()["metrics"]["r2"])
    c = RegressionMetrics()
    c.update(np.zeros((1, 1, 2)), np.array([[[0.7, 0.8]]]))
    assert math.isfinite(a.merge(c).compute()["metrics"]["r2"])  # now the targets vary


def test_regression_edge_cases():
    acc = RegressionMetrics()
    acc.update(np.array([[1.0, 2.0]]), np.array([[5.0, 5.0]]))
    assert math.isnan(acc.compute()["metrics"]["r2"])  # constant targets: R² undefined
    assert acc.compute()["metrics"]["rmse"] == pytest.approx(math.sqrt((16 + 9) / 2))
    one = RegressionMetrics()
    one.update(np.ones((2, 1, 3, 3)), np.zeros((2, 3, 3)))  # [B, 1, H, W] against [B, H, W]
    assert one.compute()["metrics"]["mae"] == 1.0 and one.compute()["metrics"]["n_pixels"] == 18
    with pytest.raises(MetricInputError, match="non-finite predictions at valid pixels"):
        acc.update(np.array([[np.nan]]), np.array([[1.0]]))
    with pytest.raises(MetricInputError, match="do not match"):
        acc.update(np.zeros((1, 3)), np.zeros((1, 2)))
    empty = RegressionMetrics(nodata=0.0)
    empty.update(np.ones((2, 2)), np.zeros((2, 2)))
    assert empty.compute()["metrics"]["n_pixels"] == 0
    assert math.isnan(empty.compute()["metrics"]["rmse"])
