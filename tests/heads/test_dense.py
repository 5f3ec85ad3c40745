"""Encoder taps, the multi-task dense model, dense losses and class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from affine import Affine

import msclip
from msclip.errors import DecoderError, LabelError
from msclip.heads.dense import (
    DenseModel,
    DenseTask,
    build_dense_model,
    encoder_taps,
    pad_to_multiple,
)
from msclip.heads.losses import (
    ClassCounter,
    MultiTaskLoss,
    RegressionLoss,
    SegmentationLoss,
    class_weights_from_counts,
    compute_class_weights,
    resolve_class_weights,
)
from msclip.model import default_taps, resample_pos_embed


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny").eval()


def _images(model, b=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, len(model.bands), h, w, generator=g)


# -- encoder access ---------------------------------------------------------------------------
def test_taps_equal_openclip_intermediates_and_forward_features(tiny):
    x = _images(tiny)
    taps = encoder_taps(tiny, x, [0, -1])
    assert [t.shape for t in taps] == [(2, 64, 4, 4)] * 2
    ref = tiny.clip.visual.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for t, r in zip(taps, ref["image_intermediates"]):
        assert torch.equal(t, r)
    nlc = tiny.forward_features(x, layers=[1])[0]  # [B, N, C]
    assert torch.equal(taps[1], nlc.reshape(2, 4, 4, 64).permute(0, 3, 1, 2))


def test_taps_at_another_grid_resample_the_positional_embedding(tiny):
    pos = tiny.clip.visual.positional_embedding
    assert resample_pos_embed(pos, (4, 4), (4, 4)) is pos
    grown = resample_pos_embed(pos, (4, 4), (6, 3))
    assert grown.shape == (1 + 18, 64) and torch.equal(grown[0], pos[0])
    # The generic path (our token embedding + OpenCLIP's blocks) equals OpenCLIP's own path at
    # the trained size, so other sizes only differ by the resampled positions.
    x = _images(tiny)
    tokens = tiny.embed_tokens(x)
    _, inter = tiny.clip.visual.transformer.forward_intermediates(tokens, indices=[1])
    ref = encoder_taps(tiny, x, [1])[0]
    assert torch.equal(inter[0][:, 1:].reshape(2, 4, 4, 64).permute(0, 3, 1, 2), ref)
    assert encoder_taps(tiny, _images(tiny, h=48, w=24), [1])[0].shape == (2, 64, 6, 3)


def test_taps_refuse_bad_layers_and_unpadded_sizes(tiny):
    x = _images(tiny)
    with pytest.raises(DecoderError, match=r"layers \[2\] do not name blocks of this 2-block"):
        encoder_taps(tiny, x, [2])
    with pytest.raises(DecoderError, match="name a block twice"):
        encoder_taps(tiny, x, [1, -1])
    with pytest.raises(DecoderError, match="not a positive multiple of the patch size 8"):
        encoder_taps(tiny, _images(tiny, h=30), [1])
    # the dense model's default taps are the encoder's (ViT-B: pangaea-bench's 3, 5, 7, 11)
    assert default_taps(12) == (3, 5, 7, 11)
    assert default_taps(4) == (0, 1, 2, 3)
    assert default_taps(2) == (0, 1)


def test_padding_modes():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(1, 2, 5, 3)
    y, size = pad_to_multiple(x, 4, "reflect")
    assert size == (5, 3) and y.shape == (1, 2, 8, 4)
    assert torch.equal(y[..., :5, :3], x)
    assert torch.equal(y[..., 5, :3], x[..., 3, :])  # mirror without repeating the edge
    z, _ = pad_to_multiple(torch.ones(1, 1, 2, 2), 8, "reflect")  # too small to mirror
    assert torch.equal(z, torch.ones(1, 1, 8, 8))
    c, _ = pad_to_multiple(x, 4, "constant")
    assert c[..., 5:, :].abs().sum() == 0
    assert pad_to_multiple(x[..., :4, :4], 4)[0] is not None
    with pytest.raises(DecoderError, match="pad mode"):
        pad_to_multiple(x, 4, "wrap")


# -- the dense model ---------------------------------------------------------------------------
def test_multi_task_outputs_from_one_encoder_pass(tiny, monkeypatch):
    torch.manual_seed(0)
    tasks = [
        DenseTask("landcover", "segmentation", 6, "upernet", {"channels": 16}),
        DenseTask("height", "regression", 1, "segformer", {"embed_dim": 16}, loss_weight=0.5),
        DenseTask("fuel", "regression", 2, "linear"),
    ]
    model = build_dense_model(tiny, tasks).eval()
    assert model.layers == [0, 1] and model.task_names == ["landcover", "height", "fuel"]
    calls = []
    real = msclip.heads.dense.encoder_taps

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(msclip.heads.dense, "encoder_taps", counting)
    out = model(_images(tiny, h=37, w=50))  # not multiples of the patch size 8
    assert len(calls) == 1
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "landcover": (2, 6, 37, 50), "height": (2, 1, 37, 50), "fuel": (2, 2, 37, 50),
    }  # fmt: skip
    # The cropped output is the top-left of the padded image's output.
    x = _images(tiny, h=37, w=50)
    padded, _ = pad_to_multiple(x, 8, "reflect")
    full = model(padded, tasks=["fuel"])["fuel"]
    assert torch.allclose(out["fuel"], full[..., :37, :50], atol=1e-6)
    assert model.predict(x, "height").shape == (2, 1, 37, 50)


def test_an_encoder_under_autocast_feeds_float32_heads(tiny):
    """A fine-tuning run's bf16 over float32 weights that train: the encoder computes its taps in
    bf16 by autocast (DenseModel.autocast), its weights and the heads stay float32, and the
    gradient reaches both."""
    import copy

    enc = copy.deepcopy(tiny)
    model = build_dense_model(enc, DenseTask("seg", num_outputs=3), layers=[-1]).train()
    x = _images(enc)
    plain = model.encode(x)
    model.autocast = torch.bfloat16
    taps = model.encode(x)
    assert taps[0].dtype == torch.bfloat16 and plain[0].dtype == torch.float32
    out = model(x)["seg"]
    assert out.dtype == torch.float32
    out.sum().backward()
    last = enc.clip.visual.transformer.resblocks[-1]
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in last.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())


def test_frozen_encoder_runs_without_grad_and_trainable_one_gets_gradients(tiny):
    import copy

    enc = copy.deepcopy(tiny)
    enc.requires_grad_(False)
    model = build_dense_model(enc, DenseTask("seg", num_outputs=3), layers=[-1]).train()
    assert not model.encoder_trainable
    taps = model.encode(_images(enc))
    assert not taps[0].requires_grad
    model(_images(enc))["seg"].sum().backward()
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())

    enc.clip.visual.transformer.resblocks[-1].requires_grad_(True)
    assert model.encoder_trainable
    model.zero_grad()
    model(_images(enc))["seg"].sum().backward()
    last = enc.clip.visual.transformer.resblocks[-1]
    assert all(p.grad is not None for p in last.parameters())
    assert enc.clip.visual.conv1.weight.grad is None


def test_input_bands_are_adapted_by_name(tiny):
    torch.manual_seed(0)
    model = build_dense_model(tiny, DenseTask("seg", num_outputs=3)).eval()
    x = _images(tiny)
    order = list(range(len(tiny.bands)))[::-1]
    shuffled = x[:, order]
    names = [tiny.bands[i] for i in order]
    assert torch.equal(model(shuffled, bands=names)["seg"], model(x)["seg"])
    # A 3-band RGB input still runs (the other model bands are mean-filled).
    rgb = model(x[:, [2, 1, 0]], bands=["B04", "B03", "B02"])["seg"]
    assert rgb.shape == (2, 3, 32, 32)


def test_dense_model_refuses_bad_configuration(tiny):
    with pytest.raises(DecoderError, match="kind must be one of"):
        DenseTask("x", kind="detection")
    with pytest.raises(DecoderError, match="each with its own name"):
        build_dense_model(tiny, [DenseTask("a"), DenseTask("a")])
    with pytest.raises(DecoderError, match="have no head"):
        DenseModel(tiny, [1], {"a": torch.nn.Identity()}, tasks=[DenseTask("b")])
    model = build_dense_model(tiny, DenseTask("seg", num_outputs=3))
    with pytest.raises(DecoderError, match="unknown tasks"):
        model(_images(tiny), tasks=["depth"])


# -- losses ------------------------------------------------------------------------------------
def test_cross_entropy_honours_ignore_index_and_class_weights():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    labels[0, :2] = 255
    loss = SegmentationLoss(4, ignore_index=255)(logits, labels)
    flat = logits.permute(0, 2, 3, 1).reshape(-1, 4)
    y = labels.reshape(-1)
    keep = y != 255
    manual = -flat[keep].log_softmax(-1)[torch.arange(int(keep.sum())), y[keep]].mean()
    assert torch.allclose(loss, manual)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    weighted = SegmentationLoss(4, 255, w)(logits, labels)
    per = -flat[keep].log_softmax(-1)[torch.arange(int(keep.sum())), y[keep]]
    assert torch.allclose(weighted, (per * w[y[keep]]).sum() / w[y[keep]].sum())
    # Every pixel ignored: zero loss with a (zero) gradient, not NaN.
    logits.requires_grad_(True)
    empty = SegmentationLoss(4)(logits, torch.full((2, 5, 6), 255))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(LabelError, match="outside the 4 classes"):
        SegmentationLoss(4)(logits, torch.full((2, 5, 6), 4))


def test_regression_losses_mask_nodata_and_scale_targets():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 1, 4, 4, generator=g)
    target = torch.rand(2, 4, 4, generator=g) * 30
    target[0, 0, :2] = -9999.0
    target[1, 3, 3] = float("nan")
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[1, 0, 0] = False
    valid = (target != -9999.0) & torch.isfinite(target) & mask
    p, t = pred[:, 0][valid], target[valid] * 0.1
    for kind, ref in (("mse", F.mse_loss(p, t)), ("l1", F.l1_loss(p, t)),
                      ("huber", F.huber_loss(p, t, delta=0.5))):  # fmt: skip
        loss = RegressionLoss(kind, nodata=-9999.0, scale=0.1, huber_delta=0.5)
        assert torch.allclose(loss(pred, target, mask), ref), kind
    all_nodata = RegressionLoss("mse", nodata=-1.0)(pred, torch.full((2, 4, 4), -1.0))
    assert all_nodata.item() == 0.0
    with pytest.raises(LabelError, match="do not match"):
        RegressionLoss()(pred, torch.zeros(2, 3, 3))
    with pytest.raises(LabelError, match="one of mse, l1, huber"):
        RegressionLoss("l3")


def test_multi_task_loss_is_the_weighted_sum():
    g = torch.Generator().manual_seed(1)
    tasks = [DenseTask("seg", "segmentation", 3, loss_weight=2.0),
             DenseTask("h", "regression", 1, loss="l1", loss_weight=0.25, nodata=-1.0)]  # fmt: skip
    loss = MultiTaskLoss.from_tasks(tasks)
    out = {"seg": torch.randn(2, 3, 4, 4, generator=g), "h": torch.randn(2, 1, 4, 4, generator=g)}
    tgt = {"seg": torch.randint(0, 3, (2, 4, 4), generator=g), "h": torch.rand(2, 4, 4)}
    total, parts = loss(out, tgt)
    ce = F.cross_entropy(out["seg"], tgt["seg"])
    l1 = F.l1_loss(out["h"][:, 0], tgt["h"])
    assert torch.allclose(total, 2.0 * ce + 0.25 * l1)
    assert parts == pytest.approx({"seg": ce.item(), "h": l1.item()})
    with pytest.raises(LabelError, match="lack outputs or targets"):
        loss({"seg": out["seg"]}, tgt)


# -- class weights -----------------------------------------------------------------------------
def test_auto_class_weights_against_a_hand_count(tmp_path):
    a = np.array([[0, 0, 0, 1], [1, 255, 255, 2]])  # class 0: 3, 1: 2, 2: 1
    b = np.array([[0, 0, 0, 0], [0, 0, 1, 1]])  # class 0: 6, 1: 2, 2: 0
    # counts 9, 4, 1 of N = 14 pixels, K = 4 classes (class 3 never occurs)
    with pytest.warns(UserWarning, match=r"classes \[3\] have no labelled pixel"):
        w = compute_class_weights([a, torch.as_tensor(b)], 4, "auto")
    assert w == pytest.approx([14 / (4 * 9), 14 / (4 * 4), 14 / (4 * 1), 0.0])
    # Median frequency: f_c = n_c / pixels of the images containing c.
    # f0 = 9 / (6 + 8), f1 = 4 / (6 + 8), f2 = 1 / 6; median = f1.
    f = np.array([9 / 14, 4 / 14, 1 / 6])
    with pytest.warns(UserWarning):
        med = compute_class_weights([a, b], 4, "median")
    assert med[:3] == pytest.approx(np.median(f) / f) and med[3] == 0.0
    # The same counts from label rasters, read block by block, and from (image, label) pairs.
    paths = []
    for i, arr in enumerate((a, b)):
        p = tmp_path / f"label{i}.tif"
        msclip.write_geotiff(p, arr.astype(np.uint8), crs="EPSG:32632",
                             transform=Affine(10, 0, 0, 0, -10, 0))  # fmt: skip
        paths.append(p)
    counter = ClassCounter(4)
    for p in paths:
        counter.update_file(p)
    assert counter.counts.tolist() == [9, 4, 1, 0] and counter.images == 2
    with pytest.warns(UserWarning):
        pairs = compute_class_weights([(None, a), (None, b)], 4, "inverse")
    assert pairs == pytest.approx(w)


def test_class_weight_options():
    assert resolve_class_weights(None, 3) is None
    assert resolve_class_weights("1, 2,0.5", 3).tolist() == [1.0, 2.0, 0.5]
    assert resolve_class_weights([1, 1, 1], 3).dtype == torch.float32
    labels = [np.array([[0, 1], [1, 2]])]
    assert resolve_class_weights("auto", 3, labels).tolist() == pytest.approx([4 / 3, 2 / 3, 4 / 3])
    with pytest.raises(
        LabelError,
        match=r"2 class weights given for 3 classes; give one per "
        r"class, in the classes' order, or a method \(auto, inverse, median\)",
    ):
        resolve_class_weights([1, 2], 3)
    with pytest.raises(LabelError, match="neither auto"):
        resolve_class_weights("balanced", 3)
    with pytest.raises(LabelError, match="computed from labels"):
        resolve_class_weights("median", 3)
    with pytest.raises(LabelError, match="outside the 3 classes"):
        compute_class_weights([np.array([[0, 7]])], 3)
    with pytest.raises(LabelError, match="no labelled pixel"):
        class_weights_from_counts([0, 0], "auto")
