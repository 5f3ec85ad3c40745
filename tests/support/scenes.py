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


def write_tiled_scene(path: Path, data: np.ndarray, block: int = 16) -> Path:
    """Write ``data`` ``[C, H, W]`` as a deflate GeoTIFF of ``block``-pixel tiles, one band per
    block (UTM 32N, :data:`ORIGIN`), so that single blocks can be damaged."""
    import rasterio

    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count,
        dtype=data.dtype.name, crs=CRS.from_epsg(32632), transform=ORIGIN, tiled=True,
        blockxsize=block, blockysize=block, compress="deflate", interleave="band",
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def damage_block(path: Path, column: int, row: int, band: int = 1) -> None:
    """Overwrite the compressed bytes of one block of a tiled GeoTIFF (block ``column``,
    ``row`` of ``band``) so that GDAL fails to decode it, as a damaged download does."""
    import rasterio

    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{column}_{row}", "TIFF", bidx=band))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{column}_{row}", "TIFF", bidx=band))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + size] = b"\xff" * size
    path.write_bytes(bytes(raw))
