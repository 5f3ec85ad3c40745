"""Per-band normalisation statistics, keyed by canonical band name.

* ``llama3-ms-clip``: the Sentinel-2 L2A statistics published with Llama3-MS-CLIP (Marimo et al.,
  "Beyond the Visible: Multispectral Vision-Language Learning for Earth Observation", ECML PKDD
  2025, arXiv:2503.15969), on raw L2A digital numbers (reflectance x 10000, no offset).
* ``openai``: the OpenAI CLIP image statistics (Radford et al. 2021) on 0-1 scaled 8-bit RGB.
* ``half``: mean 0.5, std 0.5 on 0-1 scaled RGB, used by OpenCLIP's ViT-L-14 LAION-2B weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from msclip.errors import BandError

__all__ = ["STATS", "NormStats", "get_stats"]


@dataclass(frozen=True)
class NormStats:
    """Normalisation statistics of one data source.

    Attributes:
        name: registry key.
        mean: band name -> mean, in the units after division by ``divisor``.
        std: band name -> standard deviation, same units.
        divisor: raw values are divided by it before normalising (255 for 8-bit RGB, as
            torchvision's ``ToTensor`` does; 1 for L2A digital numbers).
    """

    name: str
    mean: Mapping[str, float]
    std: Mapping[str, float]
    divisor: float = 1.0

    def for_bands(self, bands: Sequence[str]) -> tuple[list[float], list[float]]:
        """Means and stds for ``bands`` in that order.

        Raises:
            BandError: a band has no statistics in this set.
        """
        missing = [b for b in bands if b not in self.mean]
        if missing:
            raise BandError(
                f"no normalisation statistics for bands {missing} in stats set {self.name!r} "
                f"(it covers {sorted(self.mean)}); pass mean= and std= for them explicitly"
            )
        return [float(self.mean[b]) for b in bands], [float(self.std[b]) for b in bands]

    def to_dict(self) -> dict:
        """Plain dict for checkpoint metadata and reports."""
        return {"name": self.name, "mean": dict(self.mean), "std": dict(self.std),
                "divisor": self.divisor}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping) -> NormStats:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d.get("name", "custom")), dict(d["mean"]), dict(d["std"]),
                   float(d.get("divisor", 1.0)))  # fmt: skip


_L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
_L2A_MEAN = (794.311, 925.161, 1183.128, 1338.041, 1667.254, 2233.633, 2460.96, 2555.569,
             2619.542, 2703.298, 2406.497, 1841.645)  # fmt: skip
_L2A_STD = (1164.883, 1205.586, 1223.713, 1399.638, 1403.298, 1378.513, 1434.924, 1491.141,
            1454.089, 1660.395, 1473.248, 1365.08)  # fmt: skip

STATS: dict[str, NormStats] = {
    "llama3-ms-clip": NormStats(
        "llama3-ms-clip", dict(zip(_L2A_BANDS, _L2A_MEAN)), dict(zip(_L2A_BANDS, _L2A_STD)), 1.0
    ),
    "openai": NormStats(
        "openai",
        {"red": 0.48145466, "green": 0.4578275, "blue": 0.40821073},
        {"red": 0.26862954, "green": 0.26130258, "blue": 0.27577711},
        255.0,
    ),
    "half": NormStats(
        "half",
        {"red": 0.5, "green": 0.5, "blue": 0.5},
        {"red": 0.5, "green": 0.5, "blue": 0.5},
        255.0,
    ),
}


def get_stats(name: str) -> NormStats:
    """Return a registered statistics set."""
    if name not in STATS:
        raise BandError(f"unknown statistics set {name!r}; known: {sorted(STATS)}")
    return STATS[name]
