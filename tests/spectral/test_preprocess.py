"""Preprocessing equals the published order of operations, to the bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torchvision import transforms

from msclip.errors import LayoutError, NodataFillWarning, UndeclaredNodataWarning
from msclip.spectral import LLAMA3_MS_CLIP_BANDS, S2_L2A_BANDS, SpectralPreprocess, get_stats
from msclip.spectral.preprocess import fill_mask

# The published 10-band statistics, as the original configuration file stores them: offset by
# +1000 and shifted back at call time.
PUBLISHED_MEANS_PLUS_1000 = [1925.161, 2183.128, 2338.041, 2667.254, 3233.633, 3460.96, 3555.569,
                             3619.542, 3406.497, 2841.645]  # fmt: skip
PUBLISHED_STDS = [1205.586, 1223.713, 1399.638, 1403.298, 1378.513, 1434.924, 1491.141, 1454.089,
                  1473.248, 1365.08]  # fmt: skip


def published_reference(hwc_12band: np.ndarray) -> torch.Tensor:
    """Plain re-implementation of the published pipeline on an L2A HWC array."""
    image = np.delete(hwc_12band, [0, 9], axis=2)  # drop B01, B09
    pipeline = transforms.Compose(
        [
            transforms.ToTensor(),  # HWC float32 -> CHW, no scaling for float input
            transforms.Resize(size=[224], interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.Normalize(
                mean=[v - 1000 for v in PUBLISHED_MEANS_PLUS_1000], std=PUBLISHED_STDS
            ),
        ]
    )
    return pipeline(image.astype(np.float32))


def _pre(**kw) -> SpectralPreprocess:
    s = get_stats("llama3-ms-clip")
    return SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, 224, **kw)


@pytest.mark.parametrize("shape", [(224, 224), (256, 300), (120, 120), (300, 230)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_bit_identical_to_published(shape, dtype):
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 12000, size=(*shape, 12)).astype(dtype)
    expected = published_reference(hwc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # B01 outside the model's range
        ours = _pre()(np.moveaxis(hwc, -1, 0))  # CHW, 12 bands -> named by count (L2A)
    assert ours.dtype == torch.float32 and ours.shape == (10, 224, 224)
    assert torch.equal(ours, expected)


def test_permuted_named_bands_give_identical_tensor():
    rng = np.random.default_rng(2)
    chw = rng.integers(0, 9000, size=(10, 64, 64)).astype(np.uint16)
    pre = _pre()
    reference = pre.process(chw, LLAMA3_MS_CLIP_BANDS)
    order = [3, 9, 0, 5, 1, 8, 2, 7, 4, 6]
    shuffled = pre.process(chw[order], [LLAMA3_MS_CLIP_BANDS[i] for i in order])
    assert torch.equal(reference, shuffled)


@pytest.mark.parametrize("sensor", ["hls_l30", "planetscope8", "landsat89"])
def test_redundant_bands_are_left_out_when_model_bands_are_missing(sensor):
    # Each of these band sets lacks model bands and holds a band between two it also holds
    # (cirrus, PlanetScope green I and yellow, Landsat panchromatic): that band feeds nothing and
    # must not be normalised with a derived std of 0 (it raised "std evaluated to zero").
    from msclip.spectral import get_sensor, map_bands

    bands = get_sensor(sensor).bands
    chw = np.random.default_rng(3).integers(0, 9000, size=(len(bands), 32, 32)).astype(np.uint16)
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, get_stats("llama3-ms-clip").mean,
                             get_stats("llama3-ms-clip").std, 32)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapping = map_bands(LLAMA3_MS_CLIP_BANDS, bands)
        used = mapping.used_inputs
        out = pre.process(chw, bands)
        only_used = pre.process(chw[used], [bands[j] for j in used])
    assert "redundant" in mapping.kinds and mapping.missing
    assert all(mapping.matrix[:, j].any() for j in used)
    assert torch.isfinite(out).all() and torch.equal(out, only_used)


def test_nodata_and_nan_filled_with_mean_and_counted(caplog):
    chw = np.full((10, 32, 32), 1500, dtype=np.float32)
    chw[:, :2, :] = 0  # nodata pixels: every band equals nodata
    chw[3, 5, 5] = np.nan
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, get_stats("llama3-ms-clip").mean,
                             get_stats("llama3-ms-clip").std, 32)  # fmt: skip
    # the warning carries no file name and no count, so a run can tally it once per file; the
    # counts per band go to the debug log
    caplog.set_level("DEBUG", logger="msclip.spectral.preprocess")
    with pytest.warns(NodataFillWarning, match=r"nodata/NaN pixel values are filled"):
        out = pre.process(chw, LLAMA3_MS_CLIP_BANDS, nodata=0)
    assert "641 nodata/NaN values filled" in caplog.text
    assert "'B02': 64" in caplog.text and "'B05': 65" in caplog.text
    assert torch.all(out[:, :2, :] == 0)  # band mean -> zero after normalising
    assert out[3, 5, 5] == 0 and torch.isfinite(out).all()


def test_a_band_at_the_nodata_value_in_a_valid_pixel_is_data():
    """Dark water reads 0 in the SWIR bands of L2A products whose nodata is 0: those values are
    measurements, not gaps, so they are not replaced by the band mean."""
    stats = get_stats("llama3-ms-clip")
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, stats.mean, stats.std, 32)
    chw = np.full((10, 32, 32), 800, dtype=np.uint16)
    chw[8:, :, :16] = 0  # B11, B12 at 0 over half the tile, the other bands valid
    chw[:, 30:, :] = 0  # two rows of true nodata pixels
    with pytest.warns(NodataFillWarning):
        out = pre.process(chw, LLAMA3_MS_CLIP_BANDS, nodata=0)
    without = pre.process(chw, LLAMA3_MS_CLIP_BANDS)  # no nodata: nothing filled
    assert torch.equal(out[:, :30], without[:, :30])  # the zero SWIR values are kept as data
    b11 = LLAMA3_MS_CLIP_BANDS.index("B11")
    assert out[b11, 0, 0] == pytest.approx((0 - stats.mean["B11"]) / stats.std["B11"])
    assert torch.all(out[:, 30:] == 0)  # the nodata pixels: band means, zero once normalised
    fill = fill_mask(chw, 0)
    assert fill is not None and fill.shape == chw.shape
    assert int(fill.sum()) == 10 * 2 * 32 and bool(fill[:, 30:].all())
    assert fill_mask(chw, None) is None and fill_mask(chw[:, :30, 16:], 0) is None


@pytest.mark.parametrize(
    ("dtype", "fill"), [("uint16", 0), ("uint16", 65535), ("int16", -32768), ("float32", -9999)]
)
def test_fill_in_every_band_of_data_without_nodata_is_said(dtype, fill):
    """A scene's edge or an export without its nodata tag: pixels holding 0 (or -9999 ...) in
    every band were read as data with no word (valid_fraction 1, status ok)."""
    stats = get_stats("llama3-ms-clip")
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, stats.mean, stats.std, 32)
    chw = np.random.default_rng(0).integers(100, 4000, (10, 32, 32)).astype(dtype)
    chw[:, :, :4] = fill  # an eighth of the tile
    with pytest.warns(UndeclaredNodataWarning, match=rf"pixels holding {fill} in every band were "
                      rf"read as data: no nodata value is declared.*nodata={fill} "):  # fmt: skip
        pre.process(chw, LLAMA3_MS_CLIP_BANDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndeclaredNodataWarning)
        pre.process(chw, LLAMA3_MS_CLIP_BANDS, nodata=fill)  # declared: filled, nothing to say
        chw[0, :, :4] = 700  # one band holds data: a dark surface, not fill
        pre.process(chw, LLAMA3_MS_CLIP_BANDS)
        chw[:, :, :4] = 900  # one positive value in every band: not judged
        pre.process(chw, LLAMA3_MS_CLIP_BANDS)
        chw[:, 0, 0] = fill  # one pixel of 1024: below the share said
        pre.process(chw, LLAMA3_MS_CLIP_BANDS)


def test_missing_pixels_needs_every_band_and_stops_once_none_is_left():
    """A pixel is missing only when all its bands are nodata (or not finite); the count stops at
    the first band that leaves no pixel missing, so later all-nodata bands change nothing."""
    from msclip.spectral.nodata import missing_pixels

    chw = np.full((4, 8, 8), 0, dtype=np.uint16)
    chw[1:, :, :] = 0
    chw[0, :, 2:] = 500  # band 0 holds data except in the first two columns
    chw[2, 0, :2] = 7  # and band 2 in one pixel of those columns
    got = missing_pixels(chw, 0)
    want = np.zeros((8, 8), dtype=bool)
    want[1:, :2] = True
    assert np.array_equal(got, want)
    chw[0] = 500  # data everywhere in the first band: nothing missing, whatever follows
    assert not missing_pixels(chw, 0).any()
    batch = np.stack([chw, np.zeros_like(chw)])  # [..., C, H, W]: one tile with data, one none
    assert missing_pixels(batch, 0).reshape(2, -1).all(axis=1).tolist() == [False, True]
    floats = np.full((3, 4, 4), np.nan, dtype=np.float32)
    floats[2, 0, 0] = -9999.0  # the last band's nodata value: still missing
    floats[1, 3, 3] = 0.5
    assert missing_pixels(floats, -9999.0).sum() == 15 and not missing_pixels(floats, None)[3, 3]
    assert not missing_pixels(chw.astype(np.int16), None).any()  # integers, no nodata value


def test_infinite_values_are_missing_like_nan():
    from msclip.tiling import nodata_fraction

    stats = get_stats("llama3-ms-clip")
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, stats.mean, stats.std, 32)
    chw = np.full((10, 32, 32), 900, dtype=np.float32)
    chw[2, 3, 3] = np.inf
    chw[:, 10, :] = -np.inf  # a whole row of pixels
    with pytest.warns(NodataFillWarning):
        out = pre.process(chw, LLAMA3_MS_CLIP_BANDS)
    assert torch.isfinite(out).all() and out[2, 3, 3] == 0 and torch.all(out[:, 10] == 0)
    assert nodata_fraction(chw, None) == pytest.approx(1 / 32)


def test_rgb_uint8_divides_by_255():
    s = get_stats("openai")
    pre = SpectralPreprocess(("red", "green", "blue"), s.mean, s.std, 8, divisor=255)
    img = np.full((3, 8, 8), 255, dtype=np.uint8)
    out = pre(img)
    expected = (1.0 - torch.tensor([s.mean[b] for b in ("red", "green", "blue")])) / torch.tensor(
        [s.std[b] for b in ("red", "green", "blue")]
    )
    assert torch.allclose(out[:, 0, 0], expected)


def test_float_values_that_are_not_0_255_pictures_are_said_to_an_rgb_model():
    """A model of 8-bit pictures divides float values by 255: reflectance x 10000 (what a file
    declaring its scale reads as) went in as values up to ~40, a 0-1 picture as ~0, unsaid."""
    from msclip.errors import BandCoverageError, BandCoverageWarning

    s = get_stats("openai")
    rgb = ("red", "green", "blue")
    pre = SpectralPreprocess(rgb, s.mean, s.std, 8, divisor=255)
    reflectance = np.full((3, 8, 8), 1650.0, np.float32)
    reflectance[0, 0, 0] = np.nan
    with pytest.warns(BandCoverageWarning, match=r"float values up to 1650 for a model of 8-bit"):
        pre.process(reflectance, rgb)
    with pytest.warns(BandCoverageWarning, match=r"within 0-0.8 .* multiply them by 255"):
        pre.process(np.full((3, 8, 8), 0.8, np.float32), rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float pictures of 0-255 and 16-bit pictures: fine
        pre.process(np.full((3, 8, 8), 200.0, np.float32), rgb)
        pre.process(np.full((3, 8, 8), 1650, np.uint16), rgb)
    strict = SpectralPreprocess(rgb, s.mean, s.std, 8, divisor=255, strict_bands=True)
    with pytest.raises(BandCoverageError, match="float values up to 1650"):
        strict.process(reflectance, rgb)


def test_pil_pipeline_matches_open_clip_transform():
    import open_clip
    from PIL import Image

    s = get_stats("openai")
    pre = SpectralPreprocess(("red", "green", "blue"), s.mean, s.std, 32, divisor=255,
                             pil_rgb=True)  # fmt: skip
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (50, 70, 3)).astype(np.uint8)
    oc = open_clip.image_transform(32, is_train=False)
    assert torch.equal(pre(Image.fromarray(img)), oc(Image.fromarray(img)))


def test_layout_rules():
    pre = _pre()
    hwc = np.zeros((40, 40, 12), dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pre(hwc).shape == (10, 224, 224)  # 12 is a band count, 40 is not
    with pytest.raises(LayoutError, match="layout='CHW'"):
        pre(np.zeros((12, 30, 12), dtype=np.uint16))


def test_l2a_stats_cover_12_bands():
    s = get_stats("llama3-ms-clip")
    assert set(S2_L2A_BANDS) <= set(s.mean)
    assert s.mean["B01"] == 794.311 and s.std["B09"] == 1660.395


def test_rasters_smaller_than_a_patch_are_refused_much_smaller_than_the_input_warned():
    from msclip.errors import RasterSizeError, SmallRasterWarning

    s = get_stats("llama3-ms-clip")
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, 64, patch_size=8)
    with pytest.raises(RasterSizeError, match="1x1 pixels is smaller than one 8-pixel patch"):
        pre.process(np.ones((10, 1, 1), np.uint16), LLAMA3_MS_CLIP_BANDS)
    with pytest.warns(SmallRasterWarning, match="rasters of 12x10 pixels are upsampled 6.4x"):
        out = pre.process(np.ones((10, 10, 12), np.uint16), LLAMA3_MS_CLIP_BANDS)
    assert out.shape == (10, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 px is a quarter of 64: no warning
        pre.process(np.ones((10, 16, 16), np.uint16), LLAMA3_MS_CLIP_BANDS)


def test_input_lacking_most_bands_or_display_scaled_is_said_or_refused():
    from msclip.errors import BandCoverageError, BandCoverageWarning

    s = get_stats("llama3-ms-clip")
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, 16)
    rgb = np.full((3, 16, 16), 900, np.uint16)
    with pytest.warns(BandCoverageWarning, match=r"lack 7 of the model's 10 bands"):
        pre.process(rgb, ("B02", "B03", "B04"))
    with pytest.warns(BandCoverageWarning, match="8-bit input to a model of raw reflectance"):
        pre.process(np.full((10, 16, 16), 90, np.uint8), LLAMA3_MS_CLIP_BANDS)
    strict = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, 16, strict_bands=True)
    with pytest.raises(BandCoverageError) as err:
        strict.process(rgb, ("B02", "B03", "B04"))
    assert err.value.param == "bands"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # six of ten bands, 16-bit: nothing to say
        pre.process(np.full((6, 16, 16), 900, np.uint16), LLAMA3_MS_CLIP_BANDS[:6])


def test_an_array_of_unnamed_bands_without_a_default_names_the_preprocessing_argument():
    """The fix a preprocessing error gives is the preprocessing's own argument (input_bands=,
    layout=), not create_model's bands= (which builds a model of those bands)."""
    from msclip.errors import BandError

    s = get_stats("llama3-ms-clip")
    pre = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, 64, patch_size=8)
    with pytest.raises(BandError, match=r"shape \(64, 64\) holds, read as 1 band \(layout from "
                       r"the shape\).*model.preprocess\(input_bands=") as err:  # fmt: skip
        pre(np.ones((64, 64), np.float32))
    assert err.value.param == "input_bands" and "bands=['B02'" not in str(err.value)
    hwc = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, 64, patch_size=8, layout="HWC")
    with pytest.raises(BandError, match=r"read as 64 bands \(HWC\).*layout='CHW'"):
        hwc(np.ones((10, 64, 64), np.float32))
    named = SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, 64, patch_size=8,
                               input_bands=["B08"])  # fmt: skip
    assert named(np.ones((64, 64), np.float32)).shape == (10, 64, 64)
