"""Configuration of msclip.train: types, validation and the combinations of options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.train_tiles import pairs_table

from msclip.cli.train import config_from_args
from msclip.train.config import ConfigError, TrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_unknown_and_ill_typed_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'bach_size'; did you mean 'batch_size'"):
        TrainConfig.from_dict({"bach_size": 3})
    with pytest.raises(ConfigError, match="'epochs': expected an integer, got 'many'"):
        TrainConfig.from_dict({"epochs": "many"})
    with pytest.raises(ConfigError, match="'crop_scale': expected 2 values"):
        TrainConfig.from_dict({"crop_scale": [0.5]})
    with pytest.raises(ConfigError, match="expected true/false"):
        TrainConfig.from_dict({"augment": "maybe"})
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        config_from_args(["--config", str(bad_yaml)])


def test_an_option_given_twice_is_refused(tmp_path: Path) -> None:
    # PyYAML alone keeps the last value of a repeated key without a word
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 1.0e-4\nbatch_size: 8\nlr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice \(first on line 1\)") as info:
        config_from_args(["--config", str(twice)])
    assert 'twice.yaml", line 3' in str(info.value)
    spellings = tmp_path / "spellings.yaml"
    spellings.write_text("batch_size: 8\nbatch-size: 16\n")
    with pytest.raises(ConfigError, match="'batch_size' is given twice"):
        config_from_args(["--config", str(spellings)])
    # a merge key is an intended override, not a repeat
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    from msclip.options import parse_yaml

    assert parse_yaml(merged.read_text())["other"] == {"x": 3, "y": 2}


def test_validation_reports_every_problem(tmp_path: Path) -> None:
    cfg = TrainConfig(
        train_data=str(tmp_path / "nope.csv"),
        model="msclip-tiny",
        lr=-1.0,
        loss="triplet",
        batch_size=1,
        hflip=2.0,
        trainable="head",
        init="no-such-model",
        zeroshot_templates="no-such-template-set",
        bands=["B02", "B99"],
    )
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    msg = str(info.value)
    for part in (
        "train_data file",
        "nope.csv",
        "lr must be > 0",
        "loss must be one of",
        "batch_size must be >= 2",
        "hflip is a probability",
        "trainable must be one of",
        "init must be 'random'",
        "zeroshot_templates",
        "B99",
    ):
        assert part in msg, part


def test_type_and_value_problems_of_one_config_are_reported_together(tmp_path: Path) -> None:
    table = pairs_table(tmp_path)
    run = tmp_path / "run.yaml"
    run.write_text(f'train_data: {table}\nmodel: msclip-tiny\nepochs: "two"\nlr: -1\n')
    with pytest.raises(ConfigError) as info:
        config_from_args(["--config", str(run), "--batch-size", "x", "--hflip", "2"])
    lines = str(info.value).splitlines()[1:]
    assert [line.strip() for line in lines] == [
        f"{run}: option 'epochs': expected an integer, got 'two'",
        "command line: option 'batch_size': expected an integer, got 'x'",
        "hflip is a probability in [0, 1], got 2.0",
        "lr must be > 0, got -1.0",
    ]


def test_model_and_init_combinations(tmp_path: Path) -> None:
    table = pairs_table(tmp_path)
    TrainConfig(train_data=table, model="msclip-tiny").validate()
    with pytest.raises(ConfigError, match="needs model"):
        TrainConfig(train_data=table).validate()
    with pytest.raises(ConfigError, match="not registered"):
        TrainConfig(train_data=table, model="ViT-Z-99").validate()
    with pytest.raises(ConfigError, match=r"init checkpoint .* not found"):
        TrainConfig(train_data=table, init=str(tmp_path / "x.safetensors")).validate()
    with pytest.raises(ConfigError, match="resume checkpoint"):
        TrainConfig(train_data=table, model="msclip-tiny", resume="gone.pt").validate()
    TrainConfig(train_data=table, model="msclip-tiny", init="msclip-tiny-rgb").validate()
