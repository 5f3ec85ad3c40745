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

import logging
import os
import stat
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = [
    "AdapterError",
    "AlphaBandWarning",
    "BadSampleError",
    "BandCoverageError",
    "BandCoverageWarning",
    "BandError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClassNameError",
    "ConfigError",
    "ContrastiveInputError",
    "CorruptIndexError",
    "DatasetFormatError",
    "DatasetLabelError",
    "DatasetNotFoundError",
    "DecoderError",
    "DescribedBandsWarning",
    "DeviceError",
    "DimensionMismatchError",
    "DuplicateClassError",
    "DuplicateSourceError",
    "EmptyIndexError",
    "GenericBandNamesWarning",
    "HeadConfigError",
    "HeadInputError",
    "ImageSetError",
    "ImageTypeError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "InputTypeError",
    "InvalidArgumentError",
    "InvalidEmbeddingsError",
    "KernelUnavailableError",
    "LabelError",
    "LabelRasterMismatchError",
    "LayoutError",
    "LossImplError",
    "MSCLIPError",
    "MSCLIPWarning",
    "MetadataError",
    "MetricInputError",
    "ModelInfoError",
    "NodataFillWarning",
    "OutOfRangeBandWarning",
    "OutputPathError",
    "PerformanceWarning",
    "PrecisionError",
    "PrecisionWarning",
    "PredictorOutputError",
    "ProcessGroupError",
    "RasterReadError",
    "RasterSizeError",
    "RasterTooLargeError",
    "RasterWriteError",
    "RecordError",
    "SearchDeviceError",
    "SmallRasterWarning",
    "SyntheticDataError",
    "TemplateError",
    "TemplatesNotShippedError",
    "TilingError",
    "TooManyBadSamplesError",
    "TrainingDivergedError",
    "UndeclaredNodataWarning",
    "UnknownBandError",
    "UnknownClassError",
    "UnknownDatasetError",
    "UnknownModelError",
    "UnknownTemplateSetError",
    "UnsupportedFormatError",
    "UsageError",
    "WeightsNotFoundError",
    "invalid_rows",
    "not_a_file",
    "shown_when_quiet",
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


class BandCoverageError(BandError):
    """The input lacks most of the model's bands, or is display-scaled 8-bit where the model reads
    reflectance (raised instead of :class:`BandCoverageWarning` when asked to be strict)."""


class RasterSizeError(MSCLIPError, ValueError):
    """A raster too small (under one patch) or too large (far beyond the model input) to classify
    as one image."""


class RasterTooLargeError(RasterSizeError):
    """A raster far larger than the model input given as one image (memory would explode)."""


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


def invalid_rows(bad: Any) -> NoReturn:
    """Raise :class:`InvalidEmbeddingsError` naming the embeddings rows ``bad`` (indices, the
    first ten shown) as holding NaN or infinity."""
    rows = [int(r) for r in list(bad)[:10]]
    raise InvalidEmbeddingsError(
        f"embeddings rows {rows}{' ...' if len(bad) > 10 else ''} contain NaN or infinity (an "
        "image of missing pixels, a failed encoding, or a damaged file); drop or fix them "
        "before searching"
    )


#: What a path that exists but is not a regular file is, by its ``stat`` mode test.
_PATH_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def not_a_file(path: str | os.PathLike, give: str) -> str | None:
    """Why ``path`` cannot be read as a file, as the words that follow it in a message, or
    ``None`` for a regular file (or a link to one).

    ``"not found"`` for a path that does not exist; otherwise what the path is and the fix,
    ``give`` naming what to give instead (``"a YAML file"``): ``"is a folder, not a file: give
    a YAML file"``, ``"is a character device, not a file: give a YAML file"`` (``/dev/null``), so
    that a folder or a device given for a file is not reported as missing.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "not found"
    except OSError as err:
        return f"cannot be read ({err.strerror or err}): give {give} you can read"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return f"is a folder, not a file: give {give}"
    kind = next((name for test, name in _PATH_KINDS if test(mode)), "not a regular file")
    return f"is {kind}, not a file: give {give}"


class MetadataError(MSCLIPError, ValueError):
    """Metadata rows that do not match the embeddings or hold values the store cannot encode."""


class ModelInfoError(MSCLIPError, ValueError):
    """A model description that is not a JSON-serialisable mapping."""


class DuplicateSourceError(MSCLIPError, ValueError):
    """A source key added twice to one index."""


class IndexLockedError(MSCLIPError, RuntimeError):
    """Another process is writing to the index."""


class ProcessGroupError(MSCLIPError, RuntimeError):
    """Another process of a ``torch.distributed`` group stopped, or gave no sign of life, before
    it did its share (a sharded index build)."""


class EmptyIndexError(MSCLIPError, ValueError):
    """A search over an index that holds no embeddings."""


# -- evaluation --------------------------------------------------------------------------------
class DatasetNotFoundError(MSCLIPError, FileNotFoundError):
    """A benchmark dataset (or a required file of it) is not where it is expected."""


class DatasetFormatError(MSCLIPError, ValueError):
    """A dataset is present but does not have the expected layout or content."""


class DatasetLabelError(DatasetFormatError):
    """A sample's label is outside the dataset's nomenclature (its class list, or for
    BigEarthNet the 43 CORINE labels of the 43-to-19 mapping). Met while reading samples, it
    fails the dataset instead of being skipped as an unreadable file: the data or the class list
    is wrong, not one file."""


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


class TrainingDivergedError(MSCLIPError, RuntimeError):
    """A training step's loss or gradient is not finite: stepping would make every weight NaN."""


class BadSampleError(MSCLIPError, ValueError):
    """A table cannot be used at all (missing columns, no usable rows)."""


# -- warnings ----------------------------------------------------------------------------------
#: The logger of warnings that the programs show under ``--quiet`` too (which hides warnings
#: about settings): inputs dropped or left unused, or results that may be wrong. A logger of its
#: own, enabled alone under ``--quiet``, so that no other warning is even made into a record then.
#: msclip's warning classes say the same with ``shown_when_quiet = True``.
shown_when_quiet = logging.getLogger("msclip.shown_when_quiet")


# Warnings carry no file name in their message, so that a run can count how many inputs each one
# concerns and report it once (:mod:`msclip.encode`); the file goes to the debug log.
class MSCLIPWarning(UserWarning):
    """Base class of msclip's warnings."""

    #: whether the programs show it under ``--quiet`` too (:data:`shown_when_quiet`)
    shown_when_quiet = False


class PerformanceWarning(MSCLIPWarning):
    """A setting that runs, but is expected to be much slower on this machine than the default
    (bf16 on a CPU without native bf16)."""


class PrecisionWarning(MSCLIPWarning):
    """The precision ``auto`` would pick computes wrong results on this machine (bf16 whose
    embeddings disagree with float32's, :mod:`msclip.precision_check`): another one is used; or
    the precision asked for loses what the run needs (weights trained in bf16 themselves)."""


class BandCoverageWarning(MSCLIPWarning):
    """The input lacks most of the model's bands, or is display-scaled 8-bit instead of
    reflectance: the model's answer says little."""

    shown_when_quiet = True


class OutOfRangeBandWarning(MSCLIPWarning):
    """Input bands outside the model's spectral range are ignored."""


class NodataFillWarning(MSCLIPWarning):
    """Nodata or NaN pixels were filled with the band mean."""


class UndeclaredNodataWarning(MSCLIPWarning):
    """Reflectance data that declares no nodata value holds, in many pixels, one value in every
    band that no surface gives in all bands at once (0, a negative fill such as -9999, the
    integer type's largest): such pixels were read as data."""

    shown_when_quiet = True


class SmallRasterWarning(MSCLIPWarning):
    """A raster much smaller than the model input is upsampled."""


class DescribedBandsWarning(MSCLIPWarning):
    """A file names its bands (its band descriptions) otherwise than the band names given for
    files that do not: the file's own names are used."""

    shown_when_quiet = True


class AlphaBandWarning(MSCLIPWarning):
    """A band marked as alpha (a transparency mask) holds values a mask does not, as a data band
    would: most often the near-infrared band of a four-band 8-bit file that a writer's default
    marked alpha. It is still read as a mask."""

    shown_when_quiet = True


class GenericBandNamesWarning(MSCLIPWarning):
    """The bands were taken from the band count: the descriptions are generic numbering
    (``band_1`` ...), or four unnamed bands, whose order differs between products."""

    shown_when_quiet = True


# -- command line ------------------------------------------------------------------------------
class UsageError(MSCLIPError, ValueError):
    """A command-line problem found before any work (message printed, exit status 2)."""


# -- synthetic data ----------------------------------------------------------------------------
class SyntheticDataError(MSCLIPError, ValueError):
    """An argument of the synthetic scene generator is out of range (size, count, split, array)."""


class UnknownClassError(SyntheticDataError):
    """A land-cover class name that the synthetic scene generator does not know."""


# -- heads: probes, fine-tuning, decoders ------------------------------------------------------
class HeadInputError(MSCLIPError, ValueError):
    """Features, labels or targets given to a probe or head cannot be used (empty set, NaN,
    labels out of range, a single class, mismatched lengths)."""


class HeadConfigError(MSCLIPError, ValueError):
    """A probe or fine-tuning setting is invalid (unknown mode, ``k < 1``, negative rank ...)."""


class AdapterError(CheckpointError):
    """A LoRA adapter file cannot be read, or does not fit the model it is loaded onto."""


# -- kernels (msclip.cuda) --------------------------------------------------------------------
class KernelUnavailableError(MSCLIPError, RuntimeError):
    """A Triton kernel was asked for where it cannot run (no Triton, no GPU, bad self-test)."""


class LossImplError(MSCLIPError, ValueError):
    """An unknown loss implementation (flag, argument or environment variable)."""


class ContrastiveInputError(MSCLIPError, ValueError):
    """Embeddings, temperature or shard that do not describe one contrastive batch."""


class SearchDeviceError(MSCLIPError, ValueError):
    """A search device or storage format that cannot be used."""


class InputTypeError(MSCLIPError, TypeError):
    """An argument of a type the function does not take (a number where a model name or path is
    needed, an array where a tensor is)."""


class InvalidArgumentError(MSCLIPError, ValueError):
    """An argument value the function does not take (a seed out of range, an unknown pooling or
    resize mode, block indices the image tower lacks)."""


class ImageTypeError(InputTypeError):
    """An input that is not an image: not a path, array, tensor or picture, or an array of a
    non-numeric dtype (boolean, complex, object)."""


class DeviceError(MSCLIPError, ValueError):
    """A device asked for that this machine cannot use (a CUDA device without a usable GPU)."""


# -- dense heads (decoders, dense losses and metrics, scene prediction) ------------------------
class DecoderError(MSCLIPError, ValueError):
    """A decoder name that is not registered, or a decoder configuration that cannot work."""


class LabelError(MSCLIPError, ValueError):
    """Per-pixel labels or targets that do not fit the task (class out of range, wrong shape,
    class weights of the wrong length)."""


class PredictorOutputError(MSCLIPError, ValueError):
    """A dense predictor returned outputs of the wrong shape for the tiles it was given."""


class RasterWriteError(MSCLIPError, ValueError):
    """A raster cannot be written as asked (sizes, band names or rows that do not fit it)."""


class LabelRasterMismatchError(HeadInputError):
    """An image and its label (or target) raster are not on the same grid (CRS, transform or
    size differ); the message names both files."""
