"""``msclip-train``: defaults < YAML < flags, failures before any work, --print-config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from support.train_tiles import pairs_table

from msclip.cli.train import config_from_args, main
from msclip.train.config import TrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_defaults_yaml_and_flags_in_that_order(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        "train-data: t.csv\nbatch_size: 64\nlr: 1.0e-4\naugment: false\n"
        "crop_scale: [0.3, 0.9]\ncaption-columns: [caption, caption_2]\n"
    )
    cfg, show = config_from_args(
        [
            "--config",
            str(cfg_file),
            "--batch-size",
            "16",
            "--augment",
            "--trainable-patterns",
            "visual.*",
            "ln_final.*",
            "--grad-clip-norm",
            "none",
            "--betas",
            "0.8",
            "0.9",
        ]
    )
    assert not show
    assert cfg.train_data == "t.csv"  # YAML, kebab-case key
    assert cfg.batch_size == 16  # flag beats YAML
    assert cfg.lr == 1e-4 and cfg.augment is True
    assert cfg.crop_scale == (0.3, 0.9) and cfg.betas == (0.8, 0.9)
    assert cfg.caption_columns == ["caption", "caption_2"]
    assert cfg.trainable_patterns == ["visual.*", "ln_final.*"]
    assert cfg.grad_clip_norm is None
    assert cfg.epochs == TrainConfig().epochs  # default
    # The config survives a YAML round trip (what the run writes to config.yaml).
    again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


def test_cli_bad_value_fails_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "--train-data",
            pairs_table(tmp_path),
            "--model",
            "msclip-tiny",
            "--epochs",
            "0",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert not out.exists()
    assert main(["--batch-size", "lots"]) == 2
    assert "expected an integer, got 'lots'" in capsys.readouterr().err


def test_cli_missing_published_weights_are_a_usage_error(tmp_path: Path, capsys, monkeypatch):
    from support.train_tiles import write_class_tif

    # offline without the weights: status 2 (as in every msclip program), naming the file and
    # --init, before any step
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rows = ["image,caption"]
    for i in range(8):
        write_class_tif(tmp_path / f"{i}.tif", i % 2, i)
        rows.append(f"{tmp_path / f'{i}.tif'},class {i % 2}")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    code = main(["--train-data", str(pairs), "--val-data", str(pairs), "--model",
                 "Llama3-MS-CLIP-Base", "--init", "pretrained", "--batch-size", "4",
                 "--no-progress", "--output-dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Llama3_MS_CLIP_weights.pt" in err and "(--init /path/to/" in err
    assert not (out / "checkpoints").exists()


def test_cli_a_table_too_small_to_split_is_a_usage_error(tmp_path: Path, capsys) -> None:
    from support.train_tiles import write_class_tif

    rows = ["image,caption"]
    for i in range(2):
        write_class_tif(tmp_path / f"{i}.tif", i, i)
        rows.append(f"{tmp_path / f'{i}.tif'},class {i}")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    code = main(["--train-data", str(pairs), "--model", "msclip-tiny", "--no-progress",
                 "--output-dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "2 usable pairs cannot be split with --val-fraction 0.1" in err
    assert not (out / "checkpoints").exists()


def test_cli_print_config(tmp_path: Path, capsys) -> None:
    assert main(["--model", "msclip-tiny", "--loss", "siglip", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == "msclip-tiny" and printed["loss"] == "siglip"
    assert set(printed) == set(TrainConfig().to_dict())


# Python 3.12's note on forking a process with threads (DataLoader workers): pytest shows
# DeprecationWarnings, which Python's own filters hide from the program's users
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_cli_output_one_precision_line_and_plain_warnings(tmp_path: Path, capsys) -> None:
    from support.train_tiles import write_class_tif

    rows = ["image,caption"]
    for i in range(8):
        write_class_tif(tmp_path / f"{i}.tif", i % 2, i)  # 12-band L2A: B01 is out of range
        rows.append(f"{tmp_path / f'{i}.tif'},class {i % 2}")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    code = main(["--train-data", str(pairs), "--val-data", str(pairs), "--model", "msclip-tiny",
                 "--init", "random", "--epochs", "2", "--batch-size", "4", "--no-progress",
                 "--num-workers", "1", "--output-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    precision = [line for line in err.splitlines() if "precision:" in line]
    assert len(precision) == 1 and "precision: fp32 on cpu (auto: " in precision[0]
    assert "runs in fp32" not in err and "1 process;" in err
    warned = [line for line in err.splitlines() if "spectral range" in line]
    assert all(line.startswith("warning: input bands ['B01']") for line in warned)
    # once per run, not per image, epoch, validation pass or worker: one line for the training
    # batches, one with its count for the validation data
    assert len(warned) == 2 and warned[1].endswith("(8 of 8 images)"), warned
    assert ".py:" not in err and "py.warnings" not in err
    # resuming the finished run with fewer steps: refused, naming the flag, nothing rewritten
    final = (tmp_path / "run" / "final.safetensors").read_bytes()
    code = main(["--train-data", str(pairs), "--val-data", str(pairs), "--model", "msclip-tiny",
                 "--init", "random", "--epochs", "2", "--batch-size", "4", "--no-progress",
                 "--output-dir", str(tmp_path / "run"), "--resume", "latest",
                 "--max-steps", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is at step 4, past the 1 step this run is given" in err and "--max-steps" in err
    assert (tmp_path / "run" / "final.safetensors").read_bytes() == final
    # resuming it as it is: nothing left to train, the loss and the validation of its last step
    code = main(["--train-data", str(pairs), "--val-data", str(pairs), "--model", "msclip-tiny",
                 "--init", "random", "--epochs", "2", "--batch-size", "4", "--no-progress",
                 "--output-dir", str(tmp_path / "run"), "--resume", "latest"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "nothing is left to train" in captured.err
    assert "validation at step" not in captured.err  # validated before it stopped
    assert "final loss nan" not in captured.out and "final loss " in captured.out


def test_a_config_file_that_is_not_utf8_or_a_folder_is_one_error_line(tmp_path: Path, capsys):
    from msclip.cli.finetune import main as finetune_main

    latin1 = tmp_path / "run.yaml"
    latin1.write_bytes("model: msclip-tiny\ncaption-columns: [légende]\n".encode("latin-1"))
    for program in (main, finetune_main):
        assert program(["--config", str(latin1), "--print-config"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: config file '{latin1}' is not UTF-8 text (")
        assert "save it as UTF-8" in err and "Traceback" not in err
        assert program(["--config", str(tmp_path), "--print-config"]) == 2
        assert "is a folder, not a file: give a YAML file" in capsys.readouterr().err
    utf8 = tmp_path / "bom.yaml"
    utf8.write_bytes("\ufeffcaption-columns: [légende]\n".encode())
    assert main(["--config", str(utf8), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["caption_columns"] == ["légende"]


def test_bands_is_the_models_and_its_help_names_the_flag_of_the_files_bands(capsys) -> None:
    """--bands names the files' bands in every other msclip program and the trained model's
    bands here; its help said only "model bands", so a --bands copied from an msclip-inference
    command trained a model of those bands without a word about --input-bands."""
    cfg, _ = config_from_args(["--train-data", "t.csv", "--bands", "B02,B03", "--input-bands",
                               "B04", "B08"])  # fmt: skip
    assert cfg.bands == ["B02", "B03"] and cfg.input_bands == ["B04", "B08"]
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    help_of_bands = text.split("--bands V [V ...] ", 1)[1].split(" --init INIT ", 1)[0]
    assert "model trained" in help_of_bands and "--input-bands" in help_of_bands
