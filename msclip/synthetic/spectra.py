"""Spectral library of the synthetic scenes: endmember spectra and the mixtures of each class.

Each class is a mixture of *endmembers* (pure materials: sea water, green leaves, dry soil, snow,
concrete, char ...), each a 12-band surface reflectance signature in the Sentinel-2 L2A band order
of the band registry (:data:`msclip.spectral.bands.S2_L2A_BANDS`:
``B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12``). The values are approximate band averages
read from public spectral libraries (USGS Spectral Library Version 7, Kokaly et al. 2017, USGS
Data Series 1035; ECOSTRESS / ASTER library, Meerdink et al. 2019, Remote Sens. Environ.
230:111196, Baldridge et al. 2009, Remote Sens. Environ. 113:711-715) and typical Sentinel-2 L2A
reflectances from the literature named next to each endmember in :data:`ENDMEMBERS`. They are
rounded readings, not convolutions with the Sentinel-2 spectral response functions: the aim is
the right physics (water dark in NIR and SWIR, the vegetation red edge, snow bright in the
visible and dark at 1.6 um, cloud bright in the SWIR, burn scars low in NIR and higher in SWIR),
not calibration-grade values.

Every tile draws its own endmember gains, a smooth spectral tilt and small per-band factors
(:func:`vary_endmembers`) and mixes endmembers linearly with spatially varying abundances
(:func:`mix`), the linear mixing model of spectral unmixing (Adams, Smith & Johnson 1986,
J. Geophys. Res. 91:8098). The abundances of the green-vegetation endmembers
(:data:`GREEN_VEGETATION`) summed over a pixel give its fractional vegetation cover
(:func:`green_fraction`), the continuous target of the dense outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msclip.spectral.bands import BANDS, S2_L2A_BANDS
from msclip.synthetic.classes import canonical_class

__all__ = [
    "BAND_NAMES",
    "CLASS_MIXTURES",
    "CLASS_SOURCES",
    "ENDMEMBERS",
    "GREEN_VEGETATION",
    "WAVELENGTHS_UM",
    "Endmember",
    "class_signature",
    "green_fraction",
    "mix",
    "paint",
    "vary_endmembers",
]

#: The 12 Sentinel-2 L2A bands, in file order (B10, cirrus, is not in L2A products).
BAND_NAMES: tuple[str, ...] = S2_L2A_BANDS
#: Centre wavelengths in micrometres, from the msclip band registry (ESA S2A nominal values).
WAVELENGTHS_UM: tuple[float, ...] = tuple(BANDS[b].center for b in BAND_NAMES)
_WL = np.asarray(WAVELENGTHS_UM, dtype=np.float32)
# Spectral tilt axis: -0.25 at 443 nm, 0 at 800 nm, 1 at 2.2 um.
_TILT_AXIS = ((_WL - 0.8) / 1.4).astype(np.float32)


@dataclass(frozen=True)
class Endmember:
    """A pure material with its Sentinel-2 L2A surface reflectance signature.

    Attributes:
        name: identifier used in class mixtures.
        description: what the material is.
        reflectance: surface reflectance (0-1) per band of :data:`BAND_NAMES`.
        source: where the values were read from.
    """

    name: str
    description: str
    reflectance: tuple[float, ...]
    source: str


_USGS = "USGS splib07 (Kokaly et al. 2017)"
_ECO = "ECOSTRESS/ASTER library (Meerdink et al. 2019; Baldridge et al. 2009)"

#: Endmember signatures. Columns: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12.
# fmt: off
ENDMEMBERS: dict[str, Endmember] = {
    e.name: e
    for e in (
        # Water: reflectance falls from blue to red and is near zero from the NIR on, because
        # liquid water absorbs strongly beyond ~700 nm.
        Endmember("seawater_open", "clear open-ocean water",
            (0.052, 0.046, 0.029, 0.011, 0.008, 0.006, 0.005, 0.005, 0.004, 0.004, 0.003, 0.002),
            f"{_USGS} Seawater_Open_Ocean_SW2; typical clear-ocean S2 L2A"),
        Endmember("seawater_coastal", "coastal sea water with chlorophyll and sediment",
            (0.058, 0.058, 0.058, 0.032, 0.024, 0.012, 0.010, 0.009, 0.008, 0.006, 0.004, 0.003),
            f"{_USGS} Seawater_Coast_Chl_SW1"),
        Endmember("water_clear", "clear, deep inland water (blue lowered by dissolved organics)",
            (0.040, 0.036, 0.030, 0.014, 0.010, 0.007, 0.006, 0.005, 0.005, 0.004, 0.003, 0.002),
            f"{_ECO} liquid water; S2 lake reflectance (Toming et al. 2016, Remote Sens. 8:640)"),
        Endmember("water_algal", "eutrophic lake water: green peak and 700 nm chlorophyll peak",
            (0.030, 0.034, 0.060, 0.036, 0.044, 0.020, 0.015, 0.013, 0.011, 0.008, 0.004, 0.003),
            "Toming et al. 2016 (Remote Sens. 8:640); Gitelson 1992 (Int. J. Rem. Sens. 13:3367)"),
        Endmember("water_turbid", "sediment-laden river water: high green/red, still dark in SWIR",
            (0.050, 0.056, 0.082, 0.078, 0.072, 0.046, 0.040, 0.034, 0.030, 0.020, 0.008, 0.005),
            "turbid-water S2 reflectance (Nechad et al. 2010, Remote Sens. Environ. 114:854)"),
        # Snow and ice: bright in the visible, falling through the NIR with grain size, and dark at
        # 1.6 and 2.2 um where ice absorbs (the basis of the NDSI, Hall et al. 1995).
        Endmember("snow_fresh", "fresh fine-grained snow",
            (0.930, 0.930, 0.920, 0.900, 0.890, 0.870, 0.850, 0.820, 0.790, 0.700, 0.120, 0.080),
            f"{_ECO} fine granular snow (JHU)"),
        Endmember("snow_old", "old, coarse-grained or melting snow",
            (0.820, 0.820, 0.800, 0.760, 0.730, 0.690, 0.640, 0.580, 0.530, 0.420, 0.030, 0.020),
            f"{_USGS} Melting_snow_mSnw01a; {_ECO} coarse granular snow (JHU)"),
        Endmember("glacier_ice", "bare glacier ice",
            (0.600, 0.600, 0.550, 0.450, 0.400, 0.330, 0.280, 0.240, 0.210, 0.140, 0.020, 0.015),
            f"{_ECO} ice (JHU)"),
        # Clouds: water droplets scatter almost neutrally and absorb far less at 1.6 um than snow
        # grains, so clouds stay bright in the SWIR (Fmask, Zhu & Woodcock 2012).
        Endmember("cloud", "optically thick water cloud",
            (0.560, 0.540, 0.530, 0.530, 0.540, 0.550, 0.560, 0.560, 0.560, 0.450, 0.400, 0.280),
            "typical S2 cloud reflectance; Zhu & Woodcock 2012 (Remote Sens. Environ. 118:83)"),
        # Vegetation: chlorophyll absorption in blue and red, green peak, red edge (705-783 nm),
        # NIR plateau from leaf structure, SWIR lowered by leaf water.
        Endmember("broadleaf", "broadleaf forest canopy",
            (0.025, 0.030, 0.060, 0.030, 0.095, 0.260, 0.330, 0.360, 0.370, 0.350, 0.170, 0.080),
            f"{_USGS} Aspen_Leaf-A_DW92-2, Oak_Oak-Leaf-1 (shape); S2 canopy level"),
        Endmember("conifer", "coniferous forest canopy (darker, more shadow)",
            (0.018, 0.022, 0.042, 0.022, 0.065, 0.170, 0.210, 0.230, 0.240, 0.230, 0.100, 0.045),
            f"{_USGS} Douglas-Fir_YNP-DF-1 forest canopy (AVIRIS)"),
        Endmember("green_crop", "dense green crop at peak season",
            (0.030, 0.035, 0.075, 0.035, 0.120, 0.340, 0.430, 0.470, 0.480, 0.460, 0.220, 0.100),
            f"{_USGS} green vegetation (shape); typical S2 peak-season crop"),
        Endmember("grass_green", "green grass and pasture",
            (0.030, 0.040, 0.080, 0.050, 0.120, 0.280, 0.340, 0.370, 0.380, 0.360, 0.240, 0.130),
            f"{_USGS} Lawn_Grass_GDS91 green, Cheatgrass_ANP92-11A"),
        Endmember("dry_vegetation", "senescent grass, straw and stubble (no red edge)",
            (0.065, 0.085, 0.125, 0.165, 0.205, 0.245, 0.275, 0.295, 0.315, 0.320, 0.390, 0.290),
            f"{_USGS} Tumbleweed_ANP92-2C_Dry; {_ECO} non-photosynthetic vegetation"),
        Endmember("marsh_vegetation", "emergent marsh vegetation over wet ground",
            (0.028, 0.034, 0.065, 0.045, 0.100, 0.210, 0.260, 0.280, 0.290, 0.260, 0.150, 0.070),
            f"{_USGS} Louisiana marsh canopy spectra (CRMS sites)"),
        # Soils, rock and sand: reflectance rising from blue to SWIR (iron oxides lower the blue).
        Endmember("soil_brown", "dry brown loam",
            (0.070, 0.090, 0.130, 0.180, 0.210, 0.230, 0.250, 0.260, 0.270, 0.280, 0.350, 0.310),
            f"{_ECO} soils (JHU), brown loam"),
        Endmember("soil_dark", "moist or organic-rich dark soil",
            (0.040, 0.050, 0.070, 0.095, 0.110, 0.120, 0.130, 0.140, 0.145, 0.150, 0.170, 0.140),
            f"{_ECO} dark soils; moisture darkening (Lobell & Asner 2002, SSSAJ 66:722)"),
        Endmember("rock", "weathered grey rock and scree",
            (0.100, 0.120, 0.150, 0.180, 0.200, 0.210, 0.220, 0.230, 0.240, 0.240, 0.270, 0.240),
            f"{_ECO} granite and gneiss; {_USGS} weathered rock"),
        Endmember("sand_dune", "reddish-yellow desert dune sand",
            (0.150, 0.180, 0.270, 0.370, 0.420, 0.450, 0.470, 0.490, 0.510, 0.510, 0.600, 0.550),
            f"{_ECO} aridisol and dune sand; Libya-4 pseudo-invariant site (CEOS)"),
        Endmember("sand_beach", "dry pale beach sand",
            (0.200, 0.240, 0.300, 0.350, 0.370, 0.390, 0.400, 0.410, 0.420, 0.420, 0.460, 0.410),
            f"{_USGS} Sand_DWO-3-DEL2ar1 (Gulf of Mexico beach sand)"),
        Endmember("sand_wet", "wet sand near the waterline (water darkens the SWIR most)",
            (0.110, 0.130, 0.160, 0.190, 0.200, 0.210, 0.210, 0.210, 0.210, 0.190, 0.140, 0.100),
            "Lobell & Asner 2002 (SSSAJ 66:722) moisture effect on the beach sand above"),
        # Built surfaces: fairly flat spectra.
        Endmember("asphalt", "asphalt roads and car parks",
            (0.070, 0.075, 0.080, 0.085, 0.090, 0.095, 0.100, 0.105, 0.110, 0.110, 0.130, 0.120),
            f"{_USGS} asphalt GDS366; {_ECO} asphalt (JHU)"),
        Endmember("concrete", "concrete and light roofs",
            (0.200, 0.230, 0.270, 0.290, 0.300, 0.310, 0.320, 0.330, 0.330, 0.330, 0.360, 0.320),
            f"{_USGS} Concrete_WTC01-37A; {_ECO} concrete"),
        Endmember("roof_tile", "red clay roof tiles and brick",
            (0.060, 0.070, 0.100, 0.220, 0.270, 0.300, 0.320, 0.330, 0.340, 0.340, 0.400, 0.350),
            f"{_ECO} red brick and clay tile (JHU)"),
        Endmember("roof_dark", "dark bitumen, rubber and metal roofs",
            (0.080, 0.080, 0.085, 0.090, 0.090, 0.095, 0.100, 0.100, 0.100, 0.100, 0.110, 0.100),
            f"{_ECO} rubber and tar roofing material (JHU)"),
        # Fire: char is dark with a gentle rise to the SWIR; with leaf water gone the SWIR exceeds
        # the NIR, which makes the Normalized Burn Ratio negative (Key & Benson 2006).
        Endmember("char", "black char of burnt vegetation",
            (0.030, 0.035, 0.040, 0.045, 0.050, 0.054, 0.057, 0.060, 0.062, 0.065, 0.100, 0.110),
            "Key & Benson 2006 (RMRS-GTR-164-CD); S2 burn scars (Fernández-Manso et al. 2016)"),
        Endmember("ash", "grey-white ash",
            (0.120, 0.140, 0.170, 0.190, 0.200, 0.210, 0.210, 0.210, 0.220, 0.220, 0.270, 0.260),
            "Key & Benson 2006; Fernández-Manso et al. 2016 (Int. J. Appl. Earth Obs. 50:170)"),
    )
}
# fmt: on

_EM_NAMES: tuple[str, ...] = tuple(ENDMEMBERS)
_EM_INDEX: dict[str, int] = {n: i for i, n in enumerate(_EM_NAMES)}
_EM_MATRIX = np.array([ENDMEMBERS[n].reflectance for n in _EM_NAMES], dtype=np.float32)

#: Endmembers of green (photosynthetic) vegetation: their abundances make the fractional
#: vegetation cover. Dry vegetation (straw, stubble) is not green and does not count.
GREEN_VEGETATION = frozenset(
    {"broadleaf", "conifer", "green_crop", "grass_green", "marsh_vegetation"}
)

#: Nominal endmember mixture of each class (fractions sum to 1). Tiles vary around it.
CLASS_MIXTURES: dict[str, dict[str, float]] = {
    "sea": {"seawater_open": 0.7, "seawater_coastal": 0.3},
    "lake": {"water_algal": 0.6, "water_clear": 0.4},
    "river": {"water_turbid": 0.7, "water_algal": 0.3},
    "snow and ice": {"snow_fresh": 0.6, "snow_old": 0.3, "glacier_ice": 0.1},
    "cloud": {"cloud": 1.0},
    "forest": {"broadleaf": 0.6, "conifer": 0.4},
    "cropland": {"green_crop": 0.5, "dry_vegetation": 0.2, "soil_brown": 0.3},
    "grassland": {"grass_green": 0.75, "dry_vegetation": 0.15, "soil_brown": 0.1},
    "bare soil": {"soil_brown": 0.75, "soil_dark": 0.25},
    "desert": {"sand_dune": 0.85, "rock": 0.15},
    "urban": {
        "concrete": 0.3,
        "asphalt": 0.25,
        "roof_tile": 0.15,
        "roof_dark": 0.1,
        "grass_green": 0.1,
        "broadleaf": 0.1,
    },
    "wetland": {"marsh_vegetation": 0.6, "water_algal": 0.25, "soil_dark": 0.15},
    "beach": {"sand_beach": 0.75, "sand_wet": 0.25},
    "burnt area": {"char": 0.65, "ash": 0.1, "soil_brown": 0.2, "dry_vegetation": 0.05},
}

#: Sources of each class's spectra (see :data:`ENDMEMBERS` for the per-material details).
CLASS_SOURCES: dict[str, str] = {
    "sea": "USGS splib07 Seawater_Open_Ocean_SW2 and Seawater_Coast_Chl_SW1",
    "lake": "ECOSTRESS liquid water; Toming et al. 2016; Gitelson 1992",
    "river": "Nechad et al. 2010 (turbid water); Toming et al. 2016",
    "snow and ice": "ECOSTRESS/JHU fine and coarse granular snow, ice; USGS Melting_snow_mSnw01a",
    "cloud": "typical S2 cloud reflectance; Zhu & Woodcock 2012 (Fmask)",
    "forest": "USGS Aspen_Leaf-A, Oak_Oak-Leaf-1, Douglas-Fir_YNP-DF-1 canopy",
    "cropland": "USGS green vegetation and Tumbleweed (dry); ECOSTRESS soils",
    "grassland": "USGS Lawn_Grass_GDS91, Cheatgrass_ANP92-11A; ECOSTRESS NPV and soils",
    "bare soil": "ECOSTRESS/JHU soils; Lobell & Asner 2002 (moisture)",
    "desert": "ECOSTRESS aridisol and dune sand; CEOS Libya-4 site; ECOSTRESS rock",
    "urban": "USGS Concrete_WTC01-37A and asphalt; ECOSTRESS/JHU brick, tile and roofing",
    "wetland": "USGS Louisiana marsh (CRMS) canopies; lake water; ECOSTRESS dark soil",
    "beach": "USGS Sand_DWO-3-DEL2ar1 beach sand; Lobell & Asner 2002 (wet sand)",
    "burnt area": "Key & Benson 2006 (NBR); Fernández-Manso et al. 2016 (S2 burn severity)",
}


def class_signature(name: str) -> np.ndarray:
    """Nominal 12-band reflectance (0-1) of a class: its endmember mixture, no variability.

    Args:
        name: a class of :data:`msclip.synthetic.classes.CLASSES`.

    Returns:
        ``float32`` array of 12 reflectances in :data:`BAND_NAMES` order.
    """
    mix = CLASS_MIXTURES[canonical_class(name)]
    out = np.zeros(len(BAND_NAMES), dtype=np.float64)
    for em, frac in mix.items():
        out += frac * np.asarray(ENDMEMBERS[em].reflectance)
    return out.astype(np.float32)


def vary_endmembers(rng: np.random.Generator, names: Sequence[str]) -> np.ndarray:
    """Endmember signatures ``[K, 12]`` with this tile's variability.

    Each material gets a gain (illumination, density, grain size ...), a smooth tilt across the
    spectrum and small independent per-band changes; multiplicative terms keep the shape
    features (red edge, water absorption) that identify the material.
    """
    base = _EM_MATRIX[[_EM_INDEX[n] for n in names]]
    k = len(names)
    gain = np.clip(rng.normal(1.0, 0.07, (k, 1)), 0.82, 1.18)
    tilt = np.clip(rng.normal(0.0, 0.04, (k, 1)), -0.08, 0.08)
    band = np.clip(rng.normal(1.0, 0.015, (k, base.shape[1])), 0.96, 1.04)
    return (base * gain * (1.0 + tilt * _TILT_AXIS) * band).astype(np.float32)


def mix(em: np.ndarray, abundances: np.ndarray) -> np.ndarray:
    """Linear mixture ``[12, H, W]`` of endmembers ``[K, 12]`` with abundances ``[K, H, W]``."""
    # A sum of K broadcast products: K is small, and a BLAS matmul here only adds thread
    # start-up and contention on busy machines.
    ab = abundances.astype(np.float32, copy=False)
    out = em[0][:, None, None] * ab[0][None]
    for k in range(1, em.shape[0]):
        out += em[k][:, None, None] * ab[k][None]
    return out


def paint(em: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Spectra ``[12, H, W]`` from a per-pixel endmember index map ``[H, W]``."""
    return np.ascontiguousarray(em[index].transpose(2, 0, 1))


def green_fraction(names: Sequence[str], abundances: np.ndarray) -> np.ndarray:
    """Fractional green-vegetation cover ``[H, W]`` (0-1) of abundances ``[K, H, W]``.

    Args:
        names: the endmember of each abundance layer.
        abundances: per-pixel abundances, in the order of ``names``.

    Returns:
        ``float32`` sum of the abundances of :data:`GREEN_VEGETATION` endmembers, clipped to 0-1.
    """
    out = np.zeros(abundances.shape[1:], dtype=np.float32)
    for k, name in enumerate(names):
        if name in GREEN_VEGETATION:
            out += abundances[k]
    return np.clip(out, 0.0, 1.0, out=out)
