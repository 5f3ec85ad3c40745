"""Layouts of the synthetic scenes: where each land-cover class shows in a tile.

A layout places the main class and sometimes secondary ones: homogeneous regions, agricultural
fields, meandering rivers, coastlines split by a noisy curve, lakes and patches as blobs, street
grids with building parcels, snowfields over a shaded terrain (Lambertian hillshade), burn scars,
clouds (with shadows) over a background, roads. Each layout paints surfaces
(:mod:`msclip.synthetic.surfaces`) into a :class:`Composition` that records, pixel by pixel, the
reflectance, the class painted there and the green-vegetation fraction, so the land-cover label
raster and the vegetation-cover target follow exactly what was painted. Mixed pixels (river
banks, roads, cloud edges) take the class that covers at least half of them (clouds: opacity
0.3, as operational cloud masks dilate); roads are labelled urban.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from msclip.synthetic.classes import CLASS_INDEX, CLASSES, WATER_CLASSES
from msclip.synthetic.noise import (
    pixel_grid,
    quantile,
    random_field,
    rotated_frame,
    weighted_choice,
)
from msclip.synthetic.spectra import vary_endmembers
from msclip.synthetic.surfaces import SURFACES, Shape, rock_surface

__all__ = [
    "COMPOSERS",
    "Composition",
    "add_clouds",
    "add_coast",
    "add_patch",
    "add_river",
    "add_road",
    "compose_landscape",
    "compose_tile",
]


@dataclass
class Composition:
    """A tile under construction: what was painted where.

    Attributes:
        refl: surface reflectance ``[12, H, W]``.
        labels: ``uint8`` class index (into :data:`CLASSES`) of each pixel.
        green: green-vegetation fraction of each pixel (0-1), following every mixture.
        layout: spatial arrangement (see :class:`msclip.synthetic.tiles.TileInfo`).
        roles: how each class takes part (``main``, ``background``, ``coast`` ...).
        features: extra non-class features (``road``).
    """

    refl: np.ndarray
    labels: np.ndarray
    green: np.ndarray
    layout: str
    roles: dict[str, str] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)

    def put(
        self, cls: str, mask: np.ndarray, refl: np.ndarray, green: np.ndarray, role: str | None
    ) -> None:
        """Paint class ``cls`` (reflectance ``refl``, vegetation ``green``) where ``mask``."""
        self.refl[:, mask] = refl[:, mask]
        self.green[mask] = green[mask]
        self.labels[mask] = CLASS_INDEX[cls]
        if role is not None and cls not in self.roles and mask.any():
            self.roles[cls] = role


def _base(rng: np.random.Generator, cls: str, shape: Shape, layout: str) -> Composition:
    surface = SURFACES[cls](rng, shape)
    labels = np.full(shape, CLASS_INDEX[cls], dtype=np.uint8)
    return Composition(surface.refl, labels, surface.green, layout, {cls: "main"})


def _blob(
    rng: np.random.Generator, shape: Shape, frac: float, roughness: float = 0.45
) -> np.ndarray:
    """A connected-looking blob covering ``frac`` of the tile (lake, patch, burn scar)."""
    h, w = shape
    size = max(shape)
    center = (rng.uniform(0.15, 0.85) * (h - 1), rng.uniform(0.15, 0.85) * (w - 1))
    u, v = rotated_frame(shape, rng.uniform(0, math.pi), center)
    aspect = rng.uniform(0.5, 1.0)
    r = np.sqrt((u * aspect) ** 2 + v**2) / size
    f = r + roughness * 0.18 * random_field(rng, shape, beta=3.3)
    return f <= quantile(f, frac)


def _river_distance(rng: np.random.Generator, shape: Shape, offset: float = 0.2) -> np.ndarray:
    """Approximate perpendicular distance (pixels) to a meandering centre line across the tile."""
    size = max(shape)
    u, v = rotated_frame(shape, rng.uniform(0, math.pi))
    v0 = rng.uniform(-offset, offset) * size
    amp = rng.uniform(0.04, 0.2) * size
    k = 2 * math.pi / (rng.uniform(0.7, 2.0) * size)
    k2 = k * rng.uniform(1.8, 3.2)
    a2 = amp * rng.uniform(0.0, 0.3)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    c = v0 + amp * np.sin(k * u + p1) + a2 * np.sin(k2 * u + p2)
    dc = amp * k * np.cos(k * u + p1) + a2 * k2 * np.cos(k2 * u + p2)
    return np.abs(v - c) / np.sqrt(1 + dc * dc)


def _coast_field(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """A field whose level lines are noisy, roughly straight coastlines."""
    size = max(shape)
    _, v = rotated_frame(shape, rng.uniform(0, 2 * math.pi))
    return v + rng.uniform(0.04, 0.12) * size * random_field(rng, shape, beta=rng.uniform(3.0, 3.8))


_LAND = {
    "forest": 0.2, "grassland": 0.2, "cropland": 0.2, "urban": 0.15, "bare soil": 0.1,
    "desert": 0.05, "wetland": 0.1,
}  # fmt: skip


def add_coast(
    scene: Composition,
    rng: np.random.Generator,
    sea_frac: float,
    beach_frac: float,
    land: str | None,
    roles: Mapping[str, str],
) -> None:
    """Split the tile by a noisy coastline into sea | beach | land (land = current scene)."""
    shape = scene.labels.shape
    f = _coast_field(rng, shape)
    t_sea = quantile(f, sea_frac)
    t_beach = quantile(f, sea_frac + beach_frac) if beach_frac > 0 else t_sea
    if land is None:  # beach reaches the far edge
        t_beach = np.inf
    beach = (f > t_sea) & (f <= t_beach)
    if beach.any():
        sand, no_green = SURFACES["beach"](rng, shape)
        # Wet sand along the waterline: the swash zone darkens within a pixel or two.
        wet = np.exp(-np.clip(f - t_sea, 0, None) / rng.uniform(0.8, 2.0)) * rng.uniform(0.4, 0.9)
        wet_em = vary_endmembers(rng, ["sand_wet"])[0][:, None, None]
        sand = sand * (1 - wet) + wet_em * wet
        scene.put("beach", beach, sand, no_green, roles.get("beach"))
    sea = f <= t_sea
    scene.put("sea", sea, *SURFACES["sea"](rng, shape), roles.get("sea"))


def add_river(
    scene: Composition, rng: np.random.Generator, width: float, role: str | None, bank: str | None
) -> None:
    """A meandering river ``width`` pixels wide across the tile, with an optional ``bank`` strip."""
    shape = scene.labels.shape
    d = _river_distance(rng, shape)
    u, _ = rotated_frame(shape, rng.uniform(0, math.pi))
    wv = width * (1 + 0.15 * np.sin(2 * np.pi * u / (max(shape) * rng.uniform(0.5, 1.2))))
    if bank is not None:  # riparian strip
        strip = (d < wv / 2 + rng.uniform(1.0, 3.0)) & (d >= wv / 2 - 0.5)
        scene.put(bank, strip, *SURFACES[bank](rng, shape), "riparian")
    water = SURFACES["river"](rng, shape).refl
    # Sub-pixel edges: the bank pixels are water/land mixtures.
    cover = np.clip(wv / 2 + 0.5 - d, 0, 1).astype(np.float32)
    scene.refl = scene.refl * (1 - cover) + water * cover
    scene.green = scene.green * (1 - cover)  # river water holds no vegetation
    scene.put("river", cover >= 0.5, scene.refl, scene.green, role)


def add_patch(
    scene: Composition, rng: np.random.Generator, cls: str, frac: float, role: str | None
) -> np.ndarray:
    """A blob of class ``cls`` covering ``frac`` of the tile; returns its mask."""
    mask = _blob(rng, scene.labels.shape, frac)
    scene.put(cls, mask, *SURFACES[cls](rng, scene.labels.shape), role)
    return mask


def add_road(scene: Composition, rng: np.random.Generator) -> None:
    """A road (asphalt, about one pixel wide) across the tile, not over water."""
    shape = scene.labels.shape
    size = max(shape)
    u, v = rotated_frame(shape, rng.uniform(0, math.pi))
    bend = rng.uniform(-1.0, 1.0) / size
    c = rng.uniform(-0.3, 0.3) * size + bend * u * u
    d = np.abs(v - c) / np.sqrt(1 + (2 * bend * u) ** 2)
    cover = np.clip(rng.uniform(0.7, 1.8) / 2 + 0.5 - d, 0, 1)
    water = np.isin(scene.labels, [CLASS_INDEX[c] for c in WATER_CLASSES])
    cover[water] = 0
    if not cover.any():
        return
    asphalt = vary_endmembers(rng, ["asphalt"])[0][:, None, None]
    scene.refl = scene.refl * (1 - cover) + asphalt * cover
    scene.green = (scene.green * (1 - cover)).astype(np.float32)
    scene.labels[cover >= 0.5] = CLASS_INDEX["urban"]
    scene.features.append("road")


def add_clouds(
    scene: Composition, rng: np.random.Generator, coverage: float, role: str | None
) -> None:
    """Clouds blended over the scene by a soft opacity, with their shadows on the ground."""
    h, w = scene.labels.shape
    size = max(h, w)
    pad = max(2, int(0.2 * size))
    n = random_field(rng, (h + 2 * pad, w + 2 * pad), beta=rng.uniform(2.6, 3.4))
    t = quantile(n[pad : pad + h, pad : pad + w], 1 - coverage)
    soft = rng.uniform(0.25, 0.8)
    alpha_all = np.clip((n - t) / soft + 0.5, 0, 1) ** 0.8
    if coverage >= 0.97:  # overcast
        alpha_all = np.maximum(alpha_all, 0.97)
    alpha = alpha_all[pad : pad + h, pad : pad + w]
    # The shadow is the cloud shifted along the sun azimuth (sun not at zenith).
    dy, dx = rng.integers(-pad, pad + 1, 2)
    shadow = alpha_all[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    dark = 1 - rng.uniform(0.45, 0.75) * shadow
    cloud = SURFACES["cloud"](rng, (h, w)).refl
    # The ground keeps its vegetation under thin cloud and shadow; where the cloud is labelled,
    # the dense target marks it undefined (msclip.synthetic.dense).
    scene.refl = scene.refl * (dark * (1 - alpha))[None] + cloud * alpha[None]
    # Like operational cloud masks (Fmask dilates its mask), thin cloud edges count as cloud.
    mask = alpha >= 0.3
    scene.labels[mask] = CLASS_INDEX["cloud"]
    if role is not None and mask.any():
        scene.roles.setdefault("cloud", role)


def _hillshade(rng: np.random.Generator, z: np.ndarray, steepness: float) -> np.ndarray:
    """Lambertian illumination of a terrain ``z`` scaled to an RMS slope ``steepness``.

    Returns 1 on flat ground, more on slopes facing the sun, less on those facing away.
    """
    gy, gx = np.gradient(z)
    k = steepness / (float(np.sqrt(np.mean(gx * gx + gy * gy))) + 1e-6)
    gx, gy = gx * k, gy * k
    zen = math.radians(rng.uniform(30, 65))
    az = rng.uniform(0, 2 * math.pi)
    num = math.cos(zen) - math.sin(zen) * (gx * math.cos(az) + gy * math.sin(az))
    return np.clip(num / np.sqrt(1 + gx * gx + gy * gy) / math.cos(zen), 0.35, 1.45)


# --- One composer per main class ------------------------------------------------------------


def _homogeneous(
    cls: str, layout: str, relations: Mapping[str, float]
) -> Callable[..., Composition]:
    """Composer: the class's own surface plus at most one secondary feature."""

    def compose(rng: np.random.Generator, shape: Shape) -> Composition:
        scene = _base(rng, cls, shape, layout)
        size = max(shape)
        rel = weighted_choice(rng, relations)
        if rel == "none":
            return scene
        kind, _, other = rel.partition(":")
        if kind == "river":
            add_river(scene, rng, max(1.5, rng.uniform(0.04, 0.09) * size), "crossing", None)
        elif kind == "lake":
            add_patch(scene, rng, "lake", rng.uniform(0.06, 0.25), "inset")
        elif kind == "coast":
            beach = rng.uniform(0.03, 0.08) if rng.random() < 0.5 else 0.0
            add_coast(
                scene, rng, rng.uniform(0.12, 0.35), beach, cls, {"sea": "coast", "beach": "coast"}
            )
        elif kind == "patch":
            add_patch(scene, rng, other, rng.uniform(0.1, 0.3), "patch")
        return scene

    return compose


def _compose_sea(rng: np.random.Generator, shape: Shape) -> Composition:
    if rng.random() < 0.35:
        return _base(rng, "sea", shape, "open water")
    land = weighted_choice(rng, _LAND)
    scene = _base(rng, land, shape, "coast")
    scene.roles = {}
    beach = rng.uniform(0.03, 0.1) if rng.random() < 0.6 else 0.0
    sea_frac = rng.uniform(0.55, 0.85)
    add_coast(scene, rng, sea_frac, beach, land, {"sea": "main", "beach": "coast"})
    scene.roles[land] = "coast"
    return scene


def _compose_beach(rng: np.random.Generator, shape: Shape) -> Composition:
    land = (
        weighted_choice(rng, {k: v for k, v in _LAND.items() if k != "wetland"})
        if rng.random() < 0.8
        else None
    )
    scene = _base(rng, land or "beach", shape, "coast")
    scene.roles = {}
    sea_frac = rng.uniform(0.2, 0.4)
    beach = rng.uniform(0.45, 0.6) if land else 1 - sea_frac
    add_coast(scene, rng, sea_frac, beach, land, {"beach": "main", "sea": "coast"})
    if land:
        scene.roles[land] = "coast"
    return scene


def _compose_lake(rng: np.random.Generator, shape: Shape) -> Composition:
    bg = weighted_choice(rng, {
        "forest": 0.3, "grassland": 0.2, "cropland": 0.2, "wetland": 0.1, "bare soil": 0.05,
        "urban": 0.05, "desert": 0.03, "snow and ice": 0.07,
    })  # fmt: skip
    scene = _base(rng, bg, shape, "lake")
    scene.roles = {bg: "background"}
    add_patch(scene, rng, "lake", rng.uniform(0.35, 0.75), "main")
    return scene


def _compose_river(rng: np.random.Generator, shape: Shape) -> Composition:
    bg = weighted_choice(rng, {
        "forest": 0.25, "cropland": 0.25, "grassland": 0.2, "urban": 0.1, "wetland": 0.07,
        "bare soil": 0.05, "desert": 0.05, "snow and ice": 0.03,
    })  # fmt: skip
    scene = _base(rng, bg, shape, "river")
    scene.roles = {bg: "background"}
    bank = None
    if bg not in ("snow and ice", "urban") and rng.random() < 0.5:
        bank = weighted_choice(rng, {"forest": 0.5, "grassland": 0.5})
        bank = None if bank == bg else bank
    add_river(scene, rng, max(3.0, rng.uniform(0.1, 0.25) * max(shape)), "main", bank)
    return scene


def _compose_snow(rng: np.random.Generator, shape: Shape) -> Composition:
    size = max(shape)
    u, _ = rotated_frame(shape, rng.uniform(0, 2 * math.pi))
    z = random_field(rng, shape, beta=rng.uniform(3.3, 4.0)) + rng.uniform(0, 2.5) * u / size
    snow_frac = rng.uniform(0.6, 1.0)
    below = weighted_choice(rng, {"bare soil": 0.5, "forest": 0.3, "grassland": 0.2})
    scene = _base(rng, "snow and ice", shape, "snowfield")
    if snow_frac < 0.97:
        zz = z + 0.15 * random_field(rng, shape, scale=1.0)  # patchy snowline
        low = zz < quantile(zz, 1 - snow_frac)
        ground = rock_surface(rng, shape) if below == "bare soil" else SURFACES[below](rng, shape)
        scene.put(below, low, *ground, "background")
    # Rock outcrops on steep slopes, where snow does not stay.
    gy, gx = np.gradient(z)
    slope = np.hypot(gx, gy)
    steep = (slope > quantile(slope, 1 - rng.uniform(0.02, 0.12))) & (
        scene.labels == CLASS_INDEX["snow and ice"]
    )
    scene.put("bare soil", steep, *rock_surface(rng, shape), None)
    scene.refl = scene.refl * _hillshade(rng, z, rng.uniform(0.2, 0.7))[None]
    return scene


def _compose_cloud(rng: np.random.Generator, shape: Shape) -> Composition:
    bg = weighted_choice(rng, {
        "sea": 0.15, "forest": 0.15, "cropland": 0.15, "grassland": 0.1, "urban": 0.1,
        "bare soil": 0.08, "desert": 0.07, "wetland": 0.05, "snow and ice": 0.05, "lake": 0.05,
        "river": 0.05,
    })  # fmt: skip
    scene = COMPOSERS[bg](rng, shape)
    scene.roles = {c: "background" for c in scene.roles}
    scene.features = []
    scene.layout = "cloud cover"
    coverage = 1.0 if rng.random() < 0.2 else rng.uniform(0.6, 0.95)
    add_clouds(scene, rng, coverage, "main")
    return scene


def _compose_burnt(rng: np.random.Generator, shape: Shape) -> Composition:
    bg = weighted_choice(rng, {"forest": 0.6, "grassland": 0.25, "cropland": 0.15})
    scene = _base(rng, bg, shape, "burn scar")
    scene.roles = {bg: "background"}
    frac = 1.0 if rng.random() < 0.15 else rng.uniform(0.55, 0.9)
    scar = np.ones(shape, dtype=bool) if frac >= 1 else _blob(rng, shape, frac, roughness=1.0)
    burnt = SURFACES["burnt area"](rng, shape).refl
    # Burn severity: mostly complete, with scorched (dry, not green) vegetation left in places.
    sev = np.clip(0.93 + 0.12 * random_field(rng, shape, scale=2.5), 0.6, 1.0)[None]
    scorched = 0.5 * scene.refl + 0.5 * vary_endmembers(rng, ["dry_vegetation"])[0][:, None, None]
    # The scorched leftovers are half background (half its green cover) and half dry vegetation;
    # char and ash hold no green vegetation.
    green = (1 - sev[0]) * 0.5 * scene.green
    scene.put("burnt area", scar, sev * burnt + (1 - sev) * scorched, green, "main")
    if frac >= 1:
        scene.roles.pop(bg, None)
        scene.layout = "homogeneous"
    return scene


#: The composer of each main class: ``composer(rng, (H, W)) -> Composition``.
COMPOSERS: dict[str, Callable[[np.random.Generator, Shape], Composition]] = {
    "sea": _compose_sea,
    "lake": _compose_lake,
    "river": _compose_river,
    "snow and ice": _compose_snow,
    "cloud": _compose_cloud,
    "forest": _homogeneous("forest", "homogeneous", {
        "none": 0.5, "river": 0.12, "lake": 0.1, "patch:grassland": 0.1, "patch:bare soil": 0.04,
        "patch:burnt area": 0.05, "coast": 0.04, "patch:cropland": 0.05,
    }),
    "cropland": _homogeneous("cropland", "fields", {
        "none": 0.5, "river": 0.12, "patch:urban": 0.12, "patch:forest": 0.12, "lake": 0.06,
        "patch:grassland": 0.08,
    }),
    "grassland": _homogeneous("grassland", "homogeneous", {
        "none": 0.45, "patch:forest": 0.18, "river": 0.1, "lake": 0.08, "patch:bare soil": 0.09,
        "patch:urban": 0.05, "coast": 0.05,
    }),
    "bare soil": _homogeneous("bare soil", "homogeneous", {
        "none": 0.6, "patch:grassland": 0.15, "patch:cropland": 0.1, "river": 0.05,
        "patch:urban": 0.05, "lake": 0.05,
    }),
    "desert": _homogeneous("desert", "dunes", {
        "none": 0.65, "patch:bare soil": 0.15, "river": 0.07, "patch:urban": 0.05, "lake": 0.03,
        "coast": 0.05,
    }),
    "urban": _homogeneous("urban", "urban blocks", {
        "none": 0.45, "river": 0.15, "patch:grassland": 0.12, "patch:forest": 0.1, "coast": 0.1,
        "patch:cropland": 0.08,
    }),
    "wetland": _homogeneous("wetland", "homogeneous", {
        "none": 0.45, "lake": 0.15, "river": 0.15, "patch:forest": 0.12, "patch:grassland": 0.13,
    }),
    "beach": _compose_beach,
    "burnt area": _compose_burnt,
}  # fmt: skip

#: Probability of a road across a tile of each main class.
_ROAD_P = {
    "forest": 0.12, "cropland": 0.3, "grassland": 0.15, "bare soil": 0.15, "desert": 0.15,
    "wetland": 0.05, "burnt area": 0.1, "lake": 0.05, "river": 0.1, "beach": 0.05,
}  # fmt: skip
#: Probability of a few clouds over a tile of each main class.
#: (Not over rivers, a thin feature that a cloud could hide entirely.)
_CLOUD_P = {c: 0.06 for c in CLASSES if c not in ("cloud", "snow and ice", "river")}


def compose_tile(main: str, shape: Shape, rng: np.random.Generator) -> Composition:
    """Compose a tile of main class ``main``: its layout, then maybe a road and a few clouds.

    Args:
        main: a class of :data:`CLASSES` (canonical spelling).
        shape: ``(H, W)`` in pixels.
        rng: random generator (every draw of the tile comes from it).

    Returns:
        The :class:`Composition`.
    """
    scene = COMPOSERS[main](rng, shape)
    if rng.random() < _ROAD_P.get(main, 0.0):
        add_road(scene, rng)
    if rng.random() < _CLOUD_P.get(main, 0.0):
        add_clouds(scene, rng, rng.uniform(0.05, 0.25), "overlay")
    return scene


# --- Large scenes of several land-cover regions ----------------------------------------------

#: Share of the regions of a large scene taken by each class (water, beach and cloud come as
#: features: lakes, rivers, a coast, clouds).
_REGION_CLASSES = {
    "forest": 0.22, "cropland": 0.24, "grassland": 0.16, "urban": 0.09, "bare soil": 0.06,
    "wetland": 0.06, "desert": 0.04, "burnt area": 0.07, "snow and ice": 0.06,
}  # fmt: skip


def _regions(rng: np.random.Generator, shape: Shape, region_size: float) -> np.ndarray:
    """Region id of each pixel: the nearest of jittered grid points, with warped borders.

    Domain warping (coordinates displaced by a smooth random field) turns the straight cell
    borders of the nearest-point (Voronoi) partition into irregular, natural-looking ones.
    """
    h, w = shape
    ny, nx = max(1, round(h / region_size)), max(1, round(w / region_size))
    py = (np.arange(ny)[:, None] + rng.uniform(0.15, 0.85, (ny, nx))) * (h / ny)
    px = (np.arange(nx)[None, :] + rng.uniform(0.15, 0.85, (ny, nx))) * (w / nx)
    warp = random_field(rng, shape, scale=region_size / 4, count=2) * np.float32(region_size / 4)
    yy, xx = pixel_grid(h, w)
    y, x = yy + warp[0], xx + warp[1]
    del warp
    best = np.full(shape, np.inf, dtype=np.float32)
    region = np.zeros(shape, dtype=np.int32)
    for k, (cy, cx) in enumerate(zip(py.ravel(), px.ravel())):
        d = (y - np.float32(cy)) ** 2 + (x - np.float32(cx)) ** 2
        closer = d < best
        best[closer] = d[closer]
        region[closer] = k
    return region


def compose_landscape(
    rng: np.random.Generator, shape: Shape, region_size: float = 128.0
) -> Composition:
    """A large scene: land-cover regions, then lakes, rivers, roads, maybe a coast and clouds.

    Each region (about ``region_size`` pixels across) takes a class and that class's surface,
    painted over the region's bounding box only; the features then cross region borders as they
    would on the ground. Memory grows with the scene: a few full-scene 12-band ``float32``
    layers at a time (see ``docs/scenes.md``).

    Args:
        rng: random generator.
        shape: ``(H, W)`` in pixels.
        region_size: typical side of a land-cover region in pixels.

    Returns:
        The :class:`Composition` (layout ``landscape``).
    """
    h, w = shape
    size = max(shape)
    region = _regions(rng, shape, region_size)
    n_regions = int(region.max()) + 1
    classes = [weighted_choice(rng, _REGION_CLASSES) for _ in range(n_regions)]
    scene = Composition(
        np.zeros((12, h, w), dtype=np.float32),
        np.zeros(shape, dtype=np.uint8),
        np.zeros(shape, dtype=np.float32),
        "landscape",
    )
    for k, cls in enumerate(classes):
        mask = region == k
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        inside = mask[box]
        refl, green = SURFACES[cls](rng, inside.shape)
        scene.refl[:, box[0], box[1]][:, inside] = refl[:, inside]
        scene.green[box][inside] = green[inside]
        scene.labels[box][inside] = CLASS_INDEX[cls]
        scene.roles.setdefault(cls, "region")
    del region
    for _ in range(int(rng.integers(1, 4))):
        add_patch(scene, rng, "lake", rng.uniform(0.002, 0.012), "inset")
    for _ in range(1 + int(rng.random() < 0.4)):
        add_river(scene, rng, max(3.0, rng.uniform(0.006, 0.014) * size), "crossing", None)
    for _ in range(int(rng.integers(1, 4))):
        add_road(scene, rng)
    if rng.random() < 0.5:
        sea = rng.uniform(0.06, 0.2)
        add_coast(scene, rng, sea, rng.uniform(0.004, 0.012), "land", {"sea": "coast"})
    if rng.random() < 0.5:
        add_clouds(scene, rng, rng.uniform(0.03, 0.12), "overlay")
    return scene
