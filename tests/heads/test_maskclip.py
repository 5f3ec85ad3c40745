"""Zero-shot dense maps: the value path against hand computations, shapes, scene prediction."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine

import msclip
from msclip.errors import DecoderError
from msclip.heads.maskclip import MaskCLIP, dense_clip_features, last_block_value_tokens
from msclip.heads.scene_predict import predict_scene


@pytest.fixture(scope="module")
def demo():
    return msclip.create_model("msclip-demo", pretrained=True).eval()


@pytest.fixture(scope="module")
def classifier(demo):
    from msclip.zero_shot import build_classifier

    tok = msclip.get_tokenizer(demo)
    names = ["forest", "water", "urban area", "cropland"]
    return build_classifier(demo, tok, names, ["a satellite image of {c}."])


def _images(model, b=2, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, len(model.bands), h, w, generator=g)


@torch.no_grad()
def test_value_variant_is_the_hand_computed_value_path(demo):
    v = demo.clip.visual
    blk = v.transformer.resblocks[-1]
    x = torch.randn(2, 5, 128)
    d = 128
    w_v, b_v = blk.attn.in_proj_weight[2 * d :], blk.attn.in_proj_bias[2 * d :]
    ln = F.layer_norm(x, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    hand = (ln @ w_v.T + b_v) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
    assert torch.allclose(last_block_value_tokens(blk, x, "value"), hand, atol=1e-5)
    # ... and the whole dense feature: blocks before the last, value path, ln_post, projection.
    img = _images(demo, b=1)
    tokens = demo.embed_tokens(img)
    for b in v.transformer.resblocks[:-1]:
        tokens = b(tokens)
    patch = tokens[:, 1:]
    ln = F.layer_norm(patch, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    val = (ln @ w_v.T + b_v) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
    emb = F.normalize(v.ln_post(val) @ v.proj, dim=-1)
    got = dense_clip_features(demo, img, "value")
    assert torch.allclose(got, emb.reshape(1, 8, 8, -1).permute(0, 3, 1, 2), atol=1e-5)


@torch.no_grad()
def test_identical_tokens_make_the_maskclip_path_equal_the_pooled_embedding(demo):
    # When every token entering the last block is the same vector, attention returns its value
    # whatever the queries and keys: the value path then IS the block, and each patch feature
    # equals the model's own (class-token) image embedding.
    v = demo.clip.visual
    blk = v.transformer.resblocks[-1]
    token = torch.randn(1, 1, 128)
    x = token.expand(2, 65, 128).contiguous()
    full = blk(x)
    path = last_block_value_tokens(blk, x, "maskclip")
    assert torch.allclose(path, full, atol=1e-5)
    pooled = v.ln_post(full[:, 0]) @ v.proj
    dense = v.ln_post(path[:, 1:]) @ v.proj
    assert torch.allclose(dense, pooled[:, None].expand_as(dense), atol=1e-5)
    # The value-only variant drops the residual and the MLP: a different map.
    assert not torch.allclose(last_block_value_tokens(blk, x, "value"), full, atol=1e-3)


@torch.no_grad()
def test_maskclip_logits_shapes_and_scale(demo, classifier):
    head = MaskCLIP(demo, classifier)
    assert head.num_classes == 4 and head.image_size == 64
    x = _images(demo, h=61, w=70)  # not multiples of the patch size 8
    logits = head(x)
    assert logits.shape == (2, 4, 61, 70)
    assert logits.abs().max() <= 100.0 + 1e-4  # 100 x cosine
    patch = head.patch_logits(x)
    assert patch.shape == (2, 4, 8, 9)
    nearest = MaskCLIP(demo, classifier, upsample="nearest")(x)
    assert torch.equal(nearest[:, :, :8, :8], patch[:, :, :1, :1].expand(2, 4, 8, 8))
    # Per patch: the cosine of the L2-normalised dense feature with each class embedding.
    feats = dense_clip_features(demo, F.pad(x, (0, 2, 0, 3), mode="reflect"))
    cos = torch.einsum("bdhw,kd->bkhw", feats, F.normalize(classifier, dim=-1))
    assert torch.allclose(patch, 100 * cos, atol=1e-4)
    # Bands named in another order give the same map.
    order = list(range(len(demo.bands)))[::-1]
    shuffled = head(x[:, order], bands=[demo.bands[i] for i in order])
    assert torch.allclose(shuffled, logits, atol=1e-5)


def test_maskclip_refuses_bad_settings(demo, classifier):
    with pytest.raises(DecoderError, match="variant must be one of"):
        MaskCLIP(demo, classifier, variant="clearclip")
    with pytest.raises(DecoderError, match=r"classifier must be \[K, 64\]"):
        MaskCLIP(demo, torch.randn(3, 10))
    with pytest.raises(DecoderError, match="multiples of the patch size"):
        dense_clip_features(demo, _images(demo, h=60))


@torch.no_grad()
def test_maskclip_on_an_int8_model_is_refused_as_such(classifier):
    """An int8 tower has no float attention weights: the error said the architecture was not
    OpenCLIP's standard vision transformer, not that the precision was the cause."""
    from msclip.errors import PrecisionError

    int8 = msclip.create_model("msclip-demo", pretrained=True, precision="int8")
    with pytest.raises(PrecisionError, match=r"int8.*precision 'auto' or 'fp32'"):
        MaskCLIP(int8, classifier)
    with pytest.raises(PrecisionError, match=r"int8.*precision 'auto' or 'fp32'"):
        dense_clip_features(int8, _images(int8))


def test_maskclip_is_a_scene_predictor(tmp_path, demo, classifier):
    r = np.random.default_rng(0)
    data = r.integers(1, 6000, size=(12, 90, 75)).astype(np.uint16)
    path = tmp_path / "scene.tif"
    transform = Affine(10, 0, 500000, 0, -10, 5000000)
    msclip.write_geotiff(path, data, crs="EPSG:32632", transform=transform)
    head = MaskCLIP(demo, classifier).eval()
    res = predict_scene(path, tmp_path / "zs.tif", head, demo, tile_size=64, overlap=16,
                        progress=False)  # fmt: skip
    with rasterio.open(res.path) as ds:
        out = ds.read()
        assert ds.transform == transform and ds.count == 2
    assert res.num_outputs == 4 and out.shape == (2, 90, 75)
    assert out[0].max() < 4 and out[1].min() > 0 and out[1].max() <= 100
