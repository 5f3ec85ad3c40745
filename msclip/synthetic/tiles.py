"""Synthetic Sentinel-2 L2A tiles: a composed scene seen through a simple sensor model.

:func:`generate_tile` composes a tile of a land-cover class (:mod:`msclip.synthetic.layouts`) and
observes it: a slight point-spread blur, an illumination gain, a residual haze term that decreases
with wavelength (as path radiance does, roughly like a Rayleigh / fine-aerosol term), per-pixel
noise, then digital numbers ``round(reflectance * 10000)`` as ``uint16`` clipped to ``1..10000``
(``1..16000`` on snow and cloud, which can exceed unit reflectance), ``0`` being reserved for
nodata. No ``BOA_ADD_OFFSET`` is applied (the pre-2022 processing-baseline convention).

Everything is drawn from one :class:`numpy.random.Generator`, so a seed fixes the pixels. The
per-pixel land-cover labels and the fractional vegetation cover come out of the same composition
without any random draw of their own (:class:`TileInfo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from msclip.errors import SyntheticDataError
from msclip.synthetic.classes import BRIGHT_CLASSES, CLASS_INDEX, CLASSES, canonical_class
from msclip.synthetic.layouts import Composition, compose_tile
from msclip.synthetic.spectra import WAVELENGTHS_UM
from msclip.synthetic.surfaces import Shape

__all__ = ["TileInfo", "generate_tile", "observe", "tile_shape"]

_WL = np.asarray(WAVELENGTHS_UM, dtype=np.float32)
# Residual path radiance after atmospheric correction falls off roughly like a Rayleigh /
# fine-aerosol term, so the haze offset is largest in the blue.
_HAZE_SHAPE = ((WAVELENGTHS_UM[0] / _WL) ** 2).astype(np.float32)
_MAX_DN = 10000
_MAX_DN_BRIGHT = 16000


@dataclass(frozen=True)
class TileInfo:
    """What a generated tile shows.

    Attributes:
        main: the tile's class label (the class it was generated for).
        layout: spatial arrangement (``homogeneous``, ``fields``, ``coast``, ``lake``, ``river``,
            ``cloud cover``, ``snowfield``, ``burn scar``, ``urban blocks``, ``dunes``,
            ``open water``).
        secondary: other classes that cover part of the tile, in the order they were placed.
        roles: how each class takes part (``main``, ``background``, ``crossing``, ``coast``,
            ``inset``, ``patch``, ``riparian``, ``overlay``).
        features: extra non-class features (``road``).
        fractions: share of the pixels of each class in the label map.
        label_map: ``uint8`` class index (into :data:`CLASSES`) per pixel; roads count as urban.
        fcover: ``float32`` fraction of each pixel covered by green vegetation (0-1), the
            abundance of the green endmembers that were mixed there, blurred by the same
            point-spread function as the image; ``NaN`` where ``label_map`` is cloud.
    """

    main: str
    layout: str
    secondary: tuple[str, ...]
    roles: dict[str, str]
    features: tuple[str, ...]
    fractions: dict[str, float]
    label_map: np.ndarray = field(repr=False, compare=False)
    fcover: np.ndarray = field(repr=False, compare=False)


def tile_shape(size: int | tuple[int, int], kind: str = "tile") -> Shape:
    """``(height, width)`` of a tile size given as a side or a pair (``kind``: ``tile`` or
    ``scene``, for the messages).

    Raises:
        SyntheticDataError: not an int or a pair, below 8 or above 4096 pixels a side.
    """
    try:
        if isinstance(size, (int, np.integer)):
            h = w = int(size)
        else:
            h, w = (int(x) for x in size)
    except (TypeError, ValueError) as err:
        raise SyntheticDataError(
            f"{kind} size {size!r} is neither an int nor a (height, width) pair; pass e.g. 64"
        ) from err
    if h < 8 or w < 8:
        raise SyntheticDataError(f"{kind} size {size!r} is too small; use at least 8 pixels a side")
    if max(h, w) > _MAX_SIDE:
        fix = (
            "generate several scenes for a larger area"
            if kind == "scene"
            else "generate a scene of regions (msclip-scenes scene) for large areas"
        )
        raise SyntheticDataError(
            f"{kind} size {size!r} exceeds {_MAX_SIDE} pixels a side (memory grows with the "
            f"square of the side); {fix}"
        )
    return h, w


#: The largest generated raster side (tiles and scenes alike).
_MAX_SIDE = 4096


def _psf(x: np.ndarray, a: float) -> np.ndarray:
    """A slight point-spread blur over the last two axes: weight ``a`` on a 4-neighbour box."""
    pad = np.pad(x, ((0, 0),) * (x.ndim - 2) + ((1, 1), (1, 1)), mode="edge")
    box = (
        pad[..., :-2, 1:-1] + pad[..., 2:, 1:-1] + pad[..., 1:-1, :-2] + pad[..., 1:-1, 2:] + 4 * x
    ) / 8
    return (1 - a) * x + a * box


def observe(scene: Composition, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's view of a composition: digital numbers and the vegetation-cover target.

    Args:
        scene: a composed tile or scene.
        rng: random generator (the sensor's draws come after the composition's).

    Returns:
        ``(dn, fcover)``: ``uint16`` ``[12, H, W]`` and ``float32`` ``[H, W]`` (see
        :class:`TileInfo`).
    """
    # Sensor point-spread function: neighbouring pixels leak into each other a little. The
    # vegetation fraction within the footprint mixes the same way (linear mixing).
    a = rng.uniform(0.15, 0.4)
    fcover = _psf(scene.green, a).astype(np.float32, copy=False)
    fcover[scene.labels == CLASS_INDEX["cloud"]] = np.nan  # the ground is not seen
    # Illumination (sun elevation, residual BRDF) and residual haze from atmospheric correction.
    haze = rng.uniform(-0.002, 0.01) * _HAZE_SHAPE
    gain = rng.uniform(0.93, 1.07)
    top = np.where(np.isin(scene.labels, [CLASS_INDEX[c] for c in BRIGHT_CLASSES]),
                   _MAX_DN_BRIGHT, _MAX_DN)  # fmt: skip
    # Band by band, which holds one band's temporaries at a time; the noise of consecutive
    # bands is drawn in the order a single [bands, H, W] draw would give it.
    dn = np.empty(scene.refl.shape, dtype=np.uint16)
    for b in range(scene.refl.shape[0]):
        refl = _psf(scene.refl[b], a) * gain + haze[b]
        # Sensor noise: a floor plus a part proportional to the signal.
        refl = refl + rng.standard_normal(refl.shape, dtype=np.float32) * (0.0012 + 0.004 * refl)
        dn[b] = np.clip(np.rint(refl * 10000.0), 1, top)
    return dn, fcover


def generate_tile(
    cls: str, size: int | tuple[int, int] = 64, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, TileInfo]:
    """Generate one synthetic Sentinel-2 L2A tile of a land-cover class.

    Args:
        cls: class name (see :data:`CLASSES`; underscores and case are accepted).
        size: side in pixels, or ``(height, width)``; pixels are 10 m.
        rng: random generator, or a seed for one.

    Returns:
        ``(array, info)``: ``uint16`` digital numbers ``[12, H, W]`` (reflectance x 10000, band
        order :data:`msclip.synthetic.spectra.BAND_NAMES`, never 0) and a :class:`TileInfo`.

    Raises:
        UnknownClassError: unknown class name.
        SyntheticDataError: size below 8 pixels.
    """
    main = canonical_class(cls)
    shape = tile_shape(size)
    rng = np.random.default_rng(rng)
    scene = compose_tile(main, shape, rng)
    dn, fcover = observe(scene, rng)
    counts = np.bincount(scene.labels.ravel(), minlength=len(CLASSES))
    total = scene.labels.size
    fractions = {CLASSES[i]: float(c) / total for i, c in enumerate(counts) if c}
    secondary = tuple(c for c in scene.roles if c != main and fractions.get(c, 0) > 0)
    info = TileInfo(
        main=main,
        layout=scene.layout,
        secondary=secondary,
        roles={c: r for c, r in scene.roles.items() if c == main or c in secondary},
        features=tuple(scene.features),
        fractions=fractions,
        label_map=scene.labels,
        fcover=fcover,
    )
    return dn, info
