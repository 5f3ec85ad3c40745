"""Heads on the spectral encoder: probes, fine-tuning, dense decoders and scene prediction.

* :mod:`msclip.heads.features`: frozen-encoder features computed once per image and kept in
  a resumable float16 memory-mapped cache, keyed by the model's fingerprint.
* :mod:`msclip.heads.probes`: kNN, logistic regression (L-BFGS with a ``C`` sweep) and ridge
  regression (``alpha`` sweep) on frozen features, each returning a :class:`ProbeResult` with
  bootstrap confidence intervals.
* :mod:`msclip.heads.linear`: a batch-norm + linear head trained by AdamW and a
  text-initialised head (zero-shot classifier as the starting point), on features in memory.
* :mod:`msclip.heads.lora`: low-rank adapters on the q and v parts of the fused attention
  projection (optionally the MLP), saved on their own and mergeable.
* :mod:`msclip.heads.modes`: the fine-tuning modes of the image tower (``frozen``, ``lora``,
  ``last-n``, ``full``, ``scratch``), parameter groups with layer-wise learning-rate decay and
  parameter counts.
* :mod:`msclip.heads.decoders`: dense decoders over the tapped blocks (linear, FCN, UPerNet,
  SegFormer-style all-MLP); :mod:`msclip.heads.dense`: the encoder with one or several dense
  heads (multi-task), padding to the patch grid; :mod:`msclip.heads.losses`: segmentation loss
  with ``ignore_index`` and class weights, per-pixel regression losses with a nodata mask.
* :mod:`msclip.heads.scene_predict`: streaming prediction over whole scenes (blended overlapping
  tiles written strip by strip to a tiled GeoTIFF/COG); :mod:`msclip.heads.maskclip`: zero-shot
  dense maps with no training (MaskCLIP).
* :mod:`msclip.heads.data`: labelled images (benchmark datasets, CSV tables, class folders) with
  documented, seeded train / val / test splits.
* :mod:`msclip.heads.checkpoint`: head-only checkpoints bound to the encoder's fingerprint, and
  predictions of a saved head.
* :mod:`msclip.heads.finetune` (settings in :mod:`msclip.heads.runconfig`): the runner of
  ``msclip-finetune``: a task registry, the feature cache, probes, head files, protocol cards and
  metric records; :mod:`msclip.heads.training`: the exactly resumable training loop of every
  trained head; :mod:`msclip.heads.runs`: what the image-level and dense runners share (results,
  model loading in the run's precision, encoder files, the protocol card).
* :mod:`msclip.heads.dense_data` (image / label raster pairs, grids checked, crops),
  :mod:`msclip.heads.dense_finetune` (dense tasks in the runner), :mod:`msclip.heads.dense_head`
  (dense head files bound to the encoder) and :mod:`msclip.heads.dense_grid` (decoders x encoder
  modes in one comparison table).

The dense modules are imported by their full path (``from msclip.heads.decoders import
build_decoder``). No command-line code lives here; the library never imports :mod:`msclip.train` or
:mod:`msclip.cli`.
"""

from importlib import import_module
from typing import Any

# Names resolve on first use (PEP 562), so that importing a light module of this package (the
# run settings of msclip-finetune) does not load torch.
_EXPORTS: dict[str, str] = {
    "DEFAULT_ALPHAS": "msclip.heads.probes",
    "DEFAULT_CS": "msclip.heads.probes",
    "FINETUNE_MODES": "msclip.heads.modes",
    "FeatureCache": "msclip.heads.features",
    "FeatureSpec": "msclip.heads.features",
    "FinetuneConfig": "msclip.heads.modes",
    "FinetuneRunConfig": "msclip.heads.runconfig",
    "HeadCheckpoint": "msclip.heads.checkpoint",
    "ImageHeadModel": "msclip.heads.modes",
    "KNNHead": "msclip.heads.checkpoint",
    "LORA_TARGETS": "msclip.heads.lora",
    "LinearHead": "msclip.heads.linear",
    "LoRAConfig": "msclip.heads.lora",
    "LogisticModel": "msclip.heads.probes",
    "ParameterCounts": "msclip.heads.modes",
    "ProbeResult": "msclip.heads.probes",
    "RidgeModel": "msclip.heads.probes",
    "SweepResult": "msclip.heads.probes",
    "TASKS": "msclip.heads.probes",
    "TASK_REGISTRY": "msclip.heads.finetune",
    "TaskData": "msclip.heads.data",
    "TaskSpec": "msclip.heads.finetune",
    "TextInitHead": "msclip.heads.linear",
    "apply_finetune_mode": "msclip.heads.modes",
    "apply_lora": "msclip.heads.lora",
    "bind_head": "msclip.heads.checkpoint",
    "build_head": "msclip.heads.linear",
    "check_features": "msclip.heads.probes",
    "check_labels": "msclip.heads.probes",
    "check_targets": "msclip.heads.probes",
    "count_parameters": "msclip.heads.modes",
    "evaluate_scores": "msclip.heads.probes",
    "extract_features": "msclip.heads.features",
    "finetune_param_groups": "msclip.heads.modes",
    "fit_head": "msclip.heads.linear",
    "fit_logistic": "msclip.heads.probes",
    "fit_ridge": "msclip.heads.probes",
    "from_benchmark": "msclip.heads.data",
    "from_csv": "msclip.heads.data",
    "from_folders": "msclip.heads.data",
    "has_lora": "msclip.heads.lora",
    "head_scores": "msclip.heads.checkpoint",
    "knn_neighbors": "msclip.heads.probes",
    "knn_probe": "msclip.heads.probes",
    "knn_scores": "msclip.heads.probes",
    "knn_vote": "msclip.heads.probes",
    "linear_probe": "msclip.heads.linear",
    "load_lora": "msclip.heads.lora",
    "logistic_probe": "msclip.heads.probes",
    "logistic_sweep": "msclip.heads.probes",
    "lora_config": "msclip.heads.lora",
    "lora_parameters": "msclip.heads.lora",
    "lora_state_dict": "msclip.heads.lora",
    "merge_lora": "msclip.heads.lora",
    "predict_images": "msclip.heads.checkpoint",
    "predict_head": "msclip.heads.linear",
    "read_head": "msclip.heads.checkpoint",
    "read_lora": "msclip.heads.lora",
    "register_task": "msclip.heads.finetune",
    "reinitialize_image_tower": "msclip.heads.modes",
    "remove_lora": "msclip.heads.lora",
    "ridge_probe": "msclip.heads.probes",
    "ridge_sweep": "msclip.heads.probes",
    "run_finetune": "msclip.heads.finetune",
    "save_head": "msclip.heads.checkpoint",
    "save_lora": "msclip.heads.lora",
    "split_indices": "msclip.heads.data",
    "text_linear_probe": "msclip.heads.linear",
}

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "FINETUNE_MODES",
    "LORA_TARGETS",
    "TASKS",
    "TASK_REGISTRY",
    "FeatureCache",
    "FeatureSpec",
    "FinetuneConfig",
    "FinetuneRunConfig",
    "HeadCheckpoint",
    "ImageHeadModel",
    "KNNHead",
    "LinearHead",
    "LoRAConfig",
    "LogisticModel",
    "ParameterCounts",
    "ProbeResult",
    "RidgeModel",
    "SweepResult",
    "TaskData",
    "TaskSpec",
    "TextInitHead",
    "apply_finetune_mode",
    "apply_lora",
    "bind_head",
    "build_head",
    "check_features",
    "check_labels",
    "check_targets",
    "count_parameters",
    "evaluate_scores",
    "extract_features",
    "finetune_param_groups",
    "fit_head",
    "fit_logistic",
    "fit_ridge",
    "from_benchmark",
    "from_csv",
    "from_folders",
    "has_lora",
    "head_scores",
    "knn_neighbors",
    "knn_probe",
    "knn_scores",
    "knn_vote",
    "linear_probe",
    "load_lora",
    "logistic_probe",
    "logistic_sweep",
    "lora_config",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "predict_head",
    "predict_images",
    "read_head",
    "read_lora",
    "register_task",
    "reinitialize_image_tower",
    "remove_lora",
    "ridge_probe",
    "ridge_sweep",
    "run_finetune",
    "save_head",
    "save_lora",
    "split_indices",
    "text_linear_probe",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
