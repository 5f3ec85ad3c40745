"""Synthetic Sentinel-2 L2A scenes with land-cover labels, dense targets and captions.

This package makes multispectral tiles that look, band by band, like Sentinel-2 Level-2A surface
reflectance of common land-cover classes, with captions that say what they show, a per-pixel
land-cover label raster and a per-pixel fractional vegetation cover. It feeds the shipped sample
tiles, the contrastive pretraining of the demo model (so an offline first run gives a meaningful
zero-shot answer), dense-prediction heads without any download, and test fixtures.

Modules, in the order a tile is made:

- :mod:`~msclip.synthetic.classes`: the 14 land-cover classes and the words that name them;
- :mod:`~msclip.synthetic.spectra`: endmember spectra (with their sources) and class mixtures;
- :mod:`~msclip.synthetic.noise`: smooth random fields;
- :mod:`~msclip.synthetic.surfaces`: the textured surface of each class;
- :mod:`~msclip.synthetic.layouts`: where classes show in a tile (coasts, rivers, fields ...);
- :mod:`~msclip.synthetic.tiles`: the sensor model and :func:`generate_tile`;
- :mod:`~msclip.synthetic.captions`: :func:`make_captions`;
- :mod:`~msclip.synthetic.dataset`: GeoTIFF tiles, caption datasets, the shipped examples;
- :mod:`~msclip.synthetic.dense`: label and target rasters, dense datasets, large scenes.

Everything is drawn from one :class:`numpy.random.Generator`, so a seed fixes the pixels, the
captions and the written files byte for byte. Command line: ``msclip-scenes`` or
``python -m msclip.synthetic`` (:mod:`msclip.cli.scenes`); documentation: ``docs/scenes.md``.
"""

from msclip.errors import SyntheticDataError, UnknownClassError
from msclip.synthetic.captions import make_captions
from msclip.synthetic.classes import (
    CLASS_PHRASES,
    CLASS_SYNONYMS,
    CLASSES,
    canonical_class,
    caption_mentions,
    class_slug,
)
from msclip.synthetic.dataset import (
    CAPTION_COLUMNS,
    DEFAULT_CRS,
    DEFAULT_ORIGIN,
    PIXEL_SIZE,
    DatasetSummary,
    Sample,
    generate_dataset,
    generate_examples,
    iter_samples,
    tile_transform,
    write_tile,
)
from msclip.synthetic.dense import (
    IGNORE_INDEX,
    LABEL_BAND,
    TARGET_BAND,
    DenseDatasetSummary,
    generate_dense_dataset,
    generate_dense_tile,
    generate_scene,
    write_label,
    write_scene,
    write_target,
)
from msclip.synthetic.spectra import (
    BAND_NAMES,
    CLASS_MIXTURES,
    CLASS_SOURCES,
    ENDMEMBERS,
    WAVELENGTHS_UM,
    Endmember,
    class_signature,
)
from msclip.synthetic.tiles import TileInfo, generate_tile

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
    "IGNORE_INDEX",
    "LABEL_BAND",
    "PIXEL_SIZE",
    "TARGET_BAND",
    "WAVELENGTHS_UM",
    "DatasetSummary",
    "DenseDatasetSummary",
    "Endmember",
    "Sample",
    "SyntheticDataError",
    "TileInfo",
    "UnknownClassError",
    "canonical_class",
    "caption_mentions",
    "class_signature",
    "class_slug",
    "generate_dataset",
    "generate_dense_dataset",
    "generate_dense_tile",
    "generate_examples",
    "generate_scene",
    "generate_tile",
    "iter_samples",
    "make_captions",
    "tile_transform",
    "write_label",
    "write_scene",
    "write_target",
    "write_tile",
]
