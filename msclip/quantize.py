"""int8 image towers for CPUs: dynamically quantised linear layers (``precision="int8"``).

Dynamic quantisation (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018; PyTorch's ``quantize_dynamic``): each linear layer's
weight is stored in int8 with one scale per output channel, and each activation matrix is
quantised to 8 bits on the fly with a scale from its own range; the product runs in integer
arithmetic (fbgemm/oneDNN kernels, VNNI where the CPU has it) and is rescaled to float32.

Each image's activations are quantised with their own range (:class:`PerImageLinear`): PyTorch's
dynamic layer takes one range for the whole input, so an image's embedding depended on the other
images of its batch (up to 0.08 in one coordinate of a unit embedding, and zero-shot
probabilities moved by up to 0.2 between ``--batch-size 1`` and 16 on msclip-demo). Quantised
image by image, an embedding is the same whatever the batch (to float rounding, ~1e-6), for
8-13 % of the int8 tower's speed (ViT-B/16 at batch 4 to 32, alternated in one process, Zen 3).
Mapping each image's range onto one fixed range instead (with a row that pins the range) kept
one call per layer but was slower still and less accurate.

Every linear layer of the image tower's blocks is quantised: the MLP (``c_fc``, ``c_proj``) and
the attention projections. ``nn.MultiheadAttention`` keeps its projections as raw parameters, so
each block's attention is replaced by :class:`Int8Attention` (int8 QKV projection, float32
scaled-dot-product attention, int8 output projection), which is called the same way. The patch
projection, norms, class token and final projection stay float32; so does the text tower (its
embeddings are cached, and prompts are few).

Agreement with fp32 (``benchmarks/int8.py`` measures it, the tests bound it on a small model):
cosine similarity of the embeddings and agreement of zero-shot top-1 labels.

The quantised tower is for inference: it cannot be trained or saved as a checkpoint (save the fp32
model instead).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import PrecisionError

__all__ = ["Int8Attention", "PerImageLinear", "quantize_image_tower"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torch.ao.quantization announces its move to torchao; the eager dynamic API still works
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _dynamic_linear(linear: nn.Linear) -> nn.Module:
    """An int8 dynamic copy of ``linear`` (per-channel weight scales)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with _quiet():
        linear.qconfig = per_channel_dynamic_qconfig
        return DynamicLinear.from_float(linear)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A float32 ``nn.Linear`` holding ``weight`` and ``bias`` themselves (float32 ones are not
    copied), built on the meta device: no random initialisation drawn only to be overwritten."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
    return linear


class PerImageLinear(nn.Module):
    """A dynamic int8 linear layer whose activations are quantised image by image.

    For a batch-first ``[B, N, D]`` input each image's ``[N, D]`` tokens go through the layer on
    their own, so their quantisation range is theirs alone; a 2-D input is one image.

    Args:
        linear: the float layer.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.inner = _dynamic_linear(linear)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[0] == 1:
            return self.inner(x)
        return torch.stack([self.inner(image) for image in x.unbind(0)])


class Int8Attention(nn.Module):
    """Multi-head self-attention with int8 dynamic input and output projections (quantised
    image by image, :class:`PerImageLinear`).

    A drop-in for the ``nn.MultiheadAttention`` of a batch-first block in inference:
    ``attn(x, x, x, need_weights=False, attn_mask=mask)`` returns ``(out, None)``.

    Args:
        mha: the trained attention module (batch first, shared q/k/v dimension).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_weight is not None):
            raise PrecisionError(
                "int8 attention needs a batch-first nn.MultiheadAttention with one in_proj",
                param="precision",
            )
        self.embed_dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = True
        self.qkv = PerImageLinear(_linear(mha.in_proj_weight, mha.in_proj_bias))
        self.out_proj = PerImageLinear(_linear(mha.out_proj.weight, mha.out_proj.bias))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise PrecisionError("int8 attention computes self-attention only", param="precision")
        b, n, d = query.shape
        h = self.num_heads
        q, k, v = self.qkv(query).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, d)), None


def quantize_image_tower(model: nn.Module) -> nn.Module:
    """Quantise the linear layers of an :class:`msclip.MSCLIP`'s image tower to int8, in place.

    Args:
        model: an fp32 model on the CPU, in eval mode.

    Returns:
        The same model; ``model.precision`` is then ``int8``.

    Raises:
        PrecisionError: the model is not float32 on the CPU, or this torch build has no
            quantised kernels.
    """
    visual = model.clip.visual
    param = next(visual.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise PrecisionError(
            f"int8 quantisation starts from float32 weights on the CPU, got {param.dtype} on "
            f"{param.device}; create the model with precision='int8' (on the CPU)",
            param="precision",
        )
    if "x86" in torch.backends.quantized.supported_engines:
        engine = "x86"
    elif "fbgemm" in torch.backends.quantized.supported_engines:
        engine = "fbgemm"
    else:
        engine = torch.backends.quantized.engine
    if engine in ("none", None):
        raise PrecisionError(
            "this torch build has no quantised CPU kernels; use precision 'auto' or 'fp32'",
            param="precision",
        )
    torch.backends.quantized.engine = engine
    _ = model.checkpoint_sha256  # the identity of the float weights, fixed before quantising
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise PrecisionError(
            "int8 quantisation supports vision-transformer image towers", param="precision"
        )
    # The float weights quantised were read from the checkpoint's memory map, whose pages would
    # stay resident beside their int8 copies and never be read again (0.33 GB for
    # Llama3-MS-CLIP-Base: more than the fp32 model's whole image tower). They are dropped block by
    # block where they are an unchanged map of the file (weights in anonymous memory are left
    # alone), so no more than one block's float pages are resident at a time.
    from msclip.memory import _private_file_ranges, release_mapped

    regions = _private_file_ranges() or []  # the file maps, which quantising does not change
    for block in blocks:
        replaced = [*block.attn.parameters(), *block.mlp.c_fc.parameters(),
                    *block.mlp.c_proj.parameters()]  # fmt: skip
        block.attn = Int8Attention(block.attn)
        block.mlp.c_fc = PerImageLinear(block.mlp.c_fc)
        block.mlp.c_proj = PerImageLinear(block.mlp.c_proj)
        block.mlp.c_fc.int8_original_dtype = torch.float32  # read by get_weight_dtype()
        release_mapped(replaced, regions)
    visual.msclip_int8 = True
    visual.requires_grad_(False)
    logger.info("image tower quantised to int8 (%s engine, %d blocks)", engine, len(blocks))
    return model
