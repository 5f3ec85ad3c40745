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
from collections.abc import Mapping

import torch

__all__ = ["BLOCK_PATTERN", "TEMPERATURE_PARAMS", "layer_lr_scale", "no_weight_decay"]

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
