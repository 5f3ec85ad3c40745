"""MSCLIP: an OpenCLIP model whose image tower reads named spectral bands.

The image tower is OpenCLIP's vision transformer with its ``conv1`` patch projection replaced by
a :class:`~msclip.spectral.SpectralPatchEmbed` over the model's bands (Llama3-MS-CLIP: Marimo et
al., ECML PKDD 2025, arXiv:2503.15969; CLIP: Radford et al., ICML 2021). Parameter names stay those
of OpenCLIP (``visual.conv1.weight`` ...), so OpenCLIP and Llama3-MS-CLIP state dicts load as they
are and the published model's embeddings are reproduced exactly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import (
    BandError,
    CheckpointError,
    ImageTypeError,
    InputTypeError,
    InvalidArgumentError,
    LayoutError,
    PrecisionError,
)
from msclip.spectral.adapt import map_bands
from msclip.spectral.bands import Band, resolve_bands
from msclip.spectral.patch_embed import SpectralPatchEmbed
from msclip.spectral.stats import NormStats
from msclip.transforms import ImageTransform

__all__ = [
    "MAX_LOGIT_SCALE",
    "MSCLIP",
    "Intermediates",
    "MSCLIPConfig",
    "build_open_clip",
    "default_taps",
    "resample_pos_embed",
]


@dataclass
class MSCLIPConfig:
    """Everything needed to rebuild a model and its preprocessing (stored in checkpoints).

    Attributes:
        arch: architecture name (an OpenCLIP model name or an msclip ``model_configs`` name).
        arch_cfg: the OpenCLIP model config (``embed_dim``, ``vision_cfg``, ``text_cfg`` ...).
        bands: the image tower's bands, in channel order.
        stats: normalisation statistics (must cover ``bands``).
        name: registered model name, when there is one.
        resize_mode: ``shortest`` (resize shorter side + centre crop) or ``squash``.
        interpolation: resize interpolation (``bicubic`` as published).
        pil_rgb: RGB baselines follow OpenCLIP's PIL preprocessing for 8-bit pictures.
        taps: image-tower blocks whose outputs dense heads read by default (``None``: the rule
            of :func:`default_taps` for the tower's depth).
    """

    arch: str
    arch_cfg: dict
    bands: tuple[str, ...]
    stats: NormStats
    name: str = ""
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    pil_rgb: bool = False
    taps: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        size = self.arch_cfg["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["stats"] = self.stats.to_dict()
        d["taps"] = None if self.taps is None else list(self.taps)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MSCLIPConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["bands"] = tuple(d["bands"])
        if d.get("taps") is not None:
            d["taps"] = tuple(int(i) for i in d["taps"])
        d["stats"] = NormStats.from_dict(d["stats"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def default_taps(depth: int) -> tuple[int, ...]:
    """Blocks of a ``depth``-block vision transformer that dense heads read by default.

    ViT-B (12 blocks): 3, 5, 7, 11, as pangaea-bench taps its ViT-B encoders; ViT-L (24 blocks):
    7, 11, 15, 23 (its ViT-L choice); other depths: up to four blocks evenly spaced, ending with
    the last one.
    """
    if depth == 12:
        return (3, 5, 7, 11)
    if depth == 24:
        return (7, 11, 15, 23)
    n = min(4, depth)
    return tuple(sorted({round(depth * (i + 1) / n) - 1 for i in range(n)}))


def resample_pos_embed(
    pos_embed: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]
) -> torch.Tensor:
    """Resample ``[1 + h*w, D]`` positional embeddings from ``src_grid`` to ``dst_grid``.

    The class-token row is kept; the patch rows are resized as a ``D``-channel image with bicubic
    interpolation (``align_corners=False``), as ViTs are usually run at a new resolution
    (Dosovitskiy et al., ICLR 2021, section 3.2). Returns ``[1 + h'*w', D]``; the same tensor
    when the grids are equal.
    """
    src = (int(src_grid[0]), int(src_grid[1]))
    dst = (int(dst_grid[0]), int(dst_grid[1]))
    if src == dst:
        return pos_embed
    cls, grid = pos_embed[:1], pos_embed[1:]
    d = grid.shape[-1]
    img = grid.reshape(1, src[0], src[1], d).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=dst, mode="bicubic", align_corners=False)
    grid = img.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], d).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=0)


@dataclass
class Intermediates:
    """Outputs of tapped image-tower blocks (:meth:`MSCLIP.forward_intermediates`).

    Attributes:
        layers: the tapped block indices (non-negative), in the order requested.
        maps: per tapped block, the patch tokens as a map ``[B, width, H/p, W/p]``.
        pooled: per tapped block, ``[B, width]``: the class token (``pool="cls"``) or the mean of
            the patch tokens (``pool="mean"``); ``None`` with ``pool=None``.
    """

    layers: tuple[int, ...]
    maps: list[torch.Tensor]
    pooled: list[torch.Tensor] | None


def build_open_clip(arch_cfg: Mapping[str, Any], meta: bool = False) -> nn.Module:
    """Instantiate a CLIP model from an OpenCLIP config dict (random weights).

    Plain ViT configurations (every registered msclip model) are built by
    :mod:`msclip.architecture`, msclip's own build with OpenCLIP's parameter names, arithmetic and
    seeded initialisation, which does not import OpenCLIP; the others by OpenCLIP's ``CLIP`` /
    ``CustomTextCLIP``.

    Args:
        arch_cfg: the OpenCLIP model config.
        meta: build msclip's own CLIP on the meta device (no memory, no initialisation; to be
            loaded with ``assign``). OpenCLIP builds are always materialised.
    """
    from msclip.architecture import CLIP as NativeCLIP
    from msclip.architecture import use_native

    cfg = copy.deepcopy(dict(arch_cfg))
    if use_native(cfg):
        cfg.pop("multimodal_cfg", None)
        return NativeCLIP(**cfg, device="meta" if meta else None)
    from open_clip.model import CLIP, CustomTextCLIP

    custom = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg.get("text_cfg", {})
    cfg.pop("multimodal_cfg", None)
    return (CustomTextCLIP if custom else CLIP)(**cfg)


def _narrows(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether casting ``source`` weights to ``target`` only rounds them to a narrower format
    that loading in ``target`` gives too (float32 or float64 to a smaller float type)."""
    return source in (torch.float32, torch.float64) and target.itemsize < source.itemsize


#: The bound CLIP's training keeps the inverse temperature ``exp(logit_scale)`` under (Radford et
#: al. 2021; OpenCLIP and the release clamp it; ``msclip-train --max-logit-scale`` by default).
MAX_LOGIT_SCALE = 100.0

#: Short names of the weights' dtypes (:attr:`MSCLIP.precision`).
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                torch.float64: "fp64"}  # fmt: skip


class MSCLIP(nn.Module):
    """A CLIP model with a spectral image tower.

    Args:
        config: architecture, bands and statistics.
        clip: an existing OpenCLIP model to wrap (its ``conv1`` is replaced); built from
            ``config.arch_cfg`` with random weights when omitted.
    """

    def __init__(self, config: MSCLIPConfig, clip: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.clip = build_open_clip(config.arch_cfg) if clip is None else clip
        visual = self.clip.visual
        conv = getattr(visual, "conv1", None)
        if conv is None:
            raise CheckpointError(
                f"architecture {config.arch!r} has no OpenCLIP 'visual.conv1' patch projection; "
                "msclip supports OpenCLIP's native vision transformer towers"
            )
        bands = tuple(b.name for b in resolve_bands(config.bands))
        config.bands = bands
        if not isinstance(conv, SpectralPatchEmbed):
            if conv.weight.shape[1] != len(bands):
                # Random init for a new band count, with nn.Conv2d's default initialisation.
                conv = nn.Conv2d(len(bands), conv.weight.shape[0], conv.kernel_size,
                                 conv.stride, bias=False, device=conv.weight.device)  # fmt: skip
            visual.conv1 = SpectralPatchEmbed.from_conv(conv, bands)
        if config.taps is None:  # recorded, so that checkpoints say which blocks heads read
            config.taps = default_taps(len(visual.transformer.resblocks))
        missing = [b for b in bands if b not in config.stats.mean]
        if missing:
            raise BandError(
                f"statistics {config.stats.name!r} have no entry for bands {missing}; "
                "give statistics for every model band"
            )
        #: Scalar ``temperature`` of the Llama3-MS-CLIP release (kept to write that format back).
        self.release_temperature: float = 0.07
        #: Provenance of the loaded weights (path and sha256), set by the loader.
        self.checkpoint_path: str | None = None
        self._checkpoint_sha256: str | None = None
        self._identity_dtype: torch.dtype | None = None  # the weights' dtype when it was taken
        #: The torch seed random weights were drawn with, when a program drew them
        #: (``--no-pretrained --seed N``): how to draw the same model again. ``None`` for loaded
        #: weights, or once the weights change.
        self.init_seed: int | None = None
        self._versions: dict[str, tuple[int, int]] = {}
        # Weights loaded into the model (``load_state_dict`` on it or on ``clip``) are other
        # weights: their identity is computed anew (the loader then names the file it read),
        # so caches and records keyed on it never serve the old weights' results.
        self.clip.register_load_state_dict_post_hook(self._weights_replaced)
        #: Why the weights have their precision (set by :func:`msclip.create_model`).
        self.precision_reason: str = "as built"
        #: The precision asked for (``auto`` ...).
        self.precision_requested: str | None = None

    # -- properties ------------------------------------------------------------------------
    @property
    def patch_embed(self) -> SpectralPatchEmbed:
        return self.clip.visual.conv1

    @property
    def bands(self) -> tuple[str, ...]:
        return self.patch_embed.bands

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def patch_size(self) -> int:
        """Side of the image tower's patches in pixels."""
        k = self.patch_embed.weight.shape[-1]
        return int(k)

    @property
    def embed_dim(self) -> int:
        return int(self.config.arch_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.config.arch_cfg.get("text_cfg", {}).get("context_length", 77))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embed.weight.device

    @property
    def checkpoint_sha256(self) -> str:
        """sha256 of the weight file, or of the weights themselves when not loaded from a file
        or changed in place since (an optimizer's steps on the model's own parameters)."""
        self._note_cast()  # a cast made past MSCLIP (model.clip.float())
        if self._checkpoint_sha256 is not None and self._changed_in_place():
            self._weights_replaced()
        if self._checkpoint_sha256 is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            for k, v in sorted(self.clip.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
            self._checkpoint_sha256 = "weights:" + h.hexdigest()
            self._versions = self._parameter_versions()
            self._identity_dtype = self.dtype
        return self._checkpoint_sha256

    @checkpoint_sha256.setter
    def checkpoint_sha256(self, value: str | None) -> None:
        self._checkpoint_sha256 = value
        self.init_seed = None  # weights from a file, or changed: no longer the seed's draw
        self._versions = self._parameter_versions()
        self._identity_dtype = self.dtype

    def _note_cast(self) -> None:
        """Count a change of the weights' dtype since the identity was taken: a cast that narrows
        float32 (or float64) weights gives what loading them in that precision gives, and keeps
        the identity (the precision is part of :meth:`fingerprint`); any other cast (widening,
        or bf16 <-> fp16) gives weights that are not the source's, whose identity is taken
        anew."""
        taken = getattr(self, "_identity_dtype", None)
        now = self.dtype
        if self._checkpoint_sha256 is None or taken is None or taken == now:
            return
        if _narrows(taken, now):
            self._identity_dtype = now  # a later cast is judged from here
        else:
            self._weights_replaced()

    def _parameter_versions(self) -> dict[str, tuple[int, int]]:
        """``name -> (tensor id, in-place version)`` of every parameter of the weights proper
        (attached adapters, under ``parametrizations``, are not the model's weights)."""
        return {
            n: (id(p), p._version)
            for n, p in self.clip.named_parameters()
            if "parametrizations." not in n
        }

    def rebase_identity(self, weights_changed: bool = False) -> None:
        """Take the model's identity anew after a change of structure: attached or removed
        adapters leave the weights as they are (``weights_changed=False``: the identity is
        kept, once any earlier in-place change has been counted), merged ones do not."""
        if weights_changed or (self._checkpoint_sha256 is not None and self._changed_in_place()):
            self._weights_replaced()
        if not weights_changed and self._checkpoint_sha256 is None:
            _ = self.checkpoint_sha256  # taken from the weights before adapters wrap them
        self._versions = self._parameter_versions()

    def _changed_in_place(self) -> bool:
        """Whether a parameter the identity was taken from has been modified in place since
        (torch counts in-place operations per tensor: ``optimizer.step()`` bumps them; writes
        through ``.data`` and replaced tensors are not seen here, ``load_state_dict`` is)."""
        before = getattr(self, "_versions", None)
        if not before:
            return False
        for n, p in self.clip.named_parameters():
            was = before.get(n)
            if was is not None and was[0] == id(p) and p._version != was[1]:
                return True
        return False

    def weights_edited(self) -> None:
        """Tell the model its weights were changed in a way torch does not count: writes through
        ``.data`` (``p.data.copy_(w)``, older EMA code, weight surgery) or ``p.set_(...)``.

        Changes through the parameters themselves (an optimiser step, ``load_state_dict``,
        in-place operations under ``torch.no_grad()``) are seen by their version counters; these
        are not. After them the model would still use what it derived from the weights before:
        the copies of the image tower's linear weights in oneDNN's layout that its bf16 CPU path
        made, and its identity (:attr:`checkpoint_sha256`, :meth:`fingerprint`), which keys the
        text-embedding cache (cached prompts of the old weights would be served). This drops
        both: the next call packs the current weights, and the identity is taken anew from them.
        """
        from msclip.architecture import drop_packed

        drop_packed([*self.clip.parameters(), *self.clip.buffers()])
        self._weights_replaced()
        self._versions = {}

    def _weights_replaced(self, module: Any = None, incompatible: Any = None) -> None:
        """Forget the identity of weights that are no longer the model's (also the
        ``load_state_dict`` post-hook): it is computed anew from the weights when asked for."""
        self._checkpoint_sha256 = None
        self.checkpoint_path = None
        self.init_seed = None

    @property
    def precision(self) -> str:
        """Precision of the weights: ``fp32``, ``bf16``, ``fp16``, or ``int8`` (image tower with
        dynamically quantised linear layers, :mod:`msclip.quantize`); ``fp64`` after a cast to
        float64."""
        if getattr(self.clip.visual, "msclip_int8", False):
            return "int8"
        return _DTYPE_NAMES.get(self.dtype, "fp32")

    def _apply(self, fn: Any, recurse: bool = True) -> MSCLIP:
        """What ``.to()``, ``.float()``, ``.half()`` ... run. An int8 tower computes in float32
        around its int8 layers, so its dtype cannot change. A cast that widens the weights
        (bf16 to fp32) gives weights that are not the source weights at that precision: their
        identity (:attr:`checkpoint_sha256`, :meth:`fingerprint`) is taken anew. A cast that
        narrows them gives what loading in that precision gives, and keeps it."""
        before = self.dtype
        target = fn(torch.empty(0, dtype=before)).dtype  # what the call does to a weight
        if target != before:
            if self.precision == "int8":
                raise PrecisionError(
                    f"an int8 model computes in float32 around its int8 layers and cannot be cast "
                    f"to {_DTYPE_NAMES.get(target, str(target))}; create the model in that "
                    "precision instead (msclip.create_model(..., precision='bf16' or 'fp32'))",
                    param="precision",
                )
            if _narrows(before, target) and self._checkpoint_sha256 is None:
                _ = self.checkpoint_sha256  # taken from the weights before they are rounded
        out = super()._apply(fn, recurse)
        if self.dtype != before:
            self._note_cast()
            self.precision_reason = (
                f"cast from {_DTYPE_NAMES.get(before, str(before))} to {self.precision} after "
                "it was built"
            )
        return out

    def describe(self) -> dict[str, Any]:
        """JSON description of the model and its preprocessing: what produced an embedding.

        Stored in embedding-index manifests, evaluation records and cache folders; the
        ``fingerprint`` entry is :meth:`fingerprint`. ``precision_reason`` says why the weights
        have their precision (``auto`` on a CPU with native bf16 ...); it is informational and
        not part of the fingerprint, as is ``init_seed``, present for random weights drawn by a
        program (:attr:`init_seed`).
        """
        cfg = self.config
        stats = cfg.stats
        sha = str(self.checkpoint_sha256)  # first: weights changed in place forget their seed
        seed = {} if self.init_seed is None else {"init_seed": int(self.init_seed)}
        return {
            "name": cfg.name or cfg.arch,
            "arch": cfg.arch,
            "checkpoint_sha256": sha,
            "checkpoint_path": self.checkpoint_path,
            "bands": list(self.bands),
            "embed_dim": int(self.embed_dim),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "preprocessing": {
                "image_size": int(cfg.image_size),
                "resize_mode": cfg.resize_mode,
                "interpolation": cfg.interpolation,
                "divisor": float(stats.divisor),
                "mean": [float(stats.mean[b]) for b in self.bands],
                "std": [float(stats.std[b]) for b in self.bands],
            },
            "fingerprint": self.fingerprint(),
            **seed,
        }

    def output_tags(self) -> dict[str, str]:
        """GeoTIFF tags that name what produced a map: ``msclip_model`` (name), and from
        :meth:`describe` ``msclip_checkpoint_sha256``, ``msclip_precision`` and
        ``msclip_fingerprint`` (the identity the caches, indexes and records key on)."""
        info = self.describe()
        return {
            "msclip_model": str(info["name"]),
            "msclip_checkpoint_sha256": str(info["checkpoint_sha256"]),
            "msclip_precision": str(info["precision"]),
            "msclip_fingerprint": str(info["fingerprint"]),
        }

    def fingerprint(self, precision: bool = True) -> str:
        """The one identity of this model's outputs: a sha256 (hex, 32 characters) of the
        checkpoint hash, architecture, bands, embedding size, preprocessing and, unless
        ``precision=False``, the precision of the weights (bf16 embeddings differ from fp32 ones
        in the last bits). The text-embedding cache, the embedding index and evaluation records
        all key on it; the display name and the file path do not count.
        """
        cfg = self.config
        facts = {
            "checkpoint_sha256": str(self.checkpoint_sha256),
            "arch": cfg.arch,
            "bands": list(self.bands),
            "embed_dim": int(self.embed_dim),
            "image_size": int(cfg.image_size),
            "resize_mode": cfg.resize_mode,
            "interpolation": cfg.interpolation,
            "stats": {b: [cfg.stats.mean[b], cfg.stats.std[b]] for b in self.bands},
            "divisor": float(cfg.stats.divisor),
            "precision": self.precision if precision else None,
        }
        text = json.dumps(facts, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def preprocess(
        self,
        input_bands: Sequence[str | Band] | None = None,
        layout: str | None = None,
        sensor: str | None = None,
        strict_bands: bool = False,
        max_pixels: int | None = None,
        downsample: bool = False,
    ) -> ImageTransform:
        """The preprocessing transform of this model (:class:`msclip.transforms.ImageTransform`):
        a file path, :class:`msclip.io.Raster`, PIL image or array in, the input tensor out.

        Args:
            input_bands: band names of inputs that do not name their bands.
            layout: ``CHW``/``HWC`` of arrays whose layout cannot be told from the shape.
            sensor: sensor whose local band names apply.
            strict_bands: refuse inputs that lack most of the model's bands or are 8-bit
                pictures for a reflectance model (else a warning).
            max_pixels: refuse files with more pixels than this (before reading them).
            downsample: read large GeoTIFFs and pictures reduced to the model input instead.
        """
        cfg = self.config
        return ImageTransform(
            cfg.bands, cfg.stats.mean, cfg.stats.std, cfg.image_size, cfg.stats.divisor,
            cfg.resize_mode, cfg.interpolation, input_bands, layout, sensor, cfg.pil_rgb,
            self.patch_size, strict_bands, max_pixels=max_pixels, downsample=downsample,
        )  # fmt: skip

    # -- encoders --------------------------------------------------------------------------
    def to_model_bands(
        self, images: torch.Tensor, bands: Sequence[str | Band] | None
    ) -> torch.Tensor:
        """Map normalised images whose channels are ``bands`` into the model's channel space.

        The same linear map as the adapted patch kernel (:mod:`msclip.spectral.adapt`); a pure
        re-ordering when every model band is present.

        Raises:
            BandError: ``bands`` is one string rather than a list, names a band twice, or names
                another number of bands than ``images`` has channels.
        """
        if bands is None:
            return images
        # one string (its letters would be read as bands) and a band named twice are refused
        names = tuple(b.name for b in resolve_bands(bands))
        if names == self.bands:
            return images
        if images.shape[1] != len(names):
            raise BandError(f"images have {images.shape[1]} channels but {len(names)} bands named")
        mapping = map_bands(self.bands, names)
        perm = mapping.permutation
        if perm is not None:
            return images[:, perm]
        m = torch.as_tensor(mapping.matrix, dtype=images.dtype, device=images.device)
        return torch.einsum("ij,bjhw->bihw", m, images)

    def encode_image(
        self,
        images: torch.Tensor,
        normalize: bool = False,
        bands: Sequence[str | Band] | None = None,
    ) -> torch.Tensor:
        """Image embeddings of preprocessed images ``[B, C, H, W]``.

        Args:
            images: normalised images; channels are the model's bands unless ``bands`` says
                otherwise.
            normalize: L2-normalise the embeddings.
            bands: names of the channels of ``images`` when they are not the model's bands.
        """
        self._check_images(images, bands)
        self._warn_fp16_on_cpu()
        if self.precision == "int8" and self.dtype != torch.float32:
            raise PrecisionError(
                f"this int8 model's other weights were cast to {self.dtype} (through model.clip): "
                "its int8 layers compute in float32; create the model in the precision wanted",
                param="precision",
            )
        x = self.to_model_bands(images, bands).to(self.dtype)
        return self.clip.encode_image(x, normalize=normalize)

    def _warn_fp16_on_cpu(self) -> None:
        """Warn once when the weights are fp16 on a CPU: :func:`msclip.create_model` refuses
        that precision there, but a ``.half()`` by the user gives it. Likewise bf16 weights on a
        CPU that emulates bf16 (cast after the model was built, or moved from a GPU), once per
        process as :func:`msclip.create_model` warns for an explicit bf16 there."""
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            self._warn_emulated_bf16()
            return
        if self.dtype != torch.float16 or self.device.type != "cpu":
            return
        if getattr(self, "_fp16_cpu_warned", False):
            return
        self._fp16_cpu_warned = True
        from msclip.errors import PerformanceWarning
        from msclip.hardware import FP16_ON_CPU

        warnings.warn(
            "the model's weights are fp16 on a CPU (cast after it was built: create_model refuses "
            f"fp16 there): {FP16_ON_CPU}; move it to a GPU, or create it with precision='auto', "
            "'bf16' (where the CPU computes bf16 natively) or 'fp32'",
            PerformanceWarning,
            stacklevel=3,
        )

    def _warn_emulated_bf16(self) -> None:
        from msclip.hardware import cpu_bf16_native, cpu_info, onednn_bf16_cap, warn_emulated_bf16

        if cpu_bf16_native():
            return
        cap = onednn_bf16_cap()
        where = f"with {cap}, which keeps oneDNN off its bf16 kernels" if cap else (
            "without native bf16")  # fmt: skip
        warn_emulated_bf16(
            f"the model's weights are bf16 on a CPU {where} ({cpu_info().kind}; cast after it was "
            "built, or moved from a GPU): bf16 matrix products are emulated there, several to "
            "100 times slower than fp32; create it with precision='auto' or 'fp32' (or call "
            "model.float())",
            stacklevel=4,  # _warn_emulated_bf16 <- _warn_fp16_on_cpu <- encode_* <- caller
        )

    def _check_images(self, images: Any, bands: Sequence[str | Band] | None) -> None:
        """Refuse what the tower would fail on with a message about tensor sizes."""
        if not isinstance(images, torch.Tensor):
            raise ImageTypeError(
                f"images must be a torch tensor [B, C, H, W], got {type(images).__name__}; "
                "preprocess arrays or files with model.preprocess() first"
            )
        if not images.is_floating_point():
            if images.dtype == torch.long and images.shape[-1:] == (self.context_length,):
                # a path given to the tokenizer: open_clip's `model, _, preprocess = ...` unpacks
                # msclip's (model, preprocess, tokenizer) with the tokenizer as preprocess
                from msclip.tokenizer import UNPACKING_HINT

                raise LayoutError(
                    f"images must be preprocessed float tensors, got token ids (int64, shape "
                    f"{tuple(images.shape)}): the tokenizer made them; {UNPACKING_HINT}"
                )
            # raw digital numbers or masks: the tower reads normalised float values
            raise LayoutError(
                f"images must be preprocessed float tensors, got {images.dtype}: raw values "
                "(digital numbers) are normalised by model.preprocess() first"
            )
        if bands is not None:
            bands = [b.name for b in resolve_bands(bands)]
        n = len(bands) if bands is not None else len(self.bands)
        if images.ndim != 4 or images.shape[0] == 0:
            hint = " (add the batch axis: x[None])" if images.ndim == 3 else ""
            raise LayoutError(
                f"images must be a non-empty batch [B, {n}, H, W] of preprocessed images, got "
                f"shape {tuple(images.shape)}{hint}"
            )
        if images.shape[1] != n:
            last = images.shape[-1] == n
            raise BandError(
                f"images of shape {tuple(images.shape)} have {images.shape[1]} channels, but "
                f"{n} bands are read ({list(bands) if bands is not None else list(self.bands)})"
                + ("; the channels are last: images.permute(0, 3, 1, 2)" if last else "")
            )
        size = int(self.image_size)
        if tuple(images.shape[-2:]) != (size, size):
            raise LayoutError(
                f"images of shape {tuple(images.shape)} are {images.shape[-2]}x"
                f"{images.shape[-1]} pixels, but the image tower reads {size}x{size} (its "
                f"position embedding is for that size); resize or crop them with "
                f"model.preprocess(), which does"
            )

    def _check_tokens(self, tokens: Any) -> None:
        """Refuse what the text tower would fail on with a message about tensor sizes (or an
        index error): ids of another tokenizer, a missing batch axis, float values."""
        fix = "tokenise the texts with msclip.get_tokenizer(model)"
        if not isinstance(tokens, torch.Tensor):
            raise InputTypeError(
                f"tokens must be a torch tensor [B, {self.context_length}] of token ids, got "
                f"{type(tokens).__name__}; {fix}"
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise LayoutError(f"tokens must be integer token ids, got {tokens.dtype}; {fix}")
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            hint = " (add the batch axis: tokens[None])" if tokens.ndim == 1 else ""
            raise LayoutError(
                f"tokens must be a non-empty batch [B, {self.context_length}], got shape "
                f"{tuple(tokens.shape)}{hint}"
            )
        embedding = getattr(self.clip, "token_embedding", None)
        if embedding is None:  # a text tower of another library checks its own input
            return
        if tokens.shape[1] > self.context_length:
            raise LayoutError(
                f"tokens of shape {tuple(tokens.shape)} hold {tokens.shape[1]} positions, but "
                f"this model's text tower reads at most {self.context_length} (its context "
                f"length); {fix}, which pads and cuts to it"
            )
        if tokens.shape[1] < self.context_length and not self._can_trim_text():
            # fewer are read as they are (padded, or trimmed) only where padding changes nothing
            raise LayoutError(
                f"tokens of shape {tuple(tokens.shape)} hold fewer positions than this "
                f"model's text tower reads ({self.context_length}); {fix}"
            )
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= embedding.num_embeddings:
            raise LayoutError(
                f"token ids {low}..{high} lie outside this model's vocabulary of "
                f"{embedding.num_embeddings} (ids of another tokenizer?); {fix}"
            )

    def _can_trim_text(self) -> bool:
        c = self.clip
        return (
            getattr(c, "attn_mask", None) is not None
            and getattr(c, "text_pool_type", None) == "argmax"
            and hasattr(c, "token_embedding")
        )

    def encode_text(
        self, tokens: torch.Tensor, normalize: bool = False, trim: bool = False
    ) -> torch.Tensor:
        """Text embeddings of tokenised text ``[B, context_length]``.

        Args:
            tokens: token ids from :func:`msclip.get_tokenizer`.
            normalize: L2-normalise the embeddings.
            trim: drop the padding columns after the last end-of-text token of the batch before
                running the text transformer. Exact in principle (the causal mask means later
                tokens cannot change the pooled end-of-text output); in float arithmetic results
                agree to about 1e-6 and the text tower runs several times faster for short
                prompts.
        """
        self._check_tokens(tokens)
        self._warn_fp16_on_cpu()
        if not (trim and self._can_trim_text()):
            short = self.context_length - tokens.shape[1]
            if short > 0 and hasattr(self.clip, "token_embedding"):
                # padding after the end-of-text token changes nothing (causal attention, pooled
                # at end-of-text: _check_tokens refused fewer positions elsewhere), as trim=True
                # drops it
                tokens = F.pad(tokens, (0, short))
            return self.clip.encode_text(tokens, normalize=normalize)
        from msclip.architecture import text_global_pool

        c = self.clip
        length = int(tokens.argmax(dim=-1).max()) + 1  # end-of-text has the largest token id
        text = tokens[:, :length]
        cast_dtype = c.transformer.get_cast_dtype()
        x = c.token_embedding(text).to(cast_dtype)
        x = x + c.positional_embedding[:length].to(cast_dtype)
        x = c.transformer(x, attn_mask=c.attn_mask[:length, :length])
        x = c.ln_final(x)
        x = text_global_pool(
            x, text, c.text_pool_type, eos_token_id=getattr(c, "text_eos_id", None)
        )
        if c.text_projection is not None:
            x = (
                c.text_projection(x)
                if isinstance(c.text_projection, nn.Linear)
                else x @ c.text_projection
            )
        return F.normalize(x, dim=-1) if normalize else x

    def release_text_pages(self) -> int:
        """Give back the resident memory of the text tower's weights until it is used again.

        For runs that encode their prompts first and then only images (classification,
        retrieval): when the weights are an unchanged memory map of a file (the weight file in
        fp32, the converted-weights cache in bf16), their pages are dropped and fault in again
        from the file on the next text call, so nothing changes but the memory (about 170 MB in
        fp32 for Llama3-MS-CLIP-Base). Weights in anonymous memory are left alone.

        Returns:
            the size of the page ranges dropped (:func:`msclip.memory.release_mapped`).
        """
        from msclip.memory import release_mapped

        text = [p for n, p in self.clip.named_parameters() if not n.startswith("visual.")]
        return release_mapped(text)

    def release_weight_pages(self) -> int:
        """Give back the resident memory of all the model's weights until they are used again.

        For the end of a run whose model calls are done (the results are written next): as
        :meth:`release_text_pages`, for every weight that is an unchanged memory map of a file
        (0.35 GB of image tower in fp32 for Llama3-MS-CLIP-Base), so what the run does after
        its model calls (building and writing its tables) does not add to a peak set by
        the weights. Weights in anonymous memory are left alone; using the model again reads
        the pages in again, with the same values. The copies of the image tower's weights in
        oneDNN's layout that its bf16 CPU path made (:mod:`msclip.architecture`) are freed;
        the next call makes them again.

        Returns:
            the size of the page ranges dropped (:func:`msclip.memory.release_mapped`).
        """
        from msclip.architecture import drop_packed
        from msclip.memory import release_mapped

        weights = [*self.clip.parameters(), *self.clip.buffers()]
        drop_packed(weights)
        return release_mapped(weights)

    def forward_features(
        self,
        images: torch.Tensor,
        layers: int | Sequence[int] | None = None,
        bands: Sequence[str | Band] | None = None,
    ) -> list[torch.Tensor]:
        """Patch tokens ``[B, N, width]`` of chosen transformer blocks (for dense heads).

        Args:
            images: normalised images ``[B, C, H, W]``.
            layers: block indices (negative counts from the end) or ``n`` for the last ``n``
                blocks; the last block when omitted.
            bands: names of the channels of ``images`` when they are not the model's bands.
        """
        x = self.to_model_bands(images, bands).to(self.dtype)
        n_blocks = len(self.clip.visual.transformer.resblocks)
        if layers is None:
            indices: int | list[int] = 1
        elif isinstance(layers, int):
            indices = layers
        else:
            indices = [i % n_blocks if -n_blocks <= i < n_blocks else i for i in layers]
            bad = [i for i in indices if not 0 <= i < n_blocks]
            if bad:
                raise InvalidArgumentError(
                    f"layers {list(layers)} out of range for {n_blocks} blocks", param="layers"
                )
        out = self.clip.visual.forward_intermediates(
            x, indices=indices, intermediates_only=True, output_fmt="NLC"
        )
        return list(out["image_intermediates"])

    @property
    def depth(self) -> int:
        """Number of transformer blocks of the image tower."""
        return len(self.clip.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        """Token width of the image tower."""
        return int(self.patch_embed.weight.shape[0])

    @property
    def taps(self) -> tuple[int, ...]:
        """Default tapped blocks (the config's ``taps``, else :func:`default_taps`)."""
        taps = self.config.taps
        return tuple(taps) if taps is not None else default_taps(self.depth)

    @property
    def native_grid(self) -> tuple[int, int]:
        """Patch grid ``(h, w)`` the positional embeddings were trained for."""
        g = self.clip.visual.grid_size
        return (int(g[0]), int(g[1])) if isinstance(g, (tuple, list)) else (int(g), int(g))

    def block_indices(self, layers: int | Sequence[int] | None) -> list[int]:
        """Non-negative block indices of ``layers`` (negative from the end; ``None``:
        :attr:`taps`), in the order given.

        Raises:
            ValueError: an index outside the tower, or no index.
        """
        n = self.depth
        if layers is None:
            wanted = list(self.taps)
        elif isinstance(layers, int):
            wanted = [layers]
        else:
            wanted = list(layers)
        out = [i + n if -n <= i < 0 else i for i in wanted]
        bad = [w for w, i in zip(wanted, out) if not 0 <= i < n]
        if bad or not out:
            raise InvalidArgumentError(
                f"layers {wanted} do not name blocks of this {n}-block image tower "
                f"(0..{n - 1}, or -{n}..-1 from the end)"
            )
        return out

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Token sequence ``[B, 1 + h*w, width]`` entering the first image-tower block.

        The steps of OpenCLIP's ``VisionTransformer`` before its blocks (patch projection, class
        token, positional embedding, patch dropout, pre-norm), with the positional embeddings
        resampled (:func:`resample_pos_embed`) when the patch grid differs from the trained one,
        so the tower reads any image whose sides are multiples of the patch size.
        """
        visual = self.clip.visual
        x = visual.conv1(images)
        b, d, gh, gw = x.shape
        x = x.reshape(b, d, gh * gw).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).reshape(1, 1, d).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1)
        pos = resample_pos_embed(visual.positional_embedding, self.native_grid, (gh, gw))
        x = x + pos.to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x)

    def forward_intermediates(
        self,
        images: torch.Tensor,
        layers: int | Sequence[int] | None = None,
        pool: str | None = "cls",
        bands: Sequence[str | Band] | None = None,
        norm: bool = False,
    ) -> Intermediates:
        """Patch-token maps and pooled vectors of chosen image-tower blocks.

        The tower stops after the deepest requested block, so early taps cost only the blocks up
        to them. Images of other sizes than the model input are read with resampled positional
        embeddings (:meth:`embed_tokens`).

        Args:
            images: normalised images ``[B, C, H, W]``, ``H`` and ``W`` multiples of the patch
                size.
            layers: block indices (negative from the end), one index, or ``None`` for
                :attr:`taps`.
            pool: ``"cls"`` (class token), ``"mean"`` (mean of the patch tokens) or ``None``.
            bands: names of the channels of ``images`` when they are not the model's bands.
            norm: apply the tower's final layer norm (``ln_post``) to every output.

        Raises:
            ValueError: a layer index outside the tower, a size that is not a multiple of the
                patch size, or an unknown ``pool``.
        """
        if pool not in ("cls", "mean", None):
            raise InvalidArgumentError(
                f"pool must be 'cls', 'mean' or None, got {pool!r}", param="pool"
            )
        indices = self.block_indices(layers)
        p = self.patch_size
        h, w = images.shape[-2:]
        if h % p or w % p or h < p or w < p:
            raise LayoutError(
                f"image size {h}x{w} is not a positive multiple of the patch size {p}; pad it"
            )
        x = self.to_model_bands(images, bands).to(self.dtype)
        visual = self.clip.visual
        blocks = sorted(set(indices))
        _, taken = visual.transformer.forward_intermediates(
            self.embed_tokens(x), indices=blocks, stop_early=True
        )
        if norm:
            taken = [visual.ln_post(t) for t in taken]
        by_block = dict(zip(blocks, taken))
        b, gh, gw = x.shape[0], h // p, w // p
        maps, pooled = [], []
        for i in indices:
            t = by_block[i]
            maps.append(t[:, 1:].reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous())
            if pool == "cls":
                pooled.append(t[:, 0])
            elif pool == "mean":
                pooled.append(t[:, 1:].mean(dim=1))
        return Intermediates(tuple(indices), maps, pooled if pool is not None else None)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image and text embeddings and the inverse temperature
        ``logit_scale.exp()``, as OpenCLIP returns them.

        CLIP's training, the release's included, clamps ``logit_scale`` at ``ln(100)``
        (:data:`MAX_LOGIT_SCALE`; ``msclip-train --max-logit-scale`` may set another bound), so
        the value of a trained checkpoint is returned as it is. One whose ``exp`` is not a finite
        number (NaN, or a ``logit_scale`` of 1e6 or infinity, which made ``scale * image @
        text.T`` infinite and its softmax NaN) is a damaged or edited checkpoint, and refused.

        Raises:
            CheckpointError: ``exp(logit_scale)`` is NaN or infinite.
        """
        scale = self.clip.logit_scale
        value = float(scale.detach().float().exp().reshape(-1)[0]) if scale.numel() else math.nan
        if not math.isfinite(value):
            raise CheckpointError(
                f"the model's logit_scale is {float(scale.detach().reshape(-1)[0]):g} (weights: "
                f"{self.checkpoint_path or 'in memory'}), so exp(logit_scale) = {value:g} and "
                "every logit would be infinite or NaN: the checkpoint is damaged (CLIP's training "
                f"keeps it at most ln({MAX_LOGIT_SCALE:g}) = {math.log(MAX_LOGIT_SCALE):.3f}); set "
                "it (with torch.no_grad(): model.clip.logit_scale.fill_(math.log(100))), or score "
                "with encode_image / encode_text and msclip.zero_shot, whose scale is a fixed 100"
            )
        img = self.encode_image(images, normalize=True)
        txt = self.encode_text(tokens, normalize=True)
        return img, txt, scale.exp()
