"""Image-caption tables, datasets, augmentation and samplers of msclip.train."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import msclip
from msclip.spectral.bands import S2_L2A_BANDS
from msclip.train.data import (
    Augment,
    BadSampleError,
    ClassFolderDataset,
    EpochBatchSampler,
    PairCollator,
    PairDataset,
    ShardSampler,
    class_display_name,
    load_pairs,
    sample_crop,
    split_pairs,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tif(path: Path, seed: int, size: int = 16) -> None:
    from affine import Affine

    data = np.random.default_rng(seed).integers(0, 4000, (12, size, size)).astype(np.uint16)
    msclip.write_geotiff(
        path,
        data,
        crs="EPSG:32632",
        transform=Affine(10, 0, 0, 0, -10, 0),
        bands=list(S2_L2A_BANDS),
    )


def _scenes_like(root: Path, n: int = 8) -> Path:
    """A folder laid out like msclip.synthetic output: class folders + captions.csv."""
    rows = []
    for i in range(n):
        cls = ["Forest", "River"][i % 2]
        rel = f"{cls}/{cls}_{i}.tif"
        (root / cls).mkdir(parents=True, exist_ok=True)
        _tif(root / rel, i)
        rows.append(
            {
                "image": rel,
                "caption": f"{cls} scene {i}",
                "caption_2": f"alt {i}",
                "caption_3": "" if i % 2 else f"third {i}",
                "label": cls,
            }
        )
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root / "captions.csv"


@pytest.fixture(scope="module")
def preprocess() -> msclip.SpectralPreprocess:
    return msclip.create_model("msclip-tiny").preprocess()


def test_scenes_captions_table_is_read_as_it_is(tmp_path: Path) -> None:
    table = load_pairs(_scenes_like(tmp_path))
    assert len(table) == 8 and table.n_rows == 8 and not table.bad
    # Paths are relative to the table's folder; empty alternative captions are dropped.
    assert table.paths[0] == str(tmp_path / "Forest" / "Forest_0.tif")
    assert table.captions[0] == ["Forest scene 0", "alt 0", "third 0"]
    assert table.captions[1] == ["River scene 1", "alt 1"]


def test_bad_rows_are_counted_with_reasons(tmp_path: Path) -> None:
    _tif(tmp_path / "a.tif", 0)
    (tmp_path / "empty.tif").write_bytes(b"")
    rows = [
        {"image": "a.tif", "caption": "ok"},
        {"image": "missing.tif", "caption": "no file"},
        {"image": "empty.tif", "caption": "zero bytes"},
        {"image": "a.tif", "caption": "   "},
        {"image": "a.txt", "caption": "wrong extension"},
        {"image": "", "caption": "no path"},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    table = load_pairs(tmp_path / "t.csv")
    assert len(table) == 1 and table.n_rows == 6
    reasons = {r: reason for r, _, reason in table.bad}
    assert reasons[1] == "image file not found"
    assert reasons[2] == "image file is empty"
    assert reasons[3].startswith("empty caption")
    assert reasons[4].startswith("unsupported image extension")
    assert reasons[5] == "empty image path"


def test_tab_separated_tables_as_open_clip_writes_them(tmp_path: Path) -> None:
    _tif(tmp_path / "a.tif", 0)
    text = "filepath\ttitle\na.tif\ta river, seen from above\n"
    for name in ("t.csv", "t.tsv"):
        (tmp_path / name).write_text(text)
        table = load_pairs(tmp_path / name, "filepath", ["title"])
        assert table.captions == [["a river, seen from above"]] and not table.bad
    # a comma in the header keeps the comma: one column holding a tab is not split
    (tmp_path / "c.csv").write_text('image,caption\na.tif,"tab\there"\n')
    assert load_pairs(tmp_path / "c.csv").captions == [["tab\there"]]


def test_semicolon_and_tsv_tables_are_read_as_the_heads_read_them(tmp_path: Path) -> None:
    # one rule with msclip-finetune's tables (msclip.io.tables): a spreadsheet's semicolon export
    # was read as one column 'image;caption' and refused; a .tsv whose header holds a comma split
    # its rows at commas in the heads
    _tif(tmp_path / "a.tif", 0)
    (tmp_path / "s.csv").write_text("image;caption\na.tif;a river, seen from above\n")
    assert load_pairs(tmp_path / "s.csv").captions == [["a river, seen from above"]]
    (tmp_path / "t.tsv").write_text("image\tcaption, long\na.tif\ta river, seen\n")
    assert load_pairs(tmp_path / "t.tsv", "image", ["caption, long"]).captions == [
        ["a river, seen"]
    ]


def test_a_table_that_is_not_utf8_names_where_and_the_fix(tmp_path: Path) -> None:
    # a spreadsheet's Latin-1 export: pandas' error gave a position within its read buffer
    # ('position 3') and no fix
    _tif(tmp_path / "a.tif", 0)
    text = "image,caption\na.tif,a river\na.tif,for\xeat pr\xe8s de Z\xfcrich\n"
    (tmp_path / "t.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(BadSampleError) as info:
        load_pairs(tmp_path / "t.csv")
    where = text.encode("latin-1").index(b"\xea")
    assert f"is not UTF-8 text (invalid continuation byte at byte {where}, line 3)" in str(
        info.value
    )
    assert "save it as UTF-8" in str(info.value)
    (tmp_path / "t.csv").write_bytes(text.encode("utf-8-sig"))  # with a byte-order mark: read
    assert load_pairs(tmp_path / "t.csv").captions[1] == ["for\xeat pr\xe8s de Z\xfcrich"]


@pytest.mark.skipif(os.sep == "\\", reason="a backslash separates folders on Windows")
def test_paths_written_with_windows_backslashes_are_named(tmp_path: Path) -> None:
    # all rows 'image file not found', and the run's error asked whether data_root was wrong
    (tmp_path / "sea").mkdir()
    _tif(tmp_path / "sea" / "a.tif", 0)
    (tmp_path / "t.csv").write_text("image,caption\nsea\\a.tif,the sea\nsea\\b.tif,more sea\n")
    bad = load_pairs(tmp_path / "t.csv").bad
    assert [reason for _, _, reason in bad] == [
        "image file not found (its path separates folders with Windows backslashes: write "
        "them as '/')",
        "image file not found",  # no file of that name either way
    ]


def test_missing_columns_name_the_fix(tmp_path: Path) -> None:
    pd.DataFrame([{"path": "a.tif", "text": "x"}]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(BadSampleError, match="image_column"):
        load_pairs(tmp_path / "t.csv")
    with pytest.raises(BadSampleError, match="caption_columns"):
        load_pairs(tmp_path / "t.csv", image_column="path")
    assert load_pairs(tmp_path / "t.csv", "path", ["text"]).bad  # a.tif does not exist


def test_parquet_table(tmp_path: Path) -> None:
    _tif(tmp_path / "a.tif", 0)
    df = pd.DataFrame([{"image": "a.tif", "caption": "x"}, {"image": "a.tif", "caption": "y"}])
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(BadSampleError, match="pyarrow"):
            load_pairs(tmp_path / "t.parquet")
        return
    df.to_parquet(tmp_path / "t.parquet")
    assert load_pairs(tmp_path / "t.parquet").captions == [["x"], ["y"]]


def test_missing_and_list_cells_of_a_parquet_table(tmp_path: Path, monkeypatch) -> None:
    """A Parquet table read by pandas holds ``NA`` in nullable string columns (whose text is
    ``<NA>``) and arrays in ``list<string>`` columns: neither may become a caption's text."""
    import msclip.train.data as data

    _tif(tmp_path / "a.tif", 0)
    df = pd.DataFrame(
        {
            "image": ["a.tif", "a.tif", "a.tif", pd.NA],
            "caption": pd.array([pd.NA, "x", pd.NA, "y"], dtype="string"),
            "caption_2": [
                np.array(["one", "", "two"], dtype=object),
                np.array([], dtype=object),
                np.array([None], dtype=object),
                None,
            ],
        }
    )
    # the frame pd.read_parquet gives (pyarrow is optional, so the test does not write one)
    monkeypatch.setattr(data, "_read_table", lambda path: df)
    table = load_pairs(tmp_path / "t.parquet")
    assert table.captions == [["one", "two"], ["x"]]
    assert [(r, reason.split(" (")[0]) for r, _, reason in table.bad] == [
        (2, "empty caption"),
        (3, "empty image path"),
    ]


def test_images_embedded_in_a_table_are_one_error_without_their_bytes(
    tmp_path: Path, monkeypatch
) -> None:
    """A Parquet table of Hugging Face datasets holds each image as ``{"bytes", "path"}``: one
    error names the column and the fix, instead of a warning per row quoting the image bytes."""
    import msclip.train.data as data

    png = b"\x89PNG\r\n\x1a\n" + bytes(5000)
    df = pd.DataFrame({"image": [{"bytes": png, "path": f"{i}.png"} for i in range(3)],
                       "caption": ["a", "b", "c"]})  # fmt: skip
    monkeypatch.setattr(data, "_read_table", lambda path: df)
    with pytest.raises(
        BadSampleError, match=r"holds dict values with keys \['bytes', 'path'\]"
    ) as info:
        load_pairs(tmp_path / "t.parquet")
    assert info.value.param == "image_column" and len(str(info.value)) < 400


def test_struct_caption_cells_are_one_error_not_their_python_text(
    tmp_path: Path, monkeypatch
) -> None:
    """Caption cells of a Parquet struct column, or lists of structs (``[{raw, tokens}, ...]``
    as captioning sets publish sentences), are refused naming the column, not trained on as the
    text ``{'raw': ...}``."""
    import msclip.train.data as data

    _tif(tmp_path / "a.tif", 0)
    for cell in ({"raw": "a river", "tokens": ["a", "river"]}, [{"raw": "a river"}]):
        df = pd.DataFrame({"image": ["a.tif", "a.tif"], "caption": ["x", "y"],
                           "caption_2": [None, cell]})  # fmt: skip
        monkeypatch.setattr(data, "_read_table", lambda path, df=df: df)
        with pytest.raises(
            BadSampleError,
            match=r"caption column 'caption_2' holds struct values with keys \['raw'",
        ) as info:
            load_pairs(tmp_path / "t.parquet")
        assert info.value.param == "caption_columns"


def test_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    table = load_pairs(_scenes_like(tmp_path, 10))
    train, val = split_pairs(table, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert not set(train.paths) & set(val.paths)
    assert split_pairs(table, 0.2, seed=3)[1].paths == val.paths
    with pytest.raises(BadSampleError, match="val_fraction"):
        split_pairs(table, 0.05, seed=0)


def test_split_keeps_the_rows_of_one_image_together(tmp_path: Path) -> None:
    """A table of one row per caption (five rows per image, as captioning sets come) is split by
    image: no held-out image is also trained on; distinct images split as before."""
    for i in range(10):
        _tif(tmp_path / f"{i}.tif", i)
    rows = [
        {"image": f"{i}.tif", "caption": f"image {i} caption {j}"}
        for i in range(10)
        for j in range(5)
    ]
    rows[1]["image"] = "./0.tif"  # the same file spelt otherwise
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    table = load_pairs(tmp_path / "t.csv")
    train, val = split_pairs(table, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    keys = lambda t: {os.path.normpath(p) for p in t.paths}  # noqa: E731
    assert len(keys(val)) == 2 and not keys(train) & keys(val)
    with pytest.raises(BadSampleError, match="10 distinct images"):
        split_pairs(table, 0.1, seed=0)
    # one row per image: the split of before (a resumed run keeps its validation pairs)
    single = table.subset(range(0, 50, 5))
    train, val = split_pairs(single, 0.2, seed=3)
    perm = np.random.default_rng([3, 0x5B11]).permutation(10)
    assert val.rows == sorted(single.rows[i] for i in perm[:2])


def test_sample_crop_respects_ranges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = sample_crop(rng, 20, 30, (0.3, 0.6), (0.5, 2.0))
        assert 0 <= top <= 20 - h and 0 <= left <= 30 - w
        assert 0.25 <= h * w / 600 <= 0.65
        assert 0.45 <= w / h <= 2.2


def test_augmentation_is_band_agnostic_and_seeded(tmp_path: Path, preprocess) -> None:
    table = load_pairs(_scenes_like(tmp_path, 4))
    plain = PairDataset(table, preprocess)
    ref = plain[0]["image"]
    assert torch.equal(ref, preprocess(table.paths[0]))
    assert ref.shape == (10, 32, 32)
    # A full-frame crop and a certain horizontal flip: the same as flipping every band.
    flip = PairDataset(table, preprocess, augment=Augment((1.0, 1.0), (1.0, 1.0), 1.0, 0.0))
    torch.testing.assert_close(flip[(0, 0)]["image"], ref.flip(-1))
    aug = PairDataset(table, preprocess, seed=1, augment=Augment(), draw_captions=True)
    a, b = aug[(2, 5)], aug[(2, 5)]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert not torch.equal(aug[(2, 5)]["image"], aug[(2, 6)]["image"])
    drawn = {aug[(0, e)]["caption"] for e in range(30)}
    assert drawn == set(table.captions[0])
    assert {plain[(0, e)]["caption"] for e in range(5)} == {table.captions[0][0]}


def test_small_crops_of_readable_images_are_not_bad_samples(tmp_path: Path, preprocess) -> None:
    # 16-pixel tiles, crops of 10 to 20% of the area (5 to 7 pixels a side) and 8-pixel patches
    table = load_pairs(_scenes_like(tmp_path, 4))
    ds = PairDataset(table, preprocess, augment=Augment((0.1, 0.2), (0.75, 4 / 3)))
    for epoch in range(5):
        for i in range(len(ds)):
            item = ds[(i, epoch)]
            assert "error" not in item, item.get("error")
            assert item["image"].shape == (10, 32, 32)
    rng = np.random.default_rng(0)
    for _ in range(100):
        top, left, h, w = sample_crop(rng, 16, 12, (0.05, 0.1), (0.5, 2.0), min_side=8)
        assert h >= 8 and w >= 8 and 0 <= top <= 16 - h and 0 <= left <= 12 - w
    # a raster under one patch keeps its whole side (and is refused as too small when read)
    assert sample_crop(rng, 6, 40, (0.1, 0.1), (1.0, 1.0), min_side=8)[2] == 6


def test_unreadable_image_is_set_aside(tmp_path: Path, preprocess) -> None:
    csv = _scenes_like(tmp_path, 4)
    table = load_pairs(csv)
    Path(table.paths[1]).write_bytes(b"not a tiff at all")
    ds = PairDataset(table, preprocess)
    item = ds[1]
    assert "error" in item and "RasterReadError" in item["error"]
    tok = msclip.get_tokenizer("msclip-tiny")
    collate = PairCollator(tok, 10, 32, 77, table.paths)
    batch = collate([ds[i] for i in range(4)])
    assert batch["images"].shape == (3, 10, 32, 32) and batch["tokens"].shape == (3, 77)
    assert batch["indices"].tolist() == [0, 2, 3]
    assert batch["bad"][0][:2] == (1, table.paths[1])
    empty = collate([ds[1]])
    assert empty["images"].shape == (0, 10, 32, 32) and empty["tokens"].shape == (0, 77)


def test_an_image_without_a_valid_pixel_is_a_bad_sample(tmp_path: Path, preprocess) -> None:
    """A tile entirely of nodata (beyond a swath's edge) would train as a constant image of band
    means with its caption; one valid pixel is enough to be used."""
    from affine import Affine

    csv = _scenes_like(tmp_path, 4)
    table = load_pairs(csv)
    data = np.zeros((12, 16, 16), np.uint16)
    kw = dict(crs="EPSG:32632", transform=Affine(10, 0, 0, 0, -10, 0), bands=list(S2_L2A_BANDS))
    msclip.write_geotiff(table.paths[1], data, nodata=0, **kw)
    data[:, 3, 4] = 500
    msclip.write_geotiff(table.paths[2], data, nodata=0, **kw)
    for augment in (None, Augment()):
        ds = PairDataset(table, preprocess, augment=augment)
        assert ds[1]["error"] == "no valid pixel: every pixel is nodata or NaN"
        assert "image" in ds[2] and "image" in ds[0]


def test_process_slices_equal_the_single_process_batch() -> None:
    one = list(EpochBatchSampler(23, 8, 0, 1, seed=0, epoch=1))
    r0 = list(EpochBatchSampler(23, 8, 0, 2, seed=0, epoch=1))
    r1 = list(EpochBatchSampler(23, 8, 1, 2, seed=0, epoch=1))
    assert len(one) == 2  # 23 // 8, the partial batch is dropped
    for whole, a, b in zip(one, r0, r1):
        assert whole == a + b
        assert all(epoch == 1 for _, epoch in whole)
    assert list(EpochBatchSampler(23, 8, 0, 1, seed=0, epoch=1, start_step=1)) == one[1:]
    other = list(EpochBatchSampler(23, 8, 0, 1, seed=0, epoch=2))
    assert [i for i, _ in other[0]] != [i for i, _ in one[0]]
    with pytest.raises(ValueError, match="divisible"):
        EpochBatchSampler(23, 9, 0, 2, 0, 0)
    shards = [list(ShardSampler(7, 2, r, 2)) for r in range(2)]
    assert [i for s in shards for b in s for i in b] == list(range(7))


def test_class_folders(tmp_path: Path, preprocess) -> None:
    _scenes_like(tmp_path, 6)
    (tmp_path / "Empty").mkdir()
    # hidden folders and files are neither classes nor images
    forest = sorted((tmp_path / "Forest").iterdir())[0]
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / forest.name).write_bytes(forest.read_bytes())
    (tmp_path / "Forest" / f"._{forest.name}").write_bytes(b"\0\5\26\7")  # a macOS fork
    ds = ClassFolderDataset(tmp_path, preprocess, max_per_class=2)
    assert ds.classes == ["Forest", "River"]
    assert ds.labels == [0, 0, 1, 1] and ds[3]["label"] == 1
    assert not any(Path(q).name.startswith(".") for q in ds.paths)
    assert class_display_name("AnnualCrop") == "annual crop"
    assert class_display_name("Herbaceous_Vegetation") == "herbaceous vegetation"
    with pytest.raises(BadSampleError, match="two class folders"):
        ClassFolderDataset(tmp_path / "Empty", preprocess)


def test_zero_shot_items_carry_their_warnings(tmp_path: Path) -> None:
    """A 12-band tile warns that B01 is out of the model's range: the item carries the warning
    to the encoding engine, which counts it once per pass (not once per image)."""
    import warnings

    from affine import Affine

    import msclip
    from msclip.train.data import ClassFolderDataset

    for c in ("sea", "forest"):
        (tmp_path / c).mkdir()
        msclip.write_geotiff(tmp_path / c / "t.tif", np.full((12, 32, 32), 500, np.uint16),
                             crs="EPSG:32632", transform=Affine(10, 0, 0, 0, -10, 0))  # fmt: skip
    model = msclip.create_model("msclip-tiny")
    ds = ClassFolderDataset(tmp_path, model.preprocess())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        item = ds[0]
    assert "image" in item and any("B01" in text for _, text in item["warnings"])


def test_a_pair_tables_warnings_travel_with_its_items(tmp_path: Path) -> None:
    import warnings

    from affine import Affine

    from msclip.train.data import PairDataset, load_pairs

    rows = []
    for i in range(5):
        msclip.write_geotiff(tmp_path / f"t{i}.tif", np.full((12, 32, 32), 500, np.uint16),
                             crs="EPSG:32632", transform=Affine(10, 0, 0, 0, -10, 0))  # fmt: skip
        rows.append({"image": f"t{i}.tif", "caption": "a tile"})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    ds = PairDataset(load_pairs(tmp_path / "t.csv", "image", None, None),
                     msclip.create_model("msclip-tiny").preprocess())  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(5)]
    assert all("image" in it for it in items)
    # not printed by the reader (once per DataLoader worker and epoch): carried by each item...
    assert not [w for w in caught if "B01" in str(w.message)]
    assert all(any("B01" in text for _, text in it["warnings"]) for it in items)
    # ... and by the batch, for the training loop to show once per run
    from msclip.train.data import PairCollator

    batch = PairCollator(lambda c: torch.zeros((len(c), 4), dtype=torch.long), 10, 32, 4,
                         ds.table.paths)(items)  # fmt: skip
    assert sum("B01" in text for _, text in batch["warnings"]) == 5


def test_cut_captions_of_a_large_table_are_counted_on_a_sample_spread_over_it() -> None:
    """A table larger than ``most`` rows has the captions of ``most`` rows, spread evenly over
    it, checked (tokenizing every long caption of 10^6 rows took most of a minute)."""
    from msclip.train.data import PairTable, cut_captions

    long = "a detailed description of fields, forest and a river " * 12
    n = 100
    table = PairTable(
        paths=[f"/x/{i}.tif" for i in range(n)],
        captions=[[long if i % 2 else "a field"] for i in range(n)],
        rows=list(range(n)),
        n_rows=n,
    )
    tok = msclip.get_tokenizer("msclip-tiny")
    cut, checked = cut_captions(table, tok, most=None)
    assert checked == n and [r for r, _ in cut] == list(range(1, n, 2))
    cut, checked = cut_captions(table, tok, most=10)
    assert checked == 10 and 3 <= len(cut) <= 7 and all(r % 2 for r, _ in cut)
