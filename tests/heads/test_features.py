"""Feature taps of the image tower and the on-disk feature cache of frozen-encoder work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import msclip
from msclip.heads.features import FeatureCache, FeatureSpec, extract_features
from msclip.model import default_taps


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny").eval()


@pytest.fixture
def files(make_geotiff):
    return [str(make_geotiff(f"f{i}.tif", count=10, size=(32, 32), seed=i)[0]) for i in range(7)]


def test_default_taps_per_architecture(tiny):
    assert default_taps(12) == (3, 5, 7, 11)  # ViT-B, as pangaea-bench taps it
    assert default_taps(24) == (7, 11, 15, 23)  # ViT-L
    assert default_taps(4) == (0, 1, 2, 3) and default_taps(8) == (1, 3, 5, 7)
    assert tiny.taps == (0, 1) and tiny.config.taps == (0, 1)  # recorded in the config
    assert msclip.model.MSCLIPConfig.from_dict(tiny.config.to_dict()).taps == (0, 1)


def test_forward_intermediates_maps_pooling_and_early_stop(tiny, monkeypatch):
    x = torch.randn(3, 10, 32, 32)
    with torch.no_grad():
        out = tiny.forward_intermediates(x, layers=[-1, 0], pool="cls")
        assert out.layers == (1, 0)
        assert [m.shape for m in out.maps] == [(3, 64, 4, 4)] * 2
        mean = tiny.forward_intermediates(x, layers=[0], pool="mean")
        torch.testing.assert_close(mean.pooled[0], mean.maps[0].mean(dim=(2, 3)))
        # the last block's class token after ln_post, projected, is the image embedding
        last = tiny.forward_intermediates(x, layers=[-1], pool="cls", norm=True)
        torch.testing.assert_close(
            last.pooled[0] @ tiny.clip.visual.proj, tiny.encode_image(x), atol=1e-5, rtol=1e-5
        )

        # stopping after the deepest requested block: block 1 never runs for a tap of block 0
        def boom(*a, **k):
            raise AssertionError("block 1 must not run")

        monkeypatch.setattr(tiny.clip.visual.transformer.resblocks[1], "forward", boom)
        tiny.forward_intermediates(x, layers=[0])
    with pytest.raises(ValueError, match="2-block image tower"):
        tiny.forward_intermediates(x, layers=[2])
    with pytest.raises(ValueError, match="pool"):
        tiny.forward_intermediates(x, pool="max")


def test_taps_work_for_other_band_sets(tiny):
    x = torch.randn(2, 10, 32, 32)
    names = list(tiny.bands)
    perm = [3, 1, 0, 2, 4, 5, 6, 7, 8, 9]
    with torch.no_grad():
        a = tiny.forward_intermediates(x, layers=[-1]).pooled[0]
        b = tiny.forward_intermediates(x[:, perm], layers=[-1], bands=[names[i] for i in perm])
    torch.testing.assert_close(a, b.pooled[0])


def test_feature_specs(tiny, files):
    pre = tiny.preprocess()
    emb, ok = extract_features(tiny, pre, files, FeatureSpec("embedding"))
    assert emb.shape == (7, tiny.embed_dim) and ok.all()
    with torch.no_grad():
        direct = tiny.encode_image(torch.stack([pre(f) for f in files]))
    np.testing.assert_allclose(emb, direct.numpy(), atol=1e-5)
    cls, _ = extract_features(tiny, pre, files, FeatureSpec("cls", layers=(0, -1)))
    assert cls.shape == (7, 2 * tiny.width)
    with pytest.raises(msclip.errors.HeadConfigError):
        FeatureSpec("max")


def test_cache_encodes_once_and_resumes_after_a_kill(tiny, files, tmp_path, monkeypatch):
    pre = tiny.preprocess()
    spec = FeatureSpec("cls")
    reference, _ = extract_features(tiny, pre, files, spec)
    calls = {"n": 0}
    real = tiny.forward_intermediates

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "forward_intermediates", dying)
    cache = FeatureCache(tmp_path, tiny, pre, files, spec)
    with pytest.raises(KeyboardInterrupt):
        cache.extract(batch_size=3)
    assert cache.status() == {"done": 3, "bad": 0, "todo": 4}
    monkeypatch.setattr(tiny, "forward_intermediates", real)
    seen = []

    def counting(images, *args, **kwargs):
        seen.append(images.shape[0])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(tiny, "forward_intermediates", counting)
    feats, ok = FeatureCache(tmp_path, tiny, pre, files, spec).extract(batch_size=3)
    assert sum(seen) == 4 and ok.all()  # only the four images not done yet
    assert feats.dtype == np.float16
    np.testing.assert_allclose(np.asarray(feats, np.float32), reference, rtol=2e-3, atol=2e-3)
    seen.clear()
    FeatureCache(tmp_path, tiny, pre, files, spec).extract()
    assert seen == []  # the encoder runs once per image, not once per use


def test_cache_key_and_bad_images(tiny, files, tmp_path):
    pre = tiny.preprocess()
    a = FeatureCache(tmp_path, tiny, pre, files, FeatureSpec("cls"))
    assert a.key != FeatureCache(tmp_path, tiny, pre, files, FeatureSpec("mean")).key
    assert a.key != FeatureCache(tmp_path, tiny, pre, files[:-1], FeatureSpec("cls")).key
    other = msclip.create_model("msclip-tiny")
    assert a.key != FeatureCache(tmp_path, other, other.preprocess(), files).key
    import msclip.spectral.adapt as adapt  # features of inputs read by older rules are not reused

    rules = adapt.INPUT_RULES
    try:
        adapt.INPUT_RULES = rules + 1
        assert a.key != FeatureCache(tmp_path, tiny, pre, files, FeatureSpec("cls")).key
    finally:
        adapt.INPUT_RULES = rules
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"junk")
    feats, ok = FeatureCache(tmp_path, tiny, pre, [*files, str(broken)]).extract()
    assert ok.tolist() == [True] * 7 + [False] and not np.asarray(feats[7]).any()


def test_images_held_in_memory_are_keyed_by_their_values(tiny, tmp_path):
    from msclip.io import Raster

    rng = np.random.default_rng(0)
    a, b = (rng.integers(1, 5000, (10, 32, 32)).astype(np.float32) for _ in range(2))
    pre = tiny.preprocess()
    for wrap in (np.asarray, torch.from_numpy, lambda x: Raster(x, tiny.bands)):
        cached_a, _ = extract_features(tiny, pre, [wrap(a)], cache_dir=tmp_path)
        cached_b, _ = extract_features(tiny, pre, [wrap(b)], cache_dir=tmp_path)
        fresh_b, _ = extract_features(tiny, pre, [wrap(b)])
        # arrays of one shape and dtype: b's features, not those cached for a
        np.testing.assert_allclose(cached_b, fresh_b, atol=1e-2)
        assert np.abs(np.asarray(cached_a) - np.asarray(cached_b)).max() > 0.1
    key = FeatureCache(tmp_path, tiny, pre, [a]).key
    assert key == FeatureCache(tmp_path, tiny, pre, [a.copy()]).key  # the same values: reused


def test_changed_and_repaired_images_are_encoded_again(tiny, files, tmp_path, monkeypatch):
    import os
    import shutil

    pre = tiny.preprocess()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"junk")
    items = [*files, str(broken)]
    before, ok = FeatureCache(tmp_path, tiny, pre, items).extract()
    before = np.array(before)
    assert ok.tolist() == [True] * 7 + [False]
    shutil.copyfile(files[1], files[0])  # an image replaced by another
    os.utime(files[0], ns=(1, 10**18))
    shutil.copyfile(files[2], broken)  # the unreadable one repaired
    seen = []
    real = tiny.forward_intermediates

    def counting(images, *args, **kwargs):
        seen.append(images.shape[0])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(tiny, "forward_intermediates", counting)
    feats, ok = FeatureCache(tmp_path, tiny, pre, items).extract()
    assert sum(seen) == 2 and ok.all()  # only the two changed files
    np.testing.assert_array_equal(np.asarray(feats[0]), before[1])
    np.testing.assert_array_equal(np.asarray(feats[7]), before[2])
    np.testing.assert_array_equal(np.asarray(feats[3:7]), before[3:7])


def test_a_folder_item_changes_its_stamp_when_a_file_in_it_is_rewritten(tmp_path):
    """Items read from a folder (a BigEarthNet patch: one file per band) are stamped by the files
    in it: a band file rewritten in place changes no folder time, yet the cached features of
    that item must be encoded again."""
    import os

    from msclip.heads.features import _stamps

    patch = tmp_path / "S2A_patch_1"
    patch.mkdir()
    for b in ("B02", "B03"):
        (patch / f"S2A_patch_1_{b}.tif").write_bytes(b"x" * 10)
        os.utime(patch / f"S2A_patch_1_{b}.tif", ns=(1, 10**18 - 5))
    os.utime(patch, ns=(1, 10**18))
    before = _stamps([str(patch)])
    assert before.tolist() == [[20, 10**18]]
    band = patch / "S2A_patch_1_B03.tif"
    with open(band, "r+b") as f:  # in place: the folder's own time does not move
        f.write(b"y" * 10)
    os.utime(band, ns=(1, 10**18 + 5))
    os.utime(patch, ns=(1, 10**18))
    assert _stamps([str(patch)]).tolist() == [[20, 10**18 + 5]]
