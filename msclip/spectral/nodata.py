"""The missing-pixel rule, in one place (numpy only).

A pixel is missing when every band of it equals the nodata value or is not finite (NaN or
infinity). One band at the nodata value beside bands with data is a measurement (dark water at 0
in the SWIR bands of an L2A product whose nodata is 0; a rescaled read
marks such a band NaN where the declared offset makes that value negative, see
:func:`msclip.io.readers._rescaled`). Preprocessing fills missing pixels
(:func:`msclip.spectral.preprocess.fill_mask`), tiles and images count them
(:func:`msclip.tiling.nodata_fraction`), scene prediction leaves them nodata, and rescaled reads
mark them NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = ["missing_pixels"]


def missing_pixels(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """``[..., H, W]`` true where every band of ``values`` ``[..., C, H, W]`` is ``nodata`` or
    not finite; computed one band at a time (no ``[C, H, W]`` temporaries), and no further once
    no pixel is left missing (a tile with data: usually after its first band)."""
    floating = np.issubdtype(values.dtype, np.floating)
    has_nodata = nodata is not None and not np.isnan(nodata)
    missing = np.full(values.shape[:-3] + values.shape[-2:], floating or has_nodata, dtype=bool)
    if not missing.any():  # integer data without a nodata value: nothing can be missing
        return missing
    for c in range(values.shape[-3]):
        band = values[..., c, :, :]
        gone = ~np.isfinite(band) if floating else band == nodata
        if floating and has_nodata:
            gone |= band == nodata
        missing &= gone
        if not missing.any():
            break
    return missing
