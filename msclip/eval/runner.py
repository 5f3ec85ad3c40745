"""Zero-shot evaluation of one model on one benchmark dataset.

Follows the published Llama3-MS-CLIP protocol (Marimo et al., ECML PKDD 2025, arXiv:2503.15969):
every image of the test split is preprocessed by the model's
:class:`~msclip.spectral.SpectralPreprocess` and encoded by the image tower; the classifier is the
prompt ensemble of :func:`msclip.zero_shot.build_classifier` (templates x class names, prompt
embeddings cached on disk by :class:`msclip.text_cache.TextEmbeddingCache`, keyed by checkpoint
and prompt text); scores are ``100 x cosine``. Metrics come from :mod:`msclip.eval.metrics`
(single-label report, or the multi-label report with the published "above the mean of the other
classes" rule or its "other features" class variant).

Images are read by a ``torch.utils.data.DataLoader`` with worker processes over the
:class:`~msclip.eval.datasets.BenchmarkDataset` and encoded under ``torch.inference_mode()``;
bf16 runs use weights cast once by ``create_model(..., precision="bf16")``, never
``torch.autocast`` (which disables the fused attention path on CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msclip.encode import Failure, encode_dataset
from msclip.errors import BandCoverageError, DatasetLabelError, TemplatesNotShippedError
from msclip.eval import metrics as M
from msclip.eval.datasets import BenchmarkDataset
from msclip.zero_shot import (
    build_classifier,
    list_template_sets,
    load_templates,
    template_set_path,
    zero_shot_logits,
)

__all__ = [
    "PUBLISHED_TEMPLATE_SETS",
    "EvalConfig",
    "EvalResult",
    "TemplateSet",
    "TemplatesNotShippedError",
    "evaluate",
    "resolve_templates",
    "run_key",
]

logger = logging.getLogger(__name__)

#: Template sets of the published protocol (name -> number of templates). Their text is another
#: project's prose and is not shipped; pass the original file to use one.
PUBLISHED_TEMPLATE_SETS: dict[str, int] = {"msclip": 50, "clip": 3, "rs5m": 105, "meterml": 145}


@dataclass(frozen=True)
class TemplateSet:
    """Prompt templates and where they came from.

    Attributes:
        name: set name (shipped set) or file stem.
        source: file the templates were read from.
        templates: the templates, in order.
        sha256: sha256 of the templates joined by newlines (comments and blank lines of the file
            do not count), so equal template lists hash equally wherever they come from.
    """

    name: str
    source: str
    templates: tuple[str, ...]
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "n": len(self.templates),
                "sha256": self.sha256}  # fmt: skip


def resolve_templates(spec: str | os.PathLike) -> TemplateSet:
    """Load a template set by msclip set name or file path.

    Raises:
        TemplatesNotShippedError: a published set name (``msclip``, ``clip``, ``rs5m``,
            ``meterml``) that is neither shipped nor an existing file.
        UnknownTemplateSetError, TemplateError: see :func:`msclip.zero_shot.load_templates`.
    """
    s = os.fspath(spec)
    shipped = template_set_path(s) if "/" not in s and os.sep not in s else None
    if shipped is None and s in PUBLISHED_TEMPLATE_SETS and not Path(s).is_file():
        raise TemplatesNotShippedError(
            f"the template set {s!r} of the published Llama3-MS-CLIP protocol "
            f"({PUBLISHED_TEMPLATE_SETS[s]} templates) is not shipped with msclip, because its "
            f"text belongs to another project. Give the original file instead "
            f"(path/to/{s}.txt; msclip's own sets: {', '.join(list_template_sets())})",
            param="templates",
        )
    templates = tuple(load_templates(s))
    path = shipped if shipped is not None else Path(s).expanduser().resolve()
    name = s if shipped is not None else Path(s).stem
    digest = hashlib.sha256("\n".join(templates).encode("utf-8")).hexdigest()
    return TemplateSet(name, str(path), templates, digest)


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation.

    Attributes:
        batch_size: images per image-tower call (``None``: chosen for the device,
            :func:`msclip.encode.auto_batch_size`).
        workers: DataLoader worker processes (0: read in the main process).
        device: where the model runs.
        ap_k: the ``k`` of AP@k.
        ap_definition: AP@k definition (a key of :data:`msclip.eval.metrics.AP_DEFINITIONS`).
        no_relevant: AP of classes without positives: ``nan`` (excluded) or ``zero``.
        multilabel_rule: ``mean_others`` (published) or ``other_class``.
        other_class_name: class name of the extra class of the ``other_class`` rule.
        text_batch_size: prompts per text-tower call.
        progress: show progress bars.
        skip_bad: name, skip and count unreadable images instead of failing the dataset.
    """

    batch_size: int | None = None
    workers: int = 0
    device: str = "cpu"
    ap_k: int = 100
    ap_definition: str = M.DEFAULT_AP_DEFINITION
    no_relevant: str = "nan"
    multilabel_rule: str = "mean_others"
    other_class_name: str = "other features"
    text_batch_size: int = 256
    progress: bool = False
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.multilabel_rule not in ("mean_others", "other_class"):
            raise ValueError(
                f"multilabel_rule must be 'mean_others' or 'other_class', "
                f"got {self.multilabel_rule!r}"
            )
        if self.ap_definition not in M.AP_DEFINITIONS:
            raise ValueError(
                f"unknown AP@k definition {self.ap_definition!r}; "
                f"choose one of {sorted(M.AP_DEFINITIONS)}"
            )
        if self.no_relevant not in M.NO_RELEVANT_POLICIES:
            raise ValueError(f"no_relevant must be one of {M.NO_RELEVANT_POLICIES}")


@dataclass
class EvalResult:
    """Outcome of one (model, dataset) evaluation.

    Attributes:
        dataset: the evaluated dataset.
        templates: the templates used.
        class_names: class names put into prompts (with the "other" class when used).
        scores: logits ``[N, C]`` (``100 x cosine``).
        targets: class indices ``[N]`` or indicators ``[N, C]``.
        report: the metrics (single- or multi-label report).
        timings: seconds spent per stage.
        failures: images skipped as unreadable (only with ``skip_bad``).
        indices: dataset positions of the rows of ``scores`` and ``targets`` (unreadable samples
            have none).
        input_warnings: warnings met while reading the samples (bands the model lacks, 8-bit
            pictures for a reflectance model), each with the number of samples it concerns.
    """

    dataset: BenchmarkDataset
    templates: TemplateSet
    class_names: list[str]
    scores: np.ndarray
    targets: np.ndarray
    report: M.SingleLabelReport | M.MultiLabelReport
    timings: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    indices: np.ndarray | None = None
    input_warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main_metric(self) -> str:
        return "map_at_k" if self.dataset.multi_label else "top1_accuracy"


def run_key(facts: dict[str, Any]) -> str:
    """sha256 of the facts that determine a result (used by ``--skip-existing``)."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def evaluate(
    model: Any,
    tokenizer: Any,
    dataset: BenchmarkDataset,
    templates: TemplateSet,
    config: EvalConfig | None = None,
    text_cache: Any = None,
) -> EvalResult:
    """Zero-shot evaluation of ``model`` on ``dataset``.

    Args:
        model: an :class:`msclip.MSCLIP`.
        tokenizer: its tokenizer (:func:`msclip.get_tokenizer`).
        dataset: the benchmark split (its transform is set to the model's preprocessing).
        templates: prompt templates (:func:`resolve_templates`).
        config: evaluation settings.
        text_cache: a :class:`msclip.text_cache.TextEmbeddingCache` or ``None``.

    Returns:
        :class:`EvalResult` with scores, targets and the metrics report.
    """
    cfg = config or EvalConfig()
    timings: dict[str, float] = {}
    dataset.set_transform(model.preprocess())
    class_names = dataset.class_names
    use_other = dataset.multi_label and cfg.multilabel_rule == "other_class"
    if use_other:
        class_names = [*class_names, cfg.other_class_name]

    t0 = time.perf_counter()
    classifier = build_classifier(
        model, tokenizer, class_names, list(templates.templates), cache=text_cache,
        batch_size=cfg.text_batch_size, progress=cfg.progress,
    )  # fmt: skip
    timings["text_s"] = time.perf_counter() - t0
    if hasattr(model, "release_text_pages"):
        model.release_text_pages()  # images only from here (msclip.memory)

    t0 = time.perf_counter()
    encoded = encode_dataset(
        model, dataset, cfg.batch_size, cfg.workers, cfg.progress, desc=dataset.name,
        skip_bad=cfg.skip_bad, abort_on=(BandCoverageError, DatasetLabelError),
    )  # fmt: skip
    feats, targets = encoded.features, encoded.targets
    timings["images_s"] = time.perf_counter() - t0
    timings["images_per_s"] = len(dataset) / max(timings["images_s"], 1e-9)

    t0 = time.perf_counter()
    scores = zero_shot_logits(torch.from_numpy(feats), classifier).numpy().astype(np.float64)
    report: M.SingleLabelReport | M.MultiLabelReport
    if dataset.multi_label:
        report = M.multilabel_report(
            scores, targets, class_names,
            rule="other_class" if use_other else "mean_others",
            k_ap=cfg.ap_k, ap_definition=cfg.ap_definition, no_relevant=cfg.no_relevant,
        )  # fmt: skip
    else:
        report = M.single_label_report(
            scores, targets, class_names, k_ap=cfg.ap_k, ap_definition=cfg.ap_definition,
            no_relevant=cfg.no_relevant,
        )  # fmt: skip
    timings["metrics_s"] = time.perf_counter() - t0
    return EvalResult(
        dataset, templates, class_names, scores, targets, report, timings, encoded.failures,
        np.asarray(encoded.indices, dtype=np.int64), list(encoded.warnings),
    )  # fmt: skip
