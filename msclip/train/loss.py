"""Contrastive losses over a batch of matching image and text embeddings.

* ``clip``: the symmetric InfoNCE loss of CLIP (Radford et al., ICML 2021, "Learning Transferable
  Visual Models From Natural Language Supervision"): with L2-normalised embeddings ``x_i``,
  ``y_j`` and logits ``l_ij = exp(t) x_i . y_j``, the mean of the image-to-text and
  text-to-image cross-entropies with target ``j = i``. ``t`` is the model's learnable
  ``logit_scale`` (log inverse temperature).
* ``siglip``: the pairwise sigmoid loss of SigLIP (Zhai et al., ICCV 2023, "Sigmoid Loss for
  Language Image Pre-Training"): ``-1/N sum_ij log sigmoid(z_ij (exp(t) x_i . y_j + b))`` with
  ``z_ii = 1`` and ``z_ij = -1`` otherwise; ``b`` is a learnable bias owned by the loss.

Both take the features of the global batch (see :mod:`msclip.train.distributed`). The
temperature is clamped after every optimiser step by :func:`clamp_logit_scale`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContrastiveLoss", "clamp_logit_scale"]


class ContrastiveLoss(nn.Module):
    """CLIP or SigLIP loss.

    Args:
        kind: ``clip`` or ``siglip``.
        init_logit_bias: initial SigLIP bias (the paper uses -10).
    """

    def __init__(self, kind: str = "clip", init_logit_bias: float = -10.0) -> None:
        super().__init__()
        if kind not in ("clip", "siglip"):
            raise ValueError(f"loss must be 'clip' or 'siglip', got {kind!r}")
        self.kind = kind
        self.logit_bias: nn.Parameter | None = None
        if kind == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """Loss of matching rows of ``image`` ``[N, D]`` and ``text`` ``[N, D]`` (normalised).

        Args:
            image: image embeddings of the global batch.
            text: text embeddings, row ``i`` describing image ``i``.
            logit_scale: log inverse temperature (the model's parameter).
        """
        logits = logit_scale.exp() * (image @ text.t())
        n = logits.shape[0]
        if self.kind == "clip":
            target = torch.arange(n, device=logits.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        logits = logits + self.logit_bias
        signs = 2.0 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1.0
        return -F.logsigmoid(signs * logits).sum() / n


@torch.no_grad()
def clamp_logit_scale(logit_scale: torch.Tensor, max_scale: float = 100.0) -> None:
    """Keep the inverse temperature in ``[1, max_scale]`` (as CLIP: at most 100)."""
    logit_scale.clamp_(0.0, math.log(max_scale))
