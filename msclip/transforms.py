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

    Args:
        *args: as :class:`~msclip.spectral.SpectralPreprocess`.
        max_pixels: refuse files with more pixels than this before reading them
            (:class:`~msclip.errors.RasterTooLargeError`), so that a whole scene given as one image
            cannot exhaust memory; ``None``: no limit.
        downsample: read GeoTIFFs and PNG/JPEG pictures larger than the model input reduced
            to it (average resampling, through a GeoTIFF's overviews where it has them) instead
            of refusing them; results then differ slightly from a full-resolution read.
        **kwargs: as :class:`~msclip.spectral.SpectralPreprocess`.
    """

    def __init__(
        self,
        *args: Any,
        max_pixels: int | None = None,
        downsample: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_pixels = max_pixels
        self.downsample = downsample

    def read(
        self, path: str | os.PathLike, window: Any = None, nodata: float | None = None
    ) -> Raster:
        """Read a file (or a window of a GeoTIFF) with this transform's band settings
        (``nodata``: the stored value of missing pixels, instead of the file's)."""
        return read_raster(path, window=window, nodata=nodata, **self._read_settings())

    def _read_settings(self) -> dict[str, Any]:
        """This transform's settings of :func:`~msclip.io.readers.read_raster` (files read ahead
        are taken only when read with the same, :meth:`read_ahead`)."""
        return {"bands": self.input_bands, "layout": self.layout, "sensor": self.sensor,
                "max_pixels": self.max_pixels,
                "shorter_side": self.image_size if self.downsample else None}  # fmt: skip

    def read_ahead(
        self, reads: Any, path: str | os.PathLike, nodata: float | None = None
    ) -> tuple[np.ndarray, tuple[str, ...], float | None, str] | None:
        """What ``load(read(path, nodata=nodata))`` gives, from ``reads`` made ahead with this
        transform's settings (:class:`msclip.io.prefetch.StartupReads`), or ``None`` where they
        do not hold the file (then read it)."""
        got = reads.take(path, nodata=nodata, **self._read_settings())
        if got is None:
            return None
        data, bands, stored_nodata = got
        return data, bands, stored_nodata, os.fsdecode(os.fspath(path))

    def load(self, x: Any) -> tuple[np.ndarray, tuple[str, ...], float | None, str]:
        """Data ``[C, H, W]``, band names, nodata and a display name for any accepted input (an
        open rasterio dataset is read from its file, as its path would be)."""
        if _is_rasterio_dataset(x):
            x = x.name
        if isinstance(x, (str, os.PathLike)):
            x = self.read(x)
        if isinstance(x, Raster):
            return x.data, x.bands, x.nodata, x.path or "raster"
        return super().load(x)


def _is_rasterio_dataset(x: Any) -> bool:
    """Whether ``x`` is a rasterio dataset (``rasterio.open(...)``), without importing rasterio."""
    return type(x).__module__.startswith("rasterio.") and isinstance(getattr(x, "name", None), str)
