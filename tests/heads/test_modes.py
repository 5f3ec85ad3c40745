"""Fine-tuning modes of the image tower (msclip.heads.modes)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import msclip
from msclip.errors import HeadConfigError
from msclip.heads import (
    FINETUNE_MODES,
    FinetuneConfig,
    ImageHeadModel,
    LinearHead,
    LoRAConfig,
    apply_finetune_mode,
    count_parameters,
    finetune_param_groups,
    reinitialize_image_tower,
)


@pytest.fixture(scope="module")
def base_model() -> msclip.MSCLIP:
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny")


@pytest.fixture()
def model(base_model) -> msclip.MSCLIP:
    return copy.deepcopy(base_model)


def _batch(n=4, bands=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, bands, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)


def _train(net: ImageHeadModel, steps=3, bands=None, **group_kwargs):
    opt = torch.optim.AdamW(finetune_param_groups(net.model, net.head, lr=1e-2, **group_kwargs))
    net.train()
    for s in range(steps):
        x, y = _batch(seed=s, bands=10 if bands is None else len(bands))
        loss = F.cross_entropy(net(x, bands=bands), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss


def _trainable(model) -> set[str]:
    return {n for n, p in model.clip.named_parameters() if p.requires_grad}


def test_frozen_leaves_every_encoder_weight_bit_identical(model, base_model) -> None:
    apply_finetune_mode(model, "frozen")
    assert not _trainable(model)
    net = ImageHeadModel(model, LinearHead(32, 3))
    head_before = copy.deepcopy(net.head.state_dict())
    _train(net, steps=3, weight_decay=0.5)
    assert not model.training and not model.clip.visual.training  # kept in eval mode
    for (k, a), b in zip(
        model.clip.state_dict().items(), base_model.clip.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    assert not torch.equal(net.head.linear.weight, head_before["linear.weight"])
    counts = count_parameters(model, net.head)
    assert counts.encoder_trainable == 0 and counts.head_trainable == 32 * 3 + 3


@pytest.mark.parametrize("n", [0, 1, 2])
def test_last_n_trains_only_the_last_blocks(model, base_model, n) -> None:
    names = set(apply_finetune_mode(model, "last-n", last_n=n))
    blocks = {f"visual.transformer.resblocks.{i}." for i in range(2 - n, 2)}
    expected = {
        k
        for k, _ in model.clip.named_parameters()
        if k in ("visual.ln_post.weight", "visual.ln_post.bias", "visual.proj")
        or any(k.startswith(b) for b in blocks)
    }
    assert names == expected == _trainable(model)
    net = ImageHeadModel(model, LinearHead(32, 3))
    _train(net, steps=2)
    base = base_model.clip.state_dict()
    changed = {k for k, v in model.clip.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and changed <= expected
    if n < 2:
        assert not any(k.startswith("visual.transformer.resblocks.0.") for k in changed)


def test_full_and_lora_trainable_sets(model) -> None:
    names = set(apply_finetune_mode(model, "full"))
    assert names == {k for k, _ in model.clip.named_parameters() if k.startswith("visual.")}
    counts = count_parameters(model)
    assert counts.encoder_trainable == counts.encoder_total and counts.adapters == 0
    lora_model = copy.deepcopy(model)
    names = apply_finetune_mode(lora_model, FinetuneConfig("lora", lora=LoRAConfig(rank=2)))
    counts = count_parameters(lora_model)
    assert counts.encoder_trainable == counts.adapters == 2 * 2 * 2 * (64 * 2)
    assert all(".lora_" in n for n in names)
    with pytest.raises(HeadConfigError, match="last_n = 3 but the image tower has 2 blocks"):
        apply_finetune_mode(model, "last-n", last_n=3)
    with pytest.raises(HeadConfigError, match="unknown fine-tuning mode 'partial'"):
        apply_finetune_mode(model, "partial")


def test_scratch_reinitialises_with_a_seed(model, base_model) -> None:
    state = torch.random.get_rng_state()
    names = set(apply_finetune_mode(model, "scratch", seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert names == {k for k, _ in model.clip.named_parameters() if k.startswith("visual.")}
    assert model.bands == base_model.bands
    base = base_model.clip.state_dict()
    new = model.clip.state_dict()
    for k, v in new.items():
        assert v.shape == base[k].shape and v.dtype == base[k].dtype
        if k.startswith("visual.") and v.ndim >= 1 and "ln_" not in k and "bias" not in k:
            assert not torch.equal(v, base[k]), k
        if not k.startswith("visual."):
            assert torch.equal(v, base[k]), k  # the text tower is untouched
    again = copy.deepcopy(base_model)
    reinitialize_image_tower(again, seed=3)
    for k, v in again.clip.state_dict().items():
        assert torch.equal(v, new[k]), k
    other = copy.deepcopy(base_model)
    reinitialize_image_tower(other, seed=4)
    assert not torch.equal(other.clip.visual.conv1.weight, model.clip.visual.conv1.weight)
    std = model.clip.visual.positional_embedding.std().item()
    assert 0.5 * 64**-0.5 < std < 2 * 64**-0.5


def test_layer_decay_groups(model) -> None:
    apply_finetune_mode(model, "full")
    head = LinearHead(32, 3)
    groups = finetune_param_groups(
        model, head, lr=1e-3, weight_decay=0.1, layer_decay=0.5, head_lr=1e-2
    )
    by_name = {n: g for g in groups for n in g["names"]}
    assert len(by_name) == sum(p.numel() > 0 for p in model.clip.visual.parameters()) + 2

    def lr(name):
        return by_name[name]["lr"]

    # Two blocks: block i gets decay^(2 - i), embeddings decay^3, ln_post / proj the full lr.
    assert lr("visual.transformer.resblocks.1.attn.in_proj_weight") == pytest.approx(5e-4)
    assert lr("visual.transformer.resblocks.0.mlp.c_fc.weight") == pytest.approx(2.5e-4)
    assert lr("visual.conv1.weight") == pytest.approx(1.25e-4)
    assert lr("visual.positional_embedding") == pytest.approx(1.25e-4)
    assert lr("visual.proj") == lr("visual.ln_post.weight") == pytest.approx(1e-3)
    assert lr("head.linear.weight") == pytest.approx(1e-2)
    for name in (
        "visual.transformer.resblocks.0.attn.in_proj_bias",
        "visual.ln_pre.weight",
        "visual.class_embedding",
        "visual.positional_embedding",
        "head.linear.bias",
    ):
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in (
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.proj",
        "head.linear.weight",
    ):
        assert by_name[name]["weight_decay"] == 0.1, name
    # LoRA adapters belong to their block.
    lora_model = msclip.create_model("msclip-tiny")
    apply_finetune_mode(lora_model, "lora", lora=LoRAConfig(rank=2))
    groups = finetune_param_groups(lora_model, lr=1e-3, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    assert all(".lora_" in n for n in by_name)  # the frozen base weights are left out
    key = "visual.transformer.resblocks.0.attn.parametrizations.in_proj_weight.0.lora_A_q"
    assert by_name[key]["lr"] == pytest.approx(2.5e-4)
    frozen = msclip.create_model("msclip-tiny")
    apply_finetune_mode(frozen, "frozen")
    with pytest.raises(HeadConfigError, match="no parameter is trainable"):
        finetune_param_groups(frozen)


@pytest.mark.parametrize("mode", FINETUNE_MODES)
def test_band_adaptation_works_in_every_mode(model, mode) -> None:
    apply_finetune_mode(model, mode, **({"lora": LoRAConfig(rank=2)} if mode == "lora" else {}))
    net = ImageHeadModel(model, LinearHead(32, 3))
    bands = ["B08", "B04", "B03", "B02"]  # a subset, in another order
    loss = _train(net, steps=1, bands=bands)
    assert torch.isfinite(loss)
    x, _ = _batch(n=2, bands=4)
    net.eval()
    with torch.no_grad():
        out = net(x, bands=bands)
        ref = net.head(model.encode_image(model.to_model_bands(x, bands)).float())
    assert out.shape == (2, 3) and torch.allclose(out, ref, atol=1e-6)
    if mode != "frozen":
        trainable = [p for p in model.clip.parameters() if p.requires_grad]
        assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
