"""The image transform of a model: a file, raster, picture or array in, the model's input out.

:class:`ImageTransform` is what ``MSCLIP.preprocess()`` and
:func:`msclip.create_model_and_transforms` return. It reads files with :mod:`msclip.io` (GeoTIFF /
COG, ``.npy`` / ``.npz``, PNG / JPEG, band names from the file) and then applies the pure-array
pipeline of :class:`msclip.spectral.SpectralPreprocess` (band selection by name, nodata fill,
resize, normalisation). Keeping the file reading here keeps :mod:`msclip.spectral` free of I/O.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from msclip.io import Raster, read_raster
from msclip.spectral.preprocess import SpectralPreprocess

__all__ = ["ImageTransform"]


class ImageTransform(SpectralPreprocess):
    """:class:`~msclip.spectral.SpectralPreprocess` that also accepts file paths and rasters.

    Arguments as :class:`~msclip.spectral.SpectralPreprocess`; ``input_bands``, ``layout`` and
    ``sensor`` also apply to files that do not name their bands. Picklable (DataLoader workers).
    """

    def read(self, path: str | os.PathLike, window: Any = None) -> Raster:
        """Read a file (or a window of a GeoTIFF) with this transform's band settings."""
        return read_raster(
            path, bands=self.input_bands, layout=self.layout, sensor=self.sensor, window=window
        )

    def load(self, x: Any) -> tuple[np.ndarray, tuple[str, ...], float | None, str]:
        """Data ``[C, H, W]``, band names, nodata and a display name for any accepted input."""
        if isinstance(x, (str, os.PathLike)):
            x = self.read(x)
        if isinstance(x, Raster):
            return x.data, x.bands, x.nodata, x.path or "raster"
        return super().load(x)
