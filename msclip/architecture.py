"""msclip's own build of the CLIP vision transformer, state-dict compatible with OpenCLIP.

The architecture is CLIP's (Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021): a ViT image tower (Dosovitskiy et al., ICLR 2021) with a class
token, learned positional embeddings, pre-norm residual blocks of multi-head attention and a GELU
MLP, a final norm and a linear projection; a causal text transformer pooled at the end-of-text
token. Parameter names, module layout, initialisation order and arithmetic are those of OpenCLIP's
``CLIP`` (``visual.transformer.resblocks.3.mlp.c_fc.weight`` ...), so OpenCLIP and Llama3-MS-CLIP
state dicts load unchanged, seeded random weights are the same as OpenCLIP's, and the outputs
are bit-identical to OpenCLIP's on the same machine (checked by the tests).

Why a second build: importing ``open_clip`` imports ``transformers``, ``timm`` and
``torchvision`` (which imports ``torch._dynamo``): about as much start-up time and resident memory
as ``torch`` itself, which a 64-image command-line run cannot afford. This module needs only
torch. It covers the configurations msclip's registered models use (:func:`supports`: plain ViT
image towers and CLIP text towers, with or without QuickGELU); any other OpenCLIP configuration
(timm or Hugging Face towers, attentional pooling, layer scale, patch dropout ...) is built by
OpenCLIP itself (:func:`msclip.model.build_open_clip`). ``MSCLIP_CLIP_IMPL=open_clip`` forces
OpenCLIP for every model.

The methods other msclip code relies on are provided with OpenCLIP's signatures and results:
``encode_image``, ``encode_text``, ``forward``, ``set_grad_checkpointing``,
``visual.forward_intermediates`` and ``transformer.forward_intermediates``.

One optional fused path (the plain PyTorch path is always there, and is what runs in fp32 unless
asked otherwise (below), with gradients, with hooks or adapters on a layer, or with an attention
mask): in bf16 inference on
a CPU, each block's MLP runs as two oneDNN matrix products with their bias and GELU applied in
the product's epilogue (``torch.ops.mkldnn._linear_pointwise``, the kernel PyTorch's own
compiler uses), which saves the separate bias copy and GELU pass over the 4x-wide hidden layer,
and the unmasked self-attention of the image tower runs as the same kind of QKV and output
products around PyTorch's fused scaled-dot-product attention, instead of the bias, rescale and
head split passes and the separate softmax of ``nn.MultiheadAttention``'s inference path.
Measured on the ViT-B/16 image tower in bf16: the MLP 15-20 % and the attention ~20 % faster,
results within bf16 rounding of the plain path (cosine > 0.9999). In the blocks that run without
a mask (the image tower), those products read their weights in oneDNN's blocked layout, made
once per weight (:func:`_packed_weight`) instead of rearranged by every call: the same results
bit for bit, the tower 4-10 % faster (Zen 4, ViT-B/16, 64 images in bf16: 7.37-7.72 s against
7.60-8.06 s, best of six alternated runs), and no more memory where the weights are a memory map
of a file, whose pages are dropped once the copy exists (the converted-weights cache in bf16). It
is used only where a self-test against the plain path passes; ``MSCLIP_FUSED_CPU=0`` turns it
off.
In float32 the fused path is taken by the image towers that ask for it
(:func:`use_fused_fp32`: what ``--precision auto`` does on a CPU without native bf16, where it
picks float32) and by every block with ``MSCLIP_FUSED_CPU=all``: 13-22 % more images/s for
the ViT-B/16 tower at batch 4-32 on a Zen 3 CPU (AVX2), results no longer bit-identical to
OpenCLIP's (they agree to ~1e-6). An explicit ``--precision fp32`` keeps OpenCLIP's arithmetic,
the path that reproduces the published model exactly.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "CLIP",
    "FP32_GEMM_ENV",
    "FUSED_ENV",
    "IMPL_ENV",
    "LayerNorm",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "drop_packed",
    "fused_cpu_inference",
    "fused_dtypes",
    "supports",
    "text_global_pool",
    "use_fused_fp32",
    "use_native",
]

logger = logging.getLogger(__name__)

#: Environment variable choosing the implementation: ``msclip`` (default where supported) or
#: ``open_clip``.
IMPL_ENV = "MSCLIP_CLIP_IMPL"
#: Environment variable of the fused CPU path: ``0`` off, ``1`` (default) bf16, ``all`` bf16
#: and float32.
FUSED_ENV = "MSCLIP_FUSED_CPU"
#: Environment variable of the fused path's float32 matrix products: ``auto`` (default: the
#: faster of the two, measured once per process on its first product), ``onednn`` (oneDNN's kernel
#: over packed weights) or ``torch`` (``torch.nn.functional.linear``).
FP32_GEMM_ENV = "MSCLIP_FP32_GEMM"

_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale"}
_VISION_KEYS = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
# Options that may be present with their default (inactive) value.
_VISION_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False,
    "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
    "output_tokens": False, "act_kwargs": None, "norm_kwargs": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_model_name": None,
}  # fmt: skip
_TEXT_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "pool_type": "argmax",
    "proj_bias": False, "proj_type": "linear", "output_tokens": False, "act_kwargs": None,
    "norm_kwargs": None, "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
    "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
    "hf_model_name": None, "hf_tokenizer_name": None, "tokenizer_kwargs": None,
    "tokenizer_mode": None, "final_ln_after_pool": False, "pad_id": 0, "eos_id": 2,
}  # fmt: skip
_TOP_DEFAULTS: dict[str, Any] = {
    "custom_text": False, "init_logit_bias": None, "nonscalar_logit_scale": False,
    "cast_dtype": None, "output_dict": False, "multimodal_cfg": None,
}  # fmt: skip


def _unsupported(cfg: Mapping[str, Any], keys: set[str], defaults: Mapping[str, Any]) -> list[str]:
    return [k for k, v in cfg.items() if k not in keys and (k not in defaults or v != defaults[k])]


def supports(arch_cfg: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether this module builds ``arch_cfg`` (an OpenCLIP model config), and if not, why."""
    bad = _unsupported(arch_cfg, _TOP_KEYS, _TOP_DEFAULTS)
    vision = arch_cfg.get("vision_cfg") or {}
    text = arch_cfg.get("text_cfg") or {}
    bad += [f"vision_cfg.{k}" for k in _unsupported(vision, _VISION_KEYS, _VISION_DEFAULTS)]
    bad += [f"text_cfg.{k}" for k in _unsupported(text, _TEXT_KEYS, _TEXT_DEFAULTS)]
    if isinstance(vision.get("layers", 12), (list, tuple)):
        bad.append("vision_cfg.layers (ResNet tower)")
    for key in ("image_size", "patch_size"):
        size = vision.get(key)
        if isinstance(size, (list, tuple)) and len(set(size)) != 1:
            bad.append(f"vision_cfg.{key} (not square)")
    if bad:
        return False, "options " + ", ".join(bad)
    return True, ""


def use_native(arch_cfg: Mapping[str, Any]) -> bool:
    """Build ``arch_cfg`` with this module (supported and not overridden by :data:`IMPL_ENV`)."""
    from msclip.hardware import env_setting

    choice = env_setting(IMPL_ENV, "msclip", ("msclip", "open_clip", "openclip"))
    if choice in ("open_clip", "openclip"):
        return False
    return supports(arch_cfg)[0]


def _is_meta(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "meta"


def _scaled_randn(scale: float, *shape: int, device: torch.device | str | None) -> nn.Parameter:
    # Many operations on meta tensors (randn, arithmetic, normal_, triu_) run Python references
    # that import torch._dynamo and sympy (seconds): a meta build only allocates empty tensors.
    if _is_meta(device):
        return nn.Parameter(torch.empty(shape, device=device))
    return nn.Parameter(scale * torch.randn(shape, device=device))


def _square(value: int | Sequence[int]) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


class LayerNorm(nn.LayerNorm):
    """Layer norm whose output keeps the input's dtype (as OpenCLIP's ``LayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation of the original CLIP weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _probe_linear(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input, weight and bias of a small linear layer for the fused kernels' self-tests."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 64, generator=g).to(dtype)
    w = (torch.randn(96, 64, generator=g) / 8).to(dtype)
    return x, w, torch.randn(96, generator=g).to(dtype)


def _fused_calls(dtype: torch.dtype) -> tuple[tuple[str, str], ...]:
    """The ``(epilogue, algorithm)`` arguments of oneDNN's linear kernel in the fused path's calls
    in ``dtype``: in bf16 with GELU's exact epilogue and without, in float32 without only (GELU
    runs on its own there, see :func:`_fused_mlp`)."""
    plain = ("none", "")
    return (plain,) if dtype == torch.float32 else (("gelu", "none"), plain)


@functools.cache
def _fused_mlp_works(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether oneDNN's linear kernel exists for ``dtype`` and agrees with the plain path in the
    products the fused path runs in that dtype: with the GELU epilogue and without in bf16, without
    in float32 (whose GELU runs on its own, see :func:`_fused_mlp`)."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    x, w, b = _probe_linear(dtype)
    # float32: the same arithmetic up to the order of the sums; bf16: its 8-bit mantissa
    tol = 1e-4 if dtype == torch.float32 else 0.02
    name = str(dtype).removeprefix("torch.")
    try:
        with torch.inference_mode():
            plain = F.linear(x, w, b)
            for epilogue, algorithm in _fused_calls(dtype):
                got = op(x, w, b, epilogue, [], algorithm).float()
                ref = (F.gelu(plain) if epilogue == "gelu" else plain).float()
                if got.shape != ref.shape or not bool(
                    ((got - ref).abs() <= tol * ref.abs() + tol).all()
                ):
                    logger.warning(
                        "oneDNN's %s linear kernel (epilogue %s) disagrees with the plain path; "
                        "the fused CPU path is off in %s", name, epilogue, name,
                    )  # fmt: skip
                    return False
    except (RuntimeError, NotImplementedError) as exc:
        logger.info("oneDNN's %s linear kernel unavailable (%s): no fused CPU path", name, exc)
        return False
    return True


def fused_dtypes(fp32: bool = False) -> tuple[torch.dtype, ...]:
    """The dtypes the fused CPU path runs in: bf16, and float32 where ``fp32`` (a module that
    asked for it, :func:`use_fused_fp32`) or ``MSCLIP_FUSED_CPU=all``; none with ``=0``."""
    from msclip.hardware import SWITCH_OFF, SWITCH_VALUES, env_setting

    setting = env_setting(FUSED_ENV, "1", (*SWITCH_VALUES, "all"))
    if setting in SWITCH_OFF:
        return ()
    return (torch.bfloat16, torch.float32) if fp32 or setting == "all" else (torch.bfloat16,)


def use_fused_fp32(module: nn.Module, on: bool = True) -> bool:
    """Let the blocks and patch projection inside ``module`` take the fused CPU path in float32
    inference (``on=False``: OpenCLIP's arithmetic again); returns whether any transformer block
    took the setting (none in a tower built by OpenCLIP, whose blocks have no fused path: there
    only msclip's patch projection takes it). The oneDNN kernels must pass their float32
    self-test for the setting to have an effect."""
    blocks = False
    for m in module.modules():
        if hasattr(m, "fused_fp32"):
            m.fused_fp32 = on
            blocks = blocks or isinstance(m, ResidualAttentionBlock)
    return blocks


def fused_cpu_inference(x: torch.Tensor, *weights: torch.Tensor | None, fp32: bool = False) -> bool:
    """Inference on a CPU in a fused dtype (bf16; float32 too for a module set to
    :func:`use_fused_fp32` or with ``MSCLIP_FUSED_CPU=all``) with weights of that dtype,
    outside autocast and autograd."""
    if x.dtype not in fused_dtypes(fp32) or x.device.type != "cpu" or torch.is_grad_enabled():
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return all(w is not None and w.dtype == x.dtype for w in weights)


def _use_fused_mlp(block: nn.Module, x: torch.Tensor) -> bool:
    mlp = block.mlp
    fc, act, proj = (
        getattr(mlp, "c_fc", None),
        getattr(mlp, "gelu", None),
        getattr(mlp, "c_proj", None),
    )
    modules = (mlp, fc, act, proj)
    if not (type(fc) is nn.Linear and type(proj) is nn.Linear and type(act) is nn.GELU):
        return False  # quantised, adapted (LoRA) or QuickGELU layers: the plain path
    if not fused_cpu_inference(
        x, fc.weight, fc.bias, proj.weight, proj.bias, fp32=block.fused_fp32
    ):
        return False
    if act.approximate != "none" or any(
        m._forward_hooks or m._forward_pre_hooks or getattr(m, "parametrizations", None)
        for m in modules
    ):
        return False
    from torch.nn.modules import module as _module

    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return _fused_mlp_works(x.dtype)


def _use_fused_attention(
    attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, fp32: bool = False
) -> bool:
    if type(attn) is not nn.MultiheadAttention or x.ndim != 3:
        return False
    if mask is not None and not (  # an additive mask over the tokens (the text tower's causal one)
        mask.is_floating_point() and tuple(mask.shape) == (x.shape[1], x.shape[1])
    ):
        return False
    if not (attn.batch_first and attn._qkv_same_embed_dim and attn.in_proj_bias is not None):
        return False
    if attn.training and attn.dropout > 0:
        return False
    weights = (attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias)
    if not fused_cpu_inference(x, *weights, fp32=fp32):
        return False
    if attn._forward_hooks or attn._forward_pre_hooks or getattr(attn, "parametrizations", None):
        return False  # adapters (LoRA) or taps: the plain path
    return _fused_mlp_works(x.dtype)


def _frozen_under_autograd(attn: nn.Module) -> bool:
    """A block that does not train in a step that records gradients (``last-n`` fine-tuning:
    the blocks before the trained ones); only ``nn.MultiheadAttention`` has the packed input
    projection this is about (an int8 tower's attention has no trainable weights at all)."""
    return (
        isinstance(attn, nn.MultiheadAttention)
        and torch.is_grad_enabled()
        and not any(p.requires_grad for p in attn.parameters())
    )


def _frozen_self_attention(
    attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Self-attention of a frozen block with the projection's input made contiguous.

    ``nn.MultiheadAttention`` (batch first) hands a transposed ``[L, N, E]`` view to its packed
    input projection; PyTorch's ``matmul`` folds such a view into one matrix product only when
    the weight requires gradients, and otherwise expands the weight to every row of the batch
    dimension and runs a batched product (a copy of the weight per token row): measured ~600 ms
    per ViT-B/16 block at batch 8, against ~35 ms folded. The same function on a contiguous
    layout takes the folded path; the arithmetic is otherwise that of the module's forward.
    """
    seq = x.transpose(0, 1).contiguous()
    out, _ = F.multi_head_attention_forward(
        seq, seq, seq, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias,
        None, None, False, attn.dropout, attn.out_proj.weight, attn.out_proj.bias,
        training=attn.training, need_weights=False, attn_mask=mask,
    )  # fmt: skip
    return out.transpose(0, 1)


# oneDNN's blocked copies of linear weights for the fused path, by id of the weight: (dtype,
# address, version, copy). An entry goes with its weight (weakref.finalize) or with
# :func:`drop_packed`; the address and version tell a weight replaced (``module.to``) or changed
# in place (``load_state_dict``, an optimiser step) from the one that was packed.
_PACKED: dict[int, tuple[torch.dtype, int, int, torch.Tensor]] = {}
# Weights packed since their pages were last offered back (see _release_packed_sources).
_PACKED_SOURCES: list[torch.Tensor] = []


@functools.cache
def _packing_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN's weight packing exists and gives the plain kernel's results exactly, in
    the calls the fused path makes in ``dtype`` (see :func:`_fused_mlp_works`)."""
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if reorder is None:
        return False
    x, w, b = _probe_linear(dtype)
    op = torch.ops.mkldnn._linear_pointwise
    try:
        with torch.inference_mode():
            packed = reorder(w)
            ok = all(
                torch.equal(op(x, packed, b, attr, [], alg), op(x, w, b, attr, [], alg))
                for attr, alg in _fused_calls(dtype)
            )
    except (RuntimeError, NotImplementedError) as exc:
        logger.info("oneDNN weight packing unavailable: %s", exc)
        return False
    if not ok:
        logger.warning("oneDNN's packed weights disagree with the plain kernel; not packing")
    return ok


def _packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout for ``_linear_pointwise`` (made on first use and
    kept while the weight is unchanged), or ``weight`` itself where packing is unavailable or
    the weight is an inference tensor (made under ``torch.inference_mode()``, e.g. by
    ``model.to(...)`` there: it has no version counter to tell a change by)."""
    if weight.is_inference() or not _packing_works(weight.dtype):
        return weight
    key, version = id(weight), weight._version
    hit = _PACKED.get(key)
    if hit is not None and hit[:3] == (weight.dtype, weight.data_ptr(), version):
        return hit[3]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight)
    if hit is None:
        weakref.finalize(weight, _PACKED.pop, key, None)
    _PACKED[key] = (weight.dtype, weight.data_ptr(), version, packed)
    _PACKED_SOURCES.append(weight)
    return packed


def _release_packed_sources(regions: list[Any] | None) -> list[Any] | None:
    """Drop the pages of the weights packed since the last call where they are an unchanged
    memory map of a file (:func:`msclip.memory.release_mapped`): the packed copies are what the
    fused path reads, so resident memory stays that of one copy of the weights. Called after
    each block, so the two copies coexist for one block's weights only; ``regions`` is the
    forward pass's one reading of the process's private file maps (read here on first need,
    returned)."""
    if not _PACKED_SOURCES:
        return regions
    from msclip.memory import _private_file_ranges, release_mapped

    sources = list(_PACKED_SOURCES)
    _PACKED_SOURCES.clear()
    if regions is None:
        regions = _private_file_ranges() or []
    release_mapped(sources, regions)
    return regions


def drop_packed(weights: Iterable[torch.Tensor]) -> None:
    """Forget the packed copies of ``weights`` (their memory is freed; the next fused call packs
    them again)."""
    for w in weights:
        _PACKED.pop(id(w), None)


# bf16 attention of up to this many tokens, with scores of at most this many bytes, is two
# matrix products and a softmax (:func:`_attention_core`); longer or larger, PyTorch's fused
# kernel. Measured on a 2-core Zen 4 (AVX512_BF16), 12 heads of 64: the two products take 0.6 of
# the fused kernel's time from 50 to 577 tokens (197 tokens, 4 images: 2.9 against 5.0 ms per
# block, 8 % of a ViT-B/16 image tower), and 1.1-1.2 times it at 1,025 and 2,305 tokens.
_EXPLICIT_ATTENTION_TOKENS = 640
_EXPLICIT_ATTENTION_BYTES = 64 << 20


def _attention_core(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` over ``[batch, heads, tokens, d]`` views (``q`` may
    hold fewer tokens than ``k`` and ``v``: the class token's row of the last block; ``mask``: an
    additive ``[tokens, tokens]`` mask in ``q``'s dtype, such as the text tower's causal one).

    In bf16 on a CPU, for the sizes above, as its two products and a softmax: PyTorch's fused
    CPU kernel (flash attention) is slower there. Its scores are rounded to bf16 before the
    softmax, where the fused kernel keeps them in float32; the ViT-B/16 image tower's embeddings
    stay as close to float32's (cosine 0.99995 on random weights, 0.99976 against 0.99979 with
    attention made four times sharper). Otherwise, and in float32, the fused kernel.
    """
    b, h, n_q, dh = q.shape
    n = k.shape[2]
    if (
        q.dtype == torch.bfloat16
        and n <= _EXPLICIT_ATTENTION_TOKENS
        and b * h * n_q * n * q.element_size() <= _EXPLICIT_ATTENTION_BYTES
    ):
        # the scale applied by the product (baddbmm's alpha): no separate pass over the queries
        # or the scores, 15 % less time for the attention of 4 images of 197 tokens (1.41-1.47
        # against 1.66-1.73 ms a block, Zen 5), the same scores where the scale is a power of two
        # (d = 64)
        scores = torch.baddbmm(
            q.new_zeros(()) if mask is None else mask,
            q.reshape(b * h, n_q, dh),
            k.reshape(b * h, n, dh).transpose(1, 2),
            beta=0 if mask is None else 1,
            alpha=dh**-0.5,
        )
        return torch.bmm(torch.softmax(scores, -1), v.reshape(b * h, n, dh)).view(b, h, n_q, dh)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _fused_qkv(
    attn: nn.MultiheadAttention, x: torch.Tensor, pack: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries, keys and values of ``x`` ``[B, N, D]`` as ``[B, heads, N, D / heads]`` views of
    one fused-path product (:func:`_fused_linear`, bias included)."""
    b, n, d = x.shape
    qkv = _fused_linear(x.reshape(b * n, d), attn.in_proj_weight, attn.in_proj_bias, pack=pack)
    q, k, v = qkv.view(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def _fused_attention(
    attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Self-attention with the QKV and output projections as fused-path products
    (:func:`_fused_qkv`, :func:`_fused_linear`) and :func:`_attention_core` between them. With a
    ``mask`` (the text tower, run for the prompts only) the weights are not packed: a packed
    copy would outlive the prompts."""
    b, n, d = x.shape
    pack = mask is None
    q, k, v = _fused_qkv(attn, x, pack)
    out = _attention_core(q, k, v, None if mask is None else mask.to(x.dtype))
    out = out.transpose(1, 2).reshape(b * n, d)
    return _fused_linear(out, attn.out_proj.weight, attn.out_proj.bias, pack=pack).view(b, n, d)


# The fused path's float32 product kernel measured in this process ("onednn" or "torch").
_FP32_GEMM: str | None = None
# oneDNN's kernel is taken only when it is faster than torch's by this factor: at a tie, torch's
# needs no packed copy of the weights.
_FP32_GEMM_MARGIN = 0.97


def _fp32_gemm_file(k: int, n: int) -> Path:
    """Where the measured choice of :func:`_fp32_gemm` is kept: per CPU kind, torch build,
    thread count and product (``k`` inputs, ``n`` outputs: a tiny model's first product is no
    guide for a ViT-B's), in msclip's cache."""
    from msclip.cache import machine_file

    return machine_file("fp32-gemm", f"{k}x{n}")


def _kept_fp32_gemm(k: int, n: int) -> str | None:
    """The choice kept in msclip's cache; None where there is none, or (with one note naming
    the file) where the file cannot be read or names no kernel."""
    from msclip.cache import note_damaged

    path = _fp32_gemm_file(k, n)
    try:
        kernel = json.loads(path.read_text(encoding="utf-8")).get("kernel")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as err:
        note_damaged("float32 product choice", path, err)
        return None
    if kernel in ("onednn", "torch"):
        return kernel
    note_damaged("float32 product choice", path, f"kernel {kernel!r}, not 'onednn' or 'torch'")
    return None


def _keep_fp32_gemm(k: int, n: int, facts: dict[str, Any]) -> None:
    """Write the measured choice (atomically; a cache that cannot be written is no error: the
    next process measures again, with one warning per process)."""
    from msclip.cache import note_unwritable
    from msclip.io import write_json

    path = _fp32_gemm_file(k, n)
    try:
        write_json(path, facts)
    except OSError as err:
        note_unwritable(
            "the float32 product choice",
            path.parent,
            err,
            "every process measures it again, and may take the other kernel, whose embeddings "
            "differ in the last bits",
        )


def _fp32_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pack: bool) -> str:
    """The kernel of the fused path's float32 products: ``MSCLIP_FP32_GEMM``, or by measurement.

    Which is faster depends on the CPU and on the moment on a shared one (on a 2-core Zen 3 VM
    oneDNN's packed kernel led torch's matmul by 13 % in one period and trailed it by 15 % in
    another): the first float32 product on the fused path (the first block's QKV projection) is
    run once with each kernel, then timed three times with each. The choice is kept in msclip's
    cache (``kernels/``, per CPU kind, torch build, thread count and product size) and every
    later process on that machine takes it: the two kernels round differently, and a run
    repeated must give the same embeddings bit for bit (delete the file, or set
    ``MSCLIP_FP32_GEMM``, to choose again).
    """
    from msclip.hardware import env_setting

    setting = env_setting(FP32_GEMM_ENV, "auto", ("auto", "onednn", "torch"))
    if setting != "auto":
        return setting
    global _FP32_GEMM
    if _FP32_GEMM is None:
        k, n = x.shape[1], weight.shape[0]
        _FP32_GEMM = _kept_fp32_gemm(k, n) or _measure_fp32_gemm(x, weight, bias, pack)
    return _FP32_GEMM


def _measure_fp32_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pack: bool
) -> str:
    """Time both kernels on this product (:func:`_fp32_gemm`); the faster's name, kept."""
    from msclip.hardware import cpu_info

    op = torch.ops.mkldnn._linear_pointwise
    w = _packed_weight(weight) if pack else weight
    kernels = {
        "torch": lambda: F.linear(x, weight, bias),
        "onednn": lambda: op(x, w, bias, "none", [], ""),
    }
    best = dict.fromkeys(kernels, math.inf)
    for rep in range(4):  # the first round untimed: first touches of weights and outputs
        for name, run in kernels.items():
            t0 = time.perf_counter()
            run()
            if rep:
                best[name] = min(best[name], time.perf_counter() - t0)
    chosen = "onednn" if best["onednn"] < _FP32_GEMM_MARGIN * best["torch"] else "torch"
    logger.info(
        "float32 products of the fused path: %s (%d x %d x %d: oneDNN %.1f ms, torch %.1f ms)",
        chosen, x.shape[0], x.shape[1], weight.shape[0], 1e3 * best["onednn"], 1e3 * best["torch"],
    )  # fmt: skip
    if chosen == "torch" and w is not weight:
        drop_packed([weight])
    facts = {
        "kernel": chosen,
        "onednn_ms": 1e3 * best["onednn"],
        "torch_ms": 1e3 * best["torch"],
        "shape": [x.shape[0], x.shape[1], weight.shape[0]],
        "cpu": cpu_info().to_dict(),
    }
    _keep_fp32_gemm(x.shape[1], weight.shape[0], facts)
    return chosen


def _fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pack: bool):
    """A product of the fused path (bias included): oneDNN's kernel over the packed weight
    (``pack``) or the plain one, or in float32 torch's where :func:`_fp32_gemm` chose it."""
    if x.dtype == torch.float32 and _fp32_gemm(x, weight, bias, pack) == "torch":
        return F.linear(x, weight, bias)
    w = _packed_weight(weight) if pack else weight
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def _fused_mlp(mlp: nn.Module, x: torch.Tensor, pack: bool = False) -> torch.Tensor:
    shape = x.shape
    if x.dtype == torch.float32:
        # GELU after the product: oneDNN's float32 GELU epilogue took 10 ms more per 788 x 3072
        # product than the product itself on an AVX2 CPU (34 against 24 ms; F.gelu: ~1 ms)
        h = F.gelu(_fused_linear(x.reshape(-1, shape[-1]), mlp.c_fc.weight, mlp.c_fc.bias, pack))
        h = _fused_linear(h, mlp.c_proj.weight, mlp.c_proj.bias, pack)
        return h.reshape(*shape[:-1], h.shape[-1])
    op = torch.ops.mkldnn._linear_pointwise
    w_fc, w_proj = mlp.c_fc.weight, mlp.c_proj.weight
    if pack:
        w_fc, w_proj = _packed_weight(w_fc), _packed_weight(w_proj)
    h = op(x.reshape(-1, shape[-1]), w_fc, mlp.c_fc.bias, "gelu", [], "none")
    h = op(h, w_proj, mlp.c_proj.bias, "none", [], "")
    return h.reshape(*shape[:-1], h.shape[-1])


def _class_token_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``block`` at the first (class) token only, ``[B, 1, D]``: the keys and values
    of every token, the query, attention, output projection and MLP of the class token alone.

    The image embedding of a ViT with class-token pooling reads nothing else from the last block;
    the other tokens' attention outputs and MLPs (~3/4 of the block, ~6 % of a ViT-B/16 tower's
    products) would be computed to be thrown away. The same operations as the block's fused path
    on fewer rows, so the same values to the rounding of the products' other row blocking.
    """
    b, _, d = x.shape
    attn = block.attn
    q, k, v = _fused_qkv(attn, block.ln_1(x))
    out = _attention_core(q[:, :, :1], k, v).reshape(b, d)
    x0 = x[:, 0] + _fused_linear(out, attn.out_proj.weight, attn.out_proj.bias, pack=True)
    return (x0 + _fused_mlp(block.mlp, block.ln_2(x0), pack=True)).unsqueeze(1)


def _class_token_only(visual: nn.Module, x: torch.Tensor) -> bool:
    """Whether the image tower may run its last block for the class token alone
    (:func:`_class_token_block`): inference on the fused CPU path (its attention and MLP take it),
    class-token pooling, and nothing that observes the last block's full output (forward hooks
    on the transformer, the block, its layer norms or ``ln_post``; adapters take the plain path
    and so never this)."""
    if visual.pool_type != "tok" or visual.attn_pool is not None or visual.final_ln_after_pool:
        return False
    transformer = visual.transformer
    block = transformer.resblocks[-1]
    if type(block) is not ResidualAttentionBlock or not (
        type(block.ls_1) is nn.Identity and type(block.ls_2) is nn.Identity
    ):
        return False
    observed = (transformer, block, block.ln_1, block.ln_2, block.ls_1, block.ls_2, visual.ln_post)
    if any(m._forward_hooks or m._forward_pre_hooks for m in observed):
        return False
    # global forward hooks: refused by the fused MLP's own check
    return _use_fused_attention(block.attn, x, None, block.fused_fp32) and _use_fused_mlp(block, x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``.

    Attention is ``nn.MultiheadAttention`` (batch first), whose fused kernel PyTorch uses in
    inference; the MLP is ``c_fc``, GELU (or QuickGELU), ``c_proj``.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        act: type[nn.Module],
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, device=device)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True, device=device)
        self.ls_1 = nn.Identity()
        self.ln_2 = LayerNorm(width, device=device)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden, device=device)),
                    ("gelu", act()),
                    ("c_proj", nn.Linear(hidden, width, device=device)),
                ]
            )
        )
        self.ls_2 = nn.Identity()
        #: the fused CPU path in float32 inference too (:func:`use_fused_fp32`)
        self.fused_fp32 = False

    def get_weight_dtype(self) -> torch.dtype:
        fc = self.mlp.c_fc
        return getattr(fc, "int8_original_dtype", None) or fc.weight.dtype

    def attention(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (
            k_x is None
            and v_x is None
            and _use_fused_attention(self.attn, q_x, attn_mask, self.fused_fp32)
        ):
            return _fused_attention(self.attn, q_x, attn_mask)
        mask = None if attn_mask is None else attn_mask.to(q_x.dtype)
        if k_x is None and v_x is None and _frozen_under_autograd(self.attn):
            return _frozen_self_attention(self.attn, q_x, mask)
        k_x = q_x if k_x is None else k_x
        v_x = q_x if v_x is None else v_x
        return self.attn(q_x, k_x, v_x, need_weights=False, attn_mask=mask)[0]

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = q_x + self.ls_1(self.attention(self.ln_1(q_x), attn_mask=attn_mask))
        h = self.ln_2(x)
        if _use_fused_mlp(self, h):
            # packed weights in the blocks without a mask (the image tower): the text tower's
            # blocks run for the prompts only, and a copy of their weights would outlive them
            h = _fused_mlp(self.mlp, h, pack=attn_mask is None)
        else:
            h = self.mlp(h)
        return x + self.ls_2(h)


def _take_indices(n: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """Absolute block indices to return: ``None`` all, an int the last ``n``, a sequence as given
    (negative from the end); and the largest of them."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {n})")
        take = [n - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            j = n + i if i < 0 else i
            if not 0 <= j < n:
                raise ValueError(f"feature index {j} is out of range (0 to {n - 1})")
            take.append(j)
    return take, max(take)


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` (batch first)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        act: type[nn.Module],
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.batch_first = True
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act, device) for _ in range(layers)]
        )

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].get_weight_dtype()

    def _run(
        self, block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
        return block(x, attn_mask=attn_mask)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, class_token_only: bool = False
    ) -> torch.Tensor:
        """The blocks in turn; with ``class_token_only`` the last one for the first token alone
        (``[B, 1, D]``, :func:`_class_token_block`; the caller checks :func:`_class_token_only`).
        """
        regions = None
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            if class_token_only and i == last:
                x = _class_token_block(block, x)
            else:
                x = self._run(block, x, attn_mask)
            regions = _release_packed_sources(regions)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks and also return the outputs of the blocks ``indices`` selects."""
        take, last = _take_indices(len(self.resblocks), indices)
        blocks = self.resblocks[: last + 1] if stop_early else self.resblocks
        out, regions = [], None
        for i, block in enumerate(blocks):
            x = self._run(block, x, attn_mask)
            regions = _release_packed_sources(regions)
            if i in take:
                out.append(x)
        return x, out


class VisionTransformer(nn.Module):
    """ViT image tower: patch projection, class token, positional embedding, ``ln_pre``, blocks,
    ``ln_post`` on the class token, projection ``proj``."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        output_dim: int,
        act: type[nn.Module],
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.image_size = (image_size, image_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.output_dim = output_dim
        self.output_tokens = False
        self.final_ln_after_pool = False
        self.pool_type = "tok"
        # Construction order fixes the random initialisation: the same as OpenCLIP's.
        self.conv1 = nn.Conv2d(
            3, width, kernel_size=patch_size, stride=patch_size, bias=False, device=device
        )
        scale = width**-0.5
        self.class_embedding = _scaled_randn(scale, width, device=device)
        n_pos = self.grid_size[0] * self.grid_size[1] + 1
        self.positional_embedding = _scaled_randn(scale, n_pos, width, device=device)
        self.patch_dropout = nn.Identity()
        self.ln_pre = LayerNorm(width, device=device)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, device)
        self.attn_pool = None
        self.attn_pool_contrastive = None
        self.ln_post = LayerNorm(width, device=device)
        self.proj = _scaled_randn(scale, width, output_dim, device=device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding", "class_embedding"}

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the tower except its last ``unlocked_groups`` groups (embeddings, each block,
        last block with ``ln_post``, ``proj``), as OpenCLIP's ``lock``."""
        for p in self.parameters():
            p.requires_grad = False
        if unlocked_groups == 0:
            return
        blocks = list(self.transformer.resblocks)
        groups: list[list[Any]] = [
            [self.conv1, self.class_embedding, self.positional_embedding, self.ln_pre],
            *[[b] for b in blocks[:-1]],
            [blocks[-1], self.ln_post],
            [self.proj],
        ]
        for group in groups[-unlocked_groups:]:
            for item in group:
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                for p in params:
                    p.requires_grad = True

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid**2, width]
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.patch_dropout(x)
        return self.ln_pre(x)

    def _global_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, 0], x[:, 1:]

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._global_pool(self.ln_post(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embeds(x)
        x = self.transformer(x, class_token_only=_class_token_only(self, x))
        pooled, _ = self._pool(x)
        return pooled @ self.proj if self.proj is not None else pooled

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NCHW",
        output_extra_tokens: bool = False,
    ) -> dict[str, Any]:
        """Block outputs (patch tokens) and, unless ``intermediates_only``, the image features.

        Args:
            x: images ``[B, C, H, W]``.
            indices: the last ``n`` blocks (int), all (``None``) or the given indices.
            stop_early: skip the blocks after the last one asked for.
            normalize_intermediates: apply ``ln_post`` to the intermediates.
            intermediates_only: return the intermediates alone.
            output_fmt: ``NCHW`` (patch grid) or ``NLC`` (token sequence).
            output_extra_tokens: also return the class tokens (``image_intermediates_prefix``).

        Returns:
            ``{"image_intermediates": [...], "image_features": [B, D]}`` (as OpenCLIP).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        batch, _, height, width = x.shape
        x, inter = self.transformer.forward_intermediates(
            self._embeds(x), indices=indices, stop_early=stop_early
        )
        if normalize_intermediates:
            inter = [self.ln_post(t) for t in inter]
        prefix = [t[:, :1] for t in inter]
        inter = [t[:, 1:] for t in inter]
        if output_fmt == "NCHW":
            h, w = height // self.patch_size[0], width // self.patch_size[1]
            inter = [t.reshape(batch, h, w, -1).permute(0, 3, 1, 2).contiguous() for t in inter]
        out: dict[str, Any] = {"image_intermediates": inter}
        if output_extra_tokens:
            out["image_intermediates_prefix"] = prefix
        if intermediates_only:
            return out
        pooled, _ = self._pool(x)
        out["image_features"] = pooled @ self.proj if self.proj is not None else pooled
        return out


def text_global_pool(
    x: torch.Tensor,
    text: torch.Tensor | None = None,
    pool_type: str = "argmax",
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """The token the text embedding is read from: ``argmax`` (the end-of-text token has the
    largest id in CLIP's vocabulary), ``eos``, ``first``, ``last``, or every token (``none``)."""
    if pool_type == "first":
        return x[:, 0]
    if pool_type == "last":
        return x[:, -1]
    if pool_type in ("argmax", "eos"):
        if text is None:
            raise ValueError(f"pool_type {pool_type!r} needs the token ids")
        if pool_type == "argmax":
            idx = text.argmax(dim=-1)
        else:
            if eos_token_id is None:
                raise ValueError("pool_type 'eos' needs eos_token_id")
            idx = (text == eos_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), idx]
    return x


class CLIP(nn.Module):
    """CLIP with a ViT image tower and a causal text transformer (OpenCLIP's ``CLIP`` layout).

    Args:
        embed_dim: joint embedding size.
        vision_cfg: ``image_size``, ``layers``, ``width``, ``head_width``, ``mlp_ratio``,
            ``patch_size``.
        text_cfg: ``context_length``, ``vocab_size``, ``width``, ``heads``, ``layers``,
            ``mlp_ratio``.
        quick_gelu: QuickGELU instead of GELU (OpenAI's original weights).
        init_logit_scale: initial ``logit_scale`` (log of the inverse temperature).
        device: where to create the parameters; ``"meta"`` builds the model without memory or
            random initialisation, to be loaded with ``load_state_dict(assign=True)`` (the
            causal ``attn_mask`` is then rebuilt, see :meth:`build_causal_mask`).
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: Mapping[str, Any],
        text_cfg: Mapping[str, Any],
        quick_gelu: bool = False,
        init_logit_scale: float = math.log(1 / 0.07),
        device: torch.device | str | None = None,
        **_defaults: Any,
    ) -> None:
        super().__init__()
        ok, why = supports(
            {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg, **_defaults}
        )
        if not ok:
            raise ValueError(f"msclip's CLIP build does not support {why}; use OpenCLIP")
        self.output_dict = False
        act: type[nn.Module] = QuickGELU if quick_gelu else nn.GELU
        v = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16,
             "image_size": 224, **vision_cfg}  # fmt: skip
        self.visual = VisionTransformer(
            _square(v["image_size"]), _square(v["patch_size"]), int(v["width"]), int(v["layers"]),
            int(v["width"]) // int(v["head_width"]), float(v["mlp_ratio"]), embed_dim, act, device,
        )  # fmt: skip
        t = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12,
             "mlp_ratio": 4.0, **text_cfg}  # fmt: skip
        width, n_ctx = int(t["width"]), int(t["context_length"])
        # Built in OpenCLIP's order (its TextTransformer), then registered in its CLIP's order.
        meta = _is_meta(device)
        vocab = int(t["vocab_size"])
        token_embedding = (
            nn.Embedding(vocab, width, _weight=torch.empty(vocab, width, device=device))
            if meta
            else nn.Embedding(vocab, width, device=device)
        )
        positional_embedding = nn.Parameter(torch.empty(n_ctx, width, device=device))
        transformer = Transformer(
            width, int(t["layers"]), int(t["heads"]), float(t["mlp_ratio"]), act, device
        )
        ln_final = LayerNorm(width, device=device)
        text_projection = nn.Parameter(torch.empty(width, embed_dim, device=device))
        self.transformer = transformer
        self.context_length = n_ctx
        self.vocab_size = int(t["vocab_size"])
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.text_pool_type = "argmax"
        self.text_eos_id = int(t.get("eos_id", 2))
        mask = torch.empty(n_ctx, n_ctx, device=device) if meta else self.build_causal_mask()
        self.register_buffer("attn_mask", mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.full([], init_logit_scale, device=device))
        self.logit_bias = None
        if not meta:
            self._init_text()

    def build_causal_mask(self) -> torch.Tensor:
        """Additive causal mask ``[context_length, context_length]``: ``-inf`` above the
        diagonal."""
        n = self.context_length
        return torch.full((n, n), float("-inf"), device=self.positional_embedding.device).triu_(1)

    def _init_text(self) -> None:
        # CLIP's text initialisation (normal, scaled by width and depth), in OpenCLIP's order.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding"} | {f"visual.{n}" for n in self.visual.no_weight_decay()}

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.visual.lock(unlocked_groups, freeze_bn_stats)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, text, self.text_pool_type, self.text_eos_id)
        x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()
