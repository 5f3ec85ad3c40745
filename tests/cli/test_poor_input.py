"""Honest answers on poor input: no confident nonsense, no lost work, quiet and quick programs.

Every case builds its own input. The model is msclip-tiny (10 bands, 32 px input, 8 px patches)
with random weights, unless a case needs another.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

import msclip
from msclip.cli.evaluation import main as evaluation_main
from msclip.cli.index import main as index_main
from msclip.cli.inference import main
from msclip.errors import BandError, GenericBandNamesWarning

TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--batch-size", "4"]
QUIET = [*TINY, "--quiet"]
CLASSES = ["--class-names", "forest", "sea", "--templates", "short"]
UTM = CRS.from_epsg(32632)


def _tile(path: Path, data: np.ndarray, **kw) -> Path:
    msclip.write_geotiff(path, data, crs=UTM, transform=Affine(10, 0, 5e5, 0, -10, 5e6), **kw)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Four readable 10-band tiles of 40x40 px (uint16)."""
    out = tmp_path / "tiles"
    out.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        _tile(out / f"t{i}.tif", rng.integers(1, 6000, (10, 40, 40)).astype("uint16"))
    return out


# -- 1. outputs are checked before any work -------------------------------------------------------
def test_an_output_that_cannot_be_written_stops_the_run_first(
    folder, tmp_path, capsys, monkeypatch
):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("msclip.cli.common.model_from_args", no_model)
    save = str(blocker / "out.csv")  # a file where a folder is needed
    code = main(["--run-classification", "--images", str(folder), *CLASSES, *QUIET,
                 "--save-path", save])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cannot write" in err and str(blocker) in err
    assert "(command-line option: --save-path)" in err and "Traceback" not in err
    code = main(["--run-scene", "--scene", str(folder / "t0.tif"), *CLASSES, *QUIET,
                 "--save-path", str(blocker)])  # fmt: skip
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
    # a read-only folder (simulated: tests may run as root, who may write anywhere)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == readonly else real_access(p, m)
    )
    code = main(["--run-retrieval", "--images", str(folder), "--query", "a river", *QUIET,
                 "--save-path", str(readonly / "r.csv")])  # fmt: skip
    assert code == 2 and f"the folder {readonly} is not writable" in capsys.readouterr().err
    code = evaluation_main(["--model-name", "msclip-tiny", "--datasets", "EuroSAT_MS",
                            "--save-path", str(blocker), "--quiet"])  # fmt: skip
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_a_write_failure_at_the_end_is_one_line(folder, tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("msclip.io.writers.atomic_write", full_disk)
    monkeypatch.setattr("msclip.io.writers.atomic_write_all", full_disk)  # a table and its record
    code = main(["--run-classification", "--images", str(folder), *CLASSES, *QUIET,
                 "--save-path", str(tmp_path / "o.csv")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err


# -- 2. pictures at their true depth; missing bands and display scale are said ------------------
def test_pictures_are_read_at_their_true_depth(tmp_path):
    grey16 = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    r = msclip.read_raster(tmp_path / "g16.png", bands=["B08"])
    assert r.data.dtype == np.uint16 and r.data.shape == (1, 40, 30)
    np.testing.assert_array_equal(r.data[0], grey16)
    with pytest.raises(BandError, match="1-band") as err:
        msclip.read_raster(tmp_path / "g16.png")  # one band: msclip will not guess which
    assert err.value.param == "bands"
    rgb16 = (np.arange(3 * 20 * 20, dtype=np.uint16).reshape(3, 20, 20) * 37) % 65000
    with rasterio.open(tmp_path / "c16.png", "w", driver="PNG", width=20, height=20, count=3,
                       dtype="uint16") as dst:  # fmt: skip
        dst.write(rgb16)
    r = msclip.read_raster(tmp_path / "c16.png")
    assert r.data.dtype == np.uint16 and r.data.max() > 255
    np.testing.assert_array_equal(r.data, rgb16)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "g8.png")
    assert msclip.read_raster(tmp_path / "g8.png", bands=["B04"]).data.dtype == np.uint8


def test_rgb_picture_to_a_multispectral_model_warns_once_or_is_refused(tmp_path, capsys):
    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(pics / f"{i}.png")
    argv = ["--run-classification", "--images", str(pics), *CLASSES, *TINY,
            "--save-path", str(tmp_path / "o.csv")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "lack 7 of the model's 10 bands" in line]
    assert len(lines) == 1  # one warning for the run, with the count of images
    assert "'B05', 'B06', 'B07', 'B08', 'B8A', 'B11', 'B12'" in lines[0]
    assert "8-bit input to a model of raw reflectance values" in lines[0]
    assert "(3 of 3 images)" in lines[0]
    assert main([*argv, "--strict-bands"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "lack 7 of the model's 10 bands" in err
    assert "refused by --strict-bands" in err
    # --quiet hides warnings about settings and other files, not one that the results say little
    (pics / "notes.xml").write_text("<x/>")
    assert main([*argv, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "lack 7 of the model's 10 bands" in err and "(3 of 3 images)" in err
    assert "not an image" not in err and "loading" not in err and "precision:" not in err


# -- 3. nodata tiles are skipped and counted, never scored ----------------------------------------
def test_all_nodata_and_all_nan_tiles_are_skipped_and_counted(folder, tmp_path, capsys):
    _tile(folder / "z_nodata.tif", np.zeros((10, 40, 40), np.uint16), nodata=0)
    nan = np.full((10, 40, 40), np.nan, np.float32)
    _tile(folder / "z_nan.tif", nan)
    half = np.random.default_rng(2).integers(1, 6000, (10, 40, 40)).astype(np.uint16)
    half[:, :10] = 0  # a quarter nodata: scored, with its valid fraction recorded
    _tile(folder / "y_part.tif", half, nodata=0)
    out = tmp_path / "c.csv"
    code = main(["--run-classification", "--images", str(folder), *CLASSES, *QUIET,
                 "--save-path", str(out)])  # fmt: skip
    assert code == 0
    df = pd.read_csv(out)
    scored = df[df["status"] == "ok"]
    assert sorted(scored["Image"]) == ["t0.tif", "t1.tif", "t2.tif", "t3.tif", "y_part.tif"]
    assert df.set_index("Image").loc["y_part.tif", "valid_fraction"] == pytest.approx(0.75)
    assert (scored["valid_fraction"] > 0.5).all()
    unscored = df[df["status"] != "ok"].set_index("Image")  # a row each, never scored
    assert sorted(unscored.index) == ["z_nan.tif", "z_nodata.tif"]
    assert unscored["Class"].isna().all() and unscored["forest"].isna().all()
    assert (unscored["valid_fraction"] == 0).all()
    assert unscored["status"].str.startswith("skipped: fewer than 50% valid pixels").all()
    err = capsys.readouterr().err
    assert "2 of 7 images skipped: fewer than 50% valid pixels" in err
    assert "z_nodata.tif" in err and "z_nan.tif" in err
    out2 = tmp_path / "r.csv"
    code = main(["--run-retrieval", "--images", str(folder), "--query", "a lake", *QUIET,
                 "--save-path", str(out2), "--min-valid", "0.8"])  # fmt: skip
    assert code == 0 and "y_part.tif" not in set(pd.read_csv(out2)["Image"])
    assert "3 of 7 images skipped: fewer than 80% valid pixels" in capsys.readouterr().err
    # the index uses the same rule
    code = index_main(["build", str(tmp_path / "idx"), "--images", str(folder), *QUIET])
    assert code == 0
    assert re.search(r"skipped as nodata\s+2\n", capsys.readouterr().out)


# -- 4. a whole scene given as one image ----------------------------------------------------------
def test_a_raster_far_larger_than_the_input_is_refused_with_a_hint(tmp_path, capsys):
    big = tmp_path / "big"
    big.mkdir()
    data = np.random.default_rng(3).integers(1, 6000, (10, 300, 300)).astype(np.uint16)
    _tile(big / "scene.tif", data)  # 300x300 px = 88 model inputs of 32x32
    argv = ["--run-classification", "--images", str(big), *CLASSES, *QUIET,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "300x300 pixels" in err and "--run-scene" in err and "--downsample" in err
    assert main([*argv, "--downsample"]) == 0  # read reduced to the model input
    # a model given as a checkpoint file: refused once it is loaded, not per file as unreadable
    ckpt = msclip.save_checkpoint(msclip.create_model("msclip-tiny"), tmp_path / "m.safetensors")
    own = [a for a in argv if a not in ("--model-name", "msclip-tiny", "--no-pretrained")]
    capsys.readouterr()
    for mode in ("--run-classification", "--run-retrieval"):
        extra = ["--query", "a river"] if mode == "--run-retrieval" else []
        run = [mode if a == "--run-classification" else a for a in own]
        if mode == "--run-retrieval":
            run = [a for a in run if a not in CLASSES]
        assert main([*run, *extra, "--ckpt-path", str(ckpt)]) == 2, mode
        err = capsys.readouterr().err
        assert "300x300 pixels" in err and "--run-scene" in err, mode
    # as a query image of a retrieval: the program's flags, not the library's advice
    small = tmp_path / "small"
    small.mkdir()
    _tile(small / "tile.tif", data[:, :32, :32])
    query = ["--run-retrieval", "--images", str(small), "--query-image", str(big / "scene.tif"),
             *QUIET, "--save-path", str(tmp_path / "r.csv")]  # fmt: skip
    assert main(query) == 2
    err = capsys.readouterr().err
    assert "query images cannot be read (--query-image)" in err and "300x300 pixels" in err
    assert "--run-scene" in err and "--downsample" in err and "(scene mode)" not in err
    assert main([*query, "--downsample"]) == 0


def test_a_picture_too_large_for_pillow_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(pics / "ortho.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as a picture of 180+ Mpixels does
    argv = ["--run-classification", "--images", str(pics), *CLASSES, *QUIET,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ortho.jpg has more pixels" in err and "GeoTIFF" in err and "Traceback" not in err


def test_a_large_picture_is_read_reduced_with_downsample(tmp_path, capsys):
    """PNG and JPEG pictures far larger than the input are refused, and --downsample reads them
    reduced to it (as GeoTIFFs)."""
    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(4)
    for name in ("big.png", "big.jpg"):
        Image.fromarray(rng.integers(0, 255, (400, 300, 3)).astype(np.uint8)).save(pics / name)
    out = tmp_path / "c.csv"
    argv = ["--run-classification", "--images", str(pics), *CLASSES, *QUIET,
            "--save-path", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert "300x400 pixels" in capsys.readouterr().err and not out.exists()  # width x height
    assert main([*argv, "--downsample"]) == 0
    assert sorted(pd.read_csv(out)["Image"]) == ["big.jpg", "big.png"]


# -- 5. band descriptions -------------------------------------------------------------------------
def test_unrecognised_band_descriptions_are_refused_generic_ones_noted(tmp_path):
    data = np.ones((10, 16, 16), np.uint16)
    odd = _tile(tmp_path / "odd.tif", data, bands=[f"chan-{c}" for c in "abcdefghij"])
    with pytest.raises(BandError, match="not band names msclip knows") as err:
        msclip.read_raster(odd)
    assert err.value.param == "bands"
    assert msclip.read_raster(odd, bands=list(msclip.spectral.LLAMA3_MS_CLIP_BANDS)).bands
    numbered = _tile(tmp_path / "num.tif", data, bands=[f"band_{i}" for i in range(1, 11)])
    with pytest.warns(GenericBandNamesWarning, match="generic numbering"):
        r = msclip.read_raster(numbered)
    assert r.bands == msclip.spectral.LLAMA3_MS_CLIP_BANDS and r.band_source == "count"


# -- 6. warnings counted once per run, silenced by --quiet -----------------------------------------
def test_out_of_range_band_warning_is_summarised_once(tmp_path, capsys):
    folder = tmp_path / "l2a"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(5):  # 12-band L2A: B01 lies outside the 10-band model's range
        _tile(folder / f"{i}.tif", rng.integers(1, 6000, (12, 40, 40)).astype(np.uint16))
    argv = ["--run-classification", "--images", str(folder), *CLASSES, *TINY,
            "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "outside the model's spectral range" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "(5 of 5 images)" in lines[0] and ".py:" not in lines[0]  # no source path
    assert main([*argv, "--quiet"]) == 0
    assert "outside the model's spectral range" not in capsys.readouterr().err


# -- 7. permissions ------------------------------------------------------------------------------
def test_index_files_honour_the_umask(folder, tmp_path):
    old = os.umask(0o022)
    try:
        assert index_main(["build", str(tmp_path / "idx"), "--images", str(folder), *QUIET]) == 0
        assert index_main(["search", str(tmp_path / "idx"), "--query", "x", *QUIET,
                           "--save-path", str(tmp_path / "s.csv")]) == 0  # fmt: skip
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "idx").rglob("*") if p.is_file() and p.name != ".lock"]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}


# -- 9. one class, tiny rasters -------------------------------------------------------------------
def test_one_class_and_tiny_rasters(folder, tmp_path, capsys):
    out = str(tmp_path / "c.csv")
    code = main(["--run-classification", "--images", str(folder), "--class-names", "forest",
                 *QUIET, "--save-path", out])  # fmt: skip
    assert code == 2 and "give at least two" in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    _tile(small / "dot.tif", np.full((10, 1, 1), 900, np.uint16))
    _tile(small / "chip.tif", np.full((10, 7, 9), 900, np.uint16))
    _tile(small / "thumb.tif", np.full((10, 6, 8), 900, np.uint16)[:, :, :] + 1)
    _tile(small / "ok.tif", np.full((10, 8, 8), 900, np.uint16))
    code = main(["--run-classification", "--images", str(small), *CLASSES, *TINY,
                 "--save-path", out])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1  # unreadable (too small) images are named and counted
    assert "1x1 pixels is smaller than one 8-pixel patch" in err and "dot.tif" in err
    assert "rasters of 8x8 pixels are upsampled 4.0x" not in err  # 8 px: a quarter of 32
    df = pd.read_csv(out)
    assert set(df.loc[df["status"] == "ok", "Image"]) == {"ok.tif"}
    bad = df[df["status"] != "ok"]
    assert "dot.tif" in set(bad["Image"]) and bad["status"].str.startswith("unreadable: ").all()


# -- 10. the multi-label table --------------------------------------------------------------------
def test_multi_label_table_lists_the_classes_found(folder, tmp_path, capsys):
    code = main(["--run-classification", "--images", str(folder), *QUIET, "--multi-label",
                 "--class-names", "forest", "sea", "city", "snow", "--templates", "short",
                 "--save-path", str(tmp_path / "m.csv")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "Classes present (probability)" in out and "Runner-up" not in out
    df = pd.read_csv(tmp_path / "m.csv")
    for _, row in df.iterrows():
        for name in row["Class"].split(";"):
            assert f"{name} (" in out  # every class marked present is listed with its score


# -- 11. start-up ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module", ["inference", "evaluation", "index", "train", "scenes", "demo", "finetune"]
)
def test_help_does_not_import_torch(module):
    code = (
        "import sys\n"
        f"from msclip.cli.{module} import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "usage:" in res.stdout and res.stderr.strip().endswith("False")


def test_bad_band_names_are_reported_before_the_model_is_built(folder, capsys, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr("msclip.factory.create_model", no_model)
    code = main(["--run-classification", "--images", str(folder), *CLASSES, *TINY,
                 "--bands", "B02", "B03", "B99"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "B99" in err and "loading msclip-tiny ..." in err
    assert err.count("\n") == 2 and err.rstrip().endswith("(command-line option: --bands)")
    code = main(["--run-classification", "--images", str(folder), *CLASSES, *TINY,
                 "--sensor", "sentinel2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "unknown sensor 'sentinel2'" in err and "sentinel2_l2a" in err
    assert "--sensor" in err


def test_smaller_messages(folder, tmp_path, capsys):
    code = main(["--run-retrieval", "--images", str(folder / "t0.tif"), "--query", "a lake",
                 *QUIET, "--save-path", str(tmp_path / "r.csv")])  # fmt: skip
    assert code == 0 and "1 query over 1 image;" in capsys.readouterr().out
    empty = tmp_path / "nodata"
    empty.mkdir()
    _tile(empty / "z.tif", np.zeros((10, 40, 40), np.uint16), nodata=0)
    code = index_main(["build", str(tmp_path / "idx"), "--images", str(empty), *QUIET])
    assert code == 1 and "holds no embeddings" in capsys.readouterr().err
    code = index_main(["search", str(tmp_path / "none"), "--query", "x", *QUIET])
    err = capsys.readouterr().err
    assert code == 2 and "msclip-index build" in err and "IndexWriter" not in err


def test_query_images_are_checked_like_the_images(folder, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "q"
    empty.mkdir()
    _tile(empty / "z.tif", np.zeros((10, 40, 40), np.uint16), nodata=0)
    args = ["--run-retrieval", "--images", str(folder), *TINY, "--save-path",
            str(tmp_path / "r.csv")]  # fmt: skip
    code = main([*args, "--query-image", str(empty / "z.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "fewer than 50% valid pixels" in err and "z.tif (0% valid)" in err
    assert not (tmp_path / "r.csv").exists()

    def no_model(*a, **k):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr("msclip.factory.create_model", no_model)
    code = main([*args, "--query-image", str(tmp_path / "missing.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.tif" in err and "--query-image" in err and "--images)" not in err


def test_library_argument_forms_are_written_as_flags(tmp_path, capsys):
    from msclip.cli.common import flag_wording

    assert flag_wording("name them (bands=['B02', 'B03'])") == "name them (--bands B02 B03)"
    assert flag_wording("layout='CHW' or layout=\"HWC\"") == "--layout CHW or --layout HWC"
    assert flag_wording("pass sensor='landsat89_sr'") == "pass --sensor landsat89_sr"
    # random weights are a flag of their own, never "--ckpt-path None"
    from msclip.cli.common import error_line
    from msclip.errors import WeightsNotFoundError

    err = WeightsNotFoundError("give a checkpoint (pretrained='a/b.pt'), or random weights "
                               "(pretrained=None)", param="pretrained")  # fmt: skip
    line = error_line(err)
    assert "--ckpt-path a/b.pt" in line and "(--no-pretrained)" in line and "None" not in line
    from msclip.cli.train import _flags  # msclip-train asks for random weights its own way

    line = error_line(err, _flags())
    assert "--init a/b.pt" in line and "(--init random)" in line and "pretrained" not in line
    folder = tmp_path / "odd"
    folder.mkdir()
    _tile(folder / "odd.tif", np.full((5, 40, 40), 900, np.uint16))  # 5 unnamed bands
    out = tmp_path / "c.csv"
    code = main(["--run-classification", "--images", str(folder), *CLASSES, *QUIET,
                 "--save-path", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "--bands B02 B03" in err and "bands=[" not in err
    assert "--bands B02 B03" in out.read_text() and "bands=[" not in out.read_text()


def test_empty_or_undecodable_queries_file(folder, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("a lake\nfor\xeat\n".encode("latin-1"))
    for path, why in ((empty, "holds no query"), (latin, "is not UTF-8 text")):
        code = main(["--run-retrieval", "--images", str(folder), "--queries-file", str(path),
                     *QUIET, "--save-path", str(tmp_path / "r.csv")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and why in err and "--queries-file" in err and "Traceback" not in err


def test_a_query_given_twice_is_searched_once_with_a_note(tmp_path, capsys):
    import argparse

    from msclip.cli.common import read_queries

    qf = tmp_path / "q.txt"
    qf.write_text("a lake\na forest\na lake\n")
    args = argparse.Namespace(query=["a forest", "a river"], queries_file=str(qf))
    assert read_queries(args) == ["a forest", "a river", "a lake"]
    err = capsys.readouterr().err
    assert "note: 2 repeated queries" in err and "'a forest', 'a lake'" in err
    read_queries(argparse.Namespace(query=["a river"], queries_file=None))
    assert capsys.readouterr().err == ""


def test_a_folder_or_device_given_for_a_file_is_said_as_such(folder, tmp_path, capsys):
    """A path that exists but is not a regular file (``/dev/null``, a folder) given where a file
    is read is named as what it is, with what to give: not reported as missing, and not as an
    unknown template set or dataset name."""
    from msclip.cli.finetune import main as finetune_main
    from msclip.cli.train import main as train_main

    empty = tmp_path / "empty"
    empty.mkdir()
    tif = str(folder / "t0.tif")
    cases = [
        (train_main, ["--config", "{}"], "config file '{}' {}"),
        (finetune_main, ["--config", "{}"], "config file '{}' {}"),
        (main, ["--images", str(folder), "--run-classification", "--classes-file", "{}"],
         "classes file {} {}"),
        (main, ["--images", str(folder), "--run-classification", "--class-names", "a", "b",
                "--templates", "{}"], "template file {} {}"),
        (main, ["--images", str(folder), "--run-retrieval", "--queries-file", "{}"],
         "queries file {} {}"),
        (main, ["--scene", "{}", "--run-scene", "--class-names", "a", "b"], "scene file {} {}"),
        (main, ["--images", str(folder), "--run-classification", "--head", "{}"],
         "head file {} {}"),
        (main, ["--images", "{}", "--run-retrieval", "--query", "a"], "{} {}"),
        (main, ["--images", tif, "--run-retrieval", "--query", "a", "--ckpt-path", "{}"],
         "{} {}"),
        (evaluation_main, ["--datasets", "{}"], "dataset YAML {} {}"),
        (evaluation_main, ["--datasets", "EuroSAT_MS", "--classnames", "EuroSAT_MS={}"],
         "class-name file '{}' {}"),
    ]  # fmt: skip
    for path, said in ((os.devnull, "is a character device, not a file: give"),
                       (str(empty), "is a folder, not a file: give")):  # fmt: skip
        for prog, argv, want in cases:
            if prog is main and argv[:1] == ["--images"] and path == str(empty):
                continue  # a folder is a folder of images there (its own message)
            if "--ckpt-path" in argv and path == str(empty):
                continue  # a folder of checkpoints is named with its files (tested elsewhere)
            args = [a.replace("{}", path) for a in argv]
            if prog is not train_main and prog is not finetune_main:
                args += [*QUIET, "--save-path", str(tmp_path / "out" / "r.csv")]
            prog(args)
            out, err = capsys.readouterr()
            assert want.format(path, said) in out + err, (args, out + err)
            assert "not found" not in out + err and "unknown" not in out + err, (args, err)
