"""Tests of tile layouts (msclip.synthetic.layouts): what is placed where, and labelled so."""

from __future__ import annotations

import numpy as np

from msclip.synthetic import CLASSES, generate_tile
from msclip.synthetic.classes import CLASS_INDEX
from msclip.synthetic.layouts import compose_tile


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
