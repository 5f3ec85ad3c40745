"""Tiny class-specific GeoTIFFs and pair tables shared by the training tests (imported, not
collected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import msclip
from msclip.spectral.bands import S2_L2A_BANDS


def write_class_tif(path: Path, cls: int, seed: int) -> None:
    """A 12x16x16 L2A tile: a class-specific spectrum plus noise, which a contrastive model can
    pick up."""
    from affine import Affine

    rng = np.random.default_rng(seed)
    spectrum = 400 + 300 * np.abs(np.sin(np.arange(12) * (cls + 1)))
    data = spectrum[:, None, None] * (1 + 0.2 * rng.standard_normal((12, 16, 16)))
    path.parent.mkdir(parents=True, exist_ok=True)
    msclip.write_geotiff(
        path,
        data.clip(0, 10000).astype(np.uint16),
        crs="EPSG:32632",
        transform=Affine(10, 0, 0, 0, -10, 0),
        bands=list(S2_L2A_BANDS),
    )


def pairs_table(folder: Path) -> str:
    """Write ``folder/pairs.csv``, a one-row image-caption table (its image need not exist) for
    the configuration tests, and return its path."""
    path = folder / "pairs.csv"
    path.write_text("image,caption\na.tif,x\n")
    return str(path)
