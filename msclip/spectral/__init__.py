"""The spectral core of msclip: bands and sensors, statistics, band adaptation, patch embedding
and preprocessing. Pure tensors and arrays: no file I/O (see :mod:`msclip.io`), no CLI."""

from msclip.spectral.adapt import BandMapping, equivalent_band, map_bands
from msclip.spectral.bands import (
    BANDS,
    LLAMA3_MS_CLIP_BANDS,
    RGB_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    SENSORS,
    Band,
    Sensor,
    band_names,
    default_bands_for_count,
    get_sensor,
    resolve_band,
    resolve_bands,
)
from msclip.spectral.patch_embed import SpectralPatchEmbed, rgb_zero_init_weight
from msclip.spectral.preprocess import SpectralPreprocess
from msclip.spectral.stats import STATS, NormStats, get_stats

__all__ = [
    "BANDS",
    "LLAMA3_MS_CLIP_BANDS",
    "RGB_BANDS",
    "S2_L1C_BANDS",
    "S2_L2A_BANDS",
    "SENSORS",
    "STATS",
    "Band",
    "BandMapping",
    "NormStats",
    "Sensor",
    "SpectralPatchEmbed",
    "SpectralPreprocess",
    "band_names",
    "default_bands_for_count",
    "equivalent_band",
    "get_sensor",
    "get_stats",
    "map_bands",
    "resolve_band",
    "resolve_bands",
    "rgb_zero_init_weight",
]
