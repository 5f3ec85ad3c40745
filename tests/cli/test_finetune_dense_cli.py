"""``msclip-finetune`` on dense tasks and ``msclip-finetune grid`` from the command line, and
``msclip-inference --run-scene --head`` with the dense head they write."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import rasterio
import torch
from support.scenes import damage_block, write_tiled_scene

from msclip.cli.finetune import main
from msclip.cli.inference import main as inference_main
from msclip.synthetic import generate_dense_dataset, write_scene

TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--seed", "0"]
FAST = ["--epochs", "1", "--batch-size", "2", "--crop-size", "16", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dense_cli")
    generate_dense_dataset(root / "d", classes=["sea", "forest", "desert"], n_per_class=4,
                           size=16, seed=0, splits=(0.5, 0.25, 0.25))  # fmt: skip
    write_scene(root / "scene", size=40, seed=2, region_size=16)
    return root


def test_segmentation_cli_then_scene_prediction_with_the_head(data, tmp_path, capsys):
    argv = ["--task", "segmentation", "--csv", str(data / "d" / "index.csv"), "--decoder",
            "upernet", "--decoder-channels", "8", "--class-weights", "auto", "--output-dir",
            str(tmp_path / "run"), "--save-path", str(tmp_path / "res"), *TINY, *FAST]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "segmentation: segmentation, 14 classes; images train 6, val 3, test 3" in out
    assert "mIoU micro" in out and "upernet-frozen" in out
    head = tmp_path / "run" / "upernet-frozen" / "dense_head.safetensors"
    assert head.is_file() and (tmp_path / "run" / "protocol.yaml").is_file()
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert summary["model"].tolist() == ["msclip-tiny-random+upernet-frozen"]
    assert main(argv) == 2  # an existing run is not overwritten without --resume
    assert "--resume" in capsys.readouterr().err

    scene = data / "scene" / "images" / "scene.tif"
    code = inference_main(["--run-scene", "--scene", str(scene), "--head", str(head),
                           "--save-path", str(tmp_path / "map"), *TINY, "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "segmentation head upernet-frozen" in out
    with rasterio.open(tmp_path / "map" / "dense_segmentation.tif") as o, rasterio.open(scene) as s:
        assert o.crs == s.crs and o.transform == s.transform and o.shape == s.shape
        assert o.count == 2 and (o.read(1) < 14).all()
        # tiles of the head's training crops (16 px), the windows its test score was measured
        # in, not of the model's input size (32 px)
        assert o.tags()["msclip_tile_size"] == "16" and o.tags()["msclip_overlap"] == "4"
        pixels, names = s.read(), s.descriptions
    # a damaged block: its tiles are left out and named, the rest of the map is written
    damaged = write_tiled_scene(tmp_path / "damaged.tif", pixels)
    with rasterio.open(damaged, "r+") as dst:
        dst.descriptions = names
    damage_block(damaged, 2, 2)  # rows and columns 32-39: in the last of the 4 tiles of 32 px
    for flags, rc in (([], 1), (["--skip-bad"], 0)):
        code = inference_main(["--run-scene", "--scene", str(damaged), "--head", str(head),
                               "--save-path", str(tmp_path / "hole"), *TINY, "--quiet",
                               "--tile-size", "32", *flags])  # fmt: skip
        err = capsys.readouterr().err
        assert code == rc and "1 of 4 tiles of" in err and "could not be read" in err, err
        assert "rows 8-40, columns 8-40 (damaged.tif, band 1: IReadBlock failed" in err
        with rasterio.open(tmp_path / "hole" / "dense_segmentation.tif") as o:
            cls = o.read(1)
        # what only that tile covers is nodata (rows and columns 32-40; the tiles above and to
        # the left cover the rest of it), the rest is the other tiles' prediction
        assert (cls[32:, 32:] == 255).all() and (cls[:, :32] < 14).all() and (cls[:32] < 14).all()
    code = inference_main(["--run-scene", "--scene", str(scene), "--head", str(head),
                           "--save-path", str(tmp_path / "other"), "--model-name",
                           "msclip-tiny", "--no-pretrained", "--seed", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "was trained on encoder" in err and "--head" in err
    assert not (tmp_path / "other" / "dense_segmentation.tif").exists()
    # a dense head where an image-level one is expected: the fitting mode named
    code = inference_main(["--run-classification", "--images", str(scene), "--head", str(head),
                           "--save-path", str(tmp_path / "cls"), *TINY, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "is a dense (per-pixel) head" in err and "--run-scene" in err


def test_pixel_regression_from_yaml_and_misaligned_pairs(data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"task: pixel-regression\ncsv: {data / 'd' / 'index.csv'}\ndecoder: fcn\n"
                      f"decoder_channels: 8\nloss: l1\noutput_dir: {tmp_path / 'run'}\n"
                      f"save_path: {tmp_path / 'res'}\n")  # fmt: skip
    assert main(["--config", str(config), *TINY, *FAST]) == 0
    out = capsys.readouterr().out
    assert "RMSE" in out and "fcn-frozen" in out
    rec = pd.read_csv(tmp_path / "res" / "summary_long.csv")
    assert {"rmse", "mae", "r2"} <= set(rec["metric"]) and rec["task"].eq("pixel_regression").all()
    # a label raster on another grid: exit 2, both files named, nothing written
    table = pd.read_csv(data / "d" / "index.csv")
    table.loc[0, "target"] = str(data / "scene" / "targets" / "scene.tif")
    table.to_csv(tmp_path / "bad.csv", index=False)
    code = main(["--task", "pixel-regression", "--csv", str(tmp_path / "bad.csv"),
                 "--data-root", str(data / "d"), "--output-dir", str(tmp_path / "bad"), *TINY,
                 *FAST])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "scene.tif is not on the grid of image" in err
    assert table.loc[0, "image"] in err and not (tmp_path / "bad").exists()


def test_grid_command_writes_the_table(data, tmp_path, capsys):
    argv = ["grid", "--decoders", "linear,fcn", "--encoder-modes", "frozen", "--no-zero-shot",
            "--task", "segmentation", "--csv", str(data / "d" / "index.csv"),
            "--decoder-channels", "8", "--output-dir", str(tmp_path / "grid"), "--save-path",
            str(tmp_path / "res"), *TINY, *FAST]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| decoder | frozen |" in out and "| fcn |" in out and "ran 2, skipped 0" in out
    df = pd.read_csv(tmp_path / "grid" / "comparison.csv")
    assert df["run"].tolist() == ["linear-frozen", "fcn-frozen"]
    # each combination is a run with <grid>/<decoder>-<mode> as its output folder, laid out as
    # docs/heads.md shows it
    run = tmp_path / "grid" / "fcn-frozen"
    assert (run / "protocol.yaml").is_file()
    assert (run / "fcn-frozen" / "dense_head.safetensors").is_file()
    docs = (Path(__file__).parents[2] / "docs" / "heads.md").read_text(encoding="utf-8")
    assert "fcn-frozen/protocol.yaml" in docs
    assert "fcn-frozen/fcn-frozen/dense_head.safetensors" in docs
    assert main(argv) == 0 and "ran 0, skipped 2" in capsys.readouterr().out
    assert main(["grid", "--decoders", "unet", *argv[3:]]) == 2
    assert "--decoders" in capsys.readouterr().err


def test_pixel_regression_of_tiny_scale_prints_significant_digits(data, tmp_path, capsys):
    """Targets of small scale (--scale 1e-6): the printed summary and report.md give RMSE, MAE,
    bias and target mean with six significant digits, not four decimals that read 0.0000; R2
    keeps four decimals and the CSVs full precision."""
    argv = ["--task", "pixel-regression", "--csv", str(data / "d" / "index.csv"), "--decoder",
            "fcn", "--decoder-channels", "8", "--scale", "1e-6", "--lr", "2e-5", "--output-dir",
            str(tmp_path / "run"), "--save-path", str(tmp_path / "res"), *TINY, *FAST]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    long = pd.read_csv(tmp_path / "res" / "summary_long.csv").set_index("metric")["value"]
    row = next(line.split() for line in out.splitlines() if line.startswith("fcn-frozen"))
    assert row[1:4] == [f"{long['rmse']:.6g}", f"{long['mae']:.6g}", f"{long['r2']:.4f}"]
    report = (tmp_path / "res" / "report.md").read_text()
    assert f"| rmse | {long['rmse']:.6g} |" in report and f"| r2 | {long['r2']:.4f} |" in report
    per_class = pd.read_csv(next((tmp_path / "res" / "per_class").glob("*.csv")))
    mean = per_class["target_mean"].iloc[0]
    assert 0 < abs(mean) < 1e-4  # the targets' scale
    assert f"| {mean:.6g} |" in report and "0.0000 |" not in report
    assert "lr 2e-05, weight_decay 0," in report  # the settings as given, not lr 0.0000
