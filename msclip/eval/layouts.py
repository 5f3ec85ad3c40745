"""On-disk layouts of the benchmark datasets: how samples are found and how one is read.

Four layouts cover the published Llama3-MS-CLIP benchmark (Marimo et al., ECML PKDD 2025,
arXiv:2503.15969) and custom datasets; ``benchmark_datasets/README.md`` documents the trees.

* ``folder``: one folder per class holding image files (EuroSAT, RESISC45, AID, METER-ML in
  class folders, custom sets), optionally restricted to the files listed in a split file (the
  splits of Neumann et al. 2019, "In-domain representation learning for remote sensing",
  arXiv:1911.06721, for EuroSAT and RESISC45).
* ``csv``: a CSV file per split with an image path and a label column (ForestNet, Irvin et al.
  2020, arXiv:2011.05479; custom sets, single- or multi-label).
* ``bigearthnet``: BigEarthNet v1 Sentinel-2 patch folders (Sumbul et al., IGARSS 2019): one
  GeoTIFF per band (``<patch>_B01.tif`` ... ``<patch>_B12.tif``, ``_B8A.tif``) at 10, 20 or 60 m,
  resampled bilinearly to the 10 m grid (120 x 120 pixels) before stacking
  (:func:`resample_to`), and the 43 CORINE
  labels of ``<patch>_labels_metadata.json`` mapped to the 19-class nomenclature of Sumbul et al.
  (2021, "BigEarthNet-MM"). Split files are those of BigEarthNet-MM (``S2 patch,S1 patch`` rows).
* ``meterml``: the METER-ML release (Zhu et al. 2022, arXiv:2207.11166): ``<split>_dataset.geojson``
  whose features name an image folder (``Image_Folder``) and a facility type (``Type``); each
  folder holds ``sentinel-2-10m.npy`` (72 x 72 x 4: B04, B03, B02, B08), ``sentinel-2-20m.npy``
  (36 x 36 x 6: B05, B06, B07, B8A, B11, B12), ``sentinel-2-60m.npy`` (12 x 12 x 3: B01, B09,
  B10) and ``naip.png``. Without the GeoJSON the class-folder layout is used.

Every reader returns bands-first data with the canonical name of each channel, so the model's
:class:`~msclip.spectral.SpectralPreprocess` selects and orders bands by name. Readers are plain
picklable objects (they run inside DataLoader workers).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msclip.errors import DatasetFormatError, DatasetLabelError, DatasetNotFoundError
from msclip.io import read_raster
from msclip.spectral.bands import EUROSAT_MS_BANDS as _EUROSAT_MS_BANDS
from msclip.spectral.bands import resolve_band
from msclip.wording import plural

__all__ = [
    "BIGEARTHNET_BANDS",
    "BIGEARTHNET_GRID_BANDS",
    "EUROSAT_MS_BANDS",
    "METERML_PRODUCTS",
    "BigEarthNetLayout",
    "CsvLayout",
    "DatasetFormatError",
    "DatasetIndex",
    "DatasetLabelError",
    "DatasetNotFoundError",
    "FolderLayout",
    "Layout",
    "MeterMLLayout",
    "RGBConversion",
    "SampleRef",
    "resample_to",
    "to_rgb8",
]

logger = logging.getLogger(__name__)

#: Band order of the EuroSAT multispectral GeoTIFFs (B8A last): the ``eurosat`` sensor's
#: (:data:`msclip.spectral.bands.EUROSAT_MS_BANDS`).
EUROSAT_MS_BANDS: tuple[str, ...] = _EUROSAT_MS_BANDS

#: Bands of a BigEarthNet v1 Sentinel-2 patch (L2A: no B10), one GeoTIFF each.
BIGEARTHNET_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)  # fmt: skip

#: The 10 m bands whose grid (120 x 120 pixels) every other band is resampled to.
BIGEARTHNET_GRID_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")

#: METER-ML Sentinel-2 products: file name -> band names of its channels (channel-last arrays).
METERML_PRODUCTS: dict[str, tuple[str, ...]] = {
    "sentinel-2-10m.npy": ("B04", "B03", "B02", "B08"),
    "sentinel-2-20m.npy": ("B05", "B06", "B07", "B8A", "B11", "B12"),
    "sentinel-2-60m.npy": ("B01", "B09", "B10"),
}

#: METER-ML ``Type`` values that mean "no facility" (mapped to the ``Negative`` class).
METERML_NEGATIVE_TYPES: tuple[str, ...] = ("Negative", "Roundabout")


# -- samples and indexes ---------------------------------------------------------------------
@dataclass(frozen=True)
class SampleRef:
    """One sample of a dataset.

    Attributes:
        id: identifier shown in reports (path relative to the dataset root, or patch name).
        path: the image file, or the sample's folder for multi-file layouts.
        target: class index (single-label), tuple of class indices (multi-label), or ``None``
            when the layout reads labels with the image (BigEarthNet).
    """

    id: str
    path: str
    target: int | tuple[int, ...] | None = None


@dataclass
class DatasetIndex:
    """The samples of one split of a dataset and how they were found.

    Attributes:
        root: the dataset root.
        samples: the samples, in a deterministic order.
        split_source: which file defined the split, or a note that every image was used.
        detail: where the images were found (for reports).
        skipped: reason -> number of entries left out while indexing.
    """

    root: Path
    samples: list[SampleRef]
    split_source: str
    detail: str
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RGBConversion:
    """Turns reflectance bands into an 8-bit true-colour picture for RGB models.

    Attributes:
        bands: the file bands that give red, green and blue, in that order.
        max_value: the digital number mapped to 255 (values are scaled linearly, rounded and
            clipped to 0-255). 2750 is the scale the EuroSAT authors used to make EuroSAT_RGB
            from the 13-band files (``gdal_translate -scale 0 2750``, EuroSAT README), so
            RGB versions of other Sentinel-2 data look like the RGB benchmark images.
    """

    bands: tuple[str, str, str] = ("B04", "B03", "B02")
    max_value: float = 2750.0


def to_rgb8(
    data: np.ndarray, names: Sequence[str], rgb: RGBConversion, where: str = "image"
) -> tuple[np.ndarray, tuple[str, str, str]]:
    """An 8-bit ``[3, H, W]`` picture with bands ``red, green, blue`` from named bands.

    Raises:
        DatasetFormatError: a band of the conversion is not among ``names``.
    """
    canonical = [resolve_band(n).name for n in names]
    idx = []
    for b in rgb.bands:
        name = resolve_band(b).name
        if name not in canonical:
            raise DatasetFormatError(
                f"{where}: band {name} needed for the RGB picture is not among {canonical}"
            )
        idx.append(canonical.index(name))
    x = data[idx].astype(np.float32) * np.float32(255.0 / rgb.max_value)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), ("red", "green", "blue")


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Output pixel centres mapped onto input pixel centres (half-pixel convention), clamped at
    # the edges: the rule of GDAL's bilinear resampling when upsampling.
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, x - i0


def resample_to(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of ``[C, h, w]`` to ``[C, *shape]``, as float32.

    Half-pixel centres with edge pixels replicated, computed in float64; integer inputs are
    rounded half up to integers afterwards. This is what a rasterio/GDAL read with
    ``out_shape`` and ``Resampling.bilinear`` returns for integer bands (the BigEarthNet reader
    of torchgeo and of the original release), up to exact ``.5`` ties.
    """
    if tuple(data.shape[1:]) == tuple(shape):
        return data.astype(np.float32, copy=False)
    x = data.astype(np.float64)
    r0, r1, wr = _bilinear_axis(x.shape[1], shape[0])
    x = x[:, r0, :] * (1.0 - wr)[None, :, None] + x[:, r1, :] * wr[None, :, None]
    c0, c1, wc = _bilinear_axis(x.shape[2], shape[1])
    x = x[:, :, c0] * (1.0 - wc)[None, None, :] + x[:, :, c1] * wc[None, None, :]
    if np.issubdtype(data.dtype, np.integer):
        x = np.floor(x + 0.5)
    return x.astype(np.float32)


def _sorted_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and
        not p.name.startswith(".")
    )  # fmt: skip


#: Folders that archives and operating systems add beside the data (a zip made on macOS, a
#: Windows drive's own folders): never a class, never an error.
OS_FOLDERS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})


def _split_samples(
    entries: Sequence[str], samples: Sequence[Any], split_file: Path, image_root: Path
) -> set[str]:
    """The paths of the ``samples`` (of class folders) that a split file's ``entries`` name.

    An entry is matched by its name without extension (EuroSAT's lists name ``.jpg`` files of
    the ``.tif`` release), or by its whole name when that is a file's name without extension
    (``tile_51.5_7.2`` names ``tile_51.5_7.2.tif``), within its class folder when it gives one
    (``wheat/0001.tif``); a bare name that several class folders hold is refused, not taken
    from each of them.

    Raises:
        DatasetFormatError: entries that name no image, or a bare name that names several.
    """
    by_stem: dict[str, list[Any]] = {}
    for s in samples:
        by_stem.setdefault(Path(s.path).stem, []).append(s)
    classes = {Path(s.path).parent.name for s in samples}
    chosen: set[str] = set()
    missing: list[str] = []
    ambiguous: list[tuple[str, list[str]]] = []
    for entry in entries:
        e = Path(entry.replace("\\", "/"))
        found: list[Any] = []
        # An entry without extension is a whole stem: "tile_51.5_7.2" is not "tile_51.5_7".
        for key in (e.name, e.stem):
            found = by_stem.get(key, [])
            if e.parent.name in classes:  # its class folder decides
                found = [s for s in found if Path(s.path).parent.name == e.parent.name]
            if found:
                break
        if not found:
            missing.append(entry)
        elif len(found) > 1:
            ambiguous.append((entry, [s.path for s in found]))
        else:
            chosen.add(found[0].path)
    if missing:
        raise DatasetFormatError(
            f"split file {split_file} lists {plural(len(missing), 'image')} not under "
            f"{image_root} (e.g. {missing[:3]}); the dataset is incomplete"
        )
    if ambiguous:
        entry, paths = ambiguous[0]
        raise DatasetFormatError(
            f"split file {split_file} lists {plural(len(ambiguous), 'name')} that several class "
            f"folders hold (e.g. {entry!r}: {paths[:3]}); give each entry with its class folder "
            "(class/name.tif)"
        )
    return chosen


def _read_split_list(path: Path) -> list[str]:
    """Entries of a split file: one file name per line (commas included: a name may hold one),
    or the first column of a ``.csv``."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of a name
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"cannot read split file {path}: {err}") from err
    entries: dict[str, None] = {}  # ordered, each once
    repeated = 0
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.split(",")[0].strip() if path.suffix.lower() == ".csv" else line
            repeated += name in entries
            entries[name] = None
    if not entries:
        raise DatasetFormatError(f"split file {path} lists no samples")
    if repeated:  # a sample listed twice would count twice
        logger.warning("split file %s lists %s more than once; each is used once",
                       path, plural(repeated, "sample"))  # fmt: skip
    return list(entries)


def _find_split_file(root: Path, patterns: Sequence[str], split: str) -> Path | None:
    for pattern in patterns:
        p = root / pattern.format(split=split)
        if p.is_file():
            return p
    return None


def check_split_list(root: Path, patterns: Sequence[str], split: str) -> None:
    """Refuse ``split`` when the dataset has split lists but none for it: evaluating a misspelt
    split would read every image, train and test alike.

    Raises:
        DatasetFormatError: naming the lists that exist.
    """
    if _find_split_file(root, patterns, split) is not None:
        return
    others: set[str] = set()
    for pattern in patterns:
        if "{split}" not in pattern:
            continue
        head, tail = pattern.split("{split}", 1)
        for f in root.glob(pattern.format(split="*")):
            rel = f.relative_to(root).as_posix()
            if rel.startswith(head) and rel.endswith(tail) and len(rel) > len(head) + len(tail):
                others.add(rel[len(head) : len(rel) - len(tail)])
    if others:
        raise DatasetFormatError(
            f"{root} has no split list for split {split!r} "
            f"({', '.join(p.format(split=split) for p in patterns)}) but has lists for "
            f"{sorted(others)}: choose one of them (split)",
            param="split",
        )


def _missing_in_folders(
    samples: Sequence[SampleRef], names: Callable[[SampleRef], Sequence[str]]
) -> list[str]:
    """``<sample id>/<file>`` of each of ``names(ref)`` that its sample's folder lacks
    (``<sample id>/`` for a folder that is not there): one directory listing per sample."""
    out = []
    for ref in samples:
        try:
            present = set(os.listdir(ref.path))
        except (FileNotFoundError, NotADirectoryError):
            out.append(f"{ref.id}/")
            continue
        out += [f"{ref.id}/{f}" for f in names(ref) if f not in present]
    return out


def _note_absent_classes(
    labels: Sequence[str],
    samples: Sequence[SampleRef],
    listed_in: Path,
    skipped: dict[str, int],
    known_empty: Sequence[str] = (),
) -> None:
    """Warn about, and record in ``skipped``, the classes a split file gives no sample of.

    Such a class stays among the zero-shot choices (it can take predictions) but has nothing
    to measure, so balanced accuracy and macro-F1 leave it out: the record says so, as it
    does for a class folder without images (``known_empty``, noted already).
    """
    present: set[int] = set()
    for s in samples:
        if isinstance(s.target, int):
            present.add(s.target)
        elif s.target is not None:
            present.update(s.target)
    absent = [c for i, c in enumerate(labels) if i not in present and c not in known_empty]
    if not absent:
        return
    logger.warning(
        "%s lists no sample of %d of %d classes (%s); they remain zero-shot choices but are "
        "left out of the per-class metrics (balanced accuracy, macro-F1)",
        listed_in, len(absent), len(labels), ", ".join(absent[:10]),
    )  # fmt: skip
    skipped[f"classes not in {listed_in.name}: {', '.join(absent[:10])}"] = len(absent)


def _refuse_missing(missing: Sequence[str], listed_in: str, where: str) -> None:
    """Refuse a split whose listed samples are not all on disk.

    A published split evaluated without some of its samples gives numbers that cannot be
    compared with the published ones, so an incomplete download fails the dataset (as a split
    file naming a missing image does in the class-folder layout) instead of being evaluated on
    what is there. Files that exist but cannot be read are another matter: they are skipped
    and counted while encoding.

    Args:
        missing: the samples (with the file they lack) that are not on disk.
        listed_in: the split file (or CSV, GeoJSON) that lists them.
        where: where the files were expected, for the message.

    Raises:
        DatasetFormatError: ``missing`` is not empty.
    """
    if missing:
        raise DatasetFormatError(
            f"{listed_in} lists {len(missing)} sample(s) that are not on disk under {where} "
            f"(e.g. {list(missing[:3])}); the dataset is incomplete: complete the download "
            "(or remove the samples from the split list for a custom set)"
        )


class Layout:
    """Base class of the layout readers.

    Args:
        labels: the class labels as they appear in the data, in class-index order.
        bands: band names of the files' channels in file order (``None``: the files' own band
            descriptions, else the band-count default of :func:`msclip.read_raster`).
        sensor: sensor whose local band names apply.
        array_layout: ``CHW``/``HWC`` for ``.npy``/``.npz`` files.
        rgb: convert reflectance to an 8-bit picture for RGB models.
        multi_label: targets are sets of classes.
    """

    name = "base"
    #: Whether :attr:`needed_bands` is honoured (per-band or per-product files).
    reads_band_subsets = False

    def __init__(
        self,
        labels: Sequence[str],
        bands: Sequence[str] | None = None,
        sensor: str | None = None,
        array_layout: str | None = None,
        rgb: RGBConversion | None = None,
        multi_label: bool = False,
    ) -> None:
        self.labels = tuple(labels)
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.bands = None if bands is None else tuple(bands)
        self.sensor = sensor
        self.array_layout = array_layout
        self.rgb = rgb
        self.multi_label = multi_label
        #: Only these file bands are read when set (bands the model cannot use are skipped).
        self.needed_bands: tuple[str, ...] | None = None

    # -- to be provided by each layout ---------------------------------------------------------
    def index(self, root: Path, split: str) -> DatasetIndex:
        """Find the samples of ``split`` under ``root``."""
        raise NotImplementedError

    def read(self, ref: SampleRef) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        """Data ``[C, H, W]``, canonical band names and nodata value of one sample."""
        raise NotImplementedError

    def file_bands(self) -> tuple[str, ...] | None:
        """Bands every sample holds, when known without opening a file (for band subsetting)."""
        return None

    # -- shared ------------------------------------------------------------------------------
    def target(self, ref: SampleRef) -> int | tuple[int, ...]:
        """The target of one sample (read from disk by layouts that store labels per sample)."""
        if ref.target is None:
            raise DatasetFormatError(f"{ref.path}: no label known for this sample")
        return ref.target

    def load(self, ref: SampleRef) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        """:meth:`read`, then the 8-bit RGB conversion when configured."""
        data, names, nodata = self.read(ref)
        if self.rgb is not None and data.dtype != np.uint8:
            data, names = to_rgb8(data, names, self.rgb, ref.path)
            nodata = None
        return data, tuple(names), nodata

    def _read_file(self, path: str) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        r = read_raster(path, bands=self.bands, layout=self.array_layout, sensor=self.sensor)
        return r.data, r.bands, r.nodata

    def _label_to_index(self, label: str, where: str) -> int:
        if label not in self.label_index:
            raise DatasetLabelError(
                f"{where}: label {label!r} is not one of the {len(self.labels)} classes "
                f"{list(self.labels)}; fix the data or the class-name list"
            )
        return self.label_index[label]


# -- class folders ---------------------------------------------------------------------------
class FolderLayout(Layout):
    """``<root>/[<image dir>/]<class label>/<image>`` with an optional split file.

    Args:
        image_dirs: folders under the root (tried in order, ``""`` = the root itself) that may
            hold the class folders.
        extensions: image file suffixes.
        split_files: split-file name patterns with ``{split}`` (tried in order, in the root). A
            split file lists image file names, one per line; names match by stem, so a list of
            ``.jpg`` names selects the same samples among ``.tif`` files.
        ignore_unknown_folders: skip folders that are not classes instead of failing.
        **kwargs: see :class:`Layout`.
    """

    name = "folder"

    def __init__(
        self,
        labels: Sequence[str],
        image_dirs: Sequence[str] = ("",),
        extensions: Sequence[str] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".npz"),
        split_files: Sequence[str] = (),
        ignore_unknown_folders: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(labels, **kwargs)
        self.image_dirs = tuple(image_dirs)
        self.extensions = tuple(extensions)
        self.split_files = tuple(split_files)
        self.ignore_unknown_folders = ignore_unknown_folders

    def file_bands(self) -> tuple[str, ...] | None:
        return self.bands

    def _has_class_folders(self, folder: Path) -> bool:
        if not folder.is_dir():
            return False
        exts = tuple(e.lower() for e in self.extensions)
        for label in self.labels:
            d = folder / label
            if d.is_dir() and any(
                p.suffix.lower() in exts for p in d.iterdir() if not p.name.startswith(".")
            ):
                return True
        return False

    def image_root(self, root: Path) -> Path:
        """The folder holding the class folders.

        Raises:
            DatasetFormatError: no candidate folder holds a class folder with images.
        """
        for sub in self.image_dirs:
            folder = root / sub if sub else root
            if self._has_class_folders(folder):
                return folder
        tried = [str(root / s) if s else str(root) for s in self.image_dirs]
        raise DatasetFormatError(
            f"no class folders with {'/'.join(self.extensions)} images found in {tried}; expected "
            f"<folder>/<class>/<image> with classes such as {list(self.labels[:3])}"
        )

    def index(self, root: Path, split: str) -> DatasetIndex:
        import unicodedata

        def nfc(name: str) -> str:  # macOS archives store names decomposed (NFD): e + accent
            return unicodedata.normalize("NFC", name)

        image_root = self.image_root(root)
        known = {nfc(label) for label in self.labels}
        folders = {nfc(d.name): d for d in image_root.iterdir() if d.is_dir()}
        unknown = sorted(
            d.name for n, d in folders.items()
            if n not in known and not d.name.startswith(".") and d.name not in OS_FOLDERS
        )  # fmt: skip
        skipped: dict[str, int] = {}
        if unknown:
            if not self.ignore_unknown_folders:
                raise DatasetFormatError(
                    f"{image_root} holds folders that are not classes: {unknown[:10]}; the "
                    f"classes are {list(self.labels)}. Remove them or fix the class-name list"
                )
            skipped["folders that are not classes"] = len(unknown)
        samples = []
        empty = []
        for i, label in enumerate(self.labels):
            d = folders.get(nfc(label), image_root / label)
            files = _sorted_files(d, self.extensions) if d.is_dir() else []
            if not files:
                empty.append(label)
                continue
            stems: dict[str, Path] = {}
            for p in files:
                if p.stem in stems:  # a.tif and a.TIFF: one sample, or two? say so
                    raise DatasetFormatError(
                        f"{stems[p.stem]} and {p.name} share the name {p.stem!r}: a sample "
                        "must be one file; remove one of them"
                    )
                stems[p.stem] = p
                samples.append(SampleRef(str(p.relative_to(root)), str(p), i))
        if empty:
            # an incomplete download: the metrics are of the other classes only, and say so
            logger.warning(
                "%s: no images for %d of %d classes (%s); they are left out of the metrics",
                image_root, len(empty), len(self.labels), ", ".join(empty[:10]),
            )  # fmt: skip
            skipped[f"classes without images: {', '.join(empty[:10])}"] = len(empty)
        split_file = _find_split_file(root, self.split_files, split)
        if split_file is None and root.name in self.image_dirs:
            # the root is the image folder itself (torchgeo's NWPU-RESISC45/): lists beside it
            split_file = _find_split_file(root.parent, self.split_files, split)
        if split_file is None:
            if self.split_files:
                names = [p.format(split=split) for p in self.split_files]
                logger.warning(
                    "%s: no split file (%s); evaluating every image under %s",
                    root, ", ".join(names), image_root,
                )  # fmt: skip
            source = f"all images under {image_root} (no split file)"
        else:
            chosen = _split_samples(_read_split_list(split_file), samples, split_file, image_root)
            skipped_n = len(samples) - len(chosen)
            samples = [s for s in samples if s.path in chosen]
            if skipped_n:
                skipped[f"not in {split_file.name}"] = skipped_n
            _note_absent_classes(self.labels, samples, split_file, skipped, empty)
            source = str(split_file)
        if not samples:
            raise DatasetFormatError(f"no images found in the class folders of {image_root}")
        return DatasetIndex(root, samples, source, f"class folders under {image_root}", skipped)

    def read(self, ref: SampleRef) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        return self._read_file(ref.path)


# -- CSV splits ------------------------------------------------------------------------------
class CsvLayout(Layout):
    """``<root>/<csv file>`` with an image path and a label column per row.

    Args:
        csv_files: CSV name patterns with ``{split}`` (tried in order, in the root).
        path_column: column holding the image path (relative to the root).
        label_column: column holding the label; for multi-label data, labels separated by
            ``label_separator``.
        image_template: turns the path column into the image file, e.g.
            ``"{path}/images/visible/composite.png"`` (ForestNet).
        label_separator: separator of several labels in one cell (multi-label).
        **kwargs: see :class:`Layout`.
    """

    name = "csv"

    def __init__(
        self,
        labels: Sequence[str],
        csv_files: Sequence[str] = ("{split}.csv",),
        path_column: str = "path",
        label_column: str = "label",
        image_template: str = "{path}",
        label_separator: str = ";",
        **kwargs: Any,
    ) -> None:
        super().__init__(labels, **kwargs)
        self.csv_files = tuple(csv_files)
        self.path_column = path_column
        self.label_column = label_column
        self.image_template = image_template
        self.label_separator = label_separator

    def file_bands(self) -> tuple[str, ...] | None:
        return self.bands

    def index(self, root: Path, split: str) -> DatasetIndex:
        path = _find_split_file(root, self.csv_files, split)
        if path is None:
            names = [p.format(split=split) for p in self.csv_files]
            raise DatasetNotFoundError(
                f"no split CSV for split {split!r} in {root} (looked for {names})"
            )
        try:
            # utf-8-sig: "CSV UTF-8" from a spreadsheet starts with a byte-order mark
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DatasetFormatError(f"cannot read {path}: {err}") from err
        if not rows:
            raise DatasetFormatError(f"{path} has no rows")
        columns = list(rows[0].keys())
        for col in (self.path_column, self.label_column):
            if col not in columns:
                raise DatasetFormatError(
                    f"{path} has no column {col!r} (columns: {columns}); fix the file or the "
                    "dataset's csv settings"
                )
        samples = []
        seen: dict[str, int] = {}
        for lineno, row in enumerate(rows, start=2):
            where = f"{path}, line {lineno}"
            cell = row[self.path_column]
            if cell is None or not cell.strip():  # a short row: its path cell is not there
                raise DatasetFormatError(
                    f"{where} has no value in column {self.path_column!r} ({len(columns)} "
                    "columns in the header); complete or remove the row"
                )
            # A table written on Windows separates folders with backslashes, as split files may.
            rel = self.image_template.format(path=cell.strip().replace("\\", "/"))
            same = os.path.normpath(rel)  # ./a.tif, a//b.tif: one sample each
            if same in seen:  # a sample listed twice would count twice
                raise DatasetFormatError(
                    f"{where} repeats the sample of line {seen[same]} ({rel}); remove one row"
                )
            seen[same] = lineno
            cell = (row[self.label_column] or "").strip()
            if self.multi_label:
                parts = [p.strip() for p in cell.split(self.label_separator) if p.strip()]
                target: int | tuple[int, ...] = tuple(
                    sorted({self._label_to_index(p, where) for p in parts})
                )
            else:
                target = self._label_to_index(cell, where)
            samples.append(SampleRef(rel, str(root / rel), target))
        first = Path(samples[0].path)
        if not first.is_file():
            raise DatasetFormatError(
                f"{path} names {samples[0].id!r} but {first} does not exist; the images are "
                f"expected at <root>/{self.image_template}"
            )
        missing = [s.id for s in samples if not os.path.isfile(s.path)]
        _refuse_missing(missing, str(path), f"{root} (<root>/{self.image_template})")
        skipped: dict[str, int] = {}
        _note_absent_classes(self.labels, samples, path, skipped)
        return DatasetIndex(root, samples, str(path), f"rows of {path}", skipped)

    def read(self, ref: SampleRef) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        return self._read_file(ref.path)


# -- BigEarthNet v1 --------------------------------------------------------------------------
def _looks_like_reben(root: Path, sample: int = 20) -> bool:
    """Whether ``root`` holds BigEarthNet v2 (reBEN): its ``metadata.parquet`` or
    ``BigEarthNet-S2/`` folder, or its tile folders of patch folders of band files
    (``<tile>/<patch>/<patch>_B02.tif``, no labels file) placed directly there (a few looked at)."""
    if (root / "metadata.parquet").is_file() or (root / "BigEarthNet-S2").is_dir():
        return True
    try:
        tiles = [p for p in itertools.islice(root.iterdir(), sample) if p.is_dir()]
        for tile in tiles:
            for patch in itertools.islice(tile.iterdir(), 3):
                if (patch / f"{patch.name}_B02.tif").is_file():
                    return True
    except OSError:
        return False
    return False


class BigEarthNetLayout(Layout):
    """BigEarthNet v1 Sentinel-2 patch folders with per-band GeoTIFFs and label JSON files.

    Args:
        labels: the (19) class labels.
        label_map: BigEarthNet label (43 CORINE names) -> class label, or ``""`` for labels
            without a counterpart (dropped). ``None``: labels are used as they are.
        patch_dirs: folders under the root that may hold the patch folders (tried in order).
        split_files: split-file name patterns with ``{split}`` (first column: S2 patch name).
        bands: the band files to read (all 12 L2A bands by default).
        **kwargs: see :class:`Layout`.
    """

    name = "bigearthnet"
    reads_band_subsets = True

    def __init__(
        self,
        labels: Sequence[str],
        label_map: Mapping[str, str] | None = None,
        patch_dirs: Sequence[str] = ("", "sentinel-2", "BigEarthNet-v1.0"),
        split_files: Sequence[str] = ("bigearthnet-{split}.csv", "{split}.csv"),
        bands: Sequence[str] | None = BIGEARTHNET_BANDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(labels, bands=bands or BIGEARTHNET_BANDS, multi_label=True, **kwargs)
        self.label_map = None if label_map is None else dict(label_map)
        self.patch_dirs = tuple(patch_dirs)
        self.split_files = tuple(split_files)

    def file_bands(self) -> tuple[str, ...] | None:
        return self.bands

    @staticmethod
    def _is_patch(folder: Path) -> bool:
        return (folder / f"{folder.name}_labels_metadata.json").is_file()

    def patch_root(self, root: Path) -> Path:
        """The folder holding the patch folders."""
        for sub in self.patch_dirs:
            folder = root / sub if sub else root
            if not folder.is_dir():
                continue
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_dir() and self._is_patch(Path(entry.path)):
                        return folder
        tried = [str(root / s) if s else str(root) for s in self.patch_dirs]
        raise DatasetFormatError(
            f"no BigEarthNet patch folders (<patch>/<patch>_labels_metadata.json) in {tried}"
            + (
                "; this looks like BigEarthNet v2 (reBEN: metadata.parquet, BigEarthNet-S2/), "
                "which msclip does not read: the benchmark is the v1 archive "
                "(BigEarthNet-S2-v1.0.tar.gz)"
                if _looks_like_reben(root)
                else ""
            )
        )

    def index(self, root: Path, split: str) -> DatasetIndex:
        patch_root = self.patch_root(root)
        split_file = _find_split_file(root, self.split_files, split)
        skipped: dict[str, int] = {}
        if split_file is None:
            names = [p.format(split=split) for p in self.split_files]
            logger.warning(
                "%s: no split file (%s); evaluating every patch under %s",
                root, ", ".join(names), patch_root,
            )  # fmt: skip
            with os.scandir(patch_root) as it:
                patches = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
            kept = [p for p in patches if self._is_patch(patch_root / p)]
            if len(kept) < len(patches):
                skipped["folders without labels_metadata.json"] = len(patches) - len(kept)
            source = f"all patches under {patch_root} (no split file)"
        else:
            kept = _read_split_list(split_file)
            first = patch_root / kept[0]
            if not self._is_patch(first):
                raise DatasetFormatError(
                    f"split file {split_file} names patch {kept[0]!r} but {first} holds no "
                    f"{kept[0]}_labels_metadata.json; the patches are expected under {patch_root}"
                )
            source = str(split_file)
        samples = [SampleRef(p, str(patch_root / p), None) for p in kept]
        if not samples:
            raise DatasetFormatError(f"no BigEarthNet patches found under {patch_root}")
        _refuse_missing(self._missing_files(samples), source, str(patch_root))
        return DatasetIndex(root, samples, source, f"patch folders under {patch_root}", skipped)

    def _missing_files(self, samples: Sequence[SampleRef]) -> list[str]:
        """``<patch>/<file>`` of each label or band file (of :attr:`bands`) that is not there;
        one directory listing per patch."""
        suffixes = ["labels_metadata.json", *(f"{b}.tif" for b in self.bands or ())]
        return _missing_in_folders(samples, lambda ref: [f"{ref.id}_{x}" for x in suffixes])

    def target(self, ref: SampleRef) -> tuple[int, ...]:
        folder = Path(ref.path)
        path = folder / f"{folder.name}_labels_metadata.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise DatasetFormatError(f"label file missing: {path}") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetFormatError(f"cannot read label file {path}: {err}") from err
        raw = meta.get("labels") if isinstance(meta, dict) else None
        if not isinstance(raw, list):
            raise DatasetFormatError(f"{path} has no 'labels' list")
        out = set()
        for label in raw:
            label = str(label)
            if self.label_map is not None:
                if label not in self.label_map:
                    raise DatasetLabelError(
                        f"{path}: label {label!r} is not a BigEarthNet v1 (CORINE level-3) "
                        "label of the 43-to-19 mapping"
                    )
                label = self.label_map[label]
                if not label:
                    continue
            out.add(self._label_to_index(label, str(path)))
        return tuple(sorted(out))

    def read(self, ref: SampleRef) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        folder = Path(ref.path)
        wanted = self.needed_bands or self.bands or BIGEARTHNET_BANDS
        arrays = []
        for band in wanted:
            path = folder / f"{folder.name}_{band}.tif"
            r = read_raster(path, bands=(band,))
            arrays.append(r.data[0])
        grid = max((a.shape for a in arrays), key=lambda s: s[0] * s[1])
        data = np.stack([resample_to(a[None], grid)[0] for a in arrays])
        return data, tuple(wanted), None


# -- METER-ML --------------------------------------------------------------------------------
def _meterml_folder(root: Path, folder: str) -> Path:
    """Where an ``Image_Folder`` of METER-ML is: ``<root>/<folder>``, or, for the training
    images distributed in several archives, ``<root>/train_images/train_images_<n>/<site>`` for
    ``train_images/<site>``."""
    direct = root / folder
    parts = Path(folder).parts
    if direct.exists() or len(parts) < 2:
        return direct
    for part in sorted((root / parts[0]).glob(f"{parts[0]}_*")):
        candidate = part.joinpath(*parts[1:])
        if candidate.exists():
            return candidate
    return direct


class MeterMLLayout(FolderLayout):
    """The METER-ML release (GeoJSON + image folders), or METER-ML images in class folders.

    Args:
        labels: class labels (facility type codes, ``Negative`` for no facility).
        product: ``ms`` (the three Sentinel-2 arrays, resampled to the 10 m grid and stacked),
            ``rgb`` (the 10 m array's B04, B03, B02 as an 8-bit picture; ``rgb`` must be set) or
            ``naip`` (``naip.png``, red, green and blue).
        geojson_files: GeoJSON name patterns with ``{split}``.
        naip_bands: band names of the NAIP picture's channels (default: a plain RGB picture,
            which a model of Sentinel-2 bands reads exactly as B04, B03, B02, as the published
            protocol feeds it; with the ADS100 camera's own bands, ``NAIP_R``/``NAIP_G``/
            ``NAIP_B``, the red band, centred at 634 nm, is interpolated between B03 and B04).
        **kwargs: see :class:`FolderLayout` (used when no GeoJSON is found).
    """

    name = "meterml"
    reads_band_subsets = True

    def __init__(
        self,
        labels: Sequence[str],
        product: str = "ms",
        geojson_files: Sequence[str] = ("{split}_dataset.geojson", "{split}.geojson"),
        naip_bands: Sequence[str] = ("red", "green", "blue"),
        **kwargs: Any,
    ) -> None:
        if product not in ("ms", "rgb", "naip"):
            raise ValueError(f"METER-ML product must be 'ms', 'rgb' or 'naip', got {product!r}")
        super().__init__(labels, **kwargs)
        self.product = product
        self.geojson_files = tuple(geojson_files)
        self.naip_bands = tuple(naip_bands)
        self.native = False

    def file_bands(self) -> tuple[str, ...] | None:
        if self.native and self.product == "ms":
            return tuple(b for bands in METERML_PRODUCTS.values() for b in bands)
        return None if self.native else self.bands

    def index(self, root: Path, split: str) -> DatasetIndex:
        geojson = _find_split_file(root, self.geojson_files, split)
        if geojson is None:
            others = [o for o in ("train", "val", "test") if o != split
                      and _find_split_file(root, self.geojson_files, o)]  # fmt: skip
            if others:  # the published layout without this split's file: not class folders
                wanted = [g.format(split=split) for g in self.geojson_files]
                raise DatasetFormatError(
                    f"{root} holds METER-ML's GeoJSON of the {', '.join(others)} split(s) but "
                    f"not of the {split} split ({' or '.join(wanted)}); add it from the download"
                )
            self.native = False
            return super().index(root, split)
        self.native = True
        try:
            doc = json.loads(geojson.read_text(encoding="utf-8-sig"))  # an editor's BOM
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetFormatError(f"cannot read {geojson}: {err}") from err
        features = doc.get("features") if isinstance(doc, dict) else None
        if not isinstance(features, list) or not features:
            raise DatasetFormatError(f"{geojson} holds no GeoJSON features")
        samples, multi = [], 0
        for n, feat in enumerate(features):
            props = feat.get("properties") or {}
            folder, kind = props.get("Image_Folder"), props.get("Type")
            if not folder or kind is None:
                raise DatasetFormatError(
                    f"{geojson}, feature {n}: needs the properties 'Image_Folder' and 'Type'"
                )
            types = [t.strip() for t in str(kind).split("-") if t.strip()]
            facilities = sorted({t for t in types if t not in METERML_NEGATIVE_TYPES})
            if len(facilities) > 1:
                multi += 1  # the published protocol is single-label
                continue
            label = facilities[0] if facilities else "Negative"
            idx = self._label_to_index(label, f"{geojson}, feature {n}")
            samples.append(SampleRef(str(folder), str(_meterml_folder(root, str(folder))), idx))
        skipped = {"images with several facility types": multi} if multi else {}
        if not samples:  # every feature has several facility types: nothing single-label
            raise DatasetFormatError(
                f"{geojson}: all {multi} features have several facility types, which the "
                "single-label protocol leaves out: no sample is left to evaluate"
            )
        first = Path(samples[0].path)
        if not first.is_dir():
            raise DatasetFormatError(
                f"{geojson} names image folder {samples[0].id!r} but {first} does not exist"
            )
        samples.sort(key=lambda s: s.id)
        _refuse_missing(self._missing_files(samples), str(geojson), str(root))
        _note_absent_classes(self.labels, samples, geojson, skipped)
        return DatasetIndex(root, samples, str(geojson), f"image folders named by {geojson}",
                            skipped)  # fmt: skip

    def _missing_files(self, samples: Sequence[SampleRef]) -> list[str]:
        """``<folder>/<file>`` of each file of the product that is not there (the three
        Sentinel-2 arrays for ``ms``, all of them read whatever bands the model uses)."""
        files = {"naip": ["naip.png"], "rgb": ["sentinel-2-10m.npy"]}.get(
            self.product, list(METERML_PRODUCTS)
        )
        return _missing_in_folders(samples, lambda ref: files)

    def read(self, ref: SampleRef) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        if not self.native:
            return super().read(ref)
        folder = Path(ref.path)
        if self.product == "naip":
            r = read_raster(folder / "naip.png", bands=self.naip_bands)
            return r.data, r.bands, None
        if self.product == "rgb":
            r = read_raster(folder / "sentinel-2-10m.npy", bands=METERML_PRODUCTS[
                "sentinel-2-10m.npy"], layout="HWC")  # fmt: skip
            return r.data, r.bands, None
        needed = set(self.needed_bands) if self.needed_bands else None
        arrays, names = [], []
        for fname, bands in METERML_PRODUCTS.items():
            if needed is not None and not needed.intersection(bands):
                continue
            r = read_raster(folder / fname, bands=bands, layout="HWC")
            arrays.append(r.data)
            names.extend(r.bands)
        grid = max((a.shape[1:] for a in arrays), key=lambda s: s[0] * s[1])
        data = np.concatenate([resample_to(a, grid) for a in arrays])
        return data, tuple(names), None
