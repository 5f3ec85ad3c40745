"""A GeoTIFF's own mask (alpha band, internal mask) makes its pixels missing, like nodata."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

import msclip
from msclip.io.readers import read_image
from msclip.spectral import S2_L2A_BANDS
from msclip.tiling import nodata_fraction

TRANSFORM = from_origin(500000, 5000000, 10, 10)


def _data(dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(100, 3000, (12, 64, 64)).astype(dtype)


def _with_alpha(path, data, nodata=None, descriptions=False):
    alpha = np.full(data.shape[1:], np.iinfo(np.uint16).max, np.uint16)
    alpha[:16] = 0  # the top quarter is transparent (gdalwarp -dstalpha outside the footprint)
    profile = dict(driver="GTiff", width=64, height=64, count=13, dtype="uint16",
                   crs="EPSG:32632", transform=TRANSFORM, nodata=nodata)  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, list(range(1, 13)))
        ds.write(alpha, 13)
        ds.colorinterp = [ColorInterp.gray] * 12 + [ColorInterp.alpha]
        if descriptions:
            for i, name in enumerate(S2_L2A_BANDS, 1):
                ds.set_band_description(i, name)
    return path


def _with_internal_mask(path, data):
    mask = np.full(data.shape[1:], 255, np.uint8)
    mask[:, :48] = 0
    profile = dict(driver="GTiff", width=64, height=64, count=12, dtype=data.dtype.name,
                   crs="EPSG:32632", transform=TRANSFORM)  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.write_mask(mask)
    return path


@pytest.mark.parametrize("descriptions", [False, True])
def test_alpha_band_is_a_mask_not_a_band(tmp_path, descriptions):
    data = _data()
    r = msclip.read_raster(_with_alpha(tmp_path / "a.tif", data, descriptions=descriptions))
    assert r.bands == S2_L2A_BANDS and r.data.shape == (12, 64, 64)  # not 13-band L1C
    assert r.nodata is not None and (r.data[:, :16] == r.nodata).all()
    assert np.array_equal(r.data[:, 16:], data[:, 16:])
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(0.25)


def test_a_data_band_marked_alpha_is_named_with_the_fix(tmp_path):
    """GDAL marks the fourth of four 8-bit bands alpha: a red, green, blue, NIR file written
    without band descriptions loses its NIR to a mask, which the run says (under --quiet too)."""
    from msclip.errors import AlphaBandWarning

    rng = np.random.default_rng(1)
    rgbn = rng.integers(1, 250, (4, 32, 32)).astype(np.uint8)
    path = tmp_path / "naip.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=4, dtype="uint8",
                       crs="EPSG:32618", transform=TRANSFORM) as ds:  # fmt: skip
        ds.write(rgbn)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha  # GDAL's default for such a file
    with pytest.warns(
        AlphaBandWarning, match=r"band 4 is marked alpha .* -colorinterp_4 undefined"
    ):
        r = msclip.read_raster(path)
    assert r.data.shape[0] == 3 and AlphaBandWarning.shown_when_quiet
    with rasterio.open(path, "r+") as ds:  # the fix the warning gives: the bands described
        for i, name in enumerate(["red", "green", "blue", "nir"], 1):
            ds.set_band_description(i, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlphaBandWarning)
        assert msclip.read_raster(path).data.shape[0] == 4
    # a real alpha (0 and 255, here the same band with its values made a mask) says nothing
    rgbn[3] = 255
    rgbn[3, :8] = 0
    with rasterio.open(tmp_path / "rgba.tif", "w", driver="GTiff", width=32, height=32, count=4,
                       dtype="uint8", crs="EPSG:32618", transform=TRANSFORM) as ds:  # fmt: skip
        ds.write(rgbn)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlphaBandWarning)
        assert msclip.read_raster(tmp_path / "rgba.tif").data.shape[0] == 3


def test_alpha_with_a_nodata_value_marks_with_it(tmp_path):
    data = _data()
    r = msclip.read_raster(_with_alpha(tmp_path / "a.tif", data, nodata=0))
    assert r.nodata == 0 and (r.data[:, :16] == 0).all()
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(0.25)


@pytest.mark.parametrize("given", [-9999, 70000, 0.5, float("nan")])
def test_alpha_keeps_its_pixels_missing_under_a_nodata_value_the_pixels_cannot_hold(
    tmp_path, given
):
    """``--nodata -9999`` (or 0.5, NaN) for 16-bit unsigned pixels: no stored value, so the
    alpha's pixels are marked with a free value instead (neither an overflow nor a mask lost)."""
    data = _data()
    r = msclip.read_raster(_with_alpha(tmp_path / "a.tif", data), nodata=given)
    assert r.data.dtype == np.uint16 and r.nodata is not None and not np.isnan(r.nodata)
    assert (r.data[:, :16] == r.nodata).all() and np.array_equal(r.data[:, 16:], data[:, 16:])
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(0.25)


def test_a_float_nodata_value_marks_the_mask_of_float_pixels_as_their_type_stores_it():
    """0.1 has no exact float32 value, yet a float32 file stores its nodata 0.1 as float32(0.1)
    and the missing-pixel rule compares so: it still marks the masked pixels (not NaN with the
    file's nodata value forgotten), and 1e40, past float32, does not."""
    from msclip.io.readers import _mark_missing
    from msclip.spectral.nodata import missing_pixels

    data = np.full((2, 4, 4), 0.1, np.float32)
    data[:, 0, 0] = 5.0
    invalid = np.zeros((4, 4), bool)
    invalid[1, 1] = True
    marked, nodata = _mark_missing(data.copy(), invalid, 0.1)
    assert nodata == 0.1 and missing_pixels(marked, nodata).sum() == 15
    marked, nodata = _mark_missing(data.copy(), invalid, 1e40)
    assert nodata is None and np.isnan(marked[:, 1, 1]).all()


def test_free_value_avoids_valid_pixels(tmp_path):
    data = _data()
    data[:, 40, 40] = np.iinfo(np.uint16).max  # a valid pixel saturated in every band
    r = msclip.read_raster(_with_alpha(tmp_path / "a.tif", data))
    assert r.nodata == 0.0  # the maximum is taken by a valid pixel; 0 is free
    assert (r.data[:, 40, 40] == np.iinfo(np.uint16).max).all()
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(0.25)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_internal_mask(tmp_path, dtype):
    data = _data(dtype)
    path = _with_internal_mask(tmp_path / "m.tif", data)
    r = msclip.read_raster(path)
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(0.75)
    if dtype == np.float32:
        assert r.nodata is None and np.isnan(r.data[:, :, :48]).all()
    assert np.array_equal(r.data[:, :, 48:], data[:, :, 48:])
    with rasterio.open(path) as ds:  # promote: integer data comes back as float32 with NaN
        promoted, nodata = read_image(ds, promote=True)
    assert promoted.dtype == np.float32 and nodata is None
    assert np.isnan(promoted[:, :, :48]).all() and not np.isnan(promoted[:, :, 48:]).any()


def test_decimated_read_keeps_the_mask(tmp_path):
    data = _data()
    path = _with_internal_mask(tmp_path / "m.tif", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = msclip.read_raster(path, shorter_side=16)
    assert r.data.shape == (12, 16, 16)
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(0.75)


def test_masked_pixels_are_filled_in_classification(tmp_path):
    """A tile three quarters masked is skipped by --min-valid 0.5 (it was scored from the hidden
    pixels before)."""
    from msclip.cli.inference import main

    folder = tmp_path / "tiles"
    folder.mkdir()
    _with_internal_mask(folder / "masked.tif", _data())
    _with_alpha(folder / "alpha.tif", _data())
    out = tmp_path / "out.csv"
    rc = main(["--run-classification", "--model-name", "msclip-demo", "--images", str(folder),
               "--class-names", "sea", "forest", "--templates", "short", "--quiet",
               "--save-path", str(out)])  # fmt: skip
    assert rc == 0
    import pandas as pd

    table = pd.read_csv(out).set_index("Image")
    assert table.loc["masked.tif", "valid_fraction"] == pytest.approx(0.25)
    assert table.loc["masked.tif", "status"] != "ok"
    assert table.loc["alpha.tif", "valid_fraction"] == pytest.approx(0.75)
    assert table.loc["alpha.tif", "status"] == "ok"
