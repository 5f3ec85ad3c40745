"""Benchmark dataset layouts: indexing, band names, labels, resampling, YAML datasets."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import Resampling
from support import mini_benchmark as mb

from msclip.eval.datasets import (
    DATASETS,
    ClassList,
    DatasetFormatError,
    DatasetNotFoundError,
    UnknownDatasetError,
    build_dataset,
    classnames_dir,
    get_spec,
    load_classnames,
    load_dataset_yaml,
    read_mapping_file,
)
from msclip.eval.layouts import BIGEARTHNET_BANDS, EUROSAT_MS_BANDS, resample_to
from msclip.spectral import LLAMA3_MS_CLIP_BANDS, RGB_BANDS, SpectralPreprocess, get_stats


def _ms_transform(size: int = 16) -> SpectralPreprocess:
    s = get_stats("llama3-ms-clip")
    return SpectralPreprocess(LLAMA3_MS_CLIP_BANDS, s.mean, s.std, size, s.divisor)


def _rgb_transform(size: int = 16) -> SpectralPreprocess:
    s = get_stats("openai")
    return SpectralPreprocess(RGB_BANDS, s.mean, s.std, size, s.divisor, pil_rgb=True)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    mb.all_layouts(root)
    return root


# -- class-name files ------------------------------------------------------------------------
def test_shipped_class_lists_have_the_published_class_counts():
    counts = {"eurosat": 10, "resisc45": 45, "aid": 30, "meterml": 7, "forestnet": 4,
              "bigearthnet19": 19}  # fmt: skip
    for name, n in counts.items():
        cl = load_classnames(name)
        assert len(cl) == n, name
        assert len(set(cl.names)) == n, name
    eurosat = load_classnames("eurosat")
    assert eurosat.labels[0] == "AnnualCrop" and eurosat.names[0] == "annual crops"
    # Without "= name" the label itself is the prompt name.
    resisc = load_classnames("resisc45")
    assert resisc.labels == resisc.names and "baseball_diamond" in resisc.labels


def test_bigearthnet_43_to_19_mapping_is_complete_and_consistent():
    mapping = read_mapping_file(classnames_dir() / "bigearthnet_43_to_19.txt")
    nineteen = set(load_classnames("bigearthnet19").labels)
    assert len(mapping) == 43
    assert {v for v in mapping.values() if v} == nineteen
    dropped = sorted(k for k, v in mapping.items() if not v)
    assert dropped == sorted([
        "Road and rail networks and associated land", "Port areas", "Airports",
        "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
        "Sport and leisure facilities", "Bare rock", "Burnt areas", "Intertidal flats",
    ])  # fmt: skip
    assert mapping["Transitional woodland/shrub"] == "Transitional woodland, shrub"
    assert mapping["Annual crops associated with permanent crops"] == "Permanent crops"


def test_class_lists_from_files_mappings_and_errors(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("# comment\nA = alpha land\n\nB\n")
    cl = load_classnames(str(f))
    assert cl.labels == ("A", "B") and cl.names == ("alpha land", "B")
    assert load_classnames({"x": "ex", "y": "why"}).names == ("ex", "why")
    f.write_text("A\nA = again\n")
    with pytest.raises(DatasetFormatError, match="twice"):
        load_classnames(str(f))
    with pytest.raises(DatasetFormatError, match="not found"):
        load_classnames("no_such_list")
    with pytest.raises(DatasetFormatError):
        ClassList((), ())


def test_class_name_files_saved_with_a_byte_order_mark(tmp_path):
    """A list saved by a Windows editor starts with a byte-order mark: not part of the first
    label (which then matched no class folder, CSV or JSON label)."""
    f = tmp_path / "c.txt"
    f.write_bytes(b"\xef\xbb\xbfAnnualCrop = annual crops\nForest\n")
    assert load_classnames(str(f)).labels == ("AnnualCrop", "Forest")
    f.write_bytes(b"\xef\xbb\xbfAirports =\nPastures = Pastures\n")
    assert read_mapping_file(f) == {"Airports": "", "Pastures": "Pastures"}


# -- registry --------------------------------------------------------------------------------
def test_registry_covers_every_published_dataset():
    assert set(DATASETS) == {
        "EuroSAT_MS", "EuroSAT_RGB", "BigEarthNet_MS", "BigEarthNet_RGB", "METERML_MS",
        "METERML_RGB", "METERML_NAIP", "RESISC45_RGB", "AID_RGB", "ForestNet_RGB",
    }  # fmt: skip
    assert get_spec("eurosat_ms").name == "EuroSAT_MS"
    assert DATASETS["BigEarthNet_MS"].multi_label and not DATASETS["EuroSAT_MS"].multi_label
    with pytest.raises(UnknownDatasetError, match="built-in datasets"):
        get_spec("ImageNet")


def test_missing_dataset_names_the_expected_place_and_the_readme(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"benchmark_datasets/README\.md") as e:
        build_dataset("AID_RGB", tmp_path)
    assert str(tmp_path / "AID_RGB") in str(e.value)


# -- EuroSAT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["EuroSAT_MS", "BigEarthNet_MS", "ForestNet_RGB", "METERML_MS"])
def test_a_dataset_folder_of_another_tree_names_the_readme(tmp_path, name):
    # The folder is there but holds nothing the layout reads (unpacked one level too deep,
    # another archive): the error points to where the expected tree is described.
    folder = {"EuroSAT_MS": "EuroSAT_MS", "BigEarthNet_MS": "BigEarthNet",
              "ForestNet_RGB": "ForestNet_RGB", "METERML_MS": "METER-ML"}[name]  # fmt: skip
    (tmp_path / folder / "unpacked" / "x").mkdir(parents=True)
    with pytest.raises((DatasetFormatError, DatasetNotFoundError)) as e:
        build_dataset(name, tmp_path, require_split_list=True)
    assert f"the expected tree of {name} is in benchmark_datasets/README.md" in str(e.value)


def test_a_custom_dataset_of_another_tree_names_the_readme_section(tmp_path):
    yaml_path = tmp_path / "mine.yaml"
    (tmp_path / "data").mkdir()
    yaml_path.write_text("name: Mine\nlayout: csv\nroot: data\nclasses: [a, b]\n")
    with pytest.raises(DatasetNotFoundError, match=r"README\.md, section Custom datasets"):
        build_dataset(yaml_path, None)


def test_eurosat_ms_split_file_and_band_order_by_name(bench):
    ds = build_dataset("EuroSAT_MS", bench)
    # The split file lists <Class>_1.jpg names; they select the .tif files by stem.
    assert len(ds) == 10
    assert sorted(Path(s.path).name for s in ds.samples) == sorted(
        f"{c}_1.tif" for c in mb.EUROSAT_CLASSES
    )
    assert ds.index.split_source.endswith("eurosat-test.txt")
    assert ds.index.skipped == {"not in eurosat-test.txt": 10}
    data, names, _ = ds.read(0)
    assert names == EUROSAT_MS_BANDS and names[-1] == "B8A"
    with rasterio.open(ds.samples[0].path) as src:
        raw = src.read()
    np.testing.assert_array_equal(data, raw)
    # The model's B8A channel is the file's 13th band, not its 9th (which is B09).
    t = _ms_transform()
    ds.set_transform(t)
    x, target, idx = ds[0]
    assert target == ds.samples[0].target == 0 and idx == 0
    b8a = LLAMA3_MS_CLIP_BANDS.index("B8A")
    only_b8a = t.process(raw[[12]], ("B8A",))
    assert x.shape == (10, 16, 16)
    expect = t.process(raw, EUROSAT_MS_BANDS)
    torch.testing.assert_close(x, expect, rtol=0, atol=0)
    torch.testing.assert_close(x[b8a], only_b8a[b8a], rtol=0, atol=0)
    assert ds.band_mapping is not None and "B10" in ds.band_mapping["ignored"]


def test_eurosat_split_file_listing_missing_images_is_an_error(bench, tmp_path):
    root = tmp_path / "EuroSAT_MS"
    shutil.copytree(bench / "EuroSAT_MS", root)
    (root / "eurosat-test.txt").write_text("AnnualCrop_1.jpg\nForest_999.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"lists 1 image not under"):
        build_dataset("EuroSAT_MS", tmp_path)


def test_a_split_without_its_list_is_refused_when_others_have_one(bench):
    with pytest.raises(DatasetFormatError, match=r"no split list for split 'tset'.*\['test'\]"):
        build_dataset("EuroSAT_MS", bench, split="tset", require_split_list=True)


def test_folder_that_is_not_a_class_is_an_error(bench, tmp_path):
    root = tmp_path / "EuroSAT_RGB"
    shutil.copytree(bench / "EuroSAT_RGB", root)
    (root / "2750" / "Clouds").mkdir()
    with pytest.raises(DatasetFormatError, match="not classes: \\['Clouds'\\]"):
        build_dataset("EuroSAT_RGB", tmp_path)


def test_eurosat_rgb_reads_every_image_without_a_split_file(bench):
    ds = build_dataset("EuroSAT_RGB", bench, transform=_rgb_transform())
    assert len(ds) == 20 and "no split file" in ds.index.split_source
    assert [s.target for s in ds.samples] == [i for i in range(10) for _ in range(2)]
    data, names, _ = ds.read(3)
    assert names == ("red", "green", "blue") and data.dtype == np.uint8
    x, t, _ = ds[3]
    assert x.shape == (3, 16, 16) and t == 1


# -- BigEarthNet -----------------------------------------------------------------------------
def test_bigearthnet_labels_are_mapped_to_the_19_classes(bench):
    ds = build_dataset("BigEarthNet_MS", bench)
    assert len(ds) == 6 and ds.num_classes == 19 and ds.multi_label
    names = list(ds.classes.labels)

    def positives(i: int) -> set[str]:
        t = ds.target(i)
        assert t.dtype == np.uint8 and t.shape == (19,)
        return {names[j] for j in np.flatnonzero(t)}

    assert positives(0) == {"Urban fabric", "Industrial or commercial units"}
    assert positives(1) == {"Arable land", "Pastures"}
    assert positives(2) == {"Coniferous forest", "Mixed forest", "Inland waters"}
    assert positives(4) == {"Transitional woodland, shrub", "Inland wetlands"}
    assert positives(5) == set()  # "Airports" has no 19-class counterpart


def test_bigearthnet_bands_are_resampled_to_the_10m_grid_as_rasterio_does(bench):
    ds = build_dataset("BigEarthNet_MS", bench)
    data, names, _ = ds.read(0)
    assert names == BIGEARTHNET_BANDS and data.shape == (12, 12, 12)
    patch = Path(ds.samples[0].path)
    for band in ("B01", "B05", "B02"):
        with rasterio.open(patch / f"{patch.name}_{band}.tif") as src:
            ref = src.read(1, out_shape=(12, 12), resampling=Resampling.bilinear)
        np.testing.assert_array_equal(data[names.index(band)], ref.astype(np.float32))


def test_resample_to_is_bilinear_with_half_pixel_centres():
    x = np.array([[[0.0, 10.0]]], dtype=np.float32)  # 1 x 2 -> 1 x 4
    out = resample_to(x, (1, 4))
    np.testing.assert_allclose(out[0, 0], [0.0, 2.5, 7.5, 10.0])
    ints = np.array([[[0, 1]]], dtype=np.uint16)
    np.testing.assert_array_equal(resample_to(ints, (1, 4))[0, 0], [0, 0, 1, 1])  # 0.25 -> 0


def test_bigearthnet_reads_only_bands_the_model_uses_with_the_same_result(bench):
    t = _ms_transform()
    ds = build_dataset("BigEarthNet_MS", bench, transform=t)
    assert set(ds.layout.needed_bands) == set(LLAMA3_MS_CLIP_BANDS)  # no B01, no B09
    x, _, _ = ds[1]
    ds.layout.needed_bands = None
    full, names, _ = ds.read(1)
    assert "B01" in names and "B09" in names
    torch.testing.assert_close(x, t.process(full, names), rtol=0, atol=0)


def test_bigearthnet_rgb_is_an_8bit_true_colour_picture(bench):
    ds = build_dataset("BigEarthNet_RGB", bench, transform=_rgb_transform())
    assert ds.layout.needed_bands == ("B04", "B03", "B02")
    data, names, _ = ds.read(2)
    assert names == ("red", "green", "blue") and data.dtype == np.uint8
    patch = Path(ds.samples[2].path)
    with rasterio.open(patch / f"{patch.name}_B04.tif") as src:
        red = src.read(1).astype(np.float64)
    np.testing.assert_array_equal(data[0], np.clip(np.rint(red * 255 / 2750), 0, 255))


def test_bigearthnet_unknown_label_is_reported(bench, tmp_path):
    root = tmp_path / "BigEarthNet"
    shutil.copytree(bench / "BigEarthNet", root)
    patch = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (patch / f"{patch.name}_labels_metadata.json").write_text(json.dumps({"labels": ["Lava"]}))
    ds = build_dataset("BigEarthNet_MS", tmp_path)
    with pytest.raises(DatasetFormatError, match="'Lava'"):
        ds.target(0)


def test_bigearthnet_without_split_file_uses_every_patch(bench, tmp_path):
    root = tmp_path / "BigEarthNet" / "sentinel-2"  # the original release's tree
    shutil.copytree(bench / "BigEarthNet", root)
    (root / "bigearthnet-test.csv").unlink()
    ds = build_dataset("BigEarthNet_MS", tmp_path)
    assert len(ds) == 6 and "no split file" in ds.index.split_source


# -- samples a split lists but the disk lacks --------------------------------------------------
@pytest.mark.parametrize(
    ("name", "folder", "remove"),
    [
        ("ForestNet_RGB", "ForestNet_RGB", "examples/-1.500_111.000/images/visible/composite.png"),
        ("BigEarthNet_MS", "BigEarthNet", "S2A_MSIL2A_20170613T101031_1_41"),
        ("BigEarthNet_MS", "BigEarthNet",
         "S2A_MSIL2A_20170613T101031_2_42/S2A_MSIL2A_20170613T101031_2_42_B8A.tif"),
        ("METERML_MS", "METER-ML", "test_images/001_site/sentinel-2-20m.npy"),
        ("METERML_NAIP", "METER-ML", "test_images/002_site/naip.png"),
    ],
)  # fmt: skip
def test_a_listed_sample_missing_on_disk_fails_the_dataset(bench, tmp_path, name, folder, remove):
    # as in the class-folder layout: an incomplete published split is refused, naming the file,
    # not evaluated on the samples that are there (its numbers would not compare)
    shutil.copytree(bench / folder, tmp_path / folder)
    target = tmp_path / folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetFormatError, match=r"1 sample.*incomplete") as err:
        build_dataset(name, tmp_path)
    assert remove.split("/")[-1] in str(err.value) and "complete the download" in str(err.value)


def test_a_custom_csv_row_naming_a_missing_image_fails_the_dataset(bench, tmp_path):
    yaml = mb.custom_multilabel(tmp_path)
    listed = sorted(p for p in (tmp_path / "custom").rglob("*.tif"))
    listed[-1].unlink()
    with pytest.raises(DatasetFormatError, match="incomplete") as err:
        build_dataset(yaml, tmp_path)
    assert listed[-1].name in str(err.value)


# -- METER-ML --------------------------------------------------------------------------------
def test_meterml_geojson_layout_single_label_and_products(bench):
    ms = build_dataset("METERML_MS", bench)
    assert len(ms) == 7 and ms.index.skipped == {"images with several facility types": 1}
    assert [ms.classes.labels[s.target] for s in ms.samples] == list(mb.METERML_CLASSES)
    assert ms.classes.names[ms.classes.labels.index("Negative")] == "other features"
    data, names, _ = ms.read(0)
    assert data.shape == (13, 12, 12)
    assert names[:4] == ("B04", "B03", "B02", "B08") and names[-3:] == ("B01", "B09", "B10")
    raw10 = np.load(Path(ms.samples[0].path) / "sentinel-2-10m.npy")
    np.testing.assert_array_equal(data[2], raw10[:, :, 2])  # B02 is channel 2 of the array
    ms.set_transform(_ms_transform())
    # The 60 m product (B01, B09, B10) feeds no model band and is not read.
    assert set(ms.layout.needed_bands) == set(LLAMA3_MS_CLIP_BANDS)
    assert ms[0][0].shape == (10, 16, 16)

    rgb = build_dataset("METERML_RGB", bench)
    data, names, _ = rgb.read(0)
    assert names == ("red", "green", "blue") and data.dtype == np.uint8
    np.testing.assert_array_equal(
        data[0], np.clip(np.rint(raw10[:, :, 0].astype(np.float64) * 255 / 2750), 0, 255)
    )
    naip = build_dataset("METERML_NAIP", bench)
    data, names, _ = naip.read(0)
    assert names == ("red", "green", "blue") and data.shape == (3, 20, 20)
    # read as the RGB product is: each channel feeds one of B04, B03, B02 (with the ADS100
    # camera's own bands the blue channel fed nothing and B02 was mean-filled)
    from msclip.spectral.adapt import map_bands

    mapping = map_bands(LLAMA3_MS_CLIP_BANDS, names)
    assert mapping.permutation is None and not mapping.ignored
    fed = {m: [names[j] for j in np.flatnonzero(mapping.matrix[i])]
           for i, m in enumerate(mapping.model_bands)}  # fmt: skip
    assert fed["B02"] == ["blue"] and fed["B03"] == ["green"] and fed["B04"] == ["red"]


def test_a_meterml_geojson_saved_with_a_byte_order_mark(tmp_path):
    ds = mb.meterml(tmp_path)
    geojson = ds / "test_dataset.geojson"
    geojson.write_bytes(b"\xef\xbb\xbf" + geojson.read_bytes())  # edited on Windows
    assert len(build_dataset("METERML_MS", tmp_path)) == 7


def test_a_meterml_split_of_multi_facility_images_only_is_said_so(tmp_path):
    """Every feature with several facility types (left out by the single-label protocol): a
    clear refusal, not an index error."""
    import json

    root = tmp_path / "bench"
    mb.meterml(root)
    geojson = root / "METER-ML" / "test_dataset.geojson"
    doc = json.loads(geojson.read_text())
    for feat in doc["features"]:
        feat["properties"]["Type"] = "CAFOs-Landfills"
    geojson.write_text(json.dumps(doc))
    n = len(doc["features"])
    with pytest.raises(DatasetFormatError, match=rf"all {n} features have several facility"):
        build_dataset("METERML_MS", root)


def test_meterml_class_folders_without_geojson(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("CAFOs", "Negative"):
        mb._png(tmp_path / "METERML_NAIP" / c / "x.png", rng)
    ds = build_dataset("METERML_NAIP", tmp_path)
    assert len(ds) == 2 and "class folders" in ds.index.detail
    assert [s.target for s in ds.samples] == [0, 3]


# -- RESISC45, AID, ForestNet ----------------------------------------------------------------
def test_resisc45_and_aid(bench):
    r = build_dataset("RESISC45_RGB", bench)
    assert len(r) == 45 and r.index.split_source.endswith("resisc45-test.txt")
    assert r.class_names[2] == "baseball_diamond"  # normalised later by msclip.zero_shot
    a = build_dataset("AID_RGB", bench)
    assert len(a) == 30 and a.num_classes == 30 and a.class_names[1] == "bare land"


def test_forestnet_csv_layout(bench, tmp_path):
    ds = build_dataset("ForestNet_RGB", bench)
    assert len(ds) == 8 and [s.target for s in ds.samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ds.samples[0].path.endswith("images/visible/composite.png")
    assert ds.read(0)[1] == ("red", "green", "blue")
    root = tmp_path / "ForestNet_RGB"
    shutil.copytree(bench / "ForestNet_RGB", root)
    (root / "test.csv").write_text("label,example_path\nOther,examples/x\n")
    with pytest.raises(DatasetFormatError, match="no column 'merged_label'"):
        build_dataset("ForestNet_RGB", tmp_path)


# -- YAML datasets ---------------------------------------------------------------------------
def test_custom_yaml_multilabel_csv_dataset(bench):
    spec = load_dataset_yaml(bench / "my_crops.yaml")
    assert spec.name == "MyCrops" and spec.multi_label and spec.templates == "short"
    ds = build_dataset(bench / "my_crops.yaml", dataset_dir=None)
    assert ds.class_names == ["maize field", "wheat field", "open water"]
    targets = np.stack([ds.target(i) for i in range(len(ds))])
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    _, names, _ = ds.read(0)  # bands from the files' descriptions
    assert names == ("B02", "B03", "B04", "B08")


def test_custom_yaml_folder_dataset_with_declared_bands(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("dry", "wet"):
        mb._tif(tmp_path / "data" / c / "a.tif", rng, 4, size=8)
    (tmp_path / "ds.yaml").write_text(
        "name: Soil\nlayout: folder\nroot: data\nclasses: [dry, wet]\n"
        "bands: [B08, B04, B03, B02]\nextensions: [tif]\n"
    )
    ds = build_dataset(tmp_path / "ds.yaml", dataset_dir=None)
    assert len(ds) == 2 and ds.read(0)[1] == ("B08", "B04", "B03", "B02")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: X\nlayout: folder\nclasses: [a]\ncolour: red\n", "unknown keys"),
        ("name: X\nlayout: folder\n", "'classes' is required"),
        ("name: X\nlayout: zip\nclasses: [a]\n", "unknown layout"),
        ("name: X\nlayout: csv\nclasses: [a]\ntask: regression\n", "unknown task"),
        ("name: X\nlayout: folder\nclasses: [a]\nbands: [B99]\n", "unknown band"),
        ("name: X\nlayout: folder\nclasses: [a, b]\nname: Y\n", "key 'name' is given twice"),
        ("name: X\nlayout: folder\nclasses: {0: a, 1: b, 0: c}\n", "key 0 is given twice"),
    ],
)
def test_bad_yaml_datasets_are_rejected(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_dataset_yaml(p)


# -- subsets and workers ---------------------------------------------------------------------
def test_max_samples_is_a_seeded_subset(bench):
    a = build_dataset("RESISC45_RGB", bench, max_samples=7, seed=3)
    b = build_dataset("RESISC45_RGB", bench, max_samples=7, seed=3)
    c = build_dataset("RESISC45_RGB", bench, max_samples=7, seed=4)
    assert len(a) == 7 and [s.id for s in a.samples] == [s.id for s in b.samples]
    assert [s.id for s in a.samples] != [s.id for s in c.samples]


def test_dataset_is_picklable_for_workers(bench):
    ds = build_dataset("METERML_MS", bench, transform=_ms_transform())
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[2][0], ds[2][0], rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    images, targets, idx = next(iter(loader))
    assert images.shape == (4, 10, 16, 16) and idx.tolist() == [0, 1, 2, 3]
    assert targets.tolist() == [s.target for s in ds.samples[:4]]


def test_downloads_as_they_come(tmp_path):
    """Archive artefacts, byte-order marks, torchgeo's tree, duplicates and missing classes."""
    import shutil

    ds = mb.eurosat_ms(tmp_path / "a")
    (ds / "2750" / "__MACOSX" / "Forest").mkdir(parents=True)  # a zip made on macOS
    (ds / "2750" / "__MACOSX" / "Forest" / "._Forest_1.tif").write_bytes(b"\x00")
    split = ds / "eurosat-test.txt"
    split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes())  # saved by a Windows editor
    full = build_dataset("EuroSAT_MS", tmp_path / "a")
    assert len(full) == len(mb.EUROSAT_CLASSES)
    # a class folder emptied by an incomplete download: recorded, not silently absent
    (split).unlink()
    for f in (ds / "2750" / "SeaLake").iterdir():
        f.unlink()
    part = build_dataset("EuroSAT_MS", tmp_path / "a")
    assert part.index.skipped == {"classes without images: SeaLake": 1}
    # one sample as two files
    shutil.copyfile(
        ds / "2750" / "Forest" / "Forest_1.tif", ds / "2750" / "Forest" / "Forest_1.TIFF"
    )
    with pytest.raises(DatasetFormatError, match="share the name 'Forest_1'"):
        build_dataset("EuroSAT_MS", tmp_path / "a")
    # torchgeo's RESISC45 tree: the list beside NWPU-RESISC45/, which is the root found
    rs = mb.resisc45(tmp_path / "b")
    tg = tmp_path / "tg"
    shutil.move(str(rs), str(tg / "NWPU-RESISC45"))
    shutil.move(str(tg / "NWPU-RESISC45" / "resisc45-test.txt"), str(tg / "resisc45-test.txt"))
    r = build_dataset("RESISC45_RGB", tg)
    assert len(r) == len(mb.RESISC45_CLASSES) and r.index.split_source.endswith("resisc45-test.txt")


def test_samples_listed_twice_count_once_or_are_refused(tmp_path, caplog):
    ben = mb.bigearthnet(tmp_path / "a")
    split = ben / "bigearthnet-test.csv"
    lines = split.read_text().splitlines(keepends=True)
    split.write_text("".join(lines + lines[:1]))  # one patch listed twice
    assert len(build_dataset("BigEarthNet_MS", tmp_path / "a")) == len(lines)
    assert "lists 1 sample more than once" in caplog.text
    fn = mb.forestnet(tmp_path / "b")
    rows = (fn / "test.csv").read_text().splitlines(keepends=True)
    (fn / "test.csv").write_text("".join(rows + rows[1:2]))  # a row repeated: maybe relabelled
    with pytest.raises(DatasetFormatError, match="repeats the sample of line 2"):
        build_dataset("ForestNet_RGB", tmp_path / "b")
    # the v2 archive (reBEN) is named for what it is
    v2 = tmp_path / "c" / "BigEarthNet"
    (v2 / "BigEarthNet-S2").mkdir(parents=True)
    (v2 / "metadata.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetFormatError, match="looks like BigEarthNet v2"):
        build_dataset("BigEarthNet_MS", tmp_path / "c")
    # and so are its tile folders of patch folders placed directly there, without the parquet
    bare = tmp_path / "d" / "BigEarthNet"
    patch = bare / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    patch = patch / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    patch.mkdir(parents=True)
    (patch / f"{patch.name}_B02.tif").write_bytes(b"II*\0")
    with pytest.raises(DatasetFormatError, match="looks like BigEarthNet v2"):
        build_dataset("BigEarthNet_MS", tmp_path / "d")


def test_meterml_training_images_in_their_several_archives(tmp_path):
    import json
    import shutil

    ds = mb.meterml(tmp_path)
    with pytest.raises(DatasetFormatError, match="not of the train split"):
        build_dataset("METERML_MS", tmp_path, split="train")
    # the train split as distributed: train_images/train_images_<n>/<site>
    doc = json.loads((ds / "test_dataset.geojson").read_text())
    for k, feat in enumerate(doc["features"]):
        site = Path(feat["properties"]["Image_Folder"]).name
        src = ds / feat["properties"]["Image_Folder"]
        dst = ds / "train_images" / f"train_images_{k % 3 + 1}" / site
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst)
        feat["properties"]["Image_Folder"] = f"train_images/{site}"
    (ds / "train_dataset.geojson").write_text(json.dumps(doc))
    train = build_dataset("METERML_MS", tmp_path, split="train")
    test = build_dataset("METERML_MS", tmp_path, split="test")
    assert len(train) == len(test) and np.array_equal(train.read(0)[0], test.read(0)[0])


def _folders(root: Path, names: dict[str, list[str]]) -> Path:
    for cls, files in names.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            (root / cls / f).write_bytes(b"")  # the index reads names, not pixels
    return root


def test_a_class_the_split_leaves_out_is_noted_and_warned_as_a_class_without_images(
    tmp_path, capsys
):
    """A listed class with images none of which the split names stays a zero-shot choice but has
    nothing to measure: recorded in ``skipped`` and warned, as a class without images is, and
    under --quiet both go unshown alike."""
    from msclip.cli.common import setup_logging
    from msclip.eval.layouts import CsvLayout, FolderLayout

    root = _folders(tmp_path / "crops", {"wheat": ["1.tif"], "maize": ["2.tif"], "water": []})
    (root / "test.txt").write_text("wheat/1.tif\n")
    layout = FolderLayout(["wheat", "maize", "water"], split_files=("{split}.txt",))
    for quiet in (False, True):
        restore = setup_logging(quiet=quiet)
        try:
            idx = layout.index(root, "test")
        finally:
            restore()
        err = capsys.readouterr().err
        assert idx.skipped == {
            "classes without images: water": 1,
            "not in test.txt": 1,
            "classes not in test.txt: maize": 1,
        }
        assert ("no images for 1 of 3 classes (water)" in err) is not quiet
        assert ("test.txt lists no sample of 1 of 3 classes (maize)" in err) is not quiet
    # a split table with no row of a class says so too
    (root / "test.csv").write_text("path,label\nwheat/1.tif,wheat\nmaize/2.tif,maize\n")
    csv_idx = CsvLayout(["wheat", "maize", "water"], csv_files=("{split}.csv",)).index(root, "test")
    assert csv_idx.skipped == {"classes not in test.csv: water": 1}


def test_a_split_file_selects_images_within_their_class_folders(tmp_path):
    """``wheat/0001.tif`` is that class's file, not every class's 0001; a bare name that several
    classes hold is refused; the skipped count is what was left out; a name may hold a comma."""
    from msclip.eval.layouts import FolderLayout

    root = _folders(tmp_path / "crops", {c: ["0001.tif", "0002.tif", "0003.tif"]
                                         for c in ("wheat", "maize", "water")})  # fmt: skip
    layout = FolderLayout(["wheat", "maize", "water"], split_files=("{split}.txt",))
    (root / "test.txt").write_text("wheat/0001.tif\nmaize\\0002.tif\n")
    idx = layout.index(root, "test")
    assert sorted(s.id for s in idx.samples) == ["maize/0002.tif", "wheat/0001.tif"]
    assert idx.skipped == {"not in test.txt": 7, "classes not in test.txt: water": 1}
    (root / "test.txt").write_text("0001.jpg\n")  # a bare name of three classes
    with pytest.raises(DatasetFormatError, match=r"lists 1 name that several class folders hold .*"
                       r"'0001.jpg'.*with its class folder"):  # fmt: skip
        layout.index(root, "test")
    _folders(root, {"wheat": ["plot 1, north.tif"]})
    (root / "test.txt").write_text("plot 1, north.tif\nwater/0003.tif\n")
    idx = layout.index(root, "test")
    assert sorted(s.id for s in idx.samples) == ["water/0003.tif", "wheat/plot 1, north.tif"]


def test_split_entries_without_extension_whose_names_hold_dots(tmp_path):
    """``tile_51.5_7.2`` (coordinates, dates) names ``tile_51.5_7.2.tif``, not a file
    ``tile_51.5_7``; Windows line ends and trailing spaces are not part of a name."""
    from msclip.eval.layouts import FolderLayout

    root = _folders(tmp_path / "crops", {"wheat": ["tile_51.5_7.2.tif", "tile_51.5_7.3.tif"],
                                         "water": ["tile_52.0_7.2.TIF"]})  # fmt: skip
    layout = FolderLayout(["wheat", "water"], split_files=("{split}.txt",))
    (root / "test.txt").write_bytes(b"tile_51.5_7.2\r\nwater/tile_52.0_7.2 \r\n")
    idx = layout.index(root, "test")
    assert sorted(s.id for s in idx.samples) == [
        "water/tile_52.0_7.2.TIF",
        "wheat/tile_51.5_7.2.tif",
    ]
    (root / "test.txt").write_text("tile_51.5_7.2.jpg\n")  # the published lists' .jpg names
    assert [s.id for s in layout.index(root, "test").samples] == ["wheat/tile_51.5_7.2.tif"]


def test_a_csv_dataset_from_a_spreadsheet_and_its_repeated_rows(tmp_path):
    """ "CSV UTF-8" from a spreadsheet starts with a byte-order mark; ``./a.tif`` and ``a.tif``
    are one sample."""
    from msclip.eval.layouts import CsvLayout

    (tmp_path / "imgs").mkdir()
    for n in ("a", "b"):
        (tmp_path / "imgs" / f"{n}.tif").write_bytes(b"")
    layout = CsvLayout(["sea", "forest"])
    (tmp_path / "test.csv").write_text("\ufeffpath,label\nimgs/a.tif,sea\nimgs/b.tif,forest\n",
                                       encoding="utf-8")  # fmt: skip
    assert len(layout.index(tmp_path, "test").samples) == 2
    (tmp_path / "test.csv").write_text("path,label\nimgs/a.tif,sea\n./imgs//a.tif,forest\n")
    with pytest.raises(DatasetFormatError, match=r"line 3 repeats the sample of line 2"):
        layout.index(tmp_path, "test")


def test_a_csv_dataset_written_on_windows_and_its_short_rows(tmp_path):
    """Paths with backslashes (a table written on Windows, with its line ends) name the same
    images as with slashes; a row without its path cell is named, not an AttributeError."""
    from msclip.eval.layouts import CsvLayout

    (tmp_path / "imgs").mkdir()
    for n in ("a", "b"):
        (tmp_path / "imgs" / f"{n}.tif").write_bytes(b"")
    layout = CsvLayout(["sea", "forest"])
    (tmp_path / "test.csv").write_bytes(b"path,label\r\nimgs\\a.tif,sea\r\nimgs\\b.tif,forest\r\n")
    idx = layout.index(tmp_path, "test")
    assert [(s.id, s.target) for s in idx.samples] == [("imgs/a.tif", 0), ("imgs/b.tif", 1)]
    assert all(Path(s.path).is_file() for s in idx.samples)
    (tmp_path / "test.csv").write_text("label,path\nsea,imgs/a.tif\nforest\n")
    with pytest.raises(DatasetFormatError, match=r"line 3 has no value in column 'path'"):
        layout.index(tmp_path, "test")


def test_class_folders_named_in_decomposed_unicode_are_their_classes(tmp_path):
    """An archive made on macOS stores ``Forêt`` as ``Fore`` + combining circumflex (NFD): the
    same class, not a folder that is not one (whose name printed the same as the class's)."""
    import unicodedata

    from msclip.eval.layouts import FolderLayout

    root = _folders(tmp_path / "cls", {unicodedata.normalize("NFD", "Forêt"): ["a.tif"],
                                       "Eau": ["b.tif"]})  # fmt: skip
    idx = FolderLayout(["Forêt", "Eau"]).index(root, "test")
    found = sorted((Path(s.path).name, s.target) for s in idx.samples)
    assert found == [("a.tif", 0), ("b.tif", 1)]
