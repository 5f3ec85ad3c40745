"""Band registry: names, sensors, wavelengths, count defaults."""

from __future__ import annotations

import pytest

from msclip.errors import BandError, UnknownBandError
from msclip.spectral import (
    BANDS,
    LLAMA3_MS_CLIP_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    SENSORS,
    default_bands_for_count,
    get_sensor,
    resolve_band,
    resolve_bands,
)
from msclip.spectral.adapt import map_bands


def test_published_band_sets():
    assert LLAMA3_MS_CLIP_BANDS == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                    "B11", "B12")  # fmt: skip
    assert len(S2_L1C_BANDS) == 13 and S2_L1C_BANDS.index("B8A") == 8
    # L2A drops B10; the published 12->10 rule drops positions 0 and 9 (B01, B09).
    assert len(S2_L2A_BANDS) == 12 and "B10" not in S2_L2A_BANDS
    assert tuple(b for i, b in enumerate(S2_L2A_BANDS) if i not in (0, 9)) == LLAMA3_MS_CLIP_BANDS
    assert tuple(b for i, b in enumerate(S2_L1C_BANDS) if i not in (0, 9, 10)) == (
        LLAMA3_MS_CLIP_BANDS
    )


def test_wavelengths_are_sane():
    for band in BANDS.values():
        assert 0.4 < band.center < 13.0 and 0 < band.bandwidth < 1.2, band
    assert resolve_band("B04").center == pytest.approx(0.6646)
    assert resolve_band("B8A").center > resolve_band("B08").center
    # Every sensor's default order lists registered bands, ordered as in its files.
    for sensor in SENSORS.values():
        assert all(b in BANDS for b in sensor.bands)


@pytest.mark.parametrize(
    ("name", "sensor", "expected"),
    [
        ("B4", None, "B04"),
        ("b04", None, "B04"),
        ("B8a", None, "B8A"),
        ("B04 (red)", None, "B04"),
        ("nir", None, "B08"),
        ("red", None, "red"),
        ("B05", "hls_l30", "OLI_B5"),  # HLS L30 B05 is Landsat NIR, not S2 red edge
        ("B05", None, "B05"),
        ("landsat89:B5", None, "OLI_B5"),
        ("SR_B4", "landsat89_sr", "OLI_B4"),
        ("nir", "naip", "NAIP_N"),
        ("B8", "planetscope8", "PSD_B8"),
    ],
)
def test_resolve_aliases(name, sensor, expected):
    assert resolve_band(name, sensor).name == expected


@pytest.mark.parametrize(
    ("name", "sensor", "expected"),
    [
        ("B5", "hls_l30", "OLI_B5"),  # not Sentinel-2 red edge B05
        ("B6", "hls_l30", "OLI_B6"),  # not Sentinel-2 red edge B06
        ("B9", "hls_l30", "OLI_B9"),  # cirrus, not Sentinel-2 water vapour B09
        ("B05", "landsat89", "OLI_B5"),
        ("SR_B05", "landsat89_sr", "OLI_B5"),
        ("B04", "planetscope4", "PS2_B4"),  # PlanetScope band 4 is NIR, not red
        ("B08", "planetscope8", "PSD_B8"),
        ("B8", "sentinel2_l2a", "B08"),
        ("B8A", "hls_s30", "B8A"),
    ],
)
def test_sensor_numbering_wins_however_it_is_padded(name, sensor, expected):
    assert resolve_band(name, sensor).name == expected


def test_unknown_band_suggests():
    with pytest.raises(UnknownBandError, match="B8A"):
        resolve_band("B8B")
    with pytest.raises(UnknownBandError, match="unknown sensor"):
        get_sensor("sentinel3")


def test_duplicates_and_empty():
    with pytest.raises(BandError, match="twice"):
        resolve_bands(["B02", "B2"])
    with pytest.raises(BandError, match="empty"):
        resolve_bands([])


def test_a_single_string_is_not_a_band_list():
    # its letters would otherwise be band names: "RGB" as red, green, blue; "B02" fails on "0"
    for value in ("RGB", "B02"):
        with pytest.raises(BandError, match=f"single string '{value}'"):
            resolve_bands(value)
    with pytest.raises(BandError, match="single string"):
        map_bands("B02", ["B02"])


def test_one_name_joining_several_bands_is_refused():
    # a band is read from a name's first word: ["B02,B03"] would be the one band B02
    for value in ("B02,B03", "B02 B03", "B02; B8A"):
        with pytest.raises(BandError, match="joins 2 band names; give them as separate names"):
            resolve_bands([value, "B04"])
    # the same band said twice, and words that name no band, are one band as before
    assert [b.name for b in resolve_bands(["B08 nir", "B4, central wavelength 665 nm"])] == [
        "B08",
        "B04",
    ]
    assert [b.name for b in resolve_bands(["B04 red", "B2 blue"])] == ["B04", "B02"]
    # a file's descriptions may say anything after the band (descriptions=True)
    assert [b.name for b in resolve_bands(["B2 blue"], descriptions=True)] == ["B02"]


def test_count_defaults():
    assert default_bands_for_count(13) == S2_L1C_BANDS
    assert default_bands_for_count(12) == S2_L2A_BANDS
    assert default_bands_for_count(10) == LLAMA3_MS_CLIP_BANDS
    assert default_bands_for_count(4) == ("NAIP_R", "NAIP_G", "NAIP_B", "NAIP_N")
    assert default_bands_for_count(3) == ("red", "green", "blue")
    with pytest.raises(BandError, match="Name the bands") as err:
        default_bands_for_count(5)
    assert err.value.param == "bands" and "--" not in str(err.value)
