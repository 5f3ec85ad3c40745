"""Command-line output on poor input: quiet means quiet, every skipped input is named, a refusal
says its path and fix once, exit statuses say what happened (see msclip.cli.common)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

import msclip
from msclip.cli.inference import main

TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--batch-size", "4"]
QUIET = [*TINY, "--quiet"]
CLASSES = ["--class-names", "forest", "sea", "--templates", "short"]


def _tile(path: Path, data: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tf = Affine(10, 0, 5e5, 0, -10, 5e6)
    msclip.write_geotiff(path, data, crs=CRS.from_epsg(32632), transform=tf, **kw)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two readable 10-band tiles of 40x40 px (uint16)."""
    rng = np.random.default_rng(0)
    for i in range(2):
        _tile(
            tmp_path / "tiles" / f"t{i}.tif", rng.integers(1, 6000, (10, 40, 40)).astype("uint16")
        )
    return tmp_path / "tiles"


def test_quiet_drops_the_status_lines_but_keeps_the_summary(folder, tmp_path, capsys):
    argv = ["--run-classification", "--images", str(folder), *CLASSES,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main([*argv, *TINY]) == 0
    err = capsys.readouterr().err
    assert "precision: " in err and "loading msclip-tiny" in err
    assert main([*argv, *QUIET]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "2 images classified into 2 classes" in out


def test_a_large_image_is_refused_before_the_model_path_and_fix_once(tmp_path, capsys, monkeypatch):
    scene = _tile(tmp_path / "large" / "scene.tif", np.ones((10, 300, 300), np.uint16))

    def no_model(*a, **k):
        raise AssertionError("the model must not be built")

    argv = ["--run-classification", "--images", str(scene), *CLASSES, *QUIET,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr("msclip.factory.create_model", no_model)
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count(str(scene)) == 1 and err.count("--downsample") == 1
    assert "300x300 pixels" in err and "--run-scene" in err and "scene mode" not in err
    assert len(err.strip().splitlines()) == 1
    # found only once the model is loaded (the pre-check cannot know a checkpoint file's input
    # size): the same single statement
    monkeypatch.setattr("msclip.cli.common._input_size", lambda args: None)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count(str(scene)) == 1 and err.count("--downsample") == 1
    assert "scene mode" not in err


def test_the_early_check_reads_a_tiffs_header_without_gdal(tmp_path, capsys, monkeypatch):
    """A GeoTIFF's size comes from its header alone (no GDAL dataset: ~30 us against ~1 ms a
    file); a raster that is not a TIFF is still opened with GDAL."""
    scene = _tile(tmp_path / "large" / "scene.tif", np.ones((10, 300, 300), np.uint16))
    band = _tile(tmp_path / "large" / "B04.tif", np.ones((1, 300, 300), np.uint16))
    vrt = tmp_path / "large" / "scene.vrt"  # a virtual raster of a band file: GDAL says
    msclip.io.stack_band_files([str(band)], vrt)
    opened = []
    real = msclip.io.readers.open_raster

    def counting(path):
        opened.append(str(path))
        return real(path)

    monkeypatch.setattr("msclip.io.readers.open_raster", counting)
    monkeypatch.setattr("msclip.factory.create_model", lambda *a, **k: 1 / 0)  # never reached
    argv = ["--run-classification", "--images", str(scene), *CLASSES, *QUIET,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 2
    assert "300x300 pixels" in capsys.readouterr().err and opened == []
    assert main([*argv[:2], str(vrt), *argv[3:]]) == 2
    assert "300x300 pixels" in capsys.readouterr().err and opened == [str(vrt)]


def test_a_large_image_past_the_header_check_is_refused_when_read(tmp_path, capsys, monkeypatch):
    """Only the first EARLY_CHECK_FILES files are judged from their headers before the model
    (an archive is not opened twice); a later one is refused when it is read, with the same
    single statement, and no output is written."""
    folder = tmp_path / "mixed"
    data = np.random.default_rng(0).integers(1, 3000, (10, 32, 32)).astype(np.uint16)
    _tile(folder / "a.tif", data)
    scene = _tile(folder / "b_scene.tif", np.ones((10, 300, 300), np.uint16))
    built = []
    real = msclip.factory.create_model

    def counting(*a, **k):
        built.append(1)
        return real(*a, **k)

    monkeypatch.setattr("msclip.cli.common.EARLY_CHECK_FILES", 1)
    monkeypatch.setattr("msclip.factory.create_model", counting)
    for mode in (["--run-classification", *CLASSES], ["--run-retrieval", "--query", "a lake"]):
        out = tmp_path / "out.csv"
        assert main([*mode, "--images", str(folder), *QUIET, "--save-path", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count(str(scene)) == 1 and err.count("--downsample") == 1
        assert "300x300 pixels" in err and "--run-scene" in err and "scene mode" not in err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert len(built) == 2  # refused after the model was built: by the reader


def test_strict_bands_on_an_8_bit_picture_does_not_point_at_bands(tmp_path, capsys):
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    rgb = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(pics / "a.png")
    argv = ["--run-classification", "--images", str(pics), *CLASSES, *QUIET, "--strict-bands",
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "8-bit input" in err and "refused by --strict-bands" in err
    assert "--bands" not in err.replace("--strict-bands", "")
    # 16-bit reflectance missing most bands: misnamed bands are a possible cause, --bands named
    _tile(tmp_path / "few" / "f.tif", np.full((3, 40, 40), 900, np.uint16),
          bands=["B02", "B03", "B04"])  # fmt: skip
    argv[2] = str(tmp_path / "few")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lack 7 of the model's 10 bands" in err and "name them with --bands" in err
    assert "(command-line option: --bands)" not in err


def test_skipped_images_are_named_first_few_or_all_with_verbose(folder, tmp_path, capsys):
    for i in range(7):
        _tile(folder / f"z{i}.tif", np.zeros((10, 40, 40), np.uint16), nodata=0)
    argv = ["--run-classification", "--images", str(folder), *CLASSES, *QUIET,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(note) == 1 and note[0].startswith("note: 7 of 9 images skipped: fewer than 50%")
    assert all(f"z{i}.tif" in note[0] for i in range(5)) and "z5.tif" not in note[0]
    assert "and 2 more (all with -v)" in note[0]
    assert main([*argv, "-v"]) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert all(f"z{i}.tif" in note[0] for i in range(7)) and "more" not in note[0]


def test_no_usable_image_is_not_success(tmp_path, capsys):
    empty = tmp_path / "empty"
    _tile(empty / "z.tif", np.zeros((10, 40, 40), np.uint16), nodata=0)
    (empty / "broken.tif").write_bytes(b"not a tiff")
    out = tmp_path / "c.csv"
    argv = ["--run-classification", "--images", str(empty), *CLASSES, *QUIET,
            "--save-path", str(out), "--skip-bad"]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: no image could be classified: of 2 images, 1 skipped with fewer than 50% valid "
        "pixels (--min-valid) and 1 unreadable"
    ]
    assert "Class" not in captured.out  # no empty table
    assert len(__import__("pandas").read_csv(out)) == 2  # both inputs listed with their status
    argv[0] = "--run-retrieval"
    argv[argv.index("--class-names") : argv.index("--templates") + 2] = ["--query", "a lake"]
    assert main(argv) == 1
    assert "error: no image could be ranked" in capsys.readouterr().err


def test_dense_with_a_query_is_refused_not_ignored(tmp_path, capsys):
    scene = _tile(tmp_path / "s.tif", np.ones((10, 64, 64), np.uint16))
    code = main(["--run-scene", "--scene", str(scene), "--dense", *CLASSES, *QUIET,
                 "--query", "a river", "--save-path", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--dense" in err and "--query" in err
    assert not (tmp_path / "out").exists()


def test_band_warning_counts_skipped_images_whose_bands_were_read(tmp_path, capsys):
    rng = np.random.default_rng(4)
    for i in range(3):  # 12-band L2A: B01 lies outside the 10-band model's range
        _tile(tmp_path / "l2a" / f"{i}.tif", rng.integers(1, 6000, (12, 40, 40)).astype("uint16"))
    _tile(tmp_path / "l2a" / "z.tif", np.zeros((12, 40, 40), np.uint16), nodata=0)  # skipped
    argv = ["--run-classification", "--images", str(tmp_path / "l2a"), *CLASSES, *TINY,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "spectral range" in x]
    assert len(lines) == 1 and lines[0].endswith("(4 of 4 images)")


def test_a_query_cut_at_the_context_length_is_named_under_quiet(folder, tmp_path, capsys):
    """A query (or prompt) longer than the text tower's 77 tokens is cut there: its results may
    be wrong, so the warning naming it is shown under --quiet too, once, in the singular."""
    long = " ".join(["forest"] * 90)
    argv = ["--run-retrieval", "--images", str(folder), "--query", long, "--query", "sea",
            *QUIET, "--save-path", str(tmp_path / "r.csv")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("warning: 1 text is longer than the text tower's 77 tokens and was cut") == 1
    assert "'forest forest" in err and "; shorten it" in err and "'sea'" not in err
    argv = ["--run-classification", "--images", str(folder), "--class-names", long, "sea",
            "--templates", "short", *QUIET, "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 0
    assert "longer than the text tower's 77 tokens and were cut" in capsys.readouterr().err
