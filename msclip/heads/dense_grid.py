"""A grid of dense runs, decoders x encoder modes, and one comparison table.

:func:`run_grid` runs :func:`msclip.heads.dense_finetune.run_dense_finetune` for every
combination of the given decoders and encoder modes, each a run of its own with
``<output_dir>/<decoder>-<mode>`` as its output folder: the run's protocol card there, its head,
checkpoint and history one level down in ``<output_dir>/<decoder>-<mode>/<decoder>-<mode>`` as
every dense run lays them out (records all go to the one results folder, so they also merge
into ``summary.csv``). It is resumable: a finished combination is not run again (its test
metrics are read back from the head file), one that was killed continues from its training
checkpoint. A combination is finished once its wall time (``grid.json``) is written, the last of
its files: one killed after its head file but before its records or protocol card is completed
(resumed from its last checkpoint, evaluated and written again), not passed off as finished.
A fresh encoder is loaded for every combination, since the modes change it in place
(``scratch`` re-initialises it).

For a segmentation task whose class names are known (a class file, or the generator's
``classes.csv``), the zero-shot dense maps of MaskCLIP (:mod:`msclip.heads.maskclip`) are scored
on the same test images and reported as the row ``zero-shot (MaskCLIP)``.

The table is written atomically as ``comparison.csv`` (one row per run and task: decoder,
encoder mode, the task's metrics, head parameters, seconds) and ``comparison.md`` (the main
metric, decoders x encoder modes, then every row).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msclip.errors import ConfigError
from msclip.eval.definitions import metric_format
from msclip.heads.runconfig import DECODER_NAMES, ENCODER_MODES, FinetuneRunConfig

__all__ = ["GridResult", "run_grid"]

logger = logging.getLogger(__name__)

_COLUMNS = {
    "segmentation": ("miou", "miou_micro", "overall_accuracy", "mean_f1"),
    "pixel-regression": ("rmse", "mae", "r2"),
}


@dataclass
class GridResult:
    """What :func:`run_grid` wrote.

    Attributes:
        rows: one dict per run and task (and the zero-shot row).
        csv: the comparison CSV.
        markdown: the comparison Markdown file.
        ran: labels of the runs trained now.
        skipped: labels of the runs found finished.
    """

    rows: list[dict[str, Any]]
    csv: Path
    markdown: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _check(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    vals = [v.strip() for v in values if v.strip()]
    bad = [v for v in vals if v not in allowed]
    if not vals or bad or len(set(vals)) != len(vals):
        raise ConfigError(
            f"{what} must list some of {list(allowed)}, each once; got {list(values)}",
            param=what,
        )
    return vals


def _rows_of(
    label: str,
    decoder: str,
    mode: str,
    tasks: list[dict[str, Any]],
    test: dict[str, Any],
    params: int | None,
    seconds: float | None,
) -> list[dict]:
    rows = []
    for t in tasks:
        m = test.get(t["name"], {})
        row = {
            "run": label,
            "decoder": decoder,
            "encoder_mode": mode,
            "task": t["name"],
            "kind": t["kind"],
        }
        for c in _COLUMNS[t["kind"]]:
            row[c] = m.get(c)
        row["head_parameters"] = params
        row["seconds"] = seconds
        rows.append(row)
    return rows


def _check_last_n(cfg: FinetuneRunConfig) -> None:
    """Refuse a ``last_n`` above the image tower's block count before any cell runs (the tower
    is loaded for it: a memory map, tens of milliseconds); the last-n cells found it only when
    they came, after the cells before them had trained."""
    from msclip.heads.runs import load_run_model

    model = load_run_model(dataclasses.replace(cfg, encoder_mode="last-n"))
    depth = len(model.clip.visual.transformer.resblocks)
    del model
    if cfg.last_n > depth:
        raise ConfigError(
            f"last_n = {cfg.last_n} but the image tower has {depth} blocks; use 0..{depth} (or "
            "encoder mode full)",
            param="last_n",
        )


def run_grid(
    cfg: FinetuneRunConfig,
    decoders: Sequence[str],
    encoder_modes: Sequence[str],
    zero_shot: bool = True,
    hooks: Sequence[Callable[[str, int], None]] = (),
    command: Sequence[str] = (),
    on_model: Callable[[Any], None] | None = None,
) -> GridResult:
    """Run every decoder x encoder mode on the dense data of ``cfg`` and compare them.

    Args:
        cfg: the settings shared by every run (its ``decoder`` and ``encoder_mode`` are
            replaced; ``output_dir`` holds one folder per run and the tables).
        decoders: decoder names.
        encoder_modes: encoder modes.
        zero_shot: add the MaskCLIP row for segmentation with known class names.
        hooks: passed to each run (``(label, epoch)``).
        command: the command line, for the records.
        on_model: passed to each run (called with its model once loaded).

    Raises:
        ConfigError: a task that is not dense, unknown decoders or modes.
    """
    import pandas as pd

    from msclip.heads.dense_finetune import dense_label, run_dense_finetune
    from msclip.heads.dense_head import read_dense_head
    from msclip.heads.runs import run_settings, settings_changes
    from msclip.io import write_csv, write_text

    cfg.validate()
    if not cfg.dense:
        raise ConfigError(
            f"the grid compares dense decoders; task {cfg.task!r} is not dense (use "
            "segmentation, pixel-regression or multi-task)",
            param="task",
        )
    decs = _check(decoders, DECODER_NAMES, "decoders")
    modes = _check(encoder_modes, ENCODER_MODES, "encoder_modes")
    if "last-n" in modes:
        _check_last_n(cfg)
    root = Path(cfg.output_dir).expanduser()
    rows: list[dict[str, Any]] = []
    ran, skipped = [], []
    data_tasks: list[Any] = []
    for mode in modes:
        for dec in decs:
            sub = dataclasses.replace(
                cfg,
                decoder=dec,
                encoder_mode=mode,
                output_dir=str(root / f"{dec}-{mode}"),
                resume=True,
            )
            label = dense_label(sub)
            head_file = Path(sub.output_dir) / label / "dense_head.safetensors"
            # grid.json is written after everything else of the run (head, records, protocol
            # card): a head without it is a run killed while writing its outputs
            if head_file.is_file() and head_file.with_name("grid.json").is_file():
                ckpt = read_dense_head(head_file)
                before = ckpt.info.get("settings")
                changes = settings_changes(before, run_settings(sub)) if before else []
                if changes:
                    raise ConfigError(
                        f"{head_file.parent} holds a finished run with other settings "
                        f"({', '.join(changes)}); give the grid another output_dir, or delete "
                        "that folder to run it again",
                        param="output_dir",
                    )
                skipped.append(label)
                logger.info("%s is finished (%s); skipped", label, head_file)
                params = sum(p.numel() for p in ckpt.heads.parameters())
                secs = json.loads(head_file.with_name("grid.json").read_text()).get("seconds")
                rows += _rows_of(
                    label, dec, mode, ckpt.tasks, ckpt.info.get("test", {}), params, secs
                )
                continue
            t0 = time.perf_counter()
            res = run_dense_finetune(sub, None, hooks, command, on_model)
            seconds = time.perf_counter() - t0
            ran.append(label)
            data_tasks = res.data.tasks
            test = {}
            for m in res.methods:
                name = m.label.split(":", 1)[1] if ":" in m.label else res.data.tasks[0].name
                test[name] = m.result.metrics
            hp = res.methods[0].result.hyperparameters
            rows += _rows_of(
                label,
                dec,
                mode,
                hp["tasks"],
                test,
                hp["parameters"]["head_total"],
                round(seconds, 1),
            )
            _note_seconds(head_file, seconds)
    if zero_shot:
        rows += _zero_shot_rows(cfg, root, data_tasks)
    df = pd.DataFrame(rows)
    csv_path = write_csv(df, root / "comparison.csv")
    md = _markdown(df, decs, modes)
    md_path = write_text(root / "comparison.md", md)
    return GridResult(rows, csv_path, md_path, ran, skipped)


def _note_seconds(head_file: Path, seconds: float) -> None:
    """Keep a run's wall time next to its head (read back when the grid skips it)."""
    from msclip.io import write_json

    write_json(head_file.with_name("grid.json"), {"seconds": round(seconds, 1)})


def _zero_shot_rows(cfg: FinetuneRunConfig, root: Path, tasks: list[Any]) -> list[dict]:
    from msclip.heads.dense_data import DenseSamples
    from msclip.heads.dense_finetune import evaluate_maskclip, load_dense_data
    from msclip.heads.runs import load_run_model, run_settings
    from msclip.heads.scene_predict import ScenePreprocess
    from msclip.io import write_json

    # the row is kept with the settings it was scored under (data, model, bands, templates ...):
    # a grid rerun into the same folder with other settings scores it again
    settings = run_settings(cfg)
    cache = root / "zero-shot" / "result.json"
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("settings") == settings:
            return kept["rows"]
        logger.info("%s was scored with other settings: scoring the zero-shot row again", cache)
    data = load_dense_data(cfg)
    seg = [t for t in data.tasks if t.kind == "segmentation" and t.prompt_names]
    if not seg:
        return []
    model = load_run_model(cfg)
    model.eval()
    samples = DenseSamples(
        data, ScenePreprocess.from_model(model), cfg.input_bands, cfg.sensor, cfg.nodata
    )
    rows = []
    for t in seg:
        t0 = time.perf_counter()
        res = evaluate_maskclip(
            model, samples, data.splits["test"], t.name, t.prompt_names, cfg.templates,
            tile=int(cfg.crop_size or model.image_size), mode=cfg.eval_mode,
        )  # type: ignore[arg-type]  # fmt: skip
        row = {
            "run": "zero-shot (MaskCLIP)",
            "decoder": "maskclip",
            "encoder_mode": "frozen",
            "task": t.name,
            "kind": t.kind,
        }
        for c in _COLUMNS["segmentation"]:
            row[c] = res["metrics"].get(c)
        row["head_parameters"] = 0
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    write_json(cache, {"rows": rows, "settings": settings})
    return rows


def _fmt(v: Any, metric: str = "") -> str:
    """A metric's value: significant digits for one in the targets' units (an RMSE of 3e-6 is
    not 0.0000), four decimals for scores."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, metric_format(metric)) if isinstance(v, float) else str(v)


def _secs(v: Any) -> str:
    return "-" if v is None or v != v else f"{float(v):.1f}"


def _markdown(df: Any, decoders: list[str], modes: list[str]) -> str:
    lines = ["# Dense heads: decoders x encoder modes", ""]
    if df.empty:
        return "\n".join([*lines, "No run finished.", ""])
    for task, part in df.groupby("task", sort=False):
        kind = part["kind"].iloc[0]
        main = _COLUMNS[kind][0]
        lines += [f"## {task} ({kind}): {main} on the test split", ""]
        lines.append("| decoder | " + " | ".join(modes) + " |")
        lines.append("|---|" + "---|" * len(modes))
        for dec in decoders:
            cells = []
            for mode in modes:
                hit = part[(part["decoder"] == dec) & (part["encoder_mode"] == mode)]
                cells.append(_fmt(hit[main].iloc[0], main) if len(hit) else "-")
            lines.append(f"| {dec} | " + " | ".join(cells) + " |")
        zs = part[part["decoder"] == "maskclip"]
        if len(zs):
            lines.append(
                f"| zero-shot (MaskCLIP) | {_fmt(zs[main].iloc[0], main)} |"
                + " |" * (len(modes) - 1)
            )
        lines += ["", "All figures:", ""]
        cols = ["run", *_COLUMNS[kind], "head_parameters", "seconds"]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, r in part.iterrows():
            cells = [_fmt(r.get(c), c) if c != "seconds" else _secs(r.get(c)) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
