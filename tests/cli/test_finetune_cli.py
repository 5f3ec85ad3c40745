"""``msclip-finetune`` from the command line, its records merged with ``evaluation.py``'s, and
``msclip-inference --head``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from support import mini_benchmark as mb

from msclip.cli.evaluation import main as evaluation_main
from msclip.cli.finetune import main
from msclip.cli.inference import main as inference_main
from msclip.synthetic import generate_dataset

TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--seed", "0"]
FAST = ["--n-resamples", "20", "--batch-size", "8", "--no-text-cache", "--quiet",
        "--val-fraction", "0.2", "--test-fraction", "0.3"]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One CLI run on class folders from a YAML file with flags on top."""
    root = tmp_path_factory.mktemp("ft")
    scenes = root / "scenes"
    generate_dataset(scenes, classes=["sea", "forest", "desert"], n_per_class=10, size=32, seed=0)
    config = root / "run.yaml"
    config.write_text(
        f"folders: {scenes}\nmethod: [knn, logistic, linear]\nepochs: 9\n"
        f"cache-dir: {root / 'cache'}\noutput_dir: {root / 'run'}\nsave_path: {root / 'res'}\n"
    )
    argv = ["--config", str(config), "--epochs", "2", *TINY, *FAST]
    code = main(argv)
    return {"code": code, "root": root, "scenes": scenes, "config": config, "argv": argv}


def test_yaml_config_flags_and_outputs(run, capsys):
    assert run["code"] == 0
    root = run["root"]
    for label in ("knn", "knn-unweighted", "logistic", "linear"):
        assert (root / "run" / label / "head.safetensors").is_file()
    history = pd.read_csv(root / "run" / "linear" / "history.csv")
    assert len(history) == 2  # the flag overrides the YAML file's epochs
    protocol = (root / "run" / "protocol.yaml").read_text()
    assert "epochs: 2" in protocol and "split_source" in protocol
    code = main(["--config", str(run["config"]), "--epochs", "5", "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and "epochs: 5" in out and "- logistic" in out


def test_run_summary_table_is_printed(tmp_path, run, capsys):
    code = main(["--folders", str(run["scenes"]), "--method", "knn", "--output-dir",
                 str(tmp_path / "o"), "--save-path", str(tmp_path / "r"), "--cache-dir",
                 str(run["root"] / "cache"), *TINY, *_without(FAST, "--batch-size")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "scenes: classification, 3 classes; train 15, val 6, test 9" in out
    assert "knn-unweighted  top1_accuracy" in out and "95% CI" in out
    row = next(line for line in out.splitlines() if line.startswith("knn "))
    assert re.fullmatch(r"\d+\.\d", row.split()[-1]), row  # seconds with one decimal
    assert f"records merged into {tmp_path / 'r' / 'summary.csv'}" in out


def test_interval_headers_give_the_confidence_asked_for(tmp_path, run, capsys):
    # --confidence 0.9 draws 90% intervals: the table and report.md said "95% CI" over them
    save = tmp_path / "r"
    code = main(["--folders", str(run["scenes"]), "--method", "knn", "--output-dir",
                 str(tmp_path / "o"), "--save-path", str(save), "--cache-dir",
                 str(run["root"] / "cache"), "--confidence", "0.9", *TINY,
                 *_without(FAST, "--batch-size")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "90% CI" in out and "95% CI" not in out
    report = (save / "report.md").read_text()
    assert "| metric | value | 90% CI |" in report and "95% CI" not in report


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value."""
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--task", "segmentation", "--decoder", "linear", "--method", "knn", "logistic"],
         ["--method: applies to image-level tasks"]),
        (["--method", "knn", "--decoder", "fcn", "--class-weights", "auto", "--ignore-index",
          "3"], ["--decoder: applies to dense tasks", "--class-weights:", "--ignore-index:"]),
        (["--method", "knn", "--max-samples", "5"], ["--max-samples: takes a subset of a "
                                                     "benchmark dataset"]),
        (["--value-columns", "foo", "--scale", "0.01"],
         ["--value-columns: applies to regression", "--scale: applies to regression"]),
        (["--method", "logistic", "--k", "5", "--lora-rank", "4"],
         ["--k: applies to the knn method", "--lora-rank: applies to encoder_mode lora"]),
    ],
)  # fmt: skip
def test_options_that_do_not_apply_are_refused(tmp_path, run, capsys, flags, named):
    """A flag the run has no use for is named with the reason, exit 2, before any work (it
    would otherwise be ignored without a word)."""
    data = ["--folders", str(run["scenes"])]
    if "segmentation" in flags:
        from msclip.synthetic import generate_dense_dataset

        generate_dense_dataset(tmp_path / "d", classes=["sea", "forest"], n_per_class=2, size=16,
                               seed=0, splits=(0.5, 0.25, 0.25))  # fmt: skip
        data = ["--csv", str(tmp_path / "d" / "index.csv")]
    code = main([*data, *flags, "--output-dir", str(tmp_path / "o"), *TINY, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "do not apply to this run" in err
    for text in named:
        assert text in err
    assert not (tmp_path / "o").exists()


def test_config_keys_that_do_not_apply_are_warned_about(tmp_path, run, capsys):
    """A YAML file may be shared by runs of several methods: its keys that do not apply are
    named in a warning, not refused; defaults are never named."""
    config = tmp_path / "shared.yaml"
    config.write_text("k: 7\ncs: [0.1, 1.0]\n")
    code = main(["--config", str(config), "--folders", str(run["scenes"]), "--method", "knn",
                 "--output-dir", str(tmp_path / "o"), "--save-path", str(tmp_path / "r"),
                 "--cache-dir", str(run["root"] / "cache"), *TINY,
                 *_without(FAST, "--batch-size")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: " in err and "cs: applies to the logistic method" in err
    assert f"{config}: k:" not in err  # k applies to knn


def test_bad_input_exits_2_and_writes_nothing(tmp_path, run, capsys):
    caps = pd.read_csv(run["scenes"] / "captions.csv")
    table = tmp_path / "t.csv"
    pd.DataFrame(
        {
            "path": [str(run["scenes"] / p) for p in caps["image"]],
            "label": ["sea"] * 5 + [""] + ["forest"] * 24,
        }
    ).to_csv(table, index=False)
    out_dir, save = tmp_path / "o", tmp_path / "r"
    argv = ["--csv", str(table), "--output-dir", str(out_dir), "--save-path", str(save), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "line 7" in err and "missing label in column 'label'" in err
    assert main([*argv, "--task", "regression", "--method", "knn"]) == 2
    assert "do not apply to regression" in capsys.readouterr().err
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epoch: 3\n")
    assert main(["--config", str(bad_yaml), *argv]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert not out_dir.exists() and not save.exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--lora-targets", "in_proj"], "lora_targets ['in_proj'] are invalid"),
        (["--lora-targets", "q", "q"], "lora_targets ['q', 'q'] are invalid"),
        (["--lora-alpha", "0"], "lora_alpha must be a positive number"),
        (["--lora-alpha", "-4"], "lora_alpha must be a positive number"),
    ],
)  # fmt: skip
def test_bad_lora_settings_are_refused_before_the_model_loads(tmp_path, run, capsys, flags,
                                                              named):  # fmt: skip
    """LoRA targets naming no adapted part were refused only when the adapters were attached,
    after the model and data loaded and the output folder was made; alpha 0 (an update of 0:
    nothing trains) or below was accepted and the run reported a 'LoRA' head."""
    out_dir = tmp_path / "o"
    argv = ["--folders", str(run["scenes"]), "--method", "linear", "--encoder-mode", "lora",
            *flags, "--output-dir", str(out_dir), "--save-path", str(tmp_path / "r"), *TINY,
            "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "loading" not in err
    assert not out_dir.exists() and not (tmp_path / "r").exists()


def test_records_merge_with_evaluation(tmp_path, capsys):
    data = tmp_path / "data"
    mb.eurosat_ms(data, n_per_class=5)
    save = tmp_path / "results"
    common = ["--dataset-dir", str(data), "--save-path", str(save)]
    assert evaluation_main([*TINY, "--datasets", "EuroSAT_MS", *common, "--templates", "short",
                            "--no-text-cache", "--quiet", "--workers", "0"]) == 0  # fmt: skip
    assert main([*TINY, "--dataset", "EuroSAT_MS", *common, "--method", "knn", "logistic",
                 "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                 "--n-resamples", "20", "--no-text-cache", "--quiet", "--val-fraction",
                 "0.25"]) == 0  # fmt: skip
    capsys.readouterr()
    summary = pd.read_csv(save / "summary.csv")
    assert summary.columns.tolist() == ["model", "EuroSAT_MS"]
    assert summary["model"].tolist() == [
        "msclip-tiny-random", "msclip-tiny-random+knn", "msclip-tiny-random+knn-unweighted",
        "msclip-tiny-random+logistic",
    ]  # fmt: skip
    zero_shot = json.loads((save / "records" / "msclip-tiny-random__EuroSAT_MS.json").read_text())
    probe = json.loads(
        (save / "records" / "msclip-tiny-random+logistic__EuroSAT_MS.json").read_text()
    )
    assert zero_shot["dataset"]["n_samples"] == probe["dataset"]["n_samples"] == 10  # same test
    assert probe["dataset"]["split_source"].endswith("eurosat-test.txt")
    report = (save / "report.md").read_text()
    assert "## msclip-tiny-random — EuroSAT_MS" in report
    assert "## msclip-tiny-random+logistic — EuroSAT_MS" in report and "95% CI" in report
    assert (save / "figures" / "msclip-tiny-random+logistic__EuroSAT_MS__confusion.png").is_file()
    assert len(list((save / "per_class").glob("*.csv"))) == 4


def test_inference_with_a_head(run, tmp_path, capsys):
    scenes, head = run["scenes"], run["root"] / "run" / "logistic" / "head.safetensors"
    out = tmp_path / "pred.csv"
    code = inference_main(
        [
            "--run-classification",
            "--head",
            str(head),
            "--images",
            str(scenes / "sea"),
            "--save-path",
            str(out),
            *TINY,
            "--quiet",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "classified into 3 classes by the logistic head" in text
    df = pd.read_csv(out)
    assert df.columns.tolist() == [
        "Image",
        "Class",
        "desert",
        "forest",
        "sea",
        "valid_fraction",
        "status",
    ]
    assert len(df) == 10 and df[["desert", "forest", "sea"]].sum(axis=1).round(6).eq(1).all()
    record = json.loads((tmp_path / "pred.csv.json").read_text())  # what made the table
    assert record["mode"] == "classification with a trained head"
    assert record["head"]["path"] == str(head) and record["head"]["method"] == "logistic"
    assert record["head"]["outputs"] == ["desert", "forest", "sea"]
    assert record["images"] == {"given": 10, "scored": 10, "skipped_nodata": 0, "unreadable": 0}
    assert record["model"]["name"] == "msclip-tiny" and record["model"]["precision"] == "fp32"
    # the same predictions as the run's own on its test images of that class
    preds = pd.read_csv(run["root"] / "run" / "logistic" / "predictions.csv")
    mine = preds[preds["image"].str.contains("/sea/")]
    got = df.set_index("Image").loc[[Path(p).name for p in mine["image"]]]
    assert got["Class"].tolist() == mine["prediction"].tolist()
    pd.testing.assert_series_equal(got["sea"].reset_index(drop=True),
                                   mine["sea"].reset_index(drop=True), atol=1e-5,
                                   check_names=False)  # fmt: skip
    # without model flags the head's own encoder is drawn again (random weights: their seed)
    again = tmp_path / "again.csv"
    code = inference_main(["--run-classification", "--head", str(head), "--images",
                           str(scenes / "sea"), "--save-path", str(again), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(again), df)
    # another encoder: refused, both fingerprints named, nothing written
    other = tmp_path / "other.csv"
    code = inference_main(["--run-classification", "--head", str(head), "--images",
                           str(scenes / "sea"), "--save-path", str(other), "--model-name",
                           "msclip-tiny", "--no-pretrained", "--seed", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not other.exists()
    assert "was trained on encoder" in err and "but the model is" in err and "--head" in err
    # --threshold decides multi-label heads only: refused for this one, nothing written
    code = inference_main(["--run-classification", "--head", str(head), "--images",
                           str(scenes / "sea"), "--save-path", str(other), "--threshold", "0.3",
                           *TINY, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not other.exists()
    assert "--threshold 0.3" in err and "classification head" in err and "leave" in err
    # images of other bands than the training images: scored, with a warning naming both
    from msclip.heads.checkpoint import read_head

    trained = read_head(head).info["input_bands"]
    assert len(trained) == 12 and "B04" in trained
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    import msclip

    r = msclip.read_raster(next((scenes / "sea").glob("*.tif")))
    msclip.write_geotiff(rgb / "sea_rgb.tif", r.data[[3, 2, 1]], crs=r.crs, transform=r.transform,
                         bands=["B04", "B03", "B02"])  # fmt: skip
    code = inference_main(["--run-classification", "--head", str(head), "--images", str(rgb),
                           "--save-path", str(tmp_path / "rgb.csv"), *TINY, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err  # said under --quiet too: the scores may be wrong
    assert code == 0 and "the head was trained on images with bands" in err
    assert "sea_rgb.tif has ['B04', 'B03', 'B02']" in err


def test_lora_and_regression_heads_in_inference(run, tmp_path, capsys):
    scenes = run["scenes"]
    caps = pd.read_csv(scenes / "captions.csv")
    table = scenes / "cover.csv"
    pd.DataFrame({"path": caps["image"], "cover": caps["label"].map(
        {"sea": 0.0, "forest": 80.0, "desert": 5.0})}).to_csv(table, index=False)  # fmt: skip
    out_dir = tmp_path / "run"
    argv = [
        "--csv",
        str(table),
        "--task",
        "regression",
        "--value-columns",
        "cover",
        "--scale",
        "0.01",
        "--method",
        "linear",
        "--encoder-mode",
        "lora",
        "--epochs",
        "1",
        "--output-dir",
        str(out_dir),
        "--save-path",
        str(tmp_path / "r"),
        *TINY,
        *FAST,
    ]
    assert main(argv) == 0
    head = out_dir / "linear-lora" / "head.safetensors"
    assert (out_dir / "linear-lora" / "adapters.safetensors").is_file()
    pred = tmp_path / "cover.csv"
    code = inference_main(
        [
            "--run-classification",
            "--head",
            str(head),
            "--images",
            str(scenes / "forest"),
            "--save-path",
            str(pred),
            *TINY,
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    df = pd.read_csv(pred)
    assert df.columns.tolist() == ["Image", "cover", "valid_fraction", "status"] and len(df) == 10
    capsys.readouterr()
    # its tower trained in fp32: applied in fp32 under auto, as the run predicted its test set
    # (bf16 features moved the probabilities by ~2e-3)
    again = ["--run-classification", "--head", str(head), "--images", str(scenes / "forest"),
             "--save-path", str(tmp_path / "again.csv"), *TINY]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MSCLIP_PRECISION", raising=False)  # the suite's fp32, which auto honours
        assert inference_main(again) == 0
    err = capsys.readouterr().err
    assert "trained on the encoder in fp32 (its image tower trained)" in err
    assert "precision: fp32" in err


def test_regression_head_values_of_tiny_scale_are_printed_with_significant_digits(
    run, tmp_path, capsys
):
    # heights in km (values near 3e-5) printed as 0.0000 in the table: four decimals
    scenes = run["scenes"]
    caps = pd.read_csv(scenes / "captions.csv")
    table = tmp_path / "height.csv"
    pd.DataFrame({"path": [str(scenes / p) for p in caps["image"]], "height": caps["label"].map(
        {"sea": 0.0, "forest": 30.0, "desert": 2.0})}).to_csv(table, index=False)  # fmt: skip
    argv = ["--csv", str(table), "--task", "regression", "--value-columns", "height", "--scale",
            "1e-6", "--method", "ridge", "--output-dir", str(tmp_path / "run"), "--save-path",
            str(tmp_path / "r"), "--cache-dir", str(run["root"] / "cache"),
            *TINY, *_without(FAST, "--batch-size")]  # fmt: skip
    assert main(argv) == 0
    # report.md: RMSE and MAE in the targets' units with significant digits, R2 four decimals
    capsys.readouterr()
    long = pd.read_csv(tmp_path / "r" / "summary_long.csv").set_index("metric")["value"]
    assert 0 < long["rmse"] < 1e-4
    report = (tmp_path / "r" / "report.md").read_text()
    for metric, spec in (("rmse", ".6g"), ("mae", ".6g"), ("r2", ".4f")):
        assert f"| {metric} | {long[metric]:{spec}} | [" in report, metric
    pred = tmp_path / "height_pred.csv"
    head = tmp_path / "run" / "ridge" / "head.safetensors"
    code = inference_main(["--run-classification", "--head", str(head), "--images",
                           str(scenes / "forest"), "--save-path", str(pred), *TINY,
                           "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    values = pd.read_csv(pred)["height"]
    assert values.abs().max() < 1e-4 and values.abs().min() > 1e-6
    shown = [line.split()[1] for line in out.splitlines() if line.startswith("forest_")]
    assert len(shown) == 10 and "0.0000" not in shown
    assert [float(v) for v in shown] == pytest.approx(values.tolist(), rel=1e-5)


def test_a_head_reads_unnamed_bands_as_its_training_run_named_them(run, tmp_path, capsys):
    # trained on 4-band files without band names (--input-bands B02 B03 B04 B08), the head was
    # given the same kind of file read as NAIP's red, green, blue, NIR: blue and red swapped
    import rasterio

    caps = pd.read_csv(run["scenes"] / "captions.csv")
    for rel in caps["image"]:
        with rasterio.open(run["scenes"] / rel) as src:
            idx = [src.descriptions.index(b) + 1 for b in ("B02", "B03", "B04", "B08")]
            profile = {**src.profile, "count": 4}
            out = tmp_path / "four" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(out, "w", **profile) as dst:
                dst.write(src.read(idx))
    table = tmp_path / "four" / "t.csv"
    pd.DataFrame({"path": caps["image"], "label": caps["label"]}).to_csv(table, index=False)
    argv = ["--csv", str(table), "--input-bands", "B02", "B03", "B04", "B08", "--method",
            "logistic", "--output-dir", str(tmp_path / "run"), "--save-path", str(tmp_path / "r"),
            *TINY, *_without(FAST, "--batch-size")]  # fmt: skip
    assert main(argv) == 0
    head = str(tmp_path / "run" / "logistic" / "head.safetensors")
    images = str(tmp_path / "four" / "forest")
    capsys.readouterr()
    code = inference_main(["--run-classification", "--head", head, "--images", images,
                           "--save-path", str(tmp_path / "a.csv"), *TINY])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "read as the head's training images were: --bands B02 B03 B04 B08" in err
    assert "NAIP" not in err and "the head was trained on images with bands" not in err
    code = inference_main(["--run-classification", "--head", head, "--images", images,
                           "--save-path", str(tmp_path / "b.csv"), "--bands", "B02", "B03",
                           "B04", "B08", *TINY, "--quiet"])  # fmt: skip
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    # unnamed files of another band count are read by their count as before, not refused
    for rel in caps["image"][:2]:
        with rasterio.open(run["scenes"] / rel) as src:
            out = tmp_path / "twelve" / Path(rel).name
            out.parent.mkdir(exist_ok=True)
            with rasterio.open(out, "w", **src.profile) as dst:
                dst.write(src.read())
    code = inference_main(["--run-classification", "--head", head, "--images",
                           str(tmp_path / "twelve"), "--save-path", str(tmp_path / "c.csv"),
                           *TINY])  # fmt: skip
    assert code == 0 and "read as the head's" not in capsys.readouterr().err
    assert (pd.read_csv(tmp_path / "c.csv")["status"] == "ok").all()


def test_python_dash_m_entry_point():
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "msclip.finetune", "--help"], cwd=repo,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "--encoder-mode" in proc.stdout


def test_type_and_value_problems_of_one_config_are_reported_together(tmp_path, run, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f'folders: {run["scenes"]}\nepochs: "two"\nk: 0\n')
    argv = ["--config", str(config), "--batch-size", "x", "--confidence", "2", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # the values refused for their type, then the value checks of the others, in one list
    for line in (f"{config}: option 'epochs': expected an integer, got 'two'",
                 "command line: option 'batch_size': expected an integer, got 'x'",
                 "k must be >= 1, got 0", "confidence must lie in (0, 1), got 2.0"):  # fmt: skip
        assert line in err, line
    assert err.count("error:") == 1 and "batch_size must be" not in err  # not its default's


def test_the_config_file_is_read_once(tmp_path, monkeypatch):
    import msclip.options
    from msclip.cli.finetune import parse_args

    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\nk: 7\n")
    reads, real = [], msclip.options.load_yaml
    monkeypatch.setattr(msclip.options, "load_yaml", lambda p: reads.append(p) or real(p))
    args = parse_args(["--config", str(config), "--k", "5"])
    # one content for the options and for the list of those the file gives
    assert len(reads) == 1 and args.cfg.epochs == 3 and args.cfg.k == 5
    assert args.yaml_given == ["epochs"]


def test_a_list_of_config_problems_says_how_options_are_written_as_flags(capsys):
    """Problems named by their option names (model_name, image_dir) come with the rule that
    turns them into flags (--model-name), in msclip-finetune as in msclip-train."""
    from msclip.cli.train import main as train_main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "model_name" in err and "Traceback" not in err
    assert err.splitlines()[-1] == (
        "note: every option is also a flag of the same name in kebab case "
        "(model_name: --model-name)"
    )
    assert train_main([]) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("(train_data: --train-data)")


def test_a_heads_encoder_is_found_from_what_it_recorded(tmp_path):
    """Without model flags: the weight file the encoder was loaded from (a release file with its
    architecture's name), else the seed of its random weights, else its registered name."""
    import argparse

    from msclip.cli.inference import _head_model_args

    def resolved(encoder, **given):
        args = argparse.Namespace(model_name=None, ckpt_path=None, pretrained=True, seed=0)
        vars(args).update(given)
        _head_model_args(args, encoder, str(tmp_path / "head.safetensors"))
        return args.model_name, args.ckpt_path, args.pretrained, args.seed

    own, release = tmp_path / "w.safetensors", tmp_path / "w.pt"
    own.write_bytes(b"x")
    release.write_bytes(b"x")
    named = {"name": "Llama3-MS-CLIP-Base", "init_seed": None}
    assert resolved({**named, "checkpoint_path": str(own)}) == (None, str(own), True, 0)
    assert resolved({**named, "checkpoint_path": str(release)}) == (
        "Llama3-MS-CLIP-Base", str(release), True, 0)  # fmt: skip
    gone = {"name": "msclip-tiny", "checkpoint_path": str(tmp_path / "gone.safetensors")}
    assert resolved({**gone, "init_seed": 7}) == ("msclip-tiny", None, False, 7)
    assert resolved({**gone, "init_seed": None}) == ("msclip-tiny", None, True, 0)
    assert resolved({**named, "checkpoint_path": str(own)}, model_name="x")[:2] == ("x", None)


def test_a_checkpoint_named_by_model_name_is_never_called_random(tmp_path):
    """A weight file given as --model-name (with or without the .safetensors suffix) is loaded
    whatever --no-pretrained says: its label and facts say file, and no seed is recorded."""
    import shutil

    import msclip
    from msclip.heads.runconfig import FinetuneRunConfig
    from msclip.heads.runs import default_label, load_run_model, model_facts

    demo = msclip.create_model("msclip-demo", True, precision="fp32")
    for name in ("mymodel", "mymodel.safetensors"):
        weights = tmp_path / name
        shutil.copy(demo.checkpoint_path, weights)
        cfg = FinetuneRunConfig(model_name=str(weights), pretrained=False, seed=3,
                                precision="fp32", device="cpu")  # fmt: skip
        model = load_run_model(cfg)
        assert model.init_seed is None and model.fingerprint() == demo.fingerprint()
        label = default_label(cfg, model)
        assert label == "mymodel" and "random" not in label
        assert model_facts(cfg, model, label)["weights"] == "file"
    cfg = FinetuneRunConfig(model_name="msclip-tiny", pretrained=False, seed=3, device="cpu")
    model = load_run_model(cfg)
    assert model.init_seed == 3 and default_label(cfg, model) == "msclip-tiny-random"
    assert model_facts(cfg, model, "x")["weights"] == "random"


def test_missing_release_weights_name_this_programs_flag(run, tmp_path, monkeypatch, capsys):
    """Offline without the release file, the message names --ckpt-path (this program's
    --pretrained is a switch, which takes no path)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code = main(["--folders", str(run["scenes"]), "--method", "knn", "--quiet", "--model-name",
                 "Llama3-MS-CLIP-Base", "--output-dir", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "huggingface-cli download ibm-esa-geospatial/Llama3-MS-CLIP-base" in err
    assert "(--ckpt-path /path/to/Llama3_MS_CLIP_weights.pt)" in err and "--pretrained /" not in err


def test_help_states_each_default_once(capsys):
    """Options without a default say nothing of one, and a help text that states its default is
    not followed by a second, generated one."""
    import re

    assert main(["--help"]) == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "(default: None)" not in text
    assert "(default 1e-3 linear, 1e-4 text-init) (default" not in text
    assert "--epochs EPOCHS" in text and re.search(r"epochs.*\(default: \d+\)", text)


def test_names_that_are_columns_of_predictions_csv_are_refused_first(run, tmp_path, capsys):
    """A class named like a column of predictions.csv (target, prediction, image) or a target
    column named image (or target_<another>) would replace that column: refused with the name
    and the fix, exit 2, before any method runs or writes."""
    scenes = run["scenes"]
    caps = pd.read_csv(scenes / "captions.csv")
    paths = [str(scenes / p) for p in caps["image"]]
    value = caps["label"].map({"sea": 0.0, "forest": 3.0, "desert": 1.0})
    cases = [
        ({"path": paths, "label": caps["label"].replace({"sea": "target"})}, [],
         "class name(s) ['target'] are also column names of predictions.csv"),
        ({"path": paths, "label": caps["label"].replace({"desert": "prediction"})}, [],
         "class name(s) ['prediction']"),
        ({"path": paths, "image": value}, ["--task", "regression", "--value-columns", "image"],
         "target column(s) ['image'] would replace another column of predictions.csv"),
        ({"path": paths, "a": value, "target_a": value},
         ["--task", "regression", "--value-columns", "a", "target_a"],
         "target column(s) ['a', 'target_a'] would replace"),
        ({"path": paths, "a;b": (caps["label"] == "sea").astype(int),
          "c": (caps["label"] == "forest").astype(int)},
         ["--task", "multi-label", "--label-columns", "a;b", "c"],
         "class name(s) ['a;b'] hold ';', which joins the classes of a row"),
    ]  # fmt: skip
    for i, (columns, flags, said) in enumerate(cases):
        table = tmp_path / f"t{i}.csv"
        pd.DataFrame(columns).to_csv(table, index=False)
        out = tmp_path / f"o{i}"
        method = "ridge" if "regression" in flags else "knn"
        code = main(["--csv", str(table), *flags, "--method", method, "--output-dir", str(out),
                     "--save-path", str(tmp_path / f"r{i}"), *TINY,
                     *_without(FAST, "--batch-size")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and said in err, err
        assert "rename the" in err and not out.exists()


def test_a_head_runs_in_the_precision_its_encoder_was_trained_in(monkeypatch):
    """fp32 under auto for a trained tower, a dense head or a run given --precision fp32; the
    machine's choice for a frozen image-level head, an explicit --precision and MSCLIP_PRECISION."""
    import argparse

    from msclip.cli.inference import _head_precision_args

    monkeypatch.delenv("MSCLIP_PRECISION", raising=False)

    def chosen(settings, mode="frozen", dense=False, precision="auto"):
        args = argparse.Namespace(precision=precision, quiet=True)
        _head_precision_args(args, {"settings": settings, "encoder": {"mode": mode}}, dense)
        return args.precision

    assert chosen({"precision": "auto"}, mode="lora") == "fp32"
    assert chosen({"precision": "auto"}, dense=True) == "fp32"
    # the precision line and the record say auto was asked for and why fp32 ran (not "asked for")
    args = argparse.Namespace(precision="auto", quiet=True)
    _head_precision_args(args, {"settings": {"precision": "auto"}, "encoder": {}}, True)
    assert args._precision_why == ("auto", "the head was trained on the encoder in fp32 (a dense "
                                           "head)")  # fmt: skip
    assert chosen({"precision": "fp32"}) == "fp32"
    assert chosen({"precision": "auto"}) == "auto"  # frozen: features in the machine's choice
    assert chosen({"precision": "bf16"}, mode="full") == "auto"  # trained in bf16 as asked
    assert chosen({"precision": "auto"}, mode="lora", precision="bf16") == "bf16"
    monkeypatch.setenv("MSCLIP_PRECISION", "bf16")
    assert chosen({"precision": "auto"}, mode="lora") == "auto"


def test_the_precision_used_is_printed_and_recorded_with_its_reason(tmp_path, run, capsys):
    """Like every program, msclip-finetune says on stderr which precision the encoder runs in and
    why (not with --quiet); its records and protocol card carry the reason, which names the rule
    when auto gives fp32 because the tower trains."""
    base = ["--folders", str(run["scenes"]), "--cache-dir", str(run["root"] / "cache"), *TINY,
            *_without(_without(FAST, "--batch-size"), "--val-fraction")]  # fmt: skip
    base.remove("--quiet")
    code = main([*base, "--method", "knn", "--output-dir", str(tmp_path / "o"),
                 "--save-path", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    # the suite fixes what auto picks with MSCLIP_PRECISION=fp32 (tests/conftest.py)
    assert err.count("precision: ") == 1 and "precision: fp32 on cpu (auto: " in err, err
    code = main([*base, "--method", "linear", "--encoder-mode", "last-n", "--epochs", "1",
                 "--output-dir", str(tmp_path / "t"),
                 "--save-path", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    why = ("the image tower trains (encoder mode last-n): fp32 weights, and bf16 autocast over "
           "them only on a GPU with native bf16, as msclip-train trains")  # fmt: skip
    assert code == 0 and f"precision: fp32 on cpu (auto: {why})" in err, err
    record = json.loads(next((tmp_path / "r" / "records").glob("*+linear-last1__*")).read_text())
    assert record["model"]["precision"] == "fp32" and record["model"]["precision_reason"] == why
    card = yaml.safe_load((tmp_path / "t" / "protocol.yaml").read_text())
    assert card["model"]["precision_reason"] == why
    code = main([*base, "--quiet", "--method", "knn", "--output-dir", str(tmp_path / "q"),
                 "--save-path", str(tmp_path / "r")])  # fmt: skip
    assert code == 0 and "precision: " not in capsys.readouterr().err


def test_an_environment_precision_this_program_cannot_use_is_refused(tmp_path, run, capsys,
                                                                      monkeypatch):  # fmt: skip
    """MSCLIP_PRECISION replaces what auto picks: int8 (which --precision refuses) and names that
    are no precision are refused before any work, naming the variable; it never gives the heads
    the features of a quantised tower."""
    for value, what in (("int8", "not one it uses"), ("bf61", "not a precision")):
        monkeypatch.setenv("MSCLIP_PRECISION", value)
        code = main(["--folders", str(run["scenes"]), "--method", "knn", "--output-dir",
                     str(tmp_path / "o"), *TINY, "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and f"MSCLIP_PRECISION='{value}'" in err and what in err, err
        assert "unset MSCLIP_PRECISION" in err and not (tmp_path / "o").exists()
    monkeypatch.setenv("MSCLIP_PRECISION", "int8")  # an explicit precision does not read it
    code = main(["--folders", str(run["scenes"]), "--method", "knn", "--precision", "fp32",
                 "--output-dir", str(tmp_path / "p"), "--save-path", str(tmp_path / "r"),
                 "--cache-dir", str(run["root"] / "cache"), *TINY,
                 *_without(FAST, "--batch-size")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
