"""Losses of the dense heads and class weights computed from the labels.

* **Segmentation**: pixel-wise cross-entropy over ``[B, K, H, W]`` logits and ``[B, H, W]``
  integer labels; pixels labelled ``ignore_index`` contribute nothing (neither to the sum nor to
  the count of the mean). With class weights ``w``, the mean is weighted as PyTorch defines it:
  ``sum_i w[y_i] * ce_i / sum_i w[y_i]`` over non-ignored pixels. A batch whose pixels are all
  ignored has loss 0 (with a gradient of zeros), not NaN.
* **Per-pixel regression**: MSE, L1 or Huber (``delta`` in scaled units) between the
  network's output and ``target * scale`` over the valid pixels: a target pixel is invalid when
  it is NaN, equals ``nodata``, or is outside an optional mask; per output channel when the
  target has several. The mean is over valid elements; no valid element gives 0.
* **Multi-task**: ``sum_t weight_t * loss_t`` (:class:`MultiTaskLoss`), each task with its own
  loss and weight.

Class weights (:func:`class_weights_from_counts`, counted in one pass over the label rasters or
tensors by :class:`ClassCounter`), with ``n_c`` the pixels of class ``c``, ``N = sum_c n_c`` and
``K`` classes, ignored pixels excluded:

* ``inverse`` (also ``auto``): ``w_c = N / (K n_c)``, inverse class frequency normalised so
  that a balanced set has all weights 1 (King and Zeng, "Logistic Regression in Rare Events
  Data", Political Analysis 2001; scikit-learn's ``class_weight="balanced"``).
* ``median``: median frequency balancing, ``w_c = median_k(f_k) / f_c`` with
  ``f_c = n_c / P_c`` where ``P_c`` is the number of pixels of the images in which class ``c``
  occurs (Eigen and Fergus, "Predicting Depth, Surface Normals and Semantic Labels with a Common
  Multi-Scale Convolutional Architecture", ICCV 2015); the median is over classes present.

A class absent from the labels gets weight 0 (it never occurs as a target, so its weight would
not act) and a warning names it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msclip.arrays import as_numpy
from msclip.errors import LabelError

__all__ = [
    "CLASS_WEIGHT_METHODS",
    "ClassCounter",
    "MultiTaskLoss",
    "RegressionLoss",
    "SegmentationLoss",
    "build_task_loss",
    "class_weights_from_counts",
    "compute_class_weights",
    "resolve_class_weights",
    "valid_target_mask",
]

logger = logging.getLogger(__name__)

#: Accepted names of computed class weights (``auto`` is ``inverse``).
CLASS_WEIGHT_METHODS = ("auto", "inverse", "median")


# -- class weights ------------------------------------------------------------------------------
class ClassCounter:
    """Counts label pixels per class in one pass, for :func:`class_weights_from_counts`.

    Args:
        num_classes: ``K``.
        ignore_index: label value to skip (``None``: none).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise LabelError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        #: Pixels of each class.
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        #: Pixels of the images in which each class occurs (median frequency balancing).
        self.present_pixels = np.zeros(self.num_classes, dtype=np.int64)
        self.images = 0

    def _count(self, arr: np.ndarray, where: str, skip: float | None = None) -> np.ndarray:
        valid = arr.ravel()
        if self.ignore_index is not None:
            valid = valid[valid != self.ignore_index]
        if skip is not None:
            valid = valid[valid != skip]
        if valid.size and (valid.min() < 0 or valid.max() >= self.num_classes):
            bad = valid[(valid < 0) | (valid >= self.num_classes)]
            values = sorted(set(bad[:10].tolist()))
            message = (
                f"{where}: label values {values} are outside the {self.num_classes} classes "
                f"0..{self.num_classes - 1} and are not the ignore index {self.ignore_index}"
            )
            if values[-1] < 0:  # no class list holds a negative class: unlabelled pixels
                raise LabelError(
                    f"{message}; a value below 0 is no class: if {values[0]} marks unlabelled "
                    f"pixels, make it the ignore index (ignore_index {values[0]})",
                    param="ignore_index",
                )
            raise LabelError(f"{message}; fix the labels or the number of classes")
        return np.bincount(valid, minlength=self.num_classes).astype(np.int64)

    def _add_image(self, counts: np.ndarray) -> None:
        self.counts += counts
        self.present_pixels[counts > 0] += int(counts.sum())
        self.images += 1

    def update(self, labels: Any, where: str = "labels") -> None:
        """Count one label image ``[H, W]`` (or a batch ``[B, H, W]``, each image counted as
        one image)."""
        arr = _label_array(labels, where)
        if arr.ndim == 3:
            for a in arr:
                self._add_image(self._count(a, where))
        else:
            self._add_image(self._count(arr, where))

    def update_file(self, path: str | os.PathLike, band: int = 1) -> None:
        """Count a single-band label raster block by block (memory stays small); pixels equal
        to the file's nodata value (NaN pixels when it is NaN) are skipped like
        ``ignore_index``."""
        import rasterio

        counts = np.zeros(self.num_classes, dtype=np.int64)
        with rasterio.open(path) as src:
            nodata = src.nodata
            nan_nodata = nodata is not None and math.isnan(nodata)
            for _, window in src.block_windows(band):
                raw = src.read(band, window=window)
                if nan_nodata and np.issubdtype(raw.dtype, np.floating):
                    # float labels with NaN nodata: NaN never equals itself, so drop it here
                    raw = raw[~np.isnan(raw)][None]
                arr = _label_array(raw, str(path))
                counts += self._count(arr, str(path), None if nan_nodata else nodata)
        self._add_image(counts)

    def weights(self, method: str = "auto") -> np.ndarray:
        """Class weights ``[K]`` float64 from the counts (:func:`class_weights_from_counts`)."""
        return class_weights_from_counts(self.counts, method, self.present_pixels)


def _label_array(labels: Any, where: str) -> np.ndarray:
    arr = as_numpy(labels)
    if arr.ndim not in (2, 3):
        raise LabelError(f"{where}: labels must be [H, W] or [B, H, W], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise LabelError(_not_indices(arr, where), param="labels")
    return arr.astype(np.int64, copy=False)


def _not_indices(arr: np.ndarray, where: str) -> str:
    """Why a label array is not class indices: its values that are not whole numbers (the first
    one and its position, and how many), or its type."""
    if not np.issubdtype(arr.dtype, np.floating):
        return f"{where}: labels must be integer class indices, got {arr.dtype} values"
    bad = ~np.isfinite(arr) | (arr != np.round(arr))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    at = ", ".join(f"{n} {i}" for n, i in zip(("image", "row", "column")[-arr.ndim :], first))
    return (
        f"{where}: labels must be whole class indices, but {int(bad.sum())} value(s) are not, "
        f"first {float(arr[first])!r} at {at}; store the classes as integers (a label raster's "
        "nodata value marks pixels without a class)"
    )


def class_weights_from_counts(
    counts: Sequence[int] | np.ndarray,
    method: str = "auto",
    present_pixels: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Class weights from per-class pixel counts (formulas in the module docstring).

    Args:
        counts: pixels per class ``n_c``.
        method: ``auto``/``inverse`` or ``median``.
        present_pixels: ``P_c`` (pixels of the images where class ``c`` occurs), required by
            ``median``.

    Raises:
        LabelError: unknown method, no labelled pixel at all, or ``median`` without
            ``present_pixels``.
    """
    n = np.asarray(counts, dtype=np.float64)
    if method not in CLASS_WEIGHT_METHODS:
        raise LabelError(
            f"unknown class-weight method {method!r}; use {', '.join(CLASS_WEIGHT_METHODS)} or "
            "a list of weights"
        )
    if n.sum() <= 0:
        raise LabelError("no labelled pixel to compute class weights from (all ignored?)")
    present = n > 0
    if not present.all():
        warnings.warn(
            f"classes {np.flatnonzero(~present).tolist()} have no labelled pixel; their class "
            "weight is 0",
            stacklevel=2,
        )
    w = np.zeros_like(n)
    if method in ("auto", "inverse"):
        w[present] = n.sum() / (len(n) * n[present])
        return w
    if present_pixels is None:
        raise LabelError("median frequency balancing needs the pixels of the images per class")
    p = np.asarray(present_pixels, dtype=np.float64)
    freq = n[present] / p[present]
    w[present] = np.median(freq) / freq
    return w


def compute_class_weights(
    labels: Iterable[Any],
    num_classes: int,
    method: str = "auto",
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Class weights counted in one pass over label images.

    Args:
        labels: label arrays/tensors ``[H, W]`` or ``[B, H, W]``, label raster paths, or
            ``(image, label)`` pairs whose second item is one of those (a dataset).
        num_classes: ``K``.
        method: ``auto``/``inverse`` or ``median``.
        ignore_index: label value to skip.
    """
    counter = ClassCounter(num_classes, ignore_index)
    for i, item in enumerate(labels):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            item = item[1]
        if isinstance(item, Mapping):
            item = item.get("label", item.get("labels"))
        if isinstance(item, (str, os.PathLike)):
            counter.update_file(item)
        else:
            counter.update(item, where=f"labels[{i}]")
    return counter.weights(method)


def resolve_class_weights(
    spec: Any,
    num_classes: int,
    labels: Iterable[Any] | None = None,
    ignore_index: int | None = 255,
) -> torch.Tensor | None:
    """Turn a class-weight option into a ``[K]`` float32 tensor (or ``None``).

    Args:
        spec: ``None``; a list/array of ``K`` non-negative weights; a comma-separated string of
            them; or ``auto``/``inverse``/``median`` (computed from ``labels``).
        num_classes: ``K``.
        labels: what :func:`compute_class_weights` reads, for computed weights.
        ignore_index: label value to skip when counting.

    Raises:
        LabelError: wrong length, negative or non-finite weights, or computed weights without
            labels.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() in CLASS_WEIGHT_METHODS:
        if labels is None:
            raise LabelError(f"class weights {spec!r} are computed from labels; none were given")
        w = compute_class_weights(labels, num_classes, spec.strip().lower(), ignore_index)
        return torch.as_tensor(w, dtype=torch.float32)
    if isinstance(spec, str):
        try:
            spec = [float(v) for v in spec.replace(" ", "").split(",") if v]
        except ValueError:
            raise LabelError(
                f"class weights {spec!r} are neither {', '.join(CLASS_WEIGHT_METHODS)} nor a "
                "comma-separated list of numbers"
            ) from None
    w = torch.as_tensor(spec, dtype=torch.float32).flatten()
    if w.numel() != num_classes:
        raise LabelError(
            f"{w.numel()} class weights given for {num_classes} classes; give one per class, in "
            f"the classes' order, or a method ({', '.join(CLASS_WEIGHT_METHODS)})",
            param="class_weights",
        )
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise LabelError(f"class weights must be finite, >= 0 and not all 0; got {w.tolist()}")
    return w


# -- losses --------------------------------------------------------------------------------------
class SegmentationLoss(nn.Module):
    """Cross-entropy over pixels with ``ignore_index`` and optional class weights.

    Args:
        num_classes: ``K``.
        ignore_index: label value excluded from the loss (``None``: every pixel counts).
        class_weights: ``[K]`` weights (see :func:`resolve_class_weights`).
        check_labels: refuse label values outside ``0..K-1`` (other than ``ignore_index``);
            costs one min/max per batch.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        check_labels: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.check_labels = check_labels
        w = resolve_class_weights(class_weights, num_classes) if class_weights is not None else None
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``[B, K, H, W]`` logits against ``[B, H, W]`` labels."""
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise LabelError(
                f"logits must be [B, {self.num_classes}, H, W], got {tuple(logits.shape)}"
            )
        if labels.shape != logits.shape[:1] + logits.shape[2:]:
            raise LabelError(
                f"labels of shape {tuple(labels.shape)} do not match logits "
                f"{tuple(logits.shape)} (expected [B, H, W])"
            )
        labels = labels.long()
        ignore = -100 if self.ignore_index is None else int(self.ignore_index)
        valid = labels != ignore
        if self.check_labels and valid.any():
            v = labels[valid]
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= self.num_classes:
                raise LabelError(
                    f"label values {lo}..{hi} are outside the {self.num_classes} classes and "
                    f"not the ignore index {self.ignore_index}"
                )
        if not valid.any():
            return logits.sum() * 0.0
        w = self.class_weights
        if w is not None:
            w = w.to(device=logits.device, dtype=logits.dtype)
            if float(w[labels[valid]].sum()) == 0.0:  # only zero-weight classes: 0, not NaN
                return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, weight=w, ignore_index=ignore)


def valid_target_mask(
    target: torch.Tensor, nodata: float | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of usable target values: finite, not ``nodata``, inside ``mask``."""
    valid = torch.isfinite(target)
    if nodata is not None and not math.isnan(nodata):
        valid &= target != nodata
    if mask is not None:
        m = mask.bool()
        while m.ndim < valid.ndim:
            m = m.unsqueeze(1)
        valid &= m
    return valid


class RegressionLoss(nn.Module):
    """Per-pixel MSE, L1 or Huber loss over valid target pixels.

    Args:
        kind: ``mse``, ``l1`` or ``huber``.
        nodata: target value marking unlabelled pixels (NaN always does).
        scale: the network predicts ``target * scale`` (targets are multiplied by it here).
        huber_delta: Huber threshold in scaled units.
    """

    KINDS = ("mse", "l1", "huber")

    def __init__(
        self,
        kind: str = "mse",
        nodata: float | None = None,
        scale: float = 1.0,
        huber_delta: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise LabelError(
                f"regression loss must be one of {', '.join(self.KINDS)}, got {kind!r}"
            )
        if not math.isfinite(scale) or scale == 0:
            raise LabelError(f"target scale must be finite and non-zero, got {scale}")
        if not huber_delta > 0:
            raise LabelError(f"huber_delta must be > 0, got {huber_delta}")
        self.kind = kind
        self.nodata = nodata
        self.scale = float(scale)
        self.huber_delta = float(huber_delta)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean loss of ``[B, K, H, W]`` predictions against ``[B, K, H, W]`` (or ``[B, H, W]``
        when ``K = 1``) targets; ``mask`` ``[B, H, W]`` marks pixels to use."""
        if target.ndim == pred.ndim - 1 and pred.shape[1] == 1:
            target = target.unsqueeze(1)
        if target.shape != pred.shape:
            raise LabelError(
                f"targets of shape {tuple(target.shape)} do not match predictions "
                f"{tuple(pred.shape)}"
            )
        target = target.to(pred.dtype)
        valid = valid_target_mask(target, self.nodata, mask)
        if not valid.any():
            return pred.sum() * 0.0
        p = pred[valid]
        t = target[valid] * self.scale
        if self.kind == "mse":
            return F.mse_loss(p, t)
        if self.kind == "l1":
            return F.l1_loss(p, t)
        return F.huber_loss(p, t, delta=self.huber_delta)


def build_task_loss(task: Any, labels: Iterable[Any] | None = None) -> nn.Module:
    """The loss of a :class:`msclip.heads.dense.DenseTask` (class weights resolved from
    ``labels`` when the task asks for computed ones)."""
    if task.kind == "segmentation":
        if task.loss != "cross_entropy":
            raise LabelError(
                f"task {task.name!r}: segmentation uses cross_entropy, not {task.loss!r}"
            )
        w = resolve_class_weights(task.class_weights, task.num_outputs, labels, task.ignore_index)
        return SegmentationLoss(task.num_outputs, task.ignore_index, w)
    return RegressionLoss(task.loss, task.nodata, task.scale, task.huber_delta)


class MultiTaskLoss(nn.Module):
    """``sum_t weight_t * loss_t(outputs[t], targets[t])`` over the tasks.

    Args:
        losses: ``{task name: loss module}``.
        weights: ``{task name: weight}`` (1 when absent).
    """

    def __init__(
        self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        if not losses:
            raise LabelError("a multi-task loss needs at least one task")
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in self.losses}

    @classmethod
    def from_tasks(
        cls, tasks: Sequence[Any], labels: Mapping[str, Iterable[Any]] | None = None
    ) -> MultiTaskLoss:
        """Losses and weights of :class:`msclip.heads.dense.DenseTask` objects; ``labels`` maps
        task names to what computed class weights are counted from."""
        labels = labels or {}
        return cls(
            {t.name: build_task_loss(t, labels.get(t.name)) for t in tasks},
            {t.name: t.loss_weight for t in tasks},
        )

    def forward(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and each task's (unweighted) loss as floats.

        Raises:
            LabelError: a task without output or target.
        """
        missing = [k for k in self.losses if k not in outputs or k not in targets]
        if missing:
            raise LabelError(f"tasks {missing} lack outputs or targets")
        total = None
        parts: dict[str, float] = {}
        for name, loss_fn in self.losses.items():
            if isinstance(loss_fn, RegressionLoss):
                value = loss_fn(outputs[name], targets[name], (masks or {}).get(name))
            else:
                value = loss_fn(outputs[name], targets[name])
            parts[name] = float(value.detach())
            term = value * self.weights[name]
            total = term if total is None else total + term
        return total, parts
