"""Synthetic Sentinel-2 L2A scenes with land-cover labels and captions.

This module makes small multispectral tiles that look, band by band, like Sentinel-2 Level-2A
surface reflectance of common land-cover classes, with captions that say what they show. It
feeds the shipped sample tiles, the contrastive pretraining of the demo model (so an offline
first run gives a meaningful zero-shot answer) and test fixtures.

How a tile is made:

1. **Spectra.** Each class is a mixture of *endmembers* (pure materials: sea water, green
   leaves, dry soil, snow, concrete, char ...), each a 12-band surface reflectance signature in
   the L2A band order ``B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12``. The values are
   approximate band averages read from public spectral libraries (USGS Spectral Library
   Version 7, Kokaly et al. 2017, USGS Data Series 1035; ECOSTRESS / ASTER library, Meerdink
   et al. 2019, Remote Sens. Environ. 230:111196, Baldridge et al. 2009, Remote Sens. Environ.
   113:711-715) and typical Sentinel-2 L2A reflectances from the literature named next to each
   endmember in :data:`ENDMEMBERS`. They are rounded readings, not convolutions with the
   Sentinel-2 spectral response functions: the aim is the right physics (water dark in NIR and
   SWIR, the vegetation red edge, snow bright in the visible and dark at 1.6 um, cloud bright
   in the SWIR, burn scars low in NIR and higher in SWIR), not calibration-grade values.
2. **Variability.** Every tile draws its own endmember gains, a smooth spectral tilt and small
   per-band offsets, mixes endmembers with spatially varying abundances (sparse vegetation,
   crop stages, soil moisture, water turbidity, snow grain size, burn severity) and adds
   texture from smooth random fields.
3. **Layout.** A layout places the main class and sometimes secondary ones: homogeneous regions,
   agricultural fields, meandering rivers, coastlines split by a noisy curve, lakes and patches
   as blobs, street grids with building parcels, snowfields over a shaded terrain, burn scars,
   clouds (with shadows) over a background, roads.
4. **Sensor.** A slight point-spread blur, an illumination gain, a residual haze term that
   decreases with wavelength (as path radiance does), per-pixel noise, then digital numbers
   ``round(reflectance * 10000)`` as ``uint16`` clipped to ``1..10000`` (``1..16000`` on snow
   and cloud, which can exceed unit reflectance), ``0`` being reserved for nodata. No
   ``BOA_ADD_OFFSET`` is applied (the pre-2022 processing-baseline convention).

Random fields are Gaussian or power-law filtered white noise made with the numpy FFT (no SciPy).
Everything is drawn from one :class:`numpy.random.Generator`, so a seed fixes the pixels, the
captions and the written files byte for byte.

Command line::

    python -m msclip.data.scenes examples --out benchmark_datasets/examples --seed 0
    python -m msclip.data.scenes dataset --out DIR --n-per-class 100 --size 64 --seed 0
    python -m msclip.data.scenes classes
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import MSCLIPError
from msclip.io import atomic_write
from msclip.spectral.bands import BANDS

__all__ = [
    "BAND_NAMES",
    "CAPTION_COLUMNS",
    "CLASSES",
    "CLASS_MIXTURES",
    "CLASS_PHRASES",
    "CLASS_SOURCES",
    "CLASS_SYNONYMS",
    "DEFAULT_CRS",
    "DEFAULT_ORIGIN",
    "ENDMEMBERS",
    "PIXEL_SIZE",
    "WAVELENGTHS_UM",
    "DatasetSummary",
    "Endmember",
    "Sample",
    "SceneError",
    "TileInfo",
    "UnknownClassError",
    "caption_mentions",
    "class_signature",
    "class_slug",
    "generate_dataset",
    "generate_examples",
    "generate_tile",
    "iter_samples",
    "main",
    "make_captions",
    "normalize_class_name",
    "parse_args",
    "tile_transform",
    "write_tile",
]

logger = logging.getLogger(__name__)


class SceneError(MSCLIPError, ValueError):
    """An argument of the scene generator is out of range (size, counts, layout, array)."""


class UnknownClassError(SceneError):
    """A land-cover class name that the generator does not know."""


# --------------------------------------------------------------------------------------------
# Bands
# --------------------------------------------------------------------------------------------

#: The 12 Sentinel-2 L2A bands, in file order (B10, cirrus, is not in L2A products).
BAND_NAMES: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)  # fmt: skip
#: Centre wavelengths in micrometres, from the msclip band registry (ESA S2A nominal values).
WAVELENGTHS_UM: tuple[float, ...] = tuple(BANDS[b].center for b in BAND_NAMES)
_WL = np.asarray(WAVELENGTHS_UM, dtype=np.float32)
# Spectral tilt axis: -0.25 at 443 nm, 0 at 800 nm, 1 at 2.2 um.
_TILT_AXIS = ((_WL - 0.8) / 1.4).astype(np.float32)
# Residual path radiance after atmospheric correction falls off roughly like a Rayleigh /
# fine-aerosol term, so the haze offset is largest in the blue.
_HAZE_SHAPE = ((WAVELENGTHS_UM[0] / _WL) ** 2).astype(np.float32)

# --------------------------------------------------------------------------------------------
# Spectral endmembers
# --------------------------------------------------------------------------------------------


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

# --------------------------------------------------------------------------------------------
# Land-cover classes and their vocabulary
# --------------------------------------------------------------------------------------------

#: The land-cover classes, in label order.
CLASSES: tuple[str, ...] = (
    "sea", "lake", "river", "snow and ice", "cloud", "forest", "cropland", "grassland",
    "bare soil", "desert", "urban", "wetland", "beach", "burnt area",
)  # fmt: skip
_CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}

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

#: Caption keywords of each class: every caption of a tile contains one of its main class's
#: keywords at the start of a word (see :func:`caption_mentions`).
CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sea": ("sea", "ocean", "open water", "coastal water"),
    "lake": ("lake", "reservoir", "pond", "inland water"),
    "river": ("river", "stream", "waterway"),
    "snow and ice": ("snow", "ice", "glacier"),
    "cloud": ("cloud", "overcast"),
    "forest": ("forest", "wood", "tree"),
    "cropland": ("cropland", "crop", "farm", "agricultural", "arable", "cultivated"),
    "grassland": ("grass", "meadow", "pasture", "rangeland", "prairie"),
    "bare soil": ("bare", "barren", "soil", "unvegetated"),
    "desert": ("desert", "dune", "arid"),
    "urban": ("urban", "city", "built-up", "building", "town", "residential", "houses"),
    "wetland": ("wetland", "marsh", "swamp"),
    "beach": ("beach", "shore"),
    "burnt area": ("burnt", "burned", "burn scar", "wildfire", "fire", "scorched", "charred"),
}

#: Noun phrases used in captions: ``name`` forms stand alone ("a river"), ``mass`` forms follow
#: "patches of" / "some" ("trees").
CLASS_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "sea": {
        "name": (
            "the sea",
            "the ocean",
            "open water",
            "the open sea",
            "sea water",
            "coastal waters",
            "the blue sea",
        ),
        "mass": ("open water", "sea water"),
    },
    "lake": {
        "name": (
            "a lake",
            "a small lake",
            "a reservoir",
            "a pond",
            "a freshwater lake",
            "inland water",
            "a lake with calm water",
        ),
        "mass": ("ponds", "lakes"),
    },
    "river": {
        "name": (
            "a river",
            "a meandering river",
            "a stream",
            "a winding river",
            "a waterway",
            "a broad river",
        ),
        "mass": ("streams", "river water"),
    },
    "snow and ice": {
        "name": (
            "snow",
            "snow and ice",
            "a glacier",
            "snow-covered mountains",
            "snowfields",
            "ice and snow",
            "fresh snow",
            "a snowy mountain range",
        ),
        "mass": ("snow", "ice", "snow and ice"),
    },
    "cloud": {
        "name": (
            "clouds",
            "thick clouds",
            "cloud cover",
            "white clouds",
            "an overcast sky",
            "a cloudy sky",
        ),
        "mass": ("clouds", "cloud"),
    },
    "forest": {
        "name": (
            "a forest",
            "dense forest",
            "woodland",
            "trees",
            "forest canopy",
            "a wooded area",
            "a green forest",
        ),
        "mass": ("forest", "woodland", "trees"),
    },
    "cropland": {
        "name": (
            "cropland",
            "farmland",
            "agricultural fields",
            "crop fields",
            "arable land",
            "farm fields",
            "cultivated fields",
            "agricultural land",
        ),
        "mass": ("cropland", "farmland", "crop fields"),
    },
    "grassland": {
        "name": (
            "grassland",
            "meadows",
            "pasture",
            "grass",
            "rangeland",
            "green meadows",
            "a grassy plain",
        ),
        "mass": ("grass", "grassland", "meadow", "pasture"),
    },
    "bare soil": {
        "name": (
            "bare soil",
            "barren land",
            "bare ground",
            "exposed soil",
            "bare earth",
            "unvegetated land",
            "dry bare soil",
        ),
        "mass": ("bare soil", "barren ground", "exposed soil"),
    },
    "desert": {
        "name": (
            "a desert",
            "sand dunes",
            "a sandy desert",
            "arid land",
            "desert sand",
            "an arid desert",
            "dunes in a desert",
        ),
        "mass": ("desert sand", "dunes", "arid land"),
    },
    "urban": {
        "name": (
            "an urban area",
            "a city",
            "a built-up area",
            "buildings",
            "a town",
            "a residential area",
            "dense urban fabric",
            "city blocks",
        ),
        "mass": ("buildings", "houses", "built-up land"),
    },
    "wetland": {
        "name": ("a wetland", "marshland", "a swamp", "a marsh", "wetlands", "a marshy area"),
        "mass": ("marsh", "wetland"),
    },
    "beach": {
        "name": (
            "a beach",
            "a sandy beach",
            "the shore",
            "a sandy shore",
            "a wide beach",
            "a beach of pale sand",
        ),
        "mass": ("beach", "sandy beach"),
    },
    "burnt area": {
        "name": (
            "a burnt area",
            "a wildfire scar",
            "a burn scar",
            "land scorched by fire",
            "a fire-damaged area",
            "charred land",
            "a burned area",
        ),
        "mass": ("burnt land", "burned vegetation", "fire scars"),
    },
}

_BURNED_FOREST_PHRASES = ("a burned forest", "a burnt forest")
_ROCK_PHRASES = ("bare rock", "bare rocky ground", "barren rocky slopes")
_WATER_CLASSES = frozenset({"sea", "lake", "river"})
_BRIGHT_CLASSES = frozenset({"snow and ice", "cloud"})
_MAX_DN = 10000
_MAX_DN_BRIGHT = 16000


def normalize_class_name(name: str) -> str:
    """Canonical class name of a user spelling (``"Snow_and_Ice"`` -> ``"snow and ice"``).

    Args:
        name: class name in any case, with spaces, underscores or hyphens.

    Returns:
        The name as listed in :data:`CLASSES`.

    Raises:
        UnknownClassError: the name is not a known class.
    """
    key = re.sub(r"[\s_\-/]+", " ", str(name)).strip().lower()
    if key in _CLASS_INDEX:
        return key
    raise UnknownClassError(
        f"unknown land-cover class {name!r}; choose one of: {', '.join(CLASSES)}"
    )


def class_slug(name: str) -> str:
    """File-name form of a class (``"snow and ice"`` -> ``"snow_and_ice"``)."""
    return normalize_class_name(name).replace(" ", "_")


def class_signature(name: str) -> np.ndarray:
    """Nominal 12-band reflectance (0-1) of a class: its endmember mixture, no variability.

    Args:
        name: a class of :data:`CLASSES`.

    Returns:
        ``float32`` array of 12 reflectances in :data:`BAND_NAMES` order.
    """
    mix = CLASS_MIXTURES[normalize_class_name(name)]
    out = np.zeros(len(BAND_NAMES), dtype=np.float64)
    for em, frac in mix.items():
        out += frac * np.asarray(ENDMEMBERS[em].reflectance)
    return out.astype(np.float32)


def caption_mentions(caption: str, name: str) -> bool:
    """Whether a caption names a class or one of its synonyms (at the start of a word)."""
    text = caption.lower()
    return any(
        re.search(r"(?<![a-z])" + re.escape(k), text)
        for k in CLASS_SYNONYMS[normalize_class_name(name)]
    )


# --------------------------------------------------------------------------------------------
# Random fields
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _freq(h: int, w: int) -> np.ndarray:
    """Radial spatial frequency (cycles per pixel) of an ``rfft2`` grid."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f.setflags(write=False)
    return f


@functools.lru_cache(maxsize=256)
def _fft_size(n: int) -> int:
    """Smallest ``m >= n`` whose only prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


@functools.lru_cache(maxsize=64)
def _filter(h: int, w: int, scale: float | None, beta: float | None) -> np.ndarray:
    f = _freq(h, w)
    if scale is not None:
        # Transfer function of a Gaussian blur with standard deviation `scale` pixels.
        filt = np.exp(-2.0 * (np.pi * f * scale) ** 2)
    else:
        # Power-law ("fractal") spectrum: amplitude ~ f^(-beta/2), no DC component.
        with np.errstate(divide="ignore"):
            filt = np.where(f > 0, f, np.inf) ** (-0.5 * float(beta))  # type: ignore[arg-type]
    filt = filt.astype(np.float32)
    filt.setflags(write=False)
    return filt


def _noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    scale: float | None = None,
    beta: float | None = None,
    count: int = 1,
) -> np.ndarray:
    """Zero-mean, unit-std random fields: Gaussian-smoothed or power-law filtered white noise.

    The FFT makes fields periodic, so they are drawn on a grid about 1.25 times larger and
    cropped, which hides the wrap-around.

    Args:
        rng: random generator.
        shape: ``(H, W)`` of each field.
        scale: correlation length in pixels (Gaussian filter); exclusive with ``beta``.
        beta: power-law exponent of the power spectrum (2-4: cloud- and terrain-like).
        count: number of independent fields.

    Returns:
        ``float32`` array ``[count, H, W]`` (``[H, W]`` when ``count`` is 1).
    """
    h, w = shape
    ph, pw = _fft_size(h + h // 4 + 2), _fft_size(w + w // 4 + 2)
    white = rng.standard_normal((count, ph, pw), dtype=np.float32)
    # Rounded parameters keep the filter cache small; the difference is invisible.
    spec = np.fft.rfft2(white) * _filter(
        ph, pw, None if scale is None else round(scale, 1), None if beta is None else round(beta, 1)
    )
    out = np.fft.irfft2(spec, s=(ph, pw))[:, :h, :w].astype(np.float32)
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return out[0] if count == 1 else out


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _frame(
    shape: tuple[int, int], angle: float, center: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``angle``: ``u`` along the direction, ``v`` across it."""
    h, w = shape
    yy, xx = _grid(h, w)
    cy, cx = center if center is not None else ((h - 1) / 2, (w - 1) / 2)
    c, s = math.cos(angle), math.sin(angle)
    x, y = xx - cx, yy - cy
    return x * c + y * s, -x * s + y * c


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, min(max(q, 0.0), 1.0)))


def _choice(rng: np.random.Generator, options: Mapping[str, float]) -> str:
    keys = list(options)
    p = np.asarray([options[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


# --------------------------------------------------------------------------------------------
# Spectra of one tile
# --------------------------------------------------------------------------------------------


def _endmembers(rng: np.random.Generator, names: Sequence[str]) -> np.ndarray:
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


def _mix(em: np.ndarray, abundances: np.ndarray) -> np.ndarray:
    """Linear mixture ``[12, H, W]`` of endmembers ``[K, 12]`` with abundances ``[K, H, W]``."""
    # A sum of K broadcast products: K is small, and a BLAS matmul here only adds thread
    # start-up and contention on busy machines.
    ab = abundances.astype(np.float32, copy=False)
    out = em[0][:, None, None] * ab[0][None]
    for k in range(1, em.shape[0]):
        out += em[k][:, None, None] * ab[k][None]
    return out


def _paint(em: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Spectra ``[12, H, W]`` from a per-pixel endmember index map ``[H, W]``."""
    return np.ascontiguousarray(em[index].transpose(2, 0, 1))


# --------------------------------------------------------------------------------------------
# Surfaces: the full-tile texture of one class (a layout then decides where it shows)
# --------------------------------------------------------------------------------------------

_Shape = tuple[int, int]


def _surface_sea(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["seawater_open", "seawater_coastal"])
    size = max(shape)
    turb = np.clip(rng.uniform(0.0, 0.6) + 0.15 * _noise(rng, shape, scale=size / 4), 0, 1)
    refl = _mix(em, np.stack([1 - turb, turb]))
    # Waves and sun glint: specular reflection is spectrally almost flat, so it lifts all bands
    # by the same amount.
    glint = rng.uniform(0.0, 0.008) * np.clip(1 + _noise(rng, shape, scale=0.7), 0, None)
    return refl + glint.astype(np.float32)


def _surface_lake(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["water_clear", "water_algal", "water_turbid"])
    w = rng.dirichlet((2.0, 2.5, 0.7))
    var = 0.08 * _noise(rng, shape, scale=max(shape) / 5)
    ab = np.stack([np.full(shape, w[0]) - var, np.full(shape, w[1]) + var, np.full(shape, w[2])])
    refl = _mix(em, np.clip(ab, 0, 1))
    return refl + rng.uniform(0.0, 0.004) * np.clip(1 + _noise(rng, shape, scale=0.7), 0, None)


def _surface_river(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["water_turbid", "water_algal", "water_clear"])
    t = rng.uniform(0.3, 1.0)
    a = rng.uniform(0.0, 1.0 - t)
    var = 0.08 * _noise(rng, shape, scale=2.0)
    ab = np.stack([np.full(shape, t) + var, np.full(shape, a) - var, np.full(shape, 1 - t - a)])
    return _mix(em, np.clip(ab, 0, 1))


def _surface_snow(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["snow_fresh", "snow_old", "glacier_ice"])
    size = max(shape)
    old = np.clip(rng.uniform(0.0, 0.7) + 0.25 * _noise(rng, shape, scale=size / 6), 0, 1)
    ice = np.clip(0.6 * (_noise(rng, shape, beta=3.0) - rng.uniform(1.0, 2.5)), 0, 0.8)
    ab = np.stack([(1 - old) * (1 - ice), old * (1 - ice), ice])
    return _mix(em, ab)


def _surface_cloud(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["cloud"])[0]
    # Cloud tops vary in brightness with thickness and illumination of their 3-D structure.
    tex = 1 + rng.uniform(0.05, 0.15) * _noise(rng, shape, beta=3.0)
    gain = rng.uniform(0.85, 1.35)
    return (em[:, None, None] * (gain * tex)[None]).astype(np.float32)


def _surface_forest(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["broadleaf", "conifer", "grass_green", "soil_dark"])
    size = max(shape)
    con = np.clip(rng.uniform(0, 1) + 0.35 * _noise(rng, shape, scale=size / 6), 0, 1)
    gaps = np.clip(0.25 * (_noise(rng, shape, scale=1.2) - rng.uniform(1.2, 2.5)), 0, 0.5)
    ab = np.stack([(1 - con) * (1 - gaps), con * (1 - gaps), 0.6 * gaps, 0.4 * gaps])
    refl = _mix(em, ab)
    # Crowns and their shadows: fine multiplicative texture.
    crowns = 1 + rng.uniform(0.05, 0.12) * _noise(rng, shape, scale=0.6)
    return refl * crowns[None]


def _surface_grassland(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["grass_green", "dry_vegetation", "soil_brown"])
    size = max(shape)
    n = _noise(rng, shape, scale=size / 8, count=2)
    dry = np.clip(rng.beta(1.5, 4.0) * 0.7 + 0.12 * n[0], 0, 1)
    # Sparse vegetation: part of the pixel is bare soil.
    soil = np.clip(rng.uniform(0.02, 0.2) + 0.06 * n[1], 0, 0.6)
    ab = np.stack([(1 - dry) * (1 - soil), dry * (1 - soil), soil])
    refl = _mix(em, ab)
    return refl * (1 + 0.04 * _noise(rng, shape, scale=1.0))[None]


def _surface_bare_soil(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["soil_brown", "soil_dark", "dry_vegetation", "sand_dune"])
    size = max(shape)
    n = _noise(rng, shape, scale=size / 6, count=2)
    moist = np.clip(rng.uniform(0.0, 0.6) + 0.2 * n[0], 0, 1)
    sandy = rng.uniform(0.0, 0.3)
    weeds = np.clip(rng.uniform(0.0, 0.08) + 0.03 * n[1], 0, 0.2)
    rest = (1 - weeds) * (1 - sandy)
    ab = np.stack([rest * (1 - moist), rest * moist, weeds, (1 - weeds) * sandy * np.ones(shape)])
    refl = _mix(em, ab)
    tex = 1 + 0.05 * _noise(rng, shape, scale=0.8)
    if rng.random() < 0.5:  # ploughed furrows
        u, _ = _frame(shape, rng.uniform(0, math.pi))
        tex = tex + rng.uniform(0.02, 0.06) * np.sin(2 * np.pi * u / rng.uniform(2.2, 4.0))
    return refl * tex[None]


def _surface_desert(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["sand_dune", "sand_beach", "rock"])
    size = max(shape)
    pale = np.clip(rng.uniform(0.0, 0.5) + 0.15 * _noise(rng, shape, scale=size / 5), 0, 1)
    rock = np.clip(0.5 * (_noise(rng, shape, beta=3.0) - rng.uniform(0.8, 3.0)), 0, 0.9)
    ab = np.stack([(1 - pale) * (1 - rock), pale * (1 - rock), rock])
    refl = _mix(em, ab)
    # Dunes: a wave pattern whose lee and stoss slopes are lit differently.
    u, _ = _frame(shape, rng.uniform(0, 2 * math.pi))
    period = rng.uniform(5.0, 14.0)
    phase = 2 * np.pi * (u / period + 0.25 * _noise(rng, shape, scale=size / 5))
    shade = 1 + rng.uniform(0.04, 0.14) * np.sin(phase) * (1 - rock)
    return refl * shade[None]


def _surface_wetland(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["marsh_vegetation", "water_algal", "soil_dark", "grass_green"])
    size = max(shape)
    n = _noise(rng, shape, beta=rng.uniform(2.2, 3.0))
    # Open-water pools and channels between reeds, with soft (mixed-pixel) edges.
    t = _quantile(n, 1 - rng.uniform(0.15, 0.4))
    water = np.clip((n - t) / 0.35 + 0.5, 0, 1)
    mud = np.clip(0.3 - np.abs(n - t), 0, 0.3)
    grass = np.clip(0.3 + 0.2 * _noise(rng, shape, scale=size / 6), 0, 0.6)
    veg = np.clip(1 - water - mud, 0, 1)
    ab = np.stack([veg * (1 - grass), water, mud, veg * grass])
    return _mix(em, ab)


def _surface_beach(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["sand_beach", "sand_dune", "sand_wet"])
    tint = np.clip(rng.uniform(0.0, 0.3) + 0.1 * _noise(rng, shape, scale=3.0), 0, 1)
    ab = np.stack([1 - tint, tint * 0.6, tint * 0.4])
    return _mix(em, ab) * (1 + 0.03 * _noise(rng, shape, scale=0.8))[None]


def _surface_burnt(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["char", "ash", "soil_brown", "dry_vegetation"])
    size = max(shape)
    n = _noise(rng, shape, scale=size / 8, count=2)
    ash = np.clip(rng.uniform(0.03, 0.15) + 0.05 * n[0], 0, 0.4)
    soil = np.clip(rng.uniform(0.1, 0.3) + 0.08 * n[1], 0, 0.5)
    dry = rng.uniform(0.0, 0.08)
    char = np.clip(1 - ash - soil - dry, 0, 1)
    ab = np.stack([char, ash, soil, np.full(shape, dry)])
    return _mix(em, ab) * (1 + 0.05 * _noise(rng, shape, scale=0.8))[None]


def _surface_cropland(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    """Fields: strips of rectangles in a rotated frame, each field at its own crop stage."""
    em = _endmembers(
        rng, ["green_crop", "dry_vegetation", "soil_brown", "soil_dark", "grass_green"]
    )
    u, v = _frame(shape, rng.uniform(0, math.pi))
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
    refl = _mix(em, ab)
    # Sowing rows / tramlines and within-field variation.
    gain = rng.normal(1.0, 0.05, nf).astype(np.float32)[inv]
    along = rng.random(nf) < 0.5
    period = rng.uniform(2.2, 4.5, nf).astype(np.float32)
    amp = rng.uniform(0.0, 0.06, nf).astype(np.float32)
    coord = np.where(along[inv], u, v)
    rows = 1 + amp[inv] * np.sin(2 * np.pi * coord / period[inv])
    tex = gain * rows * (1 + 0.03 * _noise(rng, shape, scale=2.0))
    return refl * tex[None]


def _surface_urban(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    """Street grid, building parcels with roofs and yards, parks."""
    names = ["concrete", "asphalt", "roof_tile", "roof_dark", "grass_green", "broadleaf"]
    em = _endmembers(rng, names)
    kind = _choice(rng, {"dense": 0.35, "residential": 0.45, "industrial": 0.2})
    roof_p, yard_p = {
        "dense": ([0.45, 0.05, 0.25, 0.25, 0.0, 0.0], [0.5, 0.3, 0.0, 0.0, 0.1, 0.1]),
        "residential": ([0.15, 0.0, 0.6, 0.25, 0.0, 0.0], [0.3, 0.15, 0.0, 0.0, 0.3, 0.25]),
        "industrial": ([0.5, 0.0, 0.05, 0.45, 0.0, 0.0], [0.4, 0.5, 0.0, 0.0, 0.1, 0.0]),
    }[kind]
    block = {"dense": (7, 12), "residential": (6, 11), "industrial": (10, 18)}[kind]
    parcel = {"dense": (2.5, 4.0), "residential": (2.2, 3.5), "industrial": (4.0, 8.0)}[kind]
    u, v = _frame(shape, rng.uniform(0, math.pi / 2))
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
    park_mat = np.where(_noise(rng, shape, scale=1.0) > 0, 4, 5)
    index = np.where(park, park_mat, index)
    refl = _paint(em, index)
    # Streets along the block edges, as sub-pixel coverage of asphalt.
    width = rng.uniform(0.7, 1.6)
    dist = np.minimum(np.minimum(ru, bu - ru), np.minimum(rv, bv - rv))
    street = np.clip(width / 2 + 0.5 - dist, 0, 1)
    refl = refl * (1 - street) + em[1][:, None, None] * street
    return refl * (1 + 0.06 * _noise(rng, shape, scale=0.6))[None]


_SURFACES: dict[str, Callable[[np.random.Generator, _Shape], np.ndarray]] = {
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

# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """A tile under construction: reflectance, label map and what was placed where."""

    refl: np.ndarray
    labels: np.ndarray
    layout: str
    roles: dict[str, str] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)

    def put(self, cls: str, mask: np.ndarray, surface: np.ndarray, role: str | None) -> None:
        self.refl[:, mask] = surface[:, mask]
        self.labels[mask] = _CLASS_INDEX[cls]
        if role is not None and cls not in self.roles and mask.any():
            self.roles[cls] = role


def _base(rng: np.random.Generator, cls: str, shape: _Shape, layout: str) -> _Scene:
    refl = _SURFACES[cls](rng, shape)
    labels = np.full(shape, _CLASS_INDEX[cls], dtype=np.uint8)
    return _Scene(refl, labels, layout, {cls: "main"})


def _blob(
    rng: np.random.Generator, shape: _Shape, frac: float, roughness: float = 0.45
) -> np.ndarray:
    """A connected-looking blob covering ``frac`` of the tile (lake, patch, burn scar)."""
    h, w = shape
    size = max(shape)
    center = (rng.uniform(0.15, 0.85) * (h - 1), rng.uniform(0.15, 0.85) * (w - 1))
    u, v = _frame(shape, rng.uniform(0, math.pi), center)
    aspect = rng.uniform(0.5, 1.0)
    r = np.sqrt((u * aspect) ** 2 + v**2) / size
    f = r + roughness * 0.18 * _noise(rng, shape, beta=3.3)
    return f <= _quantile(f, frac)


def _river_distance(rng: np.random.Generator, shape: _Shape, offset: float = 0.2) -> np.ndarray:
    """Approximate perpendicular distance (pixels) to a meandering centre line across the tile."""
    size = max(shape)
    u, v = _frame(shape, rng.uniform(0, math.pi))
    v0 = rng.uniform(-offset, offset) * size
    amp = rng.uniform(0.04, 0.2) * size
    k = 2 * math.pi / (rng.uniform(0.7, 2.0) * size)
    k2 = k * rng.uniform(1.8, 3.2)
    a2 = amp * rng.uniform(0.0, 0.3)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    c = v0 + amp * np.sin(k * u + p1) + a2 * np.sin(k2 * u + p2)
    dc = amp * k * np.cos(k * u + p1) + a2 * k2 * np.cos(k2 * u + p2)
    return np.abs(v - c) / np.sqrt(1 + dc * dc)


def _coast_field(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    """A field whose level lines are noisy, roughly straight coastlines."""
    size = max(shape)
    _, v = _frame(shape, rng.uniform(0, 2 * math.pi))
    return v + rng.uniform(0.04, 0.12) * size * _noise(rng, shape, beta=rng.uniform(3.0, 3.8))


_LAND = {
    "forest": 0.2, "grassland": 0.2, "cropland": 0.2, "urban": 0.15, "bare soil": 0.1,
    "desert": 0.05, "wetland": 0.1,
}  # fmt: skip


def _add_coast(
    scene: _Scene,
    rng: np.random.Generator,
    sea_frac: float,
    beach_frac: float,
    land: str | None,
    roles: Mapping[str, str],
) -> None:
    """Split the tile by a noisy coastline into sea | beach | land (land = current scene)."""
    shape = scene.labels.shape
    f = _coast_field(rng, shape)
    t_sea = _quantile(f, sea_frac)
    t_beach = _quantile(f, sea_frac + beach_frac) if beach_frac > 0 else t_sea
    if land is None:  # beach reaches the far edge
        t_beach = np.inf
    beach = (f > t_sea) & (f <= t_beach)
    if beach.any():
        sand = _surface_beach(rng, shape)
        # Wet sand along the waterline: the swash zone darkens within a pixel or two.
        wet = np.exp(-np.clip(f - t_sea, 0, None) / rng.uniform(0.8, 2.0)) * rng.uniform(0.4, 0.9)
        wet_em = _endmembers(rng, ["sand_wet"])[0][:, None, None]
        sand = sand * (1 - wet) + wet_em * wet
        scene.put("beach", beach, sand, roles.get("beach"))
    sea = f <= t_sea
    scene.put("sea", sea, _surface_sea(rng, shape), roles.get("sea"))


def _add_river(
    scene: _Scene, rng: np.random.Generator, width: float, role: str | None, bank: str | None
) -> None:
    shape = scene.labels.shape
    d = _river_distance(rng, shape)
    u, _ = _frame(shape, rng.uniform(0, math.pi))
    wv = width * (1 + 0.15 * np.sin(2 * np.pi * u / (max(shape) * rng.uniform(0.5, 1.2))))
    if bank is not None:  # riparian strip
        strip = (d < wv / 2 + rng.uniform(1.0, 3.0)) & (d >= wv / 2 - 0.5)
        scene.put(bank, strip, _SURFACES[bank](rng, shape), "riparian")
    water = _surface_river(rng, shape)
    # Sub-pixel edges: the bank pixels are water/land mixtures.
    cover = np.clip(wv / 2 + 0.5 - d, 0, 1).astype(np.float32)
    scene.refl = scene.refl * (1 - cover) + water * cover
    scene.put("river", cover >= 0.5, scene.refl, role)


def _add_patch(
    scene: _Scene, rng: np.random.Generator, cls: str, frac: float, role: str | None
) -> np.ndarray:
    mask = _blob(rng, scene.labels.shape, frac)
    scene.put(cls, mask, _SURFACES[cls](rng, scene.labels.shape), role)
    return mask


def _add_road(scene: _Scene, rng: np.random.Generator) -> None:
    """A road (asphalt, about one pixel wide) across the tile, not over water."""
    shape = scene.labels.shape
    size = max(shape)
    u, v = _frame(shape, rng.uniform(0, math.pi))
    bend = rng.uniform(-1.0, 1.0) / size
    c = rng.uniform(-0.3, 0.3) * size + bend * u * u
    d = np.abs(v - c) / np.sqrt(1 + (2 * bend * u) ** 2)
    cover = np.clip(rng.uniform(0.7, 1.8) / 2 + 0.5 - d, 0, 1)
    water = np.isin(scene.labels, [_CLASS_INDEX[c] for c in _WATER_CLASSES])
    cover[water] = 0
    if not cover.any():
        return
    asphalt = _endmembers(rng, ["asphalt"])[0][:, None, None]
    scene.refl = scene.refl * (1 - cover) + asphalt * cover
    scene.labels[cover >= 0.5] = _CLASS_INDEX["urban"]
    scene.features.append("road")


def _add_clouds(scene: _Scene, rng: np.random.Generator, coverage: float, role: str | None) -> None:
    """Clouds blended over the scene by a soft opacity, with their shadows on the ground."""
    h, w = scene.labels.shape
    size = max(h, w)
    pad = max(2, int(0.2 * size))
    n = _noise(rng, (h + 2 * pad, w + 2 * pad), beta=rng.uniform(2.6, 3.4))
    t = _quantile(n[pad : pad + h, pad : pad + w], 1 - coverage)
    soft = rng.uniform(0.25, 0.8)
    alpha_all = np.clip((n - t) / soft + 0.5, 0, 1) ** 0.8
    if coverage >= 0.97:  # overcast
        alpha_all = np.maximum(alpha_all, 0.97)
    alpha = alpha_all[pad : pad + h, pad : pad + w]
    # The shadow is the cloud shifted along the sun azimuth (sun not at zenith).
    dy, dx = rng.integers(-pad, pad + 1, 2)
    shadow = alpha_all[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    dark = 1 - rng.uniform(0.45, 0.75) * shadow
    cloud = _surface_cloud(rng, (h, w))
    scene.refl = scene.refl * (dark * (1 - alpha))[None] + cloud * alpha[None]
    # Like operational cloud masks (Fmask dilates its mask), thin cloud edges count as cloud.
    mask = alpha >= 0.3
    scene.labels[mask] = _CLASS_INDEX["cloud"]
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


def _homogeneous(cls: str, layout: str, relations: Mapping[str, float]) -> Callable[..., _Scene]:
    """Composer: the class's own surface plus at most one secondary feature."""

    def compose(rng: np.random.Generator, shape: _Shape) -> _Scene:
        scene = _base(rng, cls, shape, layout)
        size = max(shape)
        rel = _choice(rng, relations)
        if rel == "none":
            return scene
        kind, _, other = rel.partition(":")
        if kind == "river":
            _add_river(scene, rng, max(1.5, rng.uniform(0.04, 0.09) * size), "crossing", None)
        elif kind == "lake":
            _add_patch(scene, rng, "lake", rng.uniform(0.06, 0.25), "inset")
        elif kind == "coast":
            beach = rng.uniform(0.03, 0.08) if rng.random() < 0.5 else 0.0
            _add_coast(
                scene, rng, rng.uniform(0.12, 0.35), beach, cls, {"sea": "coast", "beach": "coast"}
            )
        elif kind == "patch":
            _add_patch(scene, rng, other, rng.uniform(0.1, 0.3), "patch")
        return scene

    return compose


def _compose_sea(rng: np.random.Generator, shape: _Shape) -> _Scene:
    if rng.random() < 0.35:
        return _base(rng, "sea", shape, "open water")
    land = _choice(rng, _LAND)
    scene = _base(rng, land, shape, "coast")
    scene.roles = {}
    beach = rng.uniform(0.03, 0.1) if rng.random() < 0.6 else 0.0
    sea_frac = rng.uniform(0.55, 0.85)
    _add_coast(scene, rng, sea_frac, beach, land, {"sea": "main", "beach": "coast"})
    scene.roles[land] = "coast"
    return scene


def _compose_beach(rng: np.random.Generator, shape: _Shape) -> _Scene:
    land = (
        _choice(rng, {k: v for k, v in _LAND.items() if k != "wetland"})
        if rng.random() < 0.8
        else None
    )
    scene = _base(rng, land or "beach", shape, "coast")
    scene.roles = {}
    sea_frac = rng.uniform(0.2, 0.4)
    beach = rng.uniform(0.45, 0.6) if land else 1 - sea_frac
    _add_coast(scene, rng, sea_frac, beach, land, {"beach": "main", "sea": "coast"})
    if land:
        scene.roles[land] = "coast"
    return scene


def _compose_lake(rng: np.random.Generator, shape: _Shape) -> _Scene:
    bg = _choice(rng, {
        "forest": 0.3, "grassland": 0.2, "cropland": 0.2, "wetland": 0.1, "bare soil": 0.05,
        "urban": 0.05, "desert": 0.03, "snow and ice": 0.07,
    })  # fmt: skip
    scene = _base(rng, bg, shape, "lake")
    scene.roles = {bg: "background"}
    _add_patch(scene, rng, "lake", rng.uniform(0.35, 0.75), "main")
    return scene


def _compose_river(rng: np.random.Generator, shape: _Shape) -> _Scene:
    bg = _choice(rng, {
        "forest": 0.25, "cropland": 0.25, "grassland": 0.2, "urban": 0.1, "wetland": 0.07,
        "bare soil": 0.05, "desert": 0.05, "snow and ice": 0.03,
    })  # fmt: skip
    scene = _base(rng, bg, shape, "river")
    scene.roles = {bg: "background"}
    bank = None
    if bg not in ("snow and ice", "urban") and rng.random() < 0.5:
        bank = _choice(rng, {"forest": 0.5, "grassland": 0.5})
        bank = None if bank == bg else bank
    _add_river(scene, rng, max(3.0, rng.uniform(0.1, 0.25) * max(shape)), "main", bank)
    return scene


def _compose_snow(rng: np.random.Generator, shape: _Shape) -> _Scene:
    size = max(shape)
    u, _ = _frame(shape, rng.uniform(0, 2 * math.pi))
    z = _noise(rng, shape, beta=rng.uniform(3.3, 4.0)) + rng.uniform(0, 2.5) * u / size
    snow_frac = rng.uniform(0.6, 1.0)
    below = _choice(rng, {"bare soil": 0.5, "forest": 0.3, "grassland": 0.2})
    scene = _base(rng, "snow and ice", shape, "snowfield")
    if snow_frac < 0.97:
        zz = z + 0.15 * _noise(rng, shape, scale=1.0)  # patchy snowline
        low = zz < _quantile(zz, 1 - snow_frac)
        ground = _surface_rock(rng, shape) if below == "bare soil" else _SURFACES[below](rng, shape)
        scene.put(below, low, ground, "background")
    # Rock outcrops on steep slopes, where snow does not stay.
    gy, gx = np.gradient(z)
    slope = np.hypot(gx, gy)
    steep = (slope > _quantile(slope, 1 - rng.uniform(0.02, 0.12))) & (
        scene.labels == _CLASS_INDEX["snow and ice"]
    )
    scene.put("bare soil", steep, _surface_rock(rng, shape), None)
    scene.refl = scene.refl * _hillshade(rng, z, rng.uniform(0.2, 0.7))[None]
    return scene


def _surface_rock(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    em = _endmembers(rng, ["rock", "soil_dark"])
    d = np.clip(rng.uniform(0.0, 0.4) + 0.15 * _noise(rng, shape, scale=2.0), 0, 1)
    return _mix(em, np.stack([1 - d, d]))


def _compose_cloud(rng: np.random.Generator, shape: _Shape) -> _Scene:
    bg = _choice(rng, {
        "sea": 0.15, "forest": 0.15, "cropland": 0.15, "grassland": 0.1, "urban": 0.1,
        "bare soil": 0.08, "desert": 0.07, "wetland": 0.05, "snow and ice": 0.05, "lake": 0.05,
        "river": 0.05,
    })  # fmt: skip
    scene = _COMPOSERS[bg](rng, shape)
    scene.roles = {c: "background" for c in scene.roles}
    scene.features = []
    scene.layout = "cloud cover"
    coverage = 1.0 if rng.random() < 0.2 else rng.uniform(0.6, 0.95)
    _add_clouds(scene, rng, coverage, "main")
    return scene


def _compose_burnt(rng: np.random.Generator, shape: _Shape) -> _Scene:
    bg = _choice(rng, {"forest": 0.6, "grassland": 0.25, "cropland": 0.15})
    scene = _base(rng, bg, shape, "burn scar")
    scene.roles = {bg: "background"}
    frac = 1.0 if rng.random() < 0.15 else rng.uniform(0.55, 0.9)
    scar = np.ones(shape, dtype=bool) if frac >= 1 else _blob(rng, shape, frac, roughness=1.0)
    burnt = _surface_burnt(rng, shape)
    # Burn severity: mostly complete, with scorched (dry, not green) vegetation left in places.
    sev = np.clip(0.93 + 0.12 * _noise(rng, shape, scale=2.5), 0.6, 1.0)[None]
    scorched = 0.5 * scene.refl + 0.5 * _endmembers(rng, ["dry_vegetation"])[0][:, None, None]
    scene.put("burnt area", scar, sev * burnt + (1 - sev) * scorched, "main")
    if frac >= 1:
        scene.roles.pop(bg, None)
        scene.layout = "homogeneous"
    return scene


_COMPOSERS: dict[str, Callable[[np.random.Generator, _Shape], _Scene]] = {
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

# --------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------


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
    """

    main: str
    layout: str
    secondary: tuple[str, ...]
    roles: dict[str, str]
    features: tuple[str, ...]
    fractions: dict[str, float]
    label_map: np.ndarray = field(repr=False, compare=False)


def _shape_of(size: int | tuple[int, int]) -> _Shape:
    try:
        if isinstance(size, (int, np.integer)):
            h = w = int(size)
        else:
            h, w = (int(x) for x in size)
    except (TypeError, ValueError) as err:
        raise SceneError(
            f"tile size {size!r} is neither an int nor a (height, width) pair; pass e.g. 64"
        ) from err
    if h < 8 or w < 8:
        raise SceneError(f"tile size {size!r} is too small; use at least 8 pixels a side")
    return h, w


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
        order :data:`BAND_NAMES`, never 0) and a :class:`TileInfo`.

    Raises:
        UnknownClassError: unknown class name.
        SceneError: size below 8 pixels.
    """
    main = normalize_class_name(cls)
    shape = _shape_of(size)
    rng = np.random.default_rng(rng)
    scene = _COMPOSERS[main](rng, shape)
    if rng.random() < _ROAD_P.get(main, 0.0):
        _add_road(scene, rng)
    if rng.random() < _CLOUD_P.get(main, 0.0):
        _add_clouds(scene, rng, rng.uniform(0.05, 0.25), "overlay")
    refl = scene.refl
    # Sensor point-spread function: neighbouring pixels leak into each other a little.
    a = rng.uniform(0.15, 0.4)
    pad = np.pad(refl, ((0, 0), (1, 1), (1, 1)), mode="edge")
    box = (
        pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:] + 4 * refl
    ) / 8
    refl = (1 - a) * refl + a * box
    # Illumination (sun elevation, residual BRDF) and residual haze from atmospheric correction.
    haze = rng.uniform(-0.002, 0.01) * _HAZE_SHAPE
    refl = refl * rng.uniform(0.93, 1.07) + haze[:, None, None]
    # Sensor noise: a floor plus a part proportional to the signal.
    refl = refl + rng.standard_normal(refl.shape, dtype=np.float32) * (0.0012 + 0.004 * refl)
    top = np.where(np.isin(scene.labels, [_CLASS_INDEX[c] for c in _BRIGHT_CLASSES]),
                   _MAX_DN_BRIGHT, _MAX_DN)  # fmt: skip
    dn = np.clip(np.rint(refl * 10000.0), 1, top[None]).astype(np.uint16)
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
    )
    return dn, info


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

_PREFIXES = (
    "{x}", "{x}", "a satellite image of {x}", "a Sentinel-2 image of {x}", "satellite view of {x}",
    "an aerial view of {x}", "a multispectral image of {x}", "{x} seen from above",
    "{x} seen from space", "a remote sensing image showing {x}", "a top-down view of {x}",
    "an overhead image of {x}",
)  # fmt: skip

_RELATIONS: dict[str, tuple[str, ...]] = {
    "background:river": ("{m} crossing {s}", "{m} flowing through {s}", "{m} winding through {s}",
                         "{m} running through {s}"),
    "background:lake": ("{m} surrounded by {s}", "{m} in the middle of {s}", "{m} bordered by {s}",
                        "{m} among {s}"),
    "background:cloud": ("{m} over {s}", "{m} obscuring {s}", "{m} partly hiding {s}",
                         "{m} above {s}"),
    "background:burnt area": ("{m} in {s}", "{m} surrounded by {s}", "{m} within {s}"),
    "background:snow and ice": ("{m} above {s}", "{m} with {s} below",
                                "{m} and {s} below the snowline"),
    "background": ("{m} with {s}", "{m} next to {s}"),
    "coast:sea": ("{m} on the coast of {s}", "{m} next to {s}", "{m} by {s}", "{m} along {s}"),
    "coast": ("{m} along {s}", "{m} next to {s}", "{m} meeting {s}", "{m} bordering {s}"),
    "crossing": ("{m} with {s} running through it", "{m} crossed by {s}", "{m} along {s}",
                 "{m} divided by {s}"),
    "inset": ("{m} with {s}", "{m} around {s}", "{m} surrounding {s}", "{m} and {s}"),
    "patch": ("{m} with patches of {s}", "{m} and some {s}", "{m} next to {s}", "{m} with {s}"),
    "riparian": ("{m} lined by {s}", "{m} between banks of {s}", "{m} with {s} on its banks"),
    "overlay": ("{m} partly covered by {s}", "{m} under scattered {s}", "{m} with a few {s}"),
}  # fmt: skip
_MASS_ROLES = frozenset({"patch", "riparian", "overlay"})
_ROAD_SUFFIXES = (" crossed by a road", " with a road", " and a road", ", with a road across it")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _phrase(
    rng: np.random.Generator, cls: str, form: str, info: TileInfo, other: str | None = None
) -> str:
    """A noun phrase for ``cls``; ``other`` is the class the same caption also names."""
    options = CLASS_PHRASES[cls][form]
    if cls == "burnt area" and form == "name" and other != "forest":
        if info.roles.get("forest") == "background":
            options = options + _BURNED_FOREST_PHRASES
    elif cls == "bare soil" and info.main == "snow and ice":
        options = _ROCK_PHRASES  # ground left bare above the tree line is rock and scree
    elif cls == "cloud" and form == "mass":
        options = ("clouds",)
    return _pick(rng, options)


def _one_caption(rng: np.random.Generator, info: TileInfo, p_secondary: float) -> str:
    other = None
    if info.secondary and rng.random() < p_secondary:
        other = _pick(rng, info.secondary)
    body = _phrase(rng, info.main, "name", info, other)
    if other is not None:
        role = info.roles.get(other, "patch")
        key = f"{role}:{info.main}" if role == "background" else role
        if role == "coast" and other == "sea" and info.main != "beach":
            key = "coast:sea"
        templates = _RELATIONS.get(key, _RELATIONS.get(role, _RELATIONS["patch"]))
        form = "mass" if role in _MASS_ROLES else "name"
        body = _pick(rng, templates).format(m=body, s=_phrase(rng, other, form, info, info.main))
    if "road" in info.features and rng.random() < 0.5:
        body += _pick(rng, _ROAD_SUFFIXES)
    text = _pick(rng, _PREFIXES).format(x=body)
    text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
    return text + "." if rng.random() < 0.5 else text


def make_captions(
    info: TileInfo, rng: np.random.Generator | int | None = None, n: int = 3
) -> list[str]:
    """Captions of a tile, varied in wording; the main class always comes first.

    The first caption mentions a secondary class (when there is one) most often, later ones
    less often, so a dataset pairs each image with both short and detailed descriptions.

    Args:
        info: the tile's :class:`TileInfo`.
        rng: random generator, or a seed for one.
        n: number of captions (distinct when the vocabulary allows).

    Returns:
        ``n`` captions.
    """
    if n < 1:
        raise SceneError(f"n={n} captions requested; ask for at least 1")
    rng = np.random.default_rng(rng)
    out: list[str] = []
    for i in range(n):
        p = (0.8, 0.5, 0.25)[min(i, 2)]
        cap = _one_caption(rng, info, p)
        for _ in range(6):
            if cap not in out:
                break
            cap = _one_caption(rng, info, p)
        out.append(cap)
    return out


# --------------------------------------------------------------------------------------------
# Writing tiles
# --------------------------------------------------------------------------------------------

#: A UTM CRS (zone 32N: central Europe) for the generated tiles.
DEFAULT_CRS = "EPSG:32632"
#: Upper-left corner (easting, northing, metres) of the first tile of a dataset.
DEFAULT_ORIGIN = (300000.0, 5100000.0)
#: Ground sampling distance of the generated tiles (the 10 m bands of Sentinel-2).
PIXEL_SIZE = 10.0
_GRID_COLUMNS = 100


def tile_transform(
    index: int, size: int | tuple[int, int], origin: tuple[float, float] = DEFAULT_ORIGIN
) -> Any:
    """Affine transform of the ``index``-th tile of a dataset, tiles on a grid without overlap.

    Args:
        index: position of the tile in the dataset (0-based).
        size: tile side in pixels, or ``(height, width)``.
        origin: upper-left corner of tile 0 in metres.

    Returns:
        ``affine.Affine`` with 10 m pixels.
    """
    from rasterio.transform import Affine

    h, w = _shape_of(size)
    row, col = divmod(int(index), _GRID_COLUMNS)
    step_x, step_y = (w + 8) * PIXEL_SIZE, (h + 8) * PIXEL_SIZE  # an 80 m gap between tiles
    x0, y0 = origin[0] + col * step_x, origin[1] - row * step_y
    return Affine(PIXEL_SIZE, 0.0, x0, 0.0, -PIXEL_SIZE, y0)


def write_tile(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    transform: Any = None,
    crs: str = DEFAULT_CRS,
    band_names: Sequence[str] = BAND_NAMES,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write a tile as a georeferenced, deflate-compressed GeoTIFF, atomically.

    The file has one ``uint16`` band per name with the name as band description, the centre
    wavelength and bandwidth in the GDAL ``IMAGERY`` metadata domain, nodata 0, a UTM CRS and a
    10 m transform. Nothing time-dependent is written, so equal inputs give equal bytes.

    Args:
        path: output ``.tif`` path (parent folders are created).
        array: ``[bands, H, W]`` digital numbers, ``uint16`` or integers in ``0..65535``.
        transform: ``affine.Affine``; default: tile 0 of :func:`tile_transform`.
        crs: coordinate reference system.
        band_names: one name per band (default: the 12 L2A bands).
        tags: extra dataset metadata.

    Returns:
        The written path.

    Raises:
        SceneError: wrong shape or a value that does not fit ``uint16``.
    """
    import rasterio

    arr = np.asarray(array)
    names = tuple(band_names)
    if arr.ndim != 3 or arr.shape[0] != len(names):
        raise SceneError(
            f"tile array of shape {arr.shape} does not match {len(names)} band names; "
            f"pass [bands, H, W] with bands = {', '.join(names)}"
        )
    if arr.dtype != np.uint16:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 65535:
            raise SceneError(
                f"tile array of dtype {arr.dtype} (range {arr.min()}..{arr.max()}) is not uint16 "
                "digital numbers; scale reflectance by 10000 and cast to uint16"
            )
        arr = arr.astype(np.uint16)
    if transform is None:
        transform = tile_transform(0, arr.shape[1:])
    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": arr.shape[0], "height": arr.shape[1],
        "width": arr.shape[2], "crs": crs, "transform": transform, "nodata": 0,
        "compress": "deflate", "predictor": 2, "interleave": "pixel",
    }  # fmt: skip

    def _write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
                band = BANDS.get(name)
                if band is not None:
                    dst.update_tags(
                        i, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=f"{band.center:g}",
                        FWHM_UM=f"{band.bandwidth:g}",
                    )  # fmt: skip
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
        # The temporary file is private (0600); a data file should be readable like any other.
        os.chmod(tmp, 0o644)

    return atomic_write(path, _write, suffix=".tif")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode("utf-8")

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)

    return atomic_write(path, _write, suffix=".csv")


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

#: Columns of ``captions.csv``.
CAPTION_COLUMNS: tuple[str, ...] = ("image", "caption", "caption_2", "caption_3", "label")


@dataclass(frozen=True)
class Sample:
    """A generated image with its captions.

    Attributes:
        name: file stem (``forest_0003``).
        index: position in the generation order (used for the tile's map position).
        image: ``uint16`` ``[12, H, W]`` digital numbers.
        captions: three captions.
        info: what the tile shows.
    """

    name: str
    index: int
    image: np.ndarray = field(repr=False)
    captions: tuple[str, ...]
    info: TileInfo


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`generate_dataset` / :func:`generate_examples` wrote.

    Attributes:
        out_dir: dataset root.
        n_images: number of tiles written.
        counts: tiles per class.
        captions_csv: path of ``captions.csv``.
        labels_csv: path of ``labels.csv`` (``None`` for the examples).
        files: tile paths relative to ``out_dir``.
    """

    out_dir: Path
    n_images: int
    counts: dict[str, int]
    captions_csv: Path
    labels_csv: Path | None
    files: tuple[str, ...] = field(repr=False)


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SceneError(f"seed {seed!r} is not a non-negative integer; pass e.g. seed=0")


def _classes_arg(classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return CLASSES
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c.strip()]
    names = {normalize_class_name(c) for c in classes}
    if not names:
        raise SceneError("empty class list; name at least one of: " + ", ".join(CLASSES))
    return tuple(c for c in CLASSES if c in names)


def iter_samples(
    classes: Sequence[str] | None = None,
    n_per_class: int = 1,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
) -> Iterator[Sample]:
    """Generate image-caption samples in memory, class by class.

    Tile ``i`` of class ``c`` is seeded by ``(seed, index of c in CLASSES, i)``, so it does not
    depend on which other classes are generated or how many.

    Args:
        classes: class names (default: all of :data:`CLASSES`).
        n_per_class: tiles per class.
        size: tile side in pixels, or ``(height, width)``.
        seed: base seed.

    Yields:
        :class:`Sample` objects.
    """
    if n_per_class < 1:
        raise SceneError(f"n_per_class={n_per_class}; generate at least 1 tile per class")
    _check_seed(seed)
    chosen = _classes_arg(classes)
    width = max(4, len(str(n_per_class - 1)))
    index = 0
    for cls in chosen:
        ci = _CLASS_INDEX[cls]
        for i in range(n_per_class):
            rng = np.random.default_rng((seed, ci, i))
            image, info = generate_tile(cls, size, rng)
            caps = make_captions(info, np.random.default_rng((seed, ci, i, 1)), n=3)
            yield Sample(f"{class_slug(cls)}_{i:0{width}d}", index, image, tuple(caps), info)
            index += 1


def _tile_tags(sample: Sample, seed: int) -> dict[str, str]:
    return {
        "GENERATOR": "msclip.data.scenes",
        "CLASS": sample.info.main,
        "LAYOUT": sample.info.layout,
        "SECONDARY": ",".join(sample.info.secondary),
        "CAPTION": sample.captions[0],
        "SEED": str(seed),
    }


def generate_dataset(
    out_dir: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    n_per_class: int = 100,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    layout: str = "folders",
    *,
    progress: bool = False,
) -> DatasetSummary:
    """Write a labelled, captioned dataset of synthetic tiles.

    With ``layout="folders"`` (EuroSAT-like) tiles go to
    ``<out_dir>/<class_slug>/<class_slug>_<i>.tif``; with ``layout="flat"`` all go to
    ``out_dir``. ``captions.csv`` has the columns of :data:`CAPTION_COLUMNS` (``image`` relative
    to ``out_dir`` with ``/`` separators, ``label`` the class name); ``labels.csv`` has
    ``index,label,folder,count``.

    Args:
        out_dir: dataset root (created).
        classes: class names (default: all).
        n_per_class: tiles per class.
        size: tile side in pixels, or ``(height, width)``.
        seed: base seed; the same seed writes the same bytes.
        layout: ``"folders"`` or ``"flat"``.
        progress: show a tqdm progress bar (for command-line use).

    Returns:
        A :class:`DatasetSummary`.

    Raises:
        SceneError: bad layout, count or size.
        UnknownClassError: unknown class name.
    """
    if layout not in ("folders", "flat"):
        raise SceneError(f"unknown dataset layout {layout!r}; use 'folders' or 'flat'")
    root = Path(out_dir)
    chosen = _classes_arg(classes)
    _shape_of(size)
    _check_seed(seed)
    if n_per_class < 1:
        raise SceneError(f"n_per_class={n_per_class}; generate at least 1 tile per class")
    total = len(chosen) * n_per_class
    samples = iter_samples(chosen, n_per_class, size, seed)
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, total=total, unit="tile", desc=f"scenes -> {root}")
    rows: list[list[str]] = []
    files: list[str] = []
    counts = {c: 0 for c in chosen}
    for s in samples:
        rel = f"{class_slug(s.info.main)}/{s.name}.tif" if layout == "folders" else f"{s.name}.tif"
        write_tile(
            root / rel, s.image, transform=tile_transform(s.index, size), tags=_tile_tags(s, seed)
        )
        rows.append([rel, *s.captions, s.info.main])
        files.append(rel)
        counts[s.info.main] += 1
    captions_csv = _write_csv(root / "captions.csv", CAPTION_COLUMNS, rows)
    label_rows = [
        [i, c, class_slug(c) if layout == "folders" else ".", counts[c]]
        for i, c in enumerate(chosen)
    ]
    labels_csv = _write_csv(root / "labels.csv", ("index", "label", "folder", "count"), label_rows)
    logger.info("wrote %d synthetic tiles of %d classes to %s", len(files), len(chosen), root)
    return DatasetSummary(root, len(files), counts, captions_csv, labels_csv, tuple(files))


def generate_examples(
    out_dir: str | os.PathLike[str], n: int = 16, size: int | tuple[int, int] = 128, seed: int = 0
) -> DatasetSummary:
    """Write the shipped sample tiles: a flat folder ``sea_01.tif``, ``forest_01.tif`` ...

    Classes are taken in :data:`CLASSES` order, cycling when ``n`` exceeds their number, and
    ``captions.csv`` (columns :data:`CAPTION_COLUMNS`) lists them.

    Args:
        out_dir: output folder (created).
        n: number of tiles.
        size: tile side in pixels, or ``(height, width)``.
        seed: base seed.

    Returns:
        A :class:`DatasetSummary` (``labels_csv`` is ``None``).
    """
    if n < 1:
        raise SceneError(f"n={n} example tiles requested; ask for at least 1")
    _check_seed(seed)
    root = Path(out_dir)
    _shape_of(size)
    rows: list[list[str]] = []
    files: list[str] = []
    counts: dict[str, int] = {}
    for k in range(n):
        cls = CLASSES[k % len(CLASSES)]
        ci = _CLASS_INDEX[cls]
        rep = k // len(CLASSES)
        # A seed stream of its own (the 10_000 offset), so examples differ from dataset tiles.
        image, info = generate_tile(cls, size, np.random.default_rng((seed, 10_000 + ci, rep)))
        caps = make_captions(info, np.random.default_rng((seed, 10_000 + ci, rep, 1)), n=3)
        counts[cls] = counts.get(cls, 0) + 1
        sample = Sample(f"{class_slug(cls)}_{counts[cls]:02d}", k, image, tuple(caps), info)
        rel = f"{sample.name}.tif"
        write_tile(
            root / rel, image, transform=tile_transform(k, size), tags=_tile_tags(sample, seed)
        )
        rows.append([rel, *caps, cls])
        files.append(rel)
    captions_csv = _write_csv(root / "captions.csv", CAPTION_COLUMNS, rows)
    logger.info("wrote %d example tiles to %s", n, root)
    return DatasetSummary(root, n, counts, captions_csv, None, tuple(files))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``python -m msclip.data.scenes``."""
    parser = argparse.ArgumentParser(
        prog="python -m msclip.data.scenes",
        description="Generate synthetic Sentinel-2 L2A tiles with land-cover labels and captions.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser(
        "examples", help="write the shipped sample tiles (flat folder + captions.csv)"
    )
    ex.add_argument("--out", required=True, type=Path, help="output folder")
    ex.add_argument("--n", type=_positive, default=16, help="number of tiles (default 16)")
    ex.add_argument("--size", type=_positive, default=128, help="tile side in pixels (default 128)")
    ex.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ds = sub.add_parser(
        "dataset", help="write a class-folder dataset with captions.csv and labels.csv"
    )
    ds.add_argument("--out", required=True, type=Path, help="dataset root folder")
    ds.add_argument(
        "--n-per-class", type=_positive, default=100, help="tiles per class (default 100)"
    )
    ds.add_argument("--size", type=_positive, default=64, help="tile side in pixels (default 64)")
    ds.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ds.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                    help="classes to generate (default: all; '_' may replace spaces)")  # fmt: skip
    ds.add_argument("--layout", choices=("folders", "flat"), default="folders",
                    help="one folder per class (EuroSAT-like, default) or flat")  # fmt: skip
    ds.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="show a progress bar (default on)")  # fmt: skip
    sub.add_parser("classes", help="list the classes, their synonyms and spectral sources")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = parse_args(argv)
    try:
        if args.command == "examples":
            summary = generate_examples(args.out, n=args.n, size=args.size, seed=args.seed)
            print(f"wrote {summary.n_images} example tiles and {summary.captions_csv}")
        elif args.command == "dataset":
            summary = generate_dataset(
                args.out, args.classes, args.n_per_class, args.size, args.seed, args.layout,
                progress=args.progress,
            )  # fmt: skip
            print(
                f"wrote {summary.n_images} tiles of {len(summary.counts)} classes, "
                f"{summary.captions_csv} and {summary.labels_csv}"
            )
        else:
            for i, cls in enumerate(CLASSES):
                print(f"{i:2d} {cls:13s} synonyms: {', '.join(CLASS_SYNONYMS[cls])}")
                print(f"   {'':13s} spectra: {CLASS_SOURCES[cls]}")
    except (SceneError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
