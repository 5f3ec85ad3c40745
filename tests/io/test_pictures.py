"""PNG / JPEG pictures: their true depth, and upright as their EXIF orientation says."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image, ImageOps

import msclip


def _png16(path, data: np.ndarray) -> None:
    with rasterio.open(path, "w", driver="PNG", count=data.shape[0], height=data.shape[1],
                       width=data.shape[2], dtype="uint16") as dst:  # fmt: skip
        dst.write(data)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_16bit_png_with_alpha_keeps_its_depth(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65535, (3, 6, 7)).astype(np.uint16)
    alpha = np.full((1, 6, 7), 65535, np.uint16)
    _png16(tmp_path / "rgb.png", rgb)
    _png16(tmp_path / "rgba.png", np.concatenate([rgb, alpha]))
    _png16(tmp_path / "la.png", np.concatenate([rgb[:1], alpha]))
    plain = msclip.read_raster(tmp_path / "rgb.png")
    assert plain.data.dtype == np.uint16 and np.array_equal(plain.data, rgb)
    # with an alpha band the same values, not reduced to 8 bits
    with_alpha = msclip.read_raster(tmp_path / "rgba.png")
    assert with_alpha.data.dtype == np.uint16 and np.array_equal(with_alpha.data, rgb)
    assert with_alpha.bands == ("red", "green", "blue")
    grey = msclip.read_raster(tmp_path / "la.png")  # grey + alpha: grey as R, G, B, as at 8 bits
    assert grey.data.dtype == np.uint16 and np.array_equal(grey.data, rgb[[0, 0, 0]])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 255, (4, 6, 3)).astype(np.uint8)  # not square: a turn shows
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "p.png", exif=exif)
    with Image.open(tmp_path / "p.png") as img:
        shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    r = msclip.read_raster(tmp_path / "p.png")
    assert np.array_equal(r.data, np.moveaxis(shown, -1, 0))


def test_jpeg_from_a_camera_held_upright_is_read_upright(tmp_path):
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:, :32] = 255  # left half white as stored; the camera was turned 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the white half is on top
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    r = msclip.read_raster(tmp_path / "photo.jpg")
    assert r.data.shape == (3, 64, 40)
    assert r.data[:, :24].mean() > 200 and r.data[:, 40:].mean() < 50


def test_a_picture_too_large_for_pillow_is_a_size_error(tmp_path, monkeypatch):
    from msclip.errors import RasterTooLargeError

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ortho.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit
    with pytest.raises(RasterTooLargeError, match=r"ortho\.jpg has more pixels.*GeoTIFF"):
        msclip.read_raster(tmp_path / "ortho.jpg")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_transparent_pixels_of_a_mask_alpha_are_missing_other_alphas_are_dropped(tmp_path):
    """An alpha that only says transparent or opaque masks pixels, as a GeoTIFF's alpha does;
    an alpha of other values (soft edges, METER-ML's near-infrared) is dropped, as before."""
    from msclip.tiling import nodata_fraction

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 10, 3)).astype(np.uint8)
    rgb[..., 0] = np.maximum(rgb[..., 0], 1)  # no opaque pixel is black in every band
    mask = np.full((8, 10), 255, np.uint8)
    mask[:, 6:] = 0  # the right part transparent (a web tile's padding)
    Image.fromarray(np.dstack([rgb, mask]), "RGBA").save(tmp_path / "masked.png")
    r = msclip.read_raster(tmp_path / "masked.png")
    assert r.nodata is not None and r.data.dtype == np.uint8
    assert (r.data[:, :, 6:] == r.nodata).all()
    assert np.array_equal(r.data[:, :, :6], np.moveaxis(rgb, -1, 0)[:, :, :6])
    assert nodata_fraction(r.data, r.nodata) == pytest.approx(0.4)
    # a nodata value given for the file marks them instead
    given = msclip.read_raster(tmp_path / "masked.png", nodata=0)
    assert given.nodata == 0 and (given.data[:, :, 6:] == 0).all()
    # one 8-bit pixels cannot hold marks them with a free value: the mask is kept
    for value in (-9999, 0.5, float("nan")):
        given = msclip.read_raster(tmp_path / "masked.png", nodata=value)
        assert given.nodata == r.nodata and nodata_fraction(given.data, given.nodata) == 0.4
    # data in the alpha channel (values between): not a mask, dropped
    nir = rng.integers(1, 255, (8, 10)).astype(np.uint8)
    nir[0, 0] = 0
    Image.fromarray(np.dstack([rgb, nir]), "RGBA").save(tmp_path / "nir.png")
    r = msclip.read_raster(tmp_path / "nir.png")
    assert r.nodata is None and np.array_equal(r.data, np.moveaxis(rgb, -1, 0))
    # a palette's transparent entry, and a 16-bit RGBA picture's binary alpha
    pal = Image.fromarray(np.dstack([rgb, mask]), "RGBA").convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = int(np.asarray(pal)[0, 9])
    pal.save(tmp_path / "pal.png", transparency=pal.info["transparency"])
    assert msclip.read_raster(tmp_path / "pal.png").nodata is not None
    rgb16 = rng.integers(1, 65535, (3, 8, 10)).astype(np.uint16)
    _png16(tmp_path / "m16.png", np.concatenate([rgb16, (mask.astype(np.uint16) * 257)[None]]))
    r16 = msclip.read_raster(tmp_path / "m16.png")
    assert r16.data.dtype == np.uint16 and (r16.data[:, :, 6:] == r16.nodata).all()
    assert np.array_equal(r16.data[:, :, :6], rgb16[:, :, :6])


def test_a_classification_counts_transparent_pixels_as_missing(tmp_path):
    import pandas as pd

    from msclip.cli.inference import main

    rgb = np.random.default_rng(2).integers(1, 256, (32, 32, 3)).astype(np.uint8)
    mask = np.full((32, 32), 255, np.uint8)
    mask[24:] = 0
    Image.fromarray(np.dstack([rgb, mask]), "RGBA").save(tmp_path / "tile.png")
    out = tmp_path / "o.csv"
    argv = ["--run-classification", "--images", str(tmp_path / "tile.png"), "--class-names",
            "forest", "sea", "--templates", "short", "--save-path", str(out), "--model-name",
            "msclip-tiny", "--no-pretrained", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert pd.read_csv(out)["valid_fraction"].tolist() == [0.75]


def test_pictures_are_read_reduced_to_the_shorter_side(tmp_path):
    """``shorter_side`` reduces a large PNG by area averaging (transparent pixels left out) and a
    JPEG through a reduced decode first; smaller pictures are read as they are."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 255, (120, 180, 3)).astype(np.uint8)
    alpha = np.full((120, 180), 255, np.uint8)
    alpha[:, :60] = 0  # the left third transparent
    rgb[:, :60] = 7  # a colour no average should see
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "big.png")
    got = msclip.read_raster(tmp_path / "big.png", shorter_side=40, max_pixels=100)
    assert got.data.shape == (3, 40, 60) and got.data.dtype == np.uint8
    assert got.meta["downsampled_from"] == (120, 180)
    # each output pixel averages a 3 x 3 block; the transparent ones stay missing
    want = rgb[:, 60:].reshape(40, 3, 40, 3, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(got.data[:, :, 20:], np.rint(want).transpose(2, 0, 1))
    assert (got.data[:, :, :20] == got.nodata).all() and got.nodata != 7
    # not larger than the side: as stored; larger without the side: refused as before
    small = msclip.read_raster(tmp_path / "big.png", shorter_side=200)
    assert small.data.shape == (3, 120, 180) and "downsampled_from" not in small.meta
    with pytest.raises(msclip.errors.RasterTooLargeError):
        msclip.read_raster(tmp_path / "big.png", max_pixels=100)
    # a JPEG (turned by its EXIF orientation): decoded reduced, then averaged to the shape
    yy, xx = np.mgrid[0:480, 0:640]
    smooth = 127 + 100 * np.sin(xx / 40.0)[..., None] * np.cos(yy[..., None] / 30.0 + np.arange(3))
    img = Image.fromarray(smooth.astype(np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # shown turned a quarter: 640 rows x 480 columns
    img.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    full = msclip.read_raster(tmp_path / "photo.jpg")
    got = msclip.read_raster(tmp_path / "photo.jpg", shorter_side=64)
    assert full.data.shape == (3, 640, 480) and got.data.shape == (3, 85, 64)
    assert got.meta["downsampled_from"] == (640, 480)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(full.data).double(), (85, 64))
    assert np.abs(got.data.astype(float) - ref.numpy()).mean() < 1.5  # the same picture, reduced
