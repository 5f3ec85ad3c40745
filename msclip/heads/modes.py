"""Fine-tuning modes of the image tower, parameter groups and parameter counts.

Modes (what trains in the image tower of an :class:`msclip.MSCLIP`; the text tower and the
temperature never train here):

* ``frozen``: nothing. The encoder stays in eval mode and its weights stay bit-identical; only a
  head trains (on cached features, or through :class:`ImageHeadModel`, which then runs the
  encoder without building a graph).
* ``lora``: low-rank adapters on the q and v parts of the fused attention projection (optionally
  k and the MLP), :mod:`msclip.heads.lora`; the base weights stay frozen.
* ``last-n``: the last ``n`` transformer blocks plus what follows them (``ln_post``, ``proj``).
* ``full``: the whole image tower (patch embedding, embeddings, blocks, final norm, projection).
* ``scratch``: the whole image tower, re-initialised randomly with a seed first: the baseline
  that shows what pretraining is worth. Shapes and the band set are unchanged.

Band adaptation keeps working in every mode: reading other bands
(``model.encode_image(x, bands=...)``) maps the input channels onto the model's bands before the
patch embedding (:meth:`msclip.MSCLIP.to_model_bands`), whatever trains.

Parameter groups (:func:`finetune_param_groups`) follow layer-wise learning-rate decay (Bao et
al., ICLR 2022, "BEiT"): block ``i`` of ``L`` gets ``lr * decay**(L - i)``, the embeddings
``lr * decay**(L + 1)``, ``ln_post`` / ``proj`` and the head ``lr``; norms, biases and
embeddings get no weight decay. The rules are those of contrastive training
(:mod:`msclip.layer_decay`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from msclip.errors import HeadConfigError
from msclip.heads.lora import LoRAConfig, apply_lora, has_lora, lora_parameters
from msclip.layer_decay import group_parameters, layer_lr_scale, tower_depths

__all__ = [
    "FINETUNE_MODES",
    "FinetuneConfig",
    "ImageHeadModel",
    "ParameterCounts",
    "apply_finetune_mode",
    "count_parameters",
    "finetune_param_groups",
    "reinitialize_image_tower",
]

logger = logging.getLogger(__name__)

#: The fine-tuning modes of the image tower.
FINETUNE_MODES: tuple[str, ...] = ("frozen", "lora", "last-n", "full", "scratch")


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning mode and its settings.

    Attributes:
        mode: One of :data:`FINETUNE_MODES`.
        last_n: Blocks trained by ``last-n`` (``0`` trains only ``ln_post`` and ``proj``).
        lora: Adapter settings of ``lora``.
        seed: Seed of the re-initialisation of ``scratch``.
    """

    mode: str = "frozen"
    last_n: int = 1
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FINETUNE_MODES:
            raise HeadConfigError(
                f"unknown fine-tuning mode {self.mode!r}; choose one of {list(FINETUNE_MODES)}"
            )
        if isinstance(self.last_n, bool) or not isinstance(self.last_n, int) or self.last_n < 0:
            raise HeadConfigError(f"last_n must be an integer >= 0; got {self.last_n!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for protocol cards and checkpoints)."""
        return {
            "mode": self.mode,
            "last_n": self.last_n,
            "lora": self.lora.to_dict(),
            "seed": self.seed,
        }


def _clip(model: nn.Module) -> nn.Module:
    clip = getattr(model, "clip", None)
    visual = getattr(clip, "visual", None)
    if visual is None or getattr(getattr(visual, "transformer", None), "resblocks", None) is None:
        raise HeadConfigError(
            "fine-tuning modes need an msclip.MSCLIP whose image tower is an OpenCLIP vision "
            f"transformer; got {type(model).__name__}"
        )
    return clip


def reinitialize_image_tower(model: nn.Module, seed: int = 0) -> None:
    """Re-initialise every image-tower weight randomly (the ``scratch`` baseline), in place.

    The initialisation is that of a freshly built OpenCLIP vision transformer: ``nn.Linear``,
    ``nn.LayerNorm`` and ``nn.MultiheadAttention`` defaults, the patch kernel as ``nn.Conv2d``'s
    default, and the class and position embeddings and the projection normal with standard
    deviation ``width**-0.5``. Values are drawn on the CPU from ``torch.Generator(seed)`` in
    module order, so a seed gives the same tower on every device; the global RNG is untouched.
    Shapes, bands and dtypes are kept.

    Raises:
        HeadConfigError: LoRA adapters are attached, or a module type has parameters this
            function does not know how to initialise.
    """
    clip = _clip(model)
    if has_lora(model):
        raise HeadConfigError("remove or merge the LoRA adapters before re-initialising")
    visual = clip.visual
    g = torch.Generator().manual_seed(int(seed))

    def fill(p: torch.Tensor, init: Any) -> None:
        tmp = torch.empty(p.shape, dtype=torch.float32)
        init(tmp)
        with torch.no_grad():
            p.copy_(tmp.to(p.dtype))

    def kaiming(t: torch.Tensor) -> None:
        nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)

    done: set[int] = set()
    width = int(visual.transformer.resblocks[0].attn.embed_dim)
    scale = width**-0.5
    for module in visual.modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.MultiheadAttention):
            fill(module.in_proj_weight, lambda t: nn.init.xavier_uniform_(t, generator=g))
            for b in (module.in_proj_bias, module.out_proj.bias):
                if b is not None:
                    fill(b, nn.init.zeros_)
            for p in (module.in_proj_weight, module.in_proj_bias, module.out_proj.bias):
                if p is not None:
                    done.add(id(p))  # out_proj.weight keeps nn.Linear's default, as in torch
            continue
        if isinstance(module, nn.Linear):
            if id(module.weight) not in done:
                fill(module.weight, kaiming)
            if module.bias is not None and id(module.bias) not in done:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                fill(module.bias, lambda t, b=bound: nn.init.uniform_(t, -b, b, generator=g))
            done.update(id(p) for p in own.values())
            continue
        if isinstance(module, nn.LayerNorm):
            fill(module.weight, nn.init.ones_)
            if module.bias is not None:
                fill(module.bias, nn.init.zeros_)
            done.update(id(p) for p in own.values())
            continue
        if module is visual.conv1:
            fill(module.weight, kaiming)  # nn.Conv2d's default initialisation
            done.update(id(p) for p in own.values())
            continue
        if module is visual:
            for pname, p in own.items():
                if pname in ("class_embedding", "positional_embedding", "proj"):
                    fill(p, lambda t: nn.init.normal_(t, std=scale, generator=g))
                    done.add(id(p))
            continue
    left = [n for n, p in visual.named_parameters() if id(p) not in done]
    if left:
        raise HeadConfigError(
            f"cannot re-initialise image-tower parameters {left[:5]} (unknown module type); "
            "the scratch mode supports OpenCLIP's plain vision transformer"
        )
    if hasattr(model, "checkpoint_sha256"):
        model.checkpoint_sha256 = None  # the weights changed: recompute the fingerprint
    logger.info("image tower re-initialised randomly (seed %d)", seed)


def apply_finetune_mode(
    model: nn.Module, config: FinetuneConfig | str = "frozen", **kwargs: Any
) -> list[str]:
    """Set what trains in the image tower (in place) and return the trainable names.

    Every parameter of the model (both towers, the temperature) is frozen first; then the mode
    makes its part trainable. ``frozen`` also puts the model in eval mode. ``lora`` attaches
    the adapters, ``scratch`` re-initialises the image tower first.

    Args:
        model: An :class:`msclip.MSCLIP`.
        config: A :class:`FinetuneConfig`, or a mode name with its settings as keyword
            arguments (``last_n=...``, ``lora=LoRAConfig(...)``, ``seed=...``).

    Returns:
        Names of the trainable parameters (OpenCLIP names: ``visual.transformer.resblocks.11
        .attn.parametrizations.in_proj_weight.0.lora_A_q`` ...).

    Raises:
        HeadConfigError: Unknown mode, ``last_n`` larger than the block count, or adapters
            already attached.
    """
    if isinstance(config, str):
        config = FinetuneConfig(config, **kwargs)
    elif kwargs:
        raise HeadConfigError("pass either a FinetuneConfig or a mode name with keywords")
    clip = _clip(model)
    visual = clip.visual
    for p in clip.parameters():
        p.requires_grad_(False)
    mode = config.mode
    blocks = visual.transformer.resblocks
    if mode == "frozen":
        model.eval()
    elif mode == "lora":
        for p in apply_lora(model, config.lora):
            p.requires_grad_(True)
    elif mode == "last-n":
        if config.last_n > len(blocks):
            raise HeadConfigError(
                f"last_n = {config.last_n} but the image tower has {len(blocks)} blocks; "
                f"use 0..{len(blocks)} (or mode 'full')"
            )
        first = len(blocks) - config.last_n
        before = {"conv1", "class_embedding", "positional_embedding", "ln_pre", "patch_dropout"}
        for name, p in visual.named_parameters():
            top = name.split(".")[0]
            if top == "transformer":
                p.requires_grad_(int(name.split(".")[2]) >= first)
            else:
                p.requires_grad_(top not in before)
    elif mode in ("full", "scratch"):
        if mode == "scratch":
            reinitialize_image_tower(model, config.seed)
        for p in visual.parameters():
            p.requires_grad_(True)
    names = [f"{n}" for n, p in clip.named_parameters() if p.requires_grad]
    model._msclip_finetune = config
    logger.info("fine-tuning mode %s: %d trainable tensors", mode, len(names))
    return names


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of an encoder (image tower) and a head.

    Attributes:
        encoder_trainable: Trainable image-tower parameters (LoRA adapters included).
        encoder_total: All image-tower parameters (adapters included).
        head_trainable: Trainable head parameters.
        head_total: All head parameters.
        adapters: LoRA adapter parameters (0 without adapters).
    """

    encoder_trainable: int
    encoder_total: int
    head_trainable: int
    head_total: int
    adapters: int

    @property
    def trainable(self) -> int:
        """Everything that trains: encoder plus head."""
        return self.encoder_trainable + self.head_trainable

    def to_dict(self) -> dict[str, int]:
        """Plain dict, ``trainable`` included."""
        return {
            "encoder_trainable": self.encoder_trainable,
            "encoder_total": self.encoder_total,
            "head_trainable": self.head_trainable,
            "head_total": self.head_total,
            "adapters": self.adapters,
            "trainable": self.trainable,
        }


def count_parameters(
    model: nn.Module, head: nn.Module | None = None, encoder_trained: bool = True
) -> ParameterCounts:
    """Trainable and total parameters of the image tower (and of a head).

    ``encoder_trained=False``: the run trains the head only (on frozen features), so no encoder
    parameter counts as trainable whatever its ``requires_grad`` flag says.
    """
    visual = _clip(model).visual
    enc = list(visual.parameters())
    hp = list(head.parameters()) if head is not None else []
    return ParameterCounts(
        encoder_trainable=sum(p.numel() for p in enc if p.requires_grad) if encoder_trained else 0,
        encoder_total=sum(p.numel() for p in enc),
        head_trainable=sum(p.numel() for p in hp if p.requires_grad),
        head_total=sum(p.numel() for p in hp),
        adapters=sum(p.numel() for p in lora_parameters(model)) if has_lora(model) else 0,
    )


def finetune_param_groups(
    model: nn.Module,
    head: nn.Module | None = None,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    layer_decay: float = 1.0,
    head_lr: float | None = None,
    head_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimiser parameter groups of the trainable image-tower parameters and a head.

    Args:
        model: An :class:`msclip.MSCLIP` after :func:`apply_finetune_mode`.
        head: The head module, if it trains with the encoder.
        lr: Peak learning rate of the last block's successors (``ln_post``, ``proj``); block
            ``i`` of ``L`` gets ``lr * layer_decay**(L - i)``, the embeddings
            ``lr * layer_decay**(L + 1)``.
        weight_decay: Decoupled weight decay of matrices (not of norms, biases, embeddings).
        layer_decay: Layer-wise decay factor (1.0: the same lr everywhere).
        head_lr: Learning rate of the head (``lr`` by default).
        head_weight_decay: Weight decay of the head's matrices (``weight_decay`` by default).

    Returns:
        Groups with ``params``, ``names`` (``visual.…`` for the encoder, ``head.…``), ``lr``,
        ``weight_decay`` and ``lr_scale``, ready for ``torch.optim.AdamW``; frozen parameters
        are left out.

    Raises:
        HeadConfigError: Nothing trains, or a non-positive ``lr`` / ``layer_decay``.
    """
    for value, label in ((lr, "lr"), (layer_decay, "layer_decay")):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise HeadConfigError(f"{label} must be a positive number; got {value!r}")
    clip = _clip(model)
    depth = tower_depths(clip)
    named = [(n, p) for n, p in clip.named_parameters() if p.requires_grad]
    for name, _ in named:
        if not name.startswith("visual."):
            logger.warning("text-tower parameter %s is trainable; it gets the head's rule", name)
    h_lr = lr if head_lr is None else head_lr
    h_wd = weight_decay if head_weight_decay is None else head_weight_decay
    if head is not None:
        named += [(f"head.{n}", p) for n, p in head.named_parameters() if p.requires_grad]

    def is_head(name: str) -> bool:
        return head is not None and name.startswith("head.")

    groups = group_parameters(
        named,
        lr_of=lambda n: h_lr if is_head(n) else lr,
        scale_of=lambda n: 1.0 if is_head(n) else layer_lr_scale(n, depth, layer_decay),
        weight_decay_of=lambda n: h_wd if is_head(n) else weight_decay,
        kind_of=lambda n: "0-head" if is_head(n) else "1-encoder",  # the head's groups first
    )
    if not groups:
        raise HeadConfigError(
            "no parameter is trainable: apply a fine-tuning mode other than 'frozen' or pass a head"
        )
    return groups


class ImageHeadModel(nn.Module):
    """An image tower and a head on its pooled embedding: ``head(encode_image(images))``.

    With the ``frozen`` mode the encoder runs under ``torch.no_grad`` (no graph is built) and
    stays in eval mode whatever ``train()`` is called with.

    Args:
        model: An :class:`msclip.MSCLIP` (its fine-tuning mode applied).
        head: A module on ``[B, embed_dim]`` embeddings.
        mode: The fine-tuning mode (read from the model when omitted, ``frozen`` by default).
        normalize: L2-normalise the embeddings before the head.
    """

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        mode: str | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        cfg = getattr(model, "_msclip_finetune", None)
        self.mode = mode or (cfg.mode if cfg is not None else "frozen")
        if self.mode not in FINETUNE_MODES:
            raise HeadConfigError(
                f"unknown fine-tuning mode {self.mode!r}; choose one of {list(FINETUNE_MODES)}"
            )
        self.normalize = normalize
        if self.mode == "frozen":
            self.model.eval()

    def train(self, mode: bool = True) -> ImageHeadModel:
        super().train(mode)
        if self.mode == "frozen":
            self.model.eval()
        return self

    def forward(self, images: torch.Tensor, bands: Sequence[str] | None = None) -> torch.Tensor:
        if self.mode == "frozen":
            with torch.no_grad():
                emb = self.model.encode_image(images, normalize=self.normalize, bands=bands)
        else:
            emb = self.model.encode_image(images, normalize=self.normalize, bands=bands)
        return self.head(emb.float())
