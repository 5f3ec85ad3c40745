"""Evaluation records and the reports merged from them.

One machine-readable JSON record is written per (model, dataset) run; a separate merge step
turns every record under a results folder into tables and a report (the ``eval``/``build`` split
of CLIP_benchmark), so runs of different models and days combine and the merge can be repeated
alone (``python evaluation.py --merge-only --save-path results/``).

Results folder::

    results/
      records/<model>__<dataset>.json          one record per successful run (schema below)
      records/<model>__<dataset>.failed.json   one per failed run (error and traceback)
      scores/<model>__<dataset>.npz            raw scores and targets (--save-scores)
      summary.csv                              rows: models; columns: datasets; main metric each
      summary_long.csv                         model, dataset, metric, value: every metric
      per_class/<model>__<dataset>.csv         per-class rows of one run
      figures/<model>__<dataset>__confusion.png  row-normalised confusion matrix (single-label)
      report.md                                everything above, human-readable

Probes and fine-tuned heads (``msclip-finetune``, :mod:`msclip.heads.finetune`) write records of
the same schema into the same folder (:func:`make_head_record`, ``kind = "head"``): the model label
is ``<model>+<method>`` (``msclip-demo+logistic``, ``msclip-demo+linear-lora``), so their rows sit
beside the zero-shot rows of ``summary.csv`` and ``report.md``; they add ``method`` (name, encoder
mode, hyper-parameters) and ``ci`` (bootstrap intervals of the metrics).

A record (``schema = "msclip.eval.record/1"``) holds: ``model`` (label, name, checkpoint path
and sha256, pretrained flag, bands, precision, architecture), ``dataset`` (name, root, split and
where it came from, layout, bands, classes, sample counts), ``templates`` (name, source file,
count, sha256 of their text), ``task``, ``metrics`` (the report's overall metrics),
``main_metric``, ``ap`` (k, definition name and wording, empty-class policy), ``per_class``
(rows), ``confusion_matrix`` (single-label), ``seed``, ``versions`` (python, msclip, torch,
open_clip, numpy ...), ``timing`` (wall time and stages), ``run_key``, ``command``, ``created``.
Every file is written atomically. ``<model>`` and ``<dataset>`` are the label and the name made
file-name safe; one that had to be changed for that also carries 8 hex digits of its exact text
(``demo_fp32-1b6a03c2``), so two labels never share a file (``demo (fp32)``, ``demo [fp32]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msclip.errors import RecordError, shown_when_quiet
from msclip.eval.definitions import interval_header, metric_format
from msclip.hardware import library_versions
from msclip.io import TMP_PREFIX, atomic_write, jsonable, write_csv, write_json, write_text
from msclip.wording import plural

__all__ = [
    "MAIN_METRICS",
    "RECORD_SCHEMA",
    "MergeResult",
    "RecordError",
    "failure_path",
    "file_stem",
    "load_records",
    "make_head_record",
    "make_record",
    "merge",
    "plot_confusion",
    "read_record",
    "record_path",
    "slug",
    "write_failure",
    "write_json",
    "write_record",
]

logger = logging.getLogger(__name__)

RECORD_SCHEMA = "msclip.eval.record/1"
#: Metric shown in ``summary.csv`` per task, unless the merge is given another.
MAIN_METRICS: dict[str, str] = {
    "single_label": "top1_accuracy",
    "multi_label": "map_at_k",
    "regression": "r2",
    "segmentation": "miou",
    "pixel_regression": "rmse",
}
#: ``kind`` of the records of probes and fine-tuned heads (:func:`make_head_record`); records
#: without a ``kind`` are zero-shot evaluations.
HEAD_KIND = "head"
#: Required top-level keys of a record.
RECORD_KEYS: tuple[str, ...] = (
    "schema", "model", "dataset", "templates", "task", "metrics", "main_metric", "ap",
    "per_class", "seed", "versions", "timing", "run_key", "created",
)  # fmt: skip


# -- names and files -------------------------------------------------------------------------
def slug(text: str) -> str:
    """A file-name-safe form of a model label or dataset name."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")
    return s or "unnamed"


def _file_name(text: str) -> str:
    """:func:`slug`, plus a short digest of the exact text where the slug changed it: two labels
    that slug alike ("demo (fp32)", "demo [fp32]") must not write the same file."""
    s = slug(text)
    if s == text:
        return s
    import hashlib

    return f"{s}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def file_stem(model_label: str, dataset: str) -> str:
    """The ``<model>__<dataset>`` part of the files of one run (records, scores, per-class
    tables, figures): one stem per exact (label, dataset) pair."""
    return f"{_file_name(model_label)}__{_file_name(dataset)}"


def _legacy_stem(model_label: str, dataset: str) -> str:
    """The stem of records written before stems told apart labels that slug alike."""
    return f"{slug(model_label)}__{slug(dataset)}"


def record_path(save_path: str | os.PathLike, model_label: str, dataset: str) -> Path:
    """Where the record of (model, dataset) lives."""
    return Path(save_path) / "records" / f"{file_stem(model_label, dataset)}.json"


def failure_path(save_path: str | os.PathLike, model_label: str, dataset: str) -> Path:
    """Where the failure note of (model, dataset) lives."""
    return Path(save_path) / "records" / f"{file_stem(model_label, dataset)}.failed.json"


def make_record(
    result: Any,
    model: dict[str, Any],
    *,
    split: str,
    seed: int,
    run_key: str,
    wall_s: float,
    command: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record of one evaluation.

    Args:
        result: a :class:`msclip.eval.runner.EvalResult`.
        model: model facts (label, name, checkpoint path and sha256, bands, precision ...).
        split: the evaluated split.
        seed: the run's seed.
        run_key: :func:`msclip.eval.runner.run_key` of the run's defining facts.
        wall_s: wall-clock seconds of the whole (model, dataset) run.
        command: the command line.
        extra: further top-level entries (settings).
    """
    from msclip.eval.metrics import AP_DEFINITIONS

    report = result.report
    ds = result.dataset
    dataset = ds.describe()
    dataset["split"] = split
    dataset["class_names"] = list(result.class_names)
    metrics = report.to_dict()
    task = "multi_label" if ds.multi_label else "single_label"
    per_class = report.per_class.copy()
    labels = list(ds.classes.labels)
    per_class.insert(2, "class_label", [labels[i] if i < len(labels) else "" for i in
                                        per_class["class_index"].tolist()])  # fmt: skip
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "status": "ok",
        "model": model,
        "dataset": dataset,
        "templates": result.templates.to_dict(),
        "task": task,
        "metrics": metrics,
        "main_metric": MAIN_METRICS[task],
        "ap": {
            "k": report.ap_k,
            "definition": report.ap_definition,
            "description": AP_DEFINITIONS[report.ap_definition],
            "no_relevant": report.no_relevant,
            "query": "class prompt embedding; documents: all images ranked by logit",
        },
        "per_class": per_class.to_dict(orient="records"),
        "unreadable": {
            "count": len(getattr(result, "failures", [])),
            "files": [f.name for f in getattr(result, "failures", [])],
            # why each was left out (a damaged file, a band it lacks): what to fix
            "samples": [
                {"file": f.name, "reason": f.reason} for f in getattr(result, "failures", [])
            ],
        },
        # what the model was given that it says little about (an RGB dataset on a multispectral
        # model: bands filled with their mean), once each with its sample count
        "input_warnings": list(getattr(result, "input_warnings", [])),
        "confusion_matrix": getattr(report, "confusion", None),
        "seed": seed,
        "versions": library_versions(),
        "timing": {"wall_s": wall_s, **result.timings},
        "run_key": run_key,
        "command": list(command),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        record.update(extra)
    return record


def make_head_record(
    *,
    model: dict[str, Any],
    dataset: dict[str, Any],
    task: str,
    method: dict[str, Any],
    metrics: dict[str, Any],
    ci: dict[str, Any],
    per_class: list[dict[str, Any]],
    confusion: Any,
    main_metric: str,
    seed: int,
    run_key: str,
    wall_s: float,
    command: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record of a probe or fine-tuned head on a test split.

    Args:
        model: the encoder's facts; its ``label`` becomes ``<label>+<method label>``.
        dataset: the data's facts (``name``, ``split``, ``split_source``, ``n_samples``,
            ``class_names`` ...).
        task: ``single_label``, ``multi_label`` or ``regression``.
        method: ``name``, ``label``, ``encoder_mode``, ``hyperparameters`` ...
        metrics: the test metrics.
        ci: metric -> bootstrap interval (``low``, ``high``, ``confidence`` ...).
        per_class: per-class (or per-output) rows.
        confusion: confusion matrix (single-label) or ``None``.
        main_metric: the metric of ``summary.csv``.
        seed: the run's seed.
        run_key: identity of the run's settings, data and model.
        wall_s: seconds.
        command: the command line.
        extra: further top-level entries.
    """
    facts = dict(model)
    facts["encoder_label"] = model.get("label")
    facts["label"] = f"{model.get('label')}+{method['label']}"
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "status": "ok",
        "kind": HEAD_KIND,
        "model": facts,
        "dataset": dataset,
        "templates": None,
        "task": task,
        "method": method,
        "metrics": metrics,
        "ci": ci,
        "main_metric": main_metric,
        "ap": None,
        "per_class": per_class,
        "confusion_matrix": confusion,
        "seed": seed,
        "versions": library_versions(),
        "timing": {"wall_s": wall_s},
        "run_key": run_key,
        "command": list(command),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        record.update(extra)
    return record


def write_record(save_path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write a run's record and remove a stale failure note of the same run."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise RecordError(f"record lacks keys {missing}")
    label, dataset = record["model"]["label"], record["dataset"]["name"]
    target = record_path(save_path, label, dataset)
    legacy = target.with_name(f"{_legacy_stem(label, dataset)}.json")
    if legacy != target and not _same_run(legacy, label, dataset):
        legacy = target
    _warn_replaced(target if target.is_file() else legacy, record)
    path = write_json(target, record)
    if legacy != target:  # this run's record under its earlier name: replaced, not doubled
        legacy.unlink()
    remove_failure(save_path, label, dataset)
    return path


def remove_failure(save_path: str | os.PathLike, model_label: str, dataset: str) -> None:
    """Remove the failure note of (model, dataset): its record is current (just written, or
    found up to date by ``--skip-existing``), so the reports must not list the run as failed."""
    stale = failure_path(save_path, model_label, dataset)
    for note in {stale, stale.with_name(f"{_legacy_stem(model_label, dataset)}.failed.json")}:
        if note.exists() and (note == stale or _same_run(note, model_label, dataset)):
            note.unlink()


def _same_run(path: Path, label: str, dataset: str) -> bool:
    """Whether the record or failure note at ``path`` is of exactly (``label``, ``dataset``)."""
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(old, dict):
        return False
    model = old.get("model")
    old_label = model.get("label") if isinstance(model, dict) else model
    ds = old.get("dataset")
    old_dataset = ds.get("name") if isinstance(ds, dict) else ds
    return old_label == label and old_dataset == dataset


def _hyperparameters(record: Mapping[str, Any]) -> dict[str, Any] | None:
    method = record.get("method")
    found = method.get("hyperparameters") if isinstance(method, dict) else None
    return found if isinstance(found, dict) else None


def _warn_replaced(path: Path, record: Mapping[str, Any]) -> None:
    """A warning when a record of other weights, another split or (heads) other hyper-parameters
    is about to be replaced: the same row label for two different things (give each its own
    ``--model-label``)."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict):
        return
    # the new record as it will read back from JSON: arrays (a probe's C or alpha grid), tuples
    # and NaN are compared as the old record holds them, not element-wise as numpy would
    record = json.loads(json.dumps(jsonable(dict(record)), default=str))
    changed = []
    for section, key in (("model", "checkpoint_sha256"), ("dataset", "split"), ("model", "seed"),
                         (None, "seed")):  # fmt: skip
        a = (old.get(section) or {}).get(key) if section else old.get(key)
        b = (record.get(section) or {}).get(key) if section else record.get(key)
        if a is not None and b is not None and a != b:
            changed.append(f"{key} {str(a)[:16]} -> {str(b)[:16]}")
    before, after = _hyperparameters(old), _hyperparameters(record)
    if before is not None and after is not None:
        differ = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        changed += [f"{k} {str(before.get(k))[:16]} -> {str(after.get(k))[:16]}"
                    for k in differ[:4]]  # fmt: skip
        if len(differ) > 4:
            changed.append(plural(len(differ) - 4, "more setting"))
    if changed:
        # shown under --quiet too: another result is about to be overwritten without a trace
        shown_when_quiet.warning(
            "%s is replaced by a result of the same label %r for something else (%s); give each "
            "its own --model-label to keep both",
            path, record["model"]["label"], ", ".join(changed),
        )  # fmt: skip


def write_failure(
    save_path: str | os.PathLike,
    model_label: str,
    dataset: str,
    error: BaseException,
    traceback_text: str = "",
) -> Path:
    """Write a failure note for (model, dataset); an older successful record is kept."""
    note = {
        "schema": RECORD_SCHEMA,
        "status": "failed",
        "model": {"label": model_label},
        "dataset": {"name": dataset},
        "error_type": type(error).__name__,
        "error": str(error),
        "traceback": traceback_text,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return write_json(failure_path(save_path, model_label, dataset), note)


def load_records(
    save_path: str | os.PathLike, damaged: list[RecordError] | None = None
) -> tuple[list[dict], list[dict]]:
    """All successful records and failure notes under ``save_path/records``.

    Args:
        save_path: the results folder.
        damaged: when given, a file that cannot be used (not valid JSON, not an object, lacking
            required keys) is appended to it as a :class:`RecordError` and left out instead of
            raising.

    Raises:
        RecordError: a record file is not valid JSON or lacks required keys (without
            ``damaged``).
    """
    folder = Path(save_path) / "records"
    records, failures = [], []
    if not folder.is_dir():
        return records, failures
    for p in sorted(folder.glob("*.json")):
        try:
            obj = read_record(p)
        except RecordError as err:
            if damaged is None:
                raise
            damaged.append(err)
            continue
        if p.name.endswith(".failed.json"):
            failures.append(obj)
        else:
            records.append(obj)
    return records, failures


def read_record(p: Path) -> dict[str, Any]:
    """One record or failure note (``*.failed.json``), checked for what the merge reads of it.

    Raises:
        RecordError: not valid JSON, not an object, lacking required keys, or without a model
            label and dataset name.
    """
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"cannot read record {p}: {err}") from err
    failed = p.name.endswith(".failed.json")
    keys = ("model", "dataset") if failed else RECORD_KEYS
    missing = [k for k in keys if k not in obj] if isinstance(obj, dict) else list(keys)
    if not missing and not all(
        isinstance(obj[k], dict) and isinstance(obj[k].get(n), str)
        for k, n in (("model", "label"), ("dataset", "name"))
    ):
        missing = ["model.label", "dataset.name"]
    if missing:
        raise RecordError(f"record {p} lacks keys {missing}; re-run that evaluation")
    if not failed:
        bad = _malformed(obj)
        if bad:
            raise RecordError(f"record {p} has {bad}; re-run that evaluation (or undo the edit)")
        obj["_path"] = str(p)
    return obj


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _malformed(rec: Mapping[str, Any]) -> str | None:
    """What of a record the merge reads is not of the form a run writes (a record edited by
    hand, or cut short): ``None`` when all is well, else a description naming the field."""
    metrics, main = rec["metrics"], rec["main_metric"]
    if not isinstance(metrics, dict):
        return f"'metrics' of type {type(metrics).__name__}, not a mapping"
    if not isinstance(main, str) or main not in metrics:
        return f"main_metric {main!r}, which is not one of its metrics {sorted(metrics)[:12]}"
    if metrics[main] is not None and not _is_number(metrics[main]):
        return f"metrics.{main} = {metrics[main]!r}, not a number"
    for key in ("model", "dataset", "timing", "versions"):
        if not isinstance(rec[key], dict):
            return f"{key!r} of type {type(rec[key]).__name__}, not a mapping"
    per_class = rec["per_class"]
    if per_class is not None and not (
        isinstance(per_class, list) and all(isinstance(r, dict) for r in per_class)
    ):
        return "'per_class' that is not a list of rows (mappings)"
    cm = rec.get("confusion_matrix")
    if cm and rec["task"] in ("single_label", "segmentation"):  # the ones the merge draws
        names = rec["dataset"].get("class_names")
        n = len(names) if isinstance(names, list) else -1
        rows_ok = isinstance(cm, list) and len(cm) == n
        if not (rows_ok and all(isinstance(r, list) and len(r) == n for r in cm)) or not all(
            _is_number(v) for r in cm for v in r
        ):
            return f"a 'confusion_matrix' that is not {n} x {n} numbers (dataset.class_names)"
    return None


# -- figures ---------------------------------------------------------------------------------
def _literal(text: str) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` would start mathtext, which garbles
    names such as ``cost $5-$10`` and fails on others (``$\\frac$``)."""
    return str(text).replace("$", r"\$")


# what a confusion figure is drawn from is written into its PNG (a text chunk); raise the version
# when the drawing changes, so that figures drawn before are drawn again
_FIGURE_KEY, _FIGURE_VERSION = "msclip-figure", 1


def _figure_key(cm: np.ndarray, class_names: Sequence[str], title: str) -> str:
    import hashlib

    import matplotlib

    what = [_FIGURE_VERSION, matplotlib.__version__, cm.tolist(), [str(c) for c in class_names],
            title]  # fmt: skip
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _figure_is(path: Path, key: str) -> bool:
    """Whether ``path`` is a whole PNG drawn from ``key`` (its text chunk, read without decoding
    the image; a missing, foreign or damaged file is not)."""
    if not path.is_file():
        return False
    try:
        from PIL import Image

        with Image.open(path) as im:
            if im.format != "PNG" or im.info.get(_FIGURE_KEY) != key:  # chunks before the image
                return False
            im.verify()  # the chunks' checksums, to the end of the file
        return True
    except Exception:  # a damaged file is drawn again
        return False


def plot_confusion(
    matrix: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Save a row-normalised confusion matrix (rows: true class, columns: prediction) as PNG.

    Counts are written in the cells when there are at most 15 classes. A figure already at
    ``path`` drawn from the same matrix, names and title is kept as it is (drawing one takes about
    a second, 2-3 s for 45 classes, and :func:`merge` draws every run's after each evaluation).
    """
    cm = np.asarray(matrix, dtype=np.float64)
    key = _figure_key(cm, class_names, title)
    if _figure_is(Path(path), key):
        return Path(path)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(max(4.0, 0.32 * n + 2.5), 18.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    short = [_literal(c if len(c) <= 28 else c[:26] + "…") for c in class_names]
    ax.set_xticks(range(n), short, rotation=90, fontsize=7 if n > 20 else 8)
    ax.set_yticks(range(n), short, fontsize=7 if n > 20 else 8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    if title:
        ax.set_title(_literal(title), fontsize=9)
    fig.tight_layout()

    def _save(tmp: str) -> None:
        fig.savefig(tmp, dpi=110, format="png", metadata={_FIGURE_KEY: key})

    try:
        return atomic_write(path, _save, ".png")
    finally:
        plt.close(fig)


# -- merging ---------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """Files written by :func:`merge`.

    Attributes:
        summary: ``summary.csv``.
        summary_long: ``summary_long.csv``.
        report: ``report.md``.
        per_class: per-class CSV files.
        figures: confusion-matrix PNGs.
        n_records: records merged.
        n_failures: failure notes found.
        damaged: why each unreadable record file was left out.
        notes: why cells of the summary do not compare with the others (a subset, unreadable
            samples left out, a column of mixed AP settings or multi-label rules).
    """

    summary: Path
    summary_long: Path
    report: Path
    per_class: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    n_records: int = 0
    n_failures: int = 0
    damaged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _dataset_order(records: list[dict]) -> list[str]:
    from msclip.eval.datasets import DATASETS

    names = {r["dataset"]["name"] for r in records}
    builtin = [n for n in DATASETS if n in names]
    return builtin + sorted(names - set(builtin))


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "—"
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else format(v, spec)
    return str(v)


def _md_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], specs: Mapping[str, str] | None = None
) -> str:
    """A markdown table; ``specs``: the number format of some columns (default ``.4f``)."""
    specs = specs or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row.get(c), specs.get(c, ".4f")).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_rows(
    metrics: Sequence[tuple[str, Any]],
    ci: Mapping[str, Any] | None = None,
    ci_column: str = "95% CI",
) -> list[dict[str, str]]:
    """``metric``/``value`` rows (and ``ci_column`` with ``ci``), each value in its metric's
    format (:func:`~msclip.eval.definitions.metric_format`: a regression's RMSE of 3e-6 is not
    0.0000)."""
    rows = []
    for k, v in metrics:
        row = {"metric": k, "value": _fmt(v, metric_format(k))}
        if ci is not None:
            row[ci_column] = _ci_text(ci.get(k), metric_format(k))
        rows.append(row)
    return rows


def _ci_column(ci: Mapping[str, Any]) -> str:
    """The header of a record's interval column, with the coverage its intervals were drawn
    with (``--confidence 0.9`` gives ``90% CI``); every interval of one run shares it."""
    levels = {
        float(c["confidence"])
        for c in ci.values()
        if isinstance(c, Mapping) and _is_number(c.get("confidence"))
    }
    if len(levels) > 1:
        return "CI (" + ", ".join(interval_header(c) for c in sorted(levels)) + ")"
    return interval_header(levels.pop() if levels else 0.95)


def _metric_of(rec: dict, metric: str | None) -> tuple[str, float | None]:
    given = metric and (rec["metrics"].get(metric) is None or _is_number(rec["metrics"][metric]))
    name = metric if given and metric in rec["metrics"] else rec["main_metric"]
    v = rec["metrics"].get(name)
    return name, (float("nan") if v is None else float(v))


def merge(save_path: str | os.PathLike, summary_metric: str | None = None) -> MergeResult:
    """Merge every record under ``save_path`` into summary tables, per-class CSVs, confusion
    PNGs and ``report.md``.

    Args:
        save_path: the results folder.
        summary_metric: metric for ``summary.csv`` (default: each record's main metric,
            :data:`MAIN_METRICS`); records without it keep their main metric.

    A record file that cannot be used (not valid JSON, lacking required keys) is left out with a
    warning and listed in ``report.md`` and :attr:`MergeResult.damaged`.

    Raises:
        RecordError: no record is readable, or ``summary_metric`` is in none of them.
    """
    save = Path(save_path)
    damaged: list[RecordError] = []
    records, failures = load_records(save, damaged)
    records = _one_record_per_run(save, records, damaged)
    for err in damaged:
        logger.warning("%s; it is left out of the reports", err)
    if not records and not failures:
        if damaged:
            raise RecordError(f"no readable evaluation record under {save / 'records'}: "
                              + "; ".join(str(e) for e in damaged))  # fmt: skip
        raise RecordError(
            f"no evaluation records under {save / 'records'}: is {save} the folder the runs "
            "saved to (--save-path)?"
        )
    if summary_metric:
        have = sorted({k for r in records for k, v in r["metrics"].items() if _is_number(v)})
        if records and summary_metric not in have:
            raise RecordError(
                f"no record has a number for the metric {summary_metric!r}; they have {have} "
                "(--summary-metric)"
            )
        fallback = sorted({r["dataset"]["name"] for r in records
                           if summary_metric not in r["metrics"]})  # fmt: skip
        if fallback:
            logger.warning(
                "summary.csv: %s has no %s; its column shows its main metric (report.md names "
                "the metric of each column)", ", ".join(fallback), summary_metric,
            )  # fmt: skip
    datasets = _dataset_order(records) if records else []
    models = sorted({r["model"]["label"] for r in records})

    # summary.csv: one row per model, one column per dataset
    table: dict[str, dict[str, float | None]] = {m: {} for m in models}
    used_metric: dict[str, set[str]] = {d: set() for d in datasets}
    shown: dict[tuple[str, str], str] = {}
    long_rows = []
    for rec in records:
        m, d = rec["model"]["label"], rec["dataset"]["name"]
        name, value = _metric_of(rec, summary_metric)
        table[m][d] = value
        shown[(m, d)] = name
        used_metric[d].add(name)
        for k, v in rec["metrics"].items():
            if k == "threshold":
                continue
            if (isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None:
                long_rows.append({"model": m, "dataset": d, "task": rec["task"], "metric": k,
                                  "value": float("nan") if v is None else v})  # fmt: skip
    notes = _summary_notes(records, shown)
    for note in notes:  # a number that does not compare is said under --quiet too
        shown_when_quiet.warning("summary: %s", note)
    summary = pd.DataFrame(
        [{"model": m, **{d: table[m].get(d) for d in datasets}} for m in models],
        columns=["model", *datasets],
    )
    summary_path = write_csv(summary, save / "summary.csv")
    long_df = pd.DataFrame(long_rows, columns=["model", "dataset", "task", "metric", "value"])
    long_path = write_csv(long_df, save / "summary_long.csv")

    result = MergeResult(summary_path, long_path, save / "report.md", n_records=len(records),
                         n_failures=len(failures), damaged=[str(e) for e in damaged],
                         notes=notes)  # fmt: skip
    sections = []
    for rec in sorted(records, key=lambda r: (r["model"]["label"],
                                              datasets.index(r["dataset"]["name"]))):  # fmt: skip
        m, d = rec["model"]["label"], rec["dataset"]["name"]
        stem = file_stem(m, d)
        per_class = pd.DataFrame(rec["per_class"])
        per_class.insert(0, "dataset", d)
        per_class.insert(0, "model", m)
        pc_path = write_csv(per_class, save / "per_class" / f"{stem}.csv")
        result.per_class.append(pc_path)
        fig_path = None
        if rec["task"] in ("single_label", "segmentation") and rec.get("confusion_matrix"):
            fig_path = plot_confusion(
                rec["confusion_matrix"], rec["dataset"]["class_names"],
                save / "figures" / f"{stem}__confusion.png", title=f"{m} on {d}",
            )  # fmt: skip
            result.figures.append(fig_path)
        sections.append(_section(rec, save, pc_path, fig_path))

    heads = any(r.get("kind") == HEAD_KIND for r in records)
    lines = [
        "# msclip benchmark report (zero-shot, probes and heads)"
        if heads
        else "# msclip zero-shot benchmark report",
        "",
        f"Merged {len(records)} record(s) and {len(failures)} failure note(s) from "
        f"`{save / 'records'}` on "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.",
        "Metric definitions: `docs/metrics.md` (scores are zero-shot logits, 100 x cosine"
        + ("; probes and heads score with probabilities, `docs/heads.md`)." if heads else ")."),
        "",
        "## Summary",
        "",
    ]
    if records:
        metric_row: dict[str, Any] = {"model": "(metric)"}
        metric_row.update({d: ", ".join(sorted(used_metric[d])) for d in datasets})
        rows = [metric_row, *({"model": m, **table[m]} for m in models)]
        # a dataset column of metrics in the targets' units: significant digits
        specs = {
            d: ".6g" for d in datasets if any(metric_format(k) == ".6g" for k in used_metric[d])
        }
        lines += [_md_table(rows, ["model", *datasets], specs), ""]
        if notes:
            lines += ["Cells that do not compare with the others:", ""]
            lines += [f"- {n}" for n in notes] + [""]
    else:
        lines += ["No successful evaluation records yet.", ""]
    if damaged:
        lines += ["## Unreadable records (left out)", ""]
        lines += [f"- {str(e).replace('|', chr(92) + '|')}" for e in damaged]
        lines.append("")
    if failures:
        lines += ["## Failed runs", ""]
        for f in failures:
            lines.append(
                f"- **{f['model']['label']} on {f['dataset']['name']}**: "
                f"{f.get('error_type', 'Error')}: {f.get('error', '')}"
            )
        lines.append("")
    lines += sections
    text = "\n".join(lines) + "\n"
    write_text(result.report, text)
    _remove_stale(save, {*result.per_class, *result.figures})
    return result


def _summary_notes(records: Sequence[dict], shown: Mapping[tuple[str, str], str]) -> list[str]:
    """Why cells of the summary do not compare with the others, one line each: a run on a
    random subset (``--max-samples``) or without its unreadable samples is not a result of the
    whole split, and a column whose AP metric was computed with other settings (k, definition,
    classes without positives) or multi-label rule in some rows compares unlike numbers.
    ``shown``: (model, dataset) -> the metric of its cell. Each line starts with the cells it
    is about, so it reads alone as a warning."""
    notes = []
    for rec in records:
        m, d = rec["model"]["label"], rec["dataset"]["name"]
        n = rec["metrics"].get("n_samples")
        subset = (rec.get("settings") or {}).get("max_samples")
        if subset is not None and any(k.startswith("random subset") for k in
                                      rec["dataset"].get("skipped") or {}):  # fmt: skip
            notes.append(f"{m} on {d}: a random subset of {n} samples (--max-samples {subset}), "
                         "not the whole split")  # fmt: skip
        bad = int((rec.get("unreadable") or {}).get("count") or 0)
        if bad:
            notes.append(f"{m} on {d}: {plural(bad, 'unreadable sample')} left out; the metrics "
                         f"are of the {n} read")  # fmt: skip

    def is_ap(metric: str) -> bool:  # map, map_at_k, ap_at_k: computed with the AP settings
        return metric.startswith("map") or "ap" in metric.split("_")

    by_dataset: dict[str, list[dict]] = {}
    for rec in records:
        by_dataset.setdefault(rec["dataset"]["name"], []).append(rec)
    for d, recs in by_dataset.items():
        kinds: dict[str, dict[str, list[str]]] = {}
        for r in recs:
            m, ap = r["model"]["label"], r.get("ap")
            if r.get("kind") == HEAD_KIND or not ap:  # a head states no zero-shot settings
                continue
            if any(is_ap(shown[(x["model"]["label"], d)]) for x in recs):
                setting = (f"AP@{ap.get('k')} {ap.get('definition')}, classes without positives "
                           f"{ap.get('no_relevant')}")  # fmt: skip
                kinds.setdefault("AP settings", {}).setdefault(setting, []).append(m)
            if r.get("task") == "multi_label" and "rule" in r["metrics"]:
                rule = f"rule {r['metrics']['rule']}"
                kinds.setdefault("multi-label rules", {}).setdefault(rule, []).append(m)
        for what, groups in kinds.items():
            if len(groups) > 1:
                said = "; ".join(
                    f"{', '.join(sorted(ms))}: {g}" for g, ms in sorted(groups.items())
                )
                notes.append(
                    f"{d}: the rows were scored with different {what} ({said}); their numbers "
                    "do not compare: run them again with the same settings"
                )
    return notes


def _one_record_per_run(save: Path, records: list[dict], damaged: list[RecordError]) -> list[dict]:
    """The records with one per (label, dataset): a second file of a run (a copy kept beside
    it, ``x copy.json``) would fill the same summary cell and per-class file, the last read
    winning. The run's own file (:func:`record_path`) is kept, else the newest; the others are
    added to ``damaged``."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        runs.setdefault((rec["model"]["label"], rec["dataset"]["name"]), []).append(rec)
    kept = []
    for (label, dataset), recs in runs.items():
        own = str(record_path(save, label, dataset))
        recs = sorted(recs, key=lambda r: (r["_path"] == own, str(r.get("created"))))
        kept.append(recs[-1])
        for other in recs[:-1]:
            damaged.append(RecordError(
                f"record {other['_path']} is a second record of {label!r} on {dataset!r}; the "
                f"reports show {recs[-1]['_path']}: remove the one that is not wanted"
            ))  # fmt: skip
    return [r for r in records if any(r is k for k in kept)]


def _remove_stale(save: Path, written: set[Path]) -> None:
    """Remove per-class tables and figures of runs whose record is gone (deleted, or renamed
    with its label), so that ``per_class/*.csv`` holds no rows of runs the report no longer has.
    A file is kept while a record of its stem exists: another run merging into the same folder
    at the same time writes its record before its tables."""
    for folder, suffix in (("per_class", ".csv"), ("figures", "__confusion.png")):
        for p in sorted((save / folder).glob(f"*{suffix}")):
            stem = p.name[: -len(suffix)]
            if p in written or p.name.startswith(TMP_PREFIX):  # another merge's file in flight
                continue
            if (save / "records" / f"{stem}.json").exists():
                continue
            logger.info("removing %s: its record %s.json is gone", p, stem)
            p.unlink(missing_ok=True)


def _head_section(rec: dict, save: Path, pc_path: Path, fig_path: Path | None) -> str:
    m, d, ds, meth = rec["model"]["label"], rec["dataset"]["name"], rec["dataset"], rec["method"]
    hp = meth.get("hyperparameters", {})
    shown = ", ".join(
        # settings as given: significant digits (a learning rate of 1e-5 is not 0.0000)
        f"{k} {_fmt(v, '.6g') if not isinstance(v, (dict, list)) else json.dumps(v)}"
        for k, v in hp.items()
        if not isinstance(v, dict)
    )
    lines = [
        f"## {m} — {d}",
        "",
        f"- method: `{meth.get('name')}` ({meth.get('label')}), encoder mode "
        f"{meth.get('encoder_mode')}, features `{json.dumps(meth.get('features'))}`; "
        f"{meth.get('n_train')} training and {meth.get('n_test')} test samples",
        f"- encoder: `{rec['model'].get('name')}`, fingerprint "
        f"`{rec['model'].get('fingerprint')}`, precision {rec['model'].get('precision')}",
        f"- data: {ds.get('description', '')}; test split from `{ds.get('split_source')}`",
        f"- settings: {shown}",
        f"- task: {rec['task']}; seed {rec['seed']}, wall time "
        f"{rec['timing'].get('wall_s', float('nan')):.1f} s, protocol card "
        f"`{rec.get('protocol', '')}`",
        f"- record: `{Path(rec['_path']).relative_to(save)}`, per-class CSV: "
        f"`{pc_path.relative_to(save)}`",
        "",
    ]
    ci = rec.get("ci") or {}
    column = _ci_column(ci)
    overall = _metric_rows(
        [(k, v) for k, v in rec["metrics"].items()
         if isinstance(v, (int, float)) and not isinstance(v, bool)],
        ci, column,
    )  # fmt: skip
    lines += [_md_table(overall, ["metric", "value", column]), ""]
    if rec["per_class"]:
        columns = list(rec["per_class"][0])
        specs = {c: metric_format(c) for c in columns}
        lines += ["Per class:", "", _md_table(rec["per_class"], columns, specs), ""]
    if fig_path is not None:
        lines += [f"![confusion matrix of {m} on {d}]({fig_path.relative_to(save)})", ""]
    return "\n".join(lines)


def _ci_text(ci: Any, spec: str = ".4f") -> str:
    if not ci:
        return ""
    return f"[{_fmt(ci.get('low'), spec)}, {_fmt(ci.get('high'), spec)}]"


#: Unreadable samples the report names with their reason (the record lists them all).
_UNREADABLE_SHOWN = 10


def _unreadable_lines(rec: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The report's words for samples that could not be read (a partial or damaged download, a
    band a file lacks): the note for the dataset line (the metrics are of the others only) and
    one sub-item per sample with its reason, what to fix."""
    bad = rec.get("unreadable") or {}
    n = int(bad.get("count") or 0)
    if not n:
        return "", []
    samples = list(bad.get("samples") or [])
    if not samples:  # a record written before the reasons were kept: the names alone
        samples = [{"file": f, "reason": None} for f in bad.get("files") or []]
    lines = []
    for sample in samples[:_UNREADABLE_SHOWN]:
        why = f": {' '.join(str(sample['reason']).splitlines())}" if sample.get("reason") else ""
        lines.append(f"  - `{sample['file']}`{why}")
    if n > len(lines):
        lines.append(f"  - and {n - len(lines)} more (the record's `unreadable` lists them all)")
    scored = (rec.get("metrics") or {}).get("n_samples")
    of = f"; the metrics are of the {scored} read" if scored is not None else ""
    return f"; **{n} unreadable and left out**{of}:", lines


def _input_warning_lines(rec: Mapping[str, Any]) -> list[str]:
    """The report's lines for the warnings met while reading the samples (bands the model lacks,
    8-bit pictures for a reflectance model): the numbers are of such input."""
    warned = rec.get("input_warnings") or []
    if not isinstance(warned, list) or not warned:
        return []
    n = (rec.get("dataset") or {}).get("n_samples")
    lines = ["- **input warnings** (the metrics are of this input):"]
    for w in warned:
        if isinstance(w, Mapping):
            count = f" ({w.get('count')} of {n} samples)" if w.get("count") is not None else ""
            lines.append(f"  - {' '.join(str(w.get('message')).splitlines())}{count}")
    return lines


def _templates_and_ap(tpl: dict | None, ap: dict | None) -> list[str]:
    """The templates and AP lines of a section; records without them (dense metrics, heads
    written by other tools) have none."""
    lines = []
    if tpl:
        lines.append(
            f"- templates: `{tpl.get('name')}` ({plural(tpl.get('n'), 'template')}, sha256 "
            f"`{str(tpl.get('sha256'))[:16]}…`, from `{tpl.get('source')}`)"
        )
    if ap:
        lines.append(
            f"- AP@{ap.get('k')}: `{ap.get('definition')}` — {ap.get('description')}; classes "
            f"without positives: {ap.get('no_relevant')}"
        )
    return lines


def _section(rec: dict, save: Path, pc_path: Path, fig_path: Path | None) -> str:
    if rec.get("kind") == HEAD_KIND:
        return _head_section(rec, save, pc_path, fig_path)
    m, d, ds = rec["model"]["label"], rec["dataset"]["name"], rec["dataset"]
    tpl, ap = rec["templates"], rec["ap"]
    unreadable, unreadable_items = _unreadable_lines(rec)
    lines = [
        f"## {m} — {d}",
        "",
        f"- model: `{rec['model'].get('name')}`, checkpoint "
        f"`{rec['model'].get('checkpoint_path') or 'none (random or registry weights)'}`, "
        f"sha256 `{rec['model'].get('checkpoint_sha256')}`, precision "
        f"{rec['model'].get('precision')}",
        f"- dataset: {ds.get('description', '')}; root `{ds.get('root')}`; split: "
        f"{ds.get('split')} from `{ds.get('split_source')}`; "
        f"{plural(ds.get('n_samples'), 'sample')}"
        + (f" (left out: {ds['skipped']})" if ds.get("skipped") else "")
        + unreadable,
        *unreadable_items,
        *_input_warning_lines(rec),
        *_templates_and_ap(tpl, ap),
        f"- task: {rec['task']}"
        + (f", rule `{rec['metrics'].get('rule')}`" if rec["task"] == "multi_label" else ""),
        f"- seed {rec['seed']}, wall time {rec['timing'].get('wall_s', float('nan')):.1f} s, "
        f"torch {rec['versions'].get('torch')}, msclip {rec['versions'].get('msclip')}",
        f"- record: `{Path(rec['_path']).relative_to(save)}`, per-class CSV: "
        f"`{pc_path.relative_to(save)}`",
        "",
    ]
    settings = ("ap_definition", "no_relevant", "rule", "threshold")
    overall = _metric_rows([(k, v) for k, v in rec["metrics"].items() if k not in settings])
    lines += [_md_table(overall, ["metric", "value"]), ""]
    if rec["per_class"]:
        columns = list(rec["per_class"][0])
        specs = {c: metric_format(c) for c in columns}
        lines += ["Per class:", "", _md_table(rec["per_class"], columns, specs), ""]
    if fig_path is not None:
        lines += [f"![confusion matrix of {m} on {d}]({fig_path.relative_to(save)})", ""]
    return "\n".join(lines)
