"""Axis layout of band arrays: bands first (``CHW``) or last (``HWC``).

Arrays do not say which axis holds the bands. The layout is taken from the caller, or from the
shape only when exactly one end axis can hold the bands (the expected count, or a band count with
a default band set); otherwise it is refused with a message that says how to declare it, instead of
the shape-based guess the original Llama3-MS-CLIP code makes (which mishandles 10-band
channel-last arrays).
"""

from __future__ import annotations

import numpy as np

from msclip.errors import LayoutError
from msclip.spectral.bands import COUNT_DEFAULTS

__all__ = ["to_chw"]


def to_chw(
    array: np.ndarray, layout: str | None = None, n_bands: int | None = None, where: str = "array"
) -> tuple[np.ndarray, str]:
    """Return ``array`` as ``[C, H, W]`` and the layout it had (``CHW`` or ``HWC``).

    Args:
        array: 2-D (one band) or 3-D array.
        layout: ``"CHW"``, ``"HWC"`` or ``None``/``"auto"`` (decide from the shape, refusing when
            ambiguous).
        n_bands: expected band count, when known (from band names).
        where: file name for messages.

    Raises:
        LayoutError: the layout cannot be known.
    """
    if array.ndim == 2:
        return array[None], "CHW"
    if array.ndim != 3:
        raise LayoutError(f"{where}: expected a 2-D or 3-D array, got shape {array.shape}")
    lay = (layout or "auto").upper()
    if lay == "CHW":
        return array, "CHW"
    if lay == "HWC":
        return np.moveaxis(array, -1, 0), "HWC"
    if lay != "AUTO":
        raise LayoutError(f"layout must be 'CHW', 'HWC' or 'auto', got {layout!r}")
    first, last = array.shape[0], array.shape[-1]
    if n_bands is not None:
        first_ok, last_ok = first == n_bands, last == n_bands
    else:
        first_ok, last_ok = first in COUNT_DEFAULTS, last in COUNT_DEFAULTS
    if first_ok and not last_ok:
        return array, "CHW"
    if last_ok and not first_ok:
        return np.moveaxis(array, -1, 0), "HWC"
    if n_bands is not None and not first_ok and not last_ok:
        raise LayoutError(
            f"{where}: {n_bands} band names were given, but neither end axis of an array of "
            f"shape {array.shape} has {n_bands} entries; name as many bands as the array holds",
            param="bands",
        )
    if n_bands is None and not first_ok and not last_ok:
        raise LayoutError(
            f"{where}: an array of shape {array.shape} has no end axis of a band count with a "
            f"default band set ({sorted(COUNT_DEFAULTS)}); name its bands (bands=[...]), and "
            "declare layout='CHW' or layout='HWC' if both end axes could hold them",
            param="bands",
        )
    raise LayoutError(
        f"{where}: cannot tell whether the bands of an array of shape {array.shape} are the "
        "first or the last axis; declare it with layout='CHW' or layout='HWC'",
        param="layout",
    )
