"""What trains, at which learning rate, and how the learning rate moves.

* Trainable parameters: a preset (``patch-embed``: the spectral patch embedding only, the usual
  first stage of extending an RGB model to new bands; ``patch-embed+attn``: plus the attention
  layers of the image tower; ``visual``: the whole image tower; ``all``: both towers), plus and
  minus ``fnmatch`` patterns on OpenCLIP parameter names (``visual.conv1.weight``,
  ``transformer.resblocks.3.mlp.c_fc.weight`` ...). The temperature trains unless switched off.
* Parameter groups: the patch embedding has its own peak learning rate; the other parameters
  may use layer-wise learning-rate decay (Bao et al., ICLR 2022, "BEiT: BERT Pre-Training of
  Image Transformers"): in a tower of ``L`` blocks, block ``i`` (0-based) gets
  ``lr * decay**(L - i)``, the embeddings before the first block ``lr * decay**(L + 1)``, and
  what follows the last block (final norm, projection) ``lr``. Norms, biases, embeddings and the
  temperature get no weight decay (as in CLIP training practice, e.g. OpenCLIP). Both rules live
  in :mod:`msclip.layer_decay`, shared with the fine-tuning modes of :mod:`msclip.heads`.
* Schedule (:class:`WarmupCosineRestarts`): linear warm-up, then cosine decay (Loshchilov and
  Hutter, ICLR 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts") to
  ``min_lr_ratio`` of the peak, optionally restarting after ``restart_steps`` steps with cycles
  growing by ``restart_mult``; or constant after warm-up.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from msclip.layer_decay import TEMPERATURE_PARAMS as _TEMPERATURE
from msclip.layer_decay import group_parameters, layer_lr_scale, tower_depths
from msclip.model import MSCLIP
from msclip.train.config import TRAINABLE_PRESETS, ConfigError, TrainConfig

__all__ = [
    "PRESET_PATTERNS",
    "WarmupCosineRestarts",
    "build_optimizer",
    "lr_factor",
    "param_groups",
    "select_trainable",
]

logger = logging.getLogger(__name__)

PRESET_PATTERNS: dict[str, tuple[str, ...]] = {
    "patch-embed": ("visual.conv1.*",),
    "patch-embed+attn": ("visual.conv1.*", "visual.transformer.resblocks.*.attn.*"),
    "visual": ("visual.*",),
    "all": ("*",),
}


def _match(names: Sequence[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def select_trainable(
    model: MSCLIP,
    preset: str = "all",
    patterns: Sequence[str] = (),
    frozen: Sequence[str] = (),
    train_logit_scale: bool = True,
) -> list[str]:
    """Set ``requires_grad`` on the model's parameters; return the trainable names.

    Raises:
        ConfigError: unknown preset, or a pattern that matches no parameter (the message lists
            some parameter names).
    """
    if preset not in PRESET_PATTERNS:
        raise ConfigError(
            f"trainable preset must be one of {list(TRAINABLE_PRESETS)}, got {preset!r}"
        )
    names = [n for n, _ in model.clip.named_parameters()]
    chosen: set[str] = set()
    for pattern in PRESET_PATTERNS[preset]:
        chosen.update(n for n in _match(names, pattern) if n not in _TEMPERATURE)
    for label, group, add in (
        ("trainable_patterns", patterns, True),
        ("frozen_patterns", frozen, False),
    ):
        for pattern in group:
            hits = _match(names, pattern)
            if not hits:
                sample = ", ".join([*names[:6], "...", *names[-4:]])
                raise ConfigError(
                    f"{label} entry {pattern!r} matches no parameter of {model.config.arch}; "
                    f"names look like: {sample}"
                )
            (chosen.update if add else chosen.difference_update)(hits)
    if train_logit_scale and not any(fnmatch.fnmatchcase("logit_scale", p) for p in frozen):
        chosen.add("logit_scale")
    for n, p in model.clip.named_parameters():
        p.requires_grad_(n in chosen)
    trainable = [n for n in names if n in chosen]
    if not trainable:
        raise ConfigError(
            "no parameter is trainable; check the options trainable and frozen_patterns",
            param="trainable",
        )
    return trainable


def param_groups(
    model: MSCLIP, loss_fn: nn.Module | None, cfg: TrainConfig
) -> list[dict[str, Any]]:
    """Optimiser parameter groups (learning rate, weight decay and names of each).

    Each group carries ``lr`` (its peak learning rate), ``weight_decay``, ``lr_scale`` (layer
    decay multiplier) and ``names``.
    """
    depth = tower_depths(model.clip)
    named = list(model.clip.named_parameters())
    if loss_fn is not None:
        named += list(loss_fn.named_parameters())

    def is_patch(name: str) -> bool:
        return name.startswith("visual.conv1.")

    return group_parameters(
        named,
        lr_of=lambda n: (
            cfg.patch_embed_lr if (is_patch(n) and cfg.patch_embed_lr is not None) else cfg.lr
        ),
        scale_of=lambda n: 1.0 if is_patch(n) else layer_lr_scale(n, depth, cfg.layer_decay),
        weight_decay_of=lambda n: cfg.weight_decay,
    )


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or SGD with momentum over ``groups``."""
    if cfg.optimizer == "adamw":
        # foreach: one vectorised update over all tensors, several times faster on CPU than the
        # per-tensor loop that is torch's CPU default.
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=True
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    kind: str = "cosine",
    min_ratio: float = 0.0,
    restart_steps: int | None = None,
    restart_mult: float = 1.0,
) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Warm-up is linear, ``(step + 1) / warmup_steps``, so the first step already moves. The
    cosine part runs over ``total_steps - warmup_steps`` steps, or in cycles of
    ``restart_steps * restart_mult**c`` steps, each from 1 to ``min_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    t = float(step - warmup_steps)
    period = float(restart_steps if restart_steps else max(1, total_steps - warmup_steps))
    while t >= period and restart_steps:
        t -= period
        period *= restart_mult
    progress = min(1.0, t / period)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineRestarts(torch.optim.lr_scheduler.LRScheduler):
    """Learning-rate scheduler of :func:`lr_factor` (stepped once per optimiser step).

    Its state (``last_epoch`` = steps taken, base learning rates) is plain numbers, so it saves
    into a ``weights_only`` checkpoint.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        kind: str = "cosine",
        min_ratio: float = 0.0,
        restart_steps: int | None = None,
        restart_mult: float = 1.0,
    ) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.min_ratio = float(min_ratio)
        self.restart_steps = restart_steps
        self.restart_mult = float(restart_mult)
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """Multiplier at ``step``."""
        return lr_factor(
            step,
            self.total_steps,
            self.warmup_steps,
            self.kind,
            self.min_ratio,
            self.restart_steps,
            self.restart_mult,
        )

    def get_lr(self) -> list[float]:
        """Learning rates of the groups at the current step."""
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
