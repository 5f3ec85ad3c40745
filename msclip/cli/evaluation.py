"""``msclip-evaluation``: zero-shot benchmark evaluation with JSON records and merged reports.

Reproduces the benchmark protocol published with Llama3-MS-CLIP (Marimo et al., ECML PKDD 2025,
arXiv:2503.15969): each requested dataset's test split is read from the tree described in
``benchmark_datasets/README.md``, classified zero-shot with a prompt ensemble, and scored with
:mod:`msclip.eval.metrics`. For every (model, dataset) a JSON record is written; then all records
under ``--save-path`` are merged into ``summary.csv``, ``summary_long.csv``, per-class CSVs,
confusion-matrix PNGs and ``report.md`` (see :mod:`msclip.eval.report`). ``--merge-only`` runs
the merge alone.

A missing or broken dataset is reported (and noted in ``records/*.failed.json`` and the report)
while the other datasets still run; the exit status is then 1. A sample its split lists that is
not on disk fails the dataset (it is incomplete); a file that is there but cannot be read is
skipped, counted and listed with its reason in the record, and the exit status is 1 too
(``--strict`` fails the dataset instead). Usage errors (unknown template set, bad flags) exit
with 2 before any work.

Example::

    python evaluation.py --model-name Llama3-MS-CLIP-Base --datasets EuroSAT_MS BigEarthNet_MS \\
        --dataset-dir benchmark_datasets --templates path/to/msclip.txt --save-path results/
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msclip.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    UsageError,
    add_model_args,
    add_text_cache_args,
    finish_parser,
    flag_hint,
    model_from_args,
    no_pretrained_with_file,
    non_negative_int,
    positive_int,
    report_precision,
    run_cli,
    run_device,
    status,
)

__all__ = ["build_parser", "main", "parse_args"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``msclip-evaluation``."""
    from msclip.eval.definitions import (
        AP_DEFINITIONS,
        DEFAULT_AP_DEFINITION,
        NO_RELEVANT_POLICIES,
    )

    p = argparse.ArgumentParser(
        prog="msclip-evaluation",
        description="Zero-shot benchmark evaluation of a (multispectral) CLIP model; writes one "
        "JSON record per (model, dataset) and merges all records into CSV and Markdown reports.",
    )
    # Datasets name their own bands, so the input-band flags of inference do not apply here.
    m = add_model_args(p, default_model=None, inputs=False, subsets=True)
    m.add_argument(
        "--model-label",
        default=None,
        help="row name in the reports (default: the model name, '@<checkpoint stem>' with "
        "--ckpt-path (after its run folder for generic stems such as final), '-random' with "
        "--no-pretrained ('-seed<N>' for a seed other than 0), '-bf16' / '-int8' when that "
        "--precision is asked for (not when auto picks it))",
    )

    d = p.add_argument_group("datasets")
    d.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help="built-in dataset names, 'all', or dataset YAML files (see --list-datasets)",
    )
    d.add_argument(
        "--dataset-dir",
        default="benchmark_datasets",
        help="where datasets live (default benchmark_datasets)",
    )
    d.add_argument("--split", default="test", help="split to evaluate (default test)")
    d.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        help="evaluate a seeded random subset of this many samples per dataset (quick runs)",
    )
    d.add_argument(
        "--classnames",
        nargs="+",
        default=None,
        metavar="DATASET=FILE",
        help="class-name file overriding a dataset's own (label = name lines, or .yaml)",
    )
    d.add_argument("--list-datasets", action="store_true", help="list built-in datasets and exit")

    z = p.add_argument_group("zero-shot")
    z.add_argument(
        "--templates",
        nargs="+",
        default=None,
        metavar="SET|FILE|DATASET=SET|FILE",
        help="template set (msclip's own: see msclip.zero_shot.list_template_sets) or file "
        "for every dataset, and/or DATASET=... per dataset (default: each dataset's own). The "
        "published sets (msclip, clip, rs5m, meterml) are not shipped: pass their files",
    )
    z.add_argument("--ap-k", type=positive_int, default=100, help="k of AP@k (default 100)")
    z.add_argument(
        "--ap-definition",
        choices=sorted(AP_DEFINITIONS),
        default=DEFAULT_AP_DEFINITION,
        help=f"AP@k denominator (default {DEFAULT_AP_DEFINITION}; see docs/metrics.md)",
    )
    z.add_argument(
        "--no-relevant",
        choices=NO_RELEVANT_POLICIES,
        default="nan",
        help="AP of classes without positives: nan (left out of the mean; the default) or zero",
    )
    z.add_argument(
        "--multilabel-rule",
        choices=("mean_others", "other_class"),
        default="mean_others",
        help="multi-label decision: above the mean of the other classes (mean_others, the "
        "published rule and the default), or above an extra 'other features' class (other_class)",
    )
    z.add_argument(
        "--other-class-name",
        default="other features",
        help="name of that class (default 'other features')",
    )
    add_text_cache_args(z)
    z.add_argument(
        "--text-batch-size",
        type=positive_int,
        default=256,
        help="prompts per text-tower call (default 256)",
    )

    o = p.add_argument_group("output and execution")
    o.add_argument("--save-path", default="results", help="results folder (default results/)")
    o.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip (model, dataset) pairs whose record exists with the same checkpoint, "
        "templates, classes and settings",
    )
    o.add_argument("--merge-only", action="store_true", help="only merge existing records")
    o.add_argument(
        "--summary-metric",
        default=None,
        help="metric of summary.csv (default: top1_accuracy single-label, map_at_k multi-label)",
    )
    o.add_argument("--save-scores", action="store_true", help="also save scores as .npz")
    o.add_argument(
        "--strict",
        action="store_true",
        help="fail a dataset when one of its images cannot be read (default: name, skip and "
        "count unreadable images in the record; the exit status is then 1)",
    )
    o.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per model call (default 32)"
    )
    o.add_argument(
        "--workers", type=non_negative_int, default=2, help="DataLoader workers (default 2)"
    )
    o.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars, status lines (loading, precision) or warnings about settings; "
        "errors, the results on stdout and the warnings about results that may be wrong (an "
        "input lacking most bands, texts cut at the context) remain",
    )
    o.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="debug logging (also with --quiet, which still leaves out the progress bars "
        "and status lines)",
    )
    return finish_parser(p)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the arguments (exits with status 2 on a usage error)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.list_datasets or args.merge_only:
        return args
    if args.datasets is None:
        p.error("--datasets is required (or --merge-only / --list-datasets)")
    if args.model_name is None and args.ckpt_path is None:
        p.error("--model-name (or --ckpt-path with a self-describing .safetensors) is required")
    why = no_pretrained_with_file(args.model_name, args.pretrained)
    if why is not None:
        p.error(why)
    return args


# -- helpers ---------------------------------------------------------------------------------
def _dataset_list(items: Sequence[str]) -> list[str]:
    from msclip.eval.datasets import list_datasets

    out: list[str] = []
    for item in items:
        for part in item.split(",") if not os.path.exists(item) else [item]:
            part = part.strip()
            if not part:
                continue
            if part.lower() == "all":
                out += list_datasets()
            elif part.lower().endswith((".yaml", ".yml")) or os.path.exists(part):
                out.append(part)  # a dataset file: read (and checked) when its turn comes
            else:
                from msclip.eval.datasets import get_spec

                get_spec(part)  # an unknown name is a usage error, before any model is loaded
                out.append(part)
    return list(dict.fromkeys(out))


def _per_dataset(
    items: Sequence[str] | None, names: Sequence[str], what: str
) -> tuple[str | None, dict[str, str]]:
    """Split ``SPEC`` and ``DATASET=SPEC`` items into a global value and per-dataset values."""
    if not items:
        return None, {}
    lower = {n.lower(): n for n in names}
    global_value, per = None, {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key.lower() in lower:
            per[lower[key.lower()]] = value
        elif sep and not os.path.exists(item) and "/" not in key:
            raise UsageError(
                f"{what} {item!r} names dataset {key!r}, which is not among the requested "
                f"datasets {list(names)}"
            )
        elif global_value is not None:
            raise UsageError(f"{what}: give one value for all datasets, got {global_value!r} "
                             f"and {item!r} (use DATASET=... for per-dataset values)")  # fmt: skip
        else:
            global_value = item
    return global_value, per


def _dataset_name(item: str) -> str:
    """Display name of a requested dataset (a YAML file's declared name)."""
    from msclip.eval.datasets import resolve_spec

    try:
        return resolve_spec(item).name
    except (ValueError, OSError):
        return Path(item).stem if item.lower().endswith((".yaml", ".yml")) else item


def _check_unique_names(items: Sequence[str], names: Sequence[str]) -> None:
    """Refuse two requested datasets of one name: the second's record (and scores, tables)
    would replace the first's. Names are compared ignoring case, as the registry and the
    ``DATASET=...`` options match them."""
    seen: dict[str, str] = {}
    for item, name in zip(items, names):
        first = seen.setdefault(name.lower(), item)
        if first != item:
            raise UsageError(
                f"--datasets: {first!r} and {item!r} are both dataset {name!r} (names are "
                f"matched ignoring case); the second's record would replace the first's. Give "
                f"each dataset once, or another 'name:' in its YAML file"
            )


_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
#: File stems that say nothing of the run (its folder does).
_GENERIC_STEMS = ("final", "last", "latest", "best", "model", "checkpoint", "weights", "step")


def _checkpoint_label(path: str) -> str:
    """A row label for a weight file: its stem, after its run folder when the stem is generic
    (``runs/lab1/final.safetensors`` -> ``lab1-final``, ``runs/lab1/checkpoints/step_500.pt`` ->
    ``lab1-step_500``), so two runs' results never share a record."""
    p = Path(path)
    stem = p.stem
    if not stem.lower().startswith(_GENERIC_STEMS):
        return stem
    folder = p.parent
    if folder.name.lower() in ("checkpoints", "ckpt", "weights"):
        folder = folder.parent
    run = folder.resolve().name if str(folder) in ("", ".") else folder.name
    return f"{run}-{stem}" if run else stem


def _model_label(args: argparse.Namespace) -> str:
    if args.model_label:
        return args.model_label
    name = args.model_name
    is_path = bool(name) and (name.endswith(_WEIGHT_SUFFIXES) or os.sep in name)
    stem = _checkpoint_label(name) if is_path else name
    if args.ckpt_path:
        ckpt = _checkpoint_label(args.ckpt_path)
        label = f"{stem}@{ckpt}" if stem else ckpt
    elif stem != name or args.pretrained:
        label = str(stem)
    else:
        # random weights: the seed makes them (seed 0 keeps the plain name)
        label = f"{name}-random" + (f"-seed{args.seed}" if args.seed else "")
    # The row names what was asked, never what auto picked on this machine (that is in the
    # record's precision fields): the same command lands in the same summary row everywhere.
    return label if args.precision in ("fp32", "auto") else f"{label}-{args.precision}"


def _load_model(args: argparse.Namespace) -> Any:
    status(args, f"loading {args.model_name or Path(args.ckpt_path).name} ...")
    args.device = run_device(args)
    model = model_from_args(
        args.model_name, args.ckpt_path, args.pretrained, seed=args.seed, device=args.device,
        precision=args.precision,
    )  # fmt: skip
    args.precision_used = model.precision
    from msclip.memory import release_library_pages

    release_library_pages(args.device)  # on the CPU: library code that ran once
    report_precision(model, args.device, quiet=args.quiet)
    return model


def _model_facts(args: argparse.Namespace, model: Any, label: str) -> dict[str, Any]:
    if args.ckpt_path or (args.model_name and args.model_name.endswith(".safetensors")):
        weights = "file"
    else:
        weights = "published" if args.pretrained else "random"
    info = model.describe()
    return {
        "label": label,
        "name": args.model_name or model.config.name,
        "registry_name": model.config.name,
        "arch": info["arch"],
        "checkpoint_path": str(Path(args.ckpt_path).resolve()) if args.ckpt_path else
        info["checkpoint_path"],
        "checkpoint_sha256": info["checkpoint_sha256"],
        "fingerprint": info["fingerprint"],
        "weights": weights,
        "pretrained": bool(args.pretrained),
        "bands": info["bands"],
        "image_size": model.image_size,
        "embed_dim": info["embed_dim"],
        "precision": info["precision"],
        "precision_reason": info["precision_reason"],
        "device": str(args.device),
    }  # fmt: skip


def _print_summary(save: Path) -> None:
    import pandas as pd
    from tabulate import tabulate

    path = save / "summary.csv"
    if not path.is_file():
        return
    # Row labels as written ("NA", "007", "1e3" are labels, not numbers or missing values).
    df = pd.read_csv(path, dtype={"model": str}, keep_default_na=False,
                     na_values={c: ["", "nan", "NaN"] for c in pd.read_csv(path, nrows=0).columns
                                if c != "model"})  # fmt: skip
    if df.empty:
        return
    rows = df.astype(object).where(df.notna(), None).values.tolist()
    print(tabulate(rows, headers=list(df.columns), floatfmt=".4f", missingval="-",
                   disable_numparse=[0]))  # fmt: skip


def _merge(save: Path, summary_metric: str | None) -> int:
    from msclip.eval.report import RecordError, merge

    try:
        res = merge(save, summary_metric=summary_metric)
    except RecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PARTIAL
    _print_summary(save)
    print(
        f"merged {res.n_records} record(s), {res.n_failures} failure note(s): {res.summary}, "
        f"{res.report}, {len(res.per_class)} per-class CSV(s), {len(res.figures)} figure(s)"
    )
    if res.damaged:  # each named by the merge's warning and in report.md
        print(f"error: {len(res.damaged)} unreadable record(s) left out of the reports (listed "
              f"in {res.report})", file=sys.stderr)  # fmt: skip
    return EXIT_PARTIAL if res.damaged else EXIT_OK


def _check_classnames(names: Sequence[str], given: dict[str, str]) -> None:
    """Read each ``--classnames DATASET=FILE`` before any model work (a missing or malformed
    file is the command's mistake, not one dataset's failure). A relative path is relative to
    the current folder, as every path on the command line (a YAML dataset's own paths are
    relative to the YAML)."""
    from msclip.errors import MSCLIPError
    from msclip.eval.datasets import load_classnames

    for name in names:
        if name not in given:
            continue
        try:
            load_classnames(given[name])
        except MSCLIPError as err:
            raise UsageError(f"--classnames {name}={given[name]}: {err}") from err


# -- evaluation ------------------------------------------------------------------------------
def _evaluate_one(
    args: argparse.Namespace,
    item: str,
    templates_spec: str | None,
    classnames: str | None,
    model: Any,
    tokenizer: Any,
    facts: dict[str, Any],
    text_cache: Any,
    argv: Sequence[str],
) -> tuple[str, str, int]:
    """Evaluate one dataset; returns ``(status, message, unreadable samples left out)``, status
    ``ok`` or ``skipped``."""
    import numpy as np

    from msclip.errors import DatasetFormatError, MSCLIPError
    from msclip.eval.datasets import build_dataset
    from msclip.eval.report import (
        file_stem,
        make_record,
        record_path,
        remove_failure,
        write_record,
    )
    from msclip.eval.runner import EvalConfig, evaluate, resolve_templates, run_key
    from msclip.io import atomic_write
    from msclip.zero_shot import DEFAULT_TEMPLATE_SET

    t0 = time.perf_counter()
    dataset = build_dataset(
        item, args.dataset_dir, split=args.split, classes=classnames,
        max_samples=args.max_samples, seed=args.seed, require_split_list=True,
    )  # fmt: skip
    if templates_spec is None and dataset.spec.templates and dataset.spec.base_dir is not None:
        try:  # the YAML's own set: its error names the file, not --templates (not given)
            tpl = resolve_templates(dataset.spec.templates)
        except MSCLIPError as err:
            raise DatasetFormatError(f"{item}: templates: {err}") from err
    else:
        tpl = resolve_templates(templates_spec or dataset.spec.templates or DEFAULT_TEMPLATE_SET)
    cfg = EvalConfig(
        batch_size=args.batch_size, workers=args.workers, device=args.device, ap_k=args.ap_k,
        ap_definition=args.ap_definition, no_relevant=args.no_relevant,
        multilabel_rule=args.multilabel_rule, other_class_name=args.other_class_name,
        text_batch_size=args.text_batch_size, progress=not args.quiet,
        skip_bad=not args.strict,
    )  # fmt: skip
    from msclip.spectral.adapt import INPUT_RULES

    key = run_key({
        "input_rules": INPUT_RULES,
        "fingerprint": facts["fingerprint"], "checkpoint_sha256": facts["checkpoint_sha256"],
        "arch": facts["arch"],
        "bands": facts["bands"], "precision": facts["precision"], "dataset": dataset.name,
        "root": str(dataset.root), "split": args.split, "n": len(dataset),
        "split_source": dataset.index.split_source, "labels": list(dataset.classes.labels),
        "names": list(dataset.classes.names), "templates": tpl.sha256, "ap_k": cfg.ap_k,
        "ap_definition": cfg.ap_definition, "no_relevant": cfg.no_relevant,
        "rule": cfg.multilabel_rule if dataset.multi_label else None,
        "other": cfg.other_class_name if dataset.multi_label else None,
        "max_samples": args.max_samples, "seed": args.seed,
        "samples": _samples_digest(dataset.samples),
    })  # fmt: skip
    label = facts["label"]
    own = record_path(args.save_path, label, dataset.name)
    scores_path = Path(args.save_path) / "scores" / f"{file_stem(label, dataset.name)}.npz"
    if args.skip_existing and own.is_file():
        # Only this run's own record decides; a damaged record of another run must not fail it.
        existing, left_out = _existing_run_key(own, label, dataset.name)
        if existing == key and not left_out:
            if not args.save_scores or _scores_run_key(scores_path) == key:
                remove_failure(args.save_path, label, dataset.name)  # of an earlier attempt
                return "skipped", f"record exists ({own})", 0
            if scores_path.is_file():
                why = f"has scores of another run ({scores_path}); re-running for its own"
            else:
                why = f"has no scores ({scores_path}); re-running for them"
        elif existing == key:
            why = f"left {left_out} unreadable sample(s) out; re-running (they may be readable now)"
        elif existing:
            why = "was made with other settings; re-running"
        else:
            why = "is unreadable or incomplete; re-running (it will be replaced)"
        logger.warning("%s: the existing record %s", dataset.name, why)
    result = evaluate(model, tokenizer, dataset, tpl, cfg, text_cache)
    wall = time.perf_counter() - t0
    settings = {
        "settings": {
            "batch_size": cfg.batch_size, "workers": cfg.workers, "max_samples": args.max_samples,
            "multilabel_rule": cfg.multilabel_rule, "other_class_name": cfg.other_class_name,
            "text_cache": bool(text_cache is not None), "strict": bool(args.strict),
        }
    }  # fmt: skip
    record = make_record(result, facts, split=args.split, seed=args.seed, run_key=key,
                         wall_s=wall, command=["evaluation.py", *argv], extra=settings)  # fmt: skip
    if args.save_scores:
        # before the record: a run stopped between the two leaves no record that
        # --skip-existing would take as done. The ids of the scored rows: unreadable samples
        # have no row.
        rows = result.indices if result.indices is not None else range(len(dataset.samples))
        ids = np.asarray([dataset.samples[int(i)].id for i in rows])
        names = np.asarray(result.class_names)
        atomic_write(scores_path, lambda tmp: np.savez_compressed(
            tmp, scores=result.scores, targets=result.targets, ids=ids, class_names=names,
            run_key=np.asarray(key)), ".npz")  # fmt: skip
    elif scores_path.is_file() and _scores_run_key(scores_path) != key:
        # The scores of an earlier run beside this run's record would pass for its own (and
        # satisfy a later --skip-existing --save-scores): they go with the record they were of.
        scores_path.unlink()
        logger.warning(
            "%s: removed %s, the scores of an earlier run with other settings (this run's are "
            "saved with --save-scores)", dataset.name, scores_path,
        )  # fmt: skip
    write_record(args.save_path, record)
    main = result.main_metric
    value = result.report.to_dict()[main]
    n_ok = len(dataset) - len(result.failures)
    bad = f", {len(result.failures)} unreadable and skipped" if result.failures else ""
    return "ok", f"{main} {value:.4f} (n={n_ok}{bad}, {wall:.1f} s)", len(result.failures)


def _samples_digest(samples: Sequence[Any]) -> str:
    """sha256 of the samples' ids and targets, in order: a split list or label table edited in
    place (same path, same count) is another run for ``--skip-existing``."""
    import hashlib
    import json

    def plain(o: Any) -> Any:  # numpy integers and arrays of targets
        return o.tolist() if hasattr(o, "tolist") else str(o)

    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.target], default=plain).encode())
        h.update(b"\n")
    return h.hexdigest()


def _scores_run_key(path: Path) -> str | None:
    """The run key stored in the scores file at ``path`` (the key of the record it was saved
    with); ``None`` when the file is missing, unreadable or older than that key."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as saved:
            return str(saved["run_key"]) if "run_key" in saved.files else None
    except (OSError, ValueError, KeyError):
        return None


def _existing_run_key(path: Path, label: str, dataset: str) -> tuple[str | None, int]:
    """``(run_key, unreadable samples left out)`` of the record at ``path`` when it is a readable
    record of exactly (``label``, ``dataset``); ``(None, 0)`` when it is damaged, incomplete or
    of another run."""
    from msclip.eval.report import RecordError, read_record

    try:
        rec = read_record(path)
    except RecordError:
        return None, 0
    if rec["model"]["label"] != label or rec["dataset"]["name"] != dataset:
        return None, 0
    key = rec.get("run_key")
    bad = rec.get("unreadable")
    try:
        left_out = int(bad.get("count") or 0) if isinstance(bad, dict) else 0
    except (TypeError, ValueError):
        left_out = 0
    return (key if isinstance(key, str) else None), left_out


def _list_datasets() -> None:
    from tabulate import tabulate

    from msclip.eval.datasets import DATASETS

    rows = [[s.name, s.task, s.layout, "/".join(s.subdirs), s.description]
            for s in DATASETS.values()]  # fmt: skip
    print(tabulate(rows, headers=["name", "task", "layout", "folder(s)", "description"]))


def _run(args: argparse.Namespace) -> int:
    argv = args.argv
    if args.list_datasets:
        _list_datasets()
        return EXIT_OK
    save = Path(args.save_path)
    from msclip.io import check_output

    check_output(save, kind="dir")
    if args.merge_only:
        return _merge(save, args.summary_metric)

    from msclip.errors import MSCLIPError
    from msclip.eval.report import write_failure
    from msclip.eval.runner import resolve_templates

    items = _dataset_list(args.datasets)
    names = [_dataset_name(i) for i in items]
    _check_unique_names(items, names)
    tpl_global, tpl_per = _per_dataset(args.templates, names, "--templates")
    cls_global, cls_per = _per_dataset(args.classnames, names, "--classnames")
    if cls_global is not None:
        raise UsageError("--classnames needs DATASET=FILE entries")
    for spec in {tpl_global, *tpl_per.values()} - {None}:
        resolve_templates(spec)  # type: ignore[arg-type]  # fail before any model work
    _check_classnames(names, cls_per)
    model = _load_model(args)

    from msclip.factory import get_tokenizer

    tokenizer = get_tokenizer(model)
    label = _model_label(args)
    facts = _model_facts(args, model, label)
    text_cache = None
    if args.text_cache:
        from msclip.text_cache import TextEmbeddingCache

        text_cache = TextEmbeddingCache.for_model(model, args.text_cache_dir)

    failed = []
    partial: dict[str, int] = {}  # dataset -> unreadable samples left out of its metrics
    for item, name in zip(items, names):
        try:
            status, msg, left_out = _evaluate_one(
                args, item, tpl_per.get(name, tpl_global), cls_per.get(name), model, tokenizer,
                facts, text_cache, argv,
            )  # fmt: skip
        except (MSCLIPError, OSError, ValueError, KeyError, RuntimeError) as err:
            # Reported, noted on disk and reflected in the exit status; the other datasets run.
            failed.append(name)
            write_failure(save, label, name, err, traceback.format_exc())
            print(f"{name}: FAILED: {type(err).__name__}: {err}{flag_hint(err)}", file=sys.stderr)
            logger.debug("traceback of %s", name, exc_info=True)
            continue
        print(f"{name}: {status}: {msg}")
        if left_out:
            partial[name] = left_out
    code = _merge(save, args.summary_metric)
    if partial:
        # The metrics are of part of the split: recorded, and not a clean exit (as in inference,
        # where skipped unreadable images give exit status 1).
        listed = ", ".join(f"{n} ({k})" for n, k in partial.items())
        print(f"error: unreadable samples were skipped and left out of the metrics of {listed} "
              "(listed with their reason in the records' 'unreadable'); replace the damaged "
              "files, or use --strict to fail such datasets", file=sys.stderr)  # fmt: skip
    if failed:
        print(f"error: {len(failed)} of {len(items)} dataset(s) failed: {', '.join(failed)} "
              f"(see {save / 'records'}/*.failed.json and {save / 'report.md'})",
              file=sys.stderr)  # fmt: skip
        return EXIT_PARTIAL
    return EXIT_PARTIAL if partial else code


def _error_status(err: BaseException) -> int:
    # Bad values (ValueError family) and weights that are not there (offline without the file:
    # the fix is a download and --ckpt-path, as in every msclip program) are usage errors; an
    # unreadable folder stops the run before any dataset is evaluated: reported as a failed run.
    from msclip.errors import OutputPathError, WeightsNotFoundError

    usage = (ValueError, OutputPathError, WeightsNotFoundError)
    return EXIT_USAGE if isinstance(err, usage) else EXIT_PARTIAL


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (0 ok, 1 a dataset failed, 2 usage)."""
    return run_cli(argv, parse_args, _run, error_status=_error_status)


if __name__ == "__main__":
    from msclip.cli.common import exit_process

    exit_process(main())
