"""Benchmark datasets of the Llama3-MS-CLIP zero-shot protocol and custom YAML datasets.

The published protocol (Marimo et al., "Beyond the Visible: Multispectral Vision-Language
Learning for Earth Observation", ECML PKDD 2025, arXiv:2503.15969) evaluates zero-shot
classification on the test splits of EuroSAT (Helber et al. 2019; multispectral and RGB),
BigEarthNet v1 (Sumbul et al. 2019; multispectral and RGB, 19-class nomenclature of Sumbul et al.
2021, multi-label), METER-ML (Zhu et al. 2022; Sentinel-2 multispectral, Sentinel-2 RGB and
NAIP), NWPU-RESISC45 (Cheng et al. 2017), AID (Xia et al. 2017) and ForestNet (Irvin et al.
2020). Each is declared below as a :class:`DatasetSpec` (where it lives under the dataset
directory, its on-disk layout from :mod:`msclip.eval.layouts`, the band names of its files, its
class-name file and default templates); ``benchmark_datasets/README.md`` documents the expected
trees, where to obtain the data and which split is evaluated.

A dataset of one's own is declared in a small YAML file (see :func:`load_dataset_yaml`) and used
exactly like a built-in one. Bands are always named (by the file's band descriptions, by the
spec, or by :func:`msclip.read_raster`'s band-count rule) and the model's
:class:`~msclip.spectral.SpectralPreprocess` selects them by name.

Class-name files (``msclip/eval/classnames/*.txt``) hold one class per line, ``label = name``:
``label`` is the class as it appears in the data (folder name, CSV or JSON value) and ``name``
the class name put into the prompts (``label`` itself when ``= name`` is absent). Line order is
the class index order; ``#`` starts a comment line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from msclip.errors import MSCLIPError, UnknownDatasetError, not_a_file
from msclip.eval.layouts import (
    BIGEARTHNET_BANDS,
    EUROSAT_MS_BANDS,
    BigEarthNetLayout,
    CsvLayout,
    DatasetFormatError,
    DatasetIndex,
    DatasetNotFoundError,
    FolderLayout,
    Layout,
    MeterMLLayout,
    RGBConversion,
    SampleRef,
)
from msclip.spectral.bands import resolve_bands

__all__ = [
    "DATASETS",
    "LAYOUTS",
    "TASKS",
    "BenchmarkDataset",
    "ClassList",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "RGBConversion",
    "UnknownDatasetError",
    "build_dataset",
    "classnames_dir",
    "get_spec",
    "list_datasets",
    "load_classnames",
    "load_dataset_yaml",
    "resolve_spec",
]

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("single_label", "multi_label")
LAYOUTS: tuple[str, ...] = ("folder", "csv", "bigearthnet", "meterml")

_PICTURES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


# -- class names -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassList:
    """The classes of a dataset.

    Attributes:
        labels: each class as it appears in the data (folder name, CSV or JSON value).
        names: the class names put into prompts (normalised later by :mod:`msclip.zero_shot`).
        source: where the list came from (file path or ``"inline"``).
    """

    labels: tuple[str, ...]
    names: tuple[str, ...]
    source: str = "inline"

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.names):
            raise DatasetFormatError(
                f"{self.source}: {len(self.labels)} labels but {len(self.names)} names"
            )
        if not self.labels:
            raise DatasetFormatError(f"{self.source}: no classes")
        dup = sorted({lab for lab in self.labels if self.labels.count(lab) > 1})
        if dup:
            raise DatasetFormatError(f"{self.source}: classes listed twice: {dup}")

    def __len__(self) -> int:
        return len(self.labels)


def classnames_dir() -> Path:
    """The folder of the class-name files shipped with msclip."""
    return Path(str(resources.files("msclip.eval") / "classnames"))


def _parse_class_lines(text: str, where: str) -> list[tuple[str, str]]:
    from msclip.errors import ClassNameError
    from msclip.zero_shot import parse_class_lines

    try:
        return parse_class_lines(text, where)
    except ClassNameError as err:
        raise DatasetFormatError(str(err)) from err


def read_mapping_file(path: str | os.PathLike) -> dict[str, str]:
    """A ``label = value`` file as a dict (empty value allowed: the label maps to ``""``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"cannot read mapping file {p}: {err}") from err
    return dict(_parse_class_lines(text, str(p)))


def _resolve_data_file(ref: str | os.PathLike, suffixes: Sequence[str], base: Path | None) -> Path:
    """A shipped class-name file by stem (``eurosat``), or a path (relative to ``base``)."""
    s = os.fspath(ref)
    if "/" not in s and os.sep not in s and not Path(s).suffix:
        for suffix in suffixes:
            p = classnames_dir() / f"{s}{suffix}"
            if p.is_file():
                return p
    p = Path(s).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    why = not_a_file(p, "a class-name file")
    if why is not None and why != "not found":  # a folder or a device (/dev/null): as it is
        raise DatasetFormatError(f"class-name file {s!r} {why}")
    if why is not None:
        shipped = sorted(q.stem for q in classnames_dir().glob("*.txt"))
        raise DatasetFormatError(
            f"class-name file {s!r} not found (neither a file nor one of the shipped lists "
            f"{shipped})"
        )
    return p


def load_classnames(
    ref: str | os.PathLike | Sequence[str] | Mapping[str, str] | ClassList,
    base: Path | None = None,
) -> ClassList:
    """Classes from a shipped list name, a file, a list of labels or a ``{label: name}`` map.

    Files are ``.txt`` (``label = name`` lines, see the module docstring) or ``.yaml``/``.yml``
    (a list of labels, or a mapping ``label: name``).

    Args:
        ref: what to load.
        base: folder that relative paths are relative to (a YAML dataset file's folder).

    Raises:
        DatasetFormatError: unreadable or malformed file, duplicate or empty classes.
    """
    if isinstance(ref, ClassList):
        return ref
    if isinstance(ref, Mapping):
        return ClassList(tuple(map(str, ref)), tuple(str(v) for v in ref.values()), "inline")
    if isinstance(ref, (list, tuple)):
        labels = tuple(str(x) for x in ref)
        return ClassList(labels, labels, "inline")
    path = _resolve_data_file(ref, (".txt", ".yaml", ".yml"), base)  # type: ignore[arg-type]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"cannot read class-name file {path}: {err}") from err
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        from msclip.options import parse_yaml

        try:
            obj = parse_yaml(text, path)
        except yaml.YAMLError as err:
            raise DatasetFormatError(f"cannot parse {path}: {err}") from err
        if isinstance(obj, (list, dict)):
            cl = load_classnames(obj)
            return ClassList(cl.labels, cl.names, str(path))
        raise DatasetFormatError(f"{path}: expected a list of labels or a mapping label: name")
    rows = _parse_class_lines(text, str(path))
    return ClassList(tuple(r[0] for r in rows), tuple(r[1] for r in rows), str(path))


# -- dataset specs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find, read and score one benchmark dataset.

    Attributes:
        name: dataset name (``--datasets``), also used in report file names.
        layout: one of :data:`LAYOUTS`.
        classes: class-name file (shipped stem or path), list of labels or ``{label: name}``.
        task: ``single_label`` or ``multi_label``.
        subdirs: folders under the dataset directory tried in order as the dataset root.
        root: explicit root (custom datasets); overrides ``subdirs``.
        bands: band names of the files' channels, in file order (``None``: the files say).
        sensor: sensor whose local band names apply when reading files.
        array_layout: ``CHW`` or ``HWC`` for ``.npy``/``.npz`` files.
        rgb: turn reflectance into an 8-bit picture (RGB variants of multispectral data).
        options: layout options (keyword arguments of the layout class, e.g. ``split_files``).
        templates: default template set (an msclip set name or a file) when ``--templates``
            names none for this dataset.
        description: one line for listings and reports.
        citation: the dataset's reference.
        url: where to obtain the data.
        base_dir: folder relative paths of a YAML spec are relative to.
    """

    name: str
    layout: str
    classes: Any
    task: str = "single_label"
    subdirs: tuple[str, ...] = ()
    root: Path | None = None
    bands: tuple[str, ...] | None = None
    sensor: str | None = None
    array_layout: str | None = None
    rgb: RGBConversion | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    templates: str | None = None
    description: str = ""
    citation: str = ""
    url: str = ""
    base_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise DatasetFormatError(
                f"dataset {self.name!r}: unknown layout {self.layout!r}; choose one of {LAYOUTS}"
            )
        if self.task not in TASKS:
            raise DatasetFormatError(
                f"dataset {self.name!r}: unknown task {self.task!r}; choose one of {TASKS}"
            )
        if self.bands is not None:
            resolve_bands(self.bands, self.sensor)  # fail early on unknown band names

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for evaluation records)."""
        d = {
            "name": self.name,
            "layout": self.layout,
            "task": self.task,
            "bands": list(self.bands) if self.bands is not None else None,
            "sensor": self.sensor,
            "rgb": dataclasses.asdict(self.rgb) if self.rgb is not None else None,
            "templates": self.templates,
            "description": self.description,
            "citation": self.citation,
            "url": self.url,
        }
        return d


_EUROSAT = "Helber et al., IEEE JSTARS 2019 (EuroSAT)"
_BEN = "Sumbul et al., IGARSS 2019 (BigEarthNet); Sumbul et al., IEEE GRSM 2021 (19 classes)"
_METERML = "Zhu et al., CDCEO 2022, arXiv:2207.11166 (METER-ML)"
_RGB_FROM_S2 = RGBConversion(("B04", "B03", "B02"), 2750.0)
_EUROSAT_SPLITS = {"split_files": ("eurosat-{split}.txt",)}
_BEN_OPTIONS = {"label_map": "bigearthnet_43_to_19"}
_METERML_DIRS = ("METER-ML", "METERML", "meter-ml")

#: The built-in benchmark datasets (name -> spec).
DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "EuroSAT_MS", "folder", "eurosat", subdirs=("EuroSAT_MS", "EuroSAT"),
            bands=EUROSAT_MS_BANDS, templates="sentinel2",
            options={"image_dirs": ("", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
                                    "tif", "2750", "EuroSAT_MS"),
                     "extensions": (".tif", ".tiff"), **_EUROSAT_SPLITS},
            description="EuroSAT, 13-band Sentinel-2 L1C GeoTIFFs, 10 classes",
            citation=_EUROSAT, url="https://github.com/phelber/EuroSAT",
        ),
        DatasetSpec(
            "EuroSAT_RGB", "folder", "eurosat", subdirs=("EuroSAT_RGB", "EuroSAT"),
            templates="eo",
            options={"image_dirs": ("", "2750", "EuroSAT_RGB"),
                     "extensions": (".jpg", ".jpeg", ".png"), **_EUROSAT_SPLITS},
            description="EuroSAT, RGB JPEGs, 10 classes", citation=_EUROSAT,
            url="https://github.com/phelber/EuroSAT",
        ),
        DatasetSpec(
            "BigEarthNet_MS", "bigearthnet", "bigearthnet19", task="multi_label",
            subdirs=("BigEarthNet_MS", "BigEarthNet"), bands=BIGEARTHNET_BANDS,
            templates="sentinel2", options=_BEN_OPTIONS,
            description="BigEarthNet v1, 12 Sentinel-2 L2A bands at 10 m, 19 classes, multi-label",
            citation=_BEN, url="https://bigearth.net",
        ),
        DatasetSpec(
            "BigEarthNet_RGB", "bigearthnet", "bigearthnet19", task="multi_label",
            subdirs=("BigEarthNet_RGB", "BigEarthNet"), bands=BIGEARTHNET_BANDS,
            rgb=_RGB_FROM_S2, templates="eo", options=_BEN_OPTIONS,
            description="BigEarthNet v1 as 8-bit true colour (B04, B03, B02), 19 classes",
            citation=_BEN, url="https://bigearth.net",
        ),
        DatasetSpec(
            "METERML_MS", "meterml", "meterml", subdirs=("METERML_MS", *_METERML_DIRS),
            templates="sentinel2", options={"product": "ms", "extensions": (".tif", ".tiff",
                                                                            ".npy", ".npz")},
            description="METER-ML, 13 Sentinel-2 L1C bands resampled to 10 m, 7 classes",
            citation=_METERML, url="https://stanfordmlgroup.github.io/projects/meter-ml/",
        ),
        DatasetSpec(
            "METERML_RGB", "meterml", "meterml", subdirs=("METERML_RGB", *_METERML_DIRS),
            rgb=_RGB_FROM_S2, templates="eo",
            options={"product": "rgb", "extensions": _PICTURES},
            description="METER-ML, Sentinel-2 true colour (B04, B03, B02), 7 classes",
            citation=_METERML, url="https://stanfordmlgroup.github.io/projects/meter-ml/",
        ),
        DatasetSpec(
            "METERML_NAIP", "meterml", "meterml", subdirs=("METERML_NAIP", *_METERML_DIRS),
            templates="eo", options={"product": "naip", "extensions": _PICTURES},
            description="METER-ML, NAIP aerial RGB, 7 classes",
            citation=_METERML, url="https://stanfordmlgroup.github.io/projects/meter-ml/",
        ),
        DatasetSpec(
            "RESISC45_RGB", "folder", "resisc45",
            subdirs=("RESISC45_RGB", "RESISC45", "NWPU-RESISC45"), templates="eo",
            options={"image_dirs": ("", "NWPU-RESISC45"), "extensions": _PICTURES,
                     "split_files": ("resisc45-{split}.txt",)},
            description="NWPU-RESISC45, RGB aerial scenes, 45 classes",
            citation="Cheng et al., Proc. IEEE 2017 (NWPU-RESISC45)",
            url="https://doi.org/10.1109/JPROC.2017.2675998",
        ),
        DatasetSpec(
            "AID_RGB", "folder", "aid", subdirs=("AID_RGB", "AID"), templates="eo",
            options={"image_dirs": ("", "AID"), "extensions": _PICTURES,
                     "split_files": ("aid-{split}.txt",)},
            description="AID, RGB aerial scenes, 30 classes",
            citation="Xia et al., IEEE TGRS 2017 (AID)",
            url="https://captain-whu.github.io/AID/",
        ),
        DatasetSpec(
            "ForestNet_RGB", "csv", "forestnet",
            subdirs=("ForestNet_RGB", "ForestNet", "ForestNetDataset"), templates="eo",
            options={"csv_files": ("{split}.csv",), "path_column": "example_path",
                     "label_column": "merged_label",
                     "image_template": "{path}/images/visible/composite.png"},
            description="ForestNet, Landsat-8 RGB composites, 4 merged driver classes",
            citation="Irvin et al., NeurIPS CCAI workshop 2020, arXiv:2011.05479 (ForestNet)",
            url="https://stanfordmlgroup.github.io/projects/forestnet/",
        ),
    ]
}  # fmt: skip


def list_datasets() -> list[str]:
    """Names of the built-in benchmark datasets."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a built-in dataset (case-insensitive name).

    Raises:
        UnknownDatasetError: unknown name.
    """
    if name in DATASETS:
        return DATASETS[name]
    lower = {k.lower(): k for k in DATASETS}
    if name.lower() in lower:
        return DATASETS[lower[name.lower()]]
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; built-in datasets: {', '.join(DATASETS)} "
        "(or pass the path of a dataset YAML file, see benchmark_datasets/README.md)"
    )


# -- YAML datasets ---------------------------------------------------------------------------
_YAML_KEYS = {
    "name", "layout", "root", "task", "classes", "bands", "sensor", "array_layout", "rgb",
    "templates", "description", "citation", "url", "split_file", "extensions", "image_dirs",
    "csv", "patch_dirs", "label_map", "product", "ignore_unknown_folders",
}  # fmt: skip
_CSV_KEYS = {"file", "path_column", "label_column", "image", "separator"}


def load_dataset_yaml(path: str | os.PathLike) -> DatasetSpec:
    """Read a custom dataset declared in YAML.

    Example::

        name: MyCrops                # required; used in report file names
        layout: folder               # folder | csv | bigearthnet | meterml
        root: my_crops               # relative to this file (default: <dataset-dir>/<name>)
        task: single_label           # or multi_label
        classes:                     # list of labels, {label: prompt name}, or a file
          maize: maize field
          wheat: wheat field
        bands: [B02, B03, B04, B08]  # band names of the files' channels, in file order
        templates: sentinel2         # default template set (msclip set name or file,
                                     # relative to this file)
        split_file: test.txt         # optional file list ("{split}" is replaced)
        extensions: [.tif]
        csv:                         # csv layout only
          file: "{split}.csv"
          path_column: path
          label_column: label
          separator: ";"             # between labels of multi-label rows
          image: "{path}"            # image path template relative to the root
        rgb: {bands: [B04, B03, B02], max: 2750}   # reflectance -> 8-bit picture

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetFormatError: malformed YAML, unknown keys or invalid values.
    """
    import yaml

    from msclip.options import parse_yaml

    p = Path(path).expanduser()
    why = not_a_file(p, "a dataset YAML file")
    if why == "not found":
        raise DatasetNotFoundError(f"dataset YAML file not found: {p}")
    if why is not None:  # a folder or a device (/dev/null): said as it is
        raise DatasetFormatError(f"dataset YAML {p} {why}")
    try:
        doc = parse_yaml(p.read_text(encoding="utf-8"), p)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DatasetFormatError(f"cannot read dataset YAML {p}: {err}") from err
    if not isinstance(doc, dict):
        raise DatasetFormatError(f"{p}: expected a mapping of dataset settings")
    unknown = sorted(set(doc) - _YAML_KEYS)
    if unknown:
        raise DatasetFormatError(f"{p}: unknown keys {unknown}; allowed: {sorted(_YAML_KEYS)}")
    for key in ("name", "layout", "classes"):
        if key not in doc:
            raise DatasetFormatError(f"{p}: the key {key!r} is required")
    base = p.parent
    layout = str(doc["layout"])
    options: dict[str, Any] = {}
    if "split_file" in doc:
        options["split_files"] = (str(doc["split_file"]),)
    if "extensions" in doc:
        options["extensions"] = tuple(
            e if str(e).startswith(".") else f".{e}" for e in doc["extensions"]
        )
    for key in ("image_dirs", "patch_dirs"):
        if key in doc:
            options[key] = tuple(str(x) for x in doc[key])
    for key in ("label_map", "product", "ignore_unknown_folders"):
        if key in doc:
            options[key] = doc[key]
    if "csv" in doc:
        csv_cfg = doc["csv"] or {}
        bad = sorted(set(csv_cfg) - _CSV_KEYS)
        if bad:
            raise DatasetFormatError(f"{p}: unknown csv keys {bad}; allowed: {sorted(_CSV_KEYS)}")
        rename = {"file": "csv_files", "image": "image_template", "separator": "label_separator"}
        for k, v in csv_cfg.items():
            options[rename.get(k, k)] = (str(v),) if k == "file" else str(v)
    rgb = None
    if doc.get("rgb"):
        r = doc["rgb"]
        if not isinstance(r, dict) or "bands" not in r or len(r["bands"]) != 3:
            raise DatasetFormatError(f"{p}: rgb needs 'bands' (three band names) and 'max'")
        rgb = RGBConversion(tuple(str(b) for b in r["bands"]), float(r.get("max", 2750.0)))
    root = Path(str(doc["root"])).expanduser() if doc.get("root") else None
    if root is not None and not root.is_absolute():
        root = base / root
    classes = doc["classes"]
    if isinstance(classes, str):
        try:
            classes = str(_resolve_data_file(classes, (".txt", ".yaml", ".yml"), base))
        except DatasetFormatError as err:
            raise DatasetFormatError(f"{p}: classes: {err} (relative to {base})") from err
    return DatasetSpec(
        name=str(doc["name"]),
        layout=layout,
        classes=classes,
        task=str(doc.get("task", "single_label")),
        subdirs=(str(doc["name"]),),
        root=root,
        bands=tuple(str(b) for b in doc["bands"]) if doc.get("bands") else None,
        sensor=doc.get("sensor"),
        array_layout=doc.get("array_layout"),
        rgb=rgb,
        options=options,
        templates=_yaml_templates(str(doc["templates"]), base) if doc.get("templates") else None,
        description=str(doc.get("description", f"custom dataset declared in {p}")),
        citation=str(doc.get("citation", "")),
        url=str(doc.get("url", "")),
        base_dir=base,
    )


def _yaml_templates(value: str, base: Path) -> str:
    """The ``templates:`` of a dataset YAML: a shipped set name, else a file relative to the YAML
    (as ``root:`` and ``classes:`` are), not to the current folder. A bare name that is no file
    there stays a name (a published set's name is then refused with its own advice)."""
    from msclip.zero_shot import template_set_path

    bare = "/" not in value and os.sep not in value and not Path(value).suffix
    if bare and template_set_path(value) is not None:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    return value if bare and not (base / p).is_file() else str(base / p)


def resolve_spec(name_or_path: str | os.PathLike | DatasetSpec) -> DatasetSpec:
    """A built-in spec by name, or a YAML file's spec (a path that is a folder or a device is
    refused as what it is, :func:`load_dataset_yaml`, not as an unknown dataset name)."""
    if isinstance(name_or_path, DatasetSpec):
        return name_or_path
    s = os.fspath(name_or_path)
    path_like = ("/" in s or os.sep in s) and os.path.exists(s)  # no dataset name has a slash
    if s.lower().endswith((".yaml", ".yml")) or os.path.isfile(s) or path_like:
        return load_dataset_yaml(s)
    return get_spec(s)


# -- the torch dataset -----------------------------------------------------------------------
def _make_layout(spec: DatasetSpec, classes: ClassList) -> Layout:
    opts = dict(spec.options)
    common: dict[str, Any] = {
        "sensor": spec.sensor, "array_layout": spec.array_layout, "rgb": spec.rgb,
    }  # fmt: skip
    if spec.layout == "bigearthnet":
        label_map = opts.pop("label_map", None)
        if isinstance(label_map, str):
            label_map = read_mapping_file(_resolve_data_file(label_map, (".txt",), spec.base_dir))
        return BigEarthNetLayout(classes.labels, label_map=label_map,
                                 bands=spec.bands, **common, **opts)  # fmt: skip
    common["bands"] = spec.bands
    if spec.layout == "folder":
        return FolderLayout(classes.labels, multi_label=False, **common, **opts)
    if spec.layout == "csv":
        return CsvLayout(classes.labels, multi_label=spec.multi_label, **common, **opts)
    return MeterMLLayout(classes.labels, **common, **opts)


def _with_tree_hint(err: MSCLIPError, spec: DatasetSpec) -> MSCLIPError:
    """``err`` (a dataset found but not as its layout expects: a wrong or incomplete tree) with
    the place that describes the expected tree appended: the dataset's section of
    ``benchmark_datasets/README.md`` for a built-in dataset, its "Custom datasets" section for a
    YAML one."""
    text = str(err)
    if "benchmark_datasets/README.md" in text:
        return err
    if spec.base_dir is None:
        hint = f"the expected tree of {spec.name} is in benchmark_datasets/README.md"
    else:
        hint = (
            "how a dataset file declares its tree: benchmark_datasets/README.md, section "
            "Custom datasets"
        )
    new = type(err)(f"{text.rstrip('.')} ({hint})")
    new.param = err.param
    return new


def _find_root(spec: DatasetSpec, dataset_dir: Path | None) -> Path:
    if spec.root is not None:
        if spec.root.is_dir():
            return spec.root
        raise DatasetNotFoundError(
            f"dataset {spec.name}: root folder {spec.root} does not exist (set 'root' in its "
            "YAML file)"
        )
    base = Path(dataset_dir) if dataset_dir is not None else Path("benchmark_datasets")
    tried = []
    for sub in spec.subdirs or (spec.name,):
        p = base / sub
        tried.append(str(p))
        if p.is_dir():
            return p
    raise DatasetNotFoundError(
        f"dataset {spec.name} not found: none of {tried} exists. Put the data there (the "
        "expected tree and where to obtain it are in benchmark_datasets/README.md) or give "
        "the folder that holds it",
        param="dataset_dir",
    )


class BenchmarkDataset(Dataset):
    """A benchmark split as a torch dataset of ``(image, target, index)``.

    ``image`` is the model's input tensor (``transform`` applied: a
    :class:`~msclip.spectral.SpectralPreprocess`, or the raw float32 data when there is none);
    ``target`` is the class index (single-label) or a ``[C]`` uint8 indicator vector
    (multi-label); ``index`` the sample's position. Picklable for DataLoader workers.

    Args:
        spec: the dataset spec.
        root: the dataset root.
        index: the samples (from the layout).
        classes: the classes.
        layout: the layout reader.
        transform: preprocessing applied to every sample.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        root: Path,
        index: DatasetIndex,
        classes: ClassList,
        layout: Layout,
        transform: Any = None,
    ) -> None:
        self.spec = spec
        self.root = root
        self.index = index
        self.classes = classes
        self.layout = layout
        self.transform = None
        self.band_mapping: dict[str, Any] | None = None
        self.set_transform(transform)

    # -- facts -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def samples(self) -> list[SampleRef]:
        return self.index.samples

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        return self.spec.multi_label

    @property
    def class_names(self) -> list[str]:
        """Class names for prompts, in class-index order."""
        return list(self.classes.names)

    def __len__(self) -> int:
        return len(self.index.samples)

    def __repr__(self) -> str:
        return (f"BenchmarkDataset({self.name!r}, n={len(self)}, classes={self.num_classes}, "
                f"task={self.spec.task!r}, root={str(self.root)!r})")  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about this split (for evaluation records)."""
        d = self.spec.to_dict()
        d.update(
            root=str(self.root),
            split_source=self.index.split_source,
            found_in=self.index.detail,
            n_samples=len(self),
            skipped=dict(self.index.skipped),
            class_labels=list(self.classes.labels),
            class_names=list(self.classes.names),
            classes_source=self.classes.source,
            read_bands=list(self.layout.needed_bands) if self.layout.needed_bands else None,
            band_mapping=self.band_mapping,
        )
        return d

    # -- reading -----------------------------------------------------------------------------
    def set_transform(self, transform: Any) -> None:
        """Use ``transform`` and, when it names its bands, read only the bands it can use.

        The band mapping of the files' bands onto the model's (:func:`msclip.map_bands`) is
        kept in :attr:`band_mapping` for reports. Bands that feed no model band (outside the
        model's range, or redundant between two bands the file also holds) are not read by
        layouts with one file per band or product; by the mapping rule the result is the same
        as reading them.
        """
        self.transform = transform
        self.layout.needed_bands = None
        self.band_mapping: dict[str, Any] | None = None
        if self.spec.rgb is not None:
            if self.spec.layout == "bigearthnet":
                rgb = resolve_bands(self.spec.rgb.bands)
                self.layout.needed_bands = tuple(b.name for b in rgb)
            return
        model_bands = getattr(transform, "bands", None)
        file_bands = self.layout.file_bands()
        if model_bands is None or file_bands is None:
            return
        import warnings

        from msclip.spectral.adapt import map_bands

        names = tuple(b.name for b in resolve_bands(file_bands, self.spec.sensor))
        with warnings.catch_warnings():
            # Bands outside the model's range are expected here (B01, B09, B10 of Sentinel-2
            # files); they are listed in the record instead of warned about per process.
            warnings.simplefilter("ignore")
            mapping = map_bands(model_bands, names)
        used = tuple(n for j, n in enumerate(names) if mapping.matrix[:, j].any())
        self.band_mapping = {
            "file_bands": list(names),
            "model_bands": list(model_bands),
            "used": list(used),
            "ignored": list(mapping.ignored),
            "missing": list(mapping.missing),
            "kinds": dict(zip(names, mapping.kinds)),
        }
        if self.layout.reads_band_subsets and len(used) < len(names):
            self.layout.needed_bands = used

    def name_of(self, i: int) -> str:
        """The file (or folder) of sample ``i``, for messages."""
        return str(self.index.samples[i].path)

    def read(self, i: int) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        """Raw data ``[C, H, W]``, band names and nodata of sample ``i`` (no transform)."""
        return self.layout.load(self.index.samples[i])

    def target(self, i: int) -> int | np.ndarray:
        """Target of sample ``i`` (class index, or ``[C]`` uint8 indicators)."""
        t = self.layout.target(self.index.samples[i])
        if self.multi_label:
            out = np.zeros(self.num_classes, dtype=np.uint8)
            out[list(t) if isinstance(t, tuple) else [t]] = 1
            return out
        return int(t)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, int]:
        ref = self.index.samples[i]
        data, names, nodata = self.layout.load(ref)
        if self.transform is None:
            image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        elif hasattr(self.transform, "process"):
            image = self.transform.process(data, names, nodata, ref.path)
        else:
            image = self.transform(data)
        return image, self.target(i), i


def build_dataset(
    name: str | os.PathLike | DatasetSpec,
    dataset_dir: str | os.PathLike | None = "benchmark_datasets",
    split: str = "test",
    transform: Any = None,
    classes: Any = None,
    max_samples: int | None = None,
    seed: int = 0,
    require_split_list: bool = False,
) -> BenchmarkDataset:
    """Find and index one benchmark dataset.

    Args:
        name: a built-in name (:func:`list_datasets`), a dataset YAML file or a spec.
        dataset_dir: folder holding the datasets (``benchmark_datasets``).
        split: the split to evaluate (the published protocol: ``test``).
        transform: the model's preprocessing (``model.preprocess()``).
        classes: override the spec's classes (file, list or mapping; a relative file path is
            relative to the current folder, not to a YAML spec's).
        max_samples: keep a random subset of this size (seeded; for quick runs).
        seed: seed of the subset.
        require_split_list: refuse a split without a list in a dataset that has lists for
            others (an evaluation of a misspelt split); without it such a split reads every
            image (the heads take the train split as the rest of a test list).

    Raises:
        UnknownDatasetError: unknown name.
        DatasetNotFoundError: the data is missing.
        DatasetFormatError: the data is there but malformed.
    """
    spec = resolve_spec(name)
    # The spec's own class file was resolved against its YAML; an override is the caller's path
    # (a command-line value: relative to the current folder).
    class_list = load_classnames(spec.classes, spec.base_dir) if classes is None else (
        load_classnames(classes))  # fmt: skip
    root = _find_root(spec, Path(dataset_dir) if dataset_dir is not None else None)
    layout = _make_layout(spec, class_list)
    try:
        if require_split_list:
            from msclip.eval.layouts import check_split_list

            check_split_list(root, getattr(layout, "split_files", ()) or (), split)
        index = layout.index(root, split)
    except (DatasetFormatError, DatasetNotFoundError) as err:
        raise _with_tree_hint(err, spec) from err
    if max_samples is not None and max_samples < len(index.samples):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(index.samples), size=max_samples, replace=False))
        index.skipped[f"random subset (max_samples={max_samples}, seed={seed})"] = (
            len(index.samples) - max_samples
        )
        index.samples = [index.samples[i] for i in keep]
    ds = BenchmarkDataset(spec, root, index, class_list, layout, transform)
    logger.info("%s: %d samples (%s)", spec.name, len(ds), index.split_source)
    return ds
