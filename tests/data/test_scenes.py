"""Tests of the synthetic Sentinel-2 scene generator (msclip.data.scenes)."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio

from msclip.data import scenes
from msclip.data.scenes import (
    BAND_NAMES,
    CLASS_PHRASES,
    CLASSES,
    SceneError,
    UnknownClassError,
    caption_mentions,
    class_signature,
    generate_dataset,
    generate_examples,
    generate_tile,
    make_captions,
    write_tile,
)

B = {b: i for i, b in enumerate(BAND_NAMES)}
BRIEF_WAVELENGTHS = (0.443, 0.492, 0.560, 0.665, 0.704, 0.740, 0.783, 0.833, 0.865, 0.945,
                     1.614, 2.202)  # fmt: skip


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _main_means(cls: str, size: int, seed: int) -> np.ndarray:
    """Mean digital numbers per band over the pixels labelled with the tile's main class."""
    arr, info = generate_tile(cls, size, np.random.default_rng(seed))
    mask = info.label_map == CLASSES.index(cls)
    assert mask.any(), f"{cls} tile (seed {seed}) shows no pixel of its class"
    return arr[:, mask].astype(np.float64).mean(axis=1)


# --- signatures -------------------------------------------------------------------------------


def test_bands_are_the_l2a_bands_in_order() -> None:
    assert BAND_NAMES == (
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
    )  # fmt: skip
    np.testing.assert_allclose(scenes.WAVELENGTHS_UM, BRIEF_WAVELENGTHS, atol=0.0015)


def test_endmember_and_class_tables_are_complete() -> None:
    for em in scenes.ENDMEMBERS.values():
        assert len(em.reflectance) == 12
        assert all(0 < r <= 1 for r in em.reflectance), em.name
        assert em.source and em.description
    assert set(scenes.CLASS_MIXTURES) == set(CLASSES)
    for cls in CLASSES:
        mix = scenes.CLASS_MIXTURES[cls]
        assert set(mix) <= set(scenes.ENDMEMBERS)
        assert sum(mix.values()) == pytest.approx(1.0)
        assert scenes.CLASS_SOURCES[cls]
        # every phrase used in captions contains one of the class's keywords
        for form in ("name", "mass"):
            for phrase in CLASS_PHRASES[cls][form]:
                assert caption_mentions(phrase, cls), (cls, phrase)


def test_nominal_signatures_have_the_physical_features() -> None:
    sig = {c: class_signature(c) for c in CLASSES}

    def ndsi(s: np.ndarray) -> float:
        return float((s[B["B03"]] - s[B["B11"]]) / (s[B["B03"]] + s[B["B11"]]))

    for water in ("sea", "lake", "river"):
        s = sig[water]
        assert s[B["B08"]] < s[B["B03"]] and s[B["B11"]] < 0.02 and s[B["B12"]] < 0.02
    for veg in ("forest", "cropland", "grassland", "wetland"):
        s = sig[veg]
        assert s[B["B08"]] > 2 * s[B["B04"]], veg  # red edge
        assert s[B["B07"]] > s[B["B05"]] > s[B["B04"]], veg
    assert ndsi(sig["snow and ice"]) > 0.7 and sig["snow and ice"][B["B03"]] > 0.8
    assert ndsi(sig["cloud"]) < 0.3 and sig["cloud"].min() > 0.25  # bright incl. SWIR
    assert sig["burnt area"][B["B12"]] > sig["burnt area"][B["B08"]]
    assert sig["burnt area"][B["B08"]] < 0.5 * sig["forest"][B["B08"]]
    for dry in ("desert", "bare soil", "beach"):
        assert sig[dry][B["B11"]] > sig[dry][B["B08"]] > sig[dry][B["B04"]] > sig[dry][B["B02"]]
    spread = sig["urban"].max() / sig["urban"].min()
    assert spread < 3  # built-up surfaces have flat spectra


# --- tiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_generate_tile_format(cls: str) -> None:
    arr, info = generate_tile(cls, (24, 40), np.random.default_rng(3))
    assert arr.dtype == np.uint16 and arr.shape == (12, 24, 40)
    assert arr.min() >= 1  # 0 is nodata
    bright = np.isin(info.label_map, [CLASSES.index("snow and ice"), CLASSES.index("cloud")])
    assert arr[:, ~bright].max() <= 10000
    assert arr.max() <= 16000
    assert info.main == cls and info.label_map.shape == (24, 40)
    assert info.fractions[cls] > 0
    assert sum(info.fractions.values()) == pytest.approx(1.0)
    assert set(info.secondary) <= set(info.fractions) - {cls}
    assert info.roles[cls] == "main"


@pytest.mark.parametrize("seed", range(4))
def test_values_are_physically_sensible(seed: int) -> None:
    m = {c: _main_means(c, 32, seed) for c in CLASSES}

    def g(cls: str, band: str) -> float:
        return float(m[cls][B[band]])

    def ndvi(cls: str) -> float:
        return (g(cls, "B08") - g(cls, "B04")) / (g(cls, "B08") + g(cls, "B04"))

    assert g("forest", "B08") > 2 * g("forest", "B04")
    for water in ("sea", "lake", "river"):
        assert g(water, "B08") < g(water, "B03"), water
    assert g("sea", "B11") < 500
    assert g("snow and ice", "B03") > 5000
    assert g("snow and ice", "B11") < g("snow and ice", "B03") / 3
    assert g("cloud", "B02") > 3000 and g("cloud", "B11") > 2000
    assert (g("cloud", "B03") - g("cloud", "B11")) / (g("cloud", "B03") + g("cloud", "B11")) < 0.4
    assert g("burnt area", "B12") > g("burnt area", "B08")
    assert g("desert", "B11") > g("desert", "B08") > g("desert", "B04") > g("desert", "B02")
    assert ndvi("desert") < 0.25 and ndvi("bare soil") < 0.3
    assert g("bare soil", "B11") > g("bare soil", "B08")
    for veg in ("grassland", "wetland"):
        assert ndvi(veg) > 0.3, veg
    assert ndvi("cropland") > 0.15  # some fields may be bare or harvested
    assert ndvi("urban") < 0.5
    assert g("beach", "B04") > 1500


def test_same_seed_same_tile_and_different_seed_different_tile() -> None:
    a1, i1 = generate_tile("cropland", 32, np.random.default_rng(11))
    a2, i2 = generate_tile("cropland", 32, 11)  # an int seed works too
    a3, _ = generate_tile("cropland", 32, np.random.default_rng(12))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(i1.label_map, i2.label_map)
    assert i1 == i2
    assert not np.array_equal(a1, a3)


def test_tiles_vary_within_a_class() -> None:
    means = np.array([_main_means("forest", 24, s)[B["B08"]] for s in range(8)])
    assert means.std() > 50  # per-tile gains, mixtures and textures
    arr, _ = generate_tile("grassland", 32, 0)
    assert arr[B["B08"]].std() > 20  # spatial texture, not a flat tile


def test_layouts_place_secondary_classes() -> None:
    river = generate_tile("river", 48, 0)[1]
    assert river.layout == "river" and river.roles[river.secondary[0]] == "background"
    # a river tile shows a band of water with land on both sides
    assert 0.05 < river.fractions["river"] < 0.6
    beach = [generate_tile("beach", 32, s)[1] for s in range(6)]
    assert all("sea" in i.fractions and i.layout == "coast" for i in beach)
    lake = generate_tile("lake", 32, 1)[1]
    assert lake.layout == "lake" and len(lake.fractions) >= 2
    layouts = {generate_tile(c, 32, s)[1].layout for c in CLASSES for s in range(3)}
    assert {"coast", "fields", "urban blocks", "cloud cover", "snowfield", "burn scar"} <= layouts


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(UnknownClassError, match=r"unknown land-cover class 'jungle'.*forest"):
        generate_tile("jungle", 32, 0)
    with pytest.raises(SceneError, match="too small"):
        generate_tile("sea", 4, 0)
    with pytest.raises(SceneError, match="height, width"):
        generate_tile("sea", "big", 0)  # type: ignore[arg-type]
    assert scenes.normalize_class_name("Snow_and_Ice") == "snow and ice"
    assert scenes.class_slug("burnt area") == "burnt_area"
    with pytest.raises(SceneError, match="layout"):
        generate_dataset("unused", layout="zip")
    with pytest.raises(SceneError, match="seed"):
        next(scenes.iter_samples(seed=-1))


# --- captions ---------------------------------------------------------------------------------


def _first_mention(caption: str, cls: str) -> int:
    text = caption.lower()
    hits = [
        m.start()
        for k in scenes.CLASS_SYNONYMS[cls]
        for m in re.finditer(r"(?<![a-z])" + re.escape(k), text)
    ]
    return min(hits) if hits else -1


def test_captions_name_the_main_class_first() -> None:
    seen_secondary = 0
    texts: dict[str, set[str]] = {c: set() for c in CLASSES}
    for sample in scenes.iter_samples(n_per_class=6, size=24, seed=5):
        caps = sample.captions
        assert len(caps) == 3 and all(isinstance(c, str) and c for c in caps)
        for cap in caps:
            main_at = _first_mention(cap, sample.info.main)
            assert main_at >= 0, (sample.info.main, cap)
            for other in sample.info.secondary:
                at = _first_mention(cap, other)
                if at >= 0:
                    seen_secondary += 1
                    assert main_at <= at, (cap, sample.info.main, other)
        texts[sample.info.main].update(caps)
    assert seen_secondary > 10  # secondary classes are described some of the time
    for cls, caps in texts.items():
        assert len(caps) >= 10, cls  # varied wording


def test_captions_use_synonyms_and_are_reproducible() -> None:
    _, info = generate_tile("sea", 24, 0)
    words = " ".join(c.lower() for s in range(40) for c in make_captions(info, s))
    assert all(w in words for w in ("ocean", "open water", "the sea"))
    _, crop = generate_tile("cropland", 24, 0)
    words = " ".join(c.lower() for s in range(40) for c in make_captions(crop, s))
    assert "farmland" in words and "agricultural" in words and "cropland" in words
    assert make_captions(info, 7) == make_captions(info, 7)
    assert make_captions(info, 7, n=1)[0] == make_captions(info, 7, n=3)[0]
    with pytest.raises(SceneError):
        make_captions(info, 0, n=0)


def test_burned_forest_phrasing_only_over_forest() -> None:
    for s in range(30):
        _, info = generate_tile("burnt area", 24, s)
        caps = make_captions(info, s, n=3)
        if info.roles.get("forest") != "background":
            assert not any("forest" in c.lower() for c in caps), caps


# --- files ------------------------------------------------------------------------------------


def test_write_tile_geotiff(tmp_path: Path) -> None:
    arr, _ = generate_tile("forest", 32, 0)
    transform = scenes.tile_transform(3, 32)
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
        np.testing.assert_array_equal(src.read(), arr)
    assert [p.name for p in tmp_path.rglob("*")] == ["sub", "t.tif"]  # no temp file left
    with pytest.raises(SceneError, match="uint16"):
        write_tile(tmp_path / "f.tif", arr.astype(np.float32) / 10000)
    with pytest.raises(SceneError, match="band names"):
        write_tile(tmp_path / "b.tif", arr[:10])


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


def test_generate_examples(tmp_path: Path) -> None:
    s = generate_examples(tmp_path, n=16, size=16, seed=0)
    names = sorted(p.name for p in tmp_path.glob("*.tif"))
    assert len(names) == 16 and "sea_01.tif" in names and "sea_02.tif" in names
    assert "snow_and_ice_01.tif" in names and "burnt_area_01.tif" in names
    assert s.counts["sea"] == 2 and s.labels_csv is None
    with open(tmp_path / "captions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and rows[0]["image"] == "sea_01.tif" and rows[0]["label"] == "sea"


# --- command line -----------------------------------------------------------------------------


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
    with pytest.raises(SystemExit):
        scenes.main(["dataset", "--out", str(out), "--n-per-class", "0"])
