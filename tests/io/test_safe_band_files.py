"""Band files as Sentinel-2 SAFE products and cloud archives keep them, stacked into one image
(:func:`msclip.io.stack_band_files`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

import msclip
from msclip.errors import BandError
from msclip.io import read_raster, stack_band_files

SAFE = "S2A_MSIL2A_20240601T102021_{n}_R065_T32TQM_20240601T150000.SAFE"
GRANULE = "GRANULE/L2A_T32TQM_A046000_20240601T102500/IMG_DATA"


def _band(path: Path, value: int, res: int, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full((1, size, size), value, "uint16")
    data[:, 0, 0] = 0  # the product's nodata
    msclip.write_geotiff(path, data, crs=CRS.from_epsg(32632), nodata=0,
                         transform=Affine(res, 0, 600000, 0, -res, 5000000))  # fmt: skip
    return path


def _safe(root: Path, baseline: str, date: str = "20240601T102021") -> list[Path]:
    img = root / SAFE.format(n=baseline) / GRANULE
    return [
        _band(img / "R10m" / f"T32TQM_{date}_B04_10m.tif", 1300 + (baseline >= "N0400") * 1000, 10),
        _band(
            img / "R20m" / f"T32TQM_{date}_B8A_20m.tif", 3100 + (baseline >= "N0400") * 1000, 20, 8
        ),
    ]


def test_one_path_given_as_the_files_is_refused_by_name(tmp_path):
    """A folder or one file given where a list belongs was read one character at a time
    ('cannot open band file S')."""
    files = _safe(tmp_path, "N0301")
    for one in (str(files[0].parent), files[0].parent, str(files[0])):
        with pytest.raises(BandError, match=r"files is one path \(.*R10m.*\): .*a list of band"):
            stack_band_files(one, tmp_path / "s.vrt")  # type: ignore[arg-type]
    assert not (tmp_path / "s.vrt").exists()


def test_band_files_of_two_tiles_or_dates_are_refused(tmp_path):
    """Files of one tile on two dates share the CRS and extent: they were stacked into one image
    of two dates without a word."""
    june1 = _safe(tmp_path / "a", "N0301")
    june11 = _safe(tmp_path / "b", "N0301", date="20240611T102021")
    said = (
        r"2 tiles or acquisitions \(T32TQM_20240601T102021: T32TQM_20240601T102021_B04_10m\.tif; "
    )
    with pytest.raises(BandError, match=said + "T32TQM_20240611T102021: "):
        stack_band_files([june1[0], june11[1]], tmp_path / "s.vrt")
    tqn = _band(tmp_path / "T32TQN_20240601T102021_B8A_20m.tif", 3100, 20, 8)
    with pytest.raises(BandError, match="T32TQN_20240601T102021"):
        stack_band_files([june1[0], tqn], tmp_path / "s.vrt")
    hls = [_band(tmp_path / f"HLS.S30.T32TQM.{d}T102021.v2.0.{b}.tif", 1, 10)
           for d, b in (("2024153", "B04"), ("2024163", "B8A"))]  # fmt: skip
    with pytest.raises(BandError, match="tiles or acquisitions"):
        stack_band_files(hls, tmp_path / "s.vrt")
    assert not (tmp_path / "s.vrt").exists()
    # files of one acquisition, and files whose names carry none, stack
    assert stack_band_files(june1, tmp_path / "s.vrt").exists()


def test_a_band_given_twice_names_its_files_and_the_fix(tmp_path):
    img = tmp_path / SAFE.format(n="N0301") / GRANULE
    b04 = _band(img / "R10m" / "T32TQM_20240601T102021_B04_10m.tif", 1, 10)
    b04_20 = _band(img / "R20m" / "T32TQM_20240601T102021_B04_20m.tif", 1, 20, 8)
    b8a = _band(img / "R20m" / "T32TQM_20240601T102021_B8A_20m.tif", 1, 20, 8)
    with pytest.raises(BandError) as err:
        stack_band_files([b04, b04_20, b8a], tmp_path / "s.vrt")
    said = str(err.value)
    assert f"B04 by {b04}, {b04_20})" in said and str(b8a) not in said
    assert "take each from the finest" in said


def test_safe_products_before_and_after_baseline_04_read_in_one_unit(tmp_path):
    """Band files of a SAFE product of baseline 04.00+ store reflectance x 10000 + 1000, the
    offset in the product's XML only: their stack declares it from the product's name (they
    were read 1000 too high beside an older product's files)."""
    old = stack_band_files(_safe(tmp_path, "N0301"), tmp_path / "old.vrt")
    new = stack_band_files(_safe(tmp_path, "N0510"), tmp_path / "new.vrt")
    a, b = read_raster(old), read_raster(new)
    assert a.bands == b.bands == ("B04", "B8A")
    np.testing.assert_allclose(b.data[:, 2:, 2:], a.data[:, 2:, 2:], atol=1e-2)
    np.testing.assert_allclose(b.data[:, 5, 5], [1300, 3100], atol=1e-2)
    assert np.isnan(b.data[:, 0, 0]).all()
    # the offset given is the same one; another one given is used as given
    same = read_raster(stack_band_files(_safe(tmp_path, "N0510"), tmp_path / "g.vrt",
                                        scale=1e-4, offset=-0.1))  # fmt: skip
    np.testing.assert_allclose(same.data, b.data, atol=1e-2)
    # a BigEarthNet patch folder is named as a product (N9999) but is no .SAFE: its values, which
    # hold no offset, are read as stored
    patch = tmp_path / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    files = [
        _band(patch / f"{patch.name}_{b}.tif", v, 10) for b, v in (("B04", 1300), ("B08", 3100))
    ]
    ben = read_raster(stack_band_files(files, tmp_path / "ben.vrt"))
    np.testing.assert_allclose(ben.data[:, 5, 5], [1300, 3100], atol=1e-2)
