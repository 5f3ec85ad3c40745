"""Raster readers on generated files, and their errors on bad input."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import msclip
from msclip.errors import (
    BandError,
    DescribedBandsWarning,
    GenericBandNamesWarning,
    LayoutError,
    RasterReadError,
    UnsupportedFormatError,
)
from msclip.spectral import LLAMA3_MS_CLIP_BANDS, S2_L1C_BANDS, S2_L2A_BANDS


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (13, S2_L1C_BANDS),
        (12, S2_L2A_BANDS),
        (10, LLAMA3_MS_CLIP_BANDS),
        (4, ("NAIP_R", "NAIP_G", "NAIP_B", "NAIP_N")),
        (3, ("red", "green", "blue")),
    ],
)
def test_geotiff_bands_from_count(make_geotiff, count, expected):
    path, data = make_geotiff(count=count)
    r = msclip.read_raster(path)
    assert r.bands == expected and r.band_source == "count"
    assert np.array_equal(r.data, data) and r.data.dtype == np.uint16
    assert r.crs.to_epsg() == 32632 and r.transform.a == 10


def test_geotiff_bands_from_descriptions_in_any_order(make_geotiff):
    order = ["B8A", "B02", "B12", "B04"]
    path, _data = make_geotiff(count=4, descriptions=order, nodata=0)
    r = msclip.read_raster(path)
    assert r.bands == tuple(order) and r.band_source == "descriptions" and r.nodata == 0
    # bands= names files that do not name their bands (a folder may mix both): a file that
    # does keeps its names, said where they differ from those given
    for given in (["B02", "B04", "B8A", "B12"], ["B02", "B03", "B04", "B08"]):
        with pytest.warns(DescribedBandsWarning, match="its own names are used"):
            named = msclip.read_raster(path, bands=given)
        assert named.bands == tuple(order) and named.band_source == "descriptions"
        assert np.array_equal(named.data, r.data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert msclip.read_raster(path, bands=order).bands == tuple(order)


def test_read_raster_refuses_band_names_joined_in_one_string(make_geotiff):
    """``bands=["B02,B03,B04,B08"]`` was the one band B02 (a name's first word), and a 4-band
    file was refused for one band name; a description joining words is still read."""
    path, _data = make_geotiff(count=4, descriptions=None, nodata=0)
    with pytest.raises(BandError, match="joins 4 band names"):
        msclip.read_raster(path, bands=["B02,B03,B04,B08"])
    described, _ = make_geotiff(count=2, descriptions=["B2 blue", "B8 NIR"], nodata=0)
    assert msclip.read_raster(described).bands == ("B02", "B08")


def test_geotiff_descriptions_written_by_gdal_sentinel2_driver(make_geotiff):
    # gdal_translate of a SENTINEL2 subdataset keeps the driver's band descriptions
    descriptions = [f"B{b}, central wavelength {nm} nm" for b, nm in
                    [("4", 665), ("3", 560), ("2", 490), ("8", 842), ("8A", 865)]]  # fmt: skip
    path, _ = make_geotiff(count=5, descriptions=descriptions)
    r = msclip.read_raster(path)
    assert r.bands == ("B04", "B03", "B02", "B08", "B8A") and r.band_source == "descriptions"


def test_geotiff_describing_a_band_twice_is_said(make_geotiff):
    path, data = make_geotiff(count=4, descriptions=["B04", "B03", "B02", "B4"])
    with pytest.raises(BandError, match="'B04' appears twice") as err:
        msclip.read_raster(path)
    assert "not band names msclip knows" not in str(err.value) and err.value.param == "bands"
    r = msclip.read_raster(path, bands=["B04", "B03", "B02", "B08"])  # the caller names them
    assert r.bands == ("B04", "B03", "B02", "B08") and np.array_equal(r.data, data)


def test_geotiff_descriptions_that_are_not_band_names_fall_back(make_geotiff):
    path, _ = make_geotiff(count=3, descriptions=["Band 1", "Band 2", "Band 3"])
    assert msclip.read_raster(path).band_source == "count"
    r = msclip.read_raster(path, bands=["B04", "B03", "B02"])
    assert r.bands == ("B04", "B03", "B02") and r.band_source == "argument"


def test_unmappable_band_count(make_geotiff):
    path, _ = make_geotiff(count=5)
    with pytest.raises(BandError, match="Name the bands") as err:
        msclip.read_raster(path)
    assert err.value.param == "bands"  # command-line programs turn it into --bands
    with pytest.raises(BandError, match="5 bands but 3 band names"):
        msclip.read_raster(path, bands=["B02", "B03", "B04"])


def test_unknown_band_name(make_geotiff):
    path, _ = make_geotiff(count=3)
    with pytest.raises(msclip.UnknownBandError, match="B99"):
        msclip.read_raster(path, bands=["B02", "B03", "B99"])


def test_npy_layouts(tmp_path):
    chw = np.arange(10 * 6 * 7, dtype=np.uint16).reshape(10, 6, 7)
    np.save(tmp_path / "chw.npy", chw)
    np.save(tmp_path / "hwc.npy", np.moveaxis(chw, 0, -1))
    a = msclip.read_raster(tmp_path / "chw.npy")
    b = msclip.read_raster(tmp_path / "hwc.npy")
    assert np.array_equal(a.data, chw) and np.array_equal(b.data, chw)
    assert a.bands == LLAMA3_MS_CLIP_BANDS
    # 10-band channel-last with a 10-pixel side: ambiguous, refused, then declared.
    amb = np.zeros((10, 10, 10), dtype=np.uint16)
    np.save(tmp_path / "amb.npy", amb)
    with pytest.raises(LayoutError, match="layout='HWC'"):
        msclip.read_raster(tmp_path / "amb.npy")
    assert msclip.read_raster(tmp_path / "amb.npy", layout="HWC").data.shape == (10, 10, 10)


def test_npz_with_metadata(tmp_path):
    data = np.ones((5, 4, 3), dtype=np.float32)  # HWC, 3 bands named in the file
    np.savez(tmp_path / "x.npz", data=data, layout="HWC", bands=np.array(["B04", "B03", "B02"]),
             nodata=np.float32(-1))  # fmt: skip
    r = msclip.read_raster(tmp_path / "x.npz")
    assert r.bands == ("B04", "B03", "B02") and r.data.shape == (3, 5, 4) and r.nodata == -1


def test_png_and_jpeg(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (9, 11, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "a.jpg")
    r = msclip.read_raster(tmp_path / "a.png")
    assert r.bands == ("red", "green", "blue") and np.array_equal(r.data, np.moveaxis(img, -1, 0))
    assert msclip.read_raster(tmp_path / "a.jpg").data.shape == (3, 9, 11)


def test_bad_files(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00 this is not a tiff")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "x.hdf").write_bytes(b"x")
    with pytest.raises(RasterReadError, match="empty"):
        msclip.read_raster(tmp_path / "empty.tif")
    for name in ("corrupt.tif", "corrupt.png", "corrupt.npy"):
        with pytest.raises(RasterReadError, match=name):
            msclip.read_raster(tmp_path / name)
    with pytest.raises(UnsupportedFormatError, match=r"\.hdf"):
        msclip.read_raster(tmp_path / "x.hdf")
    with pytest.raises(RasterReadError, match="not found"):
        msclip.read_raster(tmp_path / "missing.tif")


def test_write_geotiff_is_atomic(tmp_path, monkeypatch):
    import rasterio

    target = tmp_path / "out.tif"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", boom, raising=False)
    with pytest.raises(RuntimeError):
        msclip.write_geotiff(target, np.zeros((1, 4, 4), np.uint8))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


# -- writing ----------------------------------------------------------------------------------
def test_atomic_write_keeps_usual_permissions_and_leaves_nothing_behind(tmp_path):
    import os

    from msclip.io import TMP_PREFIX, atomic_write, write_json, write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "sub" / "a.txt", "hello")
        assert path.read_text() == "hello"
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        private = write_text(tmp_path / "b.txt", "x")
        assert (private.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)

    def fail(tmp):
        Path(tmp).write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", fail)
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello"  # the old file survives
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]
    out = write_json(tmp_path / "r.json", {"x": float("nan"), "y": np.float32(0.5)})
    assert json.loads(out.read_text()) == {"x": None, "y": 0.5}


def test_unwritable_output_is_a_clear_error(tmp_path):
    from msclip.errors import OutputPathError
    from msclip.io import write_text

    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    with pytest.raises(OutputPathError, match="cannot write"):
        write_text(blocker / "out.csv", "x")


# -- image sets -------------------------------------------------------------------------------
def test_image_set_names_are_relative_to_their_root(tmp_path, caplog):
    from msclip.io import list_image_set

    for rel in ("flat/a.tif", "flat/b.npy", "nested/x/c.tif", "nested/y/c.tif", "other/a.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "flat" / "notes.xml").write_text("<x/>")
    flat = list_image_set([tmp_path / "flat"])
    assert flat.names == ["a.tif", "b.npy"]  # a flat folder: bare file names, as the original
    assert "1 file with another extension (.xml) is not an image and is skipped" in caplog.text
    nested = list_image_set([tmp_path / "nested"])
    assert nested.names == ["x/c.tif", "y/c.tif"]  # same file name, different folders: distinct
    both = list_image_set([tmp_path / "flat", tmp_path / "other"])
    assert both.names == ["flat/a.tif", "flat/b.npy", "other/a.tif"]  # unique, never absolute
    glob = list_image_set([str(tmp_path / "nested" / "**" / "*.tif")])
    assert glob.names == ["x/c.tif", "y/c.tif"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"flat/b.npy\n{tmp_path / 'other' / 'a.tif'}\n")
    assert list_image_set([listing]).names == ["flat/b.npy", "a.tif"]
    assert all(not Path(n).is_absolute() for n in both.names + glob.names)
    listing = tmp_path / "list.yaml"
    listing.write_text("images: [flat/b.npy]\nimages: [other/a.tif]\n")
    with pytest.raises(msclip.errors.ImageSetError, match="key 'images' is given twice"):
        list_image_set([listing])


def test_a_listed_home_path_folder_or_pattern_is_named_for_what_it_is(tmp_path, monkeypatch):
    """``~`` in a list is the home folder, as on the command line; a folder or a pattern listed
    (lists name files) is said to be one when read, not an unknown format or a missing file."""
    from msclip.errors import RasterReadError
    from msclip.io import list_image_set

    home = tmp_path / "home"
    (home / "tiles").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    listing = tmp_path / "list.txt"
    listing.write_text("~/tiles/a.tif\ntiles\ntiles/*.tif\n")
    (tmp_path / "tiles").mkdir()
    listed = list_image_set([listing])
    assert listed.paths == [str(home / "tiles" / "a.tif"), str(tmp_path / "tiles"),
                            str(tmp_path / "tiles" / "*.tif")]  # fmt: skip
    assert not any(Path(n).is_absolute() for n in listed.names)
    with pytest.raises(RasterReadError, match="tiles is a folder, not an image file; give the"):
        msclip.read_raster(listed.paths[1])
    with pytest.raises(RasterReadError, match=r"not found: .*\*\.tif \(a pattern is expanded"):
        msclip.read_raster(listed.paths[2])


def test_folder_images_as_a_glob_finds_them(tmp_path):
    from msclip.io import list_image_set

    data, elsewhere = tmp_path / "data", tmp_path / "scratch" / "s2"
    for rel in ("data/a.tif", "data/.ipynb_checkpoints/a-checkpoint.tif", "scratch/s2/b.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (data / "._a.tif").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork
    (data / "s2").symlink_to(elsewhere, target_is_directory=True)  # data kept on another disk
    (data / "s2" / "loop").symlink_to(data, target_is_directory=True)  # a link cycle ends
    (data / "gone.tif").symlink_to(tmp_path / "deleted.tif")  # named later as unreadable
    found = list_image_set([data])
    assert found.names == ["a.tif", "gone.tif", "s2/b.tif"]
    # a pattern finds the link whose target is gone too (it was left out without a word)
    assert list_image_set([f"{data}/*.tif"]).names == ["a.tif", "gone.tif"]
    with pytest.raises(RasterReadError, match=r"gone.tif \(a symbolic link to .*deleted.tif, wh"):
        msclip.read_raster(data / "gone.tif")
    # one file, spelt twice: read once, named once
    again = list_image_set(
        [data / "a.tif", str(data.absolute() / "a.tif"), f"{data}/../data/a.tif"]
    )
    assert again.paths == [str(data / "a.tif")] and again.names == ["a.tif"]


def test_image_list_written_by_a_windows_editor(tmp_path):
    from msclip.io import list_image_set

    # a byte-order mark, CRLF line ends and an indented comment are not part of any path
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.tif\r\n  # not a file\r\nb.tif\r\n")
    listed = list_image_set([tmp_path / "list.txt"])
    assert listed.names == ["a.tif", "b.tif"]
    assert listed.paths == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9.tif\n".encode("latin-1"))
    with pytest.raises(msclip.errors.ImageSetError, match=r"latin1.txt is not UTF-8 text.*UTF-8"):
        list_image_set([tmp_path / "latin1.txt"])


def test_sensor_orders_unnamed_bands_and_four_bands_warn(make_geotiff):
    from msclip.errors import GenericBandNamesWarning

    path, _ = make_geotiff(count=4)
    r = msclip.read_raster(path, sensor="planetscope4")
    assert r.bands == ("PS2_B1", "PS2_B2", "PS2_B3", "PS2_B4") and r.band_source == "sensor"
    with pytest.warns(GenericBandNamesWarning, match="NAIP order.*--sensor planetscope4"):
        assert msclip.read_raster(path).bands == ("NAIP_R", "NAIP_G", "NAIP_B", "NAIP_N")
    with pytest.raises(BandError, match="4 unnamed bands but the sensor sentinel2_l2a has 12"):
        msclip.read_raster(path, sensor="sentinel2_l2a")
    with pytest.raises(
        BandError, match=r"unknown sensor 'sentinel2'; known sensors: .*sentinel2_l2a"
    ):
        msclip.read_raster(path, sensor="sentinel2")


def test_thirteen_unnamed_bands_warn_of_eurosats_order(make_geotiff):
    """EuroSAT's multispectral GeoTIFFs name no bands and put B8A last; read by their band count
    (ESA's order, B8A ninth) the model's B8A, B11 and B12 got B09, B12 and B8A without a word.
    The count's reading now says so, and --sensor eurosat reads them in their order."""
    import warnings

    from msclip.errors import GenericBandNamesWarning
    from msclip.eval.layouts import EUROSAT_MS_BANDS

    path, _ = make_geotiff(count=13)
    with pytest.warns(GenericBandNamesWarning, match=r"ESA's order.*B8A last.*--sensor eurosat"):
        assert msclip.read_raster(path).bands[8] == "B8A"
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenericBandNamesWarning)
        r = msclip.read_raster(path, sensor="eurosat")
    assert r.bands[-1] == "B8A" and r.bands[8:12] == ("B09", "B10", "B11", "B12")
    assert r.bands == EUROSAT_MS_BANDS  # the benchmark's layout reads the same order


def test_bands_argument_names_only_unnamed_files(make_geotiff):
    named, _ = make_geotiff("named.tif", count=12, descriptions=list(S2_L2A_BANDS))
    r = msclip.read_raster(named, bands=["B02", "B03", "B04", "B08"])  # not its own: ignored
    assert r.bands == S2_L2A_BANDS
    unnamed, _ = make_geotiff("unnamed.tif", count=12)
    with pytest.raises(BandError, match="has 12 bands but 4 band names were given"):
        msclip.read_raster(unnamed, bands=["B02", "B03", "B04", "B08"])


def test_reading_windows_and_plain_rasters_raises_no_library_warnings(make_geotiff):
    import warnings

    import rasterio
    from rasterio.windows import Window

    path, _ = make_geotiff("geo.tif", count=12)
    plain, _ = make_geotiff("plain.tif", count=12, georef=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # affine's '*' deprecation, NotGeoreferencedWarning
        r = msclip.read_raster(path, window=Window(8, 4, 16, 16))
        small = msclip.read_raster(path, shorter_side=20)
        assert msclip.read_raster(plain).crs is None
    with rasterio.open(path) as src, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert r.transform == src.window_transform(Window(8, 4, 16, 16))
        assert small.transform.a == pytest.approx(10 * 40 / small.height)


def test_a_window_past_the_edges_reads_the_part_inside_with_its_georeference(make_geotiff):
    """A window from ``from_bounds`` for an area larger than the raster: the data and the
    transform are those of the pixels read (the transform used to start at the asked corner)."""
    from rasterio.windows import Window, from_bounds

    path, data = make_geotiff("geo.tif", count=12, size=(40, 48))  # 10 m, corner 500000/5000000
    grid = msclip.read_raster(path).transform
    win = from_bounds(499920, 4999840, 500080, 5000080, transform=grid)
    assert (win.col_off, win.row_off) == (-8, -8)
    r = msclip.read_raster(path, window=win)
    assert r.data.shape == (12, 16, 8)
    assert (r.transform.c, r.transform.f) == (500000, 5000000)
    np.testing.assert_array_equal(r.data, data[:, :16, :8].astype(r.data.dtype))
    r = msclip.read_raster(path, window=Window(40, 30, 20, 20))  # past the right and bottom
    assert r.data.shape == (12, 10, 8) and (r.transform.c, r.transform.f) == (500400, 4999700)
    r = msclip.read_raster(path, window=Window(7.6, 3.8, 16.2, 8.4))  # whole pixels, nearest
    assert r.data.shape == (12, 8, 16) and (r.transform.c, r.transform.f) == (500080, 4999960)
    np.testing.assert_array_equal(r.data, data[:, 4:12, 8:24].astype(r.data.dtype))
    with pytest.raises(RasterReadError, match=r"window .*outside the raster's 48x40 pixels"):
        msclip.read_raster(path, window=Window(60, 0, 8, 8))
    # rasterio's ((row_start, row_stop), (col_start, col_stop)) form reads the same pixels
    r = msclip.read_raster(path, window=((4, 12), (8, 24)))
    np.testing.assert_array_equal(r.data, data[:, 4:12, 8:24].astype(r.data.dtype))
    with pytest.raises(RasterReadError, match=r"window=.* is not a window; give a rasterio Window"):
        msclip.read_raster(path, window=(4, 12))


def test_sensor_band_names_in_descriptions_get_a_sensor_hint(make_geotiff):
    path, _ = make_geotiff("l8.tif", count=7, descriptions=[f"SR_B{i}" for i in range(1, 8)])
    # stored integers that declare no scale: the sensor whose product scale reads them first
    # (landsat89 took them as reflectance x 10000, 2-3 times too bright)
    with pytest.raises(BandError, match=r"landsat89_sr and landsat89: pass sensor='landsat89_sr'"):
        msclip.read_raster(path)
    floats, _ = make_geotiff("f.tif", count=7, dtype="float32",
                             descriptions=[f"SR_B{i}" for i in range(1, 8)])  # fmt: skip
    said = r"landsat89 and landsat89_sr: pass sensor='landsat89'"
    with pytest.raises(BandError, match=said) as e:
        msclip.read_raster(floats)
    assert e.value.param == "sensor"
    assert msclip.read_raster(path, sensor="landsat89_sr").bands[3] == "OLI_B4"


def test_sensor_does_not_renumber_a_sentinel2_file_that_names_its_bands(make_geotiff):
    """A folder may mix a sensor's unnamed files with Sentinel-2 files that name their bands:
    --sensor hls_l30 read B05 of those as Landsat's near-infrared and B11 as its thermal band,
    beside Sentinel-2's B8A and B12, without a word."""
    s2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    path, data = make_geotiff(count=10, descriptions=s2)
    for sensor in ("hls_l30", "landsat89_sr"):
        with pytest.warns(DescribedBandsWarning, match=f"not all bands of the sensor {sensor}"):
            r = msclip.read_raster(path, sensor=sensor)
        assert r.bands == tuple(s2) and np.array_equal(r.data, data)
    # descriptions in the sensor's own numbering keep their meaning under it
    hls, _ = make_geotiff("hls.tif", count=4, descriptions=["B02", "B03", "B04", "B05"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = msclip.read_raster(hls, sensor="hls_l30")
    assert r.bands == ("OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5")


def test_landsat_numbered_bands_with_collection_2_scale_are_not_taken_as_sentinel2(make_geotiff):
    """B1 ... B7 are Sentinel-2's B01 ... B07 by name, but a file declaring Landsat Collection
    2's surface-reflectance scale is a Landsat file: its B5 is near-infrared, not a red edge."""
    import rasterio

    path, _ = make_geotiff("lc09.tif", count=7, descriptions=[f"B{i}" for i in range(1, 8)])
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-5,) * 7, (-0.2,) * 7
    with pytest.raises(BandError, match=r"declares Landsat Collection 2's surface-reflectance "
                       r"scale .*pass --sensor landsat89_sr") as err:  # fmt: skip
        msclip.read_raster(path)
    assert err.value.param == "sensor"
    r = msclip.read_raster(path, sensor="landsat89_sr")
    assert r.bands[4] == "OLI_B5" and r.data.dtype == np.float32
    with rasterio.open(path, "r+") as dst:  # another scale: Sentinel-2's numbering as before
        dst.scales, dst.offsets = (1e-4,) * 7, (0.0,) * 7
    assert msclip.read_raster(path).bands[4] == "B05"


def test_a_raster_that_does_not_fit_in_memory_is_named_with_the_ways_to_read_it(
    make_geotiff, monkeypatch
):
    from msclip.errors import RasterTooLargeError
    from msclip.io import readers

    path, _ = make_geotiff("big.tif", count=12)

    def no_room(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(readers, "read_image", no_room)
    with pytest.raises(RasterTooLargeError, match=r"big.tif is 48x40 pixels in 12 bands: .* does "
                       r"not fit in memory; cut it into tiles"):  # fmt: skip
        msclip.read_raster(path)


def test_read_raster_refuses_what_is_not_a_path(tmp_path):
    """None, a number or an array given as the path: one TypeError saying what to give (an array
    goes to the model's preprocessing); a bytes path is read like a str one."""
    for bad in (None, 3):
        with pytest.raises(TypeError, match="path of an image file"):
            msclip.read_raster(bad)
    with pytest.raises(TypeError, match=r"model.preprocess\(input_bands"):
        msclip.read_raster(np.zeros((3, 8, 8), np.uint16))
    path = tmp_path / "t.tif"
    msclip.write_geotiff(path, np.ones((3, 8, 8), np.uint16), bands=["B04", "B03", "B02"])
    assert msclip.read_raster(os.fsencode(path)).bands == ("B04", "B03", "B02")


@pytest.mark.parametrize(
    ("colours", "expected"),
    [
        (("blue", "green", "red"), ("blue", "green", "red")),
        (("red", "green", "blue"), ("red", "green", "blue")),
        (("gray", "undefined", "undefined"), ("red", "green", "blue")),
        (("blue", "green", "red", "undefined"), ("NAIP_B", "NAIP_G", "NAIP_R", "NAIP_N")),
        (("red", "green", "blue", "undefined"), ("NAIP_R", "NAIP_G", "NAIP_B", "NAIP_N")),
    ],
)
def test_colour_interpretation_orders_unnamed_bands(tmp_path, colours, expected):
    # a BGR file (OpenCV-style stacks) declares its order only in its colour interpretation
    import rasterio
    from rasterio.enums import ColorInterp

    path, data = tmp_path / "bgr.tif", np.arange(len(colours) * 16).reshape(-1, 4, 4)
    transform = rasterio.transform.from_origin(0, 40, 10, 10)
    profile = dict(driver="GTiff", count=len(colours), height=4, width=4, dtype="uint16",
                   crs="EPSG:32632", transform=transform)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(np.uint16))
        dst.colorinterp = [ColorInterp[c] for c in colours]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenericBandNamesWarning)  # four bands warn either way
        r = msclip.read_raster(path)
    assert r.bands == expected and np.array_equal(r.data, data)
    if expected[0] == "blue":
        assert r.select(["red", "green", "blue"]).data[0].min() == 32  # the file's third band


def test_a_folder_scan_skips_what_an_interrupted_write_left(make_geotiff, tmp_path, caplog):
    from msclip.io import TMP_PREFIX, list_image_set

    path, _ = make_geotiff("a.tif")
    (tmp_path / f"{TMP_PREFIX}map.tif.k2j4x9.tif").write_bytes(path.read_bytes()[:500])
    found = list_image_set([tmp_path])
    assert found.names == ["a.tif"]
    assert "1 unfinished temporary file of an interrupted write" in caplog.text


def test_a_list_file_written_on_windows_is_read_as_meant(tmp_path):
    from msclip.io import list_image_set

    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(b"x")
    # UTF-8 with a byte-order mark, CRLF line ends, an indented comment
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.tif\r\n  # the second one\r\nb.tif\r\n")
    found = list_image_set([tmp_path / "list.txt"])
    assert found.paths == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]


def test_a_geotiff_whose_name_is_not_utf8_is_named_not_a_crash(tmp_path) -> None:
    """GDAL opens UTF-8 paths only: a Latin-1 file name is a RasterReadError naming the file and
    the fix (it was a bare UnicodeEncodeError)."""
    import rasterio

    from msclip.io.readers import read_raster

    good = tmp_path / "x.tif"
    with rasterio.open(good, "w", driver="GTiff", width=8, height=8, count=3,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(np.ones((3, 8, 8), np.uint8))
    raw = os.fsencode(tmp_path) + b"/caf\xe9.tif"
    try:
        os.rename(os.fsencode(good), raw)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with pytest.raises(RasterReadError, match=r"caf\\xe9\.tif: the file's name is not UTF-8"):
        read_raster(os.fsdecode(raw))


def test_a_file_given_as_an_image_that_is_none_is_refused_when_listed(tmp_path):
    """A named file whose extension no reader takes is an error of the image specification
    (naming --images in the programs), not an unreadable image found during the run."""
    from msclip.errors import ImageSetError
    from msclip.io import list_image_set

    (tmp_path / "captions.csv").write_text("a,b\n")
    (tmp_path / "notes").write_text("x")
    for name in ("captions.csv", "notes"):
        with pytest.raises(ImageSetError, match="is not an image file") as err:
            list_image_set([tmp_path / name])
        assert err.value.param == "images"


# -- a TIFF's size from its header ----------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{}, {"tiled": True, "blockxsize": 32, "blockysize": 32}, {"BIGTIFF": "YES"},
     {"ENDIANNESS": "BIG"}, {"BIGTIFF": "YES", "ENDIANNESS": "BIG"},
     {"compress": "deflate", "interleave": "pixel"}],
)  # fmt: skip
@pytest.mark.parametrize("dtype, shape", [("uint16", (70, 130)), ("uint8", (3, 70000))])
def test_a_tiffs_size_from_its_header_is_gdals(tmp_path, options, dtype, shape):
    """Classic and BigTIFF, either byte order, stripped or tiled, widths as SHORT or LONG: the
    header gives GDAL's height and width."""
    import rasterio

    from msclip.io.readers import tiff_size

    path = tmp_path / "x.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no georeference
        with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=2,
                           dtype=dtype, **options) as f:  # fmt: skip
            f.write(np.ones((2, *shape), dtype))
        with rasterio.open(path) as f:
            assert tiff_size(path) == (f.height, f.width) == shape


def test_a_file_that_is_no_tiff_has_no_size_from_a_header(tmp_path):
    from msclip.io.readers import tiff_size

    (tmp_path / "a.tif").write_bytes(b"not a tiff at all, longer than a header")
    (tmp_path / "b.tif").write_bytes(b"II*\x00\xff\xff\xff\x7f" + bytes(8))  # IFD past the end
    (tmp_path / "c.tif").write_bytes(b"II*\x00")  # cut short
    for name in ("a.tif", "b.tif", "c.tif", "missing.tif"):
        assert tiff_size(tmp_path / name) is None


def test_macos_appledouble_files_in_a_list_are_skipped_with_a_note(tmp_path, caplog):
    """An archive copied from a Mac to exFAT or a share holds ``._name.tif`` beside each image
    (Finder metadata); ``find -name '*.tif' > list.txt`` lists them. They are skipped, named in
    one warning, not read and counted as unreadable images; a real image whose name starts with
    ``._`` is kept."""
    import rasterio

    from msclip.errors import ImageSetError
    from msclip.io import list_image_set

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no georeference
        with rasterio.open(tmp_path / "._real.tif", "w", driver="GTiff", width=4, height=4,
                           count=1, dtype="uint8") as f:  # fmt: skip
            f.write(np.ones((1, 4, 4), "uint8"))
    (tmp_path / "a.tif").write_bytes(b"II*\x00")
    (tmp_path / "._a.tif").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (tmp_path / "list.txt").write_text("._a.tif\na.tif\n._real.tif\nmissing/._gone.tif\n")
    with caplog.at_level("WARNING"):
        listed = list_image_set([tmp_path / "list.txt"])
    assert listed.names == ["a.tif", "._real.tif", "missing/._gone.tif"]
    assert "1 listed file(s) are macOS AppleDouble files" in caplog.text
    assert str(tmp_path / "._a.tif") in caplog.text
    assert list_image_set([str(tmp_path / "*.tif")]).names == ["a.tif"]  # not matched by *
    assert list_image_set([str(tmp_path / "._*.tif")]).names == ["._real.tif"]
    with pytest.raises(ImageSetError, match=r"macOS AppleDouble files \(.*\._a\.tif\), not im"):
        list_image_set([tmp_path / "._a.tif"])
