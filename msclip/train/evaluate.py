"""Validation of a contrastive model: cross-modal retrieval and zero-shot classification.

* Retrieval (image-to-text and text-to-image recall@k, as reported for CLIP by Radford et al.
  2021): every held-out image queries the held-out captions and every caption the images. Equal
  caption texts are one caption: an image's positive is the caption text it was paired with
  (identical captions of different images are indistinguishable, so counting one of them as a
  miss would be wrong), and each distinct caption is one text query whose positives are all the
  images paired with it. Likewise the same image file in several pairs (a table of one row per
  caption) is one image: one image query whose positives are all its captions, and a positive
  of each of them (its copies have the same embedding, so which of them ranks first is a tie).
  ``recall@k`` is the fraction of queries with a positive among the ``k`` most similar items.
  The held-out loss is the training loss over seeded random batches of the training batch size.
* Zero-shot classification on a class-folder data set with :mod:`msclip.zero_shot` (prompt
  ensembles as published with Llama3-MS-CLIP, the same numbers ``msclip-inference`` gives);
  accuracy definitions are those of :mod:`msclip.eval.metrics`.

Features are computed on a shard per process and gathered, so every process returns the same
numbers.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from msclip.encode import WarningTally, collate_items, encode_batches
from msclip.model import MSCLIP
from msclip.train.data import (
    ClassFolderDataset,
    PairDataset,
    ShardSampler,
    class_display_name,
)
from msclip.train.distributed import DistContext, all_gather_rows, gather_counts
from msclip.train.loss import ContrastiveLoss

__all__ = ["encode_pairs", "retrieval_metrics", "zero_shot_metrics"]

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)


def _gather(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    sizes = [c[0] for c in gather_counts([x.shape[0]], ctx)]
    return all_gather_rows(x, sizes, ctx)


class _ValidationCollate:
    """The engine's collate plus the captions' tokens (picklable for DataLoader workers)."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate_items(items)
        captions = out.get("caption", [])
        out["tokens"] = (
            self.tokenizer(captions)
            if captions
            else torch.zeros((0, self.context_length), dtype=torch.long)
        )
        return out


def encode_pairs(
    model: MSCLIP,
    dataset: PairDataset,
    tokenizer: Callable[[list[str]], torch.Tensor],
    ctx: DistContext,
    batch_size: int = 64,
    num_workers: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    trim_text: bool = True,
    tally: WarningTally | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Normalised image and text embeddings of a pair data set, gathered over processes.

    Images go through msclip's one encoding engine (:func:`msclip.encode.encode_batches`) on this
    process's shard; unreadable pairs are named in the log and counted.

    Returns:
        ``(image [N, D], text [N, D], indices [N], n_bad)``: dataset indices of the readable
        pairs in order, and the number of unreadable ones.
    """
    amp = autocast if autocast is not None else contextlib.nullcontext()
    imgs, txts, idx, n_bad = [], [], [], 0
    batches = encode_batches(
        model, dataset, batch_sampler=ShardSampler(len(dataset), batch_size, ctx.rank,
        ctx.world_size), collate=_ValidationCollate(tokenizer, model.context_length),
        workers=num_workers, to_numpy=False, autocast=autocast, grad_mode="no_grad",
        desc="validation", tally=tally,
    )  # fmt: skip
    for b in batches:
        n_bad += len(b.failures)
        if not b.indices:
            continue
        imgs.append(b.embeddings)
        with torch.no_grad(), amp:
            tokens = b.extra["tokens"].to(ctx.device)
            txts.append(model.encode_text(tokens, normalize=True, trim=trim_text).float())
        idx.append(torch.tensor(b.indices, dtype=torch.long, device=ctx.device))
    d = model.embed_dim
    img = torch.cat(imgs) if imgs else torch.zeros((0, d), device=ctx.device)
    txt = torch.cat(txts) if txts else torch.zeros((0, d), device=ctx.device)
    ind = torch.cat(idx) if idx else torch.zeros((0,), dtype=torch.long, device=ctx.device)
    n_bad_all = sum(c[0] for c in gather_counts([n_bad], ctx))
    return _gather(img, ctx), _gather(txt, ctx), _gather(ind, ctx), n_bad_all


def _recall(sim: torch.Tensor, positives: list[set[int]], ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows of ``sim`` with a positive column among the top ``k`` (chunked)."""
    n, m = sim.shape
    hits = {k: 0 for k in ks}
    kmax = min(max(ks), m)
    for a in range(0, n, 1024):
        top = sim[a : a + 1024].topk(kmax, dim=1).indices.tolist()
        for r, row in enumerate(top):
            pos = positives[a + r]
            first = next((j for j, c in enumerate(row) if c in pos), None)
            for k in ks:
                if first is not None and first < k:
                    hits[k] += 1
    return {k: hits[k] / n for k in ks}


def retrieval_metrics(
    image: torch.Tensor,
    text: torch.Tensor,
    captions: Sequence[str],
    ks: Sequence[int] = RECALL_KS,
    images: Sequence[str] | None = None,
) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k (see the module docstring for duplicates).

    Args:
        image: normalised image embeddings ``[N, D]``.
        text: normalised text embeddings ``[N, D]``, row ``i`` of the caption of image ``i``.
        captions: the caption text of each pair.
        ks: cut-offs.
        images: the image file of each pair (equal names are one image); ``None``: every pair
            has an image of its own.

    Returns:
        ``{"i2t_r1": ..., "t2i_r1": ..., "i2t_r5": ...}`` plus ``n_pairs``, ``n_images`` and
        ``n_captions``.
    """
    if image.shape[0] != len(captions) or text.shape[0] != len(captions):
        raise ValueError(
            f"{image.shape[0]} images, {text.shape[0]} texts and {len(captions)} "
            "captions must be equally many"
        )
    if images is not None and len(images) != len(captions):
        raise ValueError(f"{len(images)} image names for {len(captions)} pairs")
    cap_id, text_first = _distinct(captions)
    img_id, image_first = _distinct(images if images is not None else range(len(captions)))
    text_u = text[text_first]
    image_u = image[image_first]
    sim = image_u.float() @ text_u.float().t()
    captions_of: list[set[int]] = [set() for _ in image_first]
    images_of: list[set[int]] = [set() for _ in text_first]
    for i, c in zip(img_id, cap_id):
        captions_of[i].add(c)
        images_of[c].add(i)
    i2t = _recall(sim, captions_of, ks)
    t2i = _recall(sim.t(), images_of, ks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = i2t[k]
        out[f"t2i_r{k}"] = t2i[k]
    out["n_pairs"] = float(len(captions))
    out["n_images"] = float(len(image_first))
    out["n_captions"] = float(len(text_first))
    return out


def _distinct(values: Sequence[Any]) -> tuple[list[int], list[int]]:
    """The id of each value among the distinct values (in order of first appearance), and the
    position of each distinct value's first appearance."""
    ids: dict[Any, int] = {}
    of = [ids.setdefault(v, len(ids)) for v in values]
    first: list[int] = []
    for i, c in enumerate(of):
        if c == len(first):
            first.append(i)
    return of, first


@torch.no_grad()
def batch_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    loss_fn: ContrastiveLoss,
    logit_scale: torch.Tensor,
    batch_size: int,
    seed: int = 0,
) -> float:
    """Mean loss over seeded random batches of ``batch_size`` (the last, smaller one included
    when it has at least two pairs)."""
    n = image.shape[0]
    perm = torch.from_numpy(np.random.default_rng([seed, 0x7A1]).permutation(n)).to(image.device)
    total, count = 0.0, 0
    for a in range(0, n, batch_size):
        idx = perm[a : a + batch_size]
        if idx.numel() < 2:
            continue
        total += float(loss_fn(image[idx], text[idx], logit_scale)) * idx.numel()
        count += idx.numel()
    return total / count if count else math.nan


@torch.no_grad()
def zero_shot_metrics(
    model: MSCLIP,
    dataset: ClassFolderDataset,
    tokenizer: Callable[[list[str]], torch.Tensor],
    templates: Sequence[str],
    ctx: DistContext,
    batch_size: int = 64,
    num_workers: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    tally: WarningTally | None = None,
) -> dict[str, float]:
    """Zero-shot top-1 / top-5 / balanced accuracy on a class-folder data set.

    The classifier and logits are those of :mod:`msclip.zero_shot` (the published protocol, as
    ``msclip-inference --run-classification``); class names are the folder names made readable
    by :func:`msclip.train.data.class_display_name`.

    Returns:
        ``{"zs_top1", "zs_top5" (NaN for fewer than 5 classes), "zs_balanced", "zs_n"}``.
    """
    from msclip.eval.metrics import balanced_accuracy, topk_accuracy
    from msclip.zero_shot import build_classifier, zero_shot_logits

    names = [class_display_name(c) for c in dataset.classes]
    weights = build_classifier(model, tokenizer, names, templates).to(ctx.device)
    scores, labels = [], []
    for b in encode_batches(
        model, dataset, batch_sampler=ShardSampler(len(dataset), batch_size, ctx.rank,
        ctx.world_size), workers=num_workers, to_numpy=False, autocast=autocast,
        grad_mode="no_grad", desc="zero-shot", tally=tally,
    ):  # fmt: skip
        if not b.indices:
            continue
        scores.append(zero_shot_logits(b.embeddings, weights))
        labels.append(torch.tensor(b.extra["label"], dtype=torch.long, device=ctx.device))
    c = len(names)
    s = torch.cat(scores) if scores else torch.zeros((0, c), device=ctx.device)
    y = torch.cat(labels) if labels else torch.zeros((0,), dtype=torch.long, device=ctx.device)
    s, y = _gather(s, ctx).cpu().double().numpy(), _gather(y, ctx).cpu().numpy()
    if s.shape[0] == 0:
        return {"zs_top1": math.nan, "zs_top5": math.nan, "zs_balanced": math.nan, "zs_n": 0.0}
    return {
        "zs_top1": topk_accuracy(s, y, 1),
        "zs_top5": topk_accuracy(s, y, 5) if c >= 5 else math.nan,
        "zs_balanced": balanced_accuracy(s, y, num_classes=c),
        "zs_n": float(s.shape[0]),
    }


def _rounded(v: float) -> float:
    """``v`` to 6 decimals, but to no fewer than 6 significant digits: a learning rate of 1e-5
    in its warm-up or cosine tail (continual pretraining), or a small gradient norm, would
    otherwise be logged as 1e-05, 0.0 or a step of the schedule it does not follow."""
    if v == 0.0:
        return v
    return round(v, max(6, 5 - math.floor(math.log10(abs(v)))))


def as_row(values: dict[str, Any]) -> dict[str, Any]:
    """Round floats for CSV output (:func:`_rounded`)."""
    return {
        k: (_rounded(v) if isinstance(v, float) and math.isfinite(v) else v)
        for k, v in values.items()
    }
