"""Declared band scale/offset is applied; 0-1 reflectance given to a x10000 model is flagged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import msclip
from msclip.errors import BandCoverageError, BandCoverageWarning
from msclip.spectral import S2_L2A_BANDS
from msclip.tiling import nodata_fraction


def _write(path, data, scales=None, offsets=None, nodata=None):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(data),
                   dtype=data.dtype.name, crs="EPSG:32632",
                   transform=from_origin(500000, 5000000, 10, 10), nodata=nodata)  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        for i, name in enumerate(S2_L2A_BANDS[: len(data)], 1):
            ds.set_band_description(i, name)
        if scales is not None:
            ds.scales = scales
        if offsets is not None:
            ds.offsets = offsets
    return path


def _dn() -> np.ndarray:
    return np.random.default_rng(0).integers(50, 6000, (12, 32, 32)).astype(np.uint16)


def test_l2a_boa_offset_is_removed(tmp_path):
    """Processing baseline 04.00: stored = reflectance x 10000 + 1000, declared as scale 1e-4 and
    offset -0.1; read back as the digital numbers of the older baselines."""
    dn = _dn()
    dn[:, :4] = 0  # nodata rows
    stored = np.where(dn == 0, 0, dn + 1000).astype(np.uint16)
    path = _write(tmp_path / "pb04.tif", stored, [1e-4] * 12, [-0.1] * 12, nodata=0)
    r = msclip.read_raster(path)
    assert r.data.dtype == np.float32 and r.nodata is None
    np.testing.assert_allclose(r.data[:, 4:], dn[:, 4:], atol=0.01)
    assert np.isnan(r.data[:, :4]).all()
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(4 / 32)
    plain = msclip.read_raster(_write(tmp_path / "pb03.tif", dn, nodata=0))
    assert plain.data.dtype == np.uint16  # nothing declared: read unchanged


def test_one_band_at_nodata_under_an_offset_is_missing_in_that_band(tmp_path):
    """At a swath's edge the band files of one product end at different pixels: a band stored 0
    (nodata) beside bands with data was read as -0.1 reflectance (-1000) under baseline 04.00's
    offset; it is missing in that band and filled with the band's mean. Without an offset that
    makes it negative, one band at 0 stays a measurement (dark water)."""
    dn = _dn()
    stored = (dn + 1000).astype(np.uint16)
    stored[10:, :, :3] = 0  # the 20 m bands (B11, B12) end three columns before the others
    r = msclip.read_raster(_write(tmp_path / "edge.tif", stored, [1e-4] * 12, [-0.1] * 12, 0))
    assert np.isnan(r.data[10:, :, :3]).all() and not np.isnan(r.data[:10]).any()
    assert nodata_fraction(r.data, r.nodata) == 0  # the pixels hold data in ten bands
    dark = dn.copy()
    dark[10:, :, :3] = 0
    r = msclip.read_raster(_write(tmp_path / "dark.tif", dark, [1e-4] * 12, [0.0] * 12, 0))
    assert (r.data[10:, :, :3] == 0).all()


def test_scale_in_the_stored_unit_applies_the_offset_only(tmp_path):
    dn = _dn()
    path = _write(tmp_path / "o.tif", (dn + 1000).astype(np.uint16), [1.0] * 12, [-1000.0] * 12)
    np.testing.assert_allclose(msclip.read_raster(path).data, dn, atol=1e-3)


def test_classification_equal_for_both_baselines(tmp_path):
    from msclip.cli.inference import main

    dn = _dn()
    for name, stored, sc, off in (
        ("a", dn, None, None),
        ("b", (dn + 1000).astype(np.uint16), [1e-4] * 12, [-0.1] * 12),
    ):
        folder = tmp_path / name
        folder.mkdir()
        _write(folder / "tile.tif", stored, sc, off)
    rows = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.csv"
        assert main(["--run-classification", "--model-name", "msclip-demo", "--images",
                     str(tmp_path / name), "--class-names", "sea", "forest", "city",
                     "--templates", "short", "--quiet", "--save-path", str(out)]) == 0  # fmt: skip
        rows.append(out.read_text().splitlines()[1])
    a, b = (r.split(",") for r in rows)
    assert a[1] == b[1]
    np.testing.assert_allclose([float(x) for x in a[2:5]], [float(x) for x in b[2:5]], atol=1e-3)


def test_unit_reflectance_is_flagged():
    model = msclip.create_model("msclip-demo")
    pre = model.preprocess()
    refl = _dn().astype(np.float32) / 10000
    with pytest.warns(BandCoverageWarning, match="reflectance from 0 to 1.*multiply the values"):
        pre.process(refl, S2_L2A_BANDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BandCoverageWarning)
        pre.process(refl * 10000, S2_L2A_BANDS)  # the model's unit: no warning
        pre.process(np.zeros_like(refl), S2_L2A_BANDS)  # all zero: nothing to judge
    with pytest.raises(BandCoverageError, match="reflectance from 0 to 1"):
        model.preprocess(strict_bands=True).process(refl, S2_L2A_BANDS)


def test_landsat_surface_reflectance_without_declared_scale(tmp_path):
    """USGS Collection 2 Level-2 GeoTIFFs keep SR = DN x 2.75e-5 - 0.2 in the MTL file only: read
    as ``landsat89_sr`` they are rescaled by the product's scale (a zero reflectance was read as
    7273, i.e. 0.73); a scale the file declares wins, float data and other sensors are left as
    they are."""
    from msclip.io.readers import declares_scale

    rng = np.random.default_rng(1)
    refl = rng.uniform(0.0, 0.5, (7, 32, 32))
    dn = np.rint((refl + 0.2) / 2.75e-5).astype(np.uint16)
    dn[:, :2] = 0  # the product's fill value
    path = tmp_path / "lc09_sr.tif"
    profile = dict(driver="GTiff", width=32, height=32, count=7, dtype="uint16", nodata=0,
                   crs="EPSG:32632", transform=from_origin(500000, 5000000, 30, 30))  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(dn)
        for i in range(1, 8):
            ds.set_band_description(i, f"SR_B{i}")
    r = msclip.read_raster(path, sensor="landsat89_sr")
    assert r.data.dtype == np.float32 and r.bands[3] == "OLI_B4"
    np.testing.assert_allclose(r.data[:, 2:], refl[:, 2:] * 10000, atol=0.2)
    assert np.isnan(r.data[:, :2]).all()
    untagged = tmp_path / "no_nodata_tag.tif"  # the product's fill value 0 is still missing
    with rasterio.open(untagged, "w", **{**profile, "nodata": None}) as ds:
        ds.write(dn)
        for i in range(1, 8):
            ds.set_band_description(i, f"SR_B{i}")
    u = msclip.read_raster(untagged, sensor="landsat89_sr")
    assert np.isnan(u.data[:, :2]).all() and np.isfinite(u.data[:, 2:]).all()
    plain = msclip.read_raster(path, sensor="landsat89")  # another product: as stored
    assert plain.data.dtype == np.uint16 and int(plain.data[0, 5, 5]) == int(dn[0, 5, 5])
    with rasterio.open(path) as ds:
        assert declares_scale(ds, "landsat89_sr") and not declares_scale(ds, "landsat89")
    with rasterio.open(path, "r+") as ds:  # the file's own scale wins
        ds.scales, ds.offsets = [1e-4] * 7, [0.0] * 7
    np.testing.assert_allclose(msclip.read_raster(path, sensor="landsat89_sr").data[:, 2:],
                               dn[:, 2:].astype(np.float32), atol=0.01)  # fmt: skip
    fl = tmp_path / "float.tif"
    with rasterio.open(fl, "w", **{**profile, "dtype": "float32", "nodata": None}) as ds:
        ds.write(refl.astype(np.float32) * 10000)
        for i in range(1, 8):
            ds.set_band_description(i, f"SR_B{i}")
    np.testing.assert_allclose(msclip.read_raster(fl, sensor="landsat89_sr").data,
                               refl.astype(np.float32) * 10000, rtol=1e-6)  # fmt: skip


def _sr_and_st(path, size, scaling=None):
    """A Landsat Collection 2 pair of bands, SR_B4 and ST_B10, of digital number 44000 (declaring
    ``scaling``, ``(scales, offsets)``, when given)."""
    profile = dict(driver="GTiff", width=size, height=size, count=2, dtype="uint16",
                   crs="EPSG:32632", transform=from_origin(500000, 5000000, 30, 30))  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.full((2, size, size), 44000, np.uint16))
        ds.set_band_description(1, "SR_B4")
        ds.set_band_description(2, "ST_B10")
        if scaling is not None:
            ds.scales, ds.offsets = scaling
    return path


def test_a_thermal_band_keeps_its_declared_unit(tmp_path):
    """Landsat ST_B10 declares 0.00341802 K per digital number + 149 K: a scale that small marks
    reflectance on the reflective bands (x 10000), but a thermal band is read in kelvin."""
    path = _sr_and_st(tmp_path / "sr_st.tif", 16, ([2.75e-5, 0.00341802], [-0.2, 149.0]))
    r = msclip.read_raster(path, sensor="landsat89")
    assert r.bands == ("OLI_B4", "TIRS_B10")
    np.testing.assert_allclose(r.data[0], 44000 * 0.275 - 2000, rtol=1e-5)  # reflectance x 1e4
    np.testing.assert_allclose(r.data[1], 44000 * 0.00341802 + 149.0, rtol=1e-5)  # kelvin


def test_the_surface_reflectance_scale_leaves_a_thermal_band_as_stored(tmp_path):
    """``landsat89_sr`` names ST_B10 too, but its product scale is not surface reflectance's:
    applied to it, 44000 kelvin-coded numbers read 1.01; the band keeps its stored values, as a
    stack of the band files (msclip.io.stack_band_files) leaves them, while SR_B4 is rescaled."""
    path = _sr_and_st(tmp_path / "sr_st_undeclared.tif", 8)
    r = msclip.read_raster(path, sensor="landsat89_sr")
    assert r.bands == ("OLI_B4", "TIRS_B10")
    np.testing.assert_allclose(r.data[0], 44000 * 0.275 - 2000, rtol=1e-5)
    assert (r.data[1] == 44000).all()


def test_landsat_surface_reflectance_arrays_take_the_product_scale(tmp_path):
    """An integer .npy/.npz file declares no scale, like the USGS GeoTIFFs: read as
    ``landsat89_sr`` it was left in digital numbers (a zero reflectance read as 7273) while the
    same chip as a GeoTIFF was rescaled. Its own nodata, else the product's fill 0, is missing;
    float arrays and other sensors are read as stored."""
    refl = np.random.default_rng(2).uniform(0.0, 0.5, (7, 8, 8))
    dn = np.rint((refl + 0.2) / 2.75e-5).astype(np.uint16)
    dn[:, 0] = 0
    np.save(tmp_path / "chip.npy", dn)
    r = msclip.read_raster(tmp_path / "chip.npy", sensor="landsat89_sr", layout="CHW")
    assert r.data.dtype == np.float32 and r.nodata is None and r.bands[4] == "OLI_B5"
    np.testing.assert_allclose(r.data[:, 1:], refl[:, 1:] * 10000, atol=0.2)
    assert np.isnan(r.data[:, 0]).all()
    marked = dn.copy()
    marked[:, 1] = 65535
    np.savez(tmp_path / "chip.npz", data=marked, nodata=65535, layout="CHW")
    z = msclip.read_raster(tmp_path / "chip.npz", sensor="landsat89_sr")
    assert np.isnan(z.data[:, 1]).all() and np.isfinite(z.data[:, 2:]).all()
    sr = [f"SR_B{i}" for i in range(1, 8)]
    plain = msclip.read_raster(tmp_path / "chip.npy", sr, "CHW", sensor="landsat89")
    assert plain.data.dtype == np.uint16 and (plain.data == dn).all()
    np.save(tmp_path / "float.npy", dn.astype(np.float32))
    fl = msclip.read_raster(tmp_path / "float.npy", sensor="landsat89_sr", layout="CHW")
    assert (fl.data == dn).all()
    with_st = np.concatenate([dn[:1], np.full((1, 8, 8), 44000, np.uint16)])
    np.savez(tmp_path / "st.npz", data=with_st, bands=np.array(["SR_B1", "ST_B10"]))
    st = msclip.read_raster(tmp_path / "st.npz", sensor="landsat89_sr", layout="CHW")
    assert st.bands == ("OLI_B1", "TIRS_B10") and (st.data[1] == 44000).all()
