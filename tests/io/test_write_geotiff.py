"""Tests of msclip.io.write_geotiff's options: creation options, per-band metadata, checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import msclip
from msclip.errors import BandError, LayoutError

TRANSFORM = Affine(10, 0, 500000, 0, -10, 5000000)


def test_creation_options_and_band_metadata(tmp_path: Path) -> None:
    data = np.arange(2 * 32 * 48, dtype=np.uint16).reshape(2, 32, 48)
    path = msclip.write_geotiff(
        tmp_path / "a.tif", data, crs="EPSG:32632", transform=TRANSFORM, bands=["B04", "B08"],
        nodata=0, tags={"CLASS": "forest"},
        creation_options={"predictor": 2, "tiled": True, "blockxsize": 16, "blockysize": 16},
        band_tags=[{"CENTRAL_WAVELENGTH_UM": "0.6646"}, {}], band_tags_ns="IMAGERY",
    )  # fmt: skip
    with rasterio.open(path) as src:
        assert src.block_shapes == [(16, 16), (16, 16)]
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert src.compression.name == "deflate"
        assert src.descriptions == ("B04", "B08") and src.tags()["CLASS"] == "forest"
        assert src.tags(1, ns="IMAGERY") == {"CENTRAL_WAVELENGTH_UM": "0.6646"}
        assert src.tags(2, ns="IMAGERY") == {}
        np.testing.assert_array_equal(src.read(), data)


def test_band_tags_in_the_default_domain_and_float_nodata(tmp_path: Path) -> None:
    data = np.full((5, 6), np.nan, dtype=np.float32)
    data[1:3] = 0.5
    path = msclip.write_geotiff(
        tmp_path / "t.tif", data, transform=TRANSFORM, bands=["fcover"], nodata=float("nan"),
        band_tags=[{"UNITS": "fraction"}],
    )  # fmt: skip
    with rasterio.open(path) as src:
        assert src.tags(1)["UNITS"] == "fraction" and np.isnan(src.nodata)
        np.testing.assert_array_equal(np.isnan(src.read(1)), np.isnan(data))


def test_equal_arguments_give_equal_bytes(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(1, 9000, (3, 20, 20)).astype(np.uint16)
    kw = {"crs": "EPSG:32632", "transform": TRANSFORM, "bands": ["B02", "B03", "B04"]}
    a = msclip.write_geotiff(tmp_path / "a.tif", data, **kw)  # type: ignore[arg-type]
    b = msclip.write_geotiff(tmp_path / "b.tif", data, **kw)  # type: ignore[arg-type]
    assert a.read_bytes() == b.read_bytes()


def test_shape_and_band_count_checks(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"\[C, H, W\]"):
        msclip.write_geotiff(tmp_path / "x.tif", np.zeros((1, 2, 3, 4), np.uint8))
    with pytest.raises(BandError, match="2 band names for an array of 3 bands"):
        msclip.write_geotiff(tmp_path / "x.tif", np.zeros((3, 4, 4), np.uint8), bands=["a", "b"])
    with pytest.raises(BandError, match="band tag mappings"):
        msclip.write_geotiff(tmp_path / "x.tif", np.zeros((2, 4, 4), np.uint8), band_tags=[{}])
    assert not any(tmp_path.iterdir())
