"""JPEG 2000 (``.jp2``) and GDAL virtual rasters (``.vrt``) read like GeoTIFFs: one file, a
folder, a scene, an index, and the stamps that tell when what they read has changed."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

import msclip
from msclip.errors import RasterReadError
from msclip.io import list_image_set, read_raster
from msclip.io.readers import input_stamp

ORIGIN = Affine(10, 0, 500000, 0, -10, 5000000)
BANDS = ["B02", "B03", "B04", "B08"]
TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--quiet", "--batch-size", "4"]


def _data(seed: int = 0, shape: tuple[int, int] = (40, 48), count: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 6000, (count, *shape)).astype("uint16")


def write_band_files(folder: Path, data: np.ndarray, names: list[str]) -> list[Path]:
    """One single-band GeoTIFF per band, as a product's band files are."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for band, name in zip(data, names):
        p = folder / f"T32TQM_{name}.tif"
        msclip.write_geotiff(p, band[None], crs=CRS.from_epsg(32632), transform=ORIGIN)
        paths.append(p)
    return paths


def write_vrt(path: Path, sources: list[Path], names: list[str], shape: tuple[int, int]) -> Path:
    """A VRT stacking single-band files (what ``gdalbuildvrt -separate`` writes), with the band
    names as descriptions and the sources relative to the VRT."""
    h, w = shape
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{i + 1}"><Description>{name}</Description>'
        f'<SimpleSource><SourceFilename relativeToVRT="1">'
        f"{os.path.relpath(src, path.parent)}</SourceFilename><SourceBand>1</SourceBand>"
        f"</SimpleSource></VRTRasterBand>"
        for i, (src, name) in enumerate(zip(sources, names))
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>EPSG:32632</SRS>'
        f"<GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>{bands}</VRTDataset>"
    )
    return path


def write_jp2(path: Path, data: np.ndarray, names: list[str]) -> Path:
    """A lossless JPEG 2000 file with band descriptions."""
    profile = {"driver": "JP2OpenJPEG", "count": data.shape[0], "height": data.shape[1],
               "width": data.shape[2], "dtype": str(data.dtype), "crs": CRS.from_epsg(32632),
               "transform": ORIGIN}  # fmt: skip
    with rasterio.open(path, "w", **profile, QUALITY=100, REVERSIBLE="YES") as dst:
        dst.write(data)
        dst.descriptions = tuple(names)
    return path


def test_a_jp2_file_is_read_with_its_bands_georeference_and_windows(tmp_path):
    data = _data()
    p = write_jp2(tmp_path / "granule.jp2", data, BANDS)
    r = read_raster(p)
    assert list(r.bands) == BANDS and r.crs == CRS.from_epsg(32632) and r.transform == ORIGIN
    np.testing.assert_array_equal(r.data, data)
    part = read_raster(p, window=Window(8, 4, 16, 12))
    np.testing.assert_array_equal(part.data, data[:, 4:16, 8:24])
    assert part.transform == ORIGIN @ Affine.translation(8, 4)


def test_a_vrt_of_band_files_reads_as_the_stacked_raster(tmp_path):
    data = _data(1)
    files = write_band_files(tmp_path / "IMG_DATA", data, BANDS)
    vrt = write_vrt(tmp_path / "stack.vrt", files, BANDS, data.shape[1:])
    r = read_raster(vrt)
    assert list(r.bands) == BANDS and r.crs == CRS.from_epsg(32632) and r.transform == ORIGIN
    np.testing.assert_array_equal(r.data, data)
    part = read_raster(vrt, window=Window(0, 8, 8, 8))
    np.testing.assert_array_equal(part.data, data[:, 8:16, :8])


def test_a_vrt_whose_band_file_is_missing_names_that_file(tmp_path):
    data = _data(2)
    files = write_band_files(tmp_path / "b", data, BANDS)
    vrt = write_vrt(tmp_path / "stack.vrt", files, BANDS, data.shape[1:])
    files[2].unlink()
    with pytest.raises(RasterReadError, match=r"cannot read VRT .*stack\.vrt.*T32TQM_B04\.tif"):
        read_raster(vrt)


def test_input_stamps_cover_what_the_input_reads(tmp_path):
    data = _data(3)
    files = write_band_files(tmp_path / "b", data, BANDS)
    vrt = write_vrt(tmp_path / "stack.vrt", files, BANDS, data.shape[1:])
    size = vrt.stat().st_size + sum(f.stat().st_size for f in files)
    before = input_stamp(vrt)
    assert before[0] == size
    # a band file rewritten under the unchanged VRT is a change of the VRT
    msclip.write_geotiff(files[1], data[:1] // 2, crs=CRS.from_epsg(32632), transform=ORIGIN)
    os.utime(files[1], ns=(1, 2 * 10**18))  # later than any other
    assert input_stamp(vrt) != before and input_stamp(vrt)[1] == 2 * 10**18
    # a plain file: its own stat; a folder: its files'
    st = files[0].stat()
    assert input_stamp(files[0]) == (st.st_size, st.st_mtime_ns)
    assert input_stamp(tmp_path / "b")[0] == sum(f.stat().st_size for f in files)
    # a missing band file counts 0 bytes: its return is a change too
    files[3].unlink()
    gone = input_stamp(vrt)
    assert gone[0] == input_stamp(vrt)[0] < size
    with pytest.raises(OSError):
        input_stamp(tmp_path / "nothing.vrt")


def test_a_folder_lists_the_vrt_not_its_band_files_nor_sidecars(tmp_path, caplog):
    data = _data(4)
    files = write_band_files(tmp_path / "scene", data, BANDS)
    vrt = write_vrt(tmp_path / "scene" / "stack.vrt", files, BANDS, data.shape[1:])
    jp2 = write_jp2(tmp_path / "scene" / "other.jp2", data, BANDS)
    assert (tmp_path / "scene" / "other.jp2.aux.xml").is_file()  # GDAL's metadata sidecar
    (tmp_path / "scene" / "notes.md").write_text("x")
    with caplog.at_level(logging.INFO, logger="msclip.io.images"):
        listed = list_image_set([tmp_path / "scene"])
    assert sorted(listed.paths) == sorted([str(vrt), str(jp2)])
    text = caplog.text
    assert "4 files read by the VRT file(s) there are not listed on their own" in text
    # one other file is named; the sidecar is not an "other file"
    assert re.search(r"1 file with another extension \(\.md\)", text)
    # a pattern matching everything gives the same images
    pattern = list_image_set([str(tmp_path / "scene" / "*")])
    assert sorted(pattern.paths) == sorted(listed.paths)
    # a band file given by itself is still an image
    assert list_image_set([files[0]]).paths == [str(files[0])]


def test_classification_of_a_vrt_and_a_jp2_equals_that_of_the_geotiff(tmp_path):
    from msclip.cli.inference import main

    data = _data(5, (40, 40), 12)
    names = msclip.spectral.bands.default_bands_for_count(12)
    tif = tmp_path / "tile.tif"
    msclip.write_geotiff(tif, data, crs=CRS.from_epsg(32632), transform=ORIGIN, bands=names)
    files = write_band_files(tmp_path / "bands", data, names)
    vrt = write_vrt(tmp_path / "tile.vrt", files, names, data.shape[1:])
    jp2 = write_jp2(tmp_path / "tile.jp2", data, names)
    probs = {}
    for p in (tif, vrt, jp2):
        out = tmp_path / f"{p.suffix[1:]}.csv"
        argv = ["--run-classification", "--images", str(p), "--class-names", "forest", "river",
                "--templates", "short", "--save-path", str(out), *TINY]  # fmt: skip
        assert main(argv) == 0
        probs[p.suffix] = pd.read_csv(out)[["forest", "river"]].to_numpy()
    np.testing.assert_allclose(probs[".vrt"], probs[".tif"], atol=1e-6)
    np.testing.assert_allclose(probs[".jp2"], probs[".tif"], atol=1e-6)


def test_a_vrt_scene_gives_the_maps_of_the_geotiff_scene(tmp_path):
    from msclip.cli.inference import main

    data = _data(6, (64, 96), 12)
    names = msclip.spectral.bands.default_bands_for_count(12)
    tif = tmp_path / "scene.tif"
    msclip.write_geotiff(tif, data, crs=CRS.from_epsg(32632), transform=ORIGIN, bands=names)
    vrt = write_vrt(
        tmp_path / "scene.vrt", write_band_files(tmp_path / "b", data, names), names,
        data.shape[1:],
    )  # fmt: skip
    maps = {}
    for p in (tif, vrt):
        out = tmp_path / f"maps-{p.suffix[1:]}"
        argv = ["--run-scene", "--scene", str(p), "--query", "a river", "--save-path", str(out),
                *TINY]  # fmt: skip
        assert main(argv) == 0
        with rasterio.open(out / "similarity.tif") as src:
            assert src.crs == CRS.from_epsg(32632)
            maps[p.suffix] = (src.read(), src.transform)
    np.testing.assert_allclose(maps[".vrt"][0], maps[".tif"][0], atol=1e-6)
    assert maps[".vrt"][1] == maps[".tif"][1]


def test_an_index_notes_a_vrt_whose_band_file_changed(tmp_path, capsys):
    from msclip.cli.index import main

    data = _data(7, (40, 40), 12)
    names = msclip.spectral.bands.default_bands_for_count(12)
    files = write_band_files(tmp_path / "b", data, names)
    vrt = write_vrt(tmp_path / "tile.vrt", files, names, data.shape[1:])
    idx = tmp_path / "v.index"
    assert main(["build", str(idx), "--images", str(vrt), *TINY]) == 0
    msclip.write_geotiff(files[3], data[3:4] // 3, crs=CRS.from_epsg(32632), transform=ORIGIN)
    os.utime(files[3], ns=(1, 10**18))
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(vrt), *TINY]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"changed since indexed\s+1\n", out)
    assert str(vrt) in err and "changed since they were indexed" in err


def test_band_files_without_a_vrt_are_refused_once_with_the_way_to_stack_them(tmp_path, capsys):
    from msclip.cli.inference import main

    data = _data(8, (40, 40), 12)
    names = msclip.spectral.bands.default_bands_for_count(12)
    files = write_band_files(tmp_path / "IMG_DATA", data, names)
    argv = ["--run-classification", "--images", str(tmp_path / "IMG_DATA"), "--class-names",
            "forest", "river", "--templates", "short", "--save-path", str(tmp_path / "o.csv"),
            *TINY]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "could not be read" in line)
    # the one cause is said once, for the first file, then the others are named
    assert warning.count("cannot tell which bands a 1-band image holds") == 1
    assert "msclip.io.stack_band_files(files" in warning and "give the VRT" in warning
    assert f"and the same for {files[1]}, {files[2]}" in warning and "and 6 more" in warning


def _band_file(path: Path, data: np.ndarray, res: float, crs: int = 32632, nodata=None) -> Path:
    transform = Affine(res, 0, 500000, 0, -res, 5000000)
    msclip.write_geotiff(path, data[None], crs=CRS.from_epsg(crs), transform=transform,
                         nodata=nodata)  # fmt: skip
    return path


def test_band_files_of_several_resolutions_stack_into_one_image(tmp_path):
    from msclip.io import stack_band_files

    rng = np.random.default_rng(9)
    b02, b08 = (rng.integers(1, 6000, (40, 40)).astype("uint16") for _ in range(2))
    b8a = rng.integers(1, 6000, (20, 20)).astype("uint16")  # 20 m
    b09 = rng.integers(1, 6000, (8, 8)).astype("uint16")  # 50 m: 5 fine pixels per pixel
    granule = tmp_path / "GRANULE" / "IMG_DATA"
    granule.mkdir(parents=True)
    files = [
        _band_file(granule / "T32TQM_20240101T102021_B02_10m.tif", b02, 10),
        _band_file(granule / "T32TQM_20240101T102021_B08_10m.tif", b08, 10),
        _band_file(granule / "T32TQM_20240101T102021_B8A_20m.tif", b8a, 20, nodata=0),
        _band_file(granule / "T32TQM_20240101T102021_B09_50m.tif", b09, 50),
    ]
    vrt = stack_band_files(files, tmp_path / "stack.vrt")
    r = read_raster(vrt)
    assert list(r.bands) == ["B02", "B08", "B8A", "B09"] and r.data.shape == (4, 40, 40)
    assert r.crs == CRS.from_epsg(32632) and r.transform == ORIGIN
    np.testing.assert_array_equal(r.data[0], b02)
    np.testing.assert_array_equal(r.data[2], np.repeat(np.repeat(b8a, 2, 0), 2, 1))  # nearest
    np.testing.assert_array_equal(r.data[3], np.repeat(np.repeat(b09, 5, 0), 5, 1))
    # the sources are named relative to the VRT: the folder moves as a whole
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    np.testing.assert_array_equal(read_raster(moved / "stack.vrt").data, r.data)
    # a sensor's own numbering, and bands given by name
    landsat = stack_band_files(
        [moved / "GRANULE" / "IMG_DATA" / f.name for f in files[:2]], moved / "l.vrt",
        bands=["B4", "B5"], sensor="landsat89", resampling="bilinear",
    )  # fmt: skip
    assert list(read_raster(landsat).bands) == ["OLI_B4", "OLI_B5"]


def test_band_files_that_do_not_make_one_image_are_refused(tmp_path):
    from msclip.errors import BandError
    from msclip.io import stack_band_files

    a = _band_file(tmp_path / "x_B02.tif", np.ones((8, 8), "uint16"), 10)
    utm33 = _band_file(tmp_path / "x_B03.tif", np.ones((8, 8), "uint16"), 10, crs=32633)
    shifted = tmp_path / "x_B04.tif"
    msclip.write_geotiff(shifted, np.ones((1, 8, 8), "uint16"), crs=CRS.from_epsg(32632),
                         transform=Affine(10, 0, 500100, 0, -10, 5000000))  # fmt: skip
    floats = _band_file(tmp_path / "x_B05.tif", np.ones((8, 8), "float32"), 10)
    two = tmp_path / "two_B06.tif"
    msclip.write_geotiff(two, np.ones((2, 8, 8), "uint16"), crs=CRS.from_epsg(32632),
                         transform=ORIGIN)  # fmt: skip
    unnamed = _band_file(tmp_path / "band.tif", np.ones((8, 8), "uint16"), 10)
    out = tmp_path / "s.vrt"
    cases = [
        ([a, utm33], {}, "share a CRS"),
        ([a, shifted], {}, "cover the same extent"),
        ([a, floats], {}, "share a data type"),
        ([a, two], {}, "holds 2 bands"),
        ([a, unnamed], {}, "no band in the name of"),
        ([a, a], {}, "given by more than one file"),
        ([a], {"bands": ["B02", "B03"]}, "2 band names for 1 files"),
    ]
    for files, kw, said in cases:
        with pytest.raises(BandError, match=said):
            stack_band_files(files, out, **kw)
    with pytest.raises(ValueError, match=r"ending in \.vrt"):
        stack_band_files([a], tmp_path / "s.tif")
    with pytest.raises(RasterReadError, match="cannot open band file"):
        stack_band_files([tmp_path / "missing_B02.tif"], out)
    assert not out.exists()  # nothing written by a refused stack


def test_a_stack_declares_the_scale_and_offset_of_l2a_band_files(tmp_path):
    """SAFE L2A band files of baseline 04.00+ store reflectance x 10000 + 1000 (the offset is in
    the product's XML only): their stack declares it, and msclip reads reflectance x 10000."""
    from msclip.io import stack_band_files

    stored = np.full((16, 16), 1800, "uint16")
    stored[0, 0] = 0  # the product's nodata
    files = [_band_file(tmp_path / f"T32TQM_{b}_10m.tif", stored, 10, nodata=0)
             for b in ("B02", "B03")]  # fmt: skip
    vrt = stack_band_files(files, tmp_path / "l2a.vrt", scale=1e-4, offset=-0.1)
    r = read_raster(vrt)
    assert r.data.dtype == np.float32 and np.isnan(r.data[:, 0, 0]).all()
    np.testing.assert_allclose(r.data[:, 1:, 1:], 800.0, atol=1e-3)
    for bad in ({"scale": 0}, {"offset": float("nan")}, {"scale": "1e-4"}):
        with pytest.raises(ValueError, match=r"scale|offset"):
            stack_band_files(files, tmp_path / "bad.vrt", **bad)


def _scaled_band_file(path: Path, data: np.ndarray, scale: float, offset: float) -> Path:
    _band_file(path, data, 10, nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (scale,), (offset,)
    return path


def test_a_stack_keeps_the_scale_and_offset_its_band_files_declare(tmp_path):
    """Cloud COGs of L2A bands declare their scale and offset (reflectance x 10000 + 1000 stored):
    the stack declares each file's own, instead of reading the stored numbers as reflectance."""
    from msclip.errors import BandError
    from msclip.io import stack_band_files

    stored = np.full((16, 16), 1650, "uint16")
    stored[0, 0] = 0
    files = [_scaled_band_file(tmp_path / f"S2B_32TQM_20240101_0_L2A_{b}.tif", stored, 1e-4, -0.1)
             for b in ("B02", "B03")]  # fmt: skip
    for kw in ({}, {"scale": 1e-4, "offset": -0.1}):  # the files' own, or the same given
        r = read_raster(stack_band_files(files, tmp_path / "s.vrt", **kw))
        assert r.data.dtype == np.float32 and np.isnan(r.data[:, 0, 0]).all()
        np.testing.assert_allclose(r.data[:, 1:, 1:], 650.0, atol=1e-3)
        alone = read_raster(files[0], bands=["B02"]).data  # the file read by itself
        np.testing.assert_allclose(r.data, alone[[0, 0]], atol=1e-3)
    with pytest.raises(BandError, match=r"declares the scale 0\.0001 and offset -0\.1 itself"):
        stack_band_files(files, tmp_path / "other.vrt", scale=1e-4)
    assert not (tmp_path / "other.vrt").exists()


def test_landsat_and_hls_band_files_are_named_by_their_own_numbering(tmp_path):
    """``LC09_L2SP_..._SR_B5.TIF`` is OLI's near-infrared, not Sentinel-2's red edge B05, and its
    stack declares Collection 2's surface-reflectance scale (the files declare none), so that
    the VRT reads as reflectance without a --sensor; HLS L30 numbers bands as Landsat does."""
    from msclip.errors import BandError
    from msclip.io import stack_band_files

    reflectance = np.linspace(0.02, 0.4, 256).reshape(16, 16)
    stored = np.round((reflectance + 0.2) / 2.75e-5).astype("uint16")
    stored[0, 0] = 0  # Collection 2's fill value
    stem = "LC09_L2SP_193027_20240101_20240102_02_T1"
    files = [_band_file(tmp_path / f"{stem}_SR_B{i}.TIF", stored, 10) for i in (2, 5, 7)]
    r = read_raster(stack_band_files(files, tmp_path / "sr.vrt"))
    assert list(r.bands) == ["OLI_B2", "OLI_B5", "OLI_B7"]
    assert np.isnan(r.data[:, 0, 0]).all()
    np.testing.assert_allclose(r.data[:, 1:, 1:], np.stack([reflectance * 10000] * 3)[:, 1:, 1:],
                               atol=0.5)  # fmt: skip
    l1 = [_band_file(tmp_path / f"LC08_L1TP_193027_20240101_20240102_02_T1_B{i}.TIF", stored, 10)
          for i in (4, 5)]  # fmt: skip
    r = read_raster(stack_band_files(l1, tmp_path / "l1.vrt"))
    assert list(r.bands) == ["OLI_B4", "OLI_B5"] and r.data.dtype == np.uint16  # no product scale
    hls = [_band_file(tmp_path / f"HLS.L30.T32TQM.2024001T102021.v2.0.B{i:02d}.tif", stored, 10)
           for i in (4, 5)]  # fmt: skip
    assert list(read_raster(stack_band_files(hls, tmp_path / "h.vrt")).bands) == [
        "OLI_B4",
        "OLI_B5",
    ]
    tm = _band_file(tmp_path / "LT05_L2SP_193027_19900101_20200101_02_T1_SR_B4.TIF", stored, 10)
    with pytest.raises(BandError, match=r"Landsat 5 file, whose band numbers"):
        stack_band_files([tm], tmp_path / "tm.vrt")
    s2 = _band_file(tmp_path / "T32TQM_20240101T102021_B02_10m.tif", stored, 10)
    with pytest.raises(BandError, match=r"different products .*landsat89_sr.*Sentinel-2"):
        stack_band_files([files[0], s2], tmp_path / "mixed.vrt")
    # the product's thermal band is a file of the same product, read in its stored unit (the
    # files were refused as "different products")
    st = _band_file(tmp_path / f"{stem}_ST_B10.TIF", stored, 10)
    r = read_raster(stack_band_files([*files, st], tmp_path / "st.vrt"))
    assert list(r.bands) == ["OLI_B2", "OLI_B5", "OLI_B7", "TIRS_B10"]
    assert r.data[3, 1, 1] == stored[1, 1]
    # bands given by name, or a sensor given, decide as before
    named = stack_band_files(files[:2], tmp_path / "n.vrt", bands=["B02", "B8A"])
    assert list(read_raster(named).bands) == ["B02", "B8A"]


def test_a_vrt_without_band_descriptions_is_named_from_its_band_files(tmp_path):
    """``gdalbuildvrt -separate stack.vrt *_B*.jp2`` describes no band and stacks the files in
    sorted order (B11 and B12 before B8A): the bands are named from the files they read, not
    from the band count (which put B11's values in B8A without a word)."""
    order = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12", "B8A"]
    data = _data(seed=3, count=10)
    files = write_band_files(tmp_path / "IMG_DATA", data, order)
    vrt = write_vrt(tmp_path / "stack.vrt", files, order, (40, 48))
    vrt.write_text(re.sub(r"<Description>\w+</Description>", "", vrt.read_text()))
    r = read_raster(vrt)
    assert list(r.bands) == order and r.band_source == "file names"
    np.testing.assert_array_equal(r.data, data)
    # Landsat band files: the product's own numbering (B5 is OLI's near-infrared)
    stem = "LC09_L2SP_193027_20240101_20240102_02_T1_SR"
    landsat = write_band_files(tmp_path / "L", data[:2], ["B4", "B5"])
    renamed = [p.rename(p.with_name(f"{stem}_{b}.TIF")) for p, b in zip(landsat, ["B4", "B5"])]
    vrt = write_vrt(tmp_path / "l.vrt", renamed, ["", ""], (40, 48))
    vrt.write_text(re.sub(r"<Description></Description>", "", vrt.read_text()))
    assert list(read_raster(vrt).bands) == ["OLI_B4", "OLI_B5"]
    # files without band names in theirs: the band count decides, as for a GeoTIFF
    plain = [p.rename(p.with_name(f"band{i}.tif")) for i, p in enumerate(files)]
    vrt = write_vrt(tmp_path / "p.vrt", plain, order, (40, 48))
    vrt.write_text(re.sub(r"<Description>\w+</Description>", "", vrt.read_text()))
    assert read_raster(vrt).band_source == "count"
