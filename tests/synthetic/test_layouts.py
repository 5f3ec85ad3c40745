"""Tests of tile layouts (msclip.synthetic.layouts): what is placed where, and labelled so."""

from __future__ import annotations

import numpy as np

from msclip.synthetic import CLASSES, generate_tile
from msclip.synthetic.classes import CLASS_INDEX
from msclip.synthetic.layouts import compose_landscape, compose_tile


def test_layouts_place_secondary_classes() -> None:
    river = generate_tile("river", 48, 0)[1]
    assert river.layout == "river" and river.roles[river.secondary[0]] == "background"
    # a river tile shows a band of water with land on both sides
    assert 0.05 < river.fractions["river"] < 0.6
    beach = [generate_tile("beach", 32, s)[1] for s in range(6)]
    assert all("sea" in i.fractions and i.layout == "coast" for i in beach)
    lake = generate_tile("lake", 32, 1)[1]
    assert lake.layout == "lake" and len(lake.fractions) >= 2
    layouts = {generate_tile(c, 32, s)[1].layout for c in CLASSES for s in range(3)}
    assert {"coast", "fields", "urban blocks", "cloud cover", "snowfield", "burn scar"} <= layouts


def test_composition_tracks_label_and_vegetation_together() -> None:
    scene = compose_tile("forest", (32, 32), np.random.default_rng(0))
    assert scene.refl.shape == (12, 32, 32)
    assert scene.labels.dtype == np.uint8 and scene.green.dtype == np.float32
    forest = scene.labels == CLASS_INDEX["forest"]
    assert float(scene.green[forest].mean()) > 0.8


def test_landscape_has_several_regions_and_features() -> None:
    scene = compose_landscape(np.random.default_rng(3), (256, 256), region_size=64)
    present = set(np.unique(scene.labels).tolist())
    assert len(present) >= 5  # several land-cover regions ...
    assert {CLASS_INDEX["lake"], CLASS_INDEX["river"]} <= present  # ... lakes and a river
    water = np.isin(scene.labels, [CLASS_INDEX[c] for c in ("sea", "lake", "river")])
    assert float(scene.green[water].max()) < 0.5  # open water holds (almost) no vegetation
