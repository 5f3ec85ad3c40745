"""msclip: a multispectral vision-language (CLIP) toolkit for Earth observation.

Public API::

    model, preprocess, tokenizer = msclip.create_model_and_transforms("Llama3-MS-CLIP-Base",
                                                                      pretrained=True)
    raster = msclip.read_raster("tile.tif")
    emb = model.encode_image(preprocess(raster)[None], normalize=True)
"""

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


def list_bands() -> list[str]:
    """Canonical names of every registered band."""
    return list(BANDS)


def list_sensors() -> list[str]:
    """Names of every registered sensor."""
    return list(SENSORS)


__all__ = [
    "MSCLIP",
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
