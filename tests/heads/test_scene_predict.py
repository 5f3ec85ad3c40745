"""Streaming scene prediction on small generated rasters, and the strip writer behind it."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from support.scenes import damage_block, write_tiled_scene

import msclip
from msclip.errors import PredictorOutputError, RasterReadError, RasterWriteError, TilingError
from msclip.heads.dense import DenseTask, build_dense_model
from msclip.heads.scene_predict import (
    ScenePreprocess,
    blend_window,
    predict_scene,
    tile_starts,
)
from msclip.io import GeoTiffStripWriter

H, W = 300, 257
TRANSFORM = Affine(10, 0, 500000, 0, -10, 5000000)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny").eval()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 12-band uint16 scene of 300 x 257 pixels with a nodata corner (nodata = 0)."""
    r = np.random.default_rng(0)
    data = r.integers(1, 6000, size=(12, H, W)).astype(np.uint16)
    data[:, :70, :120] = 0  # every band nodata: covers whole tiles and parts of others
    data[3, 100:110, 100:110] = 0  # one band missing only: still predicted
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    msclip.write_geotiff(path, data, crs="EPSG:32632", transform=TRANSFORM, nodata=0)
    return path, data


def _pointwise(n_in: int, k: int = 4) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Conv2d(n_in, k, 1).eval()


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds.descriptions


def test_tile_starts_and_blend_window():
    assert tile_starts(300, 64, 48) == [0, 48, 96, 144, 192, 236]
    assert tile_starts(64, 64, 48) == [0] and tile_starts(20, 64, 48) == [0]
    assert tile_starts(112, 64, 48) == [0, 48]
    for n, t, s in ((300, 64, 48), (257, 32, 32), (1000, 100, 7)):
        starts = tile_starts(n, t, s)
        covered = np.zeros(n, bool)
        for a in starts:
            covered[a : a + t] = True
        assert covered.all() and starts[-1] + t == n  # every edge pixel, nothing outside
    w = blend_window(8)
    assert np.allclose(w, w[::-1]) and w.min() > 0 and w.argmax() in (3, 4)
    # Hann windows at half overlap sum to one: the blend is a partition of unity there.
    assert np.allclose(blend_window(8)[4:] + blend_window(8)[:4], 1.0)
    assert np.array_equal(blend_window(5, "uniform"), np.ones(5))
    with pytest.raises(TilingError, match="blend must be one of"):
        blend_window(8, "gaussian")


def test_tiled_equals_untiled_for_a_pointwise_model(tmp_path, scene, tiny):
    path, data = scene
    conv = _pointwise(len(tiny.bands))
    prep = ScenePreprocess.from_model(tiny)
    bands = msclip.read_raster(path).bands
    with torch.no_grad():
        ref = conv(prep.with_input(bands, 0)(data)[None])[0].numpy()
    valid = ~(data == 0).all(axis=0)
    for overlap, blend in ((16, "cosine"), (0, "cosine"), (23, "uniform")):
        out = tmp_path / f"reg_{overlap}_{blend}.tif"
        res = predict_scene(path, out, conv, prep, task="regression", tile_size=64,
                            overlap=overlap, blend=blend, batch_size=5, progress=False)  # fmt: skip
        got, profile, names = _read(out)
        assert got.shape == (4, H, W) and names == ("value_0", "value_1", "value_2", "value_3")
        np.testing.assert_allclose(got[:, valid], ref[:, valid], rtol=0, atol=2e-5)
        assert np.isnan(got[:, ~valid]).all()
        assert res.tiles_run < res.tiles  # the all-nodata tiles were not run
    seg = tmp_path / "seg.tif"
    predict_scene(path, seg, conv, prep, tile_size=64, overlap=16, batch_size=3, progress=False)
    got, profile, names = _read(seg)
    probs = torch.as_tensor(ref).softmax(0).numpy()
    assert names == ("class", "confidence") and profile["dtype"] == "uint8"
    assert np.array_equal(got[0][valid], probs.argmax(0)[valid])
    assert np.abs(got[1][valid].astype(int) - np.rint(probs.max(0) * 100)[valid]).max() <= 1
    assert (got[:, ~valid] == 255).all() and profile["nodata"] == 255
    assert data[3, 105, 105] == 0 and got[0, 105, 105] != 255  # partly missing: predicted


def test_output_is_georeferenced_tiled_and_identical_for_batch_sizes_1_and_16(
    tmp_path, scene, tiny
):
    path, _ = scene
    torch.manual_seed(0)
    model = build_dense_model(tiny, DenseTask("seg", num_outputs=5, decoder="fcn",
                                              decoder_kwargs={"channels": 16})).eval()  # fmt: skip
    outs = []
    for bs in (1, 16):
        out = tmp_path / f"b{bs}.tif"
        # 96-pixel tiles on a 32-pixel model: the resampled positional embeddings run too.
        res = predict_scene(path, out, model.predict, tiny, tile_size=96, overlap=24,
                            batch_size=bs, progress=False, class_names=list("abcde"))  # fmt: skip
        outs.append(out)
        assert res.num_outputs == 5 and res.tiles == 4 * 4 and res.tiles_run == 16
    a, b = (_read(p) for p in outs)
    assert np.array_equal(a[0], b[0])
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with rasterio.open(path) as src, rasterio.open(outs[0]) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        assert dst.profile["tiled"] and dst.profile["compress"] == "deflate"
        assert dst.scales == (1.0, 0.01) and dst.tags()["msclip_task"] == "segmentation"
        assert json.loads(dst.tags()["msclip_class_names"]) == list("abcde")
        assert dst.tags()["msclip_fingerprint"] == tiny.fingerprint()  # the model that made it
    conv = _pointwise(len(tiny.bands)).train()
    with pytest.warns(UserWarning, match="training mode"):
        predict_scene(path, tmp_path / "train.tif", conv, tiny, tile_size=64, progress=False)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left


def test_band_order_of_the_file_does_not_matter(tmp_path, scene, tiny):
    path, data = scene
    names = msclip.read_raster(path).bands
    order = [5, 0, 11, 2, 7, 1, 9, 3, 10, 4, 8, 6]
    shuffled = tmp_path / "shuffled.tif"
    msclip.write_geotiff(shuffled, data[order], crs="EPSG:32632", transform=TRANSFORM,
                         bands=[names[i] for i in order], nodata=0)  # fmt: skip
    conv = _pointwise(len(tiny.bands))
    kw = {"task": "regression", "tile_size": 64, "progress": False}
    a = predict_scene(path, tmp_path / "a.tif", conv, tiny, **kw)
    b = predict_scene(shuffled, tmp_path / "b.tif", conv, tiny, **kw)
    assert np.array_equal(_read(a.path)[0], _read(b.path)[0], equal_nan=True)


def test_scene_smaller_than_a_tile_is_padded_and_cropped_back(tmp_path, tiny):
    r = np.random.default_rng(3)
    data = r.integers(1, 6000, size=(12, 20, 45)).astype(np.uint16)
    small = tmp_path / "small.tif"
    msclip.write_geotiff(small, data, crs="EPSG:32632", transform=TRANSFORM)
    conv = _pointwise(len(tiny.bands), 2)
    res = predict_scene(small, tmp_path / "o.tif", conv, tiny, task="regression", tile_size=64,
                        progress=False, cog=True, value_scale=0.5)  # fmt: skip
    got, _, _ = _read(res.path)
    prep = ScenePreprocess.from_model(tiny).with_input(msclip.read_raster(small).bands)
    with torch.no_grad():
        ref = conv(prep(data)[None])[0].numpy()
    assert got.shape == (2, 20, 45) and res.tiles == 1
    np.testing.assert_allclose(got, ref / 0.5, atol=4e-5)
    with rasterio.open(res.path) as ds:
        assert ds.profile["tiled"]  # the COG driver's layout


def test_wrong_predictor_output_leaves_no_file(tmp_path, scene, tiny):
    path, _ = scene
    out = tmp_path / "bad.tif"

    def shrinks(x):
        return x[:, :3, ::2, ::2]

    with pytest.raises(PredictorOutputError, match=r"must return \[B, K, 64, 64\]"):
        predict_scene(path, out, shrinks, tiny, tile_size=64, progress=False)
    calls = []

    def fails_later(x):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("out of memory")
        return x[:, :3]

    with pytest.raises(RuntimeError, match="out of memory"):
        predict_scene(path, out, fails_later, tiny, tile_size=64, batch_size=2, progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(TilingError, match="overlap < tile_size"):
        predict_scene(path, out, shrinks, tiny, tile_size=64, overlap=64)


def test_preprocess_matches_the_model_preprocessing_without_resizing(scene, tiny):
    _, data = scene
    names = msclip.read_raster(scene[0]).bands
    prep = ScenePreprocess.from_model(tiny).with_input(names)
    window = data[:, 100:132, 100:132]
    spectral = tiny.preprocess(input_bands=names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # At the model's own size SpectralPreprocess's resize is the identity (up to rounding).
        ref = spectral.process(window, names)
    assert torch.allclose(prep(window), ref, atol=1e-5)
    assert prep(window[None]).shape == (1, len(tiny.bands), 32, 32)
    # with nodata = 0: the one band at 0 (data[3, 100:110, 100:110]) is data, as in the tile
    # preprocessing; the all-zero corner pixels are filled
    prep0 = ScenePreprocess.from_model(tiny).with_input(names, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref0 = spectral.process(window, names, nodata=0)
        corner = data[:, 50:82, 100:132]
        ref_corner = spectral.process(corner, names, nodata=0)
    assert torch.allclose(prep0(window), ref0, atol=1e-5)
    assert torch.allclose(prep0(window), prep(window), atol=1e-6)
    assert torch.allclose(prep0(corner), ref_corner, atol=1e-5)
    assert torch.all(prep0(corner)[:, :20, :20] == 0) and not torch.all(prep(corner) == 0)


def test_strip_writer_streams_rows_and_is_atomic(tmp_path):
    r = np.random.default_rng(0)
    data = r.integers(0, 200, size=(2, 77, 50)).astype(np.uint8)
    out = tmp_path / "w.tif"
    with GeoTiffStripWriter(out, 50, 77, 2, "uint8", "EPSG:32632", TRANSFORM, 255,
                            ["a", "b"], block_size=16) as w:  # fmt: skip
        for a, b in ((0, 5), (5, 40), (40, 77)):
            w.write(data[:, a:b])
        assert not out.exists()  # only renamed into place when closed
    got, profile, names = _read(out)
    assert np.array_equal(got, data) and names == ("a", "b")
    assert profile["blockxsize"] == 16 and profile["nodata"] == 255
    bad = GeoTiffStripWriter(tmp_path / "short.tif", 50, 77, 2, "uint8")
    bad.write(data[:, :10])
    with pytest.raises(RasterWriteError, match="only 10 of 77 rows"):
        bad.close()
    with pytest.raises(RasterWriteError, match="do not fit a 2-band raster"):
        GeoTiffStripWriter(tmp_path / "x.tif", 50, 77, 2, "uint8").write(data[:1])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".tmp-x.tif")) == [
        "w.tif"
    ]


def test_alpha_band_masks_the_scene(tmp_path, scene, tiny):
    """A scene with an alpha band (gdalwarp -dstalpha): the alpha band is not an input band, and
    the transparent pixels, whatever values they hold, are predicted as nodata."""
    from rasterio.enums import ColorInterp

    _, data = scene
    garbage = data.copy()
    garbage[:, :70, :120] = 7  # hidden by the alpha band, not by a nodata value
    alpha = np.full((H, W), 255, np.uint16)
    alpha[:70, :120] = 0
    path = tmp_path / "alpha.tif"
    profile = dict(driver="GTiff", width=W, height=H, count=13, dtype="uint16",
                   crs="EPSG:32632", transform=TRANSFORM)  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(garbage, list(range(1, 13)))
        ds.write(alpha, 13)
        ds.colorinterp = [ColorInterp.gray] * 12 + [ColorInterp.alpha]
    conv = _pointwise(len(tiny.bands))
    out = tmp_path / "reg.tif"
    predict_scene(path, out, conv, ScenePreprocess.from_model(tiny), task="regression",
                  tile_size=64, overlap=16, batch_size=4, progress=False)  # fmt: skip
    ref = tmp_path / "ref.tif"
    predict_scene(scene[0], ref, conv, ScenePreprocess.from_model(tiny), task="regression",
                  tile_size=64, overlap=16, batch_size=4, progress=False)  # fmt: skip
    got, want = _read(out)[0], _read(ref)[0]
    assert got.shape == (4, H, W)
    assert np.isnan(got[:, :70, :120]).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # equal to the nodata-valued scene


def test_few_input_bands_warn(tiny):
    from msclip.errors import BandCoverageWarning

    with pytest.warns(BandCoverageWarning, match=r"lack 7 of the model's 10 bands"):
        ScenePreprocess.from_model(tiny).with_input(("B04", "B03", "B02"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BandCoverageWarning)
        ScenePreprocess.from_model(tiny).with_input(tuple(tiny.bands))


def test_a_scene_with_a_declared_scale_and_offset_predicts_as_its_digital_numbers(
    tmp_path, scene, tiny
):
    path, data = scene
    gap = (data == 0).all(axis=0)  # nodata pixels stay 0; a valid 0 is stored as 1000
    stored = np.where(gap, 0, data.astype(np.int32) + 1000).astype(np.uint16)
    scaled = tmp_path / "pb04.tif"
    names = msclip.read_raster(path).bands
    msclip.write_geotiff(scaled, stored, crs="EPSG:32632", transform=TRANSFORM, nodata=0,
                         bands=list(names))  # fmt: skip
    with rasterio.open(scaled, "r+") as ds:
        ds.scales = [1e-4] * 12
        ds.offsets = [-0.1] * 12
    conv = _pointwise(len(tiny.bands))
    outs = []
    for src in (path, scaled):
        out = tmp_path / f"{src.stem}_pred.tif"
        predict_scene(src, out, conv, ScenePreprocess.from_model(tiny), task="regression",
                      tile_size=64, overlap=16, batch_size=4, progress=False)  # fmt: skip
        outs.append(_read(out)[0])
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-3)  # NaN where nodata in both


def test_nodata_given_for_a_scaled_scene_is_its_stored_value(tmp_path, scene, tiny):
    """A scene that declares a scale and offset but no nodata value: ``nodata=0`` names its
    stored fill, which stays nodata once the values are rescaled."""
    path, data = scene
    gap = (data == 0).all(axis=0)
    stored = np.where(gap, 0, data.astype(np.int32) + 1000).astype(np.uint16)
    scaled = tmp_path / "no_nodata.tif"
    msclip.write_geotiff(scaled, stored, crs="EPSG:32632", transform=TRANSFORM,
                         bands=list(msclip.read_raster(path).bands))  # fmt: skip
    with rasterio.open(scaled, "r+") as ds:
        ds.scales = [1e-4] * 12
        ds.offsets = [-0.1] * 12
    out = tmp_path / "pred.tif"
    predict_scene(scaled, out, _pointwise(len(tiny.bands)), ScenePreprocess.from_model(tiny),
                  task="regression", tile_size=64, overlap=16, nodata=0,
                  progress=False)  # fmt: skip
    values = _read(out)[0]
    assert np.isnan(values[:, gap]).all() and np.isfinite(values[:, ~gap]).all()


def test_a_landsat_sr_scene_is_read_with_the_products_scale(tmp_path, tiny):
    """Read as ``landsat89_sr``, a Collection 2 surface-reflectance scene of digital numbers (its
    scale only in the MTL file) predicts as the same reflectance stored as float."""
    rng = np.random.default_rng(2)
    refl = rng.uniform(0.0, 0.4, (7, 80, 70))
    dn = np.rint((refl + 0.2) / 2.75e-5).astype(np.uint16)
    dn[:, :10] = 0  # fill
    raw, ref = tmp_path / "lc09_sr.tif", tmp_path / "reflectance.tif"
    msclip.write_geotiff(raw, dn, crs="EPSG:32632", transform=TRANSFORM, nodata=0,
                         bands=[f"OLI_B{i}" for i in range(1, 8)])  # fmt: skip
    exact = (dn.astype(np.float32) * np.float32(2.75e-5 * 10000) - np.float32(2000)).astype(
        np.float32
    )
    exact[:, :10] = np.nan
    msclip.write_geotiff(ref, exact, crs="EPSG:32632", transform=TRANSFORM,
                         bands=[f"OLI_B{i}" for i in range(1, 8)])  # fmt: skip
    conv = _pointwise(len(tiny.bands))
    outs = []
    for src, sensor in ((raw, "landsat89_sr"), (ref, None)):
        out = tmp_path / f"{src.stem}_pred.tif"
        predict_scene(src, out, conv, ScenePreprocess.from_model(tiny), task="regression",
                      tile_size=64, overlap=16, batch_size=4, sensor=sensor,
                      progress=False)  # fmt: skip
        outs.append(_read(out)[0])
    assert np.isnan(outs[0][:, :10]).all() and np.isfinite(outs[0][:, 10:]).all()
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-3)


def test_a_scene_without_georeference_gives_a_map_without_one(tmp_path, scene, tiny):
    from rasterio.errors import NotGeoreferencedWarning

    _, data = scene
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=W, height=H, count=12,
                       dtype="uint16", nodata=0) as dst:  # fmt: skip
        dst.write(data)
    out = tmp_path / "pred.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        predict_scene(plain, out, _pointwise(len(tiny.bands)), ScenePreprocess.from_model(tiny),
                      task="regression", tile_size=64, progress=False)  # fmt: skip
    # no identity geotransform written: a GIS would place such a map at the origin, flipped
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(out) as src:
        assert src.crs is None and src.shape == (H, W)


def test_a_damaged_block_stops_the_run_or_is_left_out_with_skip_unreadable(tmp_path, scene, tiny):
    _, data = scene
    data = data.copy()
    data[data == 0] = 1  # every pixel holds data: what is nodata below comes from the damage
    path = write_tiled_scene(tmp_path / "damaged.tif", data)
    damage_block(path, 8, 8)  # rows and columns 128-143
    conv = _pointwise(len(tiny.bands))
    prep = ScenePreprocess.from_model(tiny)
    bands = msclip.read_raster(tmp_path / "damaged.tif", window=((0, 1), (0, 1))).bands
    with torch.no_grad():
        ref = conv(prep.with_input(bands, None)(data)[None])[0].numpy()
    kw = dict(task="regression", tile_size=64, overlap=16, progress=False)
    out = tmp_path / "map.tif"
    with pytest.raises(RasterReadError, match=f"cannot read scene {path} at rows 96-160"):
        predict_scene(path, out, conv, prep, batch_size=3, **kw)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    maps = []
    for bs in (1, 3, 16):  # a group of tiles fails as a whole, its tiles one by one
        res = predict_scene(path, out, conv, prep, batch_size=bs, skip_unreadable=True, **kw)
        # the one tile over the block (rows and columns 96-159), with GDAL's reason
        assert len(res.unreadable) == 1 and res.tiles_run == res.tiles - 1
        assert res.unreadable[0].startswith("rows 96-160, columns 96-160: ")
        assert "IReadBlock failed" in res.unreadable[0]
        got, _, _ = _read(out)
        with rasterio.open(out) as src:
            assert src.tags()["msclip_unreadable_tiles"] == "1"
        maps.append(got)
        gone = np.isnan(got).all(axis=0)
        # the block's pixels are nodata, and so is what no readable tile covers: rows 112-144
        # and columns 112-144 (the neighbours left and right, above and below cover the rest)
        assert gone[128:144, 128:144].all() and not gone[128:144, :112].any()
        assert gone.sum() == 32 * 32 and gone[112:144, 112:144].all()
        # every other pixel is the readable tiles' prediction, the neighbours' included
        np.testing.assert_allclose(got[:, ~gone], ref[:, ~gone], rtol=0, atol=2e-5)
    assert all(np.array_equal(maps[0], m, equal_nan=True) for m in maps[1:])
    # a damaged first tile: the number of outputs is found on a tile of zeros
    path2 = write_tiled_scene(tmp_path / "corner.tif", data)
    damage_block(path2, 0, 0)
    res = predict_scene(path2, tmp_path / "corner_map.tif", conv, prep, skip_unreadable=True, **kw)
    assert res.num_outputs == 4 and len(res.unreadable) == 1  # named once
    assert res.unreadable[0].startswith("rows 0-64, columns 0-64: ")


def test_ground_pixel_size_in_metres_of_any_crs(tmp_path):
    """The ground size of pixels a dense head compares with its training images': metres of a
    UTM grid, US survey feet, degrees at the raster's latitude, none without a CRS."""
    from msclip.heads.scene_predict import ground_pixel_size, pixel_size_range

    cases = [("EPSG:32632", Affine(20, 0, 500000, 0, -20, 5000000), 20.0),
             ("EPSG:2263", Affine(100, 0, 900000, 0, -100, 200000), 30.48),
             ("EPSG:4326", Affine(1e-4, 0, 9.0, 0, -1e-4, 60.005), 8.35),
             (None, Affine(1, 0, 0, 0, 1, 0), None)]  # fmt: skip
    paths = []
    for k, (crs, transform, metres) in enumerate(cases):
        path = tmp_path / f"p{k}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=1,
                               dtype="uint8", crs=crs, transform=transform) as dst:  # fmt: skip
                dst.write(np.zeros((1, 20, 20), "uint8"))
            with rasterio.open(path) as ds:
                size = ground_pixel_size(ds)
        assert size == pytest.approx(metres, rel=0.01) if metres else size is None
        paths.append(path)
    assert pixel_size_range(paths) == pytest.approx([8.35, 30.48], rel=0.01)
    assert pixel_size_range(paths[3:]) is None and pixel_size_range([]) is None


def test_the_scene_itself_is_never_the_output(tmp_path, scene, tiny, monkeypatch):
    """A map written onto its own scene (the same path, or another name of it) would replace the
    scene when moved into place: refused before any tile is read."""
    from msclip.errors import OutputPathError
    from msclip.tiling import open_scene, write_tile_map

    path, _ = scene
    before = path.read_bytes()
    conv = _pointwise(len(tiny.bands))
    monkeypatch.chdir(path.parent)
    for dst in (path, path.name):
        with pytest.raises(OutputPathError, match=r"is the scene .* itself.*scene_map\.tif"):
            predict_scene(path, dst, conv, tiny, task="regression", tile_size=64, progress=False)
    info = open_scene(path, 64)
    with pytest.raises(OutputPathError, match="would destroy the scene"):
        write_tile_map(path.name, np.zeros((info.n_rows, info.n_cols), np.float32), info)
    assert path.read_bytes() == before


def _warned(record, category):
    return [str(w.message) for w in record if issubclass(w.category, category)]


def test_scene_values_the_model_cannot_read_are_said_once_or_refused(tmp_path, tiny):
    """The checks every image and tile of the other programs gets: a scene whose swath edges hold
    0 without a declared nodata value, an 8-bit picture, reflectance from 0 to 1; each said
    once per run (not per batch), and refused with ``strict_bands``."""
    from msclip.errors import BandCoverageError, BandCoverageWarning, UndeclaredNodataWarning

    r = np.random.default_rng(5)
    names = list(tiny.bands)
    edges = r.integers(1, 6000, size=(len(names), 96, 160)).astype(np.uint16)
    edges[:, :, 100:] = 0  # the swath's edge, exported without its nodata tag
    kw = dict(crs="EPSG:32632", transform=TRANSFORM, bands=names)
    files = {"edges": edges, "picture": (edges // 30).astype(np.uint8),
             "unit": (edges / 10000).astype(np.float32)}  # fmt: skip
    for name, data in files.items():
        msclip.write_geotiff(tmp_path / f"{name}.tif", data, **kw)
    conv = _pointwise(len(names))
    run = dict(task="regression", tile_size=32, overlap=8, batch_size=2, progress=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predict_scene(tmp_path / "edges.tif", tmp_path / "e.tif", conv, tiny, **run)
    said = _warned(record, UndeclaredNodataWarning)
    assert len(said) == 1 and "pixels holding 0 in every band" in said[0]
    assert "nodata=0" in said[0] and not _warned(record, BandCoverageWarning)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predict_scene(tmp_path / "edges.tif", tmp_path / "e.tif", conv, tiny, nodata=0, **run)
    assert not _warned(record, UndeclaredNodataWarning)  # a nodata value given: nothing to say
    for name, match in (("picture", "8-bit input"), ("unit", "multiply the values by 10000")):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            predict_scene(tmp_path / f"{name}.tif", tmp_path / "o.tif", conv, tiny, **run)
        said = _warned(record, BandCoverageWarning)
        assert len(said) == 1 and match in said[0]
        out = tmp_path / f"{name}_strict.tif"
        with pytest.raises(BandCoverageError, match=match):
            predict_scene(tmp_path / f"{name}.tif", out, conv, tiny, strict_bands=True, **run)
        assert not out.exists()
    msclip.write_geotiff(tmp_path / "rgb.tif", edges[1:4], **{**kw, "bands": ["B02", "B03", "B04"]})
    with pytest.raises(BandCoverageError, match=r"rgb\.tif: .* lack 7 of the model's 10 bands"):
        predict_scene(tmp_path / "rgb.tif", tmp_path / "o.tif", conv, tiny, strict_bands=True,
                      **run)  # fmt: skip
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
