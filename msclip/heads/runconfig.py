"""Settings of a probe or fine-tuning run (:class:`FinetuneRunConfig`).

One dataclass holds every option of :func:`msclip.heads.finetune.run_finetune` and of
``msclip-finetune``: values come from the defaults, a YAML file and command-line flags
(:mod:`msclip.options`), and :meth:`FinetuneRunConfig.validate` checks them all before any work,
reporting every problem at once. This module imports neither torch nor NumPy, so the command
line answers ``--help`` at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from msclip.errors import ConfigError, not_a_file
from msclip.options import (
    MAX_SEED,
    check_problems,
    options_to_dict,
    problems_without,
    update_options,
)

__all__ = [
    "DATA_TASKS",
    "DECODER_NAMES",
    "DENSE_TASKS",
    "ENCODER_MODES",
    "METHODS",
    "FinetuneRunConfig",
    "parse_dense_task",
]

#: The image-level tasks.
DATA_TASKS: tuple[str, ...] = ("classification", "multi-label", "regression")
#: The dense (per-pixel) tasks; ``multi-task`` trains the heads of ``dense_tasks`` together.
DENSE_TASKS: tuple[str, ...] = ("segmentation", "pixel-regression", "multi-task")
#: Decoders of the dense tasks (:mod:`msclip.heads.decoders`).
DECODER_NAMES: tuple[str, ...] = ("linear", "fcn", "upernet", "segformer")
#: Keys of one ``dense_tasks`` entry.
DENSE_TASK_KEYS: tuple[str, ...] = ("name", "kind", "column", "decoder", "weight", "loss",
                                    "class_weights", "ignore_index", "nodata", "scale",
                                    "huber_delta")  # fmt: skip
#: Methods of a run.
METHODS: tuple[str, ...] = ("zero-shot", "knn", "logistic", "ridge", "linear", "text-init")
#: Encoder modes (``frozen`` trains heads from cached features).
ENCODER_MODES: tuple[str, ...] = ("frozen", "lora", "last-n", "full", "scratch")
#: What LoRA may adapt (:mod:`msclip.heads.lora`, here so that settings are checked without torch):
#: the q, k, v thirds of the fused attention projection and the MLP.
LORA_TARGETS: tuple[str, ...] = ("q", "k", "v", "c_fc", "c_proj")
_TRAINED = ("linear", "text-init")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class FinetuneRunConfig:
    """Every setting of a probe or fine-tuning run (``msclip-finetune``; docs/heads.md)."""

    # -- data ---------------------------------------------------------------------------------
    dataset: str | None = field(
        default=None, metadata=_help("benchmark dataset of evaluation.py (name or YAML file)")
    )
    dataset_dir: str = field(
        default="benchmark_datasets", metadata=_help("folder holding the benchmark datasets")
    )
    csv: str | None = field(default=None, metadata=_help("CSV table of image paths and labels"))
    folders: str | None = field(
        default=None, metadata=_help("folder of class folders (<folder>/<class>/<image>)")
    )
    dataset_name: str | None = field(
        default=None, metadata=_help("name of the data in records (default: table/folder name)")
    )
    task: str = field(
        default="classification",
        metadata=_help(
            "classification, multi-label or regression (benchmark: the dataset's); dense: "
            "segmentation, pixel-regression or multi-task (dense_tasks)"
        ),
    )
    path_column: str = field(default="path", metadata=_help("CSV column of image paths"))
    label_columns: list[str] | None = field(
        default=None,
        metadata=_help(
            "CSV label column (classification, default 'label'); multi-label: several 0/1 "
            "columns, or one column with --label-separator or of lists ([a, b])"
        ),
    )
    value_columns: list[str] | None = field(
        default=None, metadata=_help("CSV columns of regression targets (default 'value')")
    )
    label_separator: str | None = field(
        default=None, metadata=_help("separator of the labels of one multi-label CSV cell")
    )
    scale: float = field(
        default=1.0, metadata=_help("regression targets are value * scale (e.g. 0.0001)")
    )
    split_column: str | None = field(
        default="split", metadata=_help("CSV column of split names (train/val/test), if present")
    )
    classes: str | None = field(
        default=None,
        metadata=_help(
            "class-name file (label = name lines, or .yaml): class order and prompt names"
        ),
    )
    data_root: str | None = field(
        default=None, metadata=_help("folder relative CSV paths start from (default: its folder)")
    )
    input_bands: list[str] | None = field(
        default=None, metadata=_help("band names of image files that do not name their bands")
    )
    sensor: str | None = field(default=None, metadata=_help("sensor of local band names"))
    val_fraction: float = field(
        default=0.1, metadata=_help("validation share of the seeded split (no split file)")
    )
    test_fraction: float = field(
        default=0.2, metadata=_help("test share of the seeded split (no split file)")
    )
    max_samples: int | None = field(
        default=None, metadata=_help("benchmark: seeded subset of this many images per split")
    )
    # -- dense tasks (segmentation, pixel-regression, multi-task) -----------------------------
    image_dir: str | None = field(
        default=None, metadata=_help("dense: folder of images (labels matched by file name)")
    )
    label_dir: str | None = field(
        default=None, metadata=_help("dense: folder of label / target rasters (same file names)")
    )
    image_column: str = field(default="image", metadata=_help("dense: CSV column of images"))
    label_column: str | None = field(
        default=None,
        metadata=_help("dense: CSV column of the rasters (default label; pixel-regression target)"),
    )
    dense_tasks: list[str] | None = field(
        default=None,
        metadata=_help(
            "multi-task: one entry per head, 'name=lc,kind=segmentation,column=label,"
            "decoder=upernet,weight=1' (also loss, class_weights, ignore_index, nodata, scale, "
            "huber_delta)"
        ),
    )
    decoder: str = field(
        default="upernet", metadata=_help(f"dense decoder: {', '.join(DECODER_NAMES)}")
    )
    decoder_channels: int | None = field(
        default=None, metadata=_help("decoder width (fcn/upernet channels, segformer embed_dim)")
    )
    dense_layers: list[int] | None = field(
        default=None, metadata=_help("dense: tapped blocks (default: the model's taps)")
    )
    crop_size: int | None = field(
        default=None, metadata=_help("dense: random training crops (default: the model's size)")
    )
    flip: bool = field(
        default=True, metadata=_help("dense: random horizontal / vertical flips of the crops")
    )
    eval_mode: str = field(
        default="auto",
        metadata=_help(
            "dense: validation and test images larger than the crops are predicted window by "
            "window at the crop size (auto, sliding: every image) or whole (whole)"
        ),
    )
    class_weights: list[str] | None = field(
        default=None,
        metadata=_help("segmentation class weights: K numbers, or auto / median (from labels)"),
    )
    ignore_index: int = field(
        default=255,
        metadata=_help("segmentation label excluded from loss and metrics (any integer, e.g. -1)"),
    )
    target_nodata: float | None = field(
        default=None, metadata=_help("pixel-regression target nodata (default: the files')")
    )
    # -- model --------------------------------------------------------------------------------
    model_name: str | None = field(
        default=None, metadata=_help("registered model or msclip .safetensors file")
    )
    ckpt_path: str | None = field(default=None, metadata=_help("checkpoint with the weights"))
    pretrained: bool = field(
        default=True, metadata=_help("load the published weights (--no-pretrained: random)")
    )
    precision: str = field(
        default="auto",
        metadata=_help(
            "auto (the machine's choice, see msclip.hardware, for frozen image-level features; "
            "fp32 where a dense decoder trains; where the image tower trains, float32 weights "
            "in fp32, or under bf16 autocast on a GPU with native bf16, as msclip-train), fp32 "
            "or bf16 (a tower that trains: bf16 autocast over its float32 weights)"
        ),
    )
    device: str | None = field(
        default=None,
        metadata=_help("auto (default: cuda if available, else cpu), cpu, cuda, cuda:1 ..."),
    )
    model_label: str | None = field(
        default=None, metadata=_help("row name in the reports (default: from the model name)")
    )
    # -- methods ------------------------------------------------------------------------------
    method: list[str] = field(
        default_factory=lambda: ["knn", "logistic"],
        metadata=_help(f"methods: {', '.join(METHODS)}"),
    )
    features: str = field(
        default="cls",
        metadata=_help(
            "features of knn/logistic/ridge/linear: cls (class token), mean (patch tokens) or "
            "embedding (joint space; zero-shot and text-init always use it)"
        ),
    )
    layers: list[int] = field(
        default_factory=lambda: [-1], metadata=_help("blocks pooled by cls/mean (from the end <0)")
    )
    k: int = field(default=20, metadata=_help("kNN neighbours (weighted by exp(sim/T))"))
    temperature: float = field(default=0.07, metadata=_help("kNN temperature T"))
    k_unweighted: int | None = field(
        default=5, metadata=_help("neighbours of the unweighted kNN beside it ('none': skip)")
    )
    cs: list[float] | None = field(
        default=None, metadata=_help("logistic C values (default logspace(-7, 2, 20))")
    )
    alphas: list[float] | None = field(
        default=None, metadata=_help("ridge alpha values (default logspace(-3, 5, 17))")
    )
    max_iter: int = field(default=1000, metadata=_help("L-BFGS iterations per logistic fit"))
    templates: str | None = field(
        default=None, metadata=_help("prompt templates of zero-shot / text-init (set or file)")
    )
    # -- gradient-trained heads and fine-tuning -----------------------------------------------
    encoder_mode: str = field(
        default="frozen",
        metadata=_help(f"image tower of linear/text-init: {', '.join(ENCODER_MODES)}"),
    )
    last_n: int = field(default=1, metadata=_help("blocks trained by last-n"))
    lora_rank: int = field(default=8, metadata=_help("LoRA rank"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA alpha (update alpha/r B A)"))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout"))
    lora_targets: list[str] = field(
        default_factory=lambda: ["q", "v"], metadata=_help("LoRA targets: q k v c_fc c_proj")
    )
    merge_lora: bool = field(
        default=False, metadata=_help("also save the weights with the adapters merged")
    )
    epochs: int = field(default=30, metadata=_help("epochs of linear/text-init training"))
    batch_size: int = field(default=64, metadata=_help("training batch"))
    lr: float | None = field(
        default=None,
        metadata=_help("head learning rate (default 1e-3 linear, 1e-4 text-init)"),
    )
    encoder_lr: float = field(default=1e-4, metadata=_help("peak learning rate of the tower"))
    layer_decay: float = field(default=0.75, metadata=_help("layer-wise lr decay of the tower"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay of the head"))
    encoder_weight_decay: float = field(
        default=0.05, metadata=_help("AdamW weight decay of the tower's matrices")
    )
    warmup_epochs: int = field(default=0, metadata=_help("epochs of linear warm-up"))
    loss: str | None = field(
        default=None, metadata=_help("ce, bce, mse, l1 or huber (default: the task's)")
    )
    huber_delta: float = field(default=1.0, metadata=_help("Huber delta (standardised units)"))
    batch_norm: bool = field(default=True, metadata=_help("batch norm before the linear head"))
    cache_images: bool = field(
        default=False,
        metadata=_help(
            "keep preprocessed images in memory between epochs (encoder modes, small sets)"
        ),
    )
    augment: bool = field(
        default=False, metadata=_help("random flips of training images (encoder modes)")
    )
    # -- evaluation ---------------------------------------------------------------------------
    n_resamples: int = field(default=1000, metadata=_help("bootstrap resamples of the CIs"))
    confidence: float = field(default=0.95, metadata=_help("coverage of the intervals"))
    # -- runtime ------------------------------------------------------------------------------
    seed: int = field(default=0, metadata=_help("seed of splits, heads, batch order, bootstrap"))
    encode_batch_size: int = field(default=64, metadata=_help("images per encoder call"))
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))
    min_valid: float | None = field(
        default=None,
        metadata=_help(
            "skip (and count) images with a smaller share of valid pixels (default: 0.5 for "
            "folders and CSV tables, as msclip-inference; none for benchmark datasets, whose "
            "protocols score every image; 0: keep every image, a tile of nodata only then "
            "filled with band means)"
        ),
    )
    nodata: float | None = field(default=None, metadata=_help("nodata value overriding files'"))
    feature_cache: bool = field(default=True, metadata=_help("keep frozen features on disk"))
    cache_dir: str | None = field(
        default=None, metadata=_help("feature cache (default $MSCLIP_CACHE_DIR/features)")
    )
    text_cache: bool = field(default=True, metadata=_help("cache prompt embeddings on disk"))
    output_dir: str = field(
        default="runs/finetune", metadata=_help("heads, adapters, checkpoints, protocol card")
    )
    save_path: str = field(
        default="results", metadata=_help("results folder of records (shared with evaluation)")
    )
    resume: bool = field(default=False, metadata=_help("continue the run in output_dir"))
    save_every: int = field(default=1, metadata=_help("training checkpoint every N epochs"))
    progress: bool = field(default=True, metadata=_help("progress bars"))

    def update(self, values: Any, source: str = "config") -> FinetuneRunConfig:
        """Set options from a mapping (snake_case or kebab-case keys)."""
        return update_options(self, values, source)

    def to_dict(self) -> dict[str, Any]:
        """Every option as a plain dict."""
        return options_to_dict(self)

    @property
    def source_kind(self) -> str:
        if self.dataset:
            return "dataset"
        if self.csv:
            return "csv"
        return "pairs" if self.image_dir else "folders"

    @property
    def dense(self) -> bool:
        """Whether the task is a dense (per-pixel) one."""
        return self.task in DENSE_TASKS

    def dense_task_entries(self) -> list[dict[str, Any]]:
        """The dense heads of the run: ``dense_tasks`` parsed, or the one task of ``task``.

        Raises:
            ConfigError: a malformed ``dense_tasks`` entry.
        """
        if self.task == "multi-task":
            return [parse_dense_task(e) for e in self.dense_tasks or []]
        column = self.label_column or ("label" if self.task == "segmentation" else "target")
        return [{"name": self.task, "kind": self.task, "column": column}]

    def valid_share(self) -> float | None:
        """The share of valid pixels under which an image is left out (``None``: none is):
        ``min_valid`` when given (0 keeps every image); else 0.5 for one's own images (class
        folders, CSV tables), as ``msclip-inference`` skips them, and none for a benchmark
        dataset, whose published protocol scores every image of its splits."""
        if self.min_valid is not None:
            return self.min_valid or None
        return None if self.dataset else 0.5

    def inapplicable(self, given: Iterable[str], grid: bool = False) -> list[str]:
        """Why each of the ``given`` options does nothing in this run (an empty list when all
        apply): an option of another task, data source, method or encoder mode.

        A run ignores the options it has no use for, so a value given for one (``--k`` with
        only the logistic probe, ``--decoder`` on a classification, ``--method`` on a dense
        task) would otherwise be dropped without a word. Callers pass the options given
        explicitly (flags, YAML keys), not the defaults.

        Args:
            given: option names (snake_case).
            grid: the run is a ``msclip-finetune grid`` (decoders and encoder modes come from
                the grid, so their own options are not judged by this config's).

        Returns:
            ``"option: reason"`` lines, in the order given.
        """
        methods = set(self.method)
        mode = self.encoder_mode
        dense_only = ("image_column", "label_column", "dense_tasks", "decoder", "decoder_channels",
                      "dense_layers", "crop_size", "flip", "eval_mode", "class_weights",
                      "ignore_index", "target_nodata")  # fmt: skip
        rules: dict[str, str | None] = {}
        if self.dense:
            for name in ("method", "features", "layers", "k", "temperature", "k_unweighted", "cs",
                         "alphas", "max_iter", "batch_norm", "augment", "min_valid",
                         "max_samples", "dataset_dir", "path_column", "label_columns",
                         "value_columns", "label_separator"):  # fmt: skip
                rules[name] = f"applies to image-level tasks, not to the dense task {self.task}"
            if not grid:
                rules["templates"] = "scores the zero-shot MaskCLIP row of msclip-finetune grid"
            kinds = {t.get("kind") for t in self._entries_or_empty()}
            if "segmentation" not in kinds:
                for name in ("class_weights", "ignore_index"):
                    rules[name] = "applies to segmentation only"
            if "pixel-regression" not in kinds:
                rules["target_nodata"] = "applies to pixel-regression only"
        else:
            for name in dense_only:
                rules[name] = (f"applies to dense tasks (segmentation, pixel-regression, "
                               f"multi-task), not to {self.task}")  # fmt: skip
            if not self.dataset:
                rules["max_samples"] = "takes a subset of a benchmark dataset (dataset) only"
                rules["dataset_dir"] = "is where benchmark datasets (dataset) are found"
            if not self.csv:
                for name in ("path_column", "label_columns", "value_columns", "label_separator",
                             "split_column", "data_root"):  # fmt: skip
                    rules[name] = "reads a CSV table (csv) only"
            if self.task != "regression":
                for name in ("value_columns", "scale"):
                    rules[name] = f"applies to regression, not to {self.task}"
            if self.task != "multi-label":
                rules["label_separator"] = f"applies to multi-label, not to {self.task}"
            per_method = {
                "knn": ("k", "temperature", "k_unweighted"),
                "logistic": ("cs", "max_iter"),
                "ridge": ("alphas",),
                "linear": ("batch_norm",),
            }
            for m, names in per_method.items():
                if m not in methods:
                    for name in names:
                        rules[name] = f"applies to the {m} method, not run here ({self.method})"
            if not methods & {"zero-shot", "text-init"}:
                rules["templates"] = f"applies to zero-shot and text-init, not run ({self.method})"
            if not methods & {"knn", "logistic", "ridge", "linear"}:
                for name in ("features", "layers"):
                    rules[name] = (
                        f"zero-shot and text-init always use the embedding ({self.method})"
                    )
            if not methods & set(_TRAINED):
                for name in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                             "loss", "huber_delta", "save_every"):  # fmt: skip
                    rules[name] = f"applies to the trained heads {list(_TRAINED)}, not run here"
            if mode == "frozen":
                for name in ("augment", "cache_images"):
                    rules[name] = "applies to encoder modes that read images (not frozen)"
        if not grid:
            if mode == "frozen":
                for name in ("encoder_lr", "layer_decay", "encoder_weight_decay"):
                    rules[name] = "trains the image tower: applies to encoder modes, not frozen"
            if mode != "lora":
                for name in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
                             "merge_lora"):  # fmt: skip
                    rules[name] = f"applies to encoder_mode lora, not {mode}"
            if mode != "last-n":
                rules["last_n"] = f"applies to encoder_mode last-n, not {mode}"
        return [f"{name}: {rules[name]}" for name in given if rules.get(name)]

    def _entries_or_empty(self) -> list[dict[str, Any]]:
        try:
            return self.dense_task_entries()
        except ConfigError:
            return []

    def _check_model_and_classes(self, need: Callable[[bool, str], None]) -> None:
        """The checks image-level and dense runs share: class file, model, weights, precision."""
        if self.classes is not None:
            why = not_a_file(self.classes, "a class-name file (.txt or .yaml)")
            need(why is None, f"classes file {self.classes!r} {why}")
        need(
            self.model_name is not None or self.ckpt_path is not None,
            "model_name (or ckpt_path with a self-describing .safetensors) is required",
        )
        if self.ckpt_path is not None and not os.path.isfile(self.ckpt_path):
            from msclip.pretrained import missing_checkpoint_message

            need(False, f"ckpt_path: {missing_checkpoint_message(self.ckpt_path)}")
        if not self.pretrained:
            from msclip.factory import names_checkpoint_file

            # the file's weights would be loaded all the same, and the run recorded as random
            need(
                not names_checkpoint_file(self.model_name),
                f"pretrained false (--no-pretrained) asks for random weights, but model_name "
                f"(--model-name) {self.model_name!r} is a checkpoint file, whose weights are "
                "loaded: drop --no-pretrained to use the file, or give a registered model name "
                "for random weights of its architecture",
            )
        need(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        need(self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16, "
                                                         f"got {self.precision!r}")  # fmt: skip
        if self.precision == "auto":
            from msclip.hardware import env_precision_problem

            # it replaces what auto picks: int8 would give the heads the features of a quantised
            # tower, which the option itself refuses
            problem = env_precision_problem(
                ("fp32", "bf16", "fp16"),
                "it",
                "msclip-finetune runs the encoder in auto, fp32 or bf16",
            )
            need(problem is None, problem or "")

    def validate(self) -> FinetuneRunConfig:
        """Check every value before any work; all problems are reported at once.

        Raises:
            ConfigError: lists each bad option, its value and the fix.
        """
        check_problems(self.problems())
        return self

    def problems(self, skip: Collection[str] = ()) -> list[str]:
        """Every problem :meth:`validate` reports, one line each, leaving out those of the
        options in ``skip`` (:func:`msclip.options.problems_without`; the command line reports
        the type errors and these together)."""
        return problems_without(self._problems(), skip)

    def _problems(self) -> list[str]:
        e: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                e.append(message)

        sources = [s for s in ("dataset", "csv", "folders", "image_dir") if getattr(self, s)]
        need(len(sources) == 1, f"give exactly one data source (dataset, csv, folders, "
                                f"image_dir + label_dir); got {sources or 'none'}")  # fmt: skip
        tasks = (*DATA_TASKS, *DENSE_TASKS)
        need(self.task in tasks, f"task must be one of {list(tasks)}, got {self.task!r}")
        if self.task in DENSE_TASKS:
            self._validate_dense(need, e)
            return e
        need(not self.image_dir, "image_dir / label_dir hold dense data: use a dense task")
        if self.csv:
            need(os.path.isfile(self.csv), f"csv file {self.csv!r} not found")
        if self.folders:
            need(os.path.isdir(self.folders), f"folders {self.folders!r} is not a folder")
        self._check_model_and_classes(need)
        unknown = [m for m in self.method if m not in METHODS]
        need(not unknown and bool(self.method),
             f"method must name some of {list(METHODS)}; got {self.method}")  # fmt: skip
        need(
            len(set(self.method)) == len(self.method), f"method lists a value twice: {self.method}"
        )
        need(self.features in ("cls", "mean", "embedding"),
             f"features must be cls, mean or embedding, got {self.features!r}")  # fmt: skip
        need(bool(self.layers), "layers must name at least one block")
        need(
            self.encoder_mode in ENCODER_MODES,
            f"encoder_mode must be one of {list(ENCODER_MODES)}, got {self.encoder_mode!r}",
        )
        if self.encoder_mode != "frozen":
            need(len(self.method) == 1 and self.method[0] in _TRAINED,
                 f"encoder_mode {self.encoder_mode!r} trains the image tower with one head: give "
                 f"one method among {list(_TRAINED)}, got {self.method}")  # fmt: skip
        by_task = {"classification": ("zero-shot", "knn", "logistic", "linear", "text-init"),
                   "multi-label": ("knn", "logistic", "linear"),
                   "regression": ("ridge", "linear")}  # fmt: skip
        if self.task in by_task and not self.dataset:
            bad = [m for m in self.method if m in METHODS and m not in by_task[self.task]]
            need(not bad, f"methods {bad} do not apply to {self.task}; use "
                          f"{list(by_task[self.task])}")  # fmt: skip
        losses = {"classification": ("ce",), "multi-label": ("bce",),
                  "regression": ("mse", "l1", "huber")}  # fmt: skip
        if self.loss is not None and self.task in losses and not self.dataset:
            need(
                self.loss in losses[self.task],
                f"loss {self.loss!r} does not fit {self.task}; use {list(losses[self.task])}",
            )
        for name in ("k", "max_iter", "epochs", "batch_size", "encode_batch_size", "save_every",
                     "lora_rank"):  # fmt: skip
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.k_unweighted is not None:
            need(self.k_unweighted >= 1, f"k_unweighted must be >= 1, got {self.k_unweighted}")
        need(not (self.cache_images and self.workers > 0),
             "cache_images keeps images in this process: use it with workers 0")  # fmt: skip
        need(self.batch_size >= 2, f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        for name in ("temperature", "encoder_lr", "layer_decay", "confidence", "huber_delta"):
            v = getattr(self, name)
            need(v > 0 and math.isfinite(v), f"{name} must be a positive number, got {v}")
        need(self.confidence < 1, f"confidence must lie in (0, 1), got {self.confidence}")
        need(self.layer_decay <= 1, f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        if self.lr is not None:
            need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "encoder_weight_decay", "warmup_epochs", "workers",
                     "n_resamples", "last_n"):  # fmt: skip
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(
            0 <= self.lora_dropout < 1, f"lora_dropout must lie in [0, 1), got {self.lora_dropout}"
        )
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            need(0 <= v < 1, f"{name} must lie in [0, 1), got {v}")
        need(self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction must be < 1")
        if self.min_valid is not None:
            need(0 <= self.min_valid <= 1, f"min_valid must lie in [0, 1], got {self.min_valid}")
        if self.max_samples is not None:
            need(self.max_samples >= 1, f"max_samples must be >= 1, got {self.max_samples}")
        for name, values in (("cs", self.cs), ("alphas", self.alphas)):
            if values is not None:
                need(bool(values) and all(v > 0 for v in values),
                     f"{name} must be positive numbers, got {values}")  # fmt: skip
        self._validate_model_and_common(need, e)
        return e

    def _validate_model_and_common(self, need: Any, e: list[str]) -> None:
        """Checks image-level and dense runs share: scale, input bands, templates, LoRA."""
        # LoRA settings are checked here, before the model and data load, as the adapters
        # would check them only when attached (after the output folder exists).
        if self.encoder_mode == "lora":
            need(
                math.isfinite(self.lora_alpha) and self.lora_alpha > 0,
                f"lora_alpha must be a positive number (the update is alpha / rank * B A: 0 "
                f"trains nothing), got {self.lora_alpha}",
            )

            targets = list(self.lora_targets)
            bad = [t for t in targets if t not in LORA_TARGETS]
            need(
                not bad and bool(targets) and len(set(targets)) == len(targets),
                f"lora_targets {targets} are invalid: give distinct names among "
                f"{list(LORA_TARGETS)} (q v, plus c_fc c_proj for the MLP)",
            )
        need(self.scale != 0 and math.isfinite(self.scale), f"scale must be non-zero, got "
                                                             f"{self.scale}")  # fmt: skip
        if self.input_bands:
            from msclip.errors import BandError
            from msclip.spectral.bands import resolve_bands

            try:
                resolve_bands(self.input_bands, self.sensor)
            except BandError as err:
                e.append(f"input_bands: {err}")
        if self.templates is not None:
            from msclip.errors import TemplateError
            from msclip.zero_shot import load_templates

            try:
                load_templates(self.templates)
            except TemplateError as err:
                e.append(f"templates: {err}")

    def _validate_dense(self, need: Any, e: list[str]) -> None:
        need(not self.dataset and not self.folders,
             f"task {self.task} reads image / label raster pairs: give csv (image and label "
             "columns) or image_dir + label_dir")  # fmt: skip
        if self.csv:
            need(os.path.isfile(self.csv), f"csv file {self.csv!r} not found")
        if self.image_dir or self.label_dir:
            need(bool(self.image_dir and self.label_dir), "image_dir and label_dir go together")
            for name in ("image_dir", "label_dir"):
                v = getattr(self, name)
                if v:
                    need(os.path.isdir(v), f"{name} {v!r} is not a folder")
            need(self.task != "multi-task", "multi-task reads its rasters from a csv table")
        self._check_model_and_classes(need)
        need(self.decoder in DECODER_NAMES,
             f"decoder must be one of {list(DECODER_NAMES)}, got {self.decoder!r}")  # fmt: skip
        need(
            self.encoder_mode in ENCODER_MODES,
            f"encoder_mode must be one of {list(ENCODER_MODES)}, got {self.encoder_mode!r}",
        )
        if self.task == "multi-task":
            need(bool(self.dense_tasks), "multi-task needs dense_tasks (one entry per head)")
        try:
            entries = self.dense_task_entries()
        except ConfigError as err:
            e.append(str(err))
            entries = []
        names = [t.get("name") for t in entries]
        need(len(set(names)) == len(names), f"dense_tasks names repeat: {names}")
        for t in entries:
            kind = t.get("kind", "segmentation")
            loss = t.get("loss", self.loss)
            allowed = ("ce",) if kind == "segmentation" else ("mse", "l1", "huber")
            if loss is not None:
                need(loss in allowed, f"loss {loss!r} does not fit {kind}; use {list(allowed)}")
            dec = t.get("decoder", self.decoder)
            need(dec in DECODER_NAMES, f"decoder {dec!r} of task {t.get('name')!r} is not one "
                                       f"of {list(DECODER_NAMES)}")  # fmt: skip
        if self.class_weights is not None:
            cw = [str(v).lower() for v in self.class_weights]
            ok = (len(cw) == 1 and cw[0] in ("auto", "inverse", "median")) or all(
                _is_number(v) and float(v) >= 0 for v in cw
            )
            need(ok, f"class_weights must be auto, median or K numbers >= 0, got "
                     f"{self.class_weights}")  # fmt: skip
        if self.crop_size is not None:
            need(self.crop_size >= 1, f"crop_size must be >= 1, got {self.crop_size}")
        need(self.eval_mode in ("auto", "whole", "sliding"),
             f"eval_mode must be auto, whole or sliding, got {self.eval_mode!r}")  # fmt: skip
        if self.decoder_channels is not None:
            need(self.decoder_channels >= 1,
                 f"decoder_channels must be >= 1, got {self.decoder_channels}")  # fmt: skip
        for name in ("epochs", "batch_size", "encode_batch_size", "save_every", "lora_rank"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.batch_size >= 2, f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        for name in ("encoder_lr", "layer_decay", "huber_delta"):
            v = getattr(self, name)
            need(v > 0 and math.isfinite(v), f"{name} must be a positive number, got {v}")
        need(self.layer_decay <= 1, f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        if self.lr is not None:
            need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "encoder_weight_decay", "warmup_epochs", "workers",
                     "last_n"):  # fmt: skip
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(
            0 <= self.lora_dropout < 1, f"lora_dropout must lie in [0, 1), got {self.lora_dropout}"
        )
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            need(0 <= v < 1, f"{name} must lie in [0, 1), got {v}")
        need(self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction must be < 1")
        self._validate_model_and_common(need, e)


def _is_number(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def parse_dense_task(entry: str) -> dict[str, Any]:
    """One ``dense_tasks`` entry, ``key=value`` pairs separated by commas, as a dict.

    ``name`` and ``kind`` (segmentation or pixel-regression) are required; ``column`` defaults to
    ``label`` / ``target``; ``weight`` (the loss weight), ``scale``, ``huber_delta`` and
    ``nodata`` are numbers, ``ignore_index`` an integer, ``class_weights`` ``auto``, ``median``
    or numbers joined by ``;``.

    Raises:
        ConfigError: an unknown key, a missing name or kind, or a bad value.
    """
    out: dict[str, Any] = {}
    for part in str(entry).split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or key not in DENSE_TASK_KEYS:
            raise ConfigError(
                f"dense_tasks entry {entry!r}: {part!r} is not key=value with a key among "
                f"{list(DENSE_TASK_KEYS)}"
            )
        out[key] = value
    for k in ("name", "kind"):
        if k not in out:
            raise ConfigError(f"dense_tasks entry {entry!r} needs {k}=...")
    if out["kind"] not in DENSE_TASKS[:2]:
        raise ConfigError(
            f"dense_tasks entry {entry!r}: kind must be segmentation or pixel-regression"
        )
    out.setdefault("column", "label" if out["kind"] == "segmentation" else "target")
    try:
        for k in ("weight", "scale", "huber_delta", "nodata"):
            if k in out:
                out[k] = float(out[k])
        if "ignore_index" in out:
            out["ignore_index"] = int(out["ignore_index"])
    except ValueError as err:
        raise ConfigError(f"dense_tasks entry {entry!r}: {err}") from None
    if "weight" in out and not (math.isfinite(out["weight"]) and out["weight"] >= 0):
        raise ConfigError(f"dense_tasks entry {entry!r}: weight must be >= 0")
    if "class_weights" in out:
        out["class_weights"] = [v for v in out["class_weights"].split(";") if v]
    return out
