"""Heads trained by gradient descent on features held in memory: a linear head and a
text-initialised head.

* **Linear head** (:class:`LinearHead`) trained by AdamW (Loshchilov and Hutter, ICLR 2019) for
  sets too large for L-BFGS: batch norm without affine parameters, then a linear layer (the
  linear-probe head of MAE, He et al., CVPR 2022, and SMARTIES); peak learning rate
  ``1e-3 * batch / 256``, cosine decay, no weight decay by default.
* **Text-initialised head** (:class:`TextInitHead`): a linear classifier whose weights start
  from the zero-shot classifier (class-prompt embeddings and the published logit scale 100), so
  before training it is zero-shot classification exactly, and training moves from there (the
  zero-shot initialisation of WiSE-FT and LP-FT: Wortsman et al., CVPR 2022; Kumar et al.,
  ICLR 2022).

:func:`fit_head` trains any head module on a features tensor or (memory-mapped) array, the form
the feature cache provides; :func:`linear_probe` and :func:`text_linear_probe` wrap it into a
:class:`~msclip.heads.probes.ProbeResult` with bootstrap intervals. Both heads describe
themselves with ``config()`` and are rebuilt by :func:`build_head`, so a head-only checkpoint is
its state dict plus that config.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import HeadConfigError, HeadInputError
from msclip.eval.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from msclip.heads.probes.common import (
    TASKS,
    ArrayLike,
    ProbeResult,
    _check_positive,
    _check_positive_int,
    _num_classes,
    _require_two_classes,
    _result,
    _to_array,
    check_features,
    check_labels,
    check_targets,
)
from msclip.heads.seeding import seeded
from msclip.layer_decay import no_weight_decay

__all__ = [
    "LinearHead",
    "TextInitHead",
    "build_head",
    "fit_head",
    "linear_probe",
    "predict_head",
    "text_linear_probe",
]


class LinearHead(nn.Module):
    """Batch norm without affine parameters, then a linear layer (the linear-probe head of MAE
    and SMARTIES). For regression, outputs are mapped to target units by fixed buffers
    ``target_mean`` / ``target_std`` (set from the training targets by :func:`fit_head`).

    Args:
        in_features: Feature width ``D``.
        out_features: Classes or regression outputs.
        batch_norm: Put the (non-affine) batch norm first.
    """

    def __init__(self, in_features: int, out_features: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.norm = nn.BatchNorm1d(in_features, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_features, out_features)
        self.register_buffer("target_mean", torch.zeros(out_features))
        self.register_buffer("target_std", torch.ones(out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.norm(features.float()))
        return out * self.target_std + self.target_mean

    def config(self) -> dict[str, Any]:
        """What :func:`build_head` needs to rebuild this head (JSON-serialisable)."""
        return {
            "type": "linear",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "batch_norm": isinstance(self.norm, nn.BatchNorm1d),
        }


class TextInitHead(nn.Module):
    """A linear classifier initialised from the zero-shot classifier.

    ``logits = scale * normalize(x) @ weight.T (+ bias)``, with ``weight`` starting as the
    class-prompt embeddings of :func:`msclip.zero_shot.build_classifier` and ``scale`` as the
    published logit scale 100: before training, the logits are those of
    :func:`msclip.zero_shot.zero_shot_logits` to the bit.

    Args:
        classifier: Class-prompt embeddings ``[C, D]`` (rows L2-normalised).
        scale: Logit scale (the published 100).
        bias: Add a trainable per-class bias, starting at 0.
        learnable_scale: Train the scale too.
        class_names: Optional class names, kept for records.
    """

    def __init__(
        self,
        classifier: torch.Tensor,
        scale: float | None = None,
        bias: bool = False,
        learnable_scale: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        from msclip.zero_shot import LOGIT_SCALE

        w = torch.as_tensor(classifier).detach().float().cpu().clone()
        if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
            raise HeadInputError(
                f"classifier must be class-prompt embeddings [C, D]; got shape {tuple(w.shape)}"
            )
        if not torch.isfinite(w).all():
            raise HeadInputError("classifier holds NaN or infinite values")
        if class_names is not None and len(class_names) != w.shape[0]:
            raise HeadInputError(
                f"{len(class_names)} class names for a classifier of {w.shape[0]} classes"
            )
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(w.shape[0])) if bias else None
        s = torch.tensor(float(LOGIT_SCALE if scale is None else scale), dtype=torch.float32)
        if learnable_scale:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Same operations, in the same order, as msclip.zero_shot.zero_shot_logits.
        img = F.normalize(features.float(), dim=-1)
        logits = self.scale * img @ self.weight.T
        return logits if self.bias is None else logits + self.bias

    def config(self) -> dict[str, Any]:
        """What :func:`build_head` needs to rebuild this head (JSON-serialisable)."""
        return {
            "type": "text-linear",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "learnable_scale": isinstance(self.scale, nn.Parameter),
            "class_names": self.class_names,
        }


def build_head(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a head from its :meth:`config` (weights to be loaded with ``load_state_dict``).

    Raises:
        HeadConfigError: Unknown head type or missing fields.
    """
    kind = config.get("type")
    try:
        if kind == "linear":
            return LinearHead(
                int(config["in_features"]),
                int(config["out_features"]),
                bool(config.get("batch_norm", True)),
            )
        if kind == "text-linear":
            w = torch.zeros(int(config["out_features"]), int(config["in_features"]))
            return TextInitHead(
                w,
                bias=bool(config.get("bias", False)),
                learnable_scale=bool(config.get("learnable_scale", False)),
                class_names=config.get("class_names"),
            )
    except KeyError as err:
        raise HeadConfigError(f"head config of type {kind!r} lacks the field {err}") from err
    raise HeadConfigError(f"unknown head type {kind!r}; known: 'linear', 'text-linear'")


_LOSSES = ("ce", "bce", "mse", "l1", "huber")


def _default_loss(task: str) -> str:
    return {"single-label": "ce", "multi-label": "bce", "regression": "mse"}[task]


def _loss_fn(name: str, huber_delta: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "ce":
        return F.cross_entropy
    if name == "bce":
        return F.binary_cross_entropy_with_logits
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    if name == "huber":
        return lambda a, b: F.huber_loss(a, b, delta=huber_delta)
    raise HeadConfigError(f"unknown loss {name!r}; choose one of {list(_LOSSES)}")


def _rows(x: np.ndarray | torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(idx)].float()
    if not isinstance(x, np.memmap):
        return torch.from_numpy(np.asarray(x[idx], dtype=np.float32))
    # Sorted reads are kinder to a memory map; the order is restored after.
    order = np.argsort(idx, kind="stable")
    block = np.asarray(x[idx[order]], dtype=np.float32)
    out = np.empty_like(block)
    out[order] = block
    return torch.from_numpy(out)


def _prepare_targets(
    task: str, targets: ArrayLike, n: int, num_classes: int | None
) -> tuple[torch.Tensor, int]:
    if task == "regression":
        t = check_targets(targets, "train_targets", n)
        return torch.from_numpy(t).float(), t.shape[1]
    labels, got = check_labels(targets, "train_targets", n, num_classes)
    if got != task:
        raise HeadInputError(f"task is {task} but the training labels are {got}")
    _require_two_classes(labels, task, "train_targets")
    c = _num_classes(task, [labels], num_classes)
    if task == "single-label":
        return torch.from_numpy(labels), c
    return torch.from_numpy(labels).float(), c


def _infer_task(targets: ArrayLike, task: str | None) -> str:
    if task is not None:
        if task not in TASKS:
            raise HeadConfigError(f"unknown task {task!r}; choose one of {list(TASKS)}")
        return task
    arr = _to_array(targets, "targets")
    if arr.ndim == 2:
        return "multi-label"
    if np.issubdtype(arr.dtype, np.floating) and np.any(arr != np.round(arr)):
        raise HeadConfigError(
            "train targets hold non-integer values: pass task='regression' for regression, or "
            "integer class indices for classification"
        )
    return "single-label"


def fit_head(
    head: nn.Module,
    features: ArrayLike,
    targets: ArrayLike,
    task: str | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float | None = None,
    weight_decay: float = 0.0,
    loss: str | None = None,
    huber_delta: float = 1.0,
    warmup_epochs: int = 0,
    num_classes: int | None = None,
    seed: int = 0,
    val_features: ArrayLike | None = None,
    val_targets: ArrayLike | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train a head on features held in memory (or memory-mapped) with AdamW.

    Each epoch visits the rows in a seeded random order, in batches of ``batch_size`` (a last
    batch of one row joins the previous one, since batch norm needs two); the learning rate
    warms up linearly for ``warmup_epochs`` then decays by a cosine to 0, per step. Norm
    parameters, biases and the scale get no weight decay. Regression heads with
    ``target_mean`` / ``target_std`` buffers (:class:`LinearHead`) get them set to the training
    targets' statistics, and the loss is computed in those standardised units.

    Args:
        head: Any module mapping ``[B, D]`` float features to ``[B, outputs]``.
        features: Training features ``[N, D]``.
        targets: Class indices ``[N]``, 0/1 labels ``[N, C]`` or regression targets.
        task: ``single-label``, ``multi-label`` or ``regression`` (inferred from the targets
            when omitted: 2-D is multi-label, integers single-label).
        epochs: Passes over the data.
        batch_size: Rows per step.
        lr: Peak learning rate; ``1e-3 * batch_size / 256`` by default.
        weight_decay: AdamW's decoupled weight decay.
        loss: ``ce`` (single-label), ``bce`` (multi-label), ``mse`` / ``l1`` / ``huber``
            (regression); the first applicable by default.
        huber_delta: ``delta`` of the Huber loss (standardised target units).
        warmup_epochs: Epochs of linear warm-up.
        num_classes: ``C`` for single-label targets (``max + 1`` by default).
        seed: Seed of the batch order (and of dropout, if the head has any).
        val_features: Optional validation features, whose loss is recorded per epoch.
        val_targets: Their targets.
        progress: Show a progress bar.

    Returns:
        One dict per epoch: ``epoch``, ``loss`` (mean training loss), ``lr`` (at the end of
        the epoch) and ``val_loss`` when a validation split is given.

    Raises:
        HeadInputError: Bad features or targets.
        HeadConfigError: Bad settings, or a loss that does not fit the task.
    """
    task = _infer_task(targets, task)
    epochs = _check_positive_int(epochs, "epochs", minimum=0)
    batch_size = _check_positive_int(batch_size, "batch_size", minimum=2)
    warmup_epochs = _check_positive_int(warmup_epochs, "warmup_epochs", minimum=0)
    lr = 1e-3 * batch_size / 256 if lr is None else _check_positive(lr, "lr")
    if weight_decay < 0:
        raise HeadConfigError(f"weight_decay must be >= 0; got {weight_decay!r}")
    loss = loss or _default_loss(task)
    allowed = {"single-label": ("ce",), "multi-label": ("bce",)}.get(task, ("mse", "l1", "huber"))
    if loss not in allowed:
        raise HeadConfigError(f"loss {loss!r} does not fit a {task} task; use one of {allowed}")
    loss_fn = _loss_fn(loss, huber_delta)
    x = check_features(features, "train_features", dtype=None)
    n = x.shape[0]
    if n < 2:
        raise HeadInputError(f"training a head needs at least 2 samples; got {n}")
    y, width = _prepare_targets(task, targets, n, num_classes)
    out_features = getattr(head, "out_features", None)
    if out_features is not None and out_features != width:
        raise HeadInputError(
            f"the head has {out_features} outputs but the targets have {width} "
            f"{'outputs' if task == 'regression' else 'classes'}"
        )
    in_features = getattr(head, "in_features", None)
    if in_features is not None and in_features != x.shape[1]:
        raise HeadInputError(
            f"the head takes {in_features} features but the training features have {x.shape[1]}"
        )
    xt = x if not isinstance(features, torch.Tensor) else features.detach().cpu()
    if task == "regression" and hasattr(head, "target_mean") and hasattr(head, "target_std"):
        std = y.std(dim=0, unbiased=False)
        head.target_mean.copy_(y.mean(dim=0))
        head.target_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
    shift = getattr(head, "target_mean", None) if task == "regression" else None
    spread = getattr(head, "target_std", None) if task == "regression" else None

    def compute_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if shift is not None and spread is not None:
            out, target = (out - shift) / spread, (target - shift) / spread
        return loss_fn(out, target)

    decay, no_decay = [], []
    for name, p in head.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise HeadConfigError("the head has no trainable parameter")
    opt = torch.optim.AdamW(groups, lr=lr)

    gen = np.random.default_rng(seed)
    batches_per_epoch = max(1, n // batch_size if n % batch_size == 1 else -(-n // batch_size))
    total = max(1, epochs * batches_per_epoch)
    warm = warmup_epochs * batches_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    history: list[dict[str, float]] = []
    from msclip.progress import progress_bar

    with seeded(seed):
        head.train()
        for epoch in progress_bar(range(epochs), desc="head", unit="epoch", disable=not progress):
            perm = gen.permutation(n)
            bounds = [*range(0, n, batch_size), n]
            if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
                bounds.pop(-2)
            total_loss = 0.0
            for a, b in itertools.pairwise(bounds):
                idx = perm[a:b]
                out = head(_rows(xt, idx))
                batch_loss = compute_loss(out, y[torch.from_numpy(idx)])
                opt.zero_grad(set_to_none=True)
                batch_loss.backward()
                opt.step()
                sched.step()
                total_loss += float(batch_loss.detach()) * len(idx)
            record = {"epoch": epoch + 1, "loss": total_loss / n, "lr": sched.get_last_lr()[0]}
            if val_features is not None and val_targets is not None:
                record["val_loss"] = _eval_loss(
                    head, val_features, val_targets, task, num_classes, compute_loss
                )
                head.train()
            history.append(record)
    head.eval()
    return history


def _eval_loss(
    head: nn.Module,
    features: ArrayLike,
    targets: ArrayLike,
    task: str,
    num_classes: int | None,
    compute_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    x = check_features(features, "val_features", dtype=None)
    if task == "regression":
        y = torch.from_numpy(check_targets(targets, "val_targets", x.shape[0])).float()
    else:
        labels, _ = check_labels(targets, "val_targets", x.shape[0], num_classes)
        y = torch.from_numpy(labels) if task == "single-label" else torch.from_numpy(labels).float()
    head.eval()
    total = 0.0
    with torch.inference_mode():
        for a in range(0, x.shape[0], 4096):
            idx = np.arange(a, min(x.shape[0], a + 4096))
            total += float(compute_loss(head(_rows(x, idx)), y[torch.from_numpy(idx)])) * len(idx)
    return total / x.shape[0]


def scoring_task(task: str) -> str:
    """The task of :func:`predict_head`: one of :data:`TASKS`, ``classification`` (as head files
    record single-label classification) read as ``single-label``.

    Raises:
        HeadConfigError: an unknown task (a misspelt one would leave logits unscored).
    """
    if task == "classification":
        return "single-label"
    if task not in TASKS:
        raise HeadConfigError(
            f"unknown task {task!r}; choose one of {list(TASKS)} (or 'classification')"
        )
    return task


def predict_head(
    head: nn.Module, features: ArrayLike, task: str, batch_size: int = 4096
) -> np.ndarray:
    """Scores of a trained head, in eval mode: softmax probabilities (single-label), sigmoid
    probabilities (multi-label) or the outputs (regression), float64 ``[N, outputs]``.

    A head whose outputs are probabilities already (``outputs = "probabilities"``: the kNN head
    of :mod:`msclip.heads.checkpoint`) is returned as it is. ``task`` may also be
    ``classification``, the single-label task as head files record it.

    Raises:
        HeadConfigError: an unknown task.
        HeadInputError: bad features, or features of another width than the head reads.
    """
    task = scoring_task(task)
    width = getattr(head, "in_features", None)
    x = check_features(features, "features", dim=width, dtype=None)
    activate = getattr(head, "outputs", "logits") == "logits"
    weight = next(itertools.chain(head.parameters(), head.buffers()), None)
    device = weight.device if weight is not None else torch.device("cpu")
    head.eval()
    outs = []
    with torch.inference_mode():
        for a in range(0, x.shape[0], batch_size):
            rows = _rows(x, np.arange(a, min(x.shape[0], a + batch_size))).to(device)
            out = head(rows).double()
            if activate and task == "single-label":
                out = out.softmax(dim=1)
            elif activate and task == "multi-label":
                out = out.sigmoid()
            outs.append(out.cpu())
    return torch.cat(outs).numpy()


def _head_probe(
    name: str,
    head: nn.Module,
    train_features: ArrayLike,
    train_targets: ArrayLike,
    test_features: ArrayLike,
    test_targets: ArrayLike,
    task: str,
    num_classes: int | None,
    hp: dict[str, Any],
    fit_kwargs: dict[str, Any],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> ProbeResult:
    epochs = fit_kwargs["epochs"]
    history = (
        fit_head(
            head,
            train_features,
            train_targets,
            task=task,
            num_classes=num_classes,
            seed=seed,
            **fit_kwargs,
        )
        if epochs > 0
        else []
    )
    scores = predict_head(head, test_features, task)
    n_train = _to_array(train_features, "train_features").shape[0]
    extra = {"head": head, "history": history}
    t = _to_array(test_targets, "test_targets")
    return _result(
        name, task, scores, t, hp, n_train, num_classes, n_resamples, confidence, seed, extra
    )


def linear_probe(
    train_features: ArrayLike,
    train_targets: ArrayLike,
    test_features: ArrayLike,
    test_targets: ArrayLike,
    task: str | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float | None = None,
    weight_decay: float = 0.0,
    loss: str | None = None,
    batch_norm: bool = True,
    num_classes: int | None = None,
    val_features: ArrayLike | None = None,
    val_targets: ArrayLike | None = None,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    progress: bool = False,
) -> ProbeResult:
    """Linear probe trained by AdamW: :class:`LinearHead` (seeded initialisation) fitted by
    :func:`fit_head`, evaluated on the test split. The validation split, when given, is only
    monitored (``extra["history"]``), not used for selection.

    Returns:
        :class:`ProbeResult` (``probe="linear"``; the trained head in ``extra["head"]``).
    """
    task = _infer_task(train_targets, task)
    x = check_features(train_features, "train_features", dtype=None)
    if task == "regression":
        width = check_targets(train_targets, "train_targets", x.shape[0]).shape[1]
    else:
        labels, _ = check_labels(train_targets, "train_targets", x.shape[0], num_classes)
        t_labels, _ = check_labels(test_targets, "test_targets", None, num_classes)
        width = _num_classes(task, [labels, t_labels], num_classes)
        num_classes = width if task == "single-label" else None
    with seeded(seed):
        head = LinearHead(x.shape[1], width, batch_norm)
    lr_used = 1e-3 * batch_size / 256 if lr is None else lr
    hp = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr_used,
        "weight_decay": weight_decay,
        "loss": loss or _default_loss(task),
        "batch_norm": batch_norm,
        "optimizer": "adamw",
        "schedule": "cosine",
        "seed": seed,
    }
    kwargs = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr_used,
        "weight_decay": weight_decay,
        "loss": loss,
        "val_features": val_features,
        "val_targets": val_targets,
        "progress": progress,
    }
    return _head_probe(
        "linear",
        head,
        x,
        train_targets,
        test_features,
        test_targets,
        task,
        num_classes,
        hp,
        kwargs,
        n_resamples,
        confidence,
        seed,
    )


def text_linear_probe(
    classifier: torch.Tensor,
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    bias: bool = False,
    learnable_scale: bool = False,
    class_names: Sequence[str] | None = None,
    val_features: ArrayLike | None = None,
    val_labels: ArrayLike | None = None,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    progress: bool = False,
) -> ProbeResult:
    """Single-label probe whose head starts as the zero-shot classifier (:class:`TextInitHead`)
    and is fine-tuned by AdamW (``epochs=0`` evaluates zero-shot classification itself).

    The default learning rate is lower than the linear probe's: the head starts from a good
    solution, and with the logit scale of 100 a small step in the weights is a large step in
    the logits.

    Returns:
        :class:`ProbeResult` (``probe="text-linear"``; the head in ``extra["head"]``).
    """
    head = TextInitHead(
        classifier, bias=bias, learnable_scale=learnable_scale, class_names=class_names
    )
    x = check_features(train_features, "train_features", dim=head.in_features, dtype=None)
    check_labels(train_labels, "train_labels", x.shape[0], head.out_features)
    hp = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "bias": bias,
        "learnable_scale": learnable_scale,
        "init": "zero-shot classifier",
        "optimizer": "adamw",
        "schedule": "cosine",
        "seed": seed,
    }
    kwargs = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "loss": "ce",
        "val_features": val_features,
        "val_targets": val_labels,
        "progress": progress,
    }
    return _head_probe(
        "text-linear",
        head,
        x,
        train_labels,
        test_features,
        test_labels,
        "single-label",
        head.out_features,
        hp,
        kwargs,
        n_resamples,
        confidence,
        seed,
    )
