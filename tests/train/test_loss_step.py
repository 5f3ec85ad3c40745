"""Contrastive losses and the feature-cache (GradCache) step of msclip.train."""

from __future__ import annotations

import math
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

import msclip
from msclip.train.distributed import DistContext
from msclip.train.loss import ContrastiveLoss, clamp_logit_scale
from msclip.train.optim import select_trainable
from msclip.train.step import contrastive_step, tower_trainable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _features(n: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


def test_clip_loss_is_symmetric_infonce() -> None:
    img, txt = _features()
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    loss = ContrastiveLoss("clip")(img, txt, scale)
    logits = 20.0 * img @ txt.t()
    by_hand = -0.5 * (
        torch.diagonal(logits.log_softmax(dim=1)).mean()
        + torch.diagonal(logits.log_softmax(dim=0)).mean()
    )
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(loss, open_clip.loss.ClipLoss()(img, txt, scale.exp()))


def test_siglip_loss_matches_the_paper_and_open_clip() -> None:
    img, txt = _features()
    loss_fn = ContrastiveLoss("siglip", init_logit_bias=-3.0).double()
    scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    loss = loss_fn(img, txt, scale)
    logits = 10.0 * img @ txt.t() - 3.0
    z = 2 * torch.eye(6, dtype=torch.float64) - 1
    torch.testing.assert_close(loss, -F.logsigmoid(z * logits).sum() / 6)
    ref = open_clip.loss.SigLipLoss()(img, txt, scale.exp(), loss_fn.logit_bias)
    torch.testing.assert_close(loss, ref)
    assert loss_fn.logit_bias.requires_grad
    with pytest.raises(ValueError, match="clip"):
        ContrastiveLoss("triplet")


def test_logit_scale_is_clamped() -> None:
    t = torch.nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale(t, 100.0)
    assert t.item() == pytest.approx(math.log(100.0))
    t.data.fill_(-1.0)
    clamp_logit_scale(t, 100.0)
    assert t.item() == 0.0


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randn(8, 10, 32, 32)
    tok = msclip.get_tokenizer("msclip-tiny")
    tokens = tok([f"a field number {i} with {'trees ' * (i % 3)}" for i in range(8)])
    return images, tokens


def _grads(
    model: msclip.MSCLIP, loss_fn: ContrastiveLoss, images, tokens, accum: int, trim: bool = False
) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss_fn.zero_grad(set_to_none=True)
    out = contrastive_step(
        model, loss_fn, images, tokens, DistContext(), accum_steps=accum, trim_text=trim
    )
    grads = {n: p.grad.clone() for n, p in model.clip.named_parameters() if p.grad is not None}
    grads.update({n: p.grad.clone() for n, p in loss_fn.named_parameters() if p.grad is not None})
    return float(out.loss), grads


def _assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal up to float32 summation order: 1e-4 of the tensor's largest entry."""
    err = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    assert err <= 1e-4 * scale + 1e-9, f"{name}: max error {err:.3g} vs max |grad| {scale:.3g}"


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_feature_cache_gives_the_full_batch_gradient(batch, kind: str) -> None:
    images, tokens = batch
    torch.manual_seed(1)
    model = msclip.create_model("msclip-tiny").train()
    loss_fn = ContrastiveLoss(kind)
    loss1, g1 = _grads(model, loss_fn, images, tokens, accum=1)
    loss4, g4 = _grads(model, loss_fn, images, tokens, accum=4)
    loss3, g3 = _grads(model, loss_fn, images, tokens, accum=3)  # uneven chunks 3/2/3
    assert loss1 == pytest.approx(loss4, rel=1e-6) == pytest.approx(loss3, rel=1e-6)
    assert set(g1) == set(g4) == set(g3)
    assert "visual.conv1.weight" in g1 and "token_embedding.weight" in g1
    assert "logit_scale" in g1 and (kind == "clip") == ("logit_bias" not in g1)
    for name in g1:
        _assert_grad_close(g4[name], g1[name], name)
        _assert_grad_close(g3[name], g1[name], name)
    # Not the same as the mean of per-chunk losses: the chunks see each other as negatives.
    model.zero_grad(set_to_none=True)
    small = contrastive_step(model, loss_fn, images[:2], tokens[:2], DistContext())
    assert float(small.loss) != pytest.approx(loss1, rel=1e-3)


def test_feature_cache_with_a_frozen_text_tower_and_trimmed_text(batch) -> None:
    images, tokens = batch
    torch.manual_seed(2)
    model = msclip.create_model("msclip-tiny").train()
    select_trainable(model, "visual")
    assert tower_trainable(model) == (True, False)
    loss_fn = ContrastiveLoss("clip")
    loss1, g1 = _grads(model, loss_fn, images, tokens, accum=1, trim=True)
    loss2, g2 = _grads(model, loss_fn, images, tokens, accum=2, trim=True)
    assert loss1 == pytest.approx(loss2, rel=1e-6)
    assert not any(n.startswith(("transformer.", "token_embedding")) for n in g1)
    assert set(g1) == set(g2)
    for name in g1:
        _assert_grad_close(g2[name], g1[name], name)


def test_random_layers_are_replayed_in_the_second_pass(batch) -> None:
    images, tokens = batch
    torch.manual_seed(3)
    model = msclip.create_model("msclip-tiny").train()
    # Patch dropout draws random numbers in every forward pass.
    from open_clip.transformer import PatchDropout

    model.clip.visual.patch_dropout = PatchDropout(0.5)
    loss_fn = ContrastiveLoss("clip")
    # Reference: the loss of the features of the first pass, back-propagated directly (chunk by
    # chunk with graphs kept, the same random draws in the same order).
    model.zero_grad(set_to_none=True)
    torch.manual_seed(10)
    parts = [
        (
            model.encode_image(images[a:b], normalize=True),
            model.encode_text(tokens[a:b], normalize=True),
        )
        for a, b in ((0, 4), (4, 8))
    ]
    ref_loss = loss_fn(
        torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), model.clip.logit_scale
    )
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in model.clip.named_parameters()}
    state_after_ref = torch.get_rng_state()
    torch.manual_seed(10)
    loss, grads = _grads(model, loss_fn, images, tokens, accum=2)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-6)
    for name, g in ref.items():
        _assert_grad_close(grads[name], g, name)
    # The generator ends where a single pass over the chunks would leave it.
    assert torch.equal(torch.get_rng_state(), state_after_ref)
