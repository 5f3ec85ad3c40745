"""Layer-wise learning-rate decay and the no-weight-decay rule, shared by contrastive training
(:mod:`msclip.train.optim`) and the fine-tuning modes of :mod:`msclip.heads`.

Layer-wise learning-rate decay (Bao et al., ICLR 2022, "BEiT: BERT Pre-Training of Image
Transformers"; Clark et al., ICLR 2020, "ELECTRA"): in a tower of ``L`` blocks, block ``i``
(0-based) gets ``lr * decay**(L - i)``, the embeddings before the first block (patch embedding,
class and position embeddings, ``ln_pre``) ``lr * decay**(L + 1)``, and what follows the last
block (final norm, projection, a head) ``lr``. Norms, biases, embeddings and the temperature get
no weight decay (CLIP training practice, e.g. OpenCLIP).

Parameter names are those of the OpenCLIP model (``visual.transformer.resblocks.3.mlp.c_fc.weight``,
``transformer.resblocks.0.attn.in_proj_weight`` for the text tower ...); any name under a block
prefix belongs to that block, LoRA adapters included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = [
    "BLOCK_PATTERN",
    "TEMPERATURE_PARAMS",
    "group_parameters",
    "layer_lr_scale",
    "no_weight_decay",
    "tower_depths",
]

#: Parameters of the contrastive temperature (and SigLIP bias).
TEMPERATURE_PARAMS: tuple[str, ...] = ("logit_scale", "logit_bias")
#: Matches the block prefix of an image (``visual.``) or text tower parameter; group 2 is the
#: block index.
BLOCK_PATTERN = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")

_EMBEDDINGS = ("class_embedding", "positional_embedding", "token_embedding", "ln_pre", "conv1")


def layer_lr_scale(name: str, depth: Mapping[str, int], decay: float) -> float:
    """Learning-rate multiplier of a parameter under layer-wise decay.

    Args:
        name: OpenCLIP parameter name (relative to the ``CLIP`` module).
        depth: Number of blocks of each tower: ``{"visual": L_image, "text": L_text}``.
        decay: Decay factor per block (1.0: no decay).

    Returns:
        ``decay**(L - i)`` for a parameter of block ``i``, ``decay**(L + 1)`` for the embeddings
        before the first block, 1.0 otherwise (and for the temperature).
    """
    if decay == 1.0 or name in TEMPERATURE_PARAMS:
        return 1.0
    tower = "visual" if name.startswith("visual.") else "text"
    n_blocks = depth[tower]
    m = BLOCK_PATTERN.match(name)
    if m:
        return decay ** (n_blocks - int(m.group(2)))
    local = name[len("visual.") :] if tower == "visual" else name
    if local.startswith(_EMBEDDINGS):
        return decay ** (n_blocks + 1)
    return 1.0


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is exempt from weight decay: norms and other 1-D parameters, biases,
    embeddings and the temperature."""
    return (
        param.ndim < 2
        or "embedding" in name
        or name in TEMPERATURE_PARAMS
        or name.endswith(".bias")
    )


def tower_depths(clip: torch.nn.Module) -> dict[str, int]:
    """``{"visual": L_image, "text": L_text}`` block counts of an OpenCLIP model."""
    return {
        "visual": len(clip.visual.transformer.resblocks),
        "text": len(getattr(getattr(clip, "transformer", None), "resblocks", [])),
    }


def group_parameters(
    named: Iterable[tuple[str, torch.Tensor]],
    lr_of: Callable[[str], float],
    scale_of: Callable[[str], float],
    weight_decay_of: Callable[[str], float],
    kind_of: Callable[[str], str] = lambda name: "",
) -> list[dict[str, Any]]:
    """Optimiser parameter groups: one per (kind, base lr, lr scale, weight decay).

    Args:
        named: ``(name, parameter)`` pairs (frozen ones are skipped).
        lr_of: the base learning rate of a parameter.
        scale_of: its multiplier (e.g. :func:`layer_lr_scale`).
        weight_decay_of: its weight decay (before the :func:`no_weight_decay` rule, which wins).
        kind_of: a label that keeps parameters apart (``"head"``, ``"encoder"``).

    Returns:
        Groups with ``params``, ``names``, ``lr`` (base times scale), ``weight_decay`` and
        ``lr_scale``, ordered by kind, then base lr and scale (highest first), then weight
        decay: the same parameters always give the same order.
    """
    groups: dict[tuple[str, float, float, float], dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        base, scale = lr_of(name), scale_of(name)
        wd = 0.0 if no_weight_decay(name, p) else weight_decay_of(name)
        g = groups.setdefault(
            (kind_of(name), base, scale, wd),
            {"params": [], "names": [], "lr": base * scale, "weight_decay": wd, "lr_scale": scale},
        )
        g["params"].append(p)
        g["names"].append(name)
    order = sorted(groups, key=lambda k: (k[0], -k[1], -k[2], k[3]))
    return [groups[k] for k in order]
