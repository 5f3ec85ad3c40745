"""Tests of the dense outputs: land-cover labels and vegetation cover (msclip.synthetic.dense)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from msclip.errors import SyntheticDataError
from msclip.synthetic import (
    CLASSES,
    IGNORE_INDEX,
    LABEL_BAND,
    TARGET_BAND,
    generate_dataset,
    generate_dense_dataset,
    generate_dense_tile,
    generate_scene,
    generate_tile,
    write_label,
    write_scene,
    write_target,
)
from msclip.synthetic.dense import MAX_SCENE_SIDE
from msclip.synthetic.spectra import BAND_NAMES

B = {b: i for i, b in enumerate(BAND_NAMES)}
C = {c: i for i, c in enumerate(CLASSES)}


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose four neighbours are in it too (away from mixed edge pixels)."""
    p = np.pad(mask, 1, mode="edge")
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _tile_where(cls: str, ok, size: int = 32):  # type: ignore[no-untyped-def]
    """First seed whose tile satisfies ``ok(info)``, with its dense outputs."""
    for seed in range(80):
        if ok(generate_tile(cls, size, seed)[1]):
            return generate_dense_tile(cls, size, seed)
    raise AssertionError(f"no {cls} tile found")


def img_mean(image: np.ndarray, mask: np.ndarray, band: str) -> float:
    return float(image[B[band]][mask].mean())


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- in memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_dense_tile_is_the_plain_tile_plus_rasters(cls: str) -> None:
    image, label, target = generate_dense_tile(cls, (24, 40), 7)
    plain, info = generate_tile(cls, (24, 40), 7)
    np.testing.assert_array_equal(image, plain)  # no random draw of their own
    np.testing.assert_array_equal(label, info.label_map)
    assert label.dtype == np.uint8 and label.shape == (24, 40)
    assert target.dtype == np.float32 and target.shape == (24, 40)
    assert int(label.max()) < len(CLASSES) and not (label == IGNORE_INDEX).any()
    finite = target[np.isfinite(target)]
    assert finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
    np.testing.assert_array_equal(np.isnan(target), label == C["cloud"])


def test_coast_labels_follow_the_painted_water_and_land() -> None:
    image, label, target = _tile_where(
        "sea", lambda i: i.layout == "coast" and set(i.fractions) == {"sea", "grassland"}
    )
    sea, land = _interior(label == C["sea"]), _interior(label == C["grassland"])
    assert sea.sum() > 50 and land.sum() > 50
    img = image.astype(np.float64)
    # water: dark in the NIR and below the green; grass: the red edge
    assert (img[B["B08"]][sea] < img[B["B03"]][sea]).all()
    assert (img[B["B08"]][land] > 1.5 * img[B["B04"]][land]).all()
    assert float(target[sea].max()) == 0.0 and float(target[land].mean()) > 0.4


def test_road_pixels_are_labelled_urban() -> None:
    image, label, target = _tile_where(
        "forest", lambda i: "road" in i.features and set(i.fractions) == {"forest", "urban"}
    )
    road, forest = label == C["urban"], _interior(label == C["forest"])
    assert 0 < road.sum() < 0.2 * road.size
    # asphalt covers at least half of a road pixel: darker NIR, less vegetation than the forest
    assert img_mean(image, road, "B08") < 0.8 * img_mean(image, forest, "B08")
    assert float(target[road].mean()) < 0.7 * float(target[forest].mean())


def test_river_lake_and_cloud_labels() -> None:
    image, label, _ = _tile_where("river", lambda i: "cloud" not in i.fractions)
    river = _interior(label == C["river"])
    assert river.any()
    assert (image[B["B11"]][river] < 600).all()  # water absorbs in the SWIR
    image, label, target = _tile_where("cloud", lambda i: 0.6 < i.fractions["cloud"] < 0.95)
    cloud = label == C["cloud"]
    assert img_mean(image, _interior(cloud), "B02") > 2000
    assert np.isnan(target[cloud]).all() and np.isfinite(target[~cloud]).all()


def test_vegetation_cover_by_class() -> None:
    def mean_cover(cls: str) -> float:
        _, label, target = generate_dense_tile(cls, 32, 0)
        return float(np.nanmean(target[label == C[cls]]))

    assert mean_cover("forest") > 0.8
    assert mean_cover("grassland") > 0.4
    for bare in ("desert", "bare soil", "snow and ice", "beach", "lake"):
        assert mean_cover(bare) < 0.05, bare
    assert mean_cover("burnt area") < 0.1


def test_scene_has_regions_and_aligned_rasters() -> None:
    image, label, target = generate_scene(192, 5, region_size=48)
    assert image.shape == (12, 192, 192) and image.dtype == np.uint16 and image.min() >= 1
    assert label.shape == target.shape == (192, 192)
    assert len(np.unique(label)) >= 5
    np.testing.assert_array_equal(np.isnan(target), label == C["cloud"])
    again = generate_scene(192, 5, region_size=48)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(label, again[1])
    with pytest.raises(SyntheticDataError, match=f"scene size .* {MAX_SCENE_SIDE} .* several"):
        generate_scene(MAX_SCENE_SIDE + 1, 0)
    with pytest.raises(SyntheticDataError, match=r"region_size=4 pixels is too small"):
        generate_scene(64, 0, region_size=4)
    # NaN and infinity are not numbers of pixels, whatever a comparison with 16 makes of them
    for bad, said in ((float("nan"), "nan is not a finite number"),
                      (float("inf"), "inf is not a finite number"),
                      ("64", "'64' is not a number"), (True, "True is not a number")):  # fmt: skip
        with pytest.raises(SyntheticDataError, match=f"region_size={said}"):
            generate_scene(64, 0, region_size=bad)


# --- on disk ----------------------------------------------------------------------------------


def test_dense_dataset_layout_alignment_and_splits(tmp_path: Path) -> None:
    classes = ["sea", "forest", "cloud"]
    s = generate_dense_dataset(tmp_path, classes, n_per_class=10, size=24, seed=3)
    assert s.n_images == 30 and s.splits == {"train": 24, "val": 3, "test": 3}
    with open(s.index_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "label", "target", "split"]
    assert rows[0] == {"image": "images/sea_0000.tif", "label": "labels/sea_0000.tif",
                       "target": "targets/sea_0000.tif", "split": rows[0]["split"]}  # fmt: skip
    for cls in ("sea", "forest", "cloud"):  # stratified: 8 / 1 / 1 of each class
        splits = [r["split"] for r in rows if r["image"].startswith(f"images/{cls}_")]
        assert sorted(splits) == ["test"] + ["train"] * 8 + ["val"]
    counts = np.zeros(len(CLASSES), dtype=np.int64)
    for r in rows:
        with (
            rasterio.open(tmp_path / r["image"]) as im,
            rasterio.open(tmp_path / r["label"]) as lb,
            rasterio.open(tmp_path / r["target"]) as tg,
        ):
            for other in (lb, tg):
                assert other.crs == im.crs and other.transform == im.transform
                assert (other.width, other.height, other.count) == (im.width, im.height, 1)
            assert lb.dtypes == ("uint8",) and lb.nodata == IGNORE_INDEX
            assert lb.descriptions == (LABEL_BAND,) and tg.descriptions == (TARGET_BAND,)
            assert tg.dtypes == ("float32",) and np.isnan(tg.nodata)
            assert lb.tags()["CLASS_NAMES"].split(",") == list(CLASSES)
            label, target = lb.read(1), tg.read(1)
        np.testing.assert_array_equal(np.isnan(target), label == C["cloud"])
        counts += np.bincount(label.ravel(), minlength=len(CLASSES))
    with open(s.classes_csv, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["class"] for t in table] == list(CLASSES)
    assert sum(int(t["pixels"]) for t in table) == 30 * 24 * 24
    assert [int(t["pixels"]) for t in table] == counts.tolist()


def test_dense_images_are_the_dataset_tiles_byte_for_byte(tmp_path: Path) -> None:
    kw = {"classes": ["lake", "cropland"], "n_per_class": 3, "size": 32, "seed": 9}
    dense = generate_dense_dataset(tmp_path / "dense", **kw)
    generate_dataset(tmp_path / "flat", layout="flat", **kw)
    for rel in dense.files:
        name = Path(rel).name
        assert _sha(tmp_path / "dense" / rel) == _sha(tmp_path / "flat" / name), name


def test_dense_dataset_is_deterministic(tmp_path: Path) -> None:
    kw = {"classes": ["urban", "wetland"], "n_per_class": 4, "size": 16}
    generate_dense_dataset(tmp_path / "a", seed=1, **kw)
    generate_dense_dataset(tmp_path / "b", seed=1, **kw)
    generate_dense_dataset(tmp_path / "c", seed=2, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 3 * 8 + 2
    for f in files:
        assert _sha(tmp_path / "a" / f) == _sha(tmp_path / "b" / f), f
    labels = [f for f in files if f.parts[0] == "labels"]
    assert any(_sha(tmp_path / "a" / f) != _sha(tmp_path / "c" / f) for f in labels)


def test_bad_dense_arguments(tmp_path: Path) -> None:
    with pytest.raises(SyntheticDataError, match="splits"):
        generate_dense_dataset(tmp_path, ["sea"], 2, 16, splits=(0.5, 0.2, 0.2))
    with pytest.raises(SyntheticDataError, match="splits"):
        generate_dense_dataset(tmp_path, ["sea"], 2, 16, splits=(0.9, 0.1))
    with pytest.raises(SyntheticDataError, match=r"hold nan, which is not a finite number"):
        generate_dense_dataset(tmp_path, ["sea"], 2, 16, splits=(float("nan"), 0.5, 0.5))
    with pytest.raises(SyntheticDataError, match="n_per_class"):
        generate_dense_dataset(tmp_path, ["sea"], 0, 16)
    assert not any(tmp_path.iterdir())


def test_bad_splits_on_the_command_line_name_the_flag(tmp_path: Path, capsys) -> None:
    from msclip.cli.scenes import main

    code = main(["dense", "--out", str(tmp_path / "d"), "--splits", "0.8", "0.3", "0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "pass e.g. (0.8, 0.1, 0.1) (command-line option: --splits)" in err
    assert not (tmp_path / "d").exists()
    with pytest.raises(SyntheticDataError, match="class indices"):
        write_label(tmp_path / "l.tif", np.full((4, 4), 20, np.uint8), transform=None)
    with pytest.raises(SyntheticDataError, match="float"):
        write_target(tmp_path / "t.tif", np.zeros((4, 4), np.uint8), transform=None)
    assert not any(tmp_path.iterdir())


def test_write_scene(tmp_path: Path) -> None:
    s = write_scene(tmp_path, size=(160, 200), seed=2, region_size=48)
    assert s.n_images == 1 and s.splits == {"test": 1}
    with open(s.index_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"image": "images/scene.tif", "label": "labels/scene.tif",
                     "target": "targets/scene.tif", "split": "test"}]  # fmt: skip
    with (
        rasterio.open(tmp_path / "images/scene.tif") as im,
        rasterio.open(tmp_path / "labels/scene.tif") as lb,
    ):
        assert (im.height, im.width) == (160, 200)
        assert im.profile["tiled"] and im.block_shapes[0] == (256, 256)  # for windowed reads
        assert lb.transform == im.transform and lb.crs == im.crs
        assert im.descriptions == BAND_NAMES
        expected = generate_scene((160, 200), np.random.default_rng((2, 40_000)), region_size=48)
        np.testing.assert_array_equal(im.read(), expected[0])
        np.testing.assert_array_equal(lb.read(1), expected[1])


def test_scene_name_must_be_a_plain_stem(tmp_path):
    import pytest

    from msclip.errors import SyntheticDataError
    from msclip.synthetic import write_scene

    for bad in ("../../escape", "", "a/b", ".hidden"):
        with pytest.raises(SyntheticDataError, match="plain file stem"):
            write_scene(tmp_path / "o", 32, 0, name=bad)
    assert not (tmp_path / "o").exists() and not list(tmp_path.parent.glob("escape*"))


def test_a_split_that_rounds_to_no_tile_is_said(tmp_path, caplog):
    from msclip.synthetic import generate_dense_dataset

    caplog.set_level("WARNING", logger="msclip.synthetic.dense")
    summary = generate_dense_dataset(tmp_path / "d", ["sea", "forest"], 4, 16, 0, (0.8, 0.1, 0.1))
    assert summary.splits["val"] == summary.splits["test"] == 0
    assert "split val (fraction 0.1) gets no tile" in caplog.text
    assert "split test (fraction 0.1) gets no tile" in caplog.text


def test_a_stopped_regeneration_leaves_no_table_pairing_new_images_with_old_labels(
    tmp_path: Path, monkeypatch
) -> None:
    import msclip.synthetic.dense as dense

    write_scene(tmp_path, size=64, seed=1, region_size=32)
    assert (tmp_path / "index.csv").is_file()

    def stopped(*args, **kwargs):  # killed after the new image, before its label
        raise KeyboardInterrupt

    monkeypatch.setattr(dense, "write_label", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_scene(tmp_path, size=64, seed=2, region_size=32)
    assert not (tmp_path / "index.csv").exists()  # refused for the missing table, not mixed
    with pytest.raises(KeyboardInterrupt):
        generate_dense_dataset(tmp_path, ["sea"], n_per_class=2, size=16, seed=2)
    assert not (tmp_path / "index.csv").exists()


def test_rasters_of_an_earlier_generation_are_named(tmp_path: Path, caplog) -> None:
    # index.csv is replaced, so the earlier rasters left beside it are in no table any more;
    # a reader of the images/ and labels/ folders would still pair them up
    generate_dense_dataset(tmp_path, ["sea"], n_per_class=2, size=16, seed=0)
    caplog.set_level("WARNING", logger="msclip.synthetic.dataset")
    write_scene(tmp_path, size=16, seed=0, region_size=16)
    assert "holds 6 tile(s) this run did not write (images/sea_0000.tif" in caplog.text
    assert "they are not in index.csv" in caplog.text
    caplog.clear()
    generate_dense_dataset(tmp_path / "d", ["sea"], n_per_class=2, size=16, seed=0)
    generate_dense_dataset(tmp_path / "d", ["sea"], n_per_class=2, size=16, seed=0)
    assert "did not write" not in caplog.text  # the same generation again: nothing stale


def test_a_split_of_fraction_zero_stays_empty() -> None:
    """Rounding gave the tile of a one-tile class to train at 0/0.5/0.5 (both halves round to 0):
    a split asked to be empty stays empty; the usual counts are unchanged."""
    from msclip.synthetic.dense import _assign_splits

    for n in (1, 2, 3, 5):
        names = _assign_splits(n, (0.0, 0.5, 0.5), seed=0, ci=0)
        assert "train" not in names and len(names) == n
    assert sorted(_assign_splits(1, (0.0, 0.25, 0.75), 0, 0)) == ["test"]
    assert sorted(_assign_splits(1, (0.0, 0.75, 0.25), 0, 0)) == ["val"]
    counts = _assign_splits(10, (0.8, 0.1, 0.1), 0, 0)
    assert (counts.count("train"), counts.count("val"), counts.count("test")) == (8, 1, 1)
