"""Head-only checkpoints: a trained head bound to the encoder it reads, never the encoder itself.

A head file is a safetensors file (no pickle) holding the head's tensors and, as metadata
(``format = "msclip-head"``): the head's config (:func:`build_any_head` rebuilds it), the task,
the class or output names (and the prompt names), the features the head reads
(:class:`~msclip.heads.features.FeatureSpec`), the method that trained it, and the encoder:
its fingerprint (:meth:`msclip.MSCLIP.fingerprint` without the precision, so a bf16 copy of the
same weights may use the head), name, architecture, checkpoint hash, bands and default taps.
A frozen ViT-B/16 head is a few kB where anchors such as TerraTorch save the frozen encoder in
every checkpoint.

Binding (:func:`bind_head`): a head is used only on the encoder it was trained on. A head trained
with a fine-tuned encoder records that encoder too: LoRA adapters (their file and sha256; the
head reads the base encoder with the adapters merged, or the merged weights file), or the file of
the fine-tuned weights (``last-n``, ``full``, ``scratch``). Any other encoder is refused with a
message naming both fingerprints.

Every probe of :mod:`msclip.heads` becomes a head: the linear and text-initialised heads as they
are; the logistic probe as a linear layer (standardisation folded into the weights, one output
per class: a binary probe's single log-odds becomes the logits ``[0, z]``, classes absent from
training get a bias of ``-1e4``, constant multi-label columns ``+-1e4``); the ridge probe as a
linear regression layer; the kNN probe as :class:`KNNHead`, whose tensors are the training
features (float16) and labels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msclip.errors import (
    CheckpointError,
    CheckpointMismatchError,
    HeadConfigError,
    HeadInputError,
    MSCLIPError,
    PrecisionError,
    not_a_file,
    shown_when_quiet,
)
from msclip.heads.features import FeatureSpec
from msclip.heads.linear import LinearHead, build_head

__all__ = [
    "HEAD_FORMAT",
    "HeadCheckpoint",
    "KNNHead",
    "bind_head",
    "build_any_head",
    "check_format_version",
    "encoder_facts",
    "first_bands",
    "head_file_contents",
    "head_scores",
    "logistic_to_head",
    "predict_images",
    "read_head",
    "require_bound",
    "ridge_to_head",
    "save_head",
    "training_bands",
    "warn_other_bands",
]

logger = logging.getLogger(__name__)

#: ``format`` entry of the metadata of a head file.
HEAD_FORMAT = "msclip-head"
#: ``format`` entry of the metadata of a dense head file (:mod:`msclip.heads.dense_head`).
DENSE_HEAD_FORMAT = "msclip-dense-head"
_FORMAT_VERSION = "1"
_BIG = 1e4  # logit of a class that can never (or always) be predicted


class KNNHead(nn.Module):
    """kNN classifier as a module: the training features and labels are its tensors.

    Scores are those of :func:`msclip.heads.probes.knn_scores`: vote fractions in ``[0, 1]``
    (``outputs = "probabilities"``), weighted ``exp(sim / T)`` or uniform (``temperature``
    None).

    Args:
        bank: training features ``[N, D]`` (kept as float16).
        labels: class indices ``[N]`` or 0/1 labels ``[N, C]``.
        num_classes: ``C``.
        k: neighbours.
        temperature: ``T`` of the weights; ``None`` for uniform votes.

    Raises:
        HeadInputError: bad features or labels (:func:`~msclip.heads.probes.check_features`,
            :func:`~msclip.heads.probes.check_labels`: one label per row, indices below
            ``num_classes``), or features beyond the float16 range.
        HeadConfigError: ``num_classes`` or ``k`` below 1, a non-positive temperature.
    """

    outputs = "probabilities"

    def __init__(
        self,
        bank: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        num_classes: int,
        k: int = 20,
        temperature: float | None = 0.07,
    ) -> None:
        from msclip.heads.probes.common import (
            _check_positive,
            _check_positive_int,
            check_features,
            check_labels,
        )

        super().__init__()
        num_classes = _check_positive_int(num_classes, "num_classes")
        # checked here, not on the first prediction, where they fail as index errors
        feats = np.ascontiguousarray(check_features(bank, "bank", dtype=None))
        largest = float(np.abs(feats).max())
        if largest > float(np.finfo(np.float16).max):  # would become infinite in float16
            raise HeadInputError(
                f"bank holds values up to {largest:.3g}, beyond float16 (65504), in "
                "which a kNN head keeps its features; L2-normalise the features first (the "
                "votes read cosine similarities, which normalising leaves as they are)"
            )
        lab, _ = check_labels(labels, "labels", feats.shape[0], num_classes)
        self.register_buffer("bank", torch.as_tensor(feats).to(torch.float16))
        lab_t = torch.from_numpy(lab)
        self.register_buffer("labels", lab_t.float() if lab_t.ndim == 2 else lab_t.long())
        self.num_classes = num_classes
        self.k = _check_positive_int(k, "k")
        self.temperature = (
            None if temperature is None else _check_positive(temperature, "temperature")
        )

    @property
    def in_features(self) -> int:
        return int(self.bank.shape[1])

    @property
    def out_features(self) -> int:
        return self.num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        from msclip.heads.probes import knn_neighbors, knn_vote

        sims, idx = knn_neighbors(self.bank, features.detach().float().cpu(), self.k)
        scores = knn_vote(sims, idx, self.labels.numpy(), self.num_classes, None, self.temperature)
        return torch.from_numpy(scores).to(features.device)

    def config(self) -> dict[str, Any]:
        """What :func:`build_any_head` needs to rebuild this head."""
        return {
            "type": "knn",
            "in_features": self.in_features,
            "out_features": self.num_classes,
            "n_bank": int(self.bank.shape[0]),
            "multi_label": self.labels.ndim == 2,
            "k": self.k,
            "temperature": self.temperature,
        }


def build_any_head(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a head of any type (``linear``, ``text-linear``, ``knn``) from its config.

    Raises:
        HeadConfigError: unknown type or missing fields.
    """
    if config.get("type") != "knn":
        return build_head(config)
    try:
        n, d, c = int(config["n_bank"]), int(config["in_features"]), int(config["out_features"])
        labels = torch.zeros((n, c)) if config.get("multi_label") else torch.zeros(n)
        return KNNHead(torch.zeros(n, d), labels, c, int(config["k"]), config.get("temperature"))
    except KeyError as err:
        raise HeadConfigError(f"knn head config lacks the field {err}") from err


def head_outputs(head: nn.Module) -> str:
    """``probabilities`` (kNN) or ``logits`` (every other head)."""
    return getattr(head, "outputs", "logits")


def head_scores(head: nn.Module, features: Any, task: str, batch_size: int = 4096) -> np.ndarray:
    """Scores of a head on features, float64 ``[N, outputs]``: class probabilities (softmax for
    single-label, sigmoid for multi-label) or regression values: those of
    :func:`msclip.heads.linear.predict_head`, and an empty array for no features.

    Args:
        head: the head (put in eval mode).
        features: ``[N, D]`` array, memory map or tensor.
        task: ``classification`` / ``single-label``, ``multi-label`` or ``regression``.
        batch_size: rows per call.

    Raises:
        HeadConfigError: an unknown task.
        HeadInputError: bad features, or features of another width than the head reads.
    """
    from msclip.heads.linear import predict_head, scoring_task

    scoring_task(task)
    if len(features) == 0:
        return np.zeros((0, getattr(head, "out_features", 0)))
    return predict_head(head, features, task, batch_size)


# -- probes as heads -----------------------------------------------------------------------------
def _fold(
    coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray | None, scale: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Weights on raw features of ``((x - mean) / scale) @ coef.T + intercept``."""
    if mean is None or scale is None:
        return coef, intercept
    w = coef / scale
    return w, intercept - w @ mean


def logistic_to_head(model: Any) -> LinearHead:
    """A :class:`~msclip.heads.probes.LogisticModel` as a linear head (logits per class) whose
    softmax (single-label) or sigmoid (multi-label) equals the model's probabilities."""
    w, b = _fold(model.coef, model.intercept, model.mean, model.scale)
    c, d = model.num_classes, w.shape[1]
    weight = np.zeros((c, d))
    bias = np.full(c, -_BIG)
    classes = np.asarray(model.classes)
    if model.task == "multi-label":
        weight[classes], bias[classes] = w, b
        if model.constant is not None:
            fixed = ~np.isnan(model.constant)
            bias[fixed] = np.where(model.constant[fixed] > 0.5, _BIG, -_BIG)
    elif len(classes) == 2 and w.shape[0] == 1:
        bias[classes[0]] = 0.0  # logits [0, z]: softmax gives [1 - sigmoid(z), sigmoid(z)]
        weight[classes[1]], bias[classes[1]] = w[0], b[0]
    else:
        weight[classes], bias[classes] = w, b
    head = LinearHead(d, c, batch_norm=False)
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(weight))
        head.linear.bias.copy_(torch.from_numpy(bias))
    return head.eval()


def ridge_to_head(model: Any) -> LinearHead:
    """A :class:`~msclip.heads.probes.RidgeModel` as a linear regression head."""
    w, b = _fold(model.coef, model.intercept, model.mean, model.scale)
    head = LinearHead(w.shape[1], w.shape[0], batch_norm=False)
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(w))
        head.linear.bias.copy_(torch.from_numpy(np.asarray(b)))
    return head.eval()


# -- the file ------------------------------------------------------------------------------------
def encoder_facts(model: Any, mode: str = "frozen", **extra: Any) -> dict[str, Any]:
    """What a head records about the encoder it reads (``extra``: ``encoder_file``,
    ``adapters`` ...)."""
    cfg = model.config
    where = getattr(model, "checkpoint_path", None)
    return {
        "fingerprint": model.fingerprint(precision=False),
        "name": cfg.name or cfg.arch,
        "arch": cfg.arch,
        "checkpoint_sha256": str(model.checkpoint_sha256),
        # how the programs load the encoder again without model flags (the fingerprint decides)
        "checkpoint_path": os.path.abspath(where) if where else None,
        "init_seed": getattr(model, "init_seed", None),
        "bands": list(model.bands),
        "taps": list(model.taps),
        "image_size": int(model.image_size),
        "embed_dim": int(model.embed_dim),
        "mode": mode,
        **extra,
    }


@dataclass
class HeadCheckpoint:
    """A head read back from its file.

    Attributes:
        head: the module (eval mode).
        task: ``classification``, ``multi-label`` or ``regression``.
        names: class labels or output names, in output order.
        prompt_names: class names in prompts (classification), when known.
        features: the features the head reads.
        encoder: facts about the encoder (see :func:`encoder_facts`).
        method: the method that trained it (``logistic``, ``linear`` ...).
        info: the rest of the metadata (dataset, metrics, created ...).
        path: the file.
        bound: the fingerprint of the encoder :func:`bind_head` last accepted (with the LoRA
            adapters it merged), or ``None``.
    """

    head: nn.Module
    task: str
    names: list[str]
    prompt_names: list[str] | None
    features: FeatureSpec
    encoder: dict[str, Any]
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    bound: str | None = field(default=None, repr=False, compare=False)

    @property
    def outputs(self) -> str:
        return head_outputs(self.head)


def first_bands(
    items: Any, bands: Sequence[str] | None = None, sensor: str | None = None
) -> tuple[int, list[str]] | None:
    """``(position, band names)`` of the first of the first 50 ``items`` that is a readable image
    file (only its header is read for a GDAL raster: GeoTIFF, JPEG 2000, VRT), or ``None``."""
    from msclip.io import read_raster
    from msclip.io.readers import RASTER_EXTENSIONS, raster_band_names

    for i, item in enumerate(list(items)[:50]):
        if not isinstance(item, (str, os.PathLike)):
            continue
        try:
            if str(item).lower().endswith(RASTER_EXTENSIONS):
                return i, list(raster_band_names(item, bands=bands, sensor=sensor))
            return i, list(read_raster(item, bands=bands, sensor=sensor).bands)
        except (MSCLIPError, OSError, ValueError):  # an unreadable file: try the next
            continue
    return None


def training_bands(
    items: Any, bands: Sequence[str] | None = None, sensor: str | None = None
) -> list[str] | None:
    """The band names of the first readable image of ``items`` (what a head was trained on,
    kept in its file), or ``None``."""
    found = first_bands(items, bands, sensor)
    return None if found is None else found[1]


def warn_other_bands(trained: Sequence[str] | None, given: Sequence[str], where: str) -> None:
    """A warning when images of another band set than a head's training images are scored: the
    encoder's features of other bands are not those the head learnt from."""
    if not trained or sorted(trained) == sorted(given):
        return
    shown_when_quiet.warning(
        "the head was trained on images with bands %s but %s has %s: the encoder's features "
        "of other bands are not those the head learnt from, so its outputs may be wrong; score "
        "images of the training bands, or train a head on these",
        list(trained), where, list(given),
    )  # fmt: skip


def save_head(
    path: str | os.PathLike,
    head: nn.Module,
    *,
    task: str,
    names: Sequence[str],
    features: FeatureSpec,
    encoder: Mapping[str, Any],
    method: str,
    prompt_names: Sequence[str] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a head-only safetensors file atomically (see the module docstring).

    Args:
        path: the ``.safetensors`` file.
        head: a head with a ``config()`` method (:class:`LinearHead`, :class:`TextInitHead`,
            :class:`KNNHead`).
        task: the task.
        names: class labels or output names.
        features: the features it reads.
        encoder: :func:`encoder_facts` of the encoder it was trained on.
        method: what trained it.
        prompt_names: class names in prompts.
        info: anything else worth keeping (JSON-ready).
    """
    from safetensors.torch import save_file

    from msclip._version import __version__
    from msclip.io import atomic_write, jsonable

    if not hasattr(head, "config"):
        raise HeadConfigError(f"{type(head).__name__} has no config(); it cannot be saved alone")
    if isinstance(names, (str, bytes)):
        raise HeadConfigError(f"names must be a list of names, got the single string {names!r}")
    names = [str(n) for n in names]
    outputs = getattr(head, "out_features", None)
    if outputs is not None and len(names) != outputs:
        raise HeadConfigError(
            f"{len(names)} names ({names[:5]}) for a head of {outputs} outputs: give one name "
            "per output, in output order"
        )
    sd = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {
        "format": HEAD_FORMAT,
        "format_version": _FORMAT_VERSION,
        "msclip_version": __version__,
        "head": json.dumps(jsonable(head.config())),
        "task": task,
        "names": json.dumps(list(names)),
        "prompt_names": json.dumps(list(prompt_names) if prompt_names is not None else None),
        "features": json.dumps(features.to_dict()),
        "encoder": json.dumps(jsonable(dict(encoder))),
        "method": method,
        "info": json.dumps(jsonable(dict(info or {}))),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), ".safetensors")


def head_file_contents(
    path: str | os.PathLike, tensors: bool = True
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and (with ``tensors``) the tensors of a safetensors head file, image-level or
    dense; nothing is unpickled.

    Raises:
        CheckpointError: a missing file, or one that cannot be read (damaged or cut short).
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path).expanduser()
    why = not_a_file(p, "a head file (.safetensors)")
    if why == "not found":
        raise CheckpointError(f"head file not found: {p}", param="head")
    if why is not None:  # a folder or a device (/dev/null): said as it is
        raise CheckpointError(f"head file {p} {why}", param="head")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
    # a truncated or overwritten file fails in the safetensors reader (not an OSError)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        from msclip.pretrained import checkpoint_format

        if checkpoint_format(p) == "torch":  # a zip archive, or the legacy pickle stream
            raise CheckpointError(
                f"head file {p} is a PyTorch pickle (torch.save), not a safetensors head file: "
                "msclip reads heads from safetensors only, since unpickling runs code from the "
                "file; save heads with msclip.heads.save_head (or train them with "
                "msclip-finetune)",
                param="head",
            ) from err
        raise CheckpointError(
            f"cannot read head file {p} (damaged or cut short?): {err}; copy it again or "
            "train the head again with msclip-finetune",
            param="head",
        ) from err
    return meta, data


def read_head(path: str | os.PathLike) -> HeadCheckpoint:
    """Read a head file (safetensors: no code is unpickled).

    Raises:
        CheckpointError: a missing or unreadable file, or not an msclip head file.
    """
    p = Path(path).expanduser()
    meta, tensors = head_file_contents(p)
    if meta.get("format") == DENSE_HEAD_FORMAT:
        raise CheckpointError(
            f"{p} is a dense (per-pixel) head: read it with msclip.heads.dense_head."
            "read_dense_head (msclip-inference --run-scene --head)",
            param="head",
        )
    if meta.get("format") != HEAD_FORMAT:
        raise CheckpointError(
            f"{p} is not an msclip head file (format {meta.get('format')!r}, expected "
            f"{HEAD_FORMAT!r}); heads are written by msclip-finetune",
            param="head",
        )
    check_format_version(meta, p, _FORMAT_VERSION)
    try:
        config = json.loads(meta["head"])
        try:
            head = build_any_head(config)
        except HeadConfigError as err:  # a head type of a newer msclip, or a damaged config
            raise CheckpointError(
                f"head file {p} holds a head this msclip cannot build ({err}): a damaged file, "
                f"or a head of its writer, msclip {meta.get('msclip_version', '?')} (this is "
                f"{_version()}); read it with that version, or train the head again",
                param="head",
            ) from err
        head.load_state_dict(tensors)
        checkpoint = HeadCheckpoint(
            head=head.eval(),
            task=meta["task"],
            names=list(json.loads(meta["names"])),
            prompt_names=json.loads(meta.get("prompt_names", "null")),
            features=_spec(json.loads(meta["features"])),
            encoder=json.loads(meta["encoder"]),
            method=meta.get("method", ""),
            info=json.loads(meta.get("info", "{}")),
            path=str(p),
        )
    except (KeyError, json.JSONDecodeError, RuntimeError) as err:
        raise CheckpointError(f"head file {p} is damaged: {err}", param="head") from err
    outputs = getattr(checkpoint.head, "out_features", None)
    if outputs is not None and len(checkpoint.names) != outputs:  # labels would be misassigned
        raise CheckpointError(
            f"head file {p} is damaged: it names {len(checkpoint.names)} outputs "
            f"({checkpoint.names[:5]}) for a head of {outputs}",
            param="head",
        )
    return checkpoint


def _version() -> str:
    from msclip._version import __version__

    return __version__


def check_format_version(meta: Mapping[str, str], path: Path, supported: str) -> None:
    """Refuse a head file whose ``format_version`` is not the one this msclip reads (a file of a
    newer msclip, whose layout this one would misread).

    Raises:
        CheckpointError: naming the file's version, the msclip that wrote it and the fix.
    """
    version = meta.get("format_version", supported)
    if version == supported:
        return
    raise CheckpointError(
        f"head file {path} has format version {version!r}, but this msclip ({_version()}) reads "
        f"version {supported!r}; it was written by msclip {meta.get('msclip_version', '?')}: "
        "upgrade msclip (pip install -U msclip) to read it, or train the head again",
        param="head",
    )


def _spec(d: Mapping[str, Any]) -> FeatureSpec:
    return FeatureSpec(str(d["kind"]), tuple(int(i) for i in d["layers"]), bool(d["normalize"]))


# -- binding to an encoder -----------------------------------------------------------------------
def _describe(facts: Mapping[str, Any]) -> str:
    return (
        f"{facts.get('fingerprint')} ({facts.get('name')}, checkpoint "
        f"{str(facts.get('checkpoint_sha256'))[:24]}...)"
    )


def bind_head(
    checkpoint: HeadCheckpoint, model: Any, adapters: str | os.PathLike | None = None
) -> None:
    """Check that ``model`` is the encoder the head was trained on; attach and merge its LoRA
    adapters first when the head needs them.

    Args:
        checkpoint: the head.
        model: an :class:`msclip.MSCLIP` (modified in place when adapters are merged).
        adapters: the adapter file (default: the one recorded, next to the head file).

    Raises:
        CheckpointMismatchError: another encoder (both fingerprints named), or adapters that are
            not the recorded ones.
    """
    enc = checkpoint.encoder
    have = model.fingerprint(precision=False)
    needs = enc.get("adapters")
    if _accepts(checkpoint, have):
        checkpoint.bound = have
        return
    if needs and have == enc.get("fingerprint"):
        from msclip.heads.lora import load_lora, merge_lora
        from msclip.pretrained import file_sha256

        if getattr(model, "precision", None) == "int8":
            raise PrecisionError(
                f"head {checkpoint.path} merges LoRA adapters into the encoder's attention, whose "
                "float weights an int8 encoder no longer has: load the encoder with precision "
                "auto or fp32, or load the merged weights (msclip-finetune --merge-lora) in int8",
                param="precision",
            )

        where = (
            Path(adapters)
            if adapters is not None
            else Path(checkpoint.path or ".").parent / needs["file"]
        )
        if not where.is_file():
            raise CheckpointMismatchError(
                f"head {checkpoint.path} was trained with LoRA adapters ({needs['file']}), not "
                f"found at {where}; give the adapter file",
                param="adapters",
            )
        sha = file_sha256(where)
        if sha != needs["sha256"]:
            raise CheckpointMismatchError(
                f"adapter file {where} (sha256 {sha[:16]}...) is not the one head "
                f"{checkpoint.path} was trained with (sha256 {needs['sha256'][:16]}...)",
                param="adapters",
            )
        load_lora(model, where)
        merge_lora(model)
        logger.info("LoRA adapters %s merged into the encoder", where)
        checkpoint.bound = model.fingerprint(precision=False)  # the merged weights
        return
    want = dict(enc)
    hint = ""
    if enc.get("encoder_file"):
        hint = f" It reads the fine-tuned encoder saved as {enc['encoder_file']}; load that file."
    elif needs:
        hint = " It reads the base encoder with its LoRA adapters (or their merged weights)."
    raise CheckpointMismatchError(
        f"head {checkpoint.path} was trained on encoder {_describe(want)} but the model is "
        f"{_describe(encoder_facts(model))}: a head works only on the encoder it was trained "
        f"on.{hint}",
        param="head",
    )


def _accepts(checkpoint: Any, have: str) -> bool:
    """Whether a head runs on the encoder of fingerprint ``have`` as it is: the one
    :func:`bind_head` accepted last, the encoder it was trained on (without LoRA adapters), or
    the merged weights of its adapters."""
    enc = checkpoint.encoder
    needs = enc.get("adapters")
    return (
        have == getattr(checkpoint, "bound", None)
        or (not needs and have == enc.get("fingerprint"))
        or (bool(needs) and have == enc.get("merged_fingerprint"))
    )


def require_bound(checkpoint: Any, model: Any) -> None:
    """Refuse to run a head on an encoder :func:`bind_head` has not accepted: a head on another
    encoder's features gives confident, meaningless scores.

    Args:
        checkpoint: a :class:`HeadCheckpoint` (or a dense head read back from its file).
        model: the encoder about to feed it.

    Raises:
        CheckpointMismatchError: another encoder (both fingerprints named), or the head's
            encoder without the LoRA adapters the head was trained with (``bind_head`` merges
            them).
    """
    have = model.fingerprint(precision=False)
    enc = checkpoint.encoder
    needs = enc.get("adapters")
    if _accepts(checkpoint, have):
        return
    if needs and have == enc.get("fingerprint"):
        raise CheckpointMismatchError(
            f"head {checkpoint.path} was trained with LoRA adapters ({needs.get('file')}) that "
            "this encoder lacks: call bind_head(head, model) first, which merges them",
            param="adapters",
        )
    bind_head(checkpoint, model)  # another encoder: refused, naming both


def predict_images(
    checkpoint: HeadCheckpoint,
    model: Any,
    dataset: Any,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    abort_on: tuple[type[BaseException], ...] | None = None,
) -> tuple[np.ndarray, list[int], list[Any], list[int], list[float]]:
    """Scores of a (bound) head on the images of a dataset following the item protocol.

    The encoder runs once per image through :func:`msclip.encode.encode_batches` with the
    head's features (:meth:`FeatureSpec.forward`).

    Returns:
        ``(scores [N_ok, outputs], indices, failures, skipped, valid fractions)`` as in
        :func:`msclip.encode.encode_images`.

    Raises:
        CheckpointMismatchError: ``model`` is not the encoder the head was trained on (see
            :func:`bind_head`), before any image is read.
    """
    from msclip.encode import encode_batches
    from msclip.errors import BandCoverageError

    require_bound(checkpoint, model)
    spec = checkpoint.features
    feats, indices, failures, skipped, valid = [], [], [], [], []
    for b in encode_batches(
        model, dataset, batch_size=batch_size, workers=workers, normalize=spec.normalize,
        progress=progress, forward=spec.forward(model),
        abort_on=abort_on if abort_on is not None else (BandCoverageError,),
    ):  # fmt: skip
        feats.append(b.embeddings)
        indices += b.indices
        failures += b.failures
        skipped += b.skipped
        valid += b.extra.get("valid", [])
    dim = spec.dim(model)
    x = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
    scores = head_scores(checkpoint.head, x, checkpoint.task) if len(x) else np.zeros((0, 0))
    return scores, indices, failures, skipped, valid
