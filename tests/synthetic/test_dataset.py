"""Tests of synthetic datasets on disk (msclip.synthetic.dataset)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from msclip.errors import SyntheticDataError
from msclip.synthetic import (
    BAND_NAMES,
    caption_mentions,
    generate_dataset,
    generate_examples,
    generate_tile,
    iter_samples,
    tile_transform,
    write_tile,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "benchmark_datasets" / "examples"


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_write_tile_geotiff(tmp_path: Path) -> None:
    arr, _ = generate_tile("forest", 32, 0)
    transform = tile_transform(3, 32)
    path = write_tile(tmp_path / "sub" / "t.tif", arr, transform=transform, tags={"CLASS": "x"})
    with rasterio.open(path) as src:
        assert src.count == 12 and src.dtypes == ("uint16",) * 12
        assert src.descriptions == BAND_NAMES
        assert src.nodata == 0
        assert src.crs.to_epsg() == 32632
        assert src.transform == transform and src.res == (10.0, 10.0)
        assert src.compression.name == "deflate"
        assert src.tags()["CLASS"] == "x"
        assert float(src.tags(9, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"]) == pytest.approx(0.8647)
        assert src.profile.get("tiled") is False  # strips unless asked for blocks
        np.testing.assert_array_equal(src.read(), arr)
    assert [p.name for p in tmp_path.rglob("*")] == ["sub", "t.tif"]  # no temp file left
    with pytest.raises(SyntheticDataError, match="uint16"):
        write_tile(tmp_path / "f.tif", arr.astype(np.float32) / 10000)
    with pytest.raises(SyntheticDataError, match="band names"):
        write_tile(tmp_path / "b.tif", arr[:10])


def test_write_tile_in_blocks(tmp_path: Path) -> None:
    arr, _ = generate_tile("urban", 48, 0)
    path = write_tile(tmp_path / "b.tif", arr, blocksize=16)
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (16, 16)
        np.testing.assert_array_equal(src.read(), arr)
    with pytest.raises(SyntheticDataError, match="multiple of 16"):
        write_tile(tmp_path / "c.tif", arr, blocksize=20)


def test_written_tiles_read_back_with_band_names(tmp_path: Path) -> None:
    from msclip.io import read_raster

    arr, _ = generate_tile("urban", 16, 0)
    raster = read_raster(write_tile(tmp_path / "u.tif", arr))
    assert tuple(raster.bands) == BAND_NAMES
    assert raster.band_source == "descriptions"


def test_generate_dataset_is_byte_reproducible(tmp_path: Path) -> None:
    kwargs = {"classes": ["sea", "snow_and_ice", "burnt area"], "n_per_class": 2, "size": 24}
    s1 = generate_dataset(tmp_path / "a", seed=4, **kwargs)
    generate_dataset(tmp_path / "b", seed=4, **kwargs)
    generate_dataset(tmp_path / "c", seed=5, **kwargs)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    tiles = [k for k in a if k.endswith(".tif")]
    assert len(tiles) == 6 and all(a[k] != c[k] for k in tiles)
    assert sorted(a) == sorted(
        ["captions.csv", "labels.csv"]
        + [f"{d}/{d}_{i:04d}.tif" for d in ("sea", "snow_and_ice", "burnt_area") for i in range(2)]
    )
    assert s1.n_images == 6 and s1.counts == {"sea": 2, "snow and ice": 2, "burnt area": 2}
    with open(s1.captions_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "caption", "caption_2", "caption_3", "label"]
    assert [r["label"] for r in rows] == ["sea"] * 2 + ["snow and ice"] * 2 + ["burnt area"] * 2
    for r in rows:
        assert (tmp_path / "a" / r["image"]).is_file()
        assert all(
            caption_mentions(r[k], r["label"]) for k in ("caption", "caption_2", "caption_3")
        )
    with open(s1.labels_csv, newline="") as fh:
        labels = list(csv.DictReader(fh))
    assert [(r["index"], r["label"], r["folder"], r["count"]) for r in labels] == [
        ("0", "sea", "sea", "2"), ("1", "snow and ice", "snow_and_ice", "2"),
        ("2", "burnt area", "burnt_area", "2"),
    ]  # fmt: skip
    # tiles of one dataset sit at different places on the map
    origins = set()
    for k in tiles:
        with rasterio.open(tmp_path / "a" / k) as src:
            origins.add((src.transform.c, src.transform.f))
            assert src.tags()["GENERATOR"] == "msclip.data.scenes"  # kept: same bytes as before
    assert len(origins) == 6


def test_tile_content_does_not_depend_on_other_classes(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "one", classes=["lake"], n_per_class=1, size=16, seed=2)
    generate_dataset(tmp_path / "all", classes=["sea", "lake"], n_per_class=1, size=16, seed=2)
    with rasterio.open(tmp_path / "one/lake/lake_0000.tif") as s1:
        one = s1.read()
    with rasterio.open(tmp_path / "all/lake/lake_0000.tif") as s2:
        two = s2.read()
    np.testing.assert_array_equal(one, two)


def test_flat_layout(tmp_path: Path) -> None:
    s = generate_dataset(tmp_path, classes=["desert"], n_per_class=2, size=16, layout="flat")
    assert s.files == ("desert_0000.tif", "desert_0001.tif")
    assert (tmp_path / "desert_0001.tif").is_file()


def test_bad_dataset_arguments(tmp_path: Path) -> None:
    with pytest.raises(SyntheticDataError, match="layout"):
        generate_dataset(tmp_path, layout="zip")
    with pytest.raises(SyntheticDataError, match="seed"):
        next(iter_samples(seed=-1))
    with pytest.raises(SyntheticDataError, match="empty class list"):
        generate_dataset(tmp_path, classes=[])
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_generate_examples(tmp_path: Path) -> None:
    s = generate_examples(tmp_path, n=16, size=16, seed=0)
    names = sorted(p.name for p in tmp_path.glob("*.tif"))
    assert len(names) == 16 and "sea_01.tif" in names and "sea_02.tif" in names
    assert "snow_and_ice_01.tif" in names and "burnt_area_01.tif" in names
    assert s.counts["sea"] == 2 and s.labels_csv is None
    with open(tmp_path / "captions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and rows[0]["image"] == "sea_01.tif" and rows[0]["label"] == "sea"


def test_documented_command_regenerates_the_shipped_examples(tmp_path: Path) -> None:
    """``python -m msclip.synthetic examples --out DIR --seed 0`` gives benchmark_datasets/examples.

    Captions, tags and georeference must match exactly. Pixels are compared value by value
    rather than as file bytes (compressed bytes depend on the GDAL version) and may differ in a
    handful of digital numbers where another CPU's vector maths rounds a last bit differently.
    """
    generate_examples(tmp_path, seed=0)
    assert (tmp_path / "captions.csv").read_bytes() == (EXAMPLES / "captions.csv").read_bytes()
    shipped = sorted(p.name for p in EXAMPLES.glob("*.tif"))
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == shipped and len(shipped) == 16
    for name in shipped:
        with rasterio.open(EXAMPLES / name) as old, rasterio.open(tmp_path / name) as new:
            assert new.tags() == old.tags() and new.descriptions == old.descriptions
            assert new.transform == old.transform and new.crs == old.crs
            a, b = old.read(), new.read()
        assert a.shape == b.shape and float(np.mean(a != b)) < 1e-3, name


def test_tiles_of_an_earlier_generation_are_named(tmp_path, caplog):
    from msclip.synthetic import generate_dataset

    generate_dataset(tmp_path / "d", ["sea", "forest"], 3, 16, 0)
    caplog.set_level("WARNING", logger="msclip.synthetic.dataset")
    generate_dataset(tmp_path / "d", ["sea", "forest"], 1, 16, 0)
    assert "holds 4 tile(s) this run did not write" in caplog.text


def test_a_stopped_regeneration_leaves_no_caption_table_of_the_earlier_tiles(
    tmp_path: Path, monkeypatch
) -> None:
    """captions.csv and labels.csv were kept until the end of a new run, so one stopped half-way
    (Ctrl-C) left the earlier captions naming tiles whose pixels were already the new run's."""
    import msclip.synthetic.dataset as dataset

    generate_dataset(tmp_path / "d", ["sea", "forest"], 2, 16, seed=0)
    generate_examples(tmp_path / "e", n=2, size=16, seed=0)
    real, written = dataset.write_tile, []

    def stopped(path, *args, **kwargs):  # killed after the first new tile
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "write_tile", stopped)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "d", ["sea", "forest"], 2, 16, seed=1)
    assert written == [tmp_path / "d" / "sea" / "sea_0000.tif"]
    assert not (tmp_path / "d" / "captions.csv").exists()
    assert not (tmp_path / "d" / "labels.csv").exists()
    written.clear()
    with pytest.raises(KeyboardInterrupt):
        generate_examples(tmp_path / "e", n=2, size=16, seed=1)
    assert written and not (tmp_path / "e" / "captions.csv").exists()


def test_example_tiles_of_an_earlier_generation_are_named(tmp_path: Path, caplog) -> None:
    # a folder of examples is read as a folder of images (inference.py --images DIR), so the
    # tiles of a larger earlier run would be classified along with the new ones
    generate_examples(tmp_path, n=3, size=16, seed=0)
    caplog.set_level("WARNING", logger="msclip.synthetic.dataset")
    generate_examples(tmp_path, n=3, size=16, seed=0)
    assert "did not write" not in caplog.text
    generate_examples(tmp_path, n=1, size=16, seed=0)
    assert "holds 2 tile(s) this run did not write (lake_01.tif, river_01.tif)" in caplog.text


def test_an_output_that_is_a_file_or_a_count_that_is_not_whole_is_refused(tmp_path: Path) -> None:
    """A file given as the dataset root raised a bare NotADirectoryError, and a fractional tile
    count a TypeError from deep inside (or, for generate_dataset, after the first tiles)."""
    from msclip.errors import OutputPathError
    from msclip.synthetic import generate_dense_dataset

    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputPathError, match="it is a file, not a folder"):
        generate_dataset(tmp_path / "f", ["sea"], 1, 8)
    with pytest.raises(OutputPathError, match="it is a file, not a folder"):
        generate_examples(tmp_path / "f", n=1, size=8)
    assert (tmp_path / "f").read_text() == "mine"
    with pytest.raises(SyntheticDataError, match=r"n_per_class=1\.5 is not a whole number"):
        generate_dataset(tmp_path / "d", ["sea"], 1.5, 8)
    with pytest.raises(SyntheticDataError, match=r"n_per_class=1\.5 is not a whole number"):
        generate_dense_dataset(tmp_path / "d", ["sea"], 1.5, 8)
    with pytest.raises(SyntheticDataError, match=r"n=2\.0 is not a whole number"):
        generate_examples(tmp_path / "d", n=2.0, size=8)
    assert not (tmp_path / "d").exists()


def test_labels_csv_numbers_the_chosen_classes_dense_labels_the_fixed_codes(tmp_path) -> None:
    """docs/scenes.md: labels.csv numbers the chosen classes 0..k-1 in CLASSES order, whatever
    order they were given in; dense label rasters and classes.csv use each class's index in
    CLASSES, the code `msclip-scenes classes` prints."""
    from msclip.synthetic import CLASSES, generate_dense_dataset

    chosen = ["sea", "forest", "snow_and_ice"]
    s = generate_dataset(tmp_path / "d", classes=chosen, n_per_class=1, size=16, seed=0)
    with open(s.labels_csv, newline="") as fh:
        rows = [(int(r["index"]), r["label"]) for r in csv.DictReader(fh)]
    assert rows == [(0, "sea"), (1, "snow and ice"), (2, "forest")]
    dense = tmp_path / "e"
    generate_dense_dataset(dense, chosen, 1, 16, seed=0, splits=(1.0, 0.0, 0.0))
    with open(dense / "classes.csv", newline="") as fh:
        codes = [(int(r["value"]), r["class"]) for r in csv.DictReader(fh)]
    assert codes == list(enumerate(CLASSES))
    with rasterio.open(dense / "labels" / "forest_0000.tif") as src:
        assert CLASSES.index("forest") in np.unique(src.read(1))
