"""Zero-shot dense class maps with no trained head, as MaskCLIP makes them.

MaskCLIP (Zhou, Loy, Dai, "Extract Free Dense Labels from CLIP", ECCV 2022) observes that the
patch tokens of CLIP's last attention block carry local semantics only along the *value* path:
query-key attention mixes every patch with the global context that the class token needs. So
for every patch token ``x`` entering the last block it skips query-key attention and computes

* ``variant="maskclip"`` (what the released MaskCLIP code computes for ViT backbones):
  ``v = x + out_proj(value_proj(ln_1(x)))``, then the block's MLP with its residual,
  ``v = v + mlp(ln_2(v))``, then ``ln_post`` and the image projection;
* ``variant="value"``: ``out_proj(value_proj(ln_1(x)))`` alone, then ``ln_post`` and the image
  projection (no residual, no MLP): the value path as the paper's text describes it; dropping
  the residual and MLP is also what ClearCLIP (Lan et al., ECCV 2024) found to give cleaner
  maps.

``maskclip`` is the default: on msclip-demo and 84 generated 64-pixel tiles (6 per class of
:mod:`msclip.data.scenes`, seed 12345, the ``eo`` templates) its maps reach mIoU 0.353 against
0.262 for ``value``. (On those mostly single-class tiles the tile's own zero-shot label painted
over every pixel reaches 0.641: a dense map from a model trained only on whole tiles is a
baseline, not a replacement for a trained decoder.)

(OpenCLIP's layer-scale factors ``ls_1``/``ls_2``, identities in msclip's models, are applied
where the block applies them.) Each patch feature is L2-normalised and compared by cosine with a
zero-shot classifier ``[K, D]`` (:func:`msclip.zero_shot.build_classifier`: one L2-normalised
text embedding per class); logits are ``scale x cosine`` (100, the published zero-shot scale),
bilinearly upsampled from the patch grid to the input's pixels.

When every token entering the last block is the same vector, attention returns that token's
value whatever the queries and keys, so the ``maskclip`` variant's patch features equal the
model's own pooled image embedding; the tests check this identity and the ``value`` variant
against a hand computation from the block's weights.

:class:`MaskCLIP` maps a normalised batch ``[B, C, H, W]`` to ``[B, K, H, W]`` logits, pads
sizes that are not a multiple of the patch size (as :class:`msclip.heads.dense.DenseModel`) and
is directly usable as the predictor of :func:`msclip.heads.scene_predict.predict_scene`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import DecoderError, PrecisionError
from msclip.heads.dense import (
    pad_to_multiple,
)

__all__ = ["MASKCLIP_VARIANTS", "MaskCLIP", "dense_clip_features", "last_block_value_tokens"]

#: Value-path variants (see the module docstring).
MASKCLIP_VARIANTS = ("maskclip", "value")


def _refuse_int8(model: Any) -> None:
    """MaskCLIP reads the float value projection of the last block's attention, which an int8
    model's image tower no longer has (:mod:`msclip.quantize`): said as such, with the fix,
    rather than as an architecture the maps do not support."""
    if getattr(model, "precision", None) == "int8":
        raise PrecisionError(
            "MaskCLIP dense maps read the float attention weights of the image tower's last "
            "block, which an int8 model replaces by int8 layers: create the model with precision "
            "'auto' or 'fp32' for dense maps (msclip.create_model(..., precision='fp32'))",
            param="precision",
        )


def last_block_value_tokens(
    block: nn.Module, x: torch.Tensor, variant: str = "maskclip"
) -> torch.Tensor:
    """The value path of one OpenCLIP ``ResidualAttentionBlock`` for tokens ``[B, L, D]``.

    Args:
        block: the last residual attention block of the image tower.
        x: tokens entering it (batch first).
        variant: ``maskclip`` (with residual and MLP) or ``value`` (value and output
            projections only).
    """
    if variant not in MASKCLIP_VARIANTS:
        raise DecoderError(
            f"MaskCLIP variant must be one of {', '.join(MASKCLIP_VARIANTS)}, got {variant!r}"
        )
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise DecoderError(
            "the last block's attention is not a packed nn.MultiheadAttention; MaskCLIP maps "
            "need OpenCLIP's standard vision transformer blocks"
        )
    d = x.shape[-1]
    w_v = attn.in_proj_weight[2 * d :]
    b_v = attn.in_proj_bias[2 * d :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), w_v, b_v)
    v = block.ls_1(attn.out_proj(v))
    if variant == "value":
        return v
    v = x + v
    return v + block.ls_2(block.mlp(block.ln_2(v)))


def dense_clip_features(
    model: Any, images: torch.Tensor, variant: str = "maskclip", normalize: bool = True
) -> torch.Tensor:
    """Per-patch embeddings in the joint image-text space, ``[B, D, H/p, W/p]``.

    Args:
        model: an :class:`msclip.MSCLIP`.
        images: normalised images in the model's bands, sides multiples of the patch size.
        variant: see the module docstring.
        normalize: L2-normalise every patch embedding.
    """
    _refuse_int8(model)
    visual = model.clip.visual
    if getattr(visual, "attn_pool", None) is not None:
        raise DecoderError("MaskCLIP maps need an image tower without attentional pooling")
    p = model.patch_size
    h, w = images.shape[-2:]
    if images.ndim != 4 or h % p or w % p:
        raise DecoderError(
            f"images of shape {tuple(images.shape)} must be [B, C, H, W] with H and W "
            f"multiples of the patch size {p}"
        )
    dtype = getattr(model, "dtype", images.dtype)
    x = model.embed_tokens(images.to(dtype))
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    if not batch_first:
        x = x.transpose(0, 1)
    tokens = last_block_value_tokens(blocks[-1], x[:, 1:], variant)
    tokens = visual.ln_post(tokens)
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    tokens = tokens.float()
    if normalize:
        tokens = F.normalize(tokens, dim=-1)
    b = images.shape[0]
    return tokens.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2)


class MaskCLIP(nn.Module):
    """Zero-shot dense logits ``scale x cos(patch embedding, class embedding)`` at pixel
    resolution.

    Args:
        model: an :class:`msclip.MSCLIP`.
        classifier: ``[K, D]`` class embeddings (rows L2-normalised here).
        scale: logit scale (100, the published zero-shot protocol).
        variant: ``maskclip`` or ``value`` (module docstring).
        pad_mode: padding of sizes that are not a multiple of the patch size.
        upsample: ``bilinear`` upsampling of the patch logits to pixels, or ``nearest``.
    """

    def __init__(
        self,
        model: nn.Module,
        classifier: torch.Tensor,
        scale: float = 100.0,
        variant: str = "maskclip",
        pad_mode: str = "reflect",
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        _refuse_int8(model)
        if variant not in MASKCLIP_VARIANTS:
            raise DecoderError(
                f"MaskCLIP variant must be one of {', '.join(MASKCLIP_VARIANTS)}, got {variant!r}"
            )
        if upsample not in ("bilinear", "nearest"):
            raise DecoderError(f"upsample must be bilinear or nearest, got {upsample!r}")
        cls = torch.as_tensor(classifier, dtype=torch.float32)
        embed_dim = getattr(model, "embed_dim", None)
        if cls.ndim != 2 or (embed_dim is not None and cls.shape[1] != embed_dim):
            raise DecoderError(
                f"classifier must be [K, {embed_dim}] (one text embedding per class), got "
                f"{tuple(cls.shape)}"
            )
        self.model = model
        self.register_buffer("classifier", F.normalize(cls, dim=-1), persistent=False)
        self.scale = float(scale)
        self.variant = variant
        self.pad_mode = pad_mode
        self.upsample = upsample
        self.patch_size = int(model.patch_size)

    @property
    def num_classes(self) -> int:
        return int(self.classifier.shape[0])

    @property
    def image_size(self) -> int:
        """The encoder's trained input size."""
        return int(self.model.image_size)

    def patch_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits on the patch grid ``[B, K, ceil(H/p), ceil(W/p)]``."""
        x, _ = pad_to_multiple(images, self.patch_size, self.pad_mode)
        feats = dense_clip_features(self.model, x, self.variant)
        cls = self.classifier.to(feats.device)
        return self.scale * torch.einsum("bdhw,kd->bkhw", feats, cls)

    def forward(self, images: torch.Tensor, bands: Sequence[str] | None = None) -> torch.Tensor:
        """``[B, K, H, W]`` logits for normalised images ``[B, C, H, W]`` (channels are the
        model's bands unless ``bands`` names them)."""
        if bands is not None:
            images = self.model.to_model_bands(images, bands)
        h, w = images.shape[-2:]
        logits = self.patch_logits(images)
        gh, gw = logits.shape[-2:]
        size = (gh * self.patch_size, gw * self.patch_size)
        if self.upsample == "bilinear":
            up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        else:
            up = F.interpolate(logits, size=size, mode="nearest")
        return up[..., :h, :w]
