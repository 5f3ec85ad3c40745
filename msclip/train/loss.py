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

``impl`` chooses how the loss is computed: ``plain`` (here, with the ``N x N`` logit matrix, the
reference), ``chunked`` or ``triton`` (blockwise, ``O(N d)`` memory, from :mod:`msclip.cuda`,
imported on first use) or ``auto`` (see :func:`msclip.cuda.contrastive.resolve_loss_impl`; the
``MSCLIP_LOSS_IMPL`` environment variable can set it, as ``TIMM_FUSED_ATTN`` does in timm).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msclip.cuda import LOSS_IMPLS

__all__ = ["LOSS_IMPLS", "ContrastiveLoss", "clamp_logit_scale"]

logger = logging.getLogger(__name__)


class ContrastiveLoss(nn.Module):
    """CLIP or SigLIP loss.

    Args:
        kind: ``clip`` or ``siglip``.
        init_logit_bias: initial SigLIP bias (the paper uses -10).
        impl: ``plain``, ``chunked``, ``triton`` or ``auto`` (see the module docstring).
    """

    def __init__(
        self, kind: str = "clip", init_logit_bias: float = -10.0, impl: str = "plain"
    ) -> None:
        super().__init__()
        if kind not in ("clip", "siglip"):
            raise ValueError(f"loss must be 'clip' or 'siglip', got {kind!r}")
        if impl not in LOSS_IMPLS:
            raise ValueError(f"loss impl must be one of {list(LOSS_IMPLS)}, got {impl!r}")
        self.kind = kind
        self.impl = impl
        self._announced: set[str] = set()
        self.logit_bias: nn.Parameter | None = None
        if kind == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        shard: tuple[int, Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """Loss of matching rows of ``image`` ``[N, D]`` and ``text`` ``[N, D]`` (normalised).

        Args:
            image: image embeddings of the global batch.
            text: text embeddings, row ``i`` describing image ``i``.
            logit_scale: log inverse temperature (the model's parameter).
            shard: ``(rank, sizes)`` when the rows were gathered over the process group: the
                blockwise implementations then compute only this process's share (its rows
                against all columns) and combine the shares with collectives; the plain one
                computes the whole batch in every process and ignores it.
        """
        impl = self.impl
        if impl != "plain":
            from msclip.cuda.contrastive import blockwise_contrastive_loss, resolve_loss_impl

            impl = resolve_loss_impl(impl, image.shape[0], image.device)
            if impl not in self._announced:
                self._announced.add(impl)
                logger.info(
                    "contrastive loss: %s implementation (%s requested, batch %d on %s)",
                    impl,
                    self.impl,
                    image.shape[0],
                    image.device,
                )
            if impl != "plain":
                return blockwise_contrastive_loss(
                    image,
                    text,
                    logit_scale,
                    self.logit_bias,
                    kind=self.kind,
                    impl=impl,
                    shard=shard,
                )
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
