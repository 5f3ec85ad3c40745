"""Registry of spectral bands and sensors.

Every band has one canonical, globally unique name, a centre wavelength and a bandwidth in
micrometres. Sentinel-2 bands keep their ESA names (``B01`` ... ``B12``, ``B8A``) because the
published Llama3-MS-CLIP statistics and most files use them; bands of other sensors carry a
sensor prefix (``OLI_B5``, ``PSD_B7``, ``NAIP_N``), and each sensor maps its own local names
(``B5``, ``nir``, ``SR_B5`` ...) onto them, so ``resolve_band("B05", sensor="hls_l30")`` is the
Landsat near-infrared band while a bare ``B05`` is Sentinel-2 red edge.

Sources of the figures (nominal values, not per-satellite spectral response functions):

* Sentinel-2 MSI: ESA, *Sentinel-2 User Handbook* (2015), Table "Spectral bands for the SENTINEL-2
  sensors" (Sentinel-2A central wavelength and bandwidth).
* Landsat 8/9 OLI and TIRS: USGS, *Landsat 8 (L8) Data Users Handbook* v5.0 (2019) and *Landsat 9
  Data Users Handbook* v1.0 (2022), band pass tables (both instruments share nominal bands).
* HLS: Masek et al., *Harmonized Landsat Sentinel-2 (HLS) Product User Guide* v2.0 (NASA, 2021),
  band tables of the S30 and L30 products.
* PlanetScope: Planet Labs, *PlanetScope Product Specifications* (2023): Dove Classic (PS2) 4-band
  and SuperDove (PSB.SD) 8-band spectral bands.
* NAIP: USDA FSA, NAIP imagery with the Leica ADS100 sensor (blue 420-492, green 533-587,
  red 604-664, NIR 833-920 nm).
* Plain RGB: nominal broad camera channels (blue 420-520, green 500-600, red 600-700 nm).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from msclip.errors import BandError, UnknownBandError

__all__ = [
    "BANDS",
    "COUNT_DEFAULTS",
    "EUROSAT_MS_BANDS",
    "LLAMA3_MS_CLIP_BANDS",
    "RGB_BANDS",
    "S2_L1C_BANDS",
    "S2_L2A_BANDS",
    "SENSORS",
    "Band",
    "Sensor",
    "band_names",
    "default_bands_for_count",
    "get_sensor",
    "resolve_band",
    "resolve_bands",
]


@dataclass(frozen=True)
class Band:
    """One spectral band.

    Attributes:
        name: canonical, globally unique name.
        center: centre wavelength in micrometres.
        bandwidth: full width of the nominal pass band in micrometres.
        sensor: the sensor (family) the band belongs to.
        common_name: colour/role name (``blue``, ``nir``, ``swir16`` ...), for display and aliases.
    """

    name: str
    center: float
    bandwidth: float
    sensor: str
    common_name: str = ""

    @property
    def low(self) -> float:
        """Lower edge of the pass band in micrometres."""
        return self.center - self.bandwidth / 2

    @property
    def high(self) -> float:
        """Upper edge of the pass band in micrometres."""
        return self.center + self.bandwidth / 2


@dataclass(frozen=True)
class Sensor:
    """A sensor or product: its bands in file order and the local names it uses for them.

    Attributes:
        name: registry key.
        bands: canonical band names in the product's usual file order.
        aliases: local name (upper-case) -> canonical band name.
        description: one line for listings.
        stored_scale: ``(scale, offset, fill)`` of the product's stored values,
            ``reflectance = stored x scale + offset`` and ``fill`` marking missing pixels, for
            products whose files usually do not declare them (the USGS Landsat Collection 2
            Level-2 GeoTIFFs keep them in the MTL file only). Applied by the readers to integer
            files read with this sensor that declare no scale (the fill where they declare no
            nodata).
    """

    name: str
    bands: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    description: str = ""
    stored_scale: tuple[float, float, float] | None = None


BANDS: dict[str, Band] = {}
SENSORS: dict[str, Sensor] = {}


def _add_bands(sensor: str, rows: Iterable[tuple[str, float, float, str]]) -> tuple[str, ...]:
    names = []
    for name, center, bandwidth, common in rows:
        if name in BANDS:
            raise RuntimeError(f"band {name!r} registered twice")
        BANDS[name] = Band(name, center, bandwidth, sensor, common)
        names.append(name)
    return tuple(names)


def _add_sensor(
    name: str,
    bands: Sequence[str],
    aliases: dict[str, str] | None = None,
    description: str = "",
    stored_scale: tuple[float, float, float] | None = None,
) -> None:
    table = {b.upper(): b for b in bands}
    for b in bands:
        if BANDS[b].common_name:
            table.setdefault(BANDS[b].common_name.upper(), b)
    table.update({k.upper(): v for k, v in (aliases or {}).items()})
    SENSORS[name] = Sensor(name, tuple(bands), table, description, stored_scale)


# --- Sentinel-2 MSI (ESA Sentinel-2 User Handbook, S2A nominal values, nm -> um) ---------------
_S2 = _add_bands(
    "sentinel2",
    [
        ("B01", 0.4427, 0.021, "coastal"),
        ("B02", 0.4924, 0.066, "blue"),
        ("B03", 0.5598, 0.036, "green"),
        ("B04", 0.6646, 0.031, "red"),
        ("B05", 0.7041, 0.015, "rededge1"),
        ("B06", 0.7405, 0.015, "rededge2"),
        ("B07", 0.7828, 0.020, "rededge3"),
        ("B08", 0.8328, 0.106, "nir"),
        ("B8A", 0.8647, 0.021, "nir08"),
        ("B09", 0.9451, 0.020, "nir09"),
        ("B10", 1.3735, 0.031, "cirrus"),
        ("B11", 1.6137, 0.091, "swir16"),
        ("B12", 2.2024, 0.175, "swir22"),
    ],
)
S2_L1C_BANDS: tuple[str, ...] = _S2
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in _S2 if b != "B10")
LLAMA3_MS_CLIP_BANDS: tuple[str, ...] = tuple(b for b in S2_L2A_BANDS if b not in ("B01", "B09"))
_S2_ALIASES = {f"B{i}": f"B{i:02d}" for i in range(1, 13)} | {"B8a": "B8A", "B08A": "B8A"}
_add_sensor("sentinel2_l1c", S2_L1C_BANDS, _S2_ALIASES, "Sentinel-2 MSI Level-1C, 13 bands")
#: Band order of the EuroSAT multispectral GeoTIFFs (13 Sentinel-2 L1C bands, no band
#: descriptions in the files): B8A is the last band, not the ninth as in ESA's order (EuroSAT
#: issue #7; torchgeo issue #2458 and pull request #2480, checked there against the 60 m look of
#: band 9). A 13-band file read by its band count gets ESA's order.
EUROSAT_MS_BANDS: tuple[str, ...] = (*(b for b in _S2 if b != "B8A"), "B8A")
_add_sensor(
    "eurosat", EUROSAT_MS_BANDS, _S2_ALIASES, "EuroSAT multispectral GeoTIFFs: S2 L1C, B8A last"
)
_add_sensor("sentinel2_l2a", S2_L2A_BANDS, _S2_ALIASES, "Sentinel-2 MSI Level-2A, 12 bands")
_add_sensor(
    "llama3_ms_clip", LLAMA3_MS_CLIP_BANDS, _S2_ALIASES, "Llama3-MS-CLIP input: 10 S2 L2A bands"
)

# --- Landsat 8/9 OLI and TIRS (USGS Data Users Handbooks) --------------------------------------
_OLI = _add_bands(
    "landsat",
    [
        ("OLI_B1", 0.4430, 0.020, "coastal"),
        ("OLI_B2", 0.4825, 0.065, "blue"),
        ("OLI_B3", 0.5625, 0.075, "green"),
        ("OLI_B4", 0.6550, 0.050, "red"),
        ("OLI_B5", 0.8650, 0.040, "nir08"),
        ("OLI_B6", 1.6100, 0.100, "swir16"),
        ("OLI_B7", 2.2000, 0.200, "swir22"),
        ("OLI_B8", 0.5900, 0.180, "pan"),
        ("OLI_B9", 1.3750, 0.030, "cirrus"),
    ],
)
_TIRS = _add_bands(
    "landsat",
    [("TIRS_B10", 10.895, 0.590, "lwir11"), ("TIRS_B11", 12.005, 1.010, "lwir12")],
)
_LANDSAT_ALIASES = {f"B{i}": n for i, n in enumerate(_OLI + _TIRS, start=1)}
_LANDSAT_ALIASES |= {f"SR_B{i}": f"OLI_B{i}" for i in range(1, 8)}
_LANDSAT_ALIASES |= {"ST_B10": "TIRS_B10", "NIR": "OLI_B5"}
_add_sensor("landsat89", _OLI + _TIRS, _LANDSAT_ALIASES, "Landsat 8/9 OLI + TIRS, 11 bands")
_add_sensor(
    "landsat89_sr",
    _OLI[:7],
    _LANDSAT_ALIASES,
    "Landsat 8/9 Collection 2 surface reflectance, SR_B1..SR_B7",
    # USGS Landsat 8-9 Collection 2 Level-2 Science Product Guide: SR = DN x 2.75e-5 - 0.2,
    # fill value 0
    stored_scale=(2.75e-5, -0.2, 0.0),
)

# --- HLS v2.0 (HLS Product User Guide): S30 uses the S2 bands, L30 the OLI/TIRS bands ----------
_add_sensor("hls_s30", S2_L1C_BANDS, _S2_ALIASES, "HLS S30 (Sentinel-2 bands, HLS names)")
_HLS_L30 = ("OLI_B1", "OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7", "OLI_B9")
_HLS_L30 += ("TIRS_B10", "TIRS_B11")
_add_sensor(
    "hls_l30",
    _HLS_L30,
    {
        "B01": "OLI_B1",
        "B02": "OLI_B2",
        "B03": "OLI_B3",
        "B04": "OLI_B4",
        "B05": "OLI_B5",
        "B06": "OLI_B6",
        "B07": "OLI_B7",
        "B09": "OLI_B9",
        "B10": "TIRS_B10",
        "B11": "TIRS_B11",
    },
    "HLS L30 (Landsat bands, HLS names: B05 is NIR)",
)
_add_sensor(
    "hls",
    ("B02", "B03", "B04", "B8A", "B11", "B12"),
    _S2_ALIASES | {"NIR": "B8A", "NIR_NARROW": "B8A", "SWIR1": "B11", "SWIR2": "B12"},
    "HLS harmonised 6-band set (blue, green, red, narrow NIR, SWIR 1, SWIR 2)",
)

# --- PlanetScope (Planet product specifications) ----------------------------------------------
_PS2 = _add_bands(
    "planetscope",
    [
        ("PS2_B1", 0.485, 0.060, "blue"),
        ("PS2_B2", 0.545, 0.090, "green"),
        ("PS2_B3", 0.630, 0.080, "red"),
        ("PS2_B4", 0.820, 0.080, "nir"),
    ],
)
_PSD = _add_bands(
    "planetscope",
    [
        ("PSD_B1", 0.4415, 0.021, "coastal_blue"),
        ("PSD_B2", 0.490, 0.050, "blue"),
        ("PSD_B3", 0.531, 0.036, "green_i"),
        ("PSD_B4", 0.565, 0.036, "green"),
        ("PSD_B5", 0.610, 0.020, "yellow"),
        ("PSD_B6", 0.665, 0.030, "red"),
        ("PSD_B7", 0.705, 0.016, "rededge"),
        ("PSD_B8", 0.865, 0.040, "nir"),
    ],
)
_add_sensor(
    "planetscope4",
    _PS2,
    {f"B{i}": n for i, n in enumerate(_PS2, start=1)},
    "PlanetScope 4-band (Dove Classic PS2: blue, green, red, NIR)",
)
_add_sensor(
    "planetscope8",
    _PSD,
    {f"B{i}": n for i, n in enumerate(_PSD, start=1)},
    "PlanetScope 8-band (SuperDove PSB.SD)",
)

# --- NAIP (Leica ADS100) and plain RGB ---------------------------------------------------------
_NAIP = _add_bands(
    "naip",
    [
        ("NAIP_R", 0.634, 0.060, "red"),
        ("NAIP_G", 0.560, 0.054, "green"),
        ("NAIP_B", 0.456, 0.072, "blue"),
        ("NAIP_N", 0.8765, 0.087, "nir"),
    ],
)
_add_sensor(
    "naip", _NAIP, {"R": "NAIP_R", "G": "NAIP_G", "B": "NAIP_B", "N": "NAIP_N"}, "NAIP RGBN"
)
RGB_BANDS: tuple[str, ...] = _add_bands(
    "rgb", [("red", 0.650, 0.100, "red"), ("green", 0.550, 0.100, "green"),
            ("blue", 0.470, 0.100, "blue")]
)  # fmt: skip
_add_sensor("rgb", RGB_BANDS, {"R": "red", "G": "green", "B": "blue"}, "plain RGB camera")

#: Band sets assumed from the band count alone, when a file neither names its bands nor the
#: caller does (issue rule: 13 = S2 L1C, 12 = S2 L2A, 10 = Llama3-MS-CLIP set, 4 = RGBN, 3 = RGB).
COUNT_DEFAULTS: dict[int, str] = {
    13: "sentinel2_l1c",
    12: "sentinel2_l2a",
    10: "llama3_ms_clip",
    4: "naip",
    3: "rgb",
}

_CANONICAL_UPPER = {name.upper(): name for name in BANDS}


def stored_scale(sensor: str | None) -> tuple[float, float, float] | None:
    """``(scale, offset, fill)`` of a sensor's stored values when the product defines them and
    its files do not declare them (:attr:`Sensor.stored_scale`), else ``None``."""
    return get_sensor(sensor).stored_scale if sensor else None


def get_sensor(name: str) -> Sensor:
    """Return a registered sensor by name (case-insensitive)."""
    key = name.lower().replace("-", "_")
    if key not in SENSORS:
        raise UnknownBandError(
            f"unknown sensor {name!r}; known sensors: {', '.join(sorted(SENSORS))}"
        )
    return SENSORS[key]


def _clean(name: str) -> str:
    # File descriptions often read "B04", "b4", "B04 (red)", "SR_B4" or, as GDAL's SENTINEL2
    # driver writes them, "B4, central wavelength 665 nm": keep the leading token.
    token = re.split(r"[\s(\[,;]", name.strip(), maxsplit=1)[0]
    return token.upper()


def _local_keys(key: str) -> tuple[str, ...]:
    """``key`` and its numbered variants with and without zero padding (``B5``, ``B05``;
    ``SR_B5``, ``SR_B05``): products of one sensor spell the same band number both ways."""
    m = re.fullmatch(r"(.*B)0*(\d+)", key)
    if m is None:
        return (key,)
    prefix, number = m.group(1), int(m.group(2))
    return tuple(dict.fromkeys((key, f"{prefix}{number}", f"{prefix}{number:02d}")))


def resolve_band(name: str | Band, sensor: str | None = None) -> Band:
    """Resolve a band name to its registry entry.

    Resolution order: ``sensor:name`` qualified names; the given sensor's local names (band
    numbers with or without zero padding: ``B5`` or ``B05``); canonical names
    (case-insensitive); plain colour names (``red``, ``green``, ``blue``) as the generic RGB
    bands; Sentinel-2 short forms and roles (``B4`` -> ``B04``, ``nir`` -> ``B08``).

    Args:
        name: band name or a :class:`Band`.
        sensor: optional sensor whose local names take precedence (e.g. ``hls_l30``).

    Raises:
        UnknownBandError: the name is not known; the message suggests close matches.
    """
    if isinstance(name, Band):
        return name
    if not isinstance(name, str) or not name.strip():
        raise UnknownBandError(f"band name must be a non-empty string, got {name!r}")
    raw = name.strip()
    if ":" in raw:
        sensor, raw = raw.split(":", 1)
    key = _clean(raw)
    if sensor is not None:
        # the sensor's own numbering wins over the Sentinel-2 short forms below, however it is
        # padded: Landsat "B05" and HLS L30 "B5" are near-infrared, not Sentinel-2 red edge B05
        table = get_sensor(sensor).aliases
        for local in _local_keys(key):
            if local in table:
                return BANDS[table[local]]
    if key in _CANONICAL_UPPER:
        return BANDS[_CANONICAL_UPPER[key]]
    for fallback in ("rgb", "sentinel2_l1c"):
        table = SENSORS[fallback].aliases
        if key in table:
            return BANDS[table[key]]
    close = difflib.get_close_matches(key, list(_CANONICAL_UPPER), n=4)
    hint = f" Did you mean {', '.join(_CANONICAL_UPPER[c] for c in close)}?" if close else ""
    where = f" for sensor {sensor!r}" if sensor else ""
    raise UnknownBandError(
        f"unknown band name {name!r}{where}.{hint} Use a canonical name (msclip.list_bands()), "
        "a sensor-qualified name such as 'landsat89:B5', or pass the sensor."
    )


def refuse_single_string(names: object, what: str = "bands") -> None:
    """Refuse one string where a list of band names is expected: iterating it would read its
    letters as band names (``"RGB"`` as red, green, blue; ``"B02"`` fails on ``"0"``).

    Raises:
        BandError: ``names`` is a ``str`` or ``bytes``.
    """
    if isinstance(names, (str, bytes)):
        raise BandError(
            f"{what} must be a list of band names, got the single string {names!r}; "
            f"write [{names!r}] for one band",
            param="bands",
        )


def _refuse_joined_names(name: object, sensor: str | None) -> None:
    """Refuse one string that joins several band names (``"B02,B03"``, ``"B02 B03"``): a band is
    read from a name's first word (a file's description ``B4, central wavelength 665 nm``), so
    it would be the one band B02. A description whose other words name no band passes."""
    if not isinstance(name, str):
        return
    parts = [p for p in re.split(r"[\s,;]+", name.strip()) if p]
    if len(parts) < 2:
        return
    try:
        # a band and its colour or role ("B08 nir", "B04 red") is one band, said twice
        bands = [resolve_band(part, sensor) for part in parts]
        found = {b.common_name or b.name for b in bands}
    except UnknownBandError:
        return
    if len(found) < 2:
        return
    raise BandError(
        f"the band name {name!r} joins {len(parts)} band names; give them as separate names: "
        f"{parts}",
        param="bands",
    )


def resolve_bands(
    names: Iterable[str | Band], sensor: str | None = None, *, descriptions: bool = False
) -> tuple[Band, ...]:
    """Resolve several band names; duplicates are an error (a band cannot be read twice).

    Args:
        names: the names.
        sensor: the sensor whose local names apply.
        descriptions: the names are a file's band descriptions, whose words after the first may
            be anything (``B2 blue``); names a caller gives may not join several band names.

    Raises:
        BandError: ``names`` is one string rather than a list of names (its letters would be
            read as band names: ``"RGB"`` as red, green, blue), one of them joins several band
            names (``"B02,B03"``), the list is empty, or names a band twice.
        UnknownBandError: a name is not known.
    """
    refuse_single_string(names)
    names = list(names)
    if not descriptions:
        for n in names:
            _refuse_joined_names(n, sensor)
    bands = tuple(resolve_band(n, sensor) for n in names)
    if not bands:
        raise BandError("empty band list: name at least one band")
    seen: dict[str, int] = {}
    for i, b in enumerate(bands):
        if b.name in seen:
            raise BandError(
                f"band {b.name!r} appears twice (positions {seen[b.name]} and {i}) in "
                f"{[getattr(n, 'name', n) for n in names]}; each band may be named once"
            )
        seen[b.name] = i
    return bands


def band_names(bands: Iterable[str | Band], sensor: str | None = None) -> tuple[str, ...]:
    """Canonical names of the given bands (resolving aliases)."""
    return tuple(b.name for b in resolve_bands(bands, sensor))


def default_bands_for_count(count: int) -> tuple[str, ...]:
    """The band set assumed for a file that names neither its bands nor has them named.

    Raises:
        BandError: no default exists for this count.
    """
    if count not in COUNT_DEFAULTS:
        # one band: most often one band file of a product stored band by band
        single = (
            " A 1-band file is usually one band of a product stored band by band (Sentinel-2 "
            "SAFE .jp2 files, a cloud archive's band COGs): stack a product's band files into "
            "one image with a VRT (msclip.io.stack_band_files(files, 'stack.vrt'), or "
            "gdalbuildvrt -separate stack.vrt B02.tif B03.tif ...) and give the VRT."
            if count == 1
            else ""
        )
        raise BandError(
            f"cannot tell which bands a {count}-band image holds: only "
            f"{sorted(COUNT_DEFAULTS)} band counts have a default "
            "(13 = S2 L1C, 12 = S2 L2A, 10 = Llama3-MS-CLIP set, 4 = RGBN, 3 = RGB). "
            f"Name the bands (bands=['B02', 'B03', ...]).{single}",
            param="bands",
        )
    return SENSORS[COUNT_DEFAULTS[count]].bands
