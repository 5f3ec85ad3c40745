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


def test_rasters_without_georeference_are_written_and_read_without_rasterio_warnings(
    tmp_path: Path,
) -> None:
    """A map of a scene without georeference is written without one on purpose, and such a file
    is read as pixels: the library says what it means itself, not through rasterio's warning."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from msclip.io import read_raster
    from msclip.io.geotiff import GeoTiffStripWriter
    from msclip.tiling import class_counts, georeference_warning, open_scene

    data = np.arange(12 * 32 * 48, dtype=np.uint16).reshape(12, 32, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        path = msclip.write_geotiff(tmp_path / "plain.tif", data)
        with GeoTiffStripWriter(tmp_path / "strips.tif", 48, 32, 1, "uint8", block_size=16) as w:
            w.write(np.ones((1, 32, 48), np.uint8))
        assert read_raster(path).crs is None
        assert open_scene(path, 16).crs is None
        assert "has no CRS" in (georeference_warning(path) or "")
        assert class_counts(tmp_path / "strips.tif", 2)[0].tolist() == [0, 32 * 48]
        # a grid without a CRS: the maps keep the grid, and the warning says so
        gridded = msclip.write_geotiff(tmp_path / "grid.tif", data, transform=TRANSFORM)
        said = georeference_warning(gridded) or ""
        assert "has a geotransform but no CRS: the maps keep its grid" in said
        assert "without georeference" not in said


@pytest.mark.parametrize(
    ("dtype", "predictor"),
    [(np.uint16, "2"), (np.int16, "2"), (np.uint8, None), (np.int32, "2"), (np.float32, "3"),
     (np.float64, "3"), (np.int64, "2")],
)  # fmt: skip
def test_compressed_files_are_written_in_strips_of_many_rows_with_a_predictor(
    tmp_path: Path, dtype, predictor
) -> None:
    """A 224 x 224 x 12 tile in strips of about 128 KiB (not GDAL's one-row strips) with the
    predictor of its data type (the rule of msclip's other writers: none for bytes); values (NaN
    included) read back unchanged."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 100, (12, 224, 224)).astype(dtype)
    if data.dtype.kind == "f":
        data[0, :3, :5] = np.nan
    path = msclip.write_geotiff(tmp_path / "t.tif", data, transform=TRANSFORM)
    with rasterio.open(path) as src:
        rows = src.block_shapes[0][0]
        assert rows == min(224, (1 << 17) // (12 * 224 * data.dtype.itemsize)) and rows > 1
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == predictor
        np.testing.assert_array_equal(src.read(), data)


def test_the_callers_layout_and_predictor_win_and_uncompressed_files_keep_gdals(
    tmp_path: Path,
) -> None:
    data = np.ones((3, 64, 64), np.uint16)
    kw = {"transform": TRANSFORM}
    tiled = msclip.write_geotiff(tmp_path / "a.tif", data, creation_options={"TILED": "YES"}, **kw)
    strips = msclip.write_geotiff(
        tmp_path / "b.tif", data, creation_options={"blockysize": 4, "predictor": 1}, **kw
    )
    plain = msclip.write_geotiff(tmp_path / "c.tif", data, compress=None, **kw)
    wide = np.ones((12, 224, 224), np.uint16)
    by_band = msclip.write_geotiff(
        tmp_path / "d.tif", wide, creation_options={"interleave": "band"}, **kw
    )
    with rasterio.open(by_band) as d:  # a strip holds one band: 12 times as many rows
        assert d.block_shapes[0] == (min(224, (1 << 17) // (224 * 2)), 224)
    with rasterio.open(tiled) as a, rasterio.open(strips) as b, rasterio.open(plain) as c:
        assert a.profile["tiled"] is True  # GDAL's tiles, no strip height forced on them
        assert a.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert b.block_shapes[0] == (4, 64) and "PREDICTOR" not in b.tags(ns="IMAGE_STRUCTURE")
        assert c.compression is None and "PREDICTOR" not in c.tags(ns="IMAGE_STRUCTURE")


@pytest.mark.parametrize("cog", [False, True])
def test_the_strip_writer_and_its_cog_take_the_same_predictor_rule(tmp_path: Path, cog) -> None:
    """One rule for every writer (msclip.io.geotiff._predictor): 3 for floats, 2 for integers
    wider than a byte, none for bytes or for a compression that takes no predictor."""
    from msclip.io import GeoTiffStripWriter
    from msclip.io.geotiff import _predictor

    want = {"float32": "3", "int16": "2", "uint8": None}
    for dtype, predictor in want.items():
        data = (np.arange(2 * 40 * 32) % 113).astype(dtype).reshape(2, 40, 32)
        path = tmp_path / f"{dtype}.tif"
        with GeoTiffStripWriter(path, 32, 40, 2, dtype, "EPSG:32632", TRANSFORM, block_size=16,
                                cog=cog) as w:  # fmt: skip
            w.write(data)
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == predictor, dtype
            np.testing.assert_array_equal(src.read(), data)
    assert _predictor("int16", "jpeg") is None and _predictor("float32", None) is None
    assert _predictor("float64", "ZSTD") == 3 and _predictor("uint64", "lzw") == 2


@pytest.mark.parametrize("count", [3, 4])
def test_eight_bit_bands_are_written_as_bands_not_colours(tmp_path: Path, count: int) -> None:
    """GDAL's default for 3 or 4 bands of 8-bit pixels is an RGB picture with the fourth band an
    alpha channel: a blue-green-red-NIR array lost its NIR band to a mask (and its pixels where
    NIR is 0). msclip writes bands; a file written with GDAL's default whose alpha band is named
    as a band (B08) reads its fourth band as data too."""
    from rasterio.enums import ColorInterp

    names = ["B02", "B03", "B04", "B08"][:count]
    data = (np.random.default_rng(0).random((count, 20, 30)) * 200).astype(np.uint8)
    data[-1, 0, :5] = 0
    path = msclip.write_geotiff(
        tmp_path / "b.tif", data, crs="EPSG:32633", transform=TRANSFORM, bands=names
    )
    with rasterio.open(path) as src:
        assert ColorInterp.alpha not in src.colorinterp and ColorInterp.red not in src.colorinterp
    r = msclip.read_raster(path)
    assert r.bands == tuple(names) and r.nodata is None and np.array_equal(r.data, data)
    with msclip.io.GeoTiffStripWriter(tmp_path / "s.tif", 30, 20, count, "uint8",
                                      crs="EPSG:32633", transform=TRANSFORM,
                                      band_names=names) as w:  # fmt: skip
        w.write(data)
    assert np.array_equal(msclip.read_raster(tmp_path / "s.tif").data, data)
    if count == 4:
        profile = dict(driver="GTiff", count=4, height=20, width=30, dtype="uint8",
                       crs="EPSG:32633", transform=TRANSFORM)  # fmt: skip
        with rasterio.open(tmp_path / "gdal.tif", "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = tuple(names)
        with rasterio.open(tmp_path / "gdal.tif") as src:
            assert src.colorinterp[3] == ColorInterp.alpha  # GDAL's default
        old = msclip.read_raster(tmp_path / "gdal.tif")
        assert old.bands == tuple(names) and np.array_equal(old.data, data)
