"""Tests of ``msclip-scenes`` / ``python -m msclip.synthetic`` (msclip.cli.scenes)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msclip.cli import scenes

ROOT = Path(__file__).resolve().parents[2]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    argv = ["dataset", "--out", str(out), "--n-per-class", "2", "--size", "16", "--seed", "3"]
    rc = scenes.main([*argv, "--classes", "cloud", "bare_soil", "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "bare_soil", "captions.csv", "cloud", "labels.csv",
    ]  # fmt: skip
    assert len(list(out.rglob("*.tif"))) == 4
    assert "wrote 4 tiles of 2 classes" in capsys.readouterr().out
    assert scenes.main(["examples", "--out", str(tmp_path / "ex"), "--n", "3", "--size", "16"]) == 0
    assert sorted(p.name for p in (tmp_path / "ex").glob("*.tif")) == [
        "lake_01.tif", "river_01.tif", "sea_01.tif",
    ]  # fmt: skip
    assert scenes.main(["classes"]) == 0
    assert "snow and ice" in capsys.readouterr().out
    assert scenes.main([*argv, "--classes", "jungle", "--no-progress"]) == 2
    assert "unknown land-cover class 'jungle'" in capsys.readouterr().err


def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["dataset", "--out", "x", "--n-per-class", "0"],
        ["dataset"],
        ["shuffle"],
        [],
        ["dense", "--out", "x", "--splits", "0.8", "0.1", "2"],
    ):
        assert scenes.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit) as exc:  # parse_args keeps argparse's behaviour
        scenes.parse_args(["dataset", "--out", "x", "--n-per-class", "0"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert scenes.main(["--help"]) == 0
    assert "examples" in capsys.readouterr().out


def test_parser_keeps_the_original_subcommands_and_flags() -> None:
    args = scenes.parse_args(["examples", "--out", "o"])
    assert (args.command, args.n, args.size, args.seed) == ("examples", 16, 128, 0)
    args = scenes.parse_args(["dataset", "--out", "o", "--classes", "sea", "lake"])
    assert (args.n_per_class, args.size, args.layout, args.progress) == (100, 64, "folders", True)
    assert args.classes == ["sea", "lake"] and args.seed == 0
    assert scenes.parse_args(["classes"]).command == "classes"
    args = scenes.parse_args(["dense", "--out", "o", "--splits", "0.6", "0.2", "0.2"])
    assert (args.n_per_class, args.size, args.splits) == (20, 64, [0.6, 0.2, 0.2])
    args = scenes.parse_args(["scene", "--out", "o"])
    assert (args.size, args.region_size, args.seed, args.name) == (1024, 128, 0, "scene")


def test_dense_and_scene_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["dense", "--out", str(tmp_path / "d"), "--n-per-class", "5", "--size", "16",
            "--classes", "forest", "sea", "--splits", "0.6", "0.2", "0.2",
            "--no-progress"]  # fmt: skip
    assert scenes.main(argv) == 0
    assert "wrote 10 images with labels and targets (6 train, 2 val, 2 test)" in (
        capsys.readouterr().out
    )
    with open(tmp_path / "d" / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and all((tmp_path / "d" / r["target"]).is_file() for r in rows)
    argv = ["scene", "--out", str(tmp_path / "s"), "--size", "96", "--region-size", "32"]
    assert scenes.main(argv) == 0
    assert "wrote 1 image with its label and target (1 test)" in capsys.readouterr().out
    written = sorted(
        p.relative_to(tmp_path / "s").as_posix() for p in (tmp_path / "s").rglob("*.*")
    )
    assert written == [
        "classes.csv", "images/scene.tif", "index.csv", "labels/scene.tif", "targets/scene.tif",
    ]  # fmt: skip
    assert scenes.main(["scene", "--out", str(tmp_path / "t"), "--size", "5000"]) == 2
    assert "exceeds 4096" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch: about 10 s on 2 busy cores
def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, "-m", "msclip.synthetic", "examples", "--out", str(tmp_path),
         "--n", "2", "--size", "16", "--seed", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "wrote 2 example tiles" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "captions.csv",
        "lake_01.tif",
        "sea_01.tif",
    ]


def test_console_script_is_declared() -> None:
    import importlib
    import re

    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'^msclip-scenes = "([\w.]+):(\w+)"$', text, flags=re.M)
    assert found, "pyproject.toml declares no msclip-scenes console script"
    module, func = found.groups()
    target = getattr(importlib.import_module(module), func)
    # msclip.cli.entry wraps main (it leaves without the interpreter's teardown)
    assert target is scenes.main or (module, func) == ("msclip.cli.entry", "scenes")


def test_an_output_that_cannot_be_a_folder_is_refused_before_generating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from msclip.synthetic import dense

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("generated before the output was checked")

    monkeypatch.setattr(dense, "generate_scene", never)
    monkeypatch.setattr(dense, "iter_samples", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").write_text("")  # a file where the scene's folder goes
    for argv, path in (
        (["scene", "--size", "4096", "--out", str(blocker)], blocker),
        (["scene", "--size", "4096", "--out", str(root)], root / "images"),
        (["dense", "--n-per-class", "1", "--out", str(root)], root / "images"),
        (["dataset", "--n-per-class", "1", "--out", str(blocker / "sub")], blocker),
        (["examples", "--n", "1", "--out", str(blocker)], blocker),
    ):
        assert scenes.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: cannot write {path}" in err, (argv, err)
        assert "--out" in err, err
    assert blocker.read_text() == "" and (root / "images").is_file()


def test_a_flag_the_subcommand_does_not_know_points_to_its_own_help(tmp_path, capsys):
    """msclip-scenes and msclip-index: an unknown flag after a subcommand is refused with that
    subcommand's usage and help, not the program's."""
    from msclip.cli import index

    code = scenes.main(["scene", "--out", str(tmp_path / "s"), "--no-such-flag"])
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized arguments: --no-such-flag" in err
    assert "msclip-scenes scene --help" in err and not (tmp_path / "s").exists()
    code = index.main(["info", str(tmp_path / "x.index"), "--bogus"])
    err = capsys.readouterr().err
    assert code == 2 and "usage: msclip-index info" in err
    assert "unrecognized arguments: --bogus" in err
