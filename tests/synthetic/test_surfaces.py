"""Tests of the class surfaces of the synthetic scenes (msclip.synthetic.surfaces)."""

from __future__ import annotations

import numpy as np
import pytest

from msclip.synthetic.classes import CLASSES
from msclip.synthetic.surfaces import SURFACES, Surface, rock_surface

VEGETATED = ("forest", "cropland", "grassland", "wetland", "urban")


@pytest.mark.parametrize("cls", CLASSES)
def test_surface_format_and_vegetation_fraction(cls: str) -> None:
    surface = SURFACES[cls](np.random.default_rng(2), (20, 28))
    assert isinstance(surface, Surface)
    assert surface.refl.shape == (12, 20, 28) and surface.refl.dtype == np.float32
    assert surface.green.shape == (20, 28) and surface.green.dtype == np.float32
    assert float(surface.green.min()) >= 0.0 and float(surface.green.max()) <= 1.0
    if cls not in VEGETATED:  # water, snow, cloud, soils, sand, char: no green vegetation
        assert float(surface.green.max()) == 0.0, cls


def test_vegetation_fraction_follows_the_abundances() -> None:
    forest = SURFACES["forest"](np.random.default_rng(0), (32, 32)).green
    assert float(forest.mean()) > 0.85  # canopy with a few gaps (which hold some grass)
    urban = SURFACES["urban"](np.random.default_rng(0), (32, 32)).green
    assert 0.0 < float(urban.mean()) < 0.5  # yards and parks among roofs and streets
    rock = rock_surface(np.random.default_rng(0), (16, 16))
    assert rock.refl.shape == (12, 16, 16) and float(rock.green.max()) == 0.0


def test_surfaces_are_seeded() -> None:
    a = SURFACES["cropland"](np.random.default_rng(4), (24, 24))
    b = SURFACES["cropland"](np.random.default_rng(4), (24, 24))
    np.testing.assert_array_equal(a.refl, b.refl)
    np.testing.assert_array_equal(a.green, b.green)
