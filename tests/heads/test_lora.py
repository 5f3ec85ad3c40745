"""LoRA adapters on the fused attention projection (msclip.heads.lora)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

import msclip
from msclip.errors import AdapterError, HeadConfigError
from msclip.heads import (
    LoRAConfig,
    apply_finetune_mode,
    apply_lora,
    count_parameters,
    has_lora,
    load_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    read_lora,
    remove_lora,
    save_lora,
)


@pytest.fixture(scope="module")
def base_model() -> msclip.MSCLIP:
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny")


@pytest.fixture()
def model(base_model) -> msclip.MSCLIP:
    return copy.deepcopy(base_model)


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(3, 10, 32, 32, generator=torch.Generator().manual_seed(1))


def _step(model, images, steps=1, lr=1e-2):
    """A few AdamW steps on the adapters that move the embeddings somewhere."""
    opt = torch.optim.AdamW(lora_parameters(model), lr=lr)
    target = torch.randn(images.shape[0], 32, generator=torch.Generator().manual_seed(2))
    model.train()
    for _ in range(steps):
        loss = ((model.encode_image(images) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_zero_initialised_b_gives_the_base_outputs_exactly(model, base_model, images) -> None:
    base_model.eval()
    with torch.no_grad():
        eval_ref = base_model.encode_image(images)
    base_model.train()
    train_ref = base_model.encode_image(images)
    apply_finetune_mode(
        model, "lora", lora=LoRAConfig(rank=4, targets=("q", "v", "c_fc", "c_proj"))
    )
    model.eval()
    with torch.no_grad():  # nn.MultiheadAttention's fused inference path
        assert torch.equal(model.encode_image(images), eval_ref)
    model.train()  # the autograd path
    assert torch.equal(model.encode_image(images), train_ref)
    base_model.eval()


def test_only_q_and_v_rows_change(model, base_model, images) -> None:
    apply_finetune_mode(model, "lora", lora=LoRAConfig(rank=2))
    trainable = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert count_parameters(model).encoder_trainable == 2 * 2 * (2 * 64 * 2)  # 2 blocks, q+v
    _step(model, images)
    merge_lora(model)
    assert not has_lora(model)
    merged = model.clip.state_dict()
    base = base_model.clip.state_dict()
    assert list(merged) == list(base)  # plain OpenCLIP names again, in the same order
    for i in range(2):
        key = f"visual.transformer.resblocks.{i}.attn.in_proj_weight"
        w, w0 = merged[key], base[key]
        assert not torch.equal(w[:64], w0[:64]) and not torch.equal(w[128:], w0[128:])
        assert torch.equal(w[64:128], w0[64:128])  # k untouched
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed == {f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(2)}


def test_merged_equals_unmerged_after_training(model, images) -> None:
    apply_finetune_mode(model, "lora", lora=LoRAConfig(rank=4, alpha=8, targets=("q", "v", "c_fc")))
    _step(model, images, steps=2)
    with torch.no_grad():
        adapted = model.encode_image(images)
    merge_lora(model)
    with torch.no_grad():
        merged = model.encode_image(images)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_remove_restores_the_base_model(model, base_model, images) -> None:
    apply_lora(model, LoRAConfig(rank=2))
    for p in lora_parameters(model):
        p.requires_grad_(True)
    _step(model, images)
    remove_lora(model)
    for (k, a), b in zip(
        model.clip.state_dict().items(), base_model.clip.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    with pytest.raises(HeadConfigError, match="nothing to merge"):
        merge_lora(model)


def test_adapters_round_trip_through_safetensors(model, base_model, images, tmp_path) -> None:
    cfg = LoRAConfig(rank=3, alpha=6, dropout=0.1, targets=("q", "v", "c_proj"), blocks=(-1,))
    apply_finetune_mode(model, "lora", lora=cfg)
    _step(model, images)
    with torch.no_grad():
        expected = model.encode_image(images)
    path = tmp_path / "adapters.safetensors"
    save_lora(model, path, metadata={"encoder": "weights:abc"})
    assert path.stat().st_size < 20_000  # adapters only, not the encoder
    config, tensors, meta = read_lora(path)
    assert config == cfg and meta["encoder"] == "weights:abc"
    assert set(tensors) == set(lora_state_dict(model))
    assert all(k.startswith("transformer.resblocks.1.") for k in tensors)
    fresh = copy.deepcopy(base_model)
    meta = load_lora(fresh, path)
    assert meta["format"] == "msclip-lora"
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.encode_image(images), expected)


def test_adapter_files_that_do_not_fit_are_refused(model, base_model, tmp_path) -> None:
    apply_lora(model, LoRAConfig(rank=2))
    good = tmp_path / "good.safetensors"
    save_lora(model, good)
    _, tensors, meta = read_lora(good)
    key = next(iter(tensors))
    bad_shape = dict(tensors)
    bad_shape[key] = torch.zeros(5, 5)
    save_file(bad_shape, tmp_path / "shape.safetensors", metadata=meta)
    fresh = copy.deepcopy(base_model)
    with pytest.raises(AdapterError, match=r"do not fit the model: .*file \(5, 5\) vs model"):
        load_lora(fresh, tmp_path / "shape.safetensors")
    assert not has_lora(fresh)  # nothing half-attached
    save_file(tensors, tmp_path / "wide.safetensors", metadata={**meta, "width": "768"})
    with pytest.raises(AdapterError, match="width 768 and 2 blocks; this model has width 64"):
        load_lora(fresh, tmp_path / "wide.safetensors")
    save_file(tensors, tmp_path / "other.safetensors", metadata={"format": "something"})
    with pytest.raises(AdapterError, match="not an msclip LoRA adapter file"):
        read_lora(tmp_path / "other.safetensors")
    with pytest.raises(AdapterError, match="not found"):
        read_lora(tmp_path / "missing.safetensors")
    with pytest.raises(AdapterError, match="already has LoRA adapters"):
        load_lora(model, good)


def test_dropout_acts_in_training_only(model, images) -> None:
    apply_finetune_mode(model, "lora", lora=LoRAConfig(rank=4, dropout=0.5))
    _step(model, images)  # B non-zero
    model.train()
    torch.manual_seed(0)
    a = model.encode_image(images)
    b = model.encode_image(images)
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), model.encode_image(images))


def test_bad_configs() -> None:
    with pytest.raises(HeadConfigError, match="rank must be an integer >= 1; got 0"):
        LoRAConfig(rank=0)
    with pytest.raises(HeadConfigError, match=r"targets \['q', 'out'\] are invalid"):
        LoRAConfig(targets=("q", "out"))
    with pytest.raises(HeadConfigError, match=r"dropout must lie in \[0, 1\); got 1.0"):
        LoRAConfig(dropout=1.0)
    for alpha in (0.0, -16.0, float("nan")):  # alpha 0 makes every update 0: nothing trains
        with pytest.raises(HeadConfigError, match="alpha must be a positive number"):
            LoRAConfig(alpha=alpha)
    model = msclip.create_model("msclip-tiny")
    with pytest.raises(HeadConfigError, match=r"block 5 is out of range .* 2 blocks"):
        apply_lora(model, LoRAConfig(blocks=(5,)))
    apply_lora(model)
    with pytest.raises(HeadConfigError, match="already attached"):
        apply_lora(model)
    assert LoRAConfig.from_dict(LoRAConfig(blocks=(0,)).to_dict()) == LoRAConfig(blocks=(0,))


def test_adapters_attached_and_removed_keep_the_models_identity(base_model, images, tmp_path):
    """Attaching, training and removing adapters leaves the base weights as they are: the model
    keeps its file's identity (heads bound to it, caches and indexes keyed on it still fit);
    merged adapters are other weights and give it a new one."""
    path = msclip.save_checkpoint(base_model, tmp_path / "base.safetensors")
    model = msclip.create_model(path, precision="fp32")
    sha, fp = model.checkpoint_sha256, model.fingerprint()
    apply_lora(model, LoRAConfig(rank=2))
    _step(model, images.float(), steps=2)
    assert model.checkpoint_sha256 == sha and model.fingerprint() == fp
    remove_lora(model)
    assert model.checkpoint_sha256 == sha and model.fingerprint() == fp
    assert model.checkpoint_path == str(path)
    apply_lora(model, LoRAConfig(rank=2))
    _step(model, images.float(), steps=2)
    merge_lora(model)
    assert model.checkpoint_sha256.startswith("weights:") and model.fingerprint() != fp


def test_an_identity_first_read_with_adapters_attached_is_the_base_models(base_model):
    """Random weights have no file hash: their identity is the hash of the weights, taken before
    adapters wrap them (the wrapped state holds the adapters' tensors too)."""
    model = copy.deepcopy(base_model)
    model.checkpoint_sha256 = None  # not read yet
    fp = copy.deepcopy(base_model).fingerprint()
    apply_lora(model, LoRAConfig(rank=2))
    assert model.fingerprint() == fp
    remove_lora(model)
    assert model.fingerprint() == fp
