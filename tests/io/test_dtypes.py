"""Pixel values that are not real numbers are refused by the readers, never cast on the quiet."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

import msclip
from msclip.errors import RasterReadError


def _geotiff(path: Path, data: np.ndarray) -> Path:
    profile = dict(driver="GTiff", count=data.shape[0], height=data.shape[1],
                   width=data.shape[2], dtype=data.dtype.name, crs="EPSG:32632",
                   transform=rasterio.transform.from_origin(500000, 5000000, 10, 10))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_geotiff_is_refused(tmp_path, dtype):
    # SAR single-look complex: casting to float would keep the real part only
    data = (np.ones((3, 8, 8)) + 2j * np.ones((3, 8, 8))).astype(dtype)
    path = _geotiff(tmp_path / "slc.tif", data)
    with pytest.raises(RasterReadError, match=rf"slc\.tif holds {dtype} values.*amplitude"):
        msclip.read_raster(path)


@pytest.mark.parametrize("dtype", ["int8", "uint32", "int32", "float64", "int64"])
def test_real_dtypes_are_read_as_stored(tmp_path, dtype):
    data = np.arange(3 * 8 * 8).reshape(3, 8, 8).astype(dtype) - (3 if dtype == "int8" else 0)
    r = msclip.read_raster(_geotiff(tmp_path / "x.tif", data))
    assert r.data.dtype == np.dtype(dtype) and np.array_equal(r.data, data)


@pytest.mark.parametrize(
    ("array", "fix"),
    [
        (np.ones((3, 8, 8), complex), "amplitude"),
        (np.ones((3, 8, 8), bool), "boolean mask"),
        (np.full((3, 8, 8), "1"), "integer or floating-point"),
        (np.zeros((3, 8, 8), dtype=[("x", "f4"), ("y", "i2")]), "integer or floating-point"),
        (np.zeros((3, 8, 8), dtype="M8[s]"), "integer or floating-point"),
    ],
)
@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_arrays_that_are_not_images_are_refused(tmp_path, array, fix, ext):
    path = tmp_path / f"a{ext}"
    if ext == ".npy":
        np.save(path, array)
    else:
        np.savez(path, data=array)
    with pytest.raises(RasterReadError, match=rf"a\{ext} holds .* values.*{fix}"):
        msclip.read_raster(path)


class _Touch:
    """A pickled object whose loading creates a file (what a hostile pickle could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_pickled_arrays_are_never_unpickled(tmp_path, ext):
    marker = tmp_path / "unpickled"
    array = np.empty((3, 8, 8), dtype=object)
    array[:] = _Touch(marker)
    path = tmp_path / f"evil{ext}"
    if ext == ".npy":
        np.save(path, array, allow_pickle=True)
    else:
        np.savez(path, data=array)
    with pytest.raises(RasterReadError, match=r"Python objects; msclip never unpickles"):
        msclip.read_raster(path)
    assert not marker.exists()


def test_truncated_and_ambiguous_npz_are_one_clear_error(tmp_path):
    np.savez(tmp_path / "full.npz", data=np.ones((3, 8, 8), np.uint16))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:100])
    with pytest.raises(RasterReadError, match=r"cannot read array file .*cut\.npz") as err:
        msclip.read_raster(tmp_path / "cut.npz")
    assert not isinstance(err.value, zipfile.BadZipFile)
    np.savez(tmp_path / "two.npz", a=np.ones((3, 8, 8)), b=np.ones((3, 8, 8)))
    with pytest.raises(RasterReadError) as err:
        msclip.read_raster(tmp_path / "two.npz")
    assert str(err.value).startswith(f"{tmp_path / 'two.npz'}: cannot tell which array")
