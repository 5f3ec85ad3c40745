"""Configuration of contrastive (continual) pretraining.

One dataclass, :class:`TrainConfig`, holds every option. Values come, in increasing precedence,
from the defaults, a YAML file (``--config``; keys in ``snake_case`` or ``kebab-case``) and
command-line flags (``--kebab-case``; booleans as ``--flag`` / ``--no-flag``; ``none`` clears an
optional value). :meth:`TrainConfig.validate` checks every value before any work starts and
reports all problems at once, each naming the option, the bad value and the fix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msclip.cuda import LOSS_IMPLS
from msclip.errors import ConfigError, not_a_file
from msclip.hardware import is_auto_device
from msclip.options import (
    MAX_SEED,
    check_problems,
    load_yaml,
    options_to_dict,
    problems_without,
    unwrap_optional,
    update_options,
)
from msclip.options import option_types as _option_types

__all__ = [
    "TABLE_EXTENSIONS",
    "TRAINABLE_PRESETS",
    "ConfigError",
    "TrainConfig",
    "load_yaml",
    "option_types",
    "unwrap_optional",
]

#: Presets of ``--trainable`` (see :mod:`msclip.train.optim`).
TRAINABLE_PRESETS = ("patch-embed", "patch-embed+attn", "visual", "all")
TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
_LOSSES = ("clip", "siglip")
_OPTIMIZERS = ("adamw", "sgd")
_SCHEDULES = ("cosine", "constant")
_PRECISIONS = ("auto", "fp32", "bf16")
_BACKENDS = ("auto", "gloo", "nccl")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Every option of a training run (see ``docs/training.md`` for the reference)."""

    # -- data ---------------------------------------------------------------------------------
    train_data: str = field(
        default="", metadata=_help("CSV or Parquet table of image paths and captions (required)")
    )
    val_data: str | None = field(
        default=None, metadata=_help("held-out table; default: split --val-fraction off train")
    )
    val_fraction: float = field(
        default=0.1, metadata=_help("fraction of the train table held out when no --val-data")
    )
    image_column: str = field(
        default="image", metadata=_help("column of image paths (relative to the table's folder)")
    )
    caption_columns: list[str] | None = field(
        default=None,
        metadata=_help(
            "caption columns, one drawn per sample and step; default: 'caption' and "
            "'caption_<n>' columns of the table"
        ),
    )
    data_root: str | None = field(
        default=None,
        metadata=_help(
            "folder relative image paths start from (default: the folder of each table)"
        ),
    )
    input_bands: list[str] | None = field(
        default=None, metadata=_help("band names of image files that do not name their bands")
    )
    sensor: str | None = field(
        default=None, metadata=_help("sensor whose local band names the files use")
    )
    max_bad_fraction: float = field(
        default=0.01,
        metadata=_help(
            "fail when more than this fraction of the table is bad (missing or unreadable "
            "image, empty caption)"
        ),
    )
    num_workers: int = field(
        default=0, metadata=_help("DataLoader worker processes per training process")
    )
    cache_images: bool = field(
        default=False,
        metadata=_help("keep decoded rasters in memory (small data sets, --num-workers 0)"),
    )
    # -- augmentation -------------------------------------------------------------------------
    augment: bool = field(
        default=True, metadata=_help("random resized crop and flips on the band tensor")
    )
    crop_scale: tuple[float, float] = field(
        default=(0.5, 1.0), metadata=_help("area fraction range of the random crop")
    )
    crop_ratio: tuple[float, float] = field(
        default=(0.75, 4 / 3), metadata=_help("aspect ratio range of the random crop")
    )
    hflip: float = field(default=0.5, metadata=_help("probability of a horizontal flip"))
    vflip: float = field(default=0.5, metadata=_help("probability of a vertical flip"))
    # -- model --------------------------------------------------------------------------------
    model: str | None = field(
        default=None,
        metadata=_help(
            "registered model name (architecture, bands, statistics), e.g. msclip-tiny or "
            "Llama3-MS-CLIP-Base; leave unset to continue the msclip checkpoint given as --init"
        ),
    )
    bands: list[str] | None = field(
        default=None,
        metadata=_help(
            "bands of the model trained (default: the model's, or the --init checkpoint's), its "
            "patch kernel remapped to them by wavelength; not the image files' band names, which "
            "are --input-bands (the --bands of the other msclip programs)"
        ),
    )
    init: str = field(
        default="random",
        metadata=_help(
            "'random', 'pretrained' (the model's published weights), a registered RGB model "
            "name or checkpoint path (patch kernel extended to the bands by zero-init), or an "
            "msclip checkpoint"
        ),
    )
    trainable: str = field(
        default="all", metadata=_help(f"trainable preset: {', '.join(TRAINABLE_PRESETS)}")
    )
    trainable_patterns: list[str] = field(
        default_factory=lambda: [],
        metadata=_help(
            "extra trainable parameters (fnmatch patterns on names such as 'visual.ln_post.*')"
        ),
    )
    frozen_patterns: list[str] = field(
        default_factory=lambda: [],
        metadata=_help("parameters frozen even if a preset selects them"),
    )
    grad_checkpointing: bool = field(
        default=False, metadata=_help("recompute activations in backward (less memory)")
    )
    trim_text: bool = field(
        default=True, metadata=_help("drop padding tokens before the text transformer (faster)")
    )
    # -- loss ---------------------------------------------------------------------------------
    loss: str = field(
        default="clip", metadata=_help("contrastive loss: 'clip' (InfoNCE) or 'siglip' (sigmoid)")
    )
    init_logit_scale: float | None = field(
        default=None,
        metadata=_help(
            "initial logit scale (log of the inverse temperature); default: the model's "
            "(SigLIP from random init: log 10)"
        ),
    )
    init_logit_bias: float = field(default=-10.0, metadata=_help("initial SigLIP logit bias"))
    max_logit_scale: float = field(
        default=100.0, metadata=_help("the inverse temperature is clamped to [1, this]")
    )
    train_logit_scale: bool = field(
        default=True, metadata=_help("learn the temperature (and SigLIP bias)")
    )
    loss_impl: str = field(
        default="auto",
        metadata=_help(
            "how the loss is computed: 'plain' (B x B logits), 'chunked' (blockwise PyTorch, "
            "O(B d) memory), 'triton' (fused GPU kernels) or 'auto' (the MSCLIP_LOSS_IMPL "
            "environment variable if set, else plain below a global batch of 4096, 8192 on a "
            "GPU, and chunked from there)"
        ),
    )
    # -- optimisation -------------------------------------------------------------------------
    optimizer: str = field(default="adamw", metadata=_help("'adamw' or 'sgd'"))
    lr: float = field(default=5e-4, metadata=_help("peak learning rate"))
    patch_embed_lr: float | None = field(
        default=None, metadata=_help("peak learning rate of the patch embedding (default: --lr)")
    )
    layer_decay: float = field(
        default=1.0,
        metadata=_help(
            "layer-wise learning-rate decay of the rest: block i of L gets lr*decay^(L-i), "
            "embeddings lr*decay^(L+1)"
        ),
    )
    weight_decay: float = field(
        default=0.2, metadata=_help("decoupled weight decay (never on norms, biases, embeddings)")
    )
    betas: tuple[float, float] = field(default=(0.9, 0.98), metadata=_help("AdamW betas"))
    eps: float = field(default=1e-6, metadata=_help("AdamW epsilon"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    schedule: str = field(
        default="cosine",
        metadata=_help(
            "'cosine' (warm-up, cosine, optional warm restarts) or 'constant' (warm-up, constant)"
        ),
    )
    warmup_steps: int = field(default=0, metadata=_help("linear warm-up steps"))
    min_lr_ratio: float = field(
        default=0.0, metadata=_help("cosine floor as a fraction of the peak learning rate")
    )
    restart_steps: int | None = field(
        default=None,
        metadata=_help(
            "length of the first cosine cycle in steps (warm restarts); default: one cycle"
        ),
    )
    restart_mult: float = field(
        default=1.0, metadata=_help("each cosine cycle is this many times longer than the last")
    )
    grad_clip_norm: float | None = field(
        default=1.0, metadata=_help("clip the global gradient norm ('none': off)")
    )
    batch_size: int = field(
        default=32, metadata=_help("global contrastive batch (all processes together)")
    )
    accum_steps: int = field(
        default=1,
        metadata=_help(
            "split each process's batch into this many chunks (feature cache); the contrastive "
            "batch stays --batch-size"
        ),
    )
    epochs: int = field(default=1, metadata=_help("passes over the training table"))
    max_steps: int | None = field(
        default=None, metadata=_help("stop after this many optimiser steps (overrides epochs)")
    )
    precision: str = field(
        default="auto",
        metadata=_help(
            "'auto' (bf16 autocast on a GPU with native bf16, else fp32), 'fp32' or 'bf16' "
            "(autocast; on a CPU slow for attention, and emulated without native bf16)"
        ),
    )
    # -- runtime ------------------------------------------------------------------------------
    seed: int = field(
        default=0, metadata=_help("seed of the model init, data order, captions and augmentations")
    )
    device: str = field(
        default="auto", metadata=_help("'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:<n>'")
    )
    dist_backend: str = field(
        default="auto", metadata=_help("torch.distributed backend: 'auto', 'gloo' or 'nccl'")
    )
    threads: int | None = field(
        default=None, metadata=_help("CPU threads per process (default: cores / processes)")
    )
    output_dir: str = field(
        default="runs/train", metadata=_help("folder of checkpoints, logs and final.safetensors")
    )
    save_every: int = field(
        default=0, metadata=_help("write a checkpoint every N steps (0: at epoch ends and the end)")
    )
    keep_checkpoints: int = field(
        default=2, metadata=_help("number of step checkpoints kept (0: all)")
    )
    resume: str | None = field(
        default=None,
        metadata=_help(
            "training checkpoint to continue, or 'latest' (of --output-dir; also --resume alone)"
        ),
    )
    log_every: int = field(default=10, metadata=_help("log training metrics every N steps"))
    progress: bool = field(default=True, metadata=_help("tqdm progress bars (first process only)"))
    val_every: int = field(
        default=1, metadata=_help("validate every N epochs (0: only at the end)")
    )
    val_batch_size: int = field(default=64, metadata=_help("images per forward pass in validation"))
    zeroshot_data: str | None = field(
        default=None,
        metadata=_help("class-folder data set (<root>/<class>/<image>) for zero-shot validation"),
    )
    zeroshot_templates: str = field(
        default="short",
        metadata=_help(
            "prompt templates of zero-shot validation: a template set of msclip.zero_shot "
            "(eo, short, sentinel2) or a text file with one template per line containing {c}"
        ),
    )
    zeroshot_max_per_class: int | None = field(
        default=None, metadata=_help("images per class used in zero-shot validation")
    )

    # -- conversion ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict (tuples become lists)."""
        return options_to_dict(self)

    def to_json(self) -> str:
        """The config as a JSON string (stored in checkpoints)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build a config from a mapping (unknown keys and ill-typed values raise)."""
        cfg = cls()
        cfg.update(values, source)
        return cfg

    def update(self, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Set options from a mapping whose keys may be snake_case or kebab-case."""
        return update_options(self, values, source)

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check every value (files that must exist, ranges, choices); raise on any problem.

        Raises:
            ConfigError: lists every bad option with the value and the fix.
        """
        check_problems(self.problems())
        return self

    def problems(self, skip: Collection[str] = ()) -> list[str]:
        """Every problem :meth:`validate` reports, one line each, leaving out those of the
        options in ``skip``: options whose given value was refused for its type still hold
        their default, whose checks would only mislead."""
        e: list[str] = []

        def need(ok: bool, message: str) -> None:
            """Record ``message`` when ``ok`` is false."""
            if not ok:
                e.append(message)

        # data
        if not self.train_data:
            e.append("train_data is required: give the CSV/Parquet table of image-caption pairs")
        else:
            _check_table(self.train_data, "train_data", e)
        if self.val_data is not None:
            _check_table(self.val_data, "val_data", e)
        else:
            need(
                0.0 < self.val_fraction < 1.0,
                f"val_fraction must be in (0, 1) when no val_data is given, got "
                f"{self.val_fraction}",
            )
        if self.caption_columns is not None:
            need(len(self.caption_columns) > 0, "caption_columns must name at least one column")
        need(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        if self.data_root is not None:
            need(os.path.isdir(self.data_root), f"data_root {self.data_root!r} is not a folder")
        need(
            0.0 <= self.max_bad_fraction < 1.0,
            f"max_bad_fraction must be in [0, 1), got {self.max_bad_fraction}",
        )
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        for name in ("input_bands", "bands"):
            value = getattr(self, name)
            if value is not None:
                _check_bands(value, name, self.sensor if name == "input_bands" else None, e)
        # augmentation
        lo, hi = self.crop_scale
        need(
            0.0 < lo <= hi <= 1.0,
            f"crop_scale must satisfy 0 < min <= max <= 1, got {list(self.crop_scale)}",
        )
        lo, hi = self.crop_ratio
        need(0.0 < lo <= hi, f"crop_ratio must satisfy 0 < min <= max, got {list(self.crop_ratio)}")
        for name in ("hflip", "vflip"):
            p = getattr(self, name)
            need(0.0 <= p <= 1.0, f"{name} is a probability in [0, 1], got {p}")
        # model
        _check_model(self, e)
        need(
            self.trainable in TRAINABLE_PRESETS,
            f"trainable must be one of {list(TRAINABLE_PRESETS)}, got {self.trainable!r}",
        )
        # loss
        need(self.loss in _LOSSES, f"loss must be one of {list(_LOSSES)}, got {self.loss!r}")
        need(
            self.loss_impl in LOSS_IMPLS,
            f"loss_impl must be one of {list(LOSS_IMPLS)}, got {self.loss_impl!r}",
        )
        need(
            self.max_logit_scale >= 1.0, f"max_logit_scale must be >= 1, got {self.max_logit_scale}"
        )
        if self.init_logit_scale is not None:
            need(
                math.isfinite(self.init_logit_scale)
                and 0.0 <= self.init_logit_scale <= math.log(self.max_logit_scale),
                f"init_logit_scale must be in [0, log(max_logit_scale) = "
                f"{math.log(self.max_logit_scale):.3f}], got {self.init_logit_scale}",
            )
        need(math.isfinite(self.init_logit_bias), "init_logit_bias must be finite")
        # optimisation
        need(
            self.optimizer in _OPTIMIZERS,
            f"optimizer must be one of {list(_OPTIMIZERS)}, got {self.optimizer!r}",
        )
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        if self.patch_embed_lr is not None:
            need(
                self.patch_embed_lr >= 0, f"patch_embed_lr must be >= 0, got {self.patch_embed_lr}"
            )
        need(
            0.0 < self.layer_decay <= 1.0, f"layer_decay must be in (0, 1], got {self.layer_decay}"
        )
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(
            all(0.0 <= b < 1.0 for b in self.betas),
            f"betas must be in [0, 1), got {list(self.betas)}",
        )
        need(self.eps > 0, f"eps must be > 0, got {self.eps}")
        need(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        need(
            self.schedule in _SCHEDULES,
            f"schedule must be one of {list(_SCHEDULES)}, got {self.schedule!r}",
        )
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(
            0.0 <= self.min_lr_ratio <= 1.0,
            f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}",
        )
        if self.restart_steps is not None:
            need(self.restart_steps >= 1, f"restart_steps must be >= 1, got {self.restart_steps}")
        need(self.restart_mult >= 1.0, f"restart_mult must be >= 1, got {self.restart_mult}")
        if self.grad_clip_norm is not None:
            need(
                self.grad_clip_norm > 0,
                f"grad_clip_norm must be > 0 (or 'none' to disable), got {self.grad_clip_norm}",
            )
        need(
            self.batch_size >= 2,
            f"batch_size must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}",
        )
        need(self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None:
            need(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(
            self.precision in _PRECISIONS,
            f"precision must be one of {list(_PRECISIONS)}, got {self.precision!r}",
        )
        # runtime
        need(
            is_auto_device(self.device) or self.device == "cpu" or self.device.startswith("cuda"),
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {self.device!r}",
        )
        need(
            self.dist_backend in _BACKENDS,
            f"dist_backend must be one of {list(_BACKENDS)}, got {self.dist_backend!r}",
        )
        if self.threads is not None:
            need(self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        need(bool(self.output_dir), "output_dir must not be empty")
        need(self.save_every >= 0, f"save_every must be >= 0, got {self.save_every}")
        need(
            self.keep_checkpoints >= 0,
            f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}",
        )
        if self.resume is not None and self.resume != "latest":
            need(
                os.path.isfile(self.resume),
                f"resume checkpoint {self.resume!r} not found; give a training checkpoint "
                "(<output_dir>/checkpoints/step_*.pt) or 'latest'",
            )
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(self.val_every >= 0, f"val_every must be >= 0, got {self.val_every}")
        need(self.val_batch_size >= 1, f"val_batch_size must be >= 1, got {self.val_batch_size}")
        if self.zeroshot_data is not None:
            need(
                os.path.isdir(self.zeroshot_data),
                f"zeroshot_data {self.zeroshot_data!r} is not a folder of class folders",
            )
        _check_templates(self.zeroshot_templates, e)
        if self.zeroshot_max_per_class is not None:
            need(
                self.zeroshot_max_per_class >= 1,
                f"zeroshot_max_per_class must be >= 1, got {self.zeroshot_max_per_class}",
            )
        # every line starts with the option it is about
        return problems_without(e, skip)


# -- checks ----------------------------------------------------------------------------------
def _check_table(path: str, name: str, errors: list[str]) -> None:
    why = not_a_file(path, f"a table ({', '.join(TABLE_EXTENSIONS)})")
    if why is not None:  # missing, or a folder or a device named as what it is
        errors.append(f"{name} file {path!r} {why}")
    elif not path.lower().endswith(TABLE_EXTENSIONS):
        errors.append(f"{name} {path!r} must be a table ({', '.join(TABLE_EXTENSIONS)})")


def _check_bands(value: Sequence[str], name: str, sensor: str | None, errors: list[str]) -> None:
    from msclip.errors import BandError
    from msclip.spectral.bands import resolve_bands

    if not value:
        errors.append(f"{name} must name at least one band")
        return
    try:
        resolve_bands(value, sensor)
    except BandError as err:
        errors.append(f"{name}: {err}")


def _check_templates(spec: str, errors: list[str]) -> None:
    from msclip.zero_shot import TemplateError, load_templates

    try:
        load_templates(spec)
    except TemplateError as err:
        errors.append(f"zeroshot_templates: {err}")


def _is_file_like(value: str) -> bool:
    return os.sep in value or value.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt"))


def _check_model(cfg: TrainConfig, errors: list[str]) -> None:
    from msclip.pretrained import MODELS

    lower = {k.lower() for k in MODELS}
    if cfg.model is not None and cfg.model.lower() not in lower:
        errors.append(f"model {cfg.model!r} is not registered; choose one of {list(MODELS)}")
    if cfg.init in ("random", "pretrained"):
        if cfg.model is None:
            errors.append(f"init {cfg.init!r} needs model (an architecture to build)")
    elif _is_file_like(cfg.init) or os.path.exists(cfg.init):
        if not os.path.isfile(cfg.init):
            errors.append(f"init checkpoint {cfg.init!r} not found")
    elif cfg.init.lower() not in lower:
        errors.append(
            f"init must be 'random', 'pretrained', a registered model name ({list(MODELS)}) or a "
            f"checkpoint file; got {cfg.init!r}"
        )
    elif cfg.model is None:
        errors.append(
            f"init {cfg.init!r} (a registered model) needs model, the architecture to extend it to"
        )


# -- type handling (shared with every run configuration: msclip.options) ----------------------
def option_types() -> dict[str, Any]:
    """Resolved annotations of the :class:`TrainConfig` fields."""
    return _option_types(TrainConfig)
