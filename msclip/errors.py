"""Exception classes of msclip.

Every error raised on bad user input is one of these, and its message names the bad value and
the fix (the pattern of torchgeo's ``DatasetNotFoundError``). They subclass the built-in class a
caller would naturally catch (``ValueError``, ``FileNotFoundError``, ``RuntimeError``).
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "BandError",
    "CheckpointError",
    "CheckpointMismatchError",
    "HeadConfigError",
    "HeadInputError",
    "LayoutError",
    "MSCLIPError",
    "RasterReadError",
    "UnknownBandError",
    "UnknownModelError",
    "UnsupportedFormatError",
    "WeightsNotFoundError",
]


class MSCLIPError(Exception):
    """Base class of every msclip error."""


class BandError(MSCLIPError, ValueError):
    """A band set cannot be used (wrong count, duplicates, nothing the model can read)."""


class UnknownBandError(BandError, KeyError):
    """A band name is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class LayoutError(MSCLIPError, ValueError):
    """The axis layout (bands first or last) of an array cannot be determined."""


class RasterReadError(MSCLIPError, OSError):
    """A raster file is missing, empty, corrupt or unreadable."""


class UnsupportedFormatError(MSCLIPError, ValueError):
    """A file extension that no reader handles."""


class UnknownModelError(MSCLIPError, ValueError):
    """A model name that is neither registered nor a checkpoint file."""


class CheckpointError(MSCLIPError, ValueError):
    """A checkpoint file cannot be read or has an unknown layout."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model (missing, unexpected or differently shaped tensors)."""


class WeightsNotFoundError(MSCLIPError, FileNotFoundError):
    """Weights are neither at the given path nor in the hub cache, and cannot be fetched."""


# --------------------------------------------------------------------------------------------
# Heads: probes on frozen features and fine-tuning modes (msclip.heads)
# --------------------------------------------------------------------------------------------


class HeadInputError(MSCLIPError, ValueError):
    """Features, labels or targets given to a probe or head cannot be used (empty set, NaN,
    labels out of range, a single class, mismatched lengths)."""


class HeadConfigError(MSCLIPError, ValueError):
    """A probe or fine-tuning setting is invalid (unknown mode, ``k < 1``, negative rank ...)."""


class AdapterError(CheckpointError):
    """A LoRA adapter file cannot be read, or does not fit the model it is loaded onto."""
