"""Tests of the spectral library of the synthetic scenes (msclip.synthetic.spectra)."""

from __future__ import annotations

import numpy as np
import pytest

from msclip.spectral.bands import BANDS, S2_L2A_BANDS
from msclip.synthetic import spectra
from msclip.synthetic.classes import CLASS_PHRASES, CLASSES, caption_mentions
from msclip.synthetic.spectra import BAND_NAMES, class_signature

B = {b: i for i, b in enumerate(BAND_NAMES)}
BRIEF_WAVELENGTHS = (0.443, 0.492, 0.560, 0.665, 0.704, 0.740, 0.783, 0.833, 0.865, 0.945,
                     1.614, 2.202)  # fmt: skip


def test_bands_are_the_l2a_bands_in_order() -> None:
    assert BAND_NAMES == (
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
    )  # fmt: skip
    np.testing.assert_allclose(spectra.WAVELENGTHS_UM, BRIEF_WAVELENGTHS, atol=0.0015)


def test_bands_come_from_the_band_registry() -> None:
    assert BAND_NAMES is S2_L2A_BANDS
    assert tuple(BANDS[b].center for b in S2_L2A_BANDS) == spectra.WAVELENGTHS_UM


def test_endmember_and_class_tables_are_complete() -> None:
    for em in spectra.ENDMEMBERS.values():
        assert len(em.reflectance) == 12
        assert all(0 < r <= 1 for r in em.reflectance), em.name
        assert em.source and em.description
    assert set(spectra.CLASS_MIXTURES) == set(CLASSES)
    for cls in CLASSES:
        mix = spectra.CLASS_MIXTURES[cls]
        assert set(mix) <= set(spectra.ENDMEMBERS)
        assert sum(mix.values()) == pytest.approx(1.0)
        assert spectra.CLASS_SOURCES[cls]
        # every phrase used in captions contains one of the class's keywords
        for form in ("name", "mass"):
            for phrase in CLASS_PHRASES[cls][form]:
                assert caption_mentions(phrase, cls), (cls, phrase)
    assert set(spectra.ENDMEMBERS) >= spectra.GREEN_VEGETATION


def test_nominal_signatures_have_the_physical_features() -> None:
    sig = {c: class_signature(c) for c in CLASSES}

    def ndsi(s: np.ndarray) -> float:
        return float((s[B["B03"]] - s[B["B11"]]) / (s[B["B03"]] + s[B["B11"]]))

    for water in ("sea", "lake", "river"):
        s = sig[water]
        assert s[B["B08"]] < s[B["B03"]] and s[B["B11"]] < 0.02 and s[B["B12"]] < 0.02
    for veg in ("forest", "cropland", "grassland", "wetland"):
        s = sig[veg]
        assert s[B["B08"]] > 2 * s[B["B04"]], veg  # red edge
        assert s[B["B07"]] > s[B["B05"]] > s[B["B04"]], veg
    assert ndsi(sig["snow and ice"]) > 0.7 and sig["snow and ice"][B["B03"]] > 0.8
    assert ndsi(sig["cloud"]) < 0.3 and sig["cloud"].min() > 0.25  # bright incl. SWIR
    assert sig["burnt area"][B["B12"]] > sig["burnt area"][B["B08"]]
    assert sig["burnt area"][B["B08"]] < 0.5 * sig["forest"][B["B08"]]
    for dry in ("desert", "bare soil", "beach"):
        assert sig[dry][B["B11"]] > sig[dry][B["B08"]] > sig[dry][B["B04"]] > sig[dry][B["B02"]]
    spread = sig["urban"].max() / sig["urban"].min()
    assert spread < 3  # built-up surfaces have flat spectra


def test_green_fraction_sums_the_green_endmembers() -> None:
    names = ["broadleaf", "soil_dark", "dry_vegetation", "grass_green"]
    ab = np.array([0.5, 0.2, 0.1, 0.2], dtype=np.float32)[:, None, None] * np.ones((4, 3, 5))
    np.testing.assert_allclose(spectra.green_fraction(names, ab), 0.7, rtol=1e-6)
    assert spectra.green_fraction(["soil_dark", "char"], ab[:2]).max() == 0.0
    # an abundance above 1 (from a texture overshoot) is clipped to full cover
    assert spectra.green_fraction(["conifer"], 1.3 * np.ones((1, 2, 2))).max() == 1.0


def test_mix_is_linear_in_the_abundances() -> None:
    rng = np.random.default_rng(0)
    em = spectra.vary_endmembers(rng, ["broadleaf", "sand_dune"])
    ab = np.stack([np.full((2, 2), 0.25), np.full((2, 2), 0.75)])
    out = spectra.mix(em, ab)
    np.testing.assert_allclose(out[:, 0, 0], 0.25 * em[0] + 0.75 * em[1], rtol=1e-6)
    painted = spectra.paint(em, np.array([[0, 1], [1, 0]]))
    np.testing.assert_array_equal(painted[:, 0, 1], em[1])
