"""Tests of synthetic tiles and their sensor model (msclip.synthetic.tiles)."""

from __future__ import annotations

import numpy as np
import pytest

from msclip.errors import SyntheticDataError, UnknownClassError
from msclip.synthetic import CLASSES, generate_tile
from msclip.synthetic.spectra import BAND_NAMES

B = {b: i for i, b in enumerate(BAND_NAMES)}


def _main_means(cls: str, size: int, seed: int) -> np.ndarray:
    """Mean digital numbers per band over the pixels labelled with the tile's main class."""
    arr, info = generate_tile(cls, size, np.random.default_rng(seed))
    mask = info.label_map == CLASSES.index(cls)
    assert mask.any(), f"{cls} tile (seed {seed}) shows no pixel of its class"
    return arr[:, mask].astype(np.float64).mean(axis=1)


@pytest.mark.parametrize("cls", CLASSES)
def test_generate_tile_format(cls: str) -> None:
    arr, info = generate_tile(cls, (24, 40), np.random.default_rng(3))
    assert arr.dtype == np.uint16 and arr.shape == (12, 24, 40)
    assert arr.min() >= 1  # 0 is nodata
    bright = np.isin(info.label_map, [CLASSES.index("snow and ice"), CLASSES.index("cloud")])
    assert arr[:, ~bright].max() <= 10000
    assert arr.max() <= 16000
    assert info.main == cls and info.label_map.shape == (24, 40)
    assert info.fractions[cls] > 0
    assert sum(info.fractions.values()) == pytest.approx(1.0)
    assert set(info.secondary) <= set(info.fractions) - {cls}
    assert info.roles[cls] == "main"
    assert info.fcover.shape == (24, 40) and info.fcover.dtype == np.float32


@pytest.mark.parametrize("seed", range(4))
def test_values_are_physically_sensible(seed: int) -> None:
    m = {c: _main_means(c, 32, seed) for c in CLASSES}

    def g(cls: str, band: str) -> float:
        return float(m[cls][B[band]])

    def ndvi(cls: str) -> float:
        return (g(cls, "B08") - g(cls, "B04")) / (g(cls, "B08") + g(cls, "B04"))

    assert g("forest", "B08") > 2 * g("forest", "B04")
    for water in ("sea", "lake", "river"):
        assert g(water, "B08") < g(water, "B03"), water
    assert g("sea", "B11") < 500
    assert g("snow and ice", "B03") > 5000
    assert g("snow and ice", "B11") < g("snow and ice", "B03") / 3
    assert g("cloud", "B02") > 3000 and g("cloud", "B11") > 2000
    assert (g("cloud", "B03") - g("cloud", "B11")) / (g("cloud", "B03") + g("cloud", "B11")) < 0.4
    assert g("burnt area", "B12") > g("burnt area", "B08")
    assert g("desert", "B11") > g("desert", "B08") > g("desert", "B04") > g("desert", "B02")
    assert ndvi("desert") < 0.25 and ndvi("bare soil") < 0.3
    assert g("bare soil", "B11") > g("bare soil", "B08")
    for veg in ("grassland", "wetland"):
        assert ndvi(veg) > 0.3, veg
    assert ndvi("cropland") > 0.15  # some fields may be bare or harvested
    assert ndvi("urban") < 0.5
    assert g("beach", "B04") > 1500


def test_same_seed_same_tile_and_different_seed_different_tile() -> None:
    a1, i1 = generate_tile("cropland", 32, np.random.default_rng(11))
    a2, i2 = generate_tile("cropland", 32, 11)  # an int seed works too
    a3, _ = generate_tile("cropland", 32, np.random.default_rng(12))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(i1.label_map, i2.label_map)
    np.testing.assert_array_equal(i1.fcover, i2.fcover)
    assert i1 == i2
    assert not np.array_equal(a1, a3)


def test_tiles_vary_within_a_class() -> None:
    means = np.array([_main_means("forest", 24, s)[B["B08"]] for s in range(8)])
    assert means.std() > 50  # per-tile gains, mixtures and textures
    arr, _ = generate_tile("grassland", 32, 0)
    assert arr[B["B08"]].std() > 20  # spatial texture, not a flat tile


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(UnknownClassError, match=r"unknown land-cover class 'jungle'.*forest"):
        generate_tile("jungle", 32, 0)
    with pytest.raises(SyntheticDataError, match="too small"):
        generate_tile("sea", 4, 0)
    with pytest.raises(SyntheticDataError, match="height, width"):
        generate_tile("sea", "big", 0)  # type: ignore[arg-type]


def test_tile_sides_are_bounded():
    import pytest

    from msclip.errors import SyntheticDataError
    from msclip.synthetic.tiles import tile_shape

    assert tile_shape(4096) == (4096, 4096)
    with pytest.raises(SyntheticDataError, match="exceeds 4096 pixels"):
        tile_shape(100000)
