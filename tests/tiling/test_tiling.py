"""Tiling of large rasters: the tile grid, its georeference, nodata fractions, footprints."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from support.scenes import ORIGIN, write_scene_with_nodata

from msclip.tiling import (
    TilingError,
    footprint_lonlat,
    nodata_fraction,
    open_scene,
    raster_bounds,
    scene_tiles,
    tile_grid,
    window_footprint_lonlat,
)


@pytest.fixture
def scene(tmp_path):
    """12 x 100 x 150 uint16 scene, UTM 32N, nodata 0 in columns 96 and beyond."""
    return write_scene_with_nodata(tmp_path)


def test_tile_grid():
    assert tile_grid(100, 150, 32, 32) == (3, 4)
    assert tile_grid(100, 150, 32, 16) == (5, 8)
    assert tile_grid(32, 32, 32, 7) == (1, 1)
    # sizes said as width x height, as the scene summary says them
    with pytest.raises(TilingError, match="raster of 150x20 pixels is smaller than one tile"):
        tile_grid(20, 150, 32, 32)
    with pytest.raises(TilingError):
        tile_grid(100, 100, 32, 0)


def test_tiles_and_grid_transform(scene):
    path, _ = scene
    info = open_scene(path, 32, 16)
    tiles = scene_tiles(info)
    assert (info.n_rows, info.n_cols) == (5, 8) and len(tiles) == 40
    t = tiles[9]  # grid row 1, col 1
    assert (t.grid_row, t.grid_col, t.row, t.col, t.height) == (1, 1, 16, 16, 32)
    # Cell (i, j) is the stride square centred on tile (i, j): origin shifted by (32-16)/2 px.
    assert info.grid_transform == Affine(160, 0, 500080, 0, -160, 4999920)
    assert open_scene(path, 32).grid_transform == Affine(320, 0, 500000, 0, -320, 5000000)


def test_a_stride_beyond_the_tile_says_the_map_reaches_past_the_scene(scene, caplog):
    path, _ = scene
    info = open_scene(path, 16, 32)  # cells of 32 px for tiles of 16: 8 px past each edge
    assert info.grid_transform == Affine(320, 0, 500000 - 80, 0, -320, 5000000 + 80)
    assert "reaches 8 pixels past the scene's edges" in caplog.text
    caplog.clear()
    open_scene(path, 32, 16)
    assert "past the scene" not in caplog.text


def test_nodata_fraction_and_footprint():
    data = np.ones((3, 4, 4), np.uint16)
    data[:, :2] = 0
    data[0, 0, 0] = 5  # one band valid: that pixel is not nodata
    assert nodata_fraction(data, 0) == pytest.approx(7 / 16)
    assert nodata_fraction(data, None) == 0.0
    f = np.full((2, 2, 2), np.nan, np.float32)
    assert nodata_fraction(f, None) == 1.0

    bounds = raster_bounds(ORIGIN, 0, 0, 32, 32)
    assert bounds == (500000, 5000000 - 320, 500320, 5000000)
    ring = footprint_lonlat(CRS.from_epsg(32632), bounds)
    assert len(ring) == 5 and ring[0] == ring[-1]
    lon, lat = np.array(ring).T
    assert np.allclose(lon, 9.0, atol=0.01) and np.allclose(lat, 45.14, atol=0.02)
    # Exterior ring counter-clockwise (RFC 7946): positive shoelace area.
    area = 0.5 * np.sum(lon[:-1] * lat[1:] - lon[1:] * lat[:-1])
    assert area > 0


def _ccw(ring):
    lon, lat = np.array(ring).T
    return 0.5 * np.sum(lon[:-1] * lat[1:] - lon[1:] * lat[:-1]) > 0


def test_window_footprints_are_the_windows_under_any_geotransform():
    from rasterio.warp import transform as warp

    utm = CRS.from_epsg(32632)
    # north-up: the ring of the window's bounds, point for point
    north = window_footprint_lonlat(utm, ORIGIN, 32, 64, 32, 32)
    assert north == footprint_lonlat(utm, raster_bounds(ORIGIN, 32, 64, 32, 32))
    # south-up: still counter-clockwise, around the same window
    south_up = Affine(10, 0, 500000, 0, 10, 4990000)
    south = window_footprint_lonlat(utm, south_up, 0, 0, 32, 32)
    assert _ccw(south) and sorted(map(tuple, south[:4])) == sorted(
        map(tuple, footprint_lonlat(utm, raster_bounds(south_up, 0, 0, 32, 32))[:4])
    )
    # rotated by 30 degrees: the tile's own corners, not the larger box around them
    rotated = Affine.translation(500000, 5000000) * Affine.rotation(30) * Affine.scale(10, -10)
    ring = window_footprint_lonlat(utm, rotated, 0, 0, 32, 32)
    assert _ccw(ring) and len(ring) == 5 and ring[0] == ring[-1]
    xs, ys = zip(*(rotated * (c, r) for r, c in ((0, 0), (0, 32), (32, 32), (32, 0))))
    lon, lat = warp(utm, "EPSG:4326", list(xs), list(ys))
    expected = sorted(zip(np.round(lon, 9), np.round(lat, 9)))
    assert sorted(tuple(np.round(p, 9)) for p in ring[:4]) == expected


def test_index_footprints_of_a_rotated_scene_are_its_tiles():
    import json

    from msclip.index.build import _geo_columns

    utm = CRS.from_epsg(32632)
    rotated = Affine.translation(500000, 5000000) * Affine.rotation(30) * Affine.scale(10, -10)
    geo = _geo_columns(utm, rotated, 32, 0, 32, 32)
    assert json.loads(geo["footprint"]) == window_footprint_lonlat(utm, rotated, 32, 0, 32, 32)
    # the bounds stay the box around the tile, as documented
    assert (geo["minx"], geo["maxy"]) == raster_bounds(rotated, 32, 0, 32, 32)[::3]


def test_a_footprint_across_the_antimeridian_is_cut_there():
    """A window of a UTM zone 60 scene reaching past 180 E: two polygons, one on each side of
    the antimeridian, meeting at +/-180 at the same latitudes (RFC 7946, 3.1.9); a window on
    one side stays one polygon."""
    from affine import Affine
    from rasterio.crs import CRS

    from msclip.tiling import footprint_geometry, window_footprint_lonlat

    utm60 = CRS.from_epsg(32660)
    ring = window_footprint_lonlat(utm60, Affine(10, 0, 730000, 0, -10, 5000000), 0, 0, 1000, 1500)
    assert max(p[0] for p in ring) > 179.9 and min(p[0] for p in ring) < -179.8  # the jump
    g = footprint_geometry(ring)
    assert g["type"] == "MultiPolygon" and len(g["coordinates"]) == 2
    west, east = (part[0] for part in g["coordinates"])
    assert west[0] == west[-1] and east[0] == east[-1]  # closed rings
    assert all(0 < lon <= 180 for lon, _ in west) and all(-180 <= lon < 0 for lon, _ in east)
    cut_w = sorted(lat for lon, lat in west[:-1] if lon == 180)
    cut_e = sorted(lat for lon, lat in east[:-1] if lon == -180)
    assert len(cut_w) == 2 and cut_w == pytest.approx(cut_e)
    lats = [lat for _, lat in ring]
    assert min(lats) <= cut_w[0] and cut_w[1] <= max(lats)

    def ccw(r):  # positive shoelace area: counter-clockwise, as the ring it came from
        return sum(r[i][0] * r[i + 1][1] - r[i + 1][0] * r[i][1] for i in range(len(r) - 1)) > 0

    assert ccw(west) and ccw(east)
    inside = window_footprint_lonlat(utm60, Affine(10, 0, 500000, 0, -10, 5000000), 0, 0, 10, 10)
    assert footprint_geometry(inside) == {"type": "Polygon", "coordinates": [inside]}


def test_footprints_of_a_0_360_grid_are_in_minus_180_180():
    """An EPSG:4326 raster on a 0-360 grid (190 E is 170 W): its footprints' longitudes are in
    [-180, 180] as RFC 7946 asks, and a window across 180 is cut there, also for a ring stored
    by an index built before longitudes were brought into that range."""
    from msclip.tiling import footprint_geometry

    wgs84 = CRS.from_epsg(4326)
    east = Affine(0.01, 0, 190.0, 0, -0.01, 10.0)
    ring = window_footprint_lonlat(wgs84, east, 0, 0, 32, 32)
    assert [p[0] for p in ring] == pytest.approx([-170.0, -169.68, -169.68, -170.0, -170.0])
    assert _ccw(ring)
    stored = [[lon + 360.0, lat] for lon, lat in ring]  # as an earlier index holds it
    assert footprint_geometry(stored) == {"type": "Polygon", "coordinates": [ring]}

    across = window_footprint_lonlat(wgs84, Affine(0.01, 0, 179.8, 0, -0.01, 10.0), 0, 0, 32, 32)
    g = footprint_geometry(across)
    assert g["type"] == "MultiPolygon" and len(g["coordinates"]) == 2
    west, east_part = (part[0] for part in g["coordinates"])
    assert min(p[0] for p in west) == pytest.approx(179.8) and max(p[0] for p in west) == 180
    assert min(p[0] for p in east_part) == -180
    assert max(p[0] for p in east_part) == pytest.approx(-179.88)
    # a window that starts on 180 E lies wholly east of it: one polygon, no sliver on the line
    on_line = window_footprint_lonlat(wgs84, Affine(0.01, 0, 180.0, 0, -0.01, 10.0), 0, 0, 8, 8)
    g = footprint_geometry(on_line)
    assert g["type"] == "Polygon" and all(-180 <= p[0] < -179.91 for p in g["coordinates"][0])


@pytest.mark.parametrize("epsg, pole", [(3413, 90.0), (3031, -90.0)])
def test_a_footprint_around_a_pole_reaches_the_pole(epsg, pole):
    """A tile of a polar stereographic scene that holds the pole: one polygon from -180 to 180
    bounded by the tile's edge and the pole's latitude (what GDAL's transform_geom gives), not
    two slivers cut at the antimeridian."""
    from rasterio.warp import transform_geom

    from msclip.tiling import footprint_geometry

    crs = CRS.from_epsg(epsg)
    t = Affine(1000, 0, -10000, 0, -1000, 13000)  # 32 km, the pole 10 km from its left edge
    g = footprint_geometry(window_footprint_lonlat(crs, t, 0, 0, 32, 32))
    assert g["type"] == "Polygon"
    (ring,) = g["coordinates"]
    assert ring[0] == ring[-1] and _ccw(ring)
    lons, lats = zip(*ring)
    assert min(lons) == -180 and max(lons) == 180 and pole in lats
    corners = [(-10000, 13000), (22000, 13000), (22000, -19000), (-10000, -19000)]
    ref = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [corners]})
    ref_lats = [p[1] for p in ref["coordinates"][0]]
    assert min(lats) == pytest.approx(min(ref_lats), abs=0.05)
    assert max(lats) == pytest.approx(max(ref_lats))
    # a tile beside the pole stays the quadrilateral of its corners
    beside = window_footprint_lonlat(crs, t, 0, 16, 32, 32)
    assert footprint_geometry(beside) == {"type": "Polygon", "coordinates": [beside]}
