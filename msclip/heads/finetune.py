"""The probe and fine-tuning runner: data in, heads, metric records and a protocol card out.

One run (:func:`run_finetune`, the library behind ``msclip-finetune``) takes a
:class:`FinetuneRunConfig`, reads labelled images (:mod:`msclip.heads.data`: a benchmark dataset
of ``evaluation.py``, a CSV table or a folder per class, with documented train / val / test
splits) and runs one or more methods on the image tower of an :class:`msclip.MSCLIP`:

* on frozen features, computed once per image into the resumable feature cache
  (:class:`~msclip.heads.features.FeatureCache`) and reused by every method and epoch:
  ``zero-shot`` (the prompt classifier, for comparison), ``knn`` (weighted k = 20, T = 0.07 and
  unweighted k = 5 beside it), ``logistic`` (L-BFGS, ``C`` swept on the validation split, refit on
  train + validation), ``ridge`` (regression, ``alpha`` sweep), ``linear`` (batch norm + linear,
  AdamW) and ``text-init`` (the zero-shot classifier as the starting point, AdamW);
* with the image tower itself training (``encoder_mode`` ``lora``, ``last-n``, ``full`` or
  ``scratch``, :mod:`msclip.heads.modes`): the ``linear`` or ``text-init`` head on the tower's
  features, images read every epoch through the model's preprocessing (band adaptation
  included), layer-wise learning-rate decay on the tower.

Gradient-trained heads go through one training loop (:func:`train_loop`): AdamW, linear warm-up
then cosine decay per step (as :func:`msclip.heads.linear.fit_head`), a seeded batch order per
epoch (``numpy.random.default_rng((seed, epoch))``), and a training checkpoint after every
``save_every`` epochs (model and head state, optimiser, scheduler, torch random state and
history, written atomically and read back with ``weights_only=True``), so a killed run resumes
to the same bits as an uninterrupted one. The validation split is monitored every epoch (loss
and main metric); the last epoch's head is kept.

Tasks are looked up in a registry (:data:`TASK_REGISTRY`, :func:`register_task`): each says
which targets, losses, output activation and metrics it uses. ``classification``,
``multi-label`` and ``regression`` are built in; dense tasks plug in the same way.

Outputs (every file atomic): per method a head-only safetensors (:mod:`msclip.heads.checkpoint`,
bound to the encoder's fingerprint), LoRA adapters on their own (and the merged weights on
request), the fine-tuned tower for ``last-n`` / ``full`` / ``scratch``, the training history and
the test predictions; for the run a protocol card (``protocol.yaml``: every setting, the data
and its splits, the model, the chosen hyper-parameters, versions) and one metric record per
method in the results folder of ``evaluation.py``, merged into the same ``summary.csv`` and
``report.md`` (:mod:`msclip.eval.report`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import HeadConfigError, HeadInputError, shown_when_quiet
from msclip.heads.data import TaskData, from_benchmark, from_csv, from_folders
from msclip.heads.features import FeatureSpec
from msclip.heads.runconfig import ENCODER_MODES, METHODS, FinetuneRunConfig
from msclip.heads.runs import (
    MethodResult,
    RunResult,
    autocast_to,
    check_outputs,
    default_label,
    encoder_hparams,
    load_run_model,
    model_facts,
    run_precision,
    run_settings,
    save_encoder_files,
    setting_facts,
    tower_autocast,
    write_protocol,
)
from msclip.heads.seeding import seeded
from msclip.heads.training import head_groups, train_loop

__all__ = [
    "ENCODER_MODES",
    "METHODS",
    "TASK_REGISTRY",
    "EncoderHead",
    "FinetuneRunConfig",
    "MethodResult",
    "RunResult",
    "TaskSpec",
    "load_task_data",
    "register_task",
    "run_finetune",
    "run_precision",
    "train_loop",
]

logger = logging.getLogger(__name__)

_TRAINED = ("linear", "text-init")


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class TaskSpec:
    """What a task needs from the runner: targets as tensors, losses, the output activation and
    the metrics. Subclass and :func:`register_task` to add one (dense tasks do).

    Attributes:
        name: the task's name (``--task``).
        probe_task: the task name of :mod:`msclip.heads.probes`.
        record_task: the task written into metric records.
        losses: allowed losses, the default first.
    """

    name = "classification"
    probe_task = "single-label"
    record_task = "single_label"
    losses: tuple[str, ...] = ("ce",)

    def target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        """Targets of a batch as the loss expects them."""
        return torch.from_numpy(np.asarray(targets, dtype=np.int64))

    def loss_fn(self, name: str | None, huber_delta: float = 1.0) -> Callable[..., torch.Tensor]:
        """The loss ``(outputs, targets) -> scalar``."""
        name = name or self.losses[0]
        if name not in self.losses:
            raise HeadConfigError(
                f"loss {name!r} does not fit a {self.name} task; use one of {list(self.losses)}",
                param="loss",
            )
        table: dict[str, Callable[..., torch.Tensor]] = {
            "ce": F.cross_entropy,
            "bce": F.binary_cross_entropy_with_logits,
            "mse": F.mse_loss,
            "l1": F.l1_loss,
            "huber": lambda a, b: F.huber_loss(a, b, delta=huber_delta),
        }
        return table[name]

    def evaluate(
        self,
        scores: np.ndarray,
        targets: np.ndarray,
        names: Sequence[str],
        n_resamples: int = 0,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], Any]:
        """``(metrics, intervals, per-class rows, confusion matrix or None)`` of test scores
        (probabilities, or regression values)."""
        from msclip.eval import metrics as M
        from msclip.heads.probes import evaluate_scores

        values, ci = evaluate_scores(
            self.probe_task, scores, targets, len(names), n_resamples, confidence, seed
        )
        report = M.single_label_report(scores, targets, list(names))
        metrics = {**report.to_dict(), **values}
        return metrics, ci, report.per_class.to_dict(orient="records"), report.confusion.tolist()

    def main_metric(self) -> str:
        from msclip.eval.report import MAIN_METRICS

        return MAIN_METRICS[self.record_task]

    def interval(
        self,
        metric: str,
        scores: np.ndarray,
        targets: np.ndarray,
        n_resamples: int,
        confidence: float,
        seed: int,
    ) -> Any:
        """Bootstrap interval of a metric the probes do not resample (``map_at_k``, AP@100 as
        evaluation.py reports it for multi-label data)."""
        from msclip.eval import metrics as M
        from msclip.eval.bootstrap import bootstrap_cis

        if metric != "map_at_k":
            raise HeadConfigError(f"no bootstrap interval rule for {metric!r}")

        def map_at_k(t: np.ndarray, s: np.ndarray) -> float:
            rel = M.targets_to_relevance(t, s.shape[1]) if t.ndim == 1 else t
            return M.mean_average_precision_at_k(s, rel, 100).mean

        cis = bootstrap_cis({metric: map_at_k}, targets, scores, n_resamples, confidence, seed)
        return cis[metric]


class MultiLabelTask(TaskSpec):
    name = "multi-label"
    probe_task = "multi-label"
    record_task = "multi_label"
    losses = ("bce",)

    def target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(targets, dtype=np.float32))

    def evaluate(self, scores, targets, names, n_resamples=0, confidence=0.95, seed=0):  # type: ignore[override]
        from msclip.eval import metrics as M
        from msclip.heads.probes import MULTILABEL_THRESHOLD, evaluate_scores

        values, ci = evaluate_scores(
            self.probe_task, scores, targets, len(names), n_resamples, confidence, seed
        )
        report = M.multilabel_report(
            scores, targets, list(names), rule="threshold", threshold=MULTILABEL_THRESHOLD
        )
        metrics = {**report.to_dict(), **values}
        return metrics, ci, report.per_class.to_dict(orient="records"), None


class RegressionTask(TaskSpec):
    name = "regression"
    probe_task = "regression"
    record_task = "regression"
    losses = ("mse", "l1", "huber")

    def target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(targets, dtype=np.float32))

    def evaluate(self, scores, targets, names, n_resamples=0, confidence=0.95, seed=0):  # type: ignore[override]
        from msclip.eval import metrics as M
        from msclip.heads.probes import evaluate_scores

        values, ci = evaluate_scores(
            self.probe_task, scores, targets, None, n_resamples, confidence, seed
        )
        report = M.regression_report(scores.reshape(targets.shape), targets, list(names))
        metrics = {**report.to_dict(), **values}
        rows = report.per_output.rename(
            columns={"output_index": "class_index", "output_name": "class_name"}
        )
        return metrics, ci, rows.to_dict(orient="records"), None


#: Task name -> its spec. Dense tasks add theirs with :func:`register_task`.
TASK_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add (or replace) a task of the runner."""
    TASK_REGISTRY[spec.name] = spec
    return spec


for _spec in (TaskSpec(), MultiLabelTask(), RegressionTask()):
    register_task(_spec)


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task.

    Raises:
        HeadConfigError: unknown task.
    """
    if name not in TASK_REGISTRY:
        raise HeadConfigError(
            f"unknown task {name!r}; registered: {sorted(TASK_REGISTRY)}", param="task"
        )
    return TASK_REGISTRY[name]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_task_data(cfg: FinetuneRunConfig) -> TaskData:
    """The labelled images of a run (see :mod:`msclip.heads.data`)."""
    common = {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
              "seed": cfg.seed}  # fmt: skip
    if cfg.dataset:
        return from_benchmark(cfg.dataset, cfg.dataset_dir, cfg.classes,
                              max_samples=cfg.max_samples, **common)  # fmt: skip
    if cfg.csv:
        return from_csv(
            cfg.csv, cfg.task, cfg.path_column, cfg.label_columns, cfg.value_columns,
            cfg.label_separator, cfg.scale, cfg.classes, cfg.data_root, cfg.split_column,
            name=cfg.dataset_name, **common,
        )  # fmt: skip
    if cfg.task != "classification":
        raise HeadConfigError(
            f"a folder per class holds classification data, not {cfg.task}; use a CSV table",
            param="task",
        )
    return from_folders(cfg.folders, cfg.classes, name=cfg.dataset_name, **common)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The encoder with a head, and the training loop
# --------------------------------------------------------------------------------------------


class EncoderHead(nn.Module):
    """An image tower and a head on its features (:class:`FeatureSpec`: the embedding, or the
    class token / mean patch token of chosen blocks).

    With the ``frozen`` mode the tower runs without a graph and stays in eval mode. With
    ``autocast`` (a dtype) the tower computes in it by autocast over its float32 weights, and the
    head gets float32 features (:func:`msclip.heads.runs.tower_autocast`).
    """

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        spec: FeatureSpec,
        mode: str,
        autocast: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.spec = spec
        self.mode = mode
        self.autocast = autocast

    def train(self, mode: bool = True) -> EncoderHead:
        super().train(mode)
        if self.mode == "frozen":
            self.model.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        forward = self.spec.forward(self.model)
        amp = autocast_to(images.device.type, self.autocast)
        with torch.no_grad() if self.mode == "frozen" else contextlib.nullcontext(), amp:
            f = forward(images)
        f = f.float()
        return F.normalize(f, dim=-1) if self.spec.normalize else f

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _standardised_loss(
    base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], head: nn.Module | None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``base_loss`` in the standardised units of a regression head (its ``target_mean`` and
    ``target_std`` buffers), or ``base_loss`` itself without them.

    The buffers are read from the head at each call and brought to the outputs' device: in the
    encoder modes the head moves to the encoder's GPU after the loss is made (the move replaces
    buffers by new tensors, so ones captured before it stay on the CPU), and validation
    passes outputs gathered on the CPU.
    """
    if head is None or not hasattr(head, "target_mean") or not hasattr(head, "target_std"):
        return base_loss

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shift = head.target_mean.to(out.device)
        spread = head.target_std.to(out.device)
        return base_loss((out - shift) / spread, (target - shift) / spread)

    return loss


def _run_key(cfg: FinetuneRunConfig, fingerprint: str, data: TaskData, method: str) -> str:
    facts = setting_facts(cfg)
    h = hashlib.sha256()
    h.update(json.dumps(facts, sort_keys=True, default=str).encode())
    h.update(fingerprint.encode())
    h.update(method.encode())
    h.update("\n".join(data.item_names()).encode())
    h.update(np.ascontiguousarray(data.targets).tobytes())
    for s in ("train", "val", "test"):
        h.update(np.ascontiguousarray(data.splits[s]).tobytes())
    return h.hexdigest()


#: Options of the image tower's training: a probe reads the frozen features whatever they are.
_TOWER_OPTIONS = ("encoder_mode", "last_n", "lora_rank", "lora_alpha", "lora_dropout",
                  "lora_targets", "merge_lora", "encoder_lr", "layer_decay",
                  "encoder_weight_decay", "augment", "cache_images")  # fmt: skip


def _method_of(label: str) -> str | None:
    """The method of a head's folder name (``linear-lora`` -> ``linear``, ``knn-unweighted``
    -> ``knn``), or ``None``."""
    found = [m for m in METHODS if label == m or label.startswith(m + "-")]
    return max(found, key=len) if found else None


def _same_run(cfg: FinetuneRunConfig, fingerprint: str, data: TaskData, label: str) -> Any:
    """The :class:`msclip.heads.runs.SameRun` of the head ``label``: options no run of its
    method alone would use (:meth:`FinetuneRunConfig.inapplicable`; for the probes and
    zero-shot also the tower's) may differ from the run that wrote it."""
    import dataclasses

    from msclip.heads.runs import SameRun

    method = _method_of(label)
    if method is None:
        return None
    names = list(setting_facts(cfg))
    alone = dataclasses.replace(cfg, method=[method])
    idle = {line.split(":", 1)[0] for line in alone.inapplicable(names)}
    if method not in ("linear", "text-init"):
        idle |= set(_TOWER_OPTIONS)

    def key_with(old: dict[str, Any]) -> str:
        return _run_key(dataclasses.replace(cfg, **old), fingerprint, data, label)

    return SameRun(frozenset(idle), key_with)


def default_feature_cache_dir() -> Path:
    """``$MSCLIP_CACHE_DIR/features``, else ``~/.cache/msclip/features``."""
    from msclip.cache import cache_root

    return cache_root() / "features"


class _Runner:
    """State shared by the methods of one run."""

    def __init__(
        self,
        cfg: FinetuneRunConfig,
        model: Any,
        data: TaskData,
        hooks: Sequence[Callable[[str, int], None]],
        command: Sequence[str],
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.data = data
        self.task = get_task(data.task)
        self.hooks = hooks
        self.command = list(command)
        self.preprocess = model.preprocess(input_bands=cfg.input_bands, sensor=cfg.sensor)
        self.out = Path(cfg.output_dir).expanduser()
        self.save = Path(cfg.save_path).expanduser()
        self.features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.unreadable: set[int] = set()
        self.label = default_label(cfg, model)
        self.facts = model_facts(cfg, model, self.label)
        self.base_fingerprint = model.fingerprint(precision=False)
        self.cache_info: dict[str, Any] = {}
        self._classifier: torch.Tensor | None = None
        self._images: Any = None  # the images of encoder-mode training (maybe kept in memory)

    # -- features ---------------------------------------------------------------------------
    def spec(self, method: str) -> FeatureSpec:
        if method in ("zero-shot", "text-init") or self.cfg.features == "embedding":
            return FeatureSpec("embedding")
        return FeatureSpec(self.cfg.features, tuple(self.cfg.layers))

    def frozen_features(self, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
        """Features of every image (cache) and the mask of images that have them."""
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key in self.features:
            return self.features[key]
        from msclip.heads.features import FeatureCache, extract_features

        cfg, data = self.cfg, self.data
        dataset = data.dataset(self.preprocess, cfg.valid_share(), cfg.nodata)
        context = {"dataset": data.source, "name": data.name}
        names = data.item_names()
        t0 = time.perf_counter()
        if cfg.feature_cache:
            root = (
                Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_feature_cache_dir()
            )
            cache = FeatureCache(root, self.model, self.preprocess, names, spec, cfg.nodata,
                                 cfg.valid_share(), dataset, context)  # fmt: skip
            before = cache.status()
            feats, ok = cache.extract(cfg.encode_batch_size, cfg.workers, cfg.progress)
            self.cache_info[spec.kind] = {"dir": str(cache.dir), "reused": before["done"],
                                          "encoded": len(names) - before["done"]}  # fmt: skip
        else:
            feats, ok = extract_features(self.model, self.preprocess, names, spec, None,
                                         cfg.encode_batch_size, cfg.workers, cfg.progress,
                                         cfg.nodata, cfg.valid_share(), dataset)  # fmt: skip
        self.cache_info.setdefault(spec.kind, {})["seconds"] = time.perf_counter() - t0
        bad = np.flatnonzero(~ok)
        if bad.size:
            self.unreadable.update(int(i) for i in bad)
            logger.warning(
                "%d of %d images could not be read or have fewer than %s valid pixels "
                "(min_valid) (e.g. %s); they are left out", bad.size, len(ok),
                f"{cfg.valid_share():.0%}" if cfg.valid_share() else "any", names[int(bad[0])],
            )  # fmt: skip
        self.features[key] = (feats, ok)
        return feats, ok

    def split_rows(self, ok: np.ndarray | None = None) -> dict[str, np.ndarray]:
        rows = {}
        for s, ix in self.data.splits.items():
            keep = ix if ok is None else ix[ok[ix]]
            if len(keep) == 0:
                raise HeadInputError(
                    f"{self.data.name}: no readable image left in the {s} split", param="images"
                )
            rows[s] = keep
        return rows

    def classifier(self) -> torch.Tensor:
        """The zero-shot classifier of the class prompt names."""
        if self._classifier is None:
            from msclip.factory import get_tokenizer
            from msclip.zero_shot import DEFAULT_TEMPLATE_SET, build_classifier, load_templates

            names = self.data.prompt_names or self.data.names
            templates = load_templates(self.cfg.templates or DEFAULT_TEMPLATE_SET)
            cache = None
            if self.cfg.text_cache:
                from msclip.text_cache import TextEmbeddingCache

                cache = TextEmbeddingCache.for_model(self.model)
            with torch.inference_mode():
                self._classifier = build_classifier(
                    self.model, get_tokenizer(self.model), names, templates, cache=cache
                ).clone()
        return self._classifier

    # -- methods ----------------------------------------------------------------------------
    def method_label(self, method: str) -> str:
        mode = self.cfg.encoder_mode
        if method not in _TRAINED or mode == "frozen":
            return method
        return f"{method}-{mode}" if mode != "last-n" else f"{method}-last{self.cfg.last_n}"

    def run_probe(self, method: str) -> list[tuple[str, Any, nn.Module]]:
        """``(label, ProbeResult, head)`` of a probe on frozen features."""
        results = self._probe(method)
        for _, res, _ in results:
            res.extra["rows"] = self._probe_rows
        return results

    def _probe(self, method: str) -> list[tuple[str, Any, nn.Module]]:
        from msclip.heads.checkpoint import KNNHead, logistic_to_head, ridge_to_head
        from msclip.heads.linear import TextInitHead
        from msclip.heads.probes import (
            DEFAULT_ALPHAS,
            DEFAULT_CS,
            knn_probe,
            logistic_probe,
            ridge_probe,
        )

        cfg, data = self.cfg, self.data
        feats, ok = self.frozen_features(self.spec(method))
        rows = self.split_rows(ok)
        self._probe_rows = rows["test"]
        y = data.targets
        x = {s: np.asarray(feats[r], dtype=np.float32) for s, r in rows.items()}
        t = {s: y[r] for s, r in rows.items()}
        c = len(data.names) if data.task == "classification" else None
        ci = {"n_resamples": cfg.n_resamples, "confidence": cfg.confidence, "seed": cfg.seed}
        if method == "zero-shot":
            from msclip.heads.linear import _head_probe

            head = TextInitHead(self.classifier(), class_names=data.prompt_names)
            res = _head_probe("zero-shot", head, x["train"], t["train"], x["test"], t["test"],
                              "single-label", c, {"templates": cfg.templates or "default",
                                                  "init": "zero-shot classifier"},
                              {"epochs": 0}, **ci)  # fmt: skip
            res.n_train = 0
            return [("zero-shot", res, head)]
        if method == "knn":
            bank = np.concatenate([x["train"], x["val"]])
            labels = np.concatenate([t["train"], t["val"]])
            results = knn_probe(bank, labels, x["test"], t["test"], cfg.k, cfg.temperature,
                                cfg.k_unweighted, c, **ci)  # fmt: skip
            out = []
            for res in results:
                temp = cfg.temperature if res.probe == "knn" else None
                k = cfg.k if res.probe == "knn" else cfg.k_unweighted
                head = KNNHead(bank, labels, res.scores.shape[1], int(k), temp)  # type: ignore[arg-type]
                res.hyperparameters["bank"] = "train + val"
                out.append((res.probe, res, head))
            return out
        if method == "logistic":
            cs = np.asarray(cfg.cs) if cfg.cs else DEFAULT_CS
            res = logistic_probe(x["train"], t["train"], x["test"], t["test"], x["val"],
                                 t["val"], cs, c, max_iter=cfg.max_iter, **ci)  # fmt: skip
            return [("logistic", res, logistic_to_head(res.extra["model"]))]
        if method == "ridge":
            alphas = np.asarray(cfg.alphas) if cfg.alphas else DEFAULT_ALPHAS
            res = ridge_probe(x["train"], t["train"], x["test"], t["test"], x["val"], t["val"],
                              alphas, **ci)  # fmt: skip
            return [("ridge", res, ridge_to_head(res.extra["model"]))]
        raise HeadConfigError(f"{method} is not a probe")  # pragma: no cover

    def new_head(self, method: str, in_features: int) -> nn.Module:
        from msclip.heads.linear import LinearHead, TextInitHead

        if method == "text-init":
            return TextInitHead(self.classifier(), class_names=self.data.prompt_names)
        width = len(self.data.names)
        with seeded(self.cfg.seed):
            return LinearHead(in_features, width, self.cfg.batch_norm)

    def run_trained(self, method: str) -> tuple[str, Any, nn.Module, dict[str, str]]:
        """Train a linear or text-initialised head (and the tower, in encoder modes)."""
        from msclip.heads.probes import ProbeResult
        from msclip.io import write_csv

        cfg, data, task = self.cfg, self.data, self.task
        label = self.method_label(method)
        folder = self.out / label
        spec = self.spec(method)
        mode = cfg.encoder_mode
        files: dict[str, str] = {}
        frozen = mode == "frozen"
        if frozen:
            feats, ok = self.frozen_features(spec)
            rows = self.split_rows(ok)
        else:
            rows = self.split_rows()
        head = self.new_head(method, spec.dim(self.model))
        y = data.targets
        if data.task == "regression" and hasattr(head, "target_mean"):
            tr = torch.from_numpy(y[rows["train"]]).float()
            std = tr.std(dim=0, unbiased=False)
            head.target_mean.copy_(tr.mean(dim=0))
            head.target_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        base_loss = task.loss_fn(cfg.loss, cfg.huber_delta)
        loss_of = _standardised_loss(base_loss, head if data.task == "regression" else None)
        y_train = y[rows["train"]]

        # 1e-3: the SMARTIES / MAE peak at batch 256, not scaled down for small batches (a few
        # hundred labelled tiles give few steps); 1e-4 for the text-initialised head, which
        # starts from a good solution with logits scaled by 100.
        lr = cfg.lr if cfg.lr is not None else (1e-4 if method == "text-init" else 1e-3)
        if frozen:
            net: nn.Module = head
            x_train = feats  # rows index the full memory map

            def batches(order: list[np.ndarray], epoch: int) -> Iterator[Any]:
                from msclip.heads.linear import _rows

                for b in order:
                    r = rows["train"][b]
                    yield _rows(x_train, r), r

            groups = head_groups(head, lr, cfg.weight_decay)
        else:
            from msclip.heads.lora import LoRAConfig
            from msclip.heads.modes import (
                FinetuneConfig,
                _clip,
                apply_finetune_mode,
                finetune_param_groups,
            )

            lora = LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                              targets=tuple(cfg.lora_targets), seed=cfg.seed)  # fmt: skip
            apply_finetune_mode(self.model, FinetuneConfig(mode, cfg.last_n, lora, cfg.seed))
            visual = _clip(self.model).visual
            proj = getattr(visual, "proj", None)
            if spec.kind != "embedding" and isinstance(proj, nn.Parameter):
                # cls / mean features are read before the projection: it gets no gradient, so it
                # is neither trained nor counted as trainable
                proj.requires_grad_(False)
            if spec.kind != "embedding":
                # nor do the blocks after the deepest tapped one (--layers -2: the last block)
                blocks = visual.transformer.resblocks
                deepest = max(i % len(blocks) for i in spec.layers)
                for block in list(blocks)[deepest + 1 :]:
                    block.requires_grad_(False)
            head.to(self.model.device)
            amp, _ = tower_autocast(cfg, self.model.device)
            net = EncoderHead(self.model, head, spec, mode, autocast=amp)
            groups = finetune_param_groups(
                self.model, head, lr=cfg.encoder_lr, weight_decay=cfg.encoder_weight_decay,
                layer_decay=cfg.layer_decay, head_lr=lr, head_weight_decay=cfg.weight_decay,
            )  # fmt: skip
            groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
            dataset = data.dataset(self.preprocess, cfg.valid_share(), cfg.nodata)
            if cfg.cache_images:
                dataset = _InMemory(dataset)
            self._images = dataset
            batches = self._image_batches(dataset, rows["train"])

        def loss_fn(out: torch.Tensor, r: np.ndarray) -> torch.Tensor:
            return loss_of(out, task.target_tensor(y[r]).to(out.device))

        def validate() -> dict[str, float]:
            raw, kept = self._outputs(net, head, frozen, rows["val"], spec)
            if not len(kept):
                return {}
            yv = y[kept]
            with torch.no_grad():
                vloss = float(loss_of(raw, task.target_tensor(yv)))
            metrics, _, _, _ = task.evaluate(self._activate(raw), yv, data.names)
            main = task.main_metric()
            return {"val_loss": vloss, f"val_{main}": float(metrics.get(main, float("nan")))}

        key = _run_key(cfg, self.base_fingerprint, data, label)
        hooks = [lambda e, h=h: h(label, e) for h in self.hooks]
        if data.task != "regression" and len(np.unique(y_train, axis=0)) < 2:
            raise HeadInputError(f"{data.name}: the train split holds a single class")
        history = train_loop(
            net, groups, len(rows["train"]), batches, loss_fn, epochs=cfg.epochs,
            batch_size=cfg.batch_size, seed=cfg.seed, warmup_epochs=cfg.warmup_epochs,
            checkpoint=folder / "checkpoint.pt", run_key=key, run_facts=run_settings(cfg),
            same_run=_same_run(cfg, self.base_fingerprint, data, label), resume=cfg.resume,
            save_every=cfg.save_every, validate=validate, hooks=hooks, progress=cfg.progress,
            desc=label, unreadable=self.unreadable,
        )  # fmt: skip
        import pandas as pd

        files["history"] = str(write_csv(pd.DataFrame(history), folder / "history.csv"))
        files["checkpoint"] = str(folder / "checkpoint.pt")
        raw, kept = self._outputs(net, head, frozen, rows["test"], spec, progress=cfg.progress)
        scores = self._activate(raw)
        metrics, ci = _metrics(task, scores, y[kept], cfg)
        hp = {
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": lr,
            "weight_decay": cfg.weight_decay, "warmup_epochs": cfg.warmup_epochs,
            "loss": cfg.loss or task.losses[0], "optimizer": "adamw", "schedule": "cosine",
            "encoder_mode": mode, "features": spec.to_dict(),
        }  # fmt: skip
        if method == "linear":
            hp["batch_norm"] = cfg.batch_norm
        if not frozen:
            hp.update(encoder_hparams(cfg), augment=cfg.augment)
        from msclip.heads.modes import count_parameters

        hp["parameters"] = count_parameters(self.model, head, encoder_trained=not frozen).to_dict()
        # the rows trained on: in encoder modes the unreadable ones are found while training
        trained = np.setdiff1d(rows["train"], np.fromiter(self.unreadable, np.int64))
        result = ProbeResult(label, task.probe_task, metrics, ci, hp, scores,
                             n_train=len(trained), n_test=len(kept),
                             extra={"history": history, "rows": kept})  # fmt: skip
        return label, result, head, files

    def _image_batches(self, dataset: Any, train_rows: np.ndarray) -> Callable[..., Iterator[Any]]:
        from torch.utils.data import DataLoader

        from msclip.encode import collate_items

        cfg = self.cfg
        device = self.model.device

        def batches(order: list[np.ndarray], epoch: int) -> Iterator[Any]:
            sampler = [train_rows[b].tolist() for b in order]
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                collate_fn=collate_items)  # fmt: skip
            for k, batch in enumerate(loader):
                for i, msg in batch["failures"]:
                    self.unreadable.add(int(i))
                    logger.warning("cannot read %s: %s (skipped)", self.data.item_names()[i], msg)
                for i, msg in batch["skipped"]:  # min_valid: never trained on, counted
                    self.unreadable.add(int(i))
                    logger.warning("%s: %s, fewer than min_valid (skipped)",
                                   self.data.item_names()[i], msg)  # fmt: skip
                images = batch["images"]
                if images is None:
                    yield None, np.zeros(0, dtype=np.int64)
                    continue
                if cfg.augment:
                    g = torch.Generator().manual_seed(hash((cfg.seed, epoch, k)) & 0x7FFFFFFF)
                    flip = torch.rand(len(images), 2, generator=g) < 0.5
                    images = torch.where(flip[:, 0, None, None, None], images.flip(-1), images)
                    images = torch.where(flip[:, 1, None, None, None], images.flip(-2), images)
                yield images.to(device), np.asarray(batch["indices"], dtype=np.int64)

        return batches

    def _outputs(
        self,
        net: nn.Module,
        head: nn.Module,
        frozen: bool,
        rows: np.ndarray,
        spec: FeatureSpec,
        progress: bool = False,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Head outputs (logits, or values) of rows in eval mode, and the rows that were read."""
        from msclip.heads.linear import _rows

        if frozen:
            feats, _ = self.frozen_features(spec)
            head.eval()
            with torch.no_grad():
                return head(_rows(feats, rows)).float(), rows
        out, kept = self._encode(net, rows, progress)
        return torch.from_numpy(out).float(), kept

    def _activate(self, raw: torch.Tensor) -> np.ndarray:
        """Probabilities (softmax, sigmoid) or values, float64."""
        t = raw.double()
        if self.data.task == "classification":
            t = t.softmax(dim=1)
        elif self.data.task == "multi-label":
            t = t.sigmoid()
        return t.numpy()

    def _encode(
        self, net: nn.Module, rows: np.ndarray, progress: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        from msclip.encode import encode_batches
        from msclip.heads.features import _Subset

        dataset = self._images
        if dataset is None:
            dataset = self.data.dataset(self.preprocess, self.cfg.valid_share(), self.cfg.nodata)
        net.eval()
        outs, kept = [], []
        for b in encode_batches(self.model, _Subset(dataset, rows), normalize=False,
                                batch_size=self.cfg.encode_batch_size, workers=self.cfg.workers,
                                progress=progress, desc="evaluate", forward=net):  # fmt: skip
            outs.append(b.embeddings)
            kept += [int(rows[i]) for i in b.indices]
            for f in b.failures:
                self.unreadable.add(int(rows[f.index]))
            for i in b.skipped:  # fewer valid pixels than min_valid: not scored, counted
                self.unreadable.add(int(rows[i]))
        width = len(self.data.names)
        out = np.concatenate(outs) if outs else np.zeros((0, width), np.float32)
        return out, np.asarray(kept, dtype=np.int64)

    # -- outputs ----------------------------------------------------------------------------
    def input_bands(self) -> list[str] | None:
        """The band names of the training images (kept in the heads: see ``--head``)."""
        if not hasattr(self, "_input_bands"):
            from msclip.heads.checkpoint import training_bands

            train = [self.data.items[i] for i in self.data.splits["train"]]
            self._input_bands = training_bands(train, self.cfg.input_bands, self.cfg.sensor)
        return self._input_bands

    def save_encoder_files(self, label: str) -> dict[str, Any]:
        """Adapters, merged or fine-tuned weights; returns the head's encoder facts."""
        return save_encoder_files(self.cfg, self.model, self.out / label, label,
                                  self.base_fingerprint, self.facts["name"])  # fmt: skip

    def write_outputs(
        self, label: str, method: str, result: Any, head: nn.Module, files: dict[str, str],
        seconds: float,
    ) -> MethodResult:  # fmt: skip
        from msclip.eval.report import make_head_record, write_record
        from msclip.heads.checkpoint import encoder_facts, save_head

        cfg, data, task = self.cfg, self.data, self.task
        folder = self.out / label
        enc = self.save_encoder_files(label) if method in _TRAINED else encoder_facts(self.model)
        if enc.get("adapters"):
            files["adapters"] = str(folder / enc["adapters"]["file"])
        if enc.get("merged_file"):
            files["merged"] = str(folder / enc["merged_file"])
        if enc.get("encoder_file"):
            files["encoder"] = enc["encoder_file"]
        spec = self.spec(method)
        head_path = save_head(
            folder / "head.safetensors", head, task=data.task, names=data.names,
            features=spec, encoder=enc, method=label, prompt_names=data.prompt_names,
            info={"dataset": data.name, "model_label": self.label,
                  "main_metric": task.main_metric(),
                  "test": {k: v for k, v in result.metrics.items()},
                  "input_bands": self.input_bands(),
                  # what --resume compares (as the training checkpoint's run key and facts)
                  "run_key": _run_key(cfg, self.base_fingerprint, data, label),
                  "settings": run_settings(cfg)},
        )  # fmt: skip
        files["head"] = str(head_path)
        files["predictions"] = str(self._write_predictions(folder, result))
        # Metrics with the per-class table of msclip.eval.metrics (confusion for single-label)
        targets = data.targets[result.extra["rows"]]
        main = task.main_metric()
        if main not in result.ci and cfg.n_resamples:
            result.ci[main] = task.interval(
                main, result.scores, targets, cfg.n_resamples, cfg.confidence, cfg.seed
            )
        metrics, _, per_class, confusion = task.evaluate(result.scores, targets, data.names)
        metrics.update(result.metrics)
        labels = data.names
        for row in per_class:
            i = int(row.get("class_index", 0))
            row.setdefault("class_label", labels[i] if i < len(labels) else "")
        record = make_head_record(
            model=self.facts, dataset=self._dataset_facts(), task=task.record_task,
            method={"name": method, "label": label, "encoder_mode": cfg.encoder_mode
                    if method in _TRAINED else "frozen", "hyperparameters": result.hyperparameters,
                    "features": spec.to_dict(), "n_train": result.n_train,
                    "n_test": result.n_test},
            metrics=metrics, ci={k: v.to_dict() for k, v in result.ci.items()},
            per_class=per_class, confusion=confusion, main_metric=task.main_metric(),
            seed=cfg.seed, run_key=_run_key(cfg, self.base_fingerprint, data, label),
            wall_s=seconds, command=self.command,
            extra={"outputs": files, "protocol": str(self.out / "protocol.yaml")},
        )  # fmt: skip
        files["record"] = str(write_record(self.save, record))
        return MethodResult(label, result, task.main_metric(), record, files, seconds)

    def _dataset_facts(self) -> dict[str, Any]:
        d = self.data.describe()
        d["split"] = "test"
        d["class_names"] = list(self.data.prompt_names or self.data.names)
        d["class_labels"] = list(self.data.names)
        d["n_samples"] = len(self.data.splits["test"])
        d["split_source"] = self.data.split_source["test"]
        d["description"] = f"{self.data.name} ({self.data.source.get('source')})"
        d.setdefault("root", self.data.source.get("root") or self.data.source.get("csv"))
        return d

    def _write_predictions(self, folder: Path, result: Any) -> Path:
        import pandas as pd

        from msclip.io import write_csv

        data = self.data
        rows = result.extra["rows"]
        names = data.item_names()
        df = pd.DataFrame({"image": [names[i] for i in rows]})
        scores = result.scores
        if data.task == "classification":
            df["target"] = [data.names[int(t)] for t in data.targets[rows]]
            df["prediction"] = [data.names[int(i)] for i in scores.argmax(axis=1)]
            for j, n in enumerate(data.names):
                df[n] = scores[:, j]
        elif data.task == "multi-label":
            df["target"] = [";".join(n for n, t in zip(data.names, r) if t) for r in
                            data.targets[rows]]  # fmt: skip
            df["prediction"] = [";".join(n for n, s in zip(data.names, r) if s > 0.5)
                                for r in scores]  # fmt: skip
            for j, n in enumerate(data.names):
                df[n] = scores[:, j]
        else:
            for j, n in enumerate(data.names):
                df[f"target_{n}"] = data.targets[rows][:, j]
                df[n] = scores.reshape(len(rows), -1)[:, j]
        return write_csv(df, folder / "predictions.csv")


class _InMemory:
    """Items of a protocol dataset kept after their first read (preprocessing is deterministic,
    so every epoch sees the same tensors; flips are applied to batches afterwards)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.items: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]


def _metrics(task: TaskSpec, scores: np.ndarray, targets: np.ndarray, cfg: FinetuneRunConfig):
    from msclip.heads.probes import evaluate_scores

    c = scores.shape[1] if task.probe_task != "regression" else None
    return evaluate_scores(task.probe_task, scores, targets, c, cfg.n_resamples, cfg.confidence,
                           cfg.seed)  # fmt: skip


def _planned_labels(cfg: FinetuneRunConfig) -> list[str]:
    mode = cfg.encoder_mode
    out = []
    for m in cfg.method:
        if m in _TRAINED and mode != "frozen":
            out.append(f"{m}-{mode}" if mode != "last-n" else f"{m}-last{cfg.last_n}")
        else:
            out.append(m)
    return out


def _named(names: Sequence[str], which: Sequence[int]) -> str:
    """Up to ten of ``names[i]``, quoted, and how many more."""
    shown = ", ".join(repr(names[i]) for i in which[:10])
    return shown + (f" and {len(which) - 10} more" if len(which) > 10 else "")


def _own_columns(task: str, name: str) -> list[str]:
    """The columns of ``predictions.csv`` that hold a class's probabilities (one) or an
    output's targets and predictions (``target_<name>`` and ``<name>``)."""
    return [name] if task in ("classification", "multi-label") else [f"target_{name}", name]


def _prediction_columns(task: str, names: Sequence[str]) -> list[str]:
    """The columns of a method's ``predictions.csv``, in order: ``image``, then ``target``,
    ``prediction`` and one probability column per class, or two per regression output."""
    fixed = ["image", "target", "prediction"] if task != "regression" else ["image"]
    return [*fixed, *(c for n in names for c in _own_columns(task, n))]


def _check_prediction_columns(data: TaskData) -> None:
    """Refuse class or output names whose columns in ``predictions.csv`` would replace another
    column (a class ``target``, an output ``image``), and multi-label class names holding the
    ``;`` that joins a row's classes there, before any method runs, as msclip-inference refuses
    class names that are columns of its tables."""
    if data.task == "multi-label":
        joined = [n for n in data.names if ";" in n]
        if joined:  # predictions.csv joins a row's classes with ';': "a;b;c" would be ambiguous
            raise HeadInputError(
                f"{data.name}: class name(s) {joined} hold ';', which joins the classes of a row "
                "in the target and prediction cells of predictions.csv (a cell 'a;b' would read "
                "as two classes); rename the class (its column or its label in the table), "
                f"e.g. {joined[0].replace(';', ',')!r}"
            )
    columns = _prediction_columns(data.task, data.names)
    clash = {c for c in columns if columns.count(c) > 1}
    bad = [n for n in data.names if clash & set(_own_columns(data.task, n))]
    if not bad:
        return
    if data.task == "regression":
        raise HeadInputError(
            f"{data.name}: target column(s) {bad} would replace another column of "
            "predictions.csv, which holds image, then target_<name> and <name> for each target "
            f"(twice: {', '.join(sorted(clash))}); rename the target column in the table, e.g. "
            f"'{bad[0]}_value'",
            param="value_columns",
        )
    raise HeadInputError(
        f"{data.name}: class name(s) {bad} are also column names of predictions.csv (image, "
        "target, prediction and one column per class), whose columns would replace each other; "
        "rename the class (its folder, its label in the table or its line in the classes file), "
        f"e.g. '{bad[0]} class'"
    )


def _check_classes(data: TaskData) -> None:
    """Refuse a classification whose train split holds one class (before any method writes
    anything), and name the classes a split lacks: a class never trained on is never predicted,
    one never tested is not measured (and is left out of ``macro_f1`` and balanced accuracy).

    Multi-label: a class no train image is labelled with is never learnt, and one no test image
    is labelled with has no AP (it is left out of mAP). Regression: an output with the same
    value on every train image is not learnt, and on every test image its R² is undefined (NaN,
    left out of the mean R²). Each is said under ``--quiet``."""
    if data.task in ("multi-label", "regression"):
        targets = np.asarray(data.targets, dtype=np.float64)
        for split in ("train", "test"):
            rows = data.splits[split]
            if not len(rows):
                continue
            part = targets[rows]
            if data.task == "multi-label":
                lacking = np.flatnonzero(~(part > 0).any(axis=0)).tolist()
                if lacking:
                    shown_when_quiet.warning(
                        "%s: no image of the %s split is labelled %s%s", data.name, split,
                        _named(data.names, lacking),
                        "" if split == "train" else " (no AP: left out of mAP)",
                    )  # fmt: skip
                continue
            same = np.flatnonzero((part == part[:1]).all(axis=0)).tolist()
            if same:
                shown_when_quiet.warning(
                    "%s: target %s has one value on every image of the %s split%s", data.name,
                    _named(data.names, same), split,
                    " (nothing to learn)" if split == "train"
                    else " (R² undefined: NaN, left out of the mean R²)",
                )  # fmt: skip
        return
    if data.task != "classification":
        return
    targets = np.asarray(data.targets)
    train = np.unique(targets[data.splits["train"]])
    if len(train) < 2:
        only = f"'{data.names[int(train[0])]}'" if len(train) else "none"
        raise HeadInputError(
            f"{data.name}: every train sample is of one class ({only}); a classifier needs "
            "samples of at least two classes: add images of the others (or a class column with "
            "more than one value)",
            param="images",
        )
    for split in ("train", "test"):
        rows = data.splits[split]
        if not len(rows):
            continue
        missing = sorted(set(range(len(data.names))) - set(np.unique(targets[rows]).tolist()))
        if missing:  # a class the head cannot learn, or a score without it: said under --quiet
            shown_when_quiet.warning(
                "%s: the %s split holds no sample of %s", data.name, split,
                _named(data.names, missing),
            )  # fmt: skip


def _check_model_fit(cfg: FinetuneRunConfig, model: Any) -> None:
    """Refuse settings that name parts the model lacks (tapped blocks, ``last_n``) before any
    output is written."""
    if cfg.features != "embedding" and any(m not in ("zero-shot", "text-init") for m in cfg.method):
        try:
            model.block_indices(list(cfg.layers))
        except ValueError as err:
            raise HeadConfigError(str(err), param="layers") from None
    depth = int(model.depth)
    if cfg.encoder_mode == "last-n" and cfg.last_n > depth:
        raise HeadConfigError(
            f"last_n = {cfg.last_n} but the image tower has {depth} blocks; use 0..{depth} (or "
            "encoder_mode full)",
            param="last_n",
        )


def _check_resumed_heads(runner: _Runner) -> None:
    """``resume``: refuse before any work when the output folder holds a finished head of other
    settings, data or model, naming the options that differ.

    Trained heads are also checked through their training checkpoints, but the probes (and
    zero-shot) have none: they are recomputed from the cached features, and without this check
    a resumed run would replace some heads of the folder and keep others from another split or
    dataset, under one protocol card. Every head of the folder is checked, not only those of
    this run's methods, since the card's settings then describe all of them.
    """
    cfg = runner.cfg
    if not cfg.resume or not runner.out.is_dir():
        return
    from msclip.heads.runs import head_file_info, refuse_other_run

    settings = run_settings(cfg)
    for path in sorted(runner.out.glob("*/head.safetensors")):
        label = path.parent.name
        info = head_file_info(path)
        if "run_key" not in info:
            logger.warning(
                "%s does not record the run that wrote it (an older msclip): its settings, data "
                "and model cannot be checked against this resumed run's", path,
            )  # fmt: skip
            continue
        key = _run_key(cfg, runner.base_fingerprint, runner.data, label)
        same = _same_run(cfg, runner.base_fingerprint, runner.data, label)
        refuse_other_run(path, info["run_key"], info.get("settings"), key, settings, same)


def run_finetune(
    cfg: FinetuneRunConfig,
    model: Any = None,
    hooks: Sequence[Callable[[str, int], None]] = (),
    command: Sequence[str] = (),
    on_model: Callable[[Any], None] | None = None,
) -> RunResult:
    """Run every method of ``cfg`` (see the module docstring).

    Args:
        cfg: the run's settings (validated here).
        model: the :class:`msclip.MSCLIP` to use (default: built from ``cfg``).
        hooks: called with ``(method label, epoch)`` after each training epoch's checkpoint.
        command: the command line, for the records and the protocol card.
        on_model: called with the model once it is loaded (or with ``model``), before the
            methods run (``msclip-finetune`` prints its precision there).

    Returns:
        :class:`RunResult`.

    Raises:
        ConfigError: bad settings (before any work).
        HeadInputError, DatasetFormatError, DatasetNotFoundError: bad data (before any output
            is written).
        CheckpointError: ``resume`` with a training checkpoint or a finished head of other
            settings, data or model.
    """
    from msclip.eval.report import merge
    from msclip.hardware import library_versions

    cfg.validate()
    if cfg.dense:
        from msclip.heads.dense_finetune import run_dense_finetune

        return run_dense_finetune(cfg, model, hooks, command, on_model)
    t_start = time.perf_counter()
    data = load_task_data(cfg)
    if cfg.dataset:
        bad = [m for m in cfg.method if m in ("ridge",) and data.task != "regression"]
        bad += [m for m in cfg.method if m in ("zero-shot", "text-init")
                and data.task != "classification"]  # fmt: skip
        if bad:
            raise HeadConfigError(
                f"methods {bad} do not apply to {data.name} ({data.task})", param="method"
            )
    _check_classes(data)
    _check_prediction_columns(data)
    check_outputs(cfg, _planned_labels(cfg))
    if model is None:
        model = load_run_model(cfg, on_model)
    elif on_model is not None:
        on_model(model)
    _check_model_fit(cfg, model)
    runner = _Runner(cfg, model, data, hooks, command)
    _check_resumed_heads(runner)
    runner.out.mkdir(parents=True, exist_ok=True)
    results: list[MethodResult] = []
    for method in cfg.method:
        t0 = time.perf_counter()
        if method in _TRAINED:
            label, res, head, files = runner.run_trained(method)
            res.extra["method"] = method
            results.append(runner.write_outputs(label, method, res, head, files,
                                                time.perf_counter() - t0))  # fmt: skip
        else:
            produced = runner.run_probe(method)
            seconds = (time.perf_counter() - t0) / len(produced)
            for label, res, head in produced:
                res.extra["method"] = method
                results.append(runner.write_outputs(label, method, res, head, {}, seconds))
    merge(runner.save)
    names = data.item_names()
    protocol = {
        "schema": "msclip.finetune.protocol/1",
        "command": list(command),
        "config": cfg.to_dict(),
        "model": runner.facts,
        "data": data.describe(),
        "features": {m: runner.spec(m).to_dict() for m in cfg.method},
        "feature_cache": runner.cache_info,
        "methods": {
            m.label: {
                "hyperparameters": m.result.hyperparameters,
                "metrics": m.result.metrics,
                "main_metric": m.main_metric,
                "ci": {k: v.to_dict() for k, v in m.result.ci.items()},
                "outputs": m.files,
                "seconds": m.seconds,
            }
            for m in results
        },
        "unreadable": sorted(names[i] for i in runner.unreadable),
        "splits_rule": "see msclip.heads.data (documented per dataset)",
        "versions": library_versions(),
        "wall_s": time.perf_counter() - t_start,
    }
    write_protocol(runner.out / "protocol.yaml", protocol)
    return RunResult(data, results, protocol, runner.out, runner.save,
                     sorted(names[i] for i in runner.unreadable))  # fmt: skip
