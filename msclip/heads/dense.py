"""Dense prediction on msclip's spectral encoder: encoder taps, padding, and a multi-task model.

:func:`encoder_taps` is the one place that reads patch-token maps ``[B, C, h, w]`` out of the
image tower (through OpenCLIP's ``VisionTransformer.forward_intermediates``). The encoder was
trained at one input size; for another grid of patches the learned absolute positional
embeddings are resampled bicubically to the new grid (the class-token embedding is kept), the
usual way of running a ViT at another resolution (Dosovitskiy et al., ICLR 2021, section 3.2;
MaskCLIP and timm do the same). At the trained size the result is exactly
``forward_intermediates``.

:class:`DenseModel` wraps an encoder (an :class:`msclip.MSCLIP`), the tapped block indices and
one or more decoder heads (:mod:`msclip.heads.decoders`); one encoder pass feeds every head and
``forward`` returns ``{task name: [B, K, H, W]}``.

* **Any input size.** Inputs whose height or width is not a multiple of the patch size are
  padded at the bottom and right to the next multiple (reflection padding by default, so the
  padded border continues the image; replicate padding where an image is too small to reflect;
  ``pad_mode="constant"`` pads with 0, the band mean after normalisation) and every output is
  cropped back to ``H x W``. Nothing is refused.
* **Any input band set.** Images are normalised tensors whose channels are ``bands`` (the
  model's own bands when omitted); other band sets are mapped into the model's channel space by
  :meth:`msclip.MSCLIP.to_model_bands` (wavelength-aware, :mod:`msclip.spectral.adapt`).
* **Frozen or trainable encoder.** When no encoder parameter requires grad, the encoder runs
  under ``torch.no_grad()`` (no activation memory is kept for it); otherwise gradients flow into
  it. Choosing which encoder parameters train (frozen, LoRA, last-n, full, scratch) is done
  elsewhere, by setting ``requires_grad``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import DecoderError
from msclip.heads.decoders import DenseDecoder, build_decoder, count_parameters
from msclip.heads.runs import autocast_to

__all__ = [
    "TASK_KINDS",
    "DenseModel",
    "DenseTask",
    "build_dense_model",
    "encoder_taps",
    "pad_to_multiple",
]

logger = logging.getLogger(__name__)

#: Task kinds a dense head can serve.
TASK_KINDS = ("segmentation", "regression")


# -- encoder access ------------------------------------------------------------------------------
def _check_encoder(model: Any) -> None:
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "embed_tokens"):
        raise DecoderError(
            f"{type(model).__name__} is not an msclip.MSCLIP (no forward_intermediates / "
            "embed_tokens); dense heads read an msclip model's image tower"
        )


def _layer_indices(layers: int | Sequence[int], model: Any) -> list[int]:
    try:
        idx = model.block_indices(layers)
    except ValueError as err:
        raise DecoderError(str(err)) from None
    if len(set(idx)) != len(idx):
        raise DecoderError(f"layers {list(layers)} name a block twice; tap each block once")  # type: ignore[arg-type]
    return sorted(idx)


def _check_images(model: Any, images: torch.Tensor) -> tuple[int, int]:
    p = model.patch_size
    if images.ndim != 4:
        raise DecoderError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % p or w % p or h < p or w < p:
        raise DecoderError(
            f"image size {h}x{w} is not a positive multiple of the patch size {p}; pad it "
            "first (pad_to_multiple, or DenseModel which pads and crops back)"
        )
    return h // p, w // p


def encoder_taps(
    model: Any, images: torch.Tensor, layers: int | Sequence[int]
) -> list[torch.Tensor]:
    """Patch-token maps ``[B, width, H/p, W/p]`` of the tapped blocks, in block order.

    This is the single adapter between the dense heads and the encoder.

    Args:
        model: an :class:`msclip.MSCLIP` (or an OpenCLIP CLIP with a ViT image tower).
        images: normalised images in the model's bands, ``[B, C, H, W]`` with ``H`` and ``W``
            multiples of the patch size ``p`` (:func:`pad_to_multiple`).
        layers: block indices (negative counts from the end), or one index.

    Raises:
        DecoderError: bad layer indices or an image size that is not a multiple of the patch.
    """
    _check_encoder(model)
    _check_images(model, images)
    idx = _layer_indices(layers, model)
    return model.forward_intermediates(images, layers=idx, pool=None).maps


def pad_to_multiple(
    images: torch.Tensor, multiple: int, mode: str = "reflect"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``[B, C, H, W]`` at the bottom and right so that both sides are multiples of
    ``multiple``; returns the padded tensor and the original ``(H, W)``.

    Args:
        images: the batch.
        multiple: the patch size.
        mode: ``reflect`` (mirror without repeating the edge; ``replicate`` is used for a side
            too short to mirror), ``replicate`` or ``constant`` (zeros).
    """
    if mode not in ("reflect", "replicate", "constant"):
        raise DecoderError(f"pad mode must be reflect, replicate or constant, got {mode!r}")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return images, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    if mode == "constant":
        return F.pad(images, (0, pw, 0, ph), mode="constant", value=0.0), (h, w)
    return F.pad(images, (0, pw, 0, ph), mode=mode), (h, w)


# -- tasks and the model ------------------------------------------------------------------------
@dataclass
class DenseTask:
    """One dense task: its head and its loss.

    Attributes:
        name: key of the task's output in :meth:`DenseModel.forward`.
        kind: ``segmentation`` (``num_outputs`` classes) or ``regression`` (``num_outputs``
            values per pixel).
        num_outputs: classes or regression outputs.
        decoder: decoder name (:func:`msclip.heads.decoders.build_decoder`).
        decoder_kwargs: decoder options.
        loss_weight: weight of this task's loss in the multi-task sum.
        ignore_index: label value excluded from the loss and metrics (segmentation).
        class_weights: per-class loss weights, ``"auto"``/``"inverse"``/``"median"`` (computed
            from the labels by :func:`msclip.heads.losses.resolve_class_weights`), or ``None``.
        loss: ``cross_entropy`` (segmentation), ``mse``, ``l1`` or ``huber`` (regression).
        huber_delta: threshold of the Huber loss, in scaled target units.
        nodata: target value marking unlabelled pixels (regression; NaN targets always are).
        scale: the network predicts ``target * scale`` (regression).
    """

    name: str
    kind: str = "segmentation"
    num_outputs: int = 2
    decoder: str = "linear"
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_weight: float = 1.0
    ignore_index: int | None = 255
    class_weights: Any = None
    loss: str = ""
    huber_delta: float = 1.0
    nodata: float | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise DecoderError(
                f"task {self.name!r}: kind must be one of {', '.join(TASK_KINDS)}, got "
                f"{self.kind!r}"
            )
        if not self.loss:
            self.loss = "cross_entropy" if self.kind == "segmentation" else "mse"
        if int(self.num_outputs) < 1:
            raise DecoderError(f"task {self.name!r}: num_outputs must be >= 1")
        if not math.isfinite(self.loss_weight) or self.loss_weight < 0:
            raise DecoderError(
                f"task {self.name!r}: loss_weight must be finite and >= 0, got {self.loss_weight}"
            )


class DenseModel(nn.Module):
    """An encoder, tapped blocks and one decoder per task; one encoder pass feeds every head.

    Args:
        encoder: an :class:`msclip.MSCLIP`.
        layers: tapped block indices (negative counts from the end); sorted into block order.
        heads: ``{task name: decoder}`` (or a single decoder, named ``"out"``).
        pad_mode: padding of inputs that are not a multiple of the patch size
            (:func:`pad_to_multiple`).
        tasks: the :class:`DenseTask` of each head, kept for losses and reports.

    Attributes:
        autocast: dtype the encoder computes in by autocast over its own weights (``None``:
            none): a fine-tuning run's bf16 over float32 weights that train
            (:func:`msclip.heads.runs.tower_autocast`).
    """

    autocast: torch.dtype | None = None

    def __init__(
        self,
        encoder: nn.Module,
        layers: int | Sequence[int],
        heads: Mapping[str, nn.Module] | nn.Module,
        pad_mode: str = "reflect",
        tasks: Sequence[DenseTask] = (),
    ) -> None:
        super().__init__()
        _check_encoder(encoder)
        self.encoder = encoder
        self.layers = _layer_indices(layers, encoder)
        if isinstance(heads, nn.Module) and not isinstance(heads, (nn.ModuleDict, dict)):
            heads = {"out": heads}
        if not heads:
            raise DecoderError("a DenseModel needs at least one head")
        self.heads = nn.ModuleDict(dict(heads))
        pad_to_multiple(torch.zeros(1, 1, 1, 1), 1, pad_mode)  # validates the mode
        self.pad_mode = pad_mode
        self.patch_size = int(encoder.patch_size)
        self.tasks = {t.name: t for t in tasks}
        unknown = [n for n in self.tasks if n not in self.heads]
        if unknown:
            raise DecoderError(f"tasks {unknown} have no head; heads: {list(self.heads)}")

    @property
    def task_names(self) -> list[str]:
        """Output keys, in head order."""
        return list(self.heads)

    @property
    def encoder_trainable(self) -> bool:
        """Whether any encoder parameter requires grad (else the encoder runs under no_grad)."""
        return any(p.requires_grad for p in self.encoder.parameters())

    @property
    def image_size(self) -> int:
        """The encoder's trained input size (the natural tile size for scene prediction)."""
        return int(self.encoder.image_size)

    def head_parameters(self) -> int:
        """Number of parameters of the heads."""
        return count_parameters(self.heads)

    def prepare(
        self, images: torch.Tensor, bands: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Map ``images`` into the model's bands and pad them; returns them and the original
        ``(H, W)``."""
        if images.ndim != 4:
            raise DecoderError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        to_bands = getattr(self.encoder, "to_model_bands", None)
        if bands is not None:
            if to_bands is None:
                raise DecoderError("this encoder cannot map band sets; pass its own bands")
            images = to_bands(images, bands)
        return pad_to_multiple(images, self.patch_size, self.pad_mode)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Taps of padded, model-band images (no_grad when the encoder is frozen; under
        autocast to :attr:`autocast` when set, the heads then get them in their own dtype)."""
        ctx = contextlib.nullcontext() if self.encoder_trainable else torch.no_grad()
        with ctx, autocast_to(images.device.type, self.autocast):
            return encoder_taps(self.encoder, images, self.layers)

    def decode(
        self,
        taps: Sequence[torch.Tensor],
        size: Sequence[int] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the heads on taps (e.g. cached features) and crop to ``size``.

        Args:
            taps: the maps of :meth:`encode`.
            size: the unpadded ``(H, W)``; the padded size when omitted.
            tasks: heads to run (all when omitted).
        """
        names = self.task_names if tasks is None else list(tasks)
        missing = [n for n in names if n not in self.heads]
        if missing:
            raise DecoderError(f"unknown tasks {missing}; heads: {self.task_names}")
        gh, gw = taps[0].shape[-2:]
        full = (int(gh) * self.patch_size, int(gw) * self.patch_size)
        h, w = full if size is None else (int(size[0]), int(size[1]))
        out = {}
        for name in names:
            head = self.heads[name]
            p = next(head.parameters(), None)
            feats = [t.to(p.dtype) for t in taps] if p is not None else list(taps)
            y = head(feats, full)
            out[name] = y[..., :h, :w] if (h, w) != full else y
        return out

    def forward(
        self,
        images: torch.Tensor,
        bands: Sequence[str] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{task: [B, K, H, W]}`` for normalised images ``[B, C, H, W]``.

        Args:
            images: normalised images; channels are the model's bands unless ``bands`` names
                them.
            bands: band names of the channels of ``images``.
            tasks: heads to run (all when omitted).
        """
        x, size = self.prepare(images, bands)
        return self.decode(self.encode(x), size, tasks)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, task: str | None = None) -> torch.Tensor:
        """One task's outputs in inference mode (the callable for scene prediction).

        Call ``eval()`` first: batch-norm in training mode would make each tile's output depend
        on the other tiles of its batch.
        """
        name = self.task_names[0] if task is None else task
        return self.forward(images, tasks=[name])[name]


def build_dense_model(
    encoder: nn.Module,
    tasks: Sequence[DenseTask] | DenseTask,
    layers: int | Sequence[int] | None = None,
    pad_mode: str = "reflect",
) -> DenseModel:
    """Build the decoders of ``tasks`` on ``encoder``'s taps and wrap them in a DenseModel.

    Args:
        encoder: an :class:`msclip.MSCLIP`.
        tasks: one or several :class:`DenseTask` (names must differ).
        layers: tapped blocks; the encoder's default taps (:attr:`msclip.MSCLIP.taps`, recorded in
            its config: blocks 3, 5, 7, 11 of a ViT-B) when omitted.
        pad_mode: see :func:`pad_to_multiple`.
    """
    task_list = [tasks] if isinstance(tasks, DenseTask) else list(tasks)
    names = [t.name for t in task_list]
    if not task_list or len(set(names)) != len(names):
        raise DecoderError(f"give at least one task, each with its own name; got {names}")
    _check_encoder(encoder)
    idx = _layer_indices(encoder.taps if layers is None else layers, encoder)
    width, patch = int(encoder.width), int(encoder.patch_size)
    heads: dict[str, DenseDecoder] = {}
    for t in task_list:
        heads[t.name] = build_decoder(
            t.decoder, [width] * len(idx), t.num_outputs, patch, **t.decoder_kwargs
        )
    return DenseModel(encoder, idx, heads, pad_mode, task_list)
