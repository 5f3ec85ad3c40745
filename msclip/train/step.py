"""Forward and backward pass of one contrastive step, optionally with a feature cache.

Without accumulation the local batch is encoded with gradients, the features are gathered across
processes (:func:`msclip.train.distributed.all_gather_rows`), and the loss of the global batch is
back-propagated.

With ``accum_steps = k > 1`` the step follows GradCache (Gao et al., RepL4NLP 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup"): (1) encode the local batch in ``k``
chunks without building a graph and cache the features; (2) compute the loss of the full
(global) batch from the cached features, made leaves of the graph, and back-propagate it to get
the loss gradient of every feature; (3) encode each chunk again with a graph and back-propagate
its cached feature gradients into the towers. The parameter gradients are those of the full
contrastive batch, but only one chunk's activations are alive at a time. The random state is
replayed for the second forward of each chunk, so stochastic layers see the same draws. The
price is one extra forward pass per step.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from msclip.model import MSCLIP
from msclip.train.distributed import DistContext, all_gather_rows
from msclip.train.loss import ContrastiveLoss

__all__ = ["StepOutput", "contrastive_step", "tower_trainable"]


@dataclass
class StepOutput:
    """Result of :func:`contrastive_step`.

    Attributes:
        loss: loss of the global batch (same value in every process).
        n_global: samples in the global batch.
    """

    loss: torch.Tensor
    n_global: int


def tower_trainable(model: MSCLIP) -> tuple[bool, bool]:
    """Whether the image tower and the text tower have trainable parameters."""
    image = any(p.requires_grad for p in model.clip.visual.parameters())
    visual = {id(p) for p in model.clip.visual.parameters()}
    text = any(
        p.requires_grad
        for n, p in model.clip.named_parameters()
        if id(p) not in visual and n not in ("logit_scale", "logit_bias")
    )
    return image, text


def _encode_image(model: MSCLIP, images: torch.Tensor, grad: bool) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        if images.shape[0] == 0:
            return images.new_zeros((0, model.embed_dim), dtype=torch.float32)
        return model.encode_image(images, normalize=True).float()


def _encode_text(model: MSCLIP, tokens: torch.Tensor, grad: bool, trim: bool) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        if tokens.shape[0] == 0:
            return torch.zeros((0, model.embed_dim), device=tokens.device)
        return model.encode_text(tokens, normalize=True, trim=trim).float()


class _RandomState:
    """Snapshot of the CPU (and current CUDA device's) generator, to replay a forward pass."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        """Put the generators back to the snapshot."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def contrastive_step(
    model: MSCLIP,
    loss_fn: ContrastiveLoss,
    images: torch.Tensor,
    tokens: torch.Tensor,
    ctx: DistContext,
    sizes: Sequence[int] | None = None,
    accum_steps: int = 1,
    autocast: contextlib.AbstractContextManager | None = None,
    trim_text: bool = True,
) -> StepOutput:
    """Accumulate into ``.grad`` the gradient of this process's share of the global loss.

    Gradients are *not* reduced across processes here (see
    :func:`msclip.train.distributed.all_reduce_gradients`).

    Args:
        model: the model (train mode).
        loss_fn: the loss.
        images: local images ``[b, C, H, W]`` on the model's device.
        tokens: local tokens ``[b, L]``.
        ctx: process context.
        sizes: local batch size of every process (default: this one only).
        accum_steps: number of chunks of the feature-cache pass (1: direct pass).
        autocast: context manager entered around the encoders (mixed precision).
        trim_text: drop padding tokens before the text transformer.
    """
    sizes = list(sizes) if sizes is not None else [images.shape[0]]
    n_global = int(sum(sizes))
    amp = autocast if autocast is not None else contextlib.nullcontext()
    img_grad, txt_grad = tower_trainable(model)
    scale = model.clip.logit_scale

    if accum_steps <= 1:
        with amp:
            img = _encode_image(model, images, img_grad)
            txt = _encode_text(model, tokens, txt_grad, trim_text)
        loss = loss_fn(
            all_gather_rows(img, sizes, ctx),
            all_gather_rows(txt, sizes, ctx),
            scale,
            _shard(ctx, sizes),
        )
        if loss.requires_grad:
            loss.backward()
        return StepOutput(loss.detach(), n_global)

    # (1) cached features, no graph
    n_local = images.shape[0]
    bounds = torch.linspace(0, n_local, accum_steps + 1).round().long().tolist()
    chunks = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    states: list[_RandomState] = []
    img_parts, txt_parts = [], []
    with torch.no_grad(), amp:
        for a, b in chunks:
            states.append(_RandomState(images.device))
            img_parts.append(_encode_image(model, images[a:b], False))
            txt_parts.append(_encode_text(model, tokens[a:b], False, trim_text))
    img_cache = _cat(img_parts, model.embed_dim, images.device).requires_grad_(img_grad)
    txt_cache = _cat(txt_parts, model.embed_dim, images.device).requires_grad_(txt_grad)
    after = _RandomState(images.device)

    # (2) loss of the full batch; gradients of the cached features (and of the temperature)
    loss = loss_fn(
        all_gather_rows(img_cache, sizes, ctx),
        all_gather_rows(txt_cache, sizes, ctx),
        scale,
        _shard(ctx, sizes),
    )
    if loss.requires_grad:
        loss.backward()

    # (3) re-encode chunk by chunk and push the cached gradients into the towers
    if img_grad or txt_grad:
        for (a, b), state in zip(chunks, states):
            state.restore()
            outputs, grads = [], []
            with amp:
                if img_grad:
                    outputs.append(_encode_image(model, images[a:b], True))
                    grads.append(img_cache.grad[a:b])
                if txt_grad:
                    outputs.append(_encode_text(model, tokens[a:b], True, trim_text))
                    grads.append(txt_cache.grad[a:b])
            torch.autograd.backward(outputs, grads)
        after.restore()
    return StepOutput(loss.detach(), n_global)


def _shard(ctx: DistContext, sizes: Sequence[int]) -> tuple[int, list[int]] | None:
    """This process's place in the gathered batch, for the blockwise losses' collectives."""
    return (ctx.rank, list(sizes)) if ctx.distributed else None


def _cat(parts: list[torch.Tensor], dim: int, device: torch.device) -> torch.Tensor:
    if not parts:
        return torch.zeros((0, dim), device=device)
    return torch.cat(parts).detach()
