"""End-to-end runs of ``evaluation.py`` with tiny random models on mini datasets of every layout:
records, merged reports, failure isolation, --skip-existing, --merge-only, templates."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support import mini_benchmark as mb

from msclip.cli.evaluation import main, parse_args
from msclip.eval.report import RECORD_KEYS, RECORD_SCHEMA, load_records, record_path
from msclip.eval.runner import TemplatesNotShippedError, resolve_templates

REFERENCE_TEMPLATES = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "templates" / "msclip.txt"
)
TEMPLATES = "a satellite view of {c}.\n# a comment line\n{c} from above.\nan image of {c}.\n"
MS_DATASETS = ["EuroSAT_MS", "BigEarthNet_MS", "METERML_MS", "MyCrops"]


def _eurosat_args(root: Path, save: Path) -> list[str]:
    """The tiny model on the mini EuroSAT_MS under ``root``, results in ``save``, quietly."""
    return [
        "--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "EuroSAT_MS",
        "--dataset-dir", str(root), "--save-path", str(save), "--no-text-cache",
        "--workers", "0", "--quiet",
    ]  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ms_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One msclip-tiny run over the multispectral layouts, a custom YAML dataset, a broken
    dataset (ForestNet CSV without its label column) and a missing one (AID)."""
    root = tmp_path_factory.mktemp("data")
    mb.eurosat_ms(root)
    mb.bigearthnet(root)
    mb.meterml(root)
    yaml_path = mb.custom_multilabel(root)
    broken = root / "ForestNet_RGB"
    broken.mkdir()
    (broken / "test.csv").write_text("label,example_path\nOther,examples/x\n")
    tpl = root / "my_templates.txt"
    tpl.write_text(TEMPLATES)
    save = tmp_path_factory.mktemp("results")
    argv = [
        "--model-name", "msclip-tiny", "--no-pretrained",
        "--datasets", "EuroSAT_MS", "BigEarthNet_MS", "ForestNet_RGB", "METERML_MS",
        str(yaml_path), "AID_RGB",
        "--dataset-dir", str(root), "--save-path", str(save),
        "--templates", str(tpl), "METERML_MS=short",
        "--text-cache-dir", str(save / "cache"),
        "--workers", "1", "--batch-size", "4", "--save-scores", "--quiet",
    ]  # fmt: skip
    code = main(argv)
    return {"code": code, "root": root, "save": save, "argv": argv, "templates": tpl}


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One msclip-tiny-rgb run over every RGB layout with the "other features" rule."""
    root = tmp_path_factory.mktemp("rgbdata")
    for make in (mb.eurosat_rgb, mb.bigearthnet, mb.meterml, mb.resisc45, mb.aid, mb.forestnet):
        make(root)
    save = tmp_path_factory.mktemp("rgbresults")
    names = root / "forestnet_names.txt"
    names.write_text("Plantation = palm plantation\nGrassland shrubland = grassland\n"
                     "Smallholder agriculture = small farms\nOther = other\n")  # fmt: skip
    templates = ["short"]
    if REFERENCE_TEMPLATES.is_file():
        templates.append(f"EuroSAT_RGB={REFERENCE_TEMPLATES}")
    argv = [
        "--model-name", "msclip-tiny-rgb", "--no-pretrained", "--datasets", "EuroSAT_RGB",
        "BigEarthNet_RGB,METERML_RGB", "METERML_NAIP", "RESISC45_RGB", "AID_RGB",
        "ForestNet_RGB", "--dataset-dir", str(root), "--save-path", str(save),
        "--templates", *templates, "--multilabel-rule", "other_class", "--no-text-cache",
        "--classnames", f"ForestNet_RGB={names}",
        "--workers", "0", "--quiet",
    ]  # fmt: skip
    code = main(argv)
    return {"code": code, "save": save}


def _record(save: Path, dataset: str, label: str = "msclip-tiny-random") -> dict:
    return json.loads(record_path(save, label, dataset).read_text())


# -- failure isolation and exit status -------------------------------------------------------
def test_broken_and_missing_datasets_fail_alone(ms_run):
    save = ms_run["save"]
    assert ms_run["code"] == 1
    records, failures = load_records(save)
    assert sorted(r["dataset"]["name"] for r in records) == sorted(MS_DATASETS)
    notes = {f["dataset"]["name"]: f for f in failures}
    assert set(notes) == {"ForestNet_RGB", "AID_RGB"}
    assert notes["ForestNet_RGB"]["error_type"] == "DatasetFormatError"
    assert "no column 'merged_label'" in notes["ForestNet_RGB"]["error"]
    assert notes["AID_RGB"]["error_type"] == "DatasetNotFoundError"
    assert "benchmark_datasets/README.md" in notes["AID_RGB"]["error"]
    report = (save / "report.md").read_text()
    assert "## Failed runs" in report and "AID_RGB" in report and "ForestNet_RGB" in report


# -- record schema ---------------------------------------------------------------------------
def test_records_are_complete_and_self_describing(ms_run):
    save, tpl = ms_run["save"], ms_run["templates"]
    lines = [t for t in tpl.read_text().splitlines() if t and not t.startswith("#")]
    for name in MS_DATASETS:
        rec = _record(save, name)
        assert set(RECORD_KEYS) <= set(rec) and rec["schema"] == RECORD_SCHEMA
        model = rec["model"]
        assert model["label"] == "msclip-tiny-random" and model["weights"] == "random"
        assert model["checkpoint_sha256"].startswith("weights:") and len(model["bands"]) == 10
        ds = rec["dataset"]
        assert ds["name"] == name and ds["split"] == "test" and ds["n_samples"] >= 5
        assert ds["split_source"] and ds["root"] and ds["layout"]
        assert rec["metrics"]["n_samples"] == ds["n_samples"]
        assert rec["ap"]["k"] == 100 and rec["ap"]["definition"] == "relevant_retrieved"
        assert "relevant items within the top k" in rec["ap"]["description"]
        assert rec["seed"] == 0 and {"torch", "numpy", "open_clip_torch"} <= set(rec["versions"])
        assert rec["timing"]["wall_s"] > 0 and len(rec["run_key"]) == 64
        assert len(rec["per_class"]) == len(ds["class_labels"])
        if rec["task"] == "single_label":
            cm = np.asarray(rec["confusion_matrix"])
            assert cm.shape == (len(ds["class_labels"]),) * 2
            assert cm.sum() == ds["n_samples"]
            assert rec["main_metric"] == "top1_accuracy"
        else:
            assert rec["confusion_matrix"] is None and rec["main_metric"] == "map_at_k"
    # --templates FILE for all, DATASET=SET for one; the hash covers the templates' text only.
    eurosat = _record(save, "EuroSAT_MS")["templates"]
    assert eurosat["name"] == "my_templates" and eurosat["n"] == 3
    assert eurosat["sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    meter = _record(save, "METERML_MS")["templates"]
    assert meter["name"] == "short" and meter["n"] == 5
    assert _record(save, "BigEarthNet_MS")["dataset"]["band_mapping"]["ignored"] == ["B01", "B09"]


def test_scores_reproduce_from_the_model_and_metrics_agree_with_sklearn(ms_run):
    sk = pytest.importorskip("sklearn.metrics")
    import msclip
    from msclip.eval.datasets import build_dataset
    from msclip.zero_shot import build_classifier, load_templates

    save, root = ms_run["save"], ms_run["root"]
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny")
    rec = _record(save, "EuroSAT_MS")
    assert model.checkpoint_sha256 == rec["model"]["checkpoint_sha256"]  # --seed fixes weights
    ds = build_dataset("EuroSAT_MS", root, transform=model.preprocess())
    with torch.inference_mode():  # in the run's batches of 4 (bf16 kernels may differ by batch)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        img = torch.cat([model.encode_image(b, normalize=True) for b in images.split(4)])
        cls = build_classifier(model, msclip.get_tokenizer(model), ds.class_names,
                               load_templates(ms_run["templates"]))  # fmt: skip
    saved = np.load(save / "scores" / "msclip-tiny-random__EuroSAT_MS.npz", allow_pickle=False)
    assert saved["ids"].tolist() == [s.id for s in ds.samples]
    np.testing.assert_allclose(saved["scores"], (100 * img @ cls.T).numpy(), atol=1e-4)
    np.testing.assert_array_equal(saved["targets"], [s.target for s in ds.samples])

    for name in ("EuroSAT_MS", "METERML_MS"):
        m = _record(save, name)["metrics"]
        z = np.load(save / "scores" / f"msclip-tiny-random__{name}.npz")
        s, t = z["scores"], z["targets"]
        labels = np.arange(s.shape[1])
        assert abs(m["top1_accuracy"] - sk.accuracy_score(t, s.argmax(1))) < 1e-6
        assert abs(m["balanced_accuracy"] - sk.balanced_accuracy_score(t, s.argmax(1))) < 1e-6
        top5 = sk.top_k_accuracy_score(t, s, k=5, labels=labels)
        assert abs(m["top5_accuracy"] - top5) < 1e-6
    m = _record(save, "BigEarthNet_MS")["metrics"]
    z = np.load(save / "scores" / "msclip-tiny-random__BigEarthNet_MS.npz")
    s, t = z["scores"], z["targets"]
    pred = s > (s.sum(1, keepdims=True) - s) / (s.shape[1] - 1)  # the published rule
    for avg in ("micro", "macro"):
        ref = sk.f1_score(t, pred, average=avg, zero_division=0)
        assert abs(m[f"{avg}_f1"] - ref) < 1e-6
    assert abs(m["mean_accuracy"] - (pred == t).mean()) < 1e-6


# -- merged reports --------------------------------------------------------------------------
def test_input_the_model_says_little_about_is_in_the_record_and_report(ms_run):
    # MyCrops has 4 of the tiny model's 10 bands: the 6 others are filled with their mean. The
    # warning said so on stderr only; the record and report.md, which outlive the run, now say
    # it too, with its sample count. EuroSAT_MS lacks none (its ignored B01 is in band_mapping).
    save = ms_run["save"]
    warned = _record(save, "MyCrops")["input_warnings"]
    assert [w["category"] for w in warned] == ["BandCoverageWarning"]
    assert "lack 6 of the model's 10 bands" in warned[0]["message"] and warned[0]["count"] == 5
    assert _record(save, "EuroSAT_MS")["input_warnings"] == []
    report = (save / "report.md").read_text()
    section = report[report.index("— MyCrops") :].split("\n## ")[0]
    assert "**input warnings**" in section and "(5 of 5 samples)" in section
    assert "**input warnings**" not in report[report.index("— EuroSAT_MS") :].split("\n## ")[0]


def test_summary_per_class_csvs_markdown_and_figures(ms_run):
    save = ms_run["save"]
    summary = pd.read_csv(save / "summary.csv")
    assert list(summary.columns) == ["model", *MS_DATASETS]  # built-in order, then custom
    assert summary["model"].tolist() == ["msclip-tiny-random"]
    for name in MS_DATASETS:
        rec = _record(save, name)
        assert summary.loc[0, name] == pytest.approx(rec["metrics"][rec["main_metric"]])
        pc = save / "per_class" / f"msclip-tiny-random__{name}.csv"
        df = pd.read_csv(pc)
        assert {"model", "dataset", "class_name", "class_label", "ap_at_k"} <= set(df.columns)
        assert set(df["dataset"]) == {name} and len(df) == len(rec["per_class"])
    long = pd.read_csv(save / "summary_long.csv")
    assert {"top1_accuracy", "map_at_k", "micro_f1"} <= set(long["metric"])
    report = (save / "report.md").read_text()
    for name in ("EuroSAT_MS", "METERML_MS"):
        png = save / "figures" / f"msclip-tiny-random__{name}__confusion.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{png.name}" in report
    assert not list((save / "figures").glob("*BigEarthNet*"))  # multi-label: no matrix
    assert "| (metric) | top1_accuracy | map_at_k | top1_accuracy | map_at_k |" in report


def test_merge_only_rebuilds_reports_from_records(ms_run, tmp_path, capsys):
    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    for p in ("summary.csv", "report.md", "per_class", "figures"):
        target = save / p
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    code, out, _ = _run(["--merge-only", "--save-path", str(save)], capsys)
    assert code == 0 and "merged 4 record(s), 2 failure note(s)" in out
    assert (save / "report.md").is_file() and len(list((save / "per_class").glob("*.csv"))) == 4
    pd.testing.assert_frame_equal(
        pd.read_csv(save / "summary.csv"), pd.read_csv(ms_run["save"] / "summary.csv")
    )
    # a metric no record has, and a folder without records: errors, not empty tables
    code, _, err = _run(["--merge-only", "--save-path", str(save), "--summary-metric",
                         "top1_acc"], capsys)  # fmt: skip
    assert (
        code == 1
        and "no record has a number for the metric 'top1_acc'" in err
        and "top1_accuracy" in err
    )
    code, _, err = _run(["--merge-only", "--save-path", str(tmp_path / "typo")], capsys)
    assert code == 1 and "no evaluation records under" in err
    assert not (tmp_path / "typo" / "report.md").exists()


def test_skip_existing_skips_only_identical_runs(ms_run, tmp_path, capsys):
    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    argv = [a if a != str(ms_run["save"]) else str(save) for a in ms_run["argv"]]
    argv = [a for a in argv if a not in ("ForestNet_RGB", "AID_RGB")] + ["--skip-existing"]
    before = {n: _record(save, n)["created"] for n in MS_DATASETS}
    code, out, _ = _run(argv, capsys)
    assert code == 0
    assert all(f"{n}: skipped" in out for n in MS_DATASETS)
    assert {n: _record(save, n)["created"] for n in MS_DATASETS} == before
    # Other templates for one dataset: only that dataset runs again.
    i = argv.index("--templates")
    argv = [*argv[: i + 1], "EuroSAT_MS=short", *argv[i + 1 :]]
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "EuroSAT_MS: ok" in out and "BigEarthNet_MS: skipped" in out
    assert _record(save, "EuroSAT_MS")["templates"]["name"] == "short"
    # a split list edited in place (same path, same number of images): another run
    split = ms_run["root"] / "EuroSAT_MS" / "eurosat-test.txt"
    listed = split.read_text()
    try:
        split.write_text(listed.replace("_1.jpg", "_2.jpg"))
        code, out, _ = _run(argv, capsys)
    finally:
        split.write_text(listed)
    assert code == 0 and "EuroSAT_MS: ok" in out and "BigEarthNet_MS: skipped" in out
    # --save-scores with the scores gone: run again for them
    scores = save / "scores" / "msclip-tiny-random__BigEarthNet_MS.npz"
    scores.unlink()
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "BigEarthNet_MS: ok" in out and scores.is_file()
    assert "METERML_MS: skipped" in out
    # records of inputs read by older rules (band mapping, product scales) are not kept
    import msclip.spectral.adapt as adapt

    rules = adapt.INPUT_RULES
    try:
        adapt.INPUT_RULES = rules + 1
        code, out, _ = _run(argv, capsys)
    finally:
        adapt.INPUT_RULES = rules
    assert code == 0 and "BigEarthNet_MS: ok" in out


def test_skip_existing_takes_only_the_scores_of_the_record_it_skips(tmp_path, capsys):
    """A scores file left by another run (other templates) is not the skipped record's: the
    dataset runs again for its own scores, and a record replaced without --save-scores takes
    the other run's scores file with it."""
    root = tmp_path / "data"
    mb.eurosat_ms(root, n_per_class=1)
    (tmp_path / "t2.txt").write_text(TEMPLATES)
    save = tmp_path / "r"
    base = _eurosat_args(root, save)
    scores = save / "scores" / "msclip-tiny-random__EuroSAT_MS.npz"
    code, _, _ = _run([*base, "--templates", str(tmp_path / "t2.txt"), "--save-scores"], capsys)
    assert code == 0 and scores.is_file()
    t2_scores = scores.read_bytes()
    with np.load(scores) as saved:
        assert str(saved["run_key"]) == _record(save, "EuroSAT_MS")["run_key"]
    code, _, _ = _run([*base, "--templates", "eo"], capsys)  # record replaced, no scores asked
    assert code == 0 and not scores.exists()
    scores.write_bytes(t2_scores)  # another run's scores under this record's name
    code, out, _ = _run([*base, "--templates", "eo", "--save-scores", "--skip-existing"], capsys)
    assert code == 0 and "EuroSAT_MS: ok" in out
    rec = _record(save, "EuroSAT_MS")
    with np.load(scores) as saved:
        assert str(saved["run_key"]) == rec["run_key"]
    code, out, _ = _run([*base, "--templates", "eo", "--save-scores", "--skip-existing"], capsys)
    assert "EuroSAT_MS: skipped" in out


def test_skip_existing_clears_the_failure_note_of_an_earlier_attempt(tmp_path, capsys):
    """A run that failed (data moved away) and is then found up to date by --skip-existing
    is not listed as failed in the reports any more: the command said it was fine."""
    root = tmp_path / "data"
    mb.eurosat_ms(root, n_per_class=1)
    save = tmp_path / "r"
    base = _eurosat_args(root, save)
    assert _run(base, capsys)[0] == 0
    (root / "EuroSAT_MS").rename(root / "away")
    assert _run(base, capsys)[0] == 1  # failed: noted beside the earlier record
    assert (save / "records" / "msclip-tiny-random__EuroSAT_MS.failed.json").is_file()
    (root / "away").rename(root / "EuroSAT_MS")
    code, out, _ = _run([*base, "--skip-existing"], capsys)
    assert code == 0 and "EuroSAT_MS: skipped" in out and "0 failure note(s)" in out
    assert not (save / "records" / "msclip-tiny-random__EuroSAT_MS.failed.json").exists()
    assert "Failed runs" not in (save / "report.md").read_text()


def test_skip_existing_is_not_failed_by_a_damaged_record_of_another_run(ms_run, tmp_path, capsys):
    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    (save / "records" / "other__EuroSAT_MS.json").write_text('{"schema": "msclip.eval.rec')
    argv = [a if a != str(ms_run["save"]) else str(save) for a in ms_run["argv"]]
    i = argv.index("--datasets")
    argv = [*argv[: i + 1], "METERML_MS", *argv[i + 7 :], "--skip-existing"]
    _, out, err = _run(argv, capsys)
    assert "METERML_MS: skipped" in out and "METERML_MS: FAILED" not in err
    assert not list((save / "records").glob("*METERML_MS.failed.json"))
    # its own record damaged: evaluated again and replaced, not failed
    own = record_path(save, "msclip-tiny-random", "METERML_MS")
    own.write_text("{")
    _, out, err = _run(argv, capsys)
    assert "METERML_MS: ok" in out and _record(save, "METERML_MS")["dataset"]["n_samples"] == 7
    # a record that left unreadable samples out is not complete: evaluated again (the files may
    # have been repaired since), with the reason said
    rec = json.loads(own.read_text())
    rec["unreadable"] = {"count": 1, "files": ["site/x.npy"]}
    own.write_text(json.dumps(rec))
    _, out, err = _run([a for a in argv if a != "--quiet"], capsys)  # warnings shown
    assert "METERML_MS: ok" in out and "left 1 unreadable sample(s) out; re-running" in err
    _, out, _ = _run(argv, capsys)
    assert "METERML_MS: skipped" in out  # the new record is complete


# -- RGB layouts -----------------------------------------------------------------------------
def test_every_rgb_layout_runs_with_the_rgb_model(rgb_run):
    save = rgb_run["save"]
    assert rgb_run["code"] == 0
    names = ["EuroSAT_RGB", "BigEarthNet_RGB", "METERML_RGB", "METERML_NAIP", "RESISC45_RGB",
             "AID_RGB", "ForestNet_RGB"]  # fmt: skip
    summary = pd.read_csv(save / "summary.csv")
    assert list(summary.columns) == ["model", *names]
    expected_n = {"EuroSAT_RGB": 20, "BigEarthNet_RGB": 6, "METERML_RGB": 7, "METERML_NAIP": 7,
                  "RESISC45_RGB": 45, "AID_RGB": 30, "ForestNet_RGB": 8}  # fmt: skip
    for name in names:
        rec = _record(save, name, "msclip-tiny-rgb-random")
        assert rec["dataset"]["n_samples"] == expected_n[name]
        assert rec["model"]["bands"] == ["red", "green", "blue"]
    ben = _record(save, "BigEarthNet_RGB", "msclip-tiny-rgb-random")
    assert ben["metrics"]["rule"] == "other_class" and len(ben["per_class"]) == 19
    assert ben["dataset"]["class_names"][-1] == "other features"
    assert ben["settings"]["text_cache"] is False
    forest = _record(save, "ForestNet_RGB", "msclip-tiny-rgb-random")["dataset"]
    assert forest["class_names"] == ["palm plantation", "grassland", "small farms", "other"]
    assert forest["classes_source"].endswith("forestnet_names.txt")


@pytest.mark.skipif(not REFERENCE_TEMPLATES.is_file(), reason="reference templates not present")
def test_published_template_file_is_accepted(rgb_run):
    rec = _record(rgb_run["save"], "EuroSAT_RGB", "msclip-tiny-rgb-random")
    assert rec["templates"]["name"] == "msclip" and rec["templates"]["n"] == 50


# -- templates and arguments -----------------------------------------------------------------
def test_published_template_name_without_the_file_fails_clearly(tmp_path, capsys):
    argv = ["--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "EuroSAT_MS",
            "--templates", "msclip", "--save-path", str(tmp_path)]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert "not shipped" in err and "path/to/msclip.txt" in err
    assert "(command-line option: --templates)" in err
    assert not (tmp_path / "records").exists()
    with pytest.raises(TemplatesNotShippedError):
        resolve_templates("rs5m")


def test_two_datasets_of_one_name_are_a_usage_error(tmp_path, capsys):
    """Two requested datasets of one name would share one record: refused before any work,
    naming both; names differing only in case are one name."""
    yaml_path = tmp_path / "cy" / "eu.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text("name: EuroSAT_MS\nlayout: folder\nroot: eu\nclasses: {a: a}\n")
    base = ["--model-name", "msclip-tiny", "--no-pretrained", "--save-path", str(tmp_path / "r"),
            "--no-text-cache", "--datasets"]  # fmt: skip
    for pair in (["EuroSAT_MS", str(yaml_path)], ["eurosat_ms", "EuroSAT_MS"]):
        code, _, err = _run([*base, *pair], capsys)
        assert code == 2, err
        assert f"{pair[0]!r} and {pair[1]!r} are both dataset 'EuroSAT_MS'" in err
        assert not (tmp_path / "r").exists()


def test_paths_in_a_dataset_yaml_are_relative_to_it_and_on_the_command_line_to_here(
    tmp_path, capsys, monkeypatch
):
    """The YAML's ``templates:`` file is found beside the YAML (as ``root:`` and ``classes:``),
    whatever the current folder; a missing one is blamed on the YAML, not on --templates; a
    --classnames file is the current folder's even when the YAML's folder has one of that name."""
    data = tmp_path / "data"
    yaml_path = mb.custom_multilabel(data)
    yaml_path.write_text(yaml_path.read_text().replace("templates: short", "templates: t.txt"))
    (data / "t.txt").write_text(TEMPLATES)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    (data / "names.txt").write_text("maize = yaml folder\nwheat = wheat\nwater = water\n")
    (here / "names.txt").write_text("maize = current folder\nwheat = wheat\nwater = water\n")
    base = ["--model-name", "msclip-tiny", "--no-pretrained", "--datasets", str(yaml_path),
            "--save-path", str(tmp_path / "r"), "--no-text-cache", "--workers", "0",
            "--quiet"]  # fmt: skip
    code, _, err = _run([*base, "--classnames", "MyCrops=names.txt"], capsys)
    assert code == 0, err
    rec = _record(tmp_path / "r", "MyCrops")
    assert rec["templates"]["source"] == str((data / "t.txt").resolve())
    assert rec["dataset"]["classes_source"] == "names.txt"
    assert "current folder" in rec["dataset"]["class_names"][0]
    (data / "t.txt").unlink()
    code, _, err = _run(base, capsys)
    line = next(x for x in err.splitlines() if x.startswith("MyCrops: FAILED"))
    assert code == 1 and str(yaml_path) in line and "templates" in line
    assert "--templates" not in line
    yaml_path.write_text(yaml_path.read_text().replace("templates: t.txt", "templates: short")
                         .replace("classes: {maize: maize field, wheat: wheat field, water: "
                                  "open water}", "classes: gone.txt"))  # fmt: skip
    code, _, err = _run(base, capsys)  # the YAML unreadable: its failure goes by its file stem
    line = next(x for x in err.splitlines() if x.startswith("my_crops: FAILED"))
    assert code == 1 and str(yaml_path) in line and "gone.txt" in line


def test_template_sets_by_name_and_file(tmp_path):
    short = resolve_templates("short")
    assert short.name == "short" and len(short.templates) == 5
    f = tmp_path / "t.txt"
    f.write_text("# heading\n\n" + "\n".join(short.templates) + "\n")
    from_file = resolve_templates(f)
    assert from_file.name == "t" and from_file.sha256 == short.sha256


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--model-name", "msclip-tiny"])
    assert e.value.code == 2
    argv = ["--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "EuroSAT_MS",
            "--templates", "AID_RGB=short", "--save-path", str(tmp_path)]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2 and "not among the requested datasets" in err
    code, out, _ = _run(["--list-datasets"], capsys)
    assert code == 0 and "BigEarthNet_MS" in out and "ForestNet_RGB" in out
    argv = ["--model-name", "msclip-tiny", "--no-pretrained", "--datasets",
            "EuroSAT_MS,NoSuchSet", "--save-path", str(tmp_path / "u")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2 and "unknown dataset 'NoSuchSet'" in err and not (tmp_path / "u").exists()
    # a class-name file that cannot be read is the command's mistake: exit 2, before any work
    argv = ["--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "EuroSAT_MS",
            "--classnames", "EuroSAT_MS=nope.txt", "--save-path", str(tmp_path / "c")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2 and "--classnames EuroSAT_MS=nope.txt: class-name file 'nope.txt'" in err
    assert not (tmp_path / "c" / "records").exists()


def test_published_weights_missing_offline_are_a_usage_error(tmp_path, capsys, monkeypatch):
    # as in every msclip program: status 2, one line naming the file and --ckpt-path, no record
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    mb.eurosat_ms(tmp_path)
    argv = ["--model-name", "Llama3-MS-CLIP-Base", "--datasets", "EuroSAT_MS",
            "--dataset-dir", str(tmp_path), "--save-path", str(tmp_path / "r")]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert "Llama3_MS_CLIP_weights.pt" in err and "(--ckpt-path /path/to/" in err
    assert not (tmp_path / "r" / "records").exists()


def test_checkpoint_file_is_hashed_and_named_in_the_label(ms_run, tmp_path, capsys):
    import msclip
    from msclip.pretrained import file_sha256, save_checkpoint

    torch.manual_seed(1)
    ckpt = tmp_path / "tiny_ft.safetensors"
    save_checkpoint(msclip.create_model("msclip-tiny"), ckpt)
    argv = ["--model-name", "msclip-tiny", "--ckpt-path", str(ckpt), "--datasets", "METERML_MS",
            "--dataset-dir", str(ms_run["root"]), "--save-path", str(tmp_path / "res"),
            "--templates", "short", "--no-text-cache", "--workers", "0", "--quiet"]  # fmt: skip
    code, out, _ = _run(argv, capsys)
    assert code == 0, out
    rec = _record(tmp_path / "res", "METERML_MS", "msclip-tiny@tiny_ft")
    assert rec["model"]["checkpoint_sha256"] == file_sha256(ckpt)
    assert rec["model"]["weights"] == "file" and rec["model"]["checkpoint_path"] == str(ckpt)


@pytest.mark.parametrize(
    ("extra", "label"),
    [
        ([], "msclip-tiny"),
        (["--no-pretrained"], "msclip-tiny-random"),
        (["--no-pretrained", "--precision", "bf16"], "msclip-tiny-random-bf16"),
        (["--ckpt-path", "runs/epoch3.pt"], "msclip-tiny@epoch3"),
        (["--ckpt-path", "runs/lab1/final.safetensors"], "msclip-tiny@lab1-final"),
        (["--ckpt-path", "runs/lab2/checkpoints/step_50.pt"], "msclip-tiny@lab2-step_50"),
        (["--no-pretrained", "--seed", "2"], "msclip-tiny-random-seed2"),
        (["--model-label", "mine"], "mine"),
    ],
)
def test_default_model_labels(extra, label):
    from msclip.cli.evaluation import _model_label

    args = parse_args(["--model-name", "msclip-tiny", "--datasets", "EuroSAT_MS", *extra])
    assert _model_label(args) == label


def test_a_record_of_other_weights_under_the_same_label_warns(tmp_path, caplog):
    from msclip.eval.report import RECORD_KEYS, write_record

    rec = {k: None for k in RECORD_KEYS}  # a minimal record
    rec["model"] = {"label": "final", "checkpoint_sha256": "aaa"}
    rec["dataset"] = {"name": "EuroSAT_MS", "split": "test"}
    write_record(tmp_path, rec)
    caplog.set_level("WARNING", logger="msclip.shown_when_quiet")
    write_record(tmp_path, rec)  # the same weights again: no warning
    assert "replaced" not in caplog.text
    other = {**rec, "model": {**rec["model"], "checkpoint_sha256": "bbb"}}
    write_record(tmp_path, other)
    assert "is replaced by a result of the same label 'final'" in caplog.text
    assert "checkpoint_sha256 aaa -> bbb" in caplog.text and "--model-label" in caplog.text
    # a head run of the same weights with other hyper-parameters (a LoRA rank, the epochs)
    caplog.clear()
    head = {**other, "method": {"name": "lora", "hyperparameters": {"epochs": 2, "rank": 4}}}
    write_record(tmp_path, head)
    write_record(tmp_path, head)
    assert "replaced" not in caplog.text
    write_record(tmp_path, {**head, "method": {"name": "lora", "hyperparameters": {
        "epochs": 5, "rank": 8}}})  # fmt: skip
    assert "(epochs 2 -> 5, rank 4 -> 8)" in caplog.text


def test_a_replaced_record_of_other_weights_is_said_under_quiet(tmp_path, capsys):
    """--quiet hides warnings about settings, not a result of other weights overwritten under
    the same label."""
    root = tmp_path / "data"
    mb.eurosat_ms(root, n_per_class=1)
    base = [
        "--model-name", "msclip-tiny", "--no-pretrained", "--model-label", "mine",
        "--datasets", "EuroSAT_MS", "--dataset-dir", str(root), "--templates", "short",
        "--save-path", str(tmp_path / "r"), "--no-text-cache", "--workers", "0", "--quiet",
    ]  # fmt: skip
    code, _, err = _run(base, capsys)
    assert code == 0 and "replaced" not in err
    code, _, err = _run([*base, "--seed", "1"], capsys)  # other random weights
    assert code == 0
    assert "is replaced by a result of the same label 'mine'" in err
    assert "checkpoint_sha256" in err


@pytest.mark.parametrize("picked", ["bf16", "fp16", "fp32"])
def test_the_row_name_does_not_depend_on_what_auto_picked(picked):
    from msclip.cli.evaluation import _model_label

    args = parse_args(["--model-name", "msclip-tiny", "--datasets", "EuroSAT_MS",
                       "--no-pretrained"])  # fmt: skip
    args.precision_used = picked  # what --precision auto chose on this machine
    assert _model_label(args) == "msclip-tiny-random"
    explicit = parse_args(["--model-name", "msclip-tiny", "--datasets", "EuroSAT_MS",
                           "--no-pretrained", "--precision", "bf16"])  # fmt: skip
    explicit.precision_used = "bf16"
    assert _model_label(explicit) == "msclip-tiny-random-bf16"


def test_a_label_outside_the_nomenclature_fails_the_dataset_naming_the_file(tmp_path, capsys):
    # benchmark_datasets/README.md: "A label outside the 43 is an error naming the file", not an
    # unreadable sample skipped with exit status 0
    root = tmp_path / "data"
    ds = mb.bigearthnet(root)
    patch = sorted(p for p in ds.iterdir() if p.is_dir())[2]
    labels = patch / f"{patch.name}_labels_metadata.json"
    labels.write_text(json.dumps({"labels": ["Lava"]}))
    code, out, err = _run([
        "--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "BigEarthNet_MS",
        "--dataset-dir", str(root), "--templates", "short", "--workers", "0", "--quiet",
        "--save-path", str(tmp_path / "r"),
    ], capsys)  # fmt: skip
    assert code == 1 and "BigEarthNet_MS: FAILED: DatasetLabelError" in err
    assert str(labels) in err and "'Lava'" in err and "unreadable" not in out


# -- unreadable images --------------------------------------------------------------------------
def test_unreadable_images_are_named_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "data"
    ds = mb.eurosat_ms(root, n_per_class=2)
    (ds / "eurosat-test.txt").unlink()  # every image is used
    broken = sorted((ds / "2750").glob("*/*_2.tif"))[0]
    broken.write_bytes(b"this is not a GeoTIFF")
    base = [
        "--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "EuroSAT_MS",
        "--dataset-dir", str(root), "--templates", "short", "--workers", "1", "--quiet",
    ]  # fmt: skip
    code, out, err = _run([*base, "--save-path", str(tmp_path / "skip"), "--save-scores"], capsys)
    # the metrics are of part of the split: not a clean exit, as in inference
    assert code == 1 and "1 unreadable and skipped" in out
    assert "unreadable samples were skipped" in err and "EuroSAT_MS (1)" in err
    assert "Traceback" not in err and "DataLoader worker" not in err
    rec = _record(tmp_path / "skip", "EuroSAT_MS")
    assert rec["unreadable"]["count"] == 1 and rec["unreadable"]["files"] == [str(broken)]
    # the record says why, not only which
    [why] = rec["unreadable"]["samples"]
    assert why["file"] == str(broken) and why["reason"] and "Error" in why["reason"]
    assert rec["metrics"]["n_samples"] == 2 * len(mb.EUROSAT_CLASSES) - 1
    # the saved scores name the samples they are of (every id after the broken one was shifted)
    saved = np.load(next((tmp_path / "skip" / "scores").glob("*.npz")))
    assert len(saved["ids"]) == len(saved["scores"]) == len(saved["targets"])
    assert broken.stem not in [Path(str(i)).stem for i in saved["ids"]]
    # the report says the metrics are of part of the data
    report = (tmp_path / "skip" / "report.md").read_text()
    assert "**1 unreadable and left out**" in report and broken.name in report
    assert f"  - `{broken}`: {why['reason']}" in report.splitlines()  # and why, what to fix
    code, out, err = _run([*base, "--save-path", str(tmp_path / "strict"), "--strict"], capsys)
    assert code == 1 and "EuroSAT_MS: FAILED" in err and broken.name in err
    assert "Traceback" not in err


def test_a_missing_dataset_names_the_flag(tmp_path, capsys):
    code = main(["--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "EuroSAT_MS",
                 "--dataset-dir", str(tmp_path / "nowhere"), "--save-path", str(tmp_path / "r"),
                 "--no-text-cache", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    line = next(x for x in err.splitlines() if x.startswith("EuroSAT_MS: FAILED"))
    assert line.endswith("(command-line option: --dataset-dir)")


def test_labels_that_slug_alike_keep_their_own_records(tmp_path, caplog):
    import json

    from msclip.eval.report import RECORD_KEYS, file_stem, load_records, write_record

    def record(label, seed=0):
        rec = {k: None for k in RECORD_KEYS}
        rec.update(model={"label": label}, dataset={"name": "EuroSAT_MS", "split": "test"},
                   seed=seed, metrics={"top1_accuracy": 0.5}, main_metric="top1_accuracy",
                   timing={}, versions={})  # fmt: skip
        return rec

    # "(fp32)" and "[fp32]" both slug to "_fp32_": one record replaced the other silently
    write_record(tmp_path, record("demo (fp32)"))
    write_record(tmp_path, record("demo [fp32]"))
    records, _ = load_records(tmp_path)
    assert sorted(r["model"]["label"] for r in records) == ["demo (fp32)", "demo [fp32]"]
    assert file_stem("demo", "EuroSAT_MS") == "demo__EuroSAT_MS"  # safe names stay as they are
    # a record written under the earlier, shared name is replaced, not doubled
    legacy = tmp_path / "records" / "demo_fp32__EuroSAT_MS.json"  # the slugs alone
    legacy.write_text(json.dumps(record("demo (fp32)")))
    write_record(tmp_path, record("demo (fp32)"))
    assert not legacy.exists() and len(load_records(tmp_path)[0]) == 2
    # another seed under the same label is a replaced result of something else: said
    caplog.set_level("WARNING", logger="msclip.shown_when_quiet")
    write_record(tmp_path, record("demo (fp32)", seed=1))
    assert "(seed 0 -> 1)" in caplog.text


def test_a_damaged_record_is_left_out_of_the_merge_not_the_end_of_it(ms_run, tmp_path, capsys):
    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    (save / "summary.csv").unlink()
    (save / "records" / "other__EuroSAT_MS.json").write_text('{"schema": "msclip.eval.rec')
    (save / "records" / "old__EuroSAT_MS.json").write_text('{"model": "old"}')
    (save / "records" / "old__AID_RGB.failed.json").write_text("[]")
    code, out, err = _run(["--merge-only", "--save-path", str(save)], capsys)
    assert code == 1 and "3 unreadable record(s) left out of the reports" in err
    assert "merged 4 record(s), 2 failure note(s)" in out and "Traceback" not in err
    pd.testing.assert_frame_equal(
        pd.read_csv(save / "summary.csv"), pd.read_csv(ms_run["save"] / "summary.csv")
    )
    report = (save / "report.md").read_text()
    assert "## Unreadable records (left out)" in report and "other__EuroSAT_MS.json" in report
    assert "old__AID_RGB.failed.json" in report and "old__EuroSAT_MS.json" in report


def test_a_record_edited_by_hand_is_left_out_of_the_merge_naming_the_field(
    ms_run, tmp_path, capsys
):
    """Values the merge reads that no run writes (a metric typed as text, a cut confusion
    matrix) leave that record out with the field named, not the merge with a traceback."""
    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    edits = {
        "EuroSAT_MS": (
            "metrics",
            {**_record(save, "EuroSAT_MS")["metrics"], "top1_accuracy": "n/a"},
        ),
        "METERML_MS": ("confusion_matrix", [[1, 0], [0]]),
        "BigEarthNet_MS": ("metrics", [0.5]),
    }
    for name, (key, value) in edits.items():
        path = record_path(save, "msclip-tiny-random", name)
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({**rec, key: value}))
    code, out, err = _run(["--merge-only", "--save-path", str(save)], capsys)
    assert code == 1 and "Traceback" not in err and "3 unreadable record(s) left out" in err
    assert "metrics.top1_accuracy = 'n/a', not a number" in err
    assert "'confusion_matrix' that is not 7 x 7 numbers" in err and "'metrics' of type list" in err
    assert "merged 1 record(s)" in out
    # a metric that is text in every record is no column of the summary
    code, _, err = _run(["--merge-only", "--save-path", str(ms_run["save"]),
                         "--summary-metric", "ap_definition"], capsys)  # fmt: skip
    assert code == 1 and "no record has a number for the metric 'ap_definition'" in err


def test_a_second_record_of_a_run_is_named_not_merged_over_the_first(ms_run, tmp_path, capsys):
    """A copy of a record kept beside it (``... copy.json``) is the same (model, dataset): its
    numbers filled the same summary cell, whichever file was read last; now the run's own file
    is shown and the copy is named."""
    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    rec = _record(save, "EuroSAT_MS")
    copy = save / "records" / "msclip-tiny-random__EuroSAT_MS copy.json"
    copy.write_text(json.dumps({**rec, "metrics": {**rec["metrics"], "top1_accuracy": 0.99}}))
    (save / "records" / "a.json").write_text(json.dumps({**rec, "seed": 7}))  # sorts first
    code, out, err = _run(["--merge-only", "--save-path", str(save)], capsys)
    assert code == 1 and "2 unreadable record(s) left out" in err
    assert f"{copy} is a second record of 'msclip-tiny-random' on 'EuroSAT_MS'" in err
    assert "merged 4 record(s)" in out
    summary = pd.read_csv(save / "summary.csv")
    assert summary.loc[0, "EuroSAT_MS"] == pytest.approx(rec["metrics"]["top1_accuracy"])
    assert "seed 7" not in (save / "report.md").read_text()


def test_the_printed_summary_shows_row_labels_as_written(ms_run, tmp_path, capsys):
    from msclip.eval.report import write_record

    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    rec = _record(save, "METERML_MS")
    for label in ("NA", "007"):  # a missing value and a number to a CSV reader
        write_record(save, {**rec, "model": {**rec["model"], "label": label}})
    code, out, _ = _run(["--merge-only", "--save-path", str(save)], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:5]}
    assert set(rows) == {"NA", "007", "msclip-tiny-random"}
    assert rows["007"][0] == "-" and rows["NA"][2] == f"{rec['metrics']['top1_accuracy']:.4f}"


def test_tables_and_figures_of_a_removed_record_go_with_it(ms_run, tmp_path, capsys):
    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    record_path(save, "msclip-tiny-random", "METERML_MS").unlink()  # no longer evaluated
    in_flight = save / "per_class" / ".tmp-other__X.csv.abc.csv"  # another merge's temporary
    in_flight.write_text("x")
    code, out, _ = _run(["--merge-only", "--save-path", str(save)], capsys)
    assert code == 0 and "merged 3 record(s)" in out
    assert not [*save.glob("per_class/*METERML*"), *save.glob("figures/*METERML*")]
    assert in_flight.is_file()
    assert len(list((save / "per_class").glob("msclip-tiny-random__*.csv"))) == 3
    assert (save / "figures" / "msclip-tiny-random__EuroSAT_MS__confusion.png").is_file()


def test_confusion_figure_shows_dollar_signs_literally(tmp_path):
    import matplotlib.text

    from msclip.eval.report import plot_confusion

    shown: list[str] = []
    original = matplotlib.text.Text.set_text

    def spy(self, s):  # what each label and title is given
        shown.append(str(s))
        return original(self, s)

    names = ["$\\frac$", "cost $5-$10"]  # mathtext: a parse error, and a garbled name
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.text.Text, "set_text", spy)
        png = plot_confusion(np.eye(2, dtype=int), names, tmp_path / "c.png", title="$m$ on d")
    assert png.read_bytes()[:4] == b"\x89PNG"
    texts = [matplotlib.text.Text(text=s) for s in shown]
    plain = {t._preprocess_math(t.get_text()) for t in texts}
    assert ("cost $5-$10", False) in plain and ("$m$ on d", False) in plain


def test_a_confusion_figure_is_drawn_again_only_when_what_it_shows_changed(tmp_path):
    """merge() draws every run's figure after each evaluation (about a second each): a figure
    already drawn from the same matrix, names and title is kept; a changed or damaged one is
    drawn again."""
    import matplotlib.figure

    from msclip.eval.report import plot_confusion

    drawn: list[int] = []
    original = matplotlib.figure.Figure.savefig

    def counted(self, *a, **kw):
        drawn.append(1)
        return original(self, *a, **kw)

    png = tmp_path / "c.png"
    cm = np.array([[3, 1], [0, 4]])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.figure.Figure, "savefig", counted)
        plot_confusion(cm, ["a", "b"], png, title="m on d")
        first = png.read_bytes()
        assert plot_confusion(cm, ["a", "b"], png, title="m on d") == png and len(drawn) == 1
        assert png.read_bytes() == first
        for other in ((cm.T, ["a", "b"], "m on d"), (cm, ["a", "c"], "m on d"),
                      (cm, ["a", "c"], "n on d")):  # fmt: skip
            plot_confusion(*other[:2], png, title=other[2])
        assert len(drawn) == 4
        png.write_bytes(png.read_bytes()[:-100])  # cut short
        plot_confusion(cm, ["a", "c"], png, title="n on d")
        assert len(drawn) == 5 and png.read_bytes()[-12:] == first[-12:]  # whole again (IEND)


def test_summary_cells_that_do_not_compare_are_named(ms_run, tmp_path, capsys):
    """A quick --max-samples run, a run without its unreadable samples, and a column whose rows
    used another AP definition or multi-label rule land in the summary beside full runs: the
    table cannot show it, so the merge names each such cell (warning, under --quiet too, and
    report.md)."""
    from msclip.eval.report import write_record

    save = tmp_path / "copy"
    shutil.copytree(ms_run["save"], save)
    # the unchanged run alone: nothing to say
    code, _, err = _run(["--merge-only", "--save-path", str(save), "--quiet"], capsys)
    assert code == 0 and "summary:" not in err
    assert "do not compare" not in (save / "report.md").read_text()
    euro, ben = _record(save, "EuroSAT_MS"), _record(save, "BigEarthNet_MS")
    n = euro["metrics"]["n_samples"]
    skipped = {**euro["dataset"]["skipped"], "random subset (max_samples=3, seed=0)": n - 3}
    write_record(save, {
        **euro, "model": {**euro["model"], "label": "quick"},
        "dataset": {**euro["dataset"], "skipped": skipped},
        "metrics": {**euro["metrics"], "n_samples": 3},
        "settings": {**euro["settings"], "max_samples": 3},
    })  # fmt: skip
    write_record(save, {
        **ben, "model": {**ben["model"], "label": "other-ap"},
        "ap": {**ben["ap"], "definition": "all_relevant"},
        "metrics": {**ben["metrics"], "rule": "other_class"},
    })  # fmt: skip
    code, _, err = _run(["--merge-only", "--save-path", str(save), "--quiet"], capsys)
    assert code == 0
    report = (save / "report.md").read_text()
    said = [
        "quick on EuroSAT_MS: a random subset of 3 samples (--max-samples 3), not the whole split",
        "BigEarthNet_MS: the rows were scored with different AP settings (other-ap: AP@100 "
        "all_relevant, classes without positives nan; msclip-tiny-random: AP@100 "
        "relevant_retrieved, classes without positives nan)",
        "BigEarthNet_MS: the rows were scored with different multi-label rules",
    ]
    for text in said:
        assert text in err and text in report
    assert "EuroSAT_MS: the rows" not in err  # top-1: the AP settings do not enter it
    assert "msclip-tiny-random on" not in err
