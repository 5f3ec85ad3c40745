"""A small georeferenced scene shared by the tiling and scene-map tests (imported, not run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS

import msclip

#: Upper-left corner of the test scenes in UTM 32N, 10 m pixels.
ORIGIN = Affine(10, 0, 500000, 0, -10, 5000000)


def write_scene_with_nodata(folder: Path) -> tuple[Path, np.ndarray]:
    """Write ``folder/scene.tif``: 12 x 100 x 150 uint16, UTM 32N, nodata 0 in columns 96 and
    beyond. Returns its path and its pixels."""
    rng = np.random.default_rng(1)
    data = rng.integers(1, 6000, size=(12, 100, 150)).astype("uint16")
    data[:, :, 96:] = 0
    path = folder / "scene.tif"
    msclip.write_geotiff(path, data, crs=CRS.from_epsg(32632), transform=ORIGIN, nodata=0)
    return path, data
