"""The shipped msclip-demo model: loads offline and classifies generated scenes zero-shot."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch

import msclip
from msclip.pretrained import MODELS, WEIGHTS_DIR
from msclip.synthetic import CLASSES, generate_dataset
from msclip.synthetic.demo import USER_CLASS_NAMES, prepare_data, zero_shot_accuracy
from msclip.zero_shot import load_templates


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    generate_dataset(root, n_per_class=3, size=64, seed=4242)  # a seed no shipped file uses
    return root


def test_demo_weights_are_shipped_small_and_self_describing():
    path = WEIGHTS_DIR / MODELS["msclip-demo"].package_file
    assert path.is_file() and path.stat().st_size <= 20 * 2**20
    model = msclip.create_model("msclip-demo", pretrained=True)
    assert model.bands == msclip.spectral.S2_L2A_BANDS
    assert model.checkpoint_sha256 == msclip.pretrained.file_sha256(path)


def test_demo_beats_chance_and_random_weights_do_not(heldout):
    templates = load_templates()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo_acc, _ = zero_shot_accuracy(
            msclip.create_model("msclip-demo", pretrained=True), heldout, templates
        )
        torch.manual_seed(0)
        random_acc, _ = zero_shot_accuracy(msclip.create_model("msclip-demo"), heldout, templates)
    chance = 1 / len(CLASSES)
    assert demo_acc >= 0.6, f"demo model accuracy {demo_acc:.2f} (chance {chance:.2f})"
    assert random_acc < 0.3, f"random weights scored {random_acc:.2f}"


def test_demo_training_table_adds_template_captions(tmp_path):
    table = prepare_data(tmp_path / "data", n_per_class=1, size=16, seed=3)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CLASSES)
    assert {"caption", "caption_2", "caption_3", "caption_4", "caption_6"} <= set(rows[0])
    assert all(row["caption_4"].strip() for row in rows)
    assert set(USER_CLASS_NAMES) == set(CLASSES)


def test_the_demo_recipe_installs_only_when_asked(tmp_path, monkeypatch, capsys):
    import msclip.cli.train
    import msclip.synthetic.demo as demo
    from msclip.cli.demo import main

    shipped = tmp_path / "weights"
    shipped.mkdir()
    (shipped / "msclip-demo.safetensors").write_bytes(b"shipped")
    monkeypatch.setattr(demo, "WEIGHTS", shipped)

    def fake_train(argv):  # the recipe's training, replaced by its outputs
        run = tmp_path / "out" / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / "final.safetensors").write_bytes(b"trained")
        return 0

    monkeypatch.setattr(msclip.cli.train, "main", fake_train)
    args = ["--out", str(tmp_path / "out"), "--n-per-class", "10", "--size", "8", "--epochs", "1"]
    assert main(args) == 0  # a trial run: the shipped model is left as it is
    assert (shipped / "msclip-demo.safetensors").read_bytes() == b"shipped"
    assert (tmp_path / "out" / "msclip-demo.json").is_file()
    assert "re-run with --install" in capsys.readouterr().out
    assert main([*args, "--install"]) == 0
    assert (shipped / "msclip-demo.safetensors").read_bytes() == b"trained"
    assert (shipped / "msclip-demo.json").is_file()


def test_the_demo_recipe_refuses_too_few_tiles_for_its_batch_before_generating(tmp_path, capsys):
    """Nine tiles per class gave 120 training pairs, fewer than the recipe's batch of 128: the
    run generated its data and then failed naming --batch-size, a flag the recipe does not have."""
    from msclip.cli.demo import main

    assert main(["--out", str(tmp_path / "out"), "--n-per-class", "9"]) == 2
    err = capsys.readouterr().err
    assert "--n-per-class 9 gives too few training pairs" in err
    assert "use --n-per-class 10 or more" in err
    assert not (tmp_path / "out").exists()
