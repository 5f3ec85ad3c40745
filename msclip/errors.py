"""Every exception class of msclip, in one place.

Each error raised on bad input is one of these, and its message names the bad value and the fix
(the pattern of torchgeo's ``DatasetNotFoundError``). All derive from :class:`MSCLIPError`, so
``except msclip.errors.MSCLIPError`` catches everything msclip raises on purpose, and each also
subclasses the built-in class a caller would naturally catch (``ValueError``,
``FileNotFoundError``, ``RuntimeError``). Library messages never mention command-line flags: the
command-line programs add that hint (:mod:`msclip.cli.common`).

The modules that raise them re-export them under their old names (``msclip.index.store
.IndexNotFoundError`` is ``msclip.errors.IndexNotFoundError``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BadSampleError",
    "BandError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClassNameError",
    "ConfigError",
    "CorruptIndexError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DimensionMismatchError",
    "DuplicateClassError",
    "DuplicateSourceError",
    "EmptyIndexError",
    "ImageSetError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "InvalidEmbeddingsError",
    "LayoutError",
    "MSCLIPError",
    "MetadataError",
    "MetricInputError",
    "ModelInfoError",
    "OutputPathError",
    "PerformanceWarning",
    "PrecisionError",
    "RasterReadError",
    "RecordError",
    "SyntheticDataError",
    "TemplateError",
    "TemplatesNotShippedError",
    "TilingError",
    "TooManyBadSamplesError",
    "UnknownBandError",
    "UnknownClassError",
    "UnknownDatasetError",
    "UnknownModelError",
    "UnknownTemplateSetError",
    "UnsupportedFormatError",
    "UsageError",
    "WeightsNotFoundError",
]


class MSCLIPError(Exception):
    """Base class of every msclip error.

    Args:
        *args: the message (as for any exception).
        param: the name of the argument whose value is at fault, when there is one; command-line
            programs turn it into the flag that sets it.
    """

    #: Name of the argument at fault (``None`` when the error is not about one argument).
    param: str | None = None

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        if param is not None:
            self.param = param


# -- bands, rasters, files ---------------------------------------------------------------------
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


class OutputPathError(MSCLIPError, OSError):
    """An output location cannot be written (read-only, or a file where a folder is needed)."""


class ImageSetError(MSCLIPError, ValueError):
    """An image specification names nothing, or a missing file or list."""


class TilingError(MSCLIPError, ValueError):
    """A raster cannot be tiled (smaller than a tile, bad tile parameters, no CRS when needed)."""


# -- models and weights ------------------------------------------------------------------------
class UnknownModelError(MSCLIPError, ValueError):
    """A model name that is neither registered nor a checkpoint file."""


class CheckpointError(MSCLIPError, ValueError):
    """A checkpoint file cannot be read or has an unknown layout."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model (missing, unexpected or differently shaped tensors)."""


class PrecisionError(MSCLIPError, ValueError):
    """A precision that is unknown or has no fast path on the device (fp16 on a CPU, int8 on a
    GPU)."""


class PerformanceWarning(UserWarning):
    """A setting that runs, but is expected to be much slower on this machine than the default
    (bf16 on a CPU without native bf16)."""


class WeightsNotFoundError(MSCLIPError, FileNotFoundError):
    """Weights are neither at the given path nor in the hub cache, and cannot be fetched."""


# -- zero-shot classification ------------------------------------------------------------------
class TemplateError(MSCLIPError, ValueError):
    """A template file is empty or holds a line without the ``{c}`` placeholder."""


class UnknownTemplateSetError(TemplateError):
    """A template set name that is neither shipped with msclip nor an existing file."""


class TemplatesNotShippedError(UnknownTemplateSetError):
    """A template set of the published protocol was named, but msclip does not ship it."""


class ClassNameError(MSCLIPError, ValueError):
    """Class names are missing, empty or cannot be read."""


class DuplicateClassError(ClassNameError):
    """Two class names are equal after normalisation (their probability columns would clash)."""


# -- embedding index ---------------------------------------------------------------------------
class IndexNotFoundError(MSCLIPError, FileNotFoundError):
    """The path holds no index (no ``manifest.json``)."""


class IndexFormatError(MSCLIPError, ValueError):
    """The manifest is unreadable, of another format, or of an unsupported format version."""


class CorruptIndexError(IndexFormatError):
    """Files named by the manifest are missing or shorter than the manifest says."""


class IndexMismatchError(MSCLIPError, ValueError):
    """The index was built by another model than the one asking (see ``fields``)."""

    def __init__(self, message: str, fields: Sequence[str] = (), param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.fields: tuple[str, ...] = tuple(fields)


class DimensionMismatchError(MSCLIPError, ValueError):
    """Vectors whose length differs from the index's embedding dimension."""


class InvalidEmbeddingsError(MSCLIPError, ValueError):
    """Embeddings or queries that are not a finite floating-point matrix of the right shape."""


class MetadataError(MSCLIPError, ValueError):
    """Metadata rows that do not match the embeddings or hold values the store cannot encode."""


class ModelInfoError(MSCLIPError, ValueError):
    """A model description that is not a JSON-serialisable mapping."""


class DuplicateSourceError(MSCLIPError, ValueError):
    """A source key added twice to one index."""


class IndexLockedError(MSCLIPError, RuntimeError):
    """Another process is writing to the index."""


class EmptyIndexError(MSCLIPError, ValueError):
    """A search over an index that holds no embeddings."""


# -- evaluation --------------------------------------------------------------------------------
class DatasetNotFoundError(MSCLIPError, FileNotFoundError):
    """A benchmark dataset (or a required file of it) is not where it is expected."""


class DatasetFormatError(MSCLIPError, ValueError):
    """A dataset is present but does not have the expected layout or content."""


class UnknownDatasetError(MSCLIPError, ValueError):
    """A dataset name that is neither built in nor a YAML file."""


class RecordError(MSCLIPError, ValueError):
    """A record file is unreadable or lacks required keys."""


class MetricInputError(MSCLIPError, ValueError):
    """Metric inputs have the wrong shape, dtype, range or option value."""


# -- training ----------------------------------------------------------------------------------
class ConfigError(MSCLIPError, ValueError):
    """A training option has a bad value (raised before any work starts)."""


class TooManyBadSamplesError(MSCLIPError, RuntimeError):
    """More samples are bad than ``max_bad_fraction`` allows."""


class BadSampleError(MSCLIPError, ValueError):
    """A table cannot be used at all (missing columns, no usable rows)."""


# -- command line ------------------------------------------------------------------------------
class UsageError(MSCLIPError, ValueError):
    """A command-line problem found before any work (message printed, exit status 2)."""


# -- synthetic data ----------------------------------------------------------------------------
class SyntheticDataError(MSCLIPError, ValueError):
    """An argument of the synthetic scene generator is out of range (size, count, split, array)."""


class UnknownClassError(SyntheticDataError):
    """A land-cover class name that the synthetic scene generator does not know."""
