"""msclip: a multispectral vision-language (CLIP) toolkit for Earth observation.

Public API::

    model, preprocess, tokenizer = msclip.create_model_and_transforms("Llama3-MS-CLIP-Base",
                                                                      pretrained=True)
    raster = msclip.read_raster("tile.tif")
    emb = model.encode_image(preprocess(raster)[None], normalize=True)

The names below are loaded on first use (PEP 562), so ``import msclip`` and the command-line
programs' ``--help`` do not pay for importing torch, OpenCLIP and rasterio until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from msclip._version import __version__
from msclip.errors import (
    BandError,
    CheckpointError,
    CheckpointMismatchError,
    LayoutError,
    MSCLIPError,
    RasterReadError,
    UnknownBandError,
    UnknownModelError,
    UnsupportedFormatError,
    WeightsNotFoundError,
)

#: Public name -> the module that defines it (imported on first access).
_LAZY: dict[str, str] = {
    "create_model": "msclip.factory",
    "create_model_and_transforms": "msclip.factory",
    "get_model_entry": "msclip.factory",
    "get_tokenizer": "msclip.factory",
    "list_models": "msclip.factory",
    "Raster": "msclip.io",
    "read_raster": "msclip.io",
    "write_geotiff": "msclip.io",
    "MSCLIP": "msclip.model",
    "MSCLIPConfig": "msclip.model",
    "export_release_checkpoint": "msclip.pretrained",
    "read_checkpoint": "msclip.pretrained",
    "save_checkpoint": "msclip.pretrained",
    "BANDS": "msclip.spectral.bands",
    "SENSORS": "msclip.spectral.bands",
    "resolve_band": "msclip.spectral.bands",
    "resolve_bands": "msclip.spectral.bands",
    "map_bands": "msclip.spectral.adapt",
    "SpectralPatchEmbed": "msclip.spectral.patch_embed",
    "SpectralPreprocess": "msclip.spectral.preprocess",
    "ImageTransform": "msclip.transforms",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from msclip.factory import (
        create_model,
        create_model_and_transforms,
        get_model_entry,
        get_tokenizer,
        list_models,
    )
    from msclip.io import Raster, read_raster, write_geotiff
    from msclip.model import MSCLIP, MSCLIPConfig
    from msclip.pretrained import export_release_checkpoint, read_checkpoint, save_checkpoint
    from msclip.spectral import (
        BANDS,
        SENSORS,
        SpectralPatchEmbed,
        SpectralPreprocess,
        map_bands,
        resolve_band,
        resolve_bands,
    )
    from msclip.transforms import ImageTransform


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'msclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def list_bands() -> list[str]:
    """Canonical names of every registered band."""
    from msclip.spectral.bands import BANDS

    return list(BANDS)


def list_sensors() -> list[str]:
    """Names of every registered sensor."""
    from msclip.spectral.bands import SENSORS

    return list(SENSORS)


__all__ = [
    "BANDS",
    "MSCLIP",
    "SENSORS",
    "BandError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ImageTransform",
    "LayoutError",
    "MSCLIPConfig",
    "MSCLIPError",
    "Raster",
    "RasterReadError",
    "SpectralPatchEmbed",
    "SpectralPreprocess",
    "UnknownBandError",
    "UnknownModelError",
    "UnsupportedFormatError",
    "WeightsNotFoundError",
    "__version__",
    "create_model",
    "create_model_and_transforms",
    "export_release_checkpoint",
    "get_model_entry",
    "get_tokenizer",
    "list_bands",
    "list_models",
    "list_sensors",
    "map_bands",
    "read_checkpoint",
    "read_raster",
    "resolve_band",
    "resolve_bands",
    "save_checkpoint",
    "write_geotiff",
]
