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

The dense modules are imported by their full path (``from msclip.heads.decoders import
build_decoder``). No command-line code lives here; the library never imports :mod:`msclip.train` or
:mod:`msclip.cli`.
"""

from msclip.heads.features import FeatureCache, FeatureSpec, extract_features
from msclip.heads.linear import (
    LinearHead,
    TextInitHead,
    build_head,
    fit_head,
    linear_probe,
    predict_head,
    text_linear_probe,
)
from msclip.heads.lora import (
    LORA_TARGETS,
    LoRAConfig,
    apply_lora,
    has_lora,
    load_lora,
    lora_config,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    read_lora,
    remove_lora,
    save_lora,
)
from msclip.heads.modes import (
    FINETUNE_MODES,
    FinetuneConfig,
    ImageHeadModel,
    ParameterCounts,
    apply_finetune_mode,
    count_parameters,
    finetune_param_groups,
    reinitialize_image_tower,
)
from msclip.heads.probes import (
    DEFAULT_ALPHAS,
    DEFAULT_CS,
    TASKS,
    LogisticModel,
    ProbeResult,
    RidgeModel,
    SweepResult,
    check_features,
    check_labels,
    check_targets,
    evaluate_scores,
    fit_logistic,
    fit_ridge,
    knn_neighbors,
    knn_probe,
    knn_scores,
    knn_vote,
    logistic_probe,
    logistic_sweep,
    ridge_probe,
    ridge_sweep,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "FINETUNE_MODES",
    "LORA_TARGETS",
    "TASKS",
    "FeatureCache",
    "FeatureSpec",
    "FinetuneConfig",
    "ImageHeadModel",
    "LinearHead",
    "LoRAConfig",
    "LogisticModel",
    "ParameterCounts",
    "ProbeResult",
    "RidgeModel",
    "SweepResult",
    "TextInitHead",
    "apply_finetune_mode",
    "apply_lora",
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
    "has_lora",
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
    "read_lora",
    "reinitialize_image_tower",
    "remove_lora",
    "ridge_probe",
    "ridge_sweep",
    "save_lora",
    "text_linear_probe",
]
