"""PNG / JPEG pictures: their true depth, and upright as their EXIF orientation says."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
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
