"""Labelled data for probes and fine-tuning: three sources, one form, documented splits.

Every source gives a :class:`TaskData`: the images (file paths, or samples of a benchmark
dataset), one target per image, the class (or output) names, and the indices of the ``train``,
``val`` and ``test`` splits with a note of where each split came from. Sources:

* **benchmark datasets** known to ``evaluation.py`` (:func:`from_benchmark`; built-in names or
  dataset YAML files, read by :mod:`msclip.eval.datasets`). Each split is the dataset's own
  split file where there is one:

  ==================  ========================================================================
  EuroSAT_MS / _RGB   ``eurosat-{train,val,test}.txt`` (Neumann et al. 2019, arXiv:1911.06721)
  RESISC45_RGB        ``resisc45-{train,val,test}.txt`` (Neumann et al. 2019)
  AID_RGB             no official split: seeded stratified split (below), or ``aid-*.txt``
  BigEarthNet_*       ``{train,val,test}.csv`` of BigEarthNet-MM (19 classes; Sumbul et al. 2021)
  METERML_*           ``{train,val,test}_dataset.geojson`` of the METER-ML release
  ForestNet_RGB       ``{train,val,test}.csv`` of the ForestNet release
  ==================  ========================================================================

  When a dataset has a test split file but no train or validation file, the images outside the
  test split are split into train and validation by the seeded rule below; with train and test
  split files but no validation file, the validation split is taken out of the train split by
  the same rule; with no split file at all, every image is split three ways.
* **a CSV table** (:func:`from_csv`): a path column plus a label column (classification), 0/1
  columns or one column of separator-joined labels or of lists (multi-label), or value columns
  with a scale factor (regression); an optional ``split`` column (``train``/``val``/``test``)
  gives the splits, else the seeded rule.
* **a folder per class** (:func:`from_folders`): ``<root>/<class>/<image>``; splits from
  ``<root>/{train,val,test}/<class>/<image>`` sub-trees or from ``<root>/{train,val,test}.txt``
  lists of ``<class>/<image>`` entries when present, else the seeded rule.

The seeded rule (:func:`split_indices`): single-label data is split per class (stratified):
the images of class ``c``, in their listed order, are permuted by
``numpy.random.default_rng((seed, c))``; the first ``round(n_c * test_fraction)`` go to test,
the next ``round(n_c * val_fraction)`` to validation and the rest to train (a class of one or
two images stays in train). Multi-label and regression data are permuted as a whole by
``default_rng((seed, 0))`` and cut the same way. The same data and seed give the same splits on
every machine.

Bad input is refused before any work, with the row or file named: a missing label, a class named
in a split file that the dataset lacks, an unknown label, an empty split, NaN or non-numeric
regression targets, image files that do not exist, a sample in two splits.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from msclip.errors import HeadConfigError, HeadInputError
from msclip.heads.runconfig import DATA_TASKS
from msclip.io.tables import separator_of, where_not_utf8

__all__ = [
    "DATA_TASKS",
    "SPLITS",
    "TaskData",
    "from_benchmark",
    "from_csv",
    "from_folders",
    "split_indices",
]

logger = logging.getLogger(__name__)

#: Split names, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}  # fmt: skip


@dataclass
class TaskData:
    """Labelled images and their splits.

    Attributes:
        name: the dataset's name (records and reports).
        task: ``classification``, ``multi-label`` or ``regression``.
        items: one entry per image: a file path (``str``), or an index into :attr:`reader`.
        targets: class indices ``[N]`` (int64), 0/1 labels ``[N, C]`` or values ``[N, K]``
            (float64, scale applied).
        names: class labels (in class-index order) or regression output names.
        prompt_names: class names for prompts (zero-shot and text-initialised heads).
        splits: ``train`` / ``val`` / ``test`` -> sorted indices into :attr:`items`.
        split_source: how each split was made.
        source: where the data came from (JSON-ready).
        reader: for benchmark datasets, a dataset following the item protocol over all
            images (see :meth:`dataset`).
    """

    name: str
    task: str
    items: list[Any]
    targets: np.ndarray
    names: list[str]
    prompt_names: list[str] | None
    splits: dict[str, np.ndarray]
    split_source: dict[str, str]
    source: dict[str, Any] = field(default_factory=dict)
    reader: Any = None

    def __post_init__(self) -> None:
        if self.task not in DATA_TASKS:
            raise HeadConfigError(
                f"unknown task {self.task!r}; choose one of {list(DATA_TASKS)}", param="task"
            )
        _check_splits(self.splits, len(self.items), self.name)
        self.splits = {s: self.splits[s] for s in SPLITS}  # train, val, test: the printed order

    def __len__(self) -> int:
        return len(self.items)

    @property
    def probe_task(self) -> str:
        """The task name of :mod:`msclip.heads.probes` (``single-label`` for classification)."""
        return "single-label" if self.task == "classification" else self.task

    def item_names(self) -> list[str]:
        """Display name of every image (path, or the benchmark sample's path)."""
        names = self.__dict__.get("_names")
        if names is None or len(names) != len(self.items):
            if self.reader is not None:
                names = [self.reader.name(i) for i in range(len(self.items))]
            else:
                names = [str(i) for i in self.items]
            self.__dict__["_names"] = names
        return names

    def dataset(
        self, transform: Any, min_valid: float | None = None, nodata: float | None = None
    ) -> Dataset:
        """All images as a dataset following the item protocol of :mod:`msclip.encode`
        (``{"index", "image"}``, or ``"error"`` / ``"nodata"`` for an image that cannot be
        used), preprocessed by ``transform`` (the model's ``preprocess()``)."""
        if self.reader is not None:
            self.reader.set_transform(transform, min_valid, nodata)
            return self.reader
        from msclip.encode import ImageDataset

        return ImageDataset(self.items, transform, min_valid, nodata)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts: source, task, classes, split sizes and sources."""
        counts = {s: len(ix) for s, ix in self.splits.items()}
        out: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            **self.source,
            "n_samples": len(self.items),
            "splits": counts,
            "split_source": dict(self.split_source),
            "names": list(self.names),
        }
        if self.prompt_names is not None:
            out["prompt_names"] = list(self.prompt_names)
        if self.task == "classification":
            out["class_counts"] = {
                s: np.bincount(self.targets[ix], minlength=len(self.names)).tolist()
                for s, ix in self.splits.items()
            }
        return out


# -- splits ------------------------------------------------------------------------------------
def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for value, label in ((val_fraction, "val_fraction"), (test_fraction, "test_fraction")):
        if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
            raise HeadConfigError(f"{label} must lie in [0, 1); got {value!r}", param=label)
    if val_fraction + test_fraction >= 1.0:
        raise HeadConfigError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training "
            "images; keep their sum below 1",
            param="val_fraction",
        )


def split_indices(
    n: int,
    labels: np.ndarray | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The seeded (stratified) split of ``n`` items (see the module docstring).

    Args:
        n: number of items.
        labels: class index per item (single-label: split per class), or ``None``.
        val_fraction: share of each class (or of all items) for validation.
        test_fraction: share for test.
        seed: the split's seed.

    Returns:
        ``train`` / ``val`` / ``test`` -> sorted indices (a split may be empty).
    """
    _check_fractions(val_fraction, test_fraction)
    groups: list[tuple[int, np.ndarray]]
    if n == 0:
        return {s: np.zeros(0, dtype=np.int64) for s in SPLITS}
    if labels is None:
        groups = [(0, np.arange(n))]
    else:
        labels = np.asarray(labels)
        groups = [(int(c), np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c, members in groups:
        perm = members[np.random.default_rng((seed, c)).permutation(len(members))]
        k = len(perm)
        n_test = math.floor(k * test_fraction + 0.5) if k > 2 else 0
        n_val = math.floor(k * val_fraction + 0.5) if k > 2 else 0
        n_test = min(n_test, k - 1)
        n_val = min(n_val, k - 1 - n_test)
        out["test"].append(perm[:n_test])
        out["val"].append(perm[n_test : n_test + n_val])
        out["train"].append(perm[n_test + n_val :])
    return {s: np.sort(np.concatenate(v)).astype(np.int64) for s, v in out.items()}


def _check_splits(splits: dict[str, np.ndarray], n: int, name: str) -> None:
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise HeadInputError(f"{name}: splits {missing} are missing")
    for s in SPLITS:
        if len(splits[s]) == 0:
            raise HeadInputError(
                f"{name}: the {s} split is empty; give it samples (a larger "
                f"{'val' if s == 'val' else s}_fraction, more images, or a split file that "
                "lists some)",
                param=f"{s}_fraction" if s != "train" else None,
            )
    seen = np.zeros(n, dtype=np.int8)
    for s in SPLITS:
        ix = np.asarray(splits[s])
        if ix.min() < 0 or ix.max() >= n:
            raise HeadInputError(f"{name}: {s} split holds indices outside 0..{n - 1}")
        seen[ix] += 1
    twice = np.flatnonzero(seen > 1)
    if twice.size:
        raise HeadInputError(
            f"{name}: {twice.size} sample(s) are in more than one split (e.g. index "
            f"{int(twice[0])}); a sample must belong to one split only"
        )


def _split_or_fill(
    n: int,
    labels: np.ndarray | None,
    given: dict[str, np.ndarray],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Use the given splits; split what no file covers by the seeded rule."""
    rule = f"seeded split (seed {seed}{', stratified by class' if labels is not None else ''})"
    if all(s in given for s in SPLITS):
        return given, {}
    rest = np.setdiff1d(np.arange(n), np.concatenate([given[s] for s in given] or [[]]))
    sub_labels = labels[rest] if labels is not None else None
    if "test" in given and "val" in given:
        return {**given, "train": rest}, {"train": "every image outside the given val and test"}
    if "test" in given and "train" in given:
        # The validation split comes out of the given train split: its images stay in training
        # or validation, and the test split stays as given.
        train = given["train"]
        parts = split_indices(
            len(train), labels[train] if labels is not None else None, val_fraction, 0.0, seed
        )
        if len(rest):
            logger.warning(
                "%d image(s) are in neither the train nor the test split file; they are left out",
                len(rest),
            )
        out = {"test": given["test"], "train": train[parts["train"]], "val": train[parts["val"]]}
        note = f"{rule} of the given train split, val_fraction {val_fraction}"
        return out, {"train": note, "val": note}
    if "test" in given:
        parts = split_indices(len(rest), sub_labels, val_fraction, 0.0, seed)
        out = {"test": given["test"], "train": rest[parts["train"]], "val": rest[parts["val"]]}
        note = f"{rule} of the images outside the test split, val_fraction {val_fraction}"
        return out, {"train": note, "val": note}
    parts = split_indices(len(rest), sub_labels, val_fraction, test_fraction, seed)
    out = {s: rest[parts[s]] for s in SPLITS}
    note = f"{rule}, val_fraction {val_fraction}, test_fraction {test_fraction}"
    return out, dict.fromkeys(SPLITS, note)


# -- class lists -------------------------------------------------------------------------------
_INTEGER_LABEL = re.compile(r"[+-]?\d+")


def _label_order(found: Sequence[str]) -> Callable[[str], Any]:
    """The sort key of labels: numeric (then as written: ``01`` after ``1``) when every label
    is an integer, else the text."""
    if found and all(_INTEGER_LABEL.fullmatch(str(lab)) for lab in found):
        return lambda lab: (int(lab), lab)
    return lambda lab: (0, lab)


def _class_list(classes: Any, found: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(labels, prompt names)`` from a class list or file, or the sorted labels found: in
    numeric order when every label is an integer (``2`` before ``10``, as pandas and
    scikit-learn order an integer column), so that class index ``i`` is label ``i`` for labels
    ``0 .. n-1``."""
    if classes is None:
        labels = sorted(set(found), key=_label_order(found))
        return labels, [lab.replace("_", " ") for lab in labels]
    from msclip.eval.datasets import load_classnames

    cl = load_classnames(classes)
    return list(cl.labels), list(cl.names)


# -- benchmark datasets ------------------------------------------------------------------------
class _BenchmarkReader(Dataset):
    """The images of several splits of a benchmark dataset, in one index space, following the
    item protocol (picklable for DataLoader workers)."""

    def __init__(self, parts: list[Any], offsets: list[int]) -> None:
        self.parts = parts
        self.offsets = offsets
        self.n = offsets[-1] + len(parts[-1]) if parts else 0
        self.min_valid: float | None = None
        self.nodata: float | None = None

    def __len__(self) -> int:
        return self.n

    def locate(self, index: int) -> tuple[Any, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[k], index - self.offsets[k]

    def name(self, index: int) -> str:
        ds, i = self.locate(index)
        return ds.name_of(i)

    def set_transform(self, transform: Any, min_valid: float | None, nodata: float | None) -> None:
        for ds in self.parts:
            ds.set_transform(transform)
        self.min_valid, self.nodata = min_valid, nodata

    def __getitem__(self, index: int) -> dict[str, Any]:
        from msclip.encode import item_with_warnings

        return item_with_warnings(self._get, index)

    def _get(self, index: int) -> dict[str, Any]:
        from msclip.encode import read_errors
        from msclip.tiling import nodata_fraction

        ds, i = self.locate(index)
        try:
            data, names, nodata = ds.read(i)
            if self.nodata is not None:
                nodata = self.nodata
            valid = 1.0 - nodata_fraction(data, nodata)
            if self.min_valid and valid < self.min_valid:
                return {"index": index, "nodata": f"{valid:.0%} valid pixels"}
            image = ds.transform.process(data, names, nodata, ds.name_of(i))
        except read_errors() as err:
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        return {"index": index, "image": image, "valid": valid}


def from_benchmark(
    name: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = "benchmark_datasets",
    classes: Any = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_samples: int | None = None,
) -> TaskData:
    """A benchmark dataset of ``evaluation.py`` with its train / val / test splits.

    Args:
        name: a built-in name or a dataset YAML file.
        dataset_dir: the folder that holds the datasets.
        classes: override the dataset's class list (file, list or mapping).
        val_fraction: for the seeded rule, where no split file exists.
        test_fraction: idem.
        seed: seed of the seeded rule and of ``max_samples``.
        max_samples: keep a seeded random subset of this many images per split file.

    Raises:
        DatasetNotFoundError, DatasetFormatError: the data is missing or malformed (a split
            file that names images or classes the dataset lacks included).
        HeadInputError: an empty split, or a sample in two splits.
    """
    from msclip.errors import DatasetNotFoundError
    from msclip.eval.datasets import build_dataset

    _check_fractions(val_fraction, test_fraction)
    found: dict[str, Any] = {}
    whole = None
    layouts_log = logging.getLogger("msclip.eval.layouts")
    level = layouts_log.level
    layouts_log.setLevel(logging.ERROR)  # "no split file ... every image": handled here
    try:
        for split in SPLITS:
            try:
                ds = build_dataset(name, dataset_dir, split=split, classes=classes,
                                   max_samples=max_samples, seed=seed)  # fmt: skip
            except DatasetNotFoundError as err:
                if "no split CSV" not in str(err):
                    raise
                continue
            if "(no split file)" in ds.index.split_source:
                whole = whole or ds  # every image: the seeded rule splits it
            else:
                found[split] = ds
    finally:
        layouts_log.setLevel(level)
    if not found and whole is None:
        raise HeadInputError(f"{name}: no split file and no images found", param="dataset")
    if found and "test" not in found:
        raise HeadInputError(
            f"{name}: split files for {sorted(found)} but none for the test split; add the "
            "test split file (or remove the others to split every image by the seeded rule)",
            param="dataset",
        )
    parts = [found[s] for s in SPLITS if s in found] if found else [whole]
    if found and len(found) < 3 and "train" not in found:
        if whole is None:
            missing = [s for s in SPLITS if s not in found]
            raise HeadInputError(
                f"{name}: no split file for {missing} and no images outside the split files",
                param="dataset",
            )
        listed = {s.path for d in found.values() for s in d.samples}
        whole.index.samples = [s for s in whole.samples if s.path not in listed]
        if not whole.index.samples:
            raise HeadInputError(
                f"{name}: every image is in the test (or val) split file; the train split is empty",
                param="dataset",
            )
        parts.append(whole)
    first = parts[0]
    multi = first.multi_label
    offsets = list(np.cumsum([0] + [len(p) for p in parts[:-1]]))
    reader = _BenchmarkReader(parts, [int(o) for o in offsets])
    targets = np.stack([np.asarray(p.target(i)) for p in parts for i in range(len(p))])
    n = len(targets)
    targets = targets.astype(np.float64) if multi else targets.astype(np.int64)
    given = {}
    k = 0
    for s in SPLITS:
        if s in found:
            given[s] = np.arange(offsets[k], offsets[k] + len(found[s]), dtype=np.int64)
            k += 1
    splits, notes = _split_or_fill(
        n, None if multi else targets, given, val_fraction, test_fraction, seed
    )
    split_source = {s: notes.get(s) or found[s].index.split_source for s in SPLITS}
    paths = [str(p.samples[i].path) for p in parts for i in range(len(p))]
    if len(set(paths)) != len(paths):
        raise HeadInputError(
            f"{first.name}: the split files list some samples more than once (or in two splits)"
        )
    return TaskData(
        name=first.name,
        task="multi-label" if multi else "classification",
        items=list(range(n)),
        targets=targets,
        names=list(first.classes.labels),
        prompt_names=list(first.class_names),
        splits=splits,
        split_source=split_source,
        source={"source": "benchmark", "root": str(first.root), "layout": first.spec.layout,
                "dataset_dir": str(dataset_dir), "bands": list(first.spec.bands or [])},
        reader=reader,
    )  # fmt: skip


# -- CSV tables --------------------------------------------------------------------------------
def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV table: comma-separated, or separated by tabs (``.tsv`` files)
    or semicolons (what a spreadsheet writes where the comma is the decimal mark), by the rule
    of :func:`msclip.io.tables.separator_of` that ``msclip-train`` reads its tables by."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = separator_of(path, f.readline())
            f.seek(0)
            reader = csv.DictReader(f, delimiter=delimiter)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except FileNotFoundError as err:
        raise HeadInputError(f"table {path} not found", param="csv") from err
    except UnicodeDecodeError as err:
        raise HeadInputError(
            f"table {path} is not UTF-8 text ({err.reason}{where_not_utf8(path)}); save it as "
            "UTF-8 (a spreadsheet's 'CSV UTF-8' format)",
            param="csv",
        ) from None
    except (OSError, csv.Error) as err:
        raise HeadInputError(f"cannot read table {path}: {err}", param="csv") from err
    if not rows:
        raise HeadInputError(f"table {path} has no rows", param="csv")
    return columns, rows


def _need_columns(path: Path, columns: list[str], wanted: Sequence[str], param: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise HeadInputError(
            f"{path} has no column(s) {missing}; its columns are {columns}", param=param
        )


def _line(i: int) -> int:
    return i + 2  # header on line 1


_QUOTED = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*(?:,|$|(?=['"]))""")


def _holds_lists(rows: Sequence[dict[str, str]], column: str) -> bool:
    """Whether the first filled cell of ``column`` is written as a list (``[a, b]``)."""
    for row in rows:
        cell = (row.get(column) or "").strip()
        if cell:
            return cell.startswith("[") and cell.endswith("]")
    return False


def _list_cell(cell: str, where: str, column: str) -> list[str] | None:
    """The labels of a multi-label cell written as a list, or ``None`` for any other cell.

    Lists as tables hold them: JSON (``["Arable land", "Pastures"]``), Python's ``str`` of a
    list (``['Arable land', 'Pastures']``), NumPy's of an array of strings (``['Arable land'
    'Pastures']``, what ``DataFrame.to_csv`` writes for BigEarthNet's metadata), or bare
    comma-separated items (``[sea, forest]``, ``[1, 5]``). ``[]`` is an image with no class.
    Split at a label separator instead, ``['Arable land'`` and ``'Pastures']`` would each
    become a class of their own. Nothing is evaluated.
    """
    if not (cell.startswith("[") and cell.endswith("]")):
        return None
    try:
        parsed = json.loads(cell)
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and all(isinstance(x, (str, int)) for x in parsed):
        labels = [str(x).strip() for x in parsed]
        return [x for x in labels if x]
    body = cell[1:-1].strip()
    if not body:
        return []
    if "'" not in body and '"' not in body:
        return [x.strip() for x in body.split(",") if x.strip()]
    labels, pos = [], 0
    while pos < len(body):
        m = _QUOTED.match(body, pos)
        if m is None or m.end() == pos:
            raise HeadInputError(
                f"{where}: column {column!r} holds {cell!r}, which reads as neither a list of "
                "quoted labels nor of bare comma-separated ones; write it as ['a', 'b'] or "
                "[a, b]",
                param="label_columns",
            )
        text = m.group(1) if m.group(1) is not None else m.group(2)
        labels.append(re.sub(r"\\(.)", r"\1", text).strip())
        pos = m.end()
    return [x for x in labels if x]


def _check_files(paths: Sequence[str], where: str, base: Path | None = None) -> None:
    """Refuse rows whose image file does not exist, naming the first rows' lines and where
    relative paths were looked for (``base``: ``--data-root``, else the table's folder)."""
    missing = [(i, p) for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(f"line {_line(i)}: {p}" for i, p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        start = f" ({base})" if base is not None else ""
        raise HeadInputError(
            f"{len(missing)} image file(s) named in {where} do not exist ({shown}{more}); fix the "
            f"paths, or the folder relative paths start from{start}: the data root, else the "
            "table's folder",
            param="data_root",
        )


def _refuse_repeated_paths(paths: Sequence[str], table: Path, path_column: str) -> None:
    """Refuse an image listed on two rows: the splits would be able to put it in train and in
    test at once (test images seen in training), and its samples would count twice."""
    first: dict[str, int] = {}
    for i, path in enumerate(paths):
        key = os.path.normcase(os.path.abspath(path))
        if key in first:
            raise HeadInputError(
                f"{table}, lines {_line(first[key])} and {_line(i)} name the same image "
                f"{path!r} (column {path_column!r}); list each image once (merge its labels "
                "into one row)",
                param="csv",
            )
        first[key] = i


def from_csv(
    path: str | os.PathLike,
    task: str = "classification",
    path_column: str = "path",
    label_columns: Sequence[str] | None = None,
    value_columns: Sequence[str] | None = None,
    label_separator: str | None = None,
    scale: float = 1.0,
    classes: Any = None,
    data_root: str | os.PathLike | None = None,
    split_column: str | None = "split",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> TaskData:
    """Labelled images from a CSV table.

    Args:
        path: the table (UTF-8, header row).
        task: ``classification``, ``multi-label`` or ``regression``.
        path_column: column of image paths (relative to ``data_root``, else the table's folder).
        label_columns: classification: one column of class labels (default ``label``);
            multi-label: several 0/1 columns (one per class, named by the column), or one
            column of labels joined by ``label_separator`` or written as lists (``[a, b]``,
            read by :func:`_list_cell` whatever the separator).
        value_columns: regression: one or more numeric columns (default ``value``).
        label_separator: separator of the labels of one multi-label cell.
        scale: regression targets are ``value * scale`` (e.g. 1e-4 for reflectance x 10000).
        classes: class list or class-name file (``label = name`` lines): the class order and
            the prompt names; every label must be one of them. Default: the sorted labels found.
        data_root: folder relative image paths start from.
        split_column: column of split names (``train``/``val``/``test``); used when present.
            Without ``val`` rows, the validation split is taken out of the ``train`` rows by
            the seeded rule (``val_fraction``).
        val_fraction: seeded rule, when there is no split column.
        test_fraction: idem.
        seed: seed of the seeded rule.
        name: the dataset's name in records (default: the table's stem).

    Raises:
        HeadInputError: a missing column, file, label or target (the line is named), an
            unknown label or split name, non-numeric or NaN targets, an empty split, an image
            listed on two rows.
    """
    if task not in DATA_TASKS:
        raise HeadConfigError(f"unknown task {task!r}; choose one of {list(DATA_TASKS)}", "task")
    p = Path(path).expanduser()
    columns, rows = _read_table(p)
    _need_columns(p, columns, [path_column], "path_column")
    base = Path(data_root).expanduser() if data_root is not None else p.parent
    paths = []
    for i, row in enumerate(rows):
        cell = (row.get(path_column) or "").strip()
        if not cell:
            raise HeadInputError(f"{p}, line {_line(i)}: empty image path ({path_column!r})")
        q = Path(cell).expanduser()
        paths.append(str(q if q.is_absolute() else base / q))
    _refuse_repeated_paths(paths, p, path_column)
    where = f"{p}, line"
    names: list[str]
    prompt: list[str] | None
    if task == "regression":
        cols = list(value_columns or ["value"])
        _need_columns(p, columns, cols, "value_columns")
        scale = float(scale)
        if not (math.isfinite(scale) and scale != 0.0):
            raise HeadConfigError(f"scale must be a finite non-zero number; got {scale!r}", "scale")
        values = np.empty((len(rows), len(cols)))
        for i, row in enumerate(rows):
            for j, c in enumerate(cols):
                cell = (row.get(c) or "").strip()
                try:
                    v = float(cell)
                except ValueError:
                    v = float("nan")
                if not math.isfinite(v):
                    raise HeadInputError(
                        f"{where} {_line(i)} ({paths[i]}): target {c!r} is {cell or 'empty'!r}, "
                        "not a finite number; fill it or drop the row",
                        param="value_columns",
                    )
                values[i, j] = v * scale
        targets: np.ndarray = values
        names, prompt, strat = cols, None, None
    elif task == "classification":
        cols = list(label_columns or ["label"])
        if len(cols) != 1:
            raise HeadConfigError(
                f"classification reads one label column; got {cols} (several 0/1 columns are "
                "multi-label: task 'multi-label')",
                param="label_columns",
            )
        _need_columns(p, columns, cols, "label_columns")
        raw = []
        for i, row in enumerate(rows):
            cell = (row.get(cols[0]) or "").strip()
            if not cell:
                raise HeadInputError(
                    f"{where} {_line(i)} ({paths[i]}): missing label in column {cols[0]!r}; "
                    "label the image or drop the row",
                    param="label_columns",
                )
            raw.append(cell)
        names, prompt = _class_list(classes, raw)
        index = {c: k for k, c in enumerate(names)}
        for i, lab in enumerate(raw):
            if lab not in index:
                raise HeadInputError(
                    f"{where} {_line(i)}: label {lab!r} is not one of the classes {names}",
                    param="classes",
                )
        targets = np.asarray([index[lab] for lab in raw], dtype=np.int64)
        strat = targets
    else:
        cols = list(label_columns or ["labels"])
        _need_columns(p, columns, cols, "label_columns")
        if len(cols) == 1 and (label_separator is not None or _holds_lists(rows, cols[0])):
            sets = []
            for i, row in enumerate(rows):
                cell = (row.get(cols[0]) or "").strip()
                if not cell:
                    raise HeadInputError(
                        f"{where} {_line(i)} ({paths[i]}): missing labels in column {cols[0]!r} "
                        "(write [] for an image with no class, or use 0/1 columns, one per "
                        "class)",
                        param="label_columns",
                    )
                listed = _list_cell(cell, f"{where} {_line(i)} ({paths[i]})", cols[0])
                if listed is not None:
                    sets.append(listed)
                elif label_separator is None:
                    raise HeadInputError(
                        f"{where} {_line(i)} ({paths[i]}): column {cols[0]!r} holds {cell!r}, "
                        "not a list of labels like the cells above it ([a, b]); write every "
                        "cell as a list, or give the label separator",
                        param="label_separator",
                    )
                else:
                    sets.append([s.strip() for s in cell.split(label_separator) if s.strip()])
            names, prompt = _class_list(classes, [s for row in sets for s in row])
            index = {c: k for k, c in enumerate(names)}
            targets = np.zeros((len(rows), len(names)))
            for i, labs in enumerate(sets):
                for lab in labs:
                    if lab not in index:
                        raise HeadInputError(
                            f"{where} {_line(i)}: label {lab!r} is not one of the classes {names}",
                            param="classes",
                        )
                    targets[i, index[lab]] = 1.0
        else:
            if len(cols) < 2 and label_separator is None:
                raise HeadConfigError(
                    f"multi-label data needs several 0/1 columns, or one column of labels "
                    f"joined by a separator or written as lists ([a, b]); got the column {cols} "
                    "without a separator",
                    param="label_separator",
                )
            targets = np.zeros((len(rows), len(cols)))
            for i, row in enumerate(rows):
                for j, c in enumerate(cols):
                    cell = (row.get(c) or "").strip().lower()
                    if cell in ("1", "1.0", "true", "yes"):
                        targets[i, j] = 1.0
                    elif cell not in ("0", "0.0", "false", "no"):
                        raise HeadInputError(
                            f"{where} {_line(i)} ({paths[i]}): column {c!r} holds "
                            f"{cell or 'nothing'!r}; multi-label columns hold 0 or 1",
                            param="label_columns",
                        )
            names = cols
            prompt = [c.replace("_", " ") for c in cols]
            if classes is not None:
                # The class list names each column's class: its prompt is found by label, not by
                # position (the list may be in another order, or name more classes).
                listed = dict(zip(*_class_list(classes, cols)))
                unlisted = [c for c in cols if c not in listed]
                if unlisted:
                    raise HeadInputError(
                        f"label columns {unlisted} are not among the classes {list(listed)}; "
                        "name each 0/1 column's class in the class list, or fix the columns",
                        param="classes",
                    )
                prompt = [listed[c] for c in cols]
        strat = None
    given: dict[str, np.ndarray] = {}
    split_source: dict[str, str] = {}
    if split_column and split_column in columns:
        which = []
        for i, row in enumerate(rows):
            cell = (row.get(split_column) or "").strip().lower()
            if cell not in _SPLIT_ALIASES:
                raise HeadInputError(
                    f"{where} {_line(i)}: split {cell or 'empty'!r} in column {split_column!r} is "
                    "not train, val or test",
                    param="split_column",
                )
            which.append(_SPLIT_ALIASES[cell])
        which_arr = np.asarray(which)
        for s in SPLITS:
            given[s] = np.flatnonzero(which_arr == s).astype(np.int64)
            split_source[s] = f"column {split_column!r} of {p}"
            if len(given[s]) == 0 and s == "val":
                # Train and test rows without validation rows (the common published layout):
                # the validation split comes out of the train rows by the seeded rule, as for a
                # benchmark dataset with train and test split files only.
                del given[s], split_source[s]
            elif len(given[s]) == 0:
                raise HeadInputError(
                    f"{p}: the {s} split is empty (no row has {split_column} = {s}); give it "
                    "rows, or drop the column to split by the seeded rule",
                    param="split_column",
                )
    _check_files(paths, str(p), base)
    splits, notes = _split_or_fill(len(rows), strat, given, val_fraction, test_fraction, seed)
    split_source.update(notes)
    return TaskData(
        name=name or p.stem,
        task=task,
        items=paths,
        targets=targets,
        names=list(names),
        prompt_names=prompt,
        splits=splits,
        split_source=split_source,
        source={"source": "csv", "csv": str(p), "path_column": path_column,
                "columns": cols, "label_separator": label_separator,
                "scale": scale if task == "regression" else None},
    )  # fmt: skip


# -- class folders -----------------------------------------------------------------------------
def from_folders(
    root: str | os.PathLike,
    classes: Any = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> TaskData:
    """Single-label images in one folder per class.

    Layouts, first match wins: ``<root>/{train,val,test}/<class>/<image>`` (the splits as
    given); ``<root>/<class>/<image>`` with ``<root>/{train,val,test}.txt`` (one
    ``<class>/<image>`` entry per line, ``#`` comments); ``<root>/<class>/<image>`` alone (the
    seeded rule).

    Args:
        root: the folder.
        classes: class list or class-name file (order and prompt names); by default the sorted
            folder names, prompted with ``_`` read as a space.
        val_fraction: seeded rule.
        test_fraction: seeded rule.
        seed: its seed.
        name: the dataset's name in records (default: the folder's name).

    Raises:
        HeadInputError: no such folder, no images, a folder that is not a class, a split file
            that names a class the dataset lacks or an image that does not exist, an empty split.
    """
    from msclip.io.images import class_folders, folder_images

    r = Path(root).expanduser()
    if not r.is_dir():
        raise HeadInputError(f"image folder {r} does not exist", param="folders")
    split_dirs = {s: r / s for s in SPLITS if (r / s).is_dir()}
    labelled: list[tuple[str, Path, str | None]] = []  # (class, file, split)
    if split_dirs:
        if len(split_dirs) != 3:
            raise HeadInputError(
                f"{r} has split folders {sorted(split_dirs)} but not all of train, val and test"
            )
        for s, d in split_dirs.items():
            for c in class_folders(d):
                labelled += [(c.name, q, s) for q in folder_images(c)]
        source = {s: f"folder {r / s}" for s in SPLITS}
    else:
        for c in class_folders(r):
            labelled += [(c.name, q, None) for q in folder_images(c)]
        source = {}
    if not labelled:
        raise HeadInputError(
            f"no images found in the class folders of {r}; expected <folder>/<class>/<image>",
            param="folders",
        )
    names, prompt = _class_list(classes, [c for c, _, _ in labelled])
    unknown = sorted({c for c, _, _ in labelled} - set(names))
    if unknown:
        raise HeadInputError(
            f"{r} holds class folders {unknown} that are not among the classes {names}; remove "
            "them or fix the class list",
            param="classes",
        )
    index = {c: k for k, c in enumerate(names)}
    paths = [str(q) for _, q, _ in labelled]
    targets = np.asarray([index[c] for c, _, _ in labelled], dtype=np.int64)
    given: dict[str, np.ndarray] = {}
    if split_dirs:
        which = np.asarray([s for _, _, s in labelled])
        given = {s: np.flatnonzero(which == s).astype(np.int64) for s in SPLITS}
    else:
        by_entry = {f"{c}/{q.name}": i for i, (c, q, _) in enumerate(labelled)}
        by_stem = {f"{c}/{q.stem}": i for i, (c, q, _) in enumerate(labelled)}
        for s in SPLITS:
            f = r / f"{s}.txt"
            if not f.is_file():
                continue
            rows = []
            for n_line, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                entry = line.strip().replace("\\", "/")
                if not entry or entry.startswith("#"):
                    continue
                cls = entry.split("/")[0]
                if "/" not in entry or cls not in names:
                    raise HeadInputError(
                        f"{f}, line {n_line}: {entry!r} names class {cls!r}, which the dataset "
                        f"lacks (classes: {names}); entries are <class>/<image>",
                        param="folders",
                    )
                i = by_entry.get(entry, by_stem.get(entry))
                if i is None:
                    raise HeadInputError(
                        f"{f}, line {n_line}: image {entry!r} is not under {r}", param="folders"
                    )
                rows.append(i)
            if not rows:
                raise HeadInputError(f"split file {f} lists no images: the {s} split is empty")
            given[s] = np.unique(np.asarray(rows, dtype=np.int64))
            source[s] = f"split file {f}"
        if given and "test" not in given:
            raise HeadInputError(
                f"{r} has split files for {sorted(given)} but none for test; add test.txt"
            )
    splits, notes = _split_or_fill(len(paths), targets, given, val_fraction, test_fraction, seed)
    source.update(notes)
    return TaskData(
        name=name or r.name,
        task="classification",
        items=paths,
        targets=targets,
        names=names,
        prompt_names=prompt,
        splits=splits,
        split_source=source,
        source={"source": "folders", "root": str(r)},
    )
