"""Trainable presets, parameter groups and the learning-rate schedule of msclip.train."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import torch

import msclip
from msclip.train.config import ConfigError, TrainConfig
from msclip.train.loss import ContrastiveLoss
from msclip.train.optim import (
    WarmupCosineRestarts,
    build_optimizer,
    lr_factor,
    param_groups,
    select_trainable,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def model() -> msclip.MSCLIP:
    return msclip.create_model("msclip-tiny")


def _trainable(model: msclip.MSCLIP) -> set[str]:
    return {n for n, p in model.clip.named_parameters() if p.requires_grad}


def test_presets(model) -> None:
    names = {n for n, _ in model.clip.named_parameters()}
    select_trainable(model, "patch-embed")
    assert _trainable(model) == {"visual.conv1.weight", "logit_scale"}
    select_trainable(model, "patch-embed+attn")
    t = _trainable(model)
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in t
    assert "visual.transformer.resblocks.1.mlp.c_fc.weight" not in t
    assert not any(n.startswith("transformer.") for n in t)  # the text tower's attention
    select_trainable(model, "visual")
    assert _trainable(model) == {n for n in names if n.startswith("visual.")} | {"logit_scale"}
    select_trainable(model, "all", train_logit_scale=False)
    assert _trainable(model) == names - {"logit_scale"}


def test_patterns(model) -> None:
    select_trainable(model, "patch-embed", patterns=["ln_final.*"], frozen=["logit_scale"])
    assert _trainable(model) == {"visual.conv1.weight", "ln_final.weight", "ln_final.bias"}
    select_trainable(model, "all", frozen=["token_embedding.*", "transformer.*"])
    assert "token_embedding.weight" not in _trainable(model)
    assert "visual.transformer.resblocks.0.ln_1.weight" in _trainable(model)
    with pytest.raises(ConfigError, match=r"'visual\.nothing\.\*' matches no parameter"):
        select_trainable(model, "all", patterns=["visual.nothing.*"])
    with pytest.raises(ConfigError, match="no parameter is trainable"):
        select_trainable(model, "patch-embed", frozen=["visual.conv1.*", "logit_scale"])


def test_groups_weight_decay_and_learning_rates(model) -> None:
    select_trainable(model, "all")
    cfg = TrainConfig(lr=1e-3, patch_embed_lr=5e-3, layer_decay=0.5, weight_decay=0.1)
    groups = param_groups(model, ContrastiveLoss("siglip"), cfg)
    by_name = {n: g for g in groups for n in g["names"]}
    assert len(by_name) == sum(1 for _ in model.clip.parameters()) + 1  # + the SigLIP bias

    def lr(name: str) -> float:
        return by_name[name]["lr"]

    def wd(name: str) -> float:
        return by_name[name]["weight_decay"]

    assert lr("visual.conv1.weight") == pytest.approx(5e-3) and wd("visual.conv1.weight") == 0.1
    # Two blocks per tower: block i gets decay^(2 - i), embeddings decay^3, the head decay^0.
    assert lr("visual.transformer.resblocks.0.mlp.c_fc.weight") == pytest.approx(1e-3 * 0.25)
    assert lr("visual.transformer.resblocks.1.attn.in_proj_weight") == pytest.approx(1e-3 * 0.5)
    assert lr("visual.positional_embedding") == pytest.approx(1e-3 * 0.125)
    assert lr("token_embedding.weight") == pytest.approx(1e-3 * 0.125)
    assert lr("transformer.resblocks.1.mlp.c_proj.weight") == pytest.approx(1e-3 * 0.5)
    assert lr("visual.proj") == lr("ln_final.weight") == lr("logit_scale") == pytest.approx(1e-3)
    for name in (
        "visual.ln_pre.weight",
        "visual.transformer.resblocks.0.attn.in_proj_bias",
        "visual.class_embedding",
        "visual.positional_embedding",
        "token_embedding.weight",
        "positional_embedding",
        "logit_scale",
        "logit_bias",
        "ln_final.bias",
    ):
        assert wd(name) == 0.0, name
    for name in (
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.proj",
        "text_projection",
        "transformer.resblocks.0.mlp.c_fc.weight",
    ):
        assert wd(name) == 0.1, name
    sgd = build_optimizer(groups, TrainConfig(optimizer="sgd", momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert isinstance(build_optimizer(groups, cfg), torch.optim.AdamW)


def test_frozen_parameters_are_not_in_groups(model) -> None:
    select_trainable(model, "patch-embed")
    groups = param_groups(model, ContrastiveLoss("clip"), TrainConfig())
    assert sorted(n for g in groups for n in g["names"]) == ["logit_scale", "visual.conv1.weight"]


def test_warmup_cosine_and_restarts() -> None:
    f = [lr_factor(s, 110, warmup_steps=10, min_ratio=0.1) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[109] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    # Warm restarts: cycles of 10, 20, 40 steps after warm-up.
    r = [lr_factor(s, 100, 5, restart_steps=10, restart_mult=2.0) for s in range(80)]
    assert r[5] == pytest.approx(1.0)
    for start in (15, 35, 75):
        assert r[start] == pytest.approx(1.0)
        assert r[start - 1] < 0.05
    assert r[25] == pytest.approx(0.5)  # half-way through the 20-step cycle
    assert lr_factor(50, 100, 0, kind="constant") == 1.0


def test_scheduler_drives_groups_and_saves_plain_state(model, tmp_path: Path) -> None:
    select_trainable(model, "all")
    cfg = TrainConfig(lr=1e-3, patch_embed_lr=2e-3)
    opt = build_optimizer(param_groups(model, None, cfg), cfg)
    sched = WarmupCosineRestarts(opt, total_steps=20, warmup_steps=4)
    peaks = [g["initial_lr"] for g in opt.param_groups]
    for step in range(6):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [p * lr_factor(step, 20, 4) for p in peaks]
        )
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh = WarmupCosineRestarts(opt, total_steps=20, warmup_steps=4)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 6 and fresh.get_lr() == pytest.approx(sched.get_lr())
