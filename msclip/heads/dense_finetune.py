"""Dense tasks in the fine-tuning runner: segmentation, per-pixel regression and multi-task.

:func:`run_dense_finetune` is what :func:`msclip.heads.finetune.run_finetune` (and so
``msclip-finetune``) runs for ``task`` ``segmentation``, ``pixel-regression`` or ``multi-task``:

* data: image / label raster pairs (:mod:`msclip.heads.dense_data`), grids checked, split;
* model: a :class:`~msclip.heads.dense.DenseModel`, one decoder per task
  (:mod:`msclip.heads.decoders`: ``linear``, ``fcn``, ``upernet``, ``segformer``) on the
  encoder's tapped blocks, one encoder pass feeding every head; the encoder ``frozen`` (run
  without a graph) or trained (``lora``, ``last-n``, ``full``, ``scratch``,
  :mod:`msclip.heads.modes`, layer-wise learning-rate decay);
* losses (:mod:`msclip.heads.losses`): cross-entropy with ``ignore_index`` and class weights (a
  list, or ``auto`` / ``median`` counted in one pass over the training labels, without the
  pixels the loss ignores), MSE / L1 / Huber over valid target pixels, summed with each task's
  weight;
* training: the runners' exactly resumable loop (:func:`msclip.heads.training.train_loop`),
  seeded random crops and flips per batch (``default_rng((seed, epoch, batch))``), validation
  loss and main metric every epoch;
* evaluation of validation and test images (``eval_mode``): an image no larger than the
  training crops is predicted whole (padded to the patch grid, cropped back); a larger one, with
  ``auto`` (the default) or ``sliding``, window by window at the crop size
  (:func:`predict_windows`: windows overlapping by a quarter, blended with the cosine window of
  scene prediction), so that the head sees the resolution it was trained at and memory does not
  grow with the square of the image's token count; ``whole`` predicts every image whole. The
  predictions are streamed through a confusion matrix or regression sums
  (:mod:`msclip.eval.dense_metrics`): OA, mIoU macro and micro, per-class IoU / F1
  (``ignore_index`` excluded); RMSE, MAE, R² (nodata masked);
* outputs: the head-only file ``<output_dir>/<label>/dense_head.safetensors``
  (:mod:`msclip.heads.dense_head`, bound to the encoder's fingerprint), LoRA adapters or the
  fine-tuned encoder, ``history.csv``, per-image test metrics ``test_images.csv``, the protocol
  card, and one record per task merged into the results folder's ``summary.csv`` /
  ``report.md``.

Frozen encoders are run on every training batch rather than cached: each batch is a different
random crop and flip, so no two passes see the same pixels.

:func:`evaluate_maskclip` scores the zero-shot dense maps of :class:`msclip.heads.maskclip.MaskCLIP`
on the same test images with the same metrics, for comparison with trained decoders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msclip.errors import HeadInputError
from msclip.hardware import resolve_device
from msclip.heads.dense import DenseModel, DenseTask
from msclip.heads.dense_data import (
    DenseData,
    DenseSamples,
    DenseTarget,
    from_csv,
    from_folders,
    random_crop_batch,
)
from msclip.heads.runconfig import FinetuneRunConfig
from msclip.heads.seeding import seeded

__all__ = [
    "EVAL_MODES",
    "RECORD_TASKS",
    "dense_label",
    "evaluate_dense",
    "evaluate_maskclip",
    "load_dense_data",
    "predict_windows",
    "run_dense_finetune",
]

logger = logging.getLogger(__name__)

#: Dense task kind -> the ``task`` of metric records.
RECORD_TASKS = {"segmentation": "segmentation", "pixel-regression": "pixel_regression"}
_MAIN = {"segmentation": "miou", "pixel-regression": "rmse"}
#: How validation and test images are predicted (see the module docstring).
EVAL_MODES = ("auto", "whole", "sliding")


def dense_label(cfg: FinetuneRunConfig) -> str:
    """The run's label: ``<decoder>-<encoder mode>`` (``last<n>`` for last-n)."""
    mode = cfg.encoder_mode if cfg.encoder_mode != "last-n" else f"last{cfg.last_n}"
    return f"{cfg.decoder}-{mode}"


def load_dense_data(cfg: FinetuneRunConfig) -> DenseData:
    """The image / raster pairs of a dense run (see :mod:`msclip.heads.dense_data`)."""
    targets = []
    for e in cfg.dense_task_entries():
        targets.append(
            DenseTarget(
                name=e["name"],
                kind=e["kind"],
                column=e["column"],
                ignore_index=int(e.get("ignore_index", cfg.ignore_index)),
                nodata=e.get("nodata", cfg.target_nodata),
                scale=float(e.get("scale", cfg.scale)),
            )
        )
    common = {
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "name": cfg.dataset_name,
        "classes": cfg.classes,
    }
    if cfg.csv:
        return from_csv(
            cfg.csv, targets, cfg.image_column, cfg.split_column, cfg.data_root, **common
        )
    return from_folders(cfg.image_dir, cfg.label_dir, targets[0], **common)  # type: ignore[arg-type]


class _RunNet(DenseModel):
    """The dense model of a run; a frozen encoder stays in eval mode while the heads train."""

    frozen = True

    def train(self, mode: bool = True) -> _RunNet:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self


class _Batch:
    """The rows of a training batch and their cropped targets (``len`` is the row count)."""

    def __init__(self, rows: np.ndarray, targets: dict[str, torch.Tensor]) -> None:
        self.rows = rows
        self.targets = targets

    def __len__(self) -> int:
        return len(self.rows)


def _class_weights(
    cfg: FinetuneRunConfig, entry: dict[str, Any], t: DenseTarget, samples: DenseSamples
) -> torch.Tensor | None:
    from msclip.heads.losses import ClassCounter, resolve_class_weights

    spec = entry.get("class_weights", cfg.class_weights)
    if t.kind != "segmentation" or spec is None:
        return None
    spec = [str(v) for v in spec]
    k = len(t.names)
    if len(spec) == 1 and spec[0].lower() in ("auto", "inverse", "median"):
        # one pass over the training labels as the loss sees them: the ignore index, the label
        # file's nodata and the pixels where the image has no data are left out
        counter = ClassCounter(k, t.ignore_index)
        for i in samples.data.splits["train"]:
            counter.update(samples[int(i)][1][t.name], where=samples.data.rasters[t.name][int(i)])
        return torch.as_tensor(counter.weights(spec[0].lower()), dtype=torch.float32)
    return resolve_class_weights([float(v) for v in spec], k)


def _dense_tasks(cfg: FinetuneRunConfig, samples: DenseSamples) -> list[DenseTask]:
    data = samples.data
    out = []
    for e, t in zip(cfg.dense_task_entries(), data.tasks):
        loss = e.get("loss", cfg.loss)
        if t.kind == "segmentation":
            loss = "cross_entropy"
        kwargs: dict[str, Any] = {}
        dec = e.get("decoder", cfg.decoder)
        if cfg.decoder_channels is not None and dec in ("fcn", "upernet"):
            kwargs["channels"] = cfg.decoder_channels
        elif cfg.decoder_channels is not None and dec == "segformer":
            kwargs["embed_dim"] = cfg.decoder_channels
        out.append(
            DenseTask(
                name=t.name,
                kind="segmentation" if t.kind == "segmentation" else "regression",
                num_outputs=len(t.names),
                decoder=dec,
                decoder_kwargs=kwargs,
                loss_weight=float(e.get("weight", 1.0)),
                ignore_index=t.ignore_index,
                class_weights=_class_weights(cfg, e, t, samples),
                loss=loss or "mse",
                huber_delta=float(e.get("huber_delta", cfg.huber_delta)),
            )
        )
    return out


def _run_key(cfg: FinetuneRunConfig, fingerprint: str, data: DenseData, label: str) -> str:
    from msclip.heads.runs import setting_facts

    facts = setting_facts(cfg)
    h = hashlib.sha256()
    h.update(json.dumps(facts, sort_keys=True, default=str).encode())
    h.update(fingerprint.encode())
    h.update(label.encode())
    h.update("\n".join(data.images).encode())
    for t in data.tasks:
        h.update("\n".join(data.rasters[t.name]).encode())
    for s in ("train", "val", "test"):
        h.update(np.ascontiguousarray(data.splits[s]).tobytes())
    return h.hexdigest()


def _check_one_image_batches(
    data: DenseData, tasks: Sequence[DenseTask], n_train: int, crop: int, patch: int
) -> None:
    """Refuse a train split whose batches hold one crop when a decoder's batch norm would then
    see a single value per channel (UPerNet's 1x1 pyramid-pooling bin always; every decoder on
    a crop of one patch), which fails in the first training step.

    Raises:
        HeadInputError: one training image and such a decoder or crop.
    """
    if n_train != 1:
        return
    one_patch = -(-crop // patch) == 1
    bad = [t.decoder for t in tasks if t.decoder == "upernet" or one_patch]
    if bad:
        why = f"a crop of {crop} px is one patch" if one_patch else "its 1x1 pooling bin"
        raise HeadInputError(
            f"{data.name}: the train split holds 1 image, so every batch is one crop and the "
            f"batch norm of the {bad[0]} decoder ({why}) cannot train on it; add training "
            "images (split column, val_fraction / test_fraction)",
            param="images",
        )


# -- evaluation ---------------------------------------------------------------------------------
def _metric_objects(data: DenseData) -> dict[str, Any]:
    from msclip.eval.dense_metrics import RegressionMetrics, SegmentationMetrics

    out: dict[str, Any] = {}
    for t in data.tasks:
        if t.kind == "segmentation":
            out[t.name] = SegmentationMetrics(len(t.names), t.ignore_index, t.names)
        else:
            out[t.name] = RegressionMetrics(len(t.names), None, 1.0, t.names)
    return out


def predict_windows(
    predict: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    x: torch.Tensor,
    tile: int,
    kinds: dict[str, str],
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """Predict one image window by window and blend the windows.

    The windows are ``tile`` pixels square (cut to the image where it is smaller), start every
    ``tile - tile // 4`` pixels, the last row and column shifted to end at the border (as
    :func:`msclip.heads.scene_predict.tile_starts` tiles a scene), and are blended with its
    cosine window; segmentation outputs are blended as probabilities (softmax of the logits),
    pixel-regression outputs as values.

    Args:
        predict: normalised image batch ``[B, C, h, w]`` -> ``{task: [B, K, h, w]}``.
        x: the image, ``[1, C, H, W]``.
        tile: window side in pixels (the training crop size).
        kinds: ``{task: segmentation | pixel-regression}`` of the outputs.
        batch_size: windows per call of ``predict``.

    Returns:
        ``{task: [1, K, H, W]}`` float32 on the CPU.
    """
    from msclip.heads.scene_predict import blend_window, tile_starts

    _, _, h, w = x.shape
    th, tw = min(int(tile), h), min(int(tile), w)
    starts = [(r, c) for r in tile_starts(h, th, max(1, th - th // 4))
              for c in tile_starts(w, tw, max(1, tw - tw // 4))]  # fmt: skip
    weight = torch.from_numpy(np.outer(blend_window(th), blend_window(tw)).astype(np.float32))
    acc: dict[str, torch.Tensor] = {}
    wsum = torch.zeros(h, w)
    for b in range(0, len(starts), batch_size):
        group = starts[b : b + batch_size]
        out = predict(torch.cat([x[:, :, r : r + th, c : c + tw] for r, c in group]))
        for name, y in out.items():
            y = y.float().cpu()
            if kinds[name] == "segmentation":
                y = y.softmax(dim=1)
            total = acc.setdefault(name, torch.zeros(y.shape[1], h, w))
            for j, (r, c) in enumerate(group):
                total[:, r : r + th, c : c + tw] += y[j] * weight
        for r, c in group:
            wsum[r : r + th, c : c + tw] += weight
    return {name: (total / wsum)[None] for name, total in acc.items()}


def evaluate_dense(
    predict: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    samples: DenseSamples,
    rows: Sequence[int],
    device: Any = "cpu",
    per_image: bool = False,
    tile: int | None = None,
    mode: str = "whole",
    batch_size: int = 8,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stream the metrics of every task over the images ``rows``.

    Args:
        predict: normalised image batch ``[B, C, H, W]`` -> ``{task: [B, K, H, W]}``.
        samples: the data.
        rows: image indices.
        device: where images are sent.
        per_image: also return each image's main metrics.
        tile: the training crop size: the windows of ``sliding``, and the size above which
            ``auto`` predicts an image window by window.
        mode: one of :data:`EVAL_MODES`: ``whole`` predicts each image at once; ``sliding``
            window by window (:func:`predict_windows`); ``auto`` window by window only the
            images larger than ``tile``.
        batch_size: windows per call of ``predict``.

    Returns:
        ``({task: metrics accumulator}, per-image rows)``.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {list(EVAL_MODES)}, got {mode!r}")
    if mode != "whole" and (tile is None or tile < 1):
        raise ValueError(f"mode {mode!r} needs the window size tile >= 1, got {tile}")
    data = samples.data
    kinds = {t.name: t.kind for t in data.tasks}
    metrics = _metric_objects(data)
    images: list[dict[str, Any]] = []
    with torch.inference_mode():
        for i in rows:
            x, y = samples[int(i)]
            x = x[None].to(resolve_device(device))
            larger = tile is not None and max(x.shape[-2:]) > tile
            if mode == "sliding" or (mode == "auto" and larger):
                out = predict_windows(predict, x, int(tile), kinds, batch_size)  # type: ignore[arg-type]
            else:
                out = predict(x)
            row: dict[str, Any] = {"image": data.images[int(i)]}
            for t in data.tasks:
                pred = out[t.name].float().cpu()
                if t.kind == "segmentation":
                    cm = metrics[t.name].update(pred.argmax(dim=1), y[t.name][None])
                    if per_image:
                        from msclip.eval.dense_metrics import segmentation_scores

                        m = segmentation_scores(cm, ignore_index=t.ignore_index)["metrics"]
                        row[f"{t.name}_miou"] = m["miou"]
                        row[f"{t.name}_overall_accuracy"] = m["overall_accuracy"]
                else:
                    metrics[t.name].update(pred, y[t.name][None, None])
                    if per_image:
                        from msclip.eval.dense_metrics import RegressionMetrics

                        one = RegressionMetrics(len(t.names))
                        one.update(pred, y[t.name][None, None])
                        row[f"{t.name}_rmse"] = one.compute()["metrics"]["rmse"]
            images.append(row)
    return metrics, images


def evaluate_maskclip(
    model: Any,
    samples: DenseSamples,
    rows: Sequence[int],
    task: str,
    prompt_names: Sequence[str],
    templates: str | None = None,
    tile: int | None = None,
    mode: str = "whole",
) -> dict[str, Any]:
    """Metrics of the zero-shot dense maps of MaskCLIP (:mod:`msclip.heads.maskclip`) on the
    images ``rows`` of a segmentation task; the classifier is built from ``prompt_names``;
    ``tile`` and ``mode`` as for :func:`evaluate_dense`.

    Returns:
        The record-ready result of :meth:`msclip.eval.dense_metrics.SegmentationMetrics.compute`.
    """
    from msclip.factory import get_tokenizer
    from msclip.heads.maskclip import MaskCLIP
    from msclip.zero_shot import DEFAULT_TEMPLATE_SET, build_classifier, load_templates

    with torch.inference_mode():
        classifier = build_classifier(
            model,
            get_tokenizer(model),
            list(prompt_names),
            load_templates(templates or DEFAULT_TEMPLATE_SET),
        ).clone()
    mc = MaskCLIP(model, classifier).eval()
    sub = DenseSamples(
        samples.data,
        samples.preprocess,
        samples.input_bands,
        samples.sensor,
        samples.nodata,
        keep=False,
    )
    sub._kept = samples._kept
    data = samples.data
    only = DenseData(
        data.name,
        data.images,
        {task: data.rasters[task]},
        [data.task(task)],
        data.splits,
        data.split_source,
        data.source,
    )
    sub.data = only
    metrics, _ = evaluate_dense(
        lambda x: {task: mc(x)}, sub, rows, model.device, tile=tile, mode=mode
    )
    return metrics[task].compute()


# -- the run ------------------------------------------------------------------------------------
def run_dense_finetune(
    cfg: FinetuneRunConfig,
    model: Any = None,
    hooks: Sequence[Callable[[str, int], None]] = (),
    command: Sequence[str] = (),
    on_model: Callable[[Any], None] | None = None,
) -> Any:
    """Train and evaluate the dense heads of ``cfg`` (see the module docstring).

    Args:
        cfg: the run's settings (validated).
        model: the :class:`msclip.MSCLIP` (default: built from ``cfg``; modified in place by
            the encoder modes).
        hooks: called with ``(label, epoch)`` after each epoch's checkpoint.
        command: the command line, for records and the protocol card.
        on_model: called with the model once it is loaded (or with ``model``), before training.

    Returns:
        A :class:`msclip.heads.runs.RunResult` (one method result per task).

    Raises:
        ConfigError: bad settings, or an existing run without ``resume``.
        HeadInputError, LabelRasterMismatchError: bad data (before any output).
        CheckpointError: ``resume`` with a checkpoint of other settings.
    """
    import pandas as pd

    from msclip.eval.report import make_head_record, merge, write_record
    from msclip.hardware import library_versions
    from msclip.heads.checkpoint import training_bands
    from msclip.heads.dense_head import save_dense_head
    from msclip.heads.lora import LoRAConfig
    from msclip.heads.modes import (
        FinetuneConfig,
        apply_finetune_mode,
        count_parameters,
        finetune_param_groups,
    )
    from msclip.heads.probes import ProbeResult
    from msclip.heads.runs import (
        MethodResult,
        RunResult,
        check_outputs,
        default_label,
        encoder_hparams,
        load_run_model,
        model_facts,
        run_settings,
        save_encoder_files,
        tower_autocast,
        write_protocol,
    )
    from msclip.heads.scene_predict import ScenePreprocess, pixel_size_range
    from msclip.heads.training import head_groups, train_loop
    from msclip.io import write_csv

    t_start = time.perf_counter()
    data = load_dense_data(cfg)
    label = dense_label(cfg)
    check_outputs(cfg, [label])
    if model is None:
        model = load_run_model(cfg, on_model)
    elif on_model is not None:
        on_model(model)
    out_dir = Path(cfg.output_dir).expanduser()
    save = Path(cfg.save_path).expanduser()
    folder = out_dir / label
    model_label = default_label(cfg, model)
    facts = model_facts(cfg, model, model_label)
    base_fingerprint = model.fingerprint(precision=False)
    prep = ScenePreprocess.from_model(model)
    samples = DenseSamples(
        data, prep, cfg.input_bands, cfg.sensor, cfg.nodata, keep=cfg.cache_images
    )
    tasks = _dense_tasks(cfg, samples)
    mode = cfg.encoder_mode
    device = model.device

    lora = LoRAConfig(
        rank=cfg.lora_rank,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        targets=tuple(cfg.lora_targets),
        seed=cfg.seed,
    )
    apply_finetune_mode(model, FinetuneConfig(mode, cfg.last_n, lora, cfg.seed))
    layers = cfg.dense_layers if cfg.dense_layers else list(model.taps)
    from msclip.heads.dense import build_dense_model

    with seeded(cfg.seed):
        built = build_dense_model(model, tasks, layers)
    net = _RunNet(model, built.layers, built.heads, "reflect", tasks)
    net.frozen = mode == "frozen"
    net.autocast, _ = tower_autocast(cfg, device)
    net.heads.to(device)
    lr = cfg.lr if cfg.lr is not None else 1e-3
    if mode == "frozen":
        groups = head_groups(net.heads, lr, cfg.weight_decay)
    else:
        groups = finetune_param_groups(
            model,
            net.heads,
            lr=cfg.encoder_lr,
            weight_decay=cfg.encoder_weight_decay,
            layer_decay=cfg.layer_decay,
            head_lr=lr,
            head_weight_decay=cfg.weight_decay,
        )
        groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    from msclip.heads.losses import MultiTaskLoss, build_task_loss

    losses = MultiTaskLoss(
        {t.name: build_task_loss(t) for t in tasks}, {t.name: t.loss_weight for t in tasks}
    )
    crop = int(cfg.crop_size or model.image_size)
    # validation and test images larger than the crops: window by window (eval_mode)
    windows = {"tile": crop, "mode": cfg.eval_mode, "batch_size": cfg.batch_size}
    train_rows = data.splits["train"]

    def batches(order: list[np.ndarray], epoch: int) -> Iterator[Any]:
        for k, b in enumerate(order):
            rows = train_rows[b]
            rng = np.random.default_rng((cfg.seed, epoch, k))
            x, y = random_crop_batch(samples, rows, crop, rng, flip=cfg.flip)
            yield x.to(device), _Batch(rows, {n: v.to(device) for n, v in y.items()})

    def loss_fn(out: dict[str, torch.Tensor], batch: _Batch) -> torch.Tensor:
        total, _ = losses(out, batch.targets)
        return total

    def predict(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return net(x)

    def validate() -> dict[str, float]:
        metrics, _ = evaluate_dense(predict, samples, data.splits["val"], device, **windows)
        values: dict[str, float] = {}
        for t in data.tasks:
            main = _MAIN[t.kind]
            values[f"val_{t.name}_{main}" if len(tasks) > 1 else f"val_{main}"] = float(
                metrics[t.name].compute()["metrics"][main]
            )
        return values

    key = _run_key(cfg, base_fingerprint, data, label)
    for t in data.tasks:
        if t.kind == "segmentation" and len(t.names) < 2:
            raise HeadInputError(
                f"{data.name}: task {t.name} has a single class ({', '.join(map(repr, t.names))}) "
                "in the training labels: a segmentation head separates two classes or more; give "
                "labels with other classes, or the class list (classes)",
                param="classes",
            )
    _check_one_image_batches(data, tasks, len(train_rows), crop, int(model.patch_size))
    history = train_loop(
        net,
        groups,
        len(train_rows),
        batches,
        loss_fn,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        warmup_epochs=cfg.warmup_epochs,
        checkpoint=folder / "checkpoint.pt",
        run_key=key,
        run_facts=run_settings(cfg),
        resume=cfg.resume,
        save_every=cfg.save_every,
        validate=validate,
        hooks=[lambda e, h=h: h(label, e) for h in hooks],
        progress=cfg.progress,
        desc=label,
    )
    net.eval()
    files = {
        "history": str(write_csv(pd.DataFrame(history), folder / "history.csv")),
        "checkpoint": str(folder / "checkpoint.pt"),
    }
    t_eval = time.perf_counter()
    metrics, per_image = evaluate_dense(
        predict, samples, data.splits["test"], device, True, **windows
    )
    eval_s = time.perf_counter() - t_eval
    files["test_images"] = str(write_csv(pd.DataFrame(per_image), folder / "test_images.csv"))
    enc = save_encoder_files(cfg, model, folder, label, base_fingerprint, facts["name"])
    enc.update(width=int(model.width), patch_size=int(model.patch_size))
    if enc.get("adapters"):
        files["adapters"] = str(folder / enc["adapters"]["file"])
    if enc.get("encoder_file"):
        files["encoder"] = enc["encoder_file"]
    results = {t.name: metrics[t.name].compute() for t in data.tasks}
    task_entries = []
    for dt, t in zip(tasks, data.tasks):
        task_entries.append(
            {
                "name": t.name,
                "kind": t.kind,
                "num_outputs": dt.num_outputs,
                "decoder": dt.decoder,
                "decoder_kwargs": dt.decoder_kwargs,
                "names": t.names,
                "prompt_names": t.prompt_names,
                "ignore_index": t.ignore_index,
                "scale": t.scale,
                "loss": dt.loss,
                "loss_weight": dt.loss_weight,
                "class_weights": dt.class_weights.tolist()
                if isinstance(dt.class_weights, torch.Tensor)
                else None,
            }
        )
    hp: dict[str, Any] = {
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": lr,
        "weight_decay": cfg.weight_decay,
        "warmup_epochs": cfg.warmup_epochs,
        "optimizer": "adamw",
        "schedule": "cosine",
        "encoder_mode": mode,
        "crop_size": crop,
        "eval_mode": cfg.eval_mode,
        "flip": cfg.flip,
        "layers": list(net.layers),
        "tasks": task_entries,
    }
    hp.update(encoder_hparams(cfg))
    hp["parameters"] = count_parameters(model, net.heads).to_dict()
    head_path = save_dense_head(
        folder / "dense_head.safetensors",
        net.heads,
        tasks=task_entries,
        layers=net.layers,
        pad_mode=net.pad_mode,
        encoder=enc,
        method=label,
        info={
            "dataset": data.name,
            "model_label": model_label,
            "crop_size": crop,  # the tile size of scene prediction (predict_scene_with_head)
            # the training images' ground resolution: a scene of other pixels is named
            "pixel_size_m": pixel_size_range([data.images[i] for i in data.splits["train"]]),
            "test": {n: r["metrics"] for n, r in results.items()},
            "settings": run_settings(cfg),
            "input_bands": training_bands(
                [data.images[i] for i in data.splits["train"]], cfg.input_bands, cfg.sensor
            ),
        },
    )
    files["head"] = str(head_path)
    seconds = time.perf_counter() - t_start
    methods = []
    for t in data.tasks:
        res = results[t.name]
        multi = len(data.tasks) > 1
        mlabel = f"{label}:{t.name}" if multi else label
        ds = {
            **data.describe(),
            "name": f"{data.name} [{t.name}]" if multi else data.name,
            "split": "test",
            "n_samples": len(data.splits["test"]),
            "split_source": data.split_source["test"],
            "class_names": list(t.prompt_names or t.names),
            "class_labels": list(t.names),
            "description": f"{data.name} ({t.kind}, {data.source.get('source')})",
        }
        record = make_head_record(
            model=facts,
            dataset=ds,
            task=RECORD_TASKS[t.kind],
            method={
                "name": t.kind,
                "label": mlabel,
                "encoder_mode": mode,
                "decoder": next(d.decoder for d in tasks if d.name == t.name),
                "hyperparameters": hp,
                "features": {"kind": "dense", "layers": net.layers},
                "n_train": len(train_rows),
                "n_test": len(data.splits["test"]),
            },
            metrics=res["metrics"],
            ci={},
            per_class=res["per_class"],
            confusion=res["confusion_matrix"],
            main_metric=res["main_metric"],
            seed=cfg.seed,
            run_key=key,
            wall_s=seconds,
            command=command,
            extra={
                "outputs": dict(files),
                "protocol": str(out_dir / "protocol.yaml"),
                "dense_settings": res["dense_settings"],
                "eval_seconds": eval_s,
            },
        )
        rec_path = write_record(save, record)
        result = ProbeResult(
            mlabel,
            RECORD_TASKS[t.kind],
            res["metrics"],
            {},
            hp,
            np.zeros((0, 0)),
            n_train=len(train_rows),
            n_test=len(data.splits["test"]),
            extra={"history": history, "dense": res},
        )
        methods.append(
            MethodResult(
                mlabel,
                result,
                res["main_metric"],
                record,
                {**files, "record": str(rec_path)},
                seconds,
            )
        )
    merge(save)
    protocol = {
        "schema": "msclip.finetune.protocol/1",
        "command": list(command),
        "config": cfg.to_dict(),
        "model": facts,
        "data": data.describe(),
        "dense": {
            "label": label,
            "layers": list(net.layers),
            "crop_size": crop,
            "tasks": task_entries,
        },
        "methods": {
            m.label: {
                "hyperparameters": hp,
                "metrics": m.result.metrics,
                "main_metric": m.main_metric,
                "outputs": m.files,
                "seconds": seconds,
            }
            for m in methods
        },
        "splits_rule": "see msclip.heads.dense_data",
        "versions": library_versions(),
        "wall_s": time.perf_counter() - t_start,
    }
    write_protocol(out_dir / "protocol.yaml", protocol)
    return RunResult(data, methods, protocol, out_dir, save, [])  # type: ignore[arg-type]
