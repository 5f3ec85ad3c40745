"""Wavelength-aware mapping from an input band set to a model's band set.

The patch embedding of a multispectral ViT is linear in its input channels, so reading a band set
other than the one the model was trained on amounts to choosing, for every input band, a kernel
built from the model's kernels. msclip's rule (documented in the README):

1. **Known band**: an input band with the same canonical name as a model band, or *spectrally
   equivalent* to one (each band's centre wavelength lies inside the other's pass band; among
   several, the largest overlap relative to the union of the two pass bands, then the nearest
   centre, wins), keeps that band's kernel. Landsat OLI red is Sentinel-2 B04 this way; a broad
   panchromatic band is not the green band it contains. One input band feeds a model band:
   when several are equivalent to the same one (Landsat green and panchromatic for an RGB
   model's green), the same name, then the largest overlap relative to the union of the two
   pass bands, then the nearest centre wins and the others are left out (``redundant``),
   instead of adding up to twice the signal.
2. **Between two model bands**: an input band whose centre lies between the centres of two
   neighbouring model bands gets the kernel interpolated linearly in wavelength,
   ``(1 - t) W_lo + t W_hi`` with ``t = (c - c_lo) / (c_hi - c_lo)``. Interpolation stands in
   for missing model bands: when both neighbours are themselves present in the input, the band
   in between carries nothing the model was trained to read and is left out (``redundant``).
   This is why a 12-band Sentinel-2 L2A file (with B01 and B09) gives exactly the published
   10-band result.
3. **Outside the model's range** (and not equivalent to an edge band): ignored, with a warning,
   unless its pass band overlaps the model's first or last band and no other input band feeds
   that band: then it stands in for it (NAIP blue, 420-492 nm, for Sentinel-2 B02).
4. **Model band absent from the input**: contributes nothing, exactly as if the band were filled
   with its mean (zero after normalisation).

The rule is expressed as a matrix ``M`` of shape ``[n_model, n_input]``: the adapted kernel of
input band ``j`` is ``sum_i M[i, j] W_i``. Equivalently, the normalised input can be mapped into
the model's channel space, ``x_model = M @ x_input``, and fed to the unchanged network; both forms
are the same linear map, and for known bands (rows of ``M`` that are one-hot) the channel form is
a pure re-ordering, so results are bit-identical to feeding the model's own band order. Input band
order therefore never matters once bands are named. Normalisation statistics of an input band
follow the same rule (equivalent band: that band's statistics; interpolated: interpolated
statistics), unless the caller supplies statistics for it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msclip.errors import BandError, OutOfRangeBandWarning
from msclip.spectral.bands import Band, refuse_single_string, resolve_band

__all__ = ["INPUT_RULES", "BandMapping", "equivalent_band", "map_bands"]

#: Version of the rules that decide what an input file becomes (band names, band mapping,
#: product scales). Caches and records of results computed from inputs (the heads' feature
#: cache, evaluation records under ``--skip-existing``) key on it, so results of older rules are
#: computed again. 2: one input band per model band, edge bands standing in, sensor band numbers
#: however padded, the Landsat Collection 2 surface-reflectance scale. 3: 16-bit PNGs with alpha
#: keep their depth, pictures are turned upright by their EXIF orientation, unnamed GeoTIFF bands
#: are ordered by their colour interpretation, a given nodata value is compared with the stored
#: values before a declared scale. 4: a VRT that describes no band is named from its band
#: files' names. 5: a band at a stored nodata value that its declared scale and offset make
#: negative is missing in that band; Sentinel-2 band descriptions are kept under a sensor of
#: another numbering, and that sensor's product scale applies to files with its bands only. 6: of
#: several equivalent model bands, an input band feeds the one it overlaps most relative to their
#: union (RGB green fed a Landsat model's panchromatic band, not its green band); a sensor's
#: product scale leaves thermal bands as stored and applies to integer array files too.
INPUT_RULES = 6

logger = logging.getLogger(__name__)


def _overlap(a: Band, b: Band) -> float:
    return max(min(a.high, b.high) - max(a.low, b.low), 0.0)


def _jaccard(a: Band, b: Band) -> float:
    # overlap over union: a broad band that contains a narrow one does not match it best;
    # rounded, so that equal ratios of edges given in nanometres tie (and the nearest centre
    # decides) instead of differing in their last bits
    union = max(a.high, b.high) - min(a.low, b.low)
    return round(_overlap(a, b) / union, 9) if union > 0 else 0.0


def _mutual(a: Band, b: Band) -> bool:
    return a.low <= b.center <= a.high and b.low <= a.center <= b.high


def equivalent_band(band: Band, candidates: Sequence[Band]) -> Band | None:
    """The candidate that ``band`` counts as: same name, or each centre inside the other's band;
    among several, the largest overlap relative to the union of the two pass bands, then the
    nearest centre (a broad panchromatic band that contains a narrow green one overlaps a green
    band more, but is not the green band)."""
    for c in candidates:
        if c.name == band.name:
            return c
    scored = [(_jaccard(band, c), -abs(band.center - c.center), c)
              for c in candidates if _mutual(band, c)]  # fmt: skip
    if not scored:
        return None
    return max(scored, key=lambda s: (s[0], s[1]))[2]


@dataclass(frozen=True)
class BandMapping:
    """How input bands feed a model's bands.

    Attributes:
        model_bands: canonical names of the model's bands, in model channel order.
        input_bands: canonical names of the input bands, in input channel order.
        matrix: ``[n_model, n_input]`` float64 weights (see module docstring).
        kinds: per input band, ``"exact"``, ``"equivalent"``, ``"interpolated"``,
            ``"redundant"`` (between two model bands that the input also holds, or equivalent
            to a model band that another input band feeds) or ``"ignored"`` (outside the
            model's range).
        ignored: input bands that contribute nothing (redundant or outside the range).
        missing: model bands that no input band feeds (mean-filled).
    """

    model_bands: tuple[str, ...]
    input_bands: tuple[str, ...]
    matrix: np.ndarray
    kinds: tuple[str, ...]
    ignored: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def permutation(self) -> list[int] | None:
        """Input index per model channel when every model band is fed by exactly one known input.

        ``None`` when the mapping needs interpolation or leaves a model band empty.
        """
        m = self.matrix
        if self.missing or any(k == "interpolated" for k in self.kinds):
            return None
        perm = []
        for i in range(m.shape[0]):
            nz = np.flatnonzero(m[i])
            if len(nz) != 1 or m[i, nz[0]] != 1.0:
                return None
            perm.append(int(nz[0]))
        return perm

    @property
    def used_inputs(self) -> list[int]:
        """Indices of input bands that contribute to at least one model band."""
        return [j for j, k in enumerate(self.kinds) if k not in ("ignored", "redundant")]

    def input_stats(
        self, model_mean: Sequence[float], model_std: Sequence[float]
    ) -> tuple[list[float], list[float]]:
        """Statistics for each input band derived from the model's (bands that feed no model
        band, ignored or redundant: 0 and 1)."""
        w = self.matrix
        col = w.sum(axis=0)
        col[col == 0] = 1.0
        mean = (np.asarray(model_mean, np.float64) @ w) / col
        std = (np.asarray(model_std, np.float64) @ w) / col
        std[np.array([k in ("ignored", "redundant") for k in self.kinds], dtype=bool)] = 1.0
        return mean.tolist(), std.tolist()


@functools.lru_cache(maxsize=256)
def _map_bands_cached(model: tuple[str, ...], inputs: tuple[str, ...]) -> BandMapping:
    model_bands = [resolve_band(b) for b in model]
    input_bands = [resolve_band(b) for b in inputs]
    m = np.zeros((len(model_bands), len(input_bands)), dtype=np.float64)
    kinds: list[str] = [""] * len(input_bands)
    by_center = sorted(range(len(model_bands)), key=lambda i: model_bands[i].center)
    covered: set[int] = set()
    feeders: dict[int, list[int]] = {}
    for j, band in enumerate(input_bands):
        eq = equivalent_band(band, model_bands)
        if eq is not None:
            feeders.setdefault(model_bands.index(eq), []).append(j)
    for i, js in feeders.items():
        # one input band per model band: two would add up to twice the signal in that channel
        target = model_bands[i]
        best = max(js, key=lambda j: (input_bands[j].name == target.name,
                                      _jaccard(input_bands[j], target),
                                      -abs(input_bands[j].center - target.center)))  # fmt: skip
        m[i, best] = 1.0
        covered.add(i)
        kinds[best] = "exact" if input_bands[best].name == target.name else "equivalent"
        for j in js:
            if j != best:
                kinds[j] = "redundant"
    for j, band in enumerate(input_bands):
        if kinds[j]:
            continue
        kinds[j] = "ignored"
        for lo, hi in itertools.pairwise(by_center):
            c_lo, c_hi = model_bands[lo].center, model_bands[hi].center
            if c_lo <= band.center <= c_hi and c_hi > c_lo:
                if lo in covered and hi in covered:
                    kinds[j] = "redundant"
                else:
                    t = (band.center - c_lo) / (c_hi - c_lo)
                    m[lo, j] += 1.0 - t
                    m[hi, j] += t
                    kinds[j] = "interpolated"
                break
    # an input band beyond the model's range that overlaps the model's first or last band
    # stands in for it when nothing else feeds it (NAIP blue, 420-492 nm, ends 0.4 nm short of
    # B02's centre and is the only blue band of an RGBN file)
    outside = sorted((j for j, k in enumerate(kinds) if k == "ignored"),
                     key=lambda j: -max(_jaccard(input_bands[j], model_bands[e])
                                        for e in (by_center[0], by_center[-1])))  # fmt: skip
    for j in outside:
        for edge in dict.fromkeys((by_center[0], by_center[-1])):
            if _overlap(input_bands[j], model_bands[edge]) > 0 and not m[edge].any():
                m[edge, j] = 1.0
                kinds[j] = "equivalent"
                break
    redundant = [inputs[j] for j, k in enumerate(kinds) if k == "redundant"]
    ignored = tuple(inputs[j] for j, k in enumerate(kinds) if k in ("ignored", "redundant"))
    missing = tuple(model[i] for i in range(len(model)) if not m[i].any())
    if redundant:
        logger.info(
            "input bands %s lie between model bands that the input also holds; left out",
            redundant,
        )
    if len(ignored) == len(inputs):
        raise BandError(
            f"none of the input bands {list(inputs)} can feed the model bands {list(model)}: "
            "check the band names or use a model trained on this sensor",
            param="bands",
        )
    if missing:
        logger.info("model bands %s are absent from the input and are mean-filled", missing)
    return BandMapping(tuple(model), tuple(inputs), m, tuple(kinds), ignored, missing)


def map_bands(model_bands: Sequence[str | Band], input_bands: Sequence[str | Band]) -> BandMapping:
    """Build the mapping from ``input_bands`` to ``model_bands`` (cached per pair of band sets).

    Raises:
        BandError: no input band can feed the model.
    """
    refuse_single_string(model_bands, "model_bands")
    refuse_single_string(input_bands, "input_bands")
    model = tuple(resolve_band(b).name for b in model_bands)
    inputs = tuple(resolve_band(b).name for b in input_bands)
    mapping = _map_bands_cached(model, inputs)
    outside = [b for b, k in zip(mapping.input_bands, mapping.kinds) if k == "ignored"]
    if outside:
        # Warned on every call (the mapping itself is cached); Python's warning filter shows a
        # repeated message once per process.
        centers = [resolve_band(b).center for b in model]
        warnings.warn(
            f"input bands {outside} lie outside the model's spectral range "
            f"({min(centers):.3f}-{max(centers):.3f} um, bands {list(model)}) and are ignored",
            OutOfRangeBandWarning,
            stacklevel=2,
        )
    return mapping
