"""The spectral core of msclip: bands and sensors, statistics, band adaptation, patch embedding
and preprocessing. Pure tensors and arrays: no file I/O (see :mod:`msclip.io`), no CLI.

The band registry and statistics import nothing heavy; the torch-based parts (patch embedding,
preprocessing) are loaded on first use (PEP 562), so checking band names stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from msclip.spectral.stats import STATS, NormStats, get_stats

_LAZY: dict[str, str] = {
    "BandMapping": "msclip.spectral.adapt",
    "equivalent_band": "msclip.spectral.adapt",
    "map_bands": "msclip.spectral.adapt",
    "SpectralPatchEmbed": "msclip.spectral.patch_embed",
    "rgb_zero_init_weight": "msclip.spectral.patch_embed",
    "SpectralPreprocess": "msclip.spectral.preprocess",
}

if TYPE_CHECKING:  # pragma: no cover
    from msclip.spectral.adapt import BandMapping, equivalent_band, map_bands
    from msclip.spectral.patch_embed import SpectralPatchEmbed, rgb_zero_init_weight
    from msclip.spectral.preprocess import SpectralPreprocess


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'msclip.spectral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
