"""Surfaces of the synthetic scenes: the full-tile texture of one land-cover class.

A surface painter draws a class's reflectance over a whole tile (a layout then decides where it
shows, :mod:`msclip.synthetic.layouts`): per-tile endmember variability
(:func:`msclip.synthetic.spectra.vary_endmembers`), abundances that vary in space (sparse
vegetation, crop stages, soil moisture, water turbidity, snow grain size, burn severity) mixed
linearly, and texture from smooth random fields (forest crowns, crop rows, furrows, dune shading,
sun glint). Alongside the reflectance it returns the green-vegetation fraction of every pixel,
the sum of the abundances of the green endmembers that it mixed
(:func:`msclip.synthetic.spectra.green_fraction`); multiplicative texture (illumination of
crowns, rows, slopes) changes brightness, not abundances, so it leaves that fraction alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from msclip.synthetic.noise import quantile, random_field, rotated_frame, weighted_choice
from msclip.synthetic.spectra import (
    GREEN_VEGETATION,
    green_fraction,
    mix,
    paint,
    vary_endmembers,
)

__all__ = ["SURFACES", "Shape", "Surface", "rock_surface"]

#: ``(height, width)`` of a tile in pixels.
Shape = tuple[int, int]


class Surface(NamedTuple):
    """A painted surface.

    Attributes:
        refl: surface reflectance ``[12, H, W]`` (0-1, ``float32``).
        green: fraction of each pixel covered by green vegetation ``[H, W]`` (0-1, ``float32``).
    """

    refl: np.ndarray
    green: np.ndarray


def _zeros(shape: Shape) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def _surface_sea(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["seawater_open", "seawater_coastal"])
    size = max(shape)
    turb = np.clip(rng.uniform(0.0, 0.6) + 0.15 * random_field(rng, shape, scale=size / 4), 0, 1)
    refl = mix(em, np.stack([1 - turb, turb]))
    # Waves and sun glint: specular reflection is spectrally almost flat, so it lifts all bands
    # by the same amount.
    glint = rng.uniform(0.0, 0.008) * np.clip(1 + random_field(rng, shape, scale=0.7), 0, None)
    return Surface(refl + glint.astype(np.float32), _zeros(shape))


def _surface_lake(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["water_clear", "water_algal", "water_turbid"])
    w = rng.dirichlet((2.0, 2.5, 0.7))
    var = 0.08 * random_field(rng, shape, scale=max(shape) / 5)
    ab = np.stack([np.full(shape, w[0]) - var, np.full(shape, w[1]) + var, np.full(shape, w[2])])
    refl = mix(em, np.clip(ab, 0, 1))
    glint = rng.uniform(0.0, 0.004) * np.clip(1 + random_field(rng, shape, scale=0.7), 0, None)
    return Surface(refl + glint, _zeros(shape))


def _surface_river(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["water_turbid", "water_algal", "water_clear"])
    t = rng.uniform(0.3, 1.0)
    a = rng.uniform(0.0, 1.0 - t)
    var = 0.08 * random_field(rng, shape, scale=2.0)
    ab = np.stack([np.full(shape, t) + var, np.full(shape, a) - var, np.full(shape, 1 - t - a)])
    return Surface(mix(em, np.clip(ab, 0, 1)), _zeros(shape))


def _surface_snow(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["snow_fresh", "snow_old", "glacier_ice"])
    size = max(shape)
    old = np.clip(rng.uniform(0.0, 0.7) + 0.25 * random_field(rng, shape, scale=size / 6), 0, 1)
    ice = np.clip(0.6 * (random_field(rng, shape, beta=3.0) - rng.uniform(1.0, 2.5)), 0, 0.8)
    ab = np.stack([(1 - old) * (1 - ice), old * (1 - ice), ice])
    return Surface(mix(em, ab), _zeros(shape))


def _surface_cloud(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["cloud"])[0]
    # Cloud tops vary in brightness with thickness and illumination of their 3-D structure.
    tex = 1 + rng.uniform(0.05, 0.15) * random_field(rng, shape, beta=3.0)
    gain = rng.uniform(0.85, 1.35)
    return Surface((em[:, None, None] * (gain * tex)[None]).astype(np.float32), _zeros(shape))


def _surface_forest(rng: np.random.Generator, shape: Shape) -> Surface:
    names = ["broadleaf", "conifer", "grass_green", "soil_dark"]
    em = vary_endmembers(rng, names)
    size = max(shape)
    con = np.clip(rng.uniform(0, 1) + 0.35 * random_field(rng, shape, scale=size / 6), 0, 1)
    gaps = np.clip(0.25 * (random_field(rng, shape, scale=1.2) - rng.uniform(1.2, 2.5)), 0, 0.5)
    ab = np.stack([(1 - con) * (1 - gaps), con * (1 - gaps), 0.6 * gaps, 0.4 * gaps])
    refl = mix(em, ab)
    # Crowns and their shadows: fine multiplicative texture.
    crowns = 1 + rng.uniform(0.05, 0.12) * random_field(rng, shape, scale=0.6)
    return Surface(refl * crowns[None], green_fraction(names, ab))


def _surface_grassland(rng: np.random.Generator, shape: Shape) -> Surface:
    names = ["grass_green", "dry_vegetation", "soil_brown"]
    em = vary_endmembers(rng, names)
    size = max(shape)
    n = random_field(rng, shape, scale=size / 8, count=2)
    dry = np.clip(rng.beta(1.5, 4.0) * 0.7 + 0.12 * n[0], 0, 1)
    # Sparse vegetation: part of the pixel is bare soil.
    soil = np.clip(rng.uniform(0.02, 0.2) + 0.06 * n[1], 0, 0.6)
    ab = np.stack([(1 - dry) * (1 - soil), dry * (1 - soil), soil])
    refl = mix(em, ab)
    tex = 1 + 0.04 * random_field(rng, shape, scale=1.0)
    return Surface(refl * tex[None], green_fraction(names, ab))


def _surface_bare_soil(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["soil_brown", "soil_dark", "dry_vegetation", "sand_dune"])
    size = max(shape)
    n = random_field(rng, shape, scale=size / 6, count=2)
    moist = np.clip(rng.uniform(0.0, 0.6) + 0.2 * n[0], 0, 1)
    sandy = rng.uniform(0.0, 0.3)
    weeds = np.clip(rng.uniform(0.0, 0.08) + 0.03 * n[1], 0, 0.2)
    rest = (1 - weeds) * (1 - sandy)
    ab = np.stack([rest * (1 - moist), rest * moist, weeds, (1 - weeds) * sandy * np.ones(shape)])
    refl = mix(em, ab)
    tex = 1 + 0.05 * random_field(rng, shape, scale=0.8)
    if rng.random() < 0.5:  # ploughed furrows
        u, _ = rotated_frame(shape, rng.uniform(0, math.pi))
        tex = tex + rng.uniform(0.02, 0.06) * np.sin(2 * np.pi * u / rng.uniform(2.2, 4.0))
    return Surface(refl * tex[None], _zeros(shape))  # the weeds are dry vegetation


def _surface_desert(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["sand_dune", "sand_beach", "rock"])
    size = max(shape)
    pale = np.clip(rng.uniform(0.0, 0.5) + 0.15 * random_field(rng, shape, scale=size / 5), 0, 1)
    rock = np.clip(0.5 * (random_field(rng, shape, beta=3.0) - rng.uniform(0.8, 3.0)), 0, 0.9)
    ab = np.stack([(1 - pale) * (1 - rock), pale * (1 - rock), rock])
    refl = mix(em, ab)
    # Dunes: a wave pattern whose lee and stoss slopes are lit differently.
    u, _ = rotated_frame(shape, rng.uniform(0, 2 * math.pi))
    period = rng.uniform(5.0, 14.0)
    phase = 2 * np.pi * (u / period + 0.25 * random_field(rng, shape, scale=size / 5))
    shade = 1 + rng.uniform(0.04, 0.14) * np.sin(phase) * (1 - rock)
    return Surface(refl * shade[None], _zeros(shape))


def _surface_wetland(rng: np.random.Generator, shape: Shape) -> Surface:
    names = ["marsh_vegetation", "water_algal", "soil_dark", "grass_green"]
    em = vary_endmembers(rng, names)
    size = max(shape)
    n = random_field(rng, shape, beta=rng.uniform(2.2, 3.0))
    # Open-water pools and channels between reeds, with soft (mixed-pixel) edges.
    t = quantile(n, 1 - rng.uniform(0.15, 0.4))
    water = np.clip((n - t) / 0.35 + 0.5, 0, 1)
    mud = np.clip(0.3 - np.abs(n - t), 0, 0.3)
    grass = np.clip(0.3 + 0.2 * random_field(rng, shape, scale=size / 6), 0, 0.6)
    veg = np.clip(1 - water - mud, 0, 1)
    ab = np.stack([veg * (1 - grass), water, mud, veg * grass])
    return Surface(mix(em, ab), green_fraction(names, ab))


def _surface_beach(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["sand_beach", "sand_dune", "sand_wet"])
    tint = np.clip(rng.uniform(0.0, 0.3) + 0.1 * random_field(rng, shape, scale=3.0), 0, 1)
    ab = np.stack([1 - tint, tint * 0.6, tint * 0.4])
    tex = 1 + 0.03 * random_field(rng, shape, scale=0.8)
    return Surface(mix(em, ab) * tex[None], _zeros(shape))


def _surface_burnt(rng: np.random.Generator, shape: Shape) -> Surface:
    em = vary_endmembers(rng, ["char", "ash", "soil_brown", "dry_vegetation"])
    size = max(shape)
    n = random_field(rng, shape, scale=size / 8, count=2)
    ash = np.clip(rng.uniform(0.03, 0.15) + 0.05 * n[0], 0, 0.4)
    soil = np.clip(rng.uniform(0.1, 0.3) + 0.08 * n[1], 0, 0.5)
    dry = rng.uniform(0.0, 0.08)
    char = np.clip(1 - ash - soil - dry, 0, 1)
    ab = np.stack([char, ash, soil, np.full(shape, dry)])
    tex = 1 + 0.05 * random_field(rng, shape, scale=0.8)
    return Surface(mix(em, ab) * tex[None], _zeros(shape))  # no green vegetation survives


def _surface_cropland(rng: np.random.Generator, shape: Shape) -> Surface:
    """Fields: strips of rectangles in a rotated frame, each field at its own crop stage."""
    names = ["green_crop", "dry_vegetation", "soil_brown", "soil_dark", "grass_green"]
    em = vary_endmembers(rng, names)
    u, v = rotated_frame(shape, rng.uniform(0, math.pi))
    half = math.hypot(*shape) / 2 + 2
    wide = rng.uniform(0.7, 1.6)  # small European parcels to large plains fields
    ncuts = int(2 * half / 4) + 4  # enough cuts of the narrowest width to span the tile
    ucuts = np.cumsum(rng.uniform(6, 22, ncuts) * wide) - half - rng.uniform(0, 10)
    ucuts = ucuts[: int(np.searchsorted(ucuts, half)) + 1]
    col = np.searchsorted(ucuts, u)
    left = np.where(col > 0, ucuts[np.maximum(col - 1, 0)], -np.inf)
    du = np.minimum(u - left, ucuts[np.minimum(col, len(ucuts) - 1)] - u)
    field_id = np.zeros(shape, dtype=np.int64)
    dv = np.full(shape, np.inf, dtype=np.float32)
    for c in np.unique(col):
        m = col == c
        vcuts = np.cumsum(rng.uniform(6, 30, ncuts) * wide) - half - rng.uniform(0, 15)
        vcuts = vcuts[: int(np.searchsorted(vcuts, half)) + 1]
        row = np.searchsorted(vcuts, v[m])
        lo = np.where(row > 0, vcuts[np.maximum(row - 1, 0)], -np.inf)
        dv[m] = np.minimum(v[m] - lo, vcuts[np.minimum(row, len(vcuts) - 1)] - v[m])
        field_id[m] = c * 1000 + row
    _, inv = np.unique(field_id, return_inverse=True)
    inv = inv.reshape(shape)
    nf = int(inv.max()) + 1
    # Crop stage of each field -> abundances of (green crop, dry vegetation, brown soil, dark soil).
    stages = rng.choice(5, size=nf, p=[0.15, 0.15, 0.35, 0.2, 0.15])
    table = np.zeros((nf, 5), dtype=np.float32)
    for i, st in enumerate(stages):
        wet = rng.uniform(0, 1)
        if st == 0:  # bare, ploughed
            a = np.array([0.0, rng.uniform(0, 0.08), 0, 0, 0])
        elif st == 1:  # emerging
            a = np.array([rng.uniform(0.15, 0.45), 0, 0, 0, 0])
        elif st == 2:  # green
            a = np.array([rng.uniform(0.8, 0.98), 0, 0, 0, 0])
        elif st == 3:  # ripening
            g = rng.uniform(0.2, 0.55)
            a = np.array([g, rng.uniform(0.3, 0.95 - g), 0, 0, 0])
        else:  # harvested: stubble
            a = np.array([0.0, rng.uniform(0.45, 0.8), 0, 0, 0])
        rest = 1 - a.sum()
        a[2], a[3] = rest * (1 - wet), rest * wet
        table[i] = a
    ab = table[inv].transpose(2, 0, 1)
    # Field margins and tracks: grass strips about one pixel wide, as mixed pixels.
    margin = rng.uniform(0.0, 0.7)
    edge = np.clip(margin + 0.5 - np.minimum(du, dv), 0, 1) if margin > 0.05 else 0.0
    ab = ab * (1 - edge)
    ab[4] = ab[4] + edge
    refl = mix(em, ab)
    # Sowing rows / tramlines and within-field variation.
    gain = rng.normal(1.0, 0.05, nf).astype(np.float32)[inv]
    along = rng.random(nf) < 0.5
    period = rng.uniform(2.2, 4.5, nf).astype(np.float32)
    amp = rng.uniform(0.0, 0.06, nf).astype(np.float32)
    coord = np.where(along[inv], u, v)
    rows = 1 + amp[inv] * np.sin(2 * np.pi * coord / period[inv])
    tex = gain * rows * (1 + 0.03 * random_field(rng, shape, scale=2.0))
    return Surface(refl * tex[None], green_fraction(names, ab))


def _surface_urban(rng: np.random.Generator, shape: Shape) -> Surface:
    """Street grid, building parcels with roofs and yards, parks."""
    names = ["concrete", "asphalt", "roof_tile", "roof_dark", "grass_green", "broadleaf"]
    em = vary_endmembers(rng, names)
    kind = weighted_choice(rng, {"dense": 0.35, "residential": 0.45, "industrial": 0.2})
    roof_p, yard_p = {
        "dense": ([0.45, 0.05, 0.25, 0.25, 0.0, 0.0], [0.5, 0.3, 0.0, 0.0, 0.1, 0.1]),
        "residential": ([0.15, 0.0, 0.6, 0.25, 0.0, 0.0], [0.3, 0.15, 0.0, 0.0, 0.3, 0.25]),
        "industrial": ([0.5, 0.0, 0.05, 0.45, 0.0, 0.0], [0.4, 0.5, 0.0, 0.0, 0.1, 0.0]),
    }[kind]
    block = {"dense": (7, 12), "residential": (6, 11), "industrial": (10, 18)}[kind]
    parcel = {"dense": (2.5, 4.0), "residential": (2.2, 3.5), "industrial": (4.0, 8.0)}[kind]
    u, v = rotated_frame(shape, rng.uniform(0, math.pi / 2))
    bu, bv = rng.uniform(*block), rng.uniform(*block)
    ou, ov = rng.uniform(0, bu), rng.uniform(0, bv)
    pu, pv = rng.uniform(*parcel), rng.uniform(*parcel)
    ru, rv = np.mod(u - ou, bu), np.mod(v - ov, bv)
    # Parcels: an id per (block, parcel) cell; each gets a roof material and a yard material.
    iu = np.floor((u - ou) / bu) * 97 + np.floor(ru / pu)
    iv = np.floor((v - ov) / bv) * 97 + np.floor(rv / pv)
    _, inv = np.unique(iu * 100003 + iv, return_inverse=True)
    inv = inv.reshape(shape)
    npar = int(inv.max()) + 1
    roofs = rng.choice(len(names), size=npar, p=roof_p)
    yards = rng.choice(len(names), size=npar, p=yard_p)
    fu, fv = np.mod(ru, pu) / pu, np.mod(rv, pv) / pv
    inset = rng.uniform(0.08, 0.22)
    building = (fu > inset) & (fu < 1 - inset) & (fv > inset) & (fv < 1 - inset)
    index = np.where(building, roofs[inv], yards[inv])
    # Parks: whole blocks of grass and trees.
    bid = np.floor((u - ou) / bu) * 1009 + np.floor((v - ov) / bv)
    _, binv = np.unique(bid, return_inverse=True)
    park = (rng.random(int(binv.max()) + 1) < rng.uniform(0.0, 0.06))[binv.reshape(shape)]
    park_mat = np.where(random_field(rng, shape, scale=1.0) > 0, 4, 5)
    index = np.where(park, park_mat, index)
    refl = paint(em, index)
    # Streets along the block edges, as sub-pixel coverage of asphalt.
    width = rng.uniform(0.7, 1.6)
    dist = np.minimum(np.minimum(ru, bu - ru), np.minimum(rv, bv - rv))
    street = np.clip(width / 2 + 0.5 - dist, 0, 1)
    refl = refl * (1 - street) + em[1][:, None, None] * street
    green = np.isin(index, [names.index(n) for n in names if n in GREEN_VEGETATION])
    green = (green * (1 - street)).astype(np.float32)
    return Surface(refl * (1 + 0.06 * random_field(rng, shape, scale=0.6))[None], green)


#: The surface painter of each class: ``painter(rng, (H, W)) -> Surface``.
SURFACES: dict[str, Callable[[np.random.Generator, Shape], Surface]] = {
    "sea": _surface_sea,
    "lake": _surface_lake,
    "river": _surface_river,
    "snow and ice": _surface_snow,
    "cloud": _surface_cloud,
    "forest": _surface_forest,
    "cropland": _surface_cropland,
    "grassland": _surface_grassland,
    "bare soil": _surface_bare_soil,
    "desert": _surface_desert,
    "urban": _surface_urban,
    "wetland": _surface_wetland,
    "beach": _surface_beach,
    "burnt area": _surface_burnt,
}


def rock_surface(rng: np.random.Generator, shape: Shape) -> Surface:
    """Weathered rock and scree, darker where moist (ground above the tree line)."""
    em = vary_endmembers(rng, ["rock", "soil_dark"])
    d = np.clip(rng.uniform(0.0, 0.4) + 0.15 * random_field(rng, shape, scale=2.0), 0, 1)
    return Surface(mix(em, np.stack([1 - d, d])), _zeros(shape))
