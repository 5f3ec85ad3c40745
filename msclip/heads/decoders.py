"""Dense decoders over the multi-layer feature taps of a vision transformer.

Every decoder takes the patch-token maps of several transformer blocks, a list of
``[B, C_i, h, w]`` tensors (all at patch resolution, ``h = H / patch``), and returns
``[B, K, H, W]`` at the input resolution: ``K`` class logits for segmentation or ``K`` values for
per-pixel regression. The output size is passed to :meth:`forward`; by default it is the tap size
times ``patch_size``. Inputs whose side is not a multiple of the patch size are padded and
cropped back by :class:`msclip.heads.dense.DenseModel`, not here.

Decoders (``build_decoder(name, ...)``):

* ``linear``: per tapped layer a batch-norm and a 1x1 convolution to ``K`` outputs, summed with
  learned layer weights (softmax of one scalar per layer, initialised equal), upsampled
  bilinearly. The linear probe of dense features as used by DINOv2's linear segmentation
  (Oquab et al., TMLR 2024, several layers concatenated after batch-norm) with the layer mixing of
  ELMo-style scalar weights (Peters et al., NAACL 2018).
  Parameters: ``sum_i (2 C_i + C_i K + K) + L``.
* ``fcn``: the taps concatenated, ``num_convs`` 3x3 convolution + batch-norm + ReLU layers of
  ``channels`` channels, dropout, a 1x1 classifier, bilinear upsampling (the FCN head of
  Long, Shelhamer, Darrell, CVPR 2015, in mmsegmentation's ``FCNHead`` arrangement).
  Parameters: ``9 C ch + (n - 1) 9 ch^2 + 2 n ch + ch K + K`` with ``C = sum_i C_i``.
* ``upernet``: UPerNet (Xiao et al., ECCV 2018) on a ViT feature pyramid as BEiT and
  pangaea-bench build it: four levels resampled x4 (two 2x2 transposed convolutions with
  batch-norm and GELU between), x2 (one transposed convolution), x1 (identity) and x0.5
  (2x2 max-pool); a pyramid pooling module (PSPNet, Zhao et al., CVPR 2017) with bins
  1, 2, 3, 6 on the coarsest level; FPN (Lin et al., CVPR 2017) lateral 1x1 and output 3x3
  convolutions with a top-down path; the four outputs upsampled to the finest level,
  concatenated, fused by a 3x3 convolution and classified. ``channels`` defaults to 256
  (TerraTorch's default; pangaea-bench uses 512). Every convolution is followed by plain
  (not synchronised) batch-norm and ReLU. With ``n`` taps, pyramid level ``j`` (0 = x4 ... 3 =
  x0.5) reads tap ``round(j (n - 1) / 3)``: four taps map one to one (shallower taps to finer
  levels), one tap feeds every level (a ViTDet-style simple pyramid).
  Parameters, with every tap of ``C`` channels, ``ch`` channels and ``b`` pooling bins:
  ``12 C^2 + 5 C`` (resampling) ``+ b (C ch + 2 ch) + 9 (C + b ch) ch + 2 ch`` (PPM)
  ``+ 3 (C ch + 2 ch) + 3 (9 ch^2 + 2 ch) + 36 ch^2 + 2 ch`` (FPN and fusion)
  ``+ ch K + K``: 7.22 M for ``C = 128``, ``ch = 256``, ``K = 5``; 39.3 M for ViT-B's
  ``C = 768`` with pangaea-bench's ``ch = 512``.
* ``segformer``: the all-MLP decoder of SegFormer (Xie et al., NeurIPS 2021): per level a
  linear embedding (1x1 convolution) to ``embed_dim`` channels, every level upsampled to the
  finest one (ViT taps all share the patch grid, so this is the identity for them),
  concatenated, fused by a 1x1 convolution + batch-norm + ReLU, dropout, a 1x1 classifier and
  bilinear upsampling.
  Parameters: ``sum_i (C_i E + E) + L E^2 + 2 E + E K + K``.

:func:`count_parameters` gives the exact count of a built decoder; the benchmark
(``benchmarks/dense.py``) prints them for msclip-demo's taps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import DecoderError

__all__ = [
    "DECODERS",
    "DenseDecoder",
    "FCNDecoder",
    "LinearDecoder",
    "SegFormerDecoder",
    "UPerNetDecoder",
    "build_decoder",
    "count_parameters",
    "list_decoders",
]

logger = logging.getLogger(__name__)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``; only those that require grad when asked."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class DenseDecoder(nn.Module):
    """Base class: checks the taps and computes the output size.

    Args:
        in_channels: channels of each tap, in tap order.
        num_outputs: ``K``, classes or regression outputs.
        patch_size: input pixels per tap cell (the default upsampling factor).
    """

    #: Registry name of the decoder.
    name: str = ""

    def __init__(self, in_channels: Sequence[int], num_outputs: int, patch_size: int) -> None:
        super().__init__()
        chans = [int(c) for c in in_channels]
        if not chans or any(c < 1 for c in chans):
            raise DecoderError(
                f"in_channels must list at least one positive channel count per tap, got "
                f"{list(in_channels)}"
            )
        if int(num_outputs) < 1:
            raise DecoderError(f"num_outputs must be >= 1, got {num_outputs}")
        if int(patch_size) < 1:
            raise DecoderError(f"patch_size must be >= 1, got {patch_size}")
        self.in_channels = chans
        self.num_outputs = int(num_outputs)
        self.patch_size = int(patch_size)

    def _check(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(features)
        if len(feats) != len(self.in_channels):
            raise DecoderError(
                f"{type(self).__name__} was built for {len(self.in_channels)} taps but got "
                f"{len(feats)}; tap the layers it was built for"
            )
        for i, (f, c) in enumerate(zip(feats, self.in_channels)):
            if f.ndim != 4 or f.shape[1] != c:
                raise DecoderError(
                    f"tap {i} has shape {tuple(f.shape)}; expected [B, {c}, h, w] "
                    f"({type(self).__name__} was built for in_channels={self.in_channels})"
                )
        return feats

    def output_size(
        self, features: Sequence[torch.Tensor], size: Sequence[int] | None
    ) -> tuple[int, int]:
        """``size`` when given, else the first tap's size times ``patch_size``."""
        if size is not None:
            return int(size[0]), int(size[1])
        h, w = features[0].shape[-2:]
        return int(h) * self.patch_size, int(w) * self.patch_size

    def forward(
        self, features: Sequence[torch.Tensor], size: Sequence[int] | None = None
    ) -> torch.Tensor:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


class LinearDecoder(DenseDecoder):
    """Per-layer batch-norm + 1x1 convolution, softmax-weighted sum, bilinear upsampling.

    Args:
        in_channels: channels of each tap.
        num_outputs: ``K``.
        patch_size: input pixels per tap cell.
    """

    name = "linear"

    def __init__(self, in_channels: Sequence[int], num_outputs: int, patch_size: int) -> None:
        super().__init__(in_channels, num_outputs, patch_size)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in self.in_channels)
        self.heads = nn.ModuleList(nn.Conv2d(c, self.num_outputs, 1) for c in self.in_channels)
        self.layer_logits = nn.Parameter(torch.zeros(len(self.in_channels)))

    @property
    def layer_weights(self) -> torch.Tensor:
        """Softmax-normalised weight of each tapped layer (sums to one)."""
        return self.layer_logits.softmax(dim=0)

    def forward(
        self, features: Sequence[torch.Tensor], size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Outputs ``[B, K, H, W]`` for taps ``[B, C_i, h, w]``."""
        feats = self._check(features)
        out_size = self.output_size(feats, size)
        base = feats[0].shape[-2:]
        weights = self.layer_weights
        out = None
        for i, (f, norm, head) in enumerate(zip(feats, self.norms, self.heads)):
            term = _resize(head(norm(f)), base) * weights[i]
            out = term if out is None else out + term
        return _resize(out, out_size)


class FCNDecoder(DenseDecoder):
    """Concatenated taps, ``num_convs`` x (3x3 conv, batch-norm, ReLU), dropout, 1x1 classifier.

    Args:
        in_channels: channels of each tap.
        num_outputs: ``K``.
        patch_size: input pixels per tap cell.
        channels: width of the convolution layers.
        num_convs: number of 3x3 convolution layers (>= 1).
        dropout: dropout before the classifier.
    """

    name = "fcn"

    def __init__(
        self,
        in_channels: Sequence[int],
        num_outputs: int,
        patch_size: int,
        channels: int = 256,
        num_convs: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels, num_outputs, patch_size)
        if num_convs < 1 or channels < 1:
            raise DecoderError(
                f"the FCN decoder needs num_convs >= 1 and channels >= 1, got {num_convs} and "
                f"{channels}"
            )
        total = sum(self.in_channels)
        layers = [_conv_bn_relu(total, channels, 3)]
        layers += [_conv_bn_relu(channels, channels, 3) for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, self.num_outputs, 1)

    def forward(
        self, features: Sequence[torch.Tensor], size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Outputs ``[B, K, H, W]`` for taps ``[B, C_i, h, w]``."""
        feats = self._check(features)
        out_size = self.output_size(feats, size)
        base = feats[0].shape[-2:]
        x = torch.cat([_resize(f, base) for f in feats], dim=1)
        x = self.classifier(self.dropout(self.convs(x)))
        return _resize(x, out_size)


class _PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: average-pool to each bin size, 1x1 conv, upsample, concat."""

    def __init__(self, cin: int, channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.bins = [int(b) for b in bins]
        self.stages = nn.ModuleList(_conv_bn_relu(cin, channels, 1) for _ in self.bins)
        self.bottleneck = _conv_bn_relu(cin + len(self.bins) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for b, stage in zip(self.bins, self.stages):
            outs.append(_resize(stage(F.adaptive_avg_pool2d(x, b)), size))
        return self.bottleneck(torch.cat(outs, dim=1))


class UPerNetDecoder(DenseDecoder):
    """UPerNet over a x4 / x2 / x1 / x0.5 pyramid of ViT taps (see the module docstring).

    Args:
        in_channels: channels of each tap.
        num_outputs: ``K``.
        patch_size: input pixels per tap cell.
        channels: width of the PPM and FPN layers (256; pangaea-bench uses 512).
        pool_scales: bins of the pyramid pooling module.
        dropout: dropout before the classifier.
    """

    name = "upernet"
    #: Resampling factor of each pyramid level, finest first.
    SCALES = (4.0, 2.0, 1.0, 0.5)

    def __init__(
        self,
        in_channels: Sequence[int],
        num_outputs: int,
        patch_size: int,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels, num_outputs, patch_size)
        if channels < 1 or not pool_scales or any(int(b) < 1 for b in pool_scales):
            raise DecoderError(
                f"the UPerNet decoder needs channels >= 1 and positive pool_scales, got "
                f"{channels} and {list(pool_scales)}"
            )
        n = len(self.in_channels)
        #: Tap index feeding each pyramid level.
        self.level_taps = [round(j * (n - 1) / 3) for j in range(4)] if n > 1 else [0] * 4
        c = [self.in_channels[t] for t in self.level_taps]
        self.resample = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(c[0], c[0], 2, stride=2),
                    nn.BatchNorm2d(c[0]),
                    nn.GELU(),
                    nn.ConvTranspose2d(c[0], c[0], 2, stride=2),
                ),
                nn.ConvTranspose2d(c[1], c[1], 2, stride=2),
                nn.Identity(),
                # ceil_mode keeps a 1x1 grid at 1x1 instead of emptying it.
                nn.MaxPool2d(2, stride=2, ceil_mode=True),
            ]
        )
        self.ppm = _PyramidPooling(c[3], channels, pool_scales)
        self.lateral = nn.ModuleList(_conv_bn_relu(c[i], channels, 1) for i in range(3))
        self.fpn_out = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fuse = _conv_bn_relu(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, self.num_outputs, 1)

    def forward(
        self, features: Sequence[torch.Tensor], size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Outputs ``[B, K, H, W]`` for taps ``[B, C_i, h, w]``."""
        feats = self._check(features)
        out_size = self.output_size(feats, size)
        pyramid = [op(feats[t]) for op, t in zip(self.resample, self.level_taps)]
        laterals = [lat(p) for lat, p in zip(self.lateral, pyramid[:3])]
        laterals.append(self.ppm(pyramid[3]))
        for i in range(3, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_out, laterals[:3])]
        outs.append(laterals[3])
        finest = outs[0].shape[-2:]
        x = self.fuse(torch.cat([_resize(o, finest) for o in outs], dim=1))
        x = self.classifier(self.dropout(x))
        return _resize(x, out_size)


class SegFormerDecoder(DenseDecoder):
    """SegFormer's all-MLP decoder: per-level linear embedding, upsample, concat, fuse, classify.

    Args:
        in_channels: channels of each tap.
        num_outputs: ``K``.
        patch_size: input pixels per tap cell.
        embed_dim: common embedding width ``E`` (256, SegFormer's B0 value).
        dropout: dropout before the classifier.
    """

    name = "segformer"

    def __init__(
        self,
        in_channels: Sequence[int],
        num_outputs: int,
        patch_size: int,
        embed_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels, num_outputs, patch_size)
        if embed_dim < 1:
            raise DecoderError(f"the SegFormer decoder needs embed_dim >= 1, got {embed_dim}")
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in self.in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(self.in_channels) * embed_dim, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, self.num_outputs, 1)

    def forward(
        self, features: Sequence[torch.Tensor], size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Outputs ``[B, K, H, W]`` for taps ``[B, C_i, h, w]``."""
        feats = self._check(features)
        out_size = self.output_size(feats, size)
        finest = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        x = torch.cat([_resize(e(f), finest) for e, f in zip(self.embed, feats)], dim=1)
        x = self.classifier(self.dropout(self.fuse(x)))
        return _resize(x, out_size)


#: Registry of decoder classes by name.
DECODERS: dict[str, type[DenseDecoder]] = {
    "linear": LinearDecoder,
    "fcn": FCNDecoder,
    "upernet": UPerNetDecoder,
    "segformer": SegFormerDecoder,
}


def list_decoders() -> list[str]:
    """Names accepted by :func:`build_decoder`."""
    return list(DECODERS)


def build_decoder(
    name: str,
    in_channels: Sequence[int],
    num_outputs: int,
    patch_size: int = 16,
    **kwargs: Any,
) -> DenseDecoder:
    """Build a decoder by name.

    Args:
        name: ``linear``, ``fcn``, ``upernet`` or ``segformer`` (case-insensitive).
        in_channels: channels of each tap (e.g. ``[width] * len(layers)`` for a ViT).
        num_outputs: ``K``, classes or regression outputs.
        patch_size: input pixels per tap cell (the encoder's patch size).
        **kwargs: decoder options (``channels``, ``num_convs``, ``pool_scales``, ``embed_dim``,
            ``dropout``; see each class).

    Raises:
        DecoderError: unknown name, bad option or bad sizes.
    """
    key = str(name).lower()
    if key not in DECODERS:
        raise DecoderError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
    try:
        decoder = DECODERS[key](in_channels, num_outputs, patch_size, **kwargs)
    except TypeError as err:
        raise DecoderError(f"bad options {sorted(kwargs)} for the {key} decoder: {err}") from None
    logger.debug("built %s decoder with %d parameters", key, count_parameters(decoder))
    return decoder
