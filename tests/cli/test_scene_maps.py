"""``msclip-inference --run-scene``: similarity and class maps (CRS, transform, nodata, legend)."""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from support.scenes import ORIGIN, damage_block, write_scene_with_nodata, write_tiled_scene

import msclip
from msclip.cli.inference import main
from msclip.spectral.bands import default_bands_for_count

TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--quiet", "--batch-size", "4"]


@pytest.fixture
def scene(tmp_path):
    """12 x 100 x 150 uint16 scene, UTM 32N, nodata 0 in columns 96 and beyond."""
    return write_scene_with_nodata(tmp_path)


def test_run_scene_maps(scene, tmp_path):
    path, data = scene
    out = tmp_path / "maps"
    names = ["forest", "river", "urban_fabric"]
    rc = main(
        [
            "--run-scene",
            "--scene",
            str(path),
            "--query",
            "a river",
            "a town",
            "--class-names",
            *names,
            "--templates",
            "short",
            "--save-path",
            str(out),
            *TINY,
        ]
    )
    assert rc == 0
    with rasterio.open(out / "similarity.tif") as src:
        assert src.crs == CRS.from_epsg(32632)
        assert src.transform == Affine(320, 0, 500000, 0, -320, 5000000)
        assert src.shape == (3, 4) and src.count == 2
        assert src.descriptions == ("a river", "a town")
        sim = src.read()
    # Columns 96+ are nodata: grid column 3 (pixels 96-127) is skipped, columns 0-2 are not.
    assert np.isnan(sim[:, :, 3]).all() and np.isfinite(sim[:, :, :3]).all()

    # The value of tile (1, 2) is the cosine between that window and the query.
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny")
    tok = msclip.get_tokenizer(model)
    with torch.no_grad():
        window = msclip.Raster(data[:, 32:64, 64:96], default_bands_for_count(12))
        x = model.preprocess()(window)[None]
        img = model.encode_image(x, normalize=True)
        q = model.encode_text(tok(["a river"]), normalize=True)
    assert sim[0, 1, 2] == pytest.approx(float(img @ q.T), abs=1e-5)

    with rasterio.open(out / "class_map.tif") as src:
        assert src.crs == CRS.from_epsg(32632) and src.transform.a == 320
        labels = src.read(1)
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
    assert (labels[:, 3] == 255).all() and (labels[:, :3] < 3).all()
    legend = json.loads((out / "class_map_legend.json").read_text())
    assert [c["name"] for c in legend["classes"]] == names
    assert [c["tiles"] for c in legend["classes"]] == [int((labels == i).sum()) for i in range(3)]
    assert legend["skipped_tiles"] == 3
    csv = pd.read_csv(out / "class_map_legend.csv")
    assert csv["class"].tolist() == names
    tiles = pd.read_csv(out / "tiles.csv")
    assert len(tiles) == 9 and {"Tile", "Class", *names} <= set(tiles.columns)
    # the maps say what they map
    with rasterio.open(out / "class_map.tif") as src:
        tags = src.tags()
    assert tags["msclip_scene"] == str(path.resolve()) and tags["msclip_tile_size"] == "32"
    assert json.loads(tags["msclip_class_names"]) == names
    # and which model made them
    for name in ("class_map.tif", "class_map_confidence.tif", "similarity.tif"):
        with rasterio.open(out / name) as src:
            tags = src.tags()
        assert tags["msclip_model"] == "msclip-tiny" and tags["msclip_precision"] == "fp32", name
        assert tags["msclip_fingerprint"] == model.fingerprint(), name
        assert tags["msclip_checkpoint_sha256"] == model.checkpoint_sha256, name
    # and so does the record of the tile table
    record = json.loads((out / "tiles.csv.json").read_text())
    assert record["mode"] == "scene tile maps" and record["scene"] == str(path)
    assert record["classes"] == names and record["queries"] == ["a river", "a town"]
    assert record["grid"] == {"rows": 3, "cols": 4, "tile": 32, "stride": 32}
    assert record["tiles"] == {"given": 12, "scored": 9, "skipped_nodata": 3, "unreadable": 0}
    assert record["model"]["fingerprint"] == model.fingerprint()


def test_a_rerun_into_the_same_folder_names_the_earlier_runs_maps(scene, tmp_path, capsys):
    path, _ = scene
    out = tmp_path / "maps"
    loud = [a for a in TINY if a != "--quiet"]
    base = ["--run-scene", "--scene", str(path), "--save-path", str(out), *loud]
    assert main([*base, "--query", "a river", "--class-names", "sea", "forest"]) == 0
    capsys.readouterr()
    assert main([*base, "--query", "a town", "--stride", "16"]) == 0  # queries only
    err = capsys.readouterr().err
    assert "also holds class_map.tif, class_map_confidence.tif, class_map_legend.json" in err
    assert main([*base, "--query", "a town", "--stride", "16"]) == 0 and "also holds" in (
        capsys.readouterr().err
    )


def test_run_scene_refuses_small_scene(tmp_path, capsys):
    path = tmp_path / "small.tif"
    msclip.write_geotiff(
        path, np.ones((12, 20, 20), np.uint16), crs=CRS.from_epsg(32632), transform=ORIGIN
    )
    rc = main(["--run-scene", "--scene", str(path), "--query", "x", *TINY])
    assert rc == 2
    assert "smaller than one tile" in capsys.readouterr().err


def test_dense_zero_shot_map_of_a_scene(scene, tmp_path, capsys):
    path, data = scene
    out = tmp_path / "dense"
    loud = [a for a in TINY if a != "--quiet"]
    code = main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest", "city",
                 "--templates", "short", "--dense", "--tile-size", "32", "--overlap", "8",
                 "--save-path", str(out), *loud])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr()
    assert "training mode" not in printed.err  # the MaskCLIP predictor runs in eval mode
    with rasterio.open(out / "dense_class_map.tif") as src, rasterio.open(path) as ref:
        assert (src.crs, src.transform, src.shape) == (ref.crs, ref.transform, ref.shape)
        classes = src.read(1)
        assert src.descriptions[0] and src.count == 2
        nodata = src.nodata
    valid = (data != 0).any(axis=0)  # the scene's nodata strip stays nodata in the map
    assert (classes[~valid] == nodata).all() and (classes[valid] < 3).all()
    legend = json.loads((out / "dense_class_map_legend.json").read_text())
    assert [c["name"] for c in legend["classes"]] == ["sea", "forest", "city"]
    assert sum(c["pixels"] for c in legend["classes"]) == int(valid.sum())
    assert legend["skipped_pixels"] == int((~valid).sum())
    assert "dense_class_map.tif" in printed.out
    with rasterio.open(out / "dense_class_map.tif") as src:  # the map names its scene
        assert src.tags()["msclip_scene"] == os.path.abspath(path)
    # a tile map run into that folder names the per-pixel map it leaves there, and the reverse
    assert main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest",
                 "--save-path", str(out), *TINY]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "also holds dense_class_map.tif, dense_class_map_legend.csv" in err
    assert main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest",
                 "--dense", "--tile-size", "32", "--save-path", str(out), *TINY]) == 0  # fmt: skip
    assert "also holds class_map.tif" in capsys.readouterr().err
    assert main(["--run-classification", "--images", str(path), "--class-names", "a", "b",
                 "--dense", *TINY]) == 2  # --dense belongs to --run-scene  # fmt: skip
    capsys.readouterr()
    assert main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest",
                 "--dense", "--tile-size", "32", "--overlap", "32", *TINY]) == 2  # fmt: skip
    assert "--overlap 32 must be less than the tile size, 32 pixels (--tile-size)" in (
        capsys.readouterr().err
    )
    for flag in (["--stride", "16"], ["--min-valid", "0.9"]):  # not silently ignored
        assert main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest",
                     "--dense", *flag, *TINY]) == 2  # fmt: skip
        assert "do(es) not apply to a per-pixel map" in capsys.readouterr().err


def test_uncovered_edges_warn_and_an_all_nodata_scene_fails(scene, tmp_path, capsys):
    path, data = scene
    out = tmp_path / "maps"
    loud = [a for a in TINY if a != "--quiet"]
    args = ["--run-scene", "--query", "a river", "--save-path", str(out), *loud]
    assert main([*args, "--scene", str(path)]) == 0
    err = capsys.readouterr().err
    # 150 x 100 pixels in tiles of 32: 22 columns and 4 rows are left out, and said so
    assert "warning:" in err and "the last 22 columns and 4 rows are not covered" in err
    empty = tmp_path / "empty.tif"
    msclip.write_geotiff(empty, np.zeros_like(data), crs=CRS.from_epsg(32632),
                         transform=Affine(10, 0, 500000, 0, -10, 5000000), nodata=0)  # fmt: skip
    out2 = tmp_path / "maps2"
    rc = main(["--run-scene", "--query", "a river", "--save-path", str(out2), *TINY,
               "--scene", str(empty)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "error: no tile could be encoded: of 12 tiles, 12 skipped" in err
    assert not (out2 / "similarity.tif").exists() and not (out2 / "tiles.csv").exists()
    assert not (out2 / "tiles.csv.json").exists()
    # into a folder of an earlier run: its maps stay, and are said not to be this run's
    out1 = tmp_path / "maps1"
    assert main(["--run-scene", "--query", "a river", "--save-path", str(out1), *TINY,
                 "--scene", str(path)]) == 0  # fmt: skip
    capsys.readouterr()
    loud = [a for a in TINY if a != "--quiet"]  # --quiet keeps errors only
    rc = main(["--run-scene", "--query", "a river", "--save-path", str(out1), *loud,
               "--scene", str(empty)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "of an earlier run, not of this one" in err
    assert "similarity.tif, tiles.csv, tiles.csv.json" in err
    # the per-pixel map of the same scene: exit 1 too, no all-nodata map kept
    out3 = tmp_path / "maps3"
    rc = main(["--run-scene", "--class-names", "sea", "forest", "--dense", "--save-path",
               str(out3), *TINY, "--scene", str(empty)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "error: no tile of" in err and "holds data" in err
    assert not (out3 / "dense_class_map.tif").exists()


def test_dense_scene_maps_honour_sensor(tmp_path, capsys):
    # four unnamed bands in PlanetScope order (blue, green, red, NIR): --sensor names them
    rng = np.random.default_rng(0)
    data = rng.integers(200, 4000, size=(4, 48, 48)).astype(np.uint16)
    path = tmp_path / "ps.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=48,
        height=48,
        count=4,
        dtype="uint16",
        crs=CRS.from_epsg(32632),
        transform=Affine(3, 0, 0, 0, -3, 0),
    ) as dst:
        dst.write(data)  # fmt: skip
    maps = {}
    loud = [a for a in TINY if a != "--quiet"]
    for name, flags in (("naip", []), ("sensor", ["--sensor", "planetscope4"]),
                        ("bands", ["--bands", "B02", "B03", "B04", "B08"])):  # fmt: skip
        out = tmp_path / name
        assert main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest", "city",
                     "--dense", "--tile-size", "32", "--save-path", str(out), *loud,
                     *flags]) == 0  # fmt: skip
        err = capsys.readouterr().err
        assert ("NAIP order" in err) == (name == "naip"), (name, err)
        with rasterio.open(out / "dense_class_map.tif") as src:
            maps[name] = src.read()
    assert not np.array_equal(maps["sensor"], maps["naip"])  # --sensor was ignored here


def test_whole_file_problems_of_a_scene_are_said_once_before_the_model_loads(
    scene, tmp_path, capsys
):
    path, data = scene
    args = ["--run-scene", "--query", "a river", "--save-path", str(tmp_path / "o"), *TINY]
    # a picture is read whole: every tile was the whole picture
    from PIL import Image

    png = tmp_path / "scene.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png)
    assert main([*args, "--scene", str(png)]) == 2
    assert "is a PNG file: scenes are read window by window" in capsys.readouterr().err
    # bands that cannot be named: one usage error, not one failure per tile
    odd = tmp_path / "odd.tif"
    msclip.write_geotiff(odd, data[:5], crs=CRS.from_epsg(32632),
                         transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
    assert main([*args, "--scene", str(odd)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "5-band" in err and "--bands" in err
    # a tile smaller than the model's patch
    assert main([*args, "--scene", str(path), "--tile-size", "4"]) == 2
    assert "smaller than the model's 8-pixel patch" in capsys.readouterr().err
    # a truncated file: the tiles it lacks are named with the window and GDAL's reason, and the
    # per-pixel map holds the others (as the tile maps leave the unreadable tiles out)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    rc = main(["--run-scene", "--class-names", "sea", "forest", "--dense", "--save-path",
               str(tmp_path / "d"), *TINY, "--scene", str(broken)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and f"tiles of {broken} could not be read and were left out" in err
    assert "rows " in err and "See previous exception" not in err
    # the first three with their reasons, then a count (-v logs the others)
    assert re.search(r"\(scene\.tif|\(broken\.tif", err) and re.search(r"; and \d+ more", err)
    with rasterio.open(tmp_path / "d" / "dense_class_map.tif") as src:
        cls = src.read(1)
        assert int(src.tags()["msclip_unreadable_tiles"]) >= 1
    assert (cls[:24, :96] < 2).all() and (cls[-1] == 255).all()  # the end of the file is gone


def test_scenes_without_a_crs_give_maps_without_a_made_up_georeference(scene, tmp_path, capsys):
    from rasterio.control import GroundControlPoint
    from rasterio.errors import NotGeoreferencedWarning

    _, data = scene
    loud = [a for a in TINY if a != "--quiet"]
    plain = tmp_path / "plain.tif"
    gcp = tmp_path / "gcp.tif"
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=12,
                   dtype="uint16")  # fmt: skip
    points = [GroundControlPoint(0, 0, 500000, 5000000), GroundControlPoint(0, 149, 501490,
              5000000), GroundControlPoint(99, 0, 500000, 4999010)]  # fmt: skip
    with warnings.catch_warnings():  # rasterio's own warnings on writing them are not the run's
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(data)
        with rasterio.open(gcp, "w", **profile, gcps=points, crs=CRS.from_epsg(32632)) as dst:
            dst.write(data)
    for scene_path, said in ((plain, "has no CRS"), (gcp, "3 ground control points only")):
        out = tmp_path / scene_path.stem
        capsys.readouterr()  # not the previous map's reading below (rasterio warns of it)
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # each warning shown, whether shown before or not
            assert main(["--run-scene", "--query", "a river", "--scene", str(scene_path),
                         "--save-path", str(out), *loud]) == 0  # fmt: skip
        err = capsys.readouterr().err
        # the run says it in its own words once, never through rasterio's warning
        assert err.count(said) == 1 and "NotGeoreferencedWarning" not in err
        with rasterio.open(out / "similarity.tif") as src:
            # no transform of tile-sized cells at the origin that a GIS would take as real
            assert src.crs is None and src.transform.is_identity


def test_nodata_of_a_scene_read_rescaled_is_its_stored_value(scene, tmp_path):
    # a scene declaring a scale and offset (L2A since baseline 04.00) but no nodata value:
    # --nodata 0 names the stored fill, which the tiles must skip after rescaling too
    _, data = scene
    scaled = tmp_path / "scaled.tif"
    stored = np.where(data == 0, 0, data.astype(np.int32) + 1000).astype(np.uint16)
    msclip.write_geotiff(scaled, stored, crs=CRS.from_epsg(32632), transform=ORIGIN)
    with rasterio.open(scaled, "r+") as ds:
        ds.scales = [1e-4] * 12
        ds.offsets = [-0.1] * 12
    out = tmp_path / "maps"
    assert main(["--run-scene", "--scene", str(scaled), "--class-names", "sea", "forest",
                 "--nodata", "0", "--save-path", str(out), *TINY]) == 0  # fmt: skip
    with rasterio.open(out / "class_map.tif") as src:
        labels = src.read(1)
    assert (labels[:, 3] == 255).all() and (labels[:, :3] < 2).all()


def test_an_all_nodata_rerun_leaves_the_earlier_per_pixel_map(scene, tmp_path, capsys):
    path, data = scene
    out = tmp_path / "dense"
    args = ["--run-scene", "--class-names", "sea", "forest", "--dense", "--tile-size", "32",
            "--save-path", str(out), *TINY]  # fmt: skip
    assert main([*args, "--scene", str(path)]) == 0
    before = (out / "dense_class_map.tif").read_bytes()
    empty = tmp_path / "empty.tif"
    msclip.write_geotiff(empty, np.zeros_like(data), crs=CRS.from_epsg(32632), transform=ORIGIN,
                         nodata=0)  # fmt: skip
    capsys.readouterr()
    assert main([*args, "--scene", str(empty)]) == 1
    assert "holds data" in capsys.readouterr().err
    # the map beside its legend is still the first run's, and nothing else is left there
    assert (out / "dense_class_map.tif").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        "dense_class_map.tif", "dense_class_map_legend.csv", "dense_class_map_legend.json",
    ]  # fmt: skip


def test_a_scene_run_never_writes_over_its_own_inputs(scene, tmp_path, monkeypatch, capsys):
    """The scene, the classes or queries file in the output folder under a name the run writes
    (or linked there) are refused before the model loads."""
    from msclip.cli import inference

    def no_model(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(inference, "load_model", no_model)
    path, _ = scene
    out = tmp_path / "out"
    out.mkdir()
    (out / "similarity.tif").write_bytes(path.read_bytes())
    (out / "tiles.csv").write_text("forest\nriver\n")
    (out / "dense_class_map_legend.csv").symlink_to(path)
    kept = {f: f.read_bytes() for f in out.iterdir()}
    runs = [
        (["--scene", str(out / "similarity.tif"), "--query", "a river"], "the scene"),
        (["--scene", str(path), "--classes-file", str(out / "tiles.csv")], "the classes file"),
        (["--scene", str(path), "--queries-file", str(out / "tiles.csv")], "the queries file"),
        (["--scene", str(path), "--class-names", "a", "b", "--dense"], "the scene"),
    ]
    for extra, what in runs:
        args = ["--run-scene", *extra, "--templates", "short", "--save-path", str(out), *TINY]
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert what in err and "give another folder" in err, err
    assert {f: f.read_bytes() for f in out.iterdir()} == kept


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_dense_map_with_int8_is_refused_before_the_model_loads(scene, tmp_path, monkeypatch,
                                                               capsys, how):  # fmt: skip
    from msclip.cli import inference

    def no_model(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(inference, "load_model", no_model)
    extra = ["--precision", "int8"] if how == "flag" else []
    if how == "environment":
        monkeypatch.setenv("MSCLIP_PRECISION", "int8")
    path, _ = scene
    args = ["--run-scene", "--scene", str(path), "--class-names", "a", "b", "--dense",
            "--save-path", str(tmp_path / "d"), *TINY, *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    given = "--precision int8" if how == "flag" else "MSCLIP_PRECISION=int8"
    assert f"which {given} replaces by int8 layers" in err and "--precision auto or fp32" in err


@pytest.mark.parametrize("in_the_way", ["tiles.csv.json", "tiles.csv", "dense_class_map.tif"])
def test_a_folder_in_the_place_of_a_scene_output_stops_before_any_work(
    scene, tmp_path, monkeypatch, capsys, in_the_way
):
    """Every file a scene run writes (the tile table's run record too) is checked before the
    model loads: a folder in the way is one usage error and nothing is written."""
    from msclip.cli import inference as cli

    def fail(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(cli, "load_model", fail)
    path, _ = scene
    out = tmp_path / "maps"
    (out / in_the_way).mkdir(parents=True)
    dense = ["--dense"] if in_the_way.startswith("dense") else []
    rc = main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest",
               "--save-path", str(out), *dense, *TINY])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot write {out / in_the_way}: it is a folder" in err, err
    assert sorted(p.name for p in out.iterdir()) == [in_the_way]


def test_a_damaged_block_fails_only_the_tiles_over_it(tmp_path, capsys):
    data = np.random.default_rng(0).integers(1, 6000, size=(12, 128, 128)).astype(np.uint16)
    path = write_tiled_scene(tmp_path / "damaged.tif", data)
    damage_block(path, 3, 3)  # rows and columns 48-63: inside tile (32, 32) of 32 px
    out = tmp_path / "maps"
    rc = main(["--run-scene", "--scene", str(path), "--class-names", "sea", "forest",
               "--save-path", str(out), *TINY])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "warning: 1 of 16 tiles could not be read" in err
    assert f"{path}@32,32 (" in err and "IReadBlock failed" in err
    tiles = pd.read_csv(out / "tiles.csv")
    assert len(tiles) == 15 and f"{path}@32,32" not in set(tiles["Tile"])
    with rasterio.open(out / "class_map.tif") as src:
        cls = src.read(1)
    assert cls[1, 1] == 255 and (np.delete(cls.ravel(), 5) < 2).all()


def test_dense_maps_check_the_scene_as_tile_maps_do(tmp_path, capsys):
    """``--dense`` says a scene's undeclared fill (swath edges at 0) as the tile maps say it, also
    under --quiet, and ``--strict-bands`` refuses reflectance from 0 to 1 (status 2, no map)."""
    r = np.random.default_rng(4)
    data = r.integers(1, 6000, size=(12, 64, 96)).astype(np.uint16)
    data[:, :, 70:] = 0  # no nodata value declared
    edges, unit = tmp_path / "edges.tif", tmp_path / "unit.tif"
    bands = list(default_bands_for_count(12))
    msclip.write_geotiff(edges, data, crs="EPSG:32632", transform=ORIGIN, bands=bands)
    msclip.write_geotiff(unit, (data / 10000).astype(np.float32), crs="EPSG:32632",
                         transform=ORIGIN, bands=bands)  # fmt: skip
    dense = ["--run-scene", "--dense", "--class-names", "sea", "forest", "--templates", "short",
             "--tile-size", "32", *TINY]  # fmt: skip
    assert main([*dense, "--scene", str(edges), "--save-path", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert err.count("pixels holding 0 in every band were read as data") == 1
    assert "--nodata 0" in err
    out = tmp_path / "u"
    assert main([*dense, "--scene", str(unit), "--save-path", str(out), "--strict-bands"]) == 2
    err = capsys.readouterr().err
    assert "multiply the values by 10000" in err and "refused by --strict-bands" in err
    assert not list(out.iterdir())
