"""Labelled data of the heads runner: the three sources, the documented splits, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import mini_benchmark as mb

import msclip
from msclip.errors import HeadInputError
from msclip.heads.data import from_benchmark, from_csv, from_folders, split_indices


def _touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def _table(tmp_path: Path, header: str, rows: list[str], name: str = "t.csv") -> Path:
    for r in rows:
        _touch(tmp_path / r.split(",")[0])
    p = tmp_path / name
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


# -- the seeded rule ---------------------------------------------------------------------------
def test_seeded_split_is_stratified_deterministic_and_disjoint():
    labels = np.repeat([0, 1, 2], [10, 20, 2])
    a = split_indices(len(labels), labels, 0.1, 0.2, seed=3)
    b = split_indices(len(labels), labels, 0.1, 0.2, seed=3)
    c = split_indices(len(labels), labels, 0.1, 0.2, seed=4)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a[s], b[s])
    assert any(not np.array_equal(a[s], c[s]) for s in a)
    together = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(together.tolist()) == list(range(len(labels)))
    # per class: round(n * fraction); a class of two stays in train
    assert np.bincount(labels[a["test"]], minlength=3).tolist() == [2, 4, 0]
    assert np.bincount(labels[a["val"]], minlength=3).tolist() == [1, 2, 0]
    assert np.bincount(labels[a["train"]], minlength=3).tolist() == [7, 14, 2]
    # the rule of the docstring, by hand, for class 1
    members = np.flatnonzero(labels == 1)
    perm = members[np.random.default_rng((3, 1)).permutation(len(members))]
    assert set(perm[:4]) == set(a["test"][labels[a["test"]] == 1])


# -- CSV tables --------------------------------------------------------------------------------
def test_csv_classification_with_split_column_and_class_file(tmp_path):
    rows = [f"img/{i}.tif,{'wheat' if i % 2 else 'maize'},{['train', 'val', 'test'][i % 3]}"
            for i in range(12)]  # fmt: skip
    table = _table(tmp_path, "path,crop,split", rows)
    names = tmp_path / "classes.txt"
    names.write_text("wheat = wheat field\nmaize = maize field\n")
    d = from_csv(table, label_columns=["crop"], classes=str(names))
    assert d.names == ["wheat", "maize"] and d.prompt_names == ["wheat field", "maize field"]
    assert d.targets.tolist() == [1 if i % 2 == 0 else 0 for i in range(12)]
    assert d.splits["test"].tolist() == [2, 5, 8, 11]
    assert d.split_source["test"].startswith("column 'split'")
    assert d.items[0] == str(tmp_path / "img" / "0.tif")


def test_integer_labels_are_classes_in_numeric_order(tmp_path):
    """Labels 0 .. 11 are classes 0 .. 11 (pandas' and scikit-learn's order of an integer
    column): as text, '10' and '11' came before '2', and class index 2 was label '10'."""
    rows = [f"img/{i}.tif,{i % 12},{['train', 'val', 'test'][i % 3]}" for i in range(36)]
    d = from_csv(_table(tmp_path, "path,code,split", rows), label_columns=["code"])
    assert d.names == [str(c) for c in range(12)]
    assert d.targets.tolist() == [i % 12 for i in range(36)]
    # labels that are not all integers keep the order of their text
    rows = [f"img/{i}.tif,{['10', '2', 'sea'][i % 3]},{['train', 'val', 'test'][i % 3]}"
            for i in range(9)]  # fmt: skip
    assert from_csv(_table(tmp_path, "path,c,split", rows, "m.csv"), label_columns=["c"]).names == [
        "10",
        "2",
        "sea",
    ]


def test_csv_multilabel_columns_and_joined_labels(tmp_path):
    rows = [f"a{i}.tif,{i % 2},{(i // 2) % 2}" for i in range(10)]
    d = from_csv(_table(tmp_path, "path,water,trees", rows), task="multi-label",
                 label_columns=["water", "trees"], split_column=None, val_fraction=0.2,
                 test_fraction=0.2)  # fmt: skip
    assert d.names == ["water", "trees"] and d.targets.shape == (10, 2)
    assert d.targets[:, 0].tolist() == [i % 2 for i in range(10)]
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    rows = [f"b{i}.tif,{'water;trees' if i % 3 == 0 else 'trees'}" for i in range(6)]
    d = from_csv(_table(tmp_path, "path,labels", rows, "j.csv"), task="multi-label",
                 label_separator=";", val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    assert d.names == ["trees", "water"]
    assert d.targets[:, 1].tolist() == [1, 0, 0, 1, 0, 0]


def _csv_rows(tmp_path: Path, name: str, rows: list[list[str]]) -> Path:
    """A table written by the csv module (cells with commas, quotes and newlines quoted)."""
    import csv

    for r in rows[1:]:
        _touch(tmp_path / r[0])
    p = tmp_path / name
    with open(p, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return p


@pytest.mark.parametrize(
    "cells",
    [
        ['["Arable land", "Pastures"]', '["Pastures"]', "[]"],  # JSON
        ["['Arable land', 'Pastures']", "['Pastures']", "[]"],  # str() of a Python list
        ["['Arable land'\n 'Pastures']", "['Pastures']", "[]"],  # str() of a NumPy array
        ["[Arable land, Pastures]", "[Pastures]", "[ ]"],  # bare items
    ],
)
def test_csv_multilabel_cells_written_as_lists(tmp_path, cells):
    # BigEarthNet's labels are lists; split at "," they became the classes "['Arable land'" and
    # "'Pastures']" (and "['Pastures']"), with no error
    rows = [["path", "labels"]] + [[f"l{i}.tif", cells[i % 3]] for i in range(9)]
    table = _csv_rows(tmp_path, "l.csv", rows)
    for separator in (None, ","):
        d = from_csv(table, task="multi-label", label_columns=["labels"],
                     label_separator=separator, val_fraction=0.2, test_fraction=0.2)  # fmt: skip
        assert d.names == ["Arable land", "Pastures"]
        assert d.targets[:3].tolist() == [[1, 1], [0, 1], [0, 0]]  # [] : no class


def test_csv_multilabel_list_cells_that_do_not_read_are_named(tmp_path):
    rows = [["path", "labels"], ["m0.tif", "['a', 'b']"], ["m1.tif", "['a' b]"]]
    with pytest.raises(HeadInputError, match=r"line 3 .*m1\.tif.*\['a' b\]"):
        from_csv(_csv_rows(tmp_path, "m.csv", rows), task="multi-label", label_columns=["labels"])
    rows = [["path", "labels"], ["n0.tif", "['a', 'b']"], ["n1.tif", "a;b"]]
    with pytest.raises(HeadInputError, match=r"line 3 .*'a;b', not a list of labels"):
        from_csv(_csv_rows(tmp_path, "n.csv", rows), task="multi-label", label_columns=["labels"])


def test_csv_multilabel_columns_take_their_prompts_from_the_class_list_by_label(tmp_path):
    # the class file in another order than the columns gave 'water' the prompt of 'trees'
    rows = [f"c{i}.tif,{i % 2},{(i // 2) % 2}" for i in range(10)]
    table = _table(tmp_path, "path,water,trees", rows)
    names = tmp_path / "classes.txt"
    names.write_text("trees = forest canopy\nsnow = snow cover\nwater = open water\n")
    d = from_csv(table, task="multi-label", label_columns=["water", "trees"], classes=str(names))
    assert d.names == ["water", "trees"]
    assert d.prompt_names == ["open water", "forest canopy"]
    assert d.describe()["prompt_names"] == ["open water", "forest canopy"]
    names.write_text("trees = forest canopy\n")
    with pytest.raises(HeadInputError, match=r"label columns \['water'\] are not among"):
        from_csv(table, task="multi-label", label_columns=["water", "trees"], classes=str(names))


def test_csv_regression_scale_and_nan_refused_with_row_named(tmp_path):
    rows = [f"r{i}.tif,{i * 100},{i}" for i in range(10)]
    d = from_csv(_table(tmp_path, "path,cover,h", rows), task="regression",
                 value_columns=["cover", "h"], scale=0.01, split_column=None)  # fmt: skip
    np.testing.assert_allclose(d.targets[:, 0], np.arange(10) * 1.0)
    assert d.targets.shape == (10, 2) and d.names == ["cover", "h"]
    rows[4] = "r4.tif,nan,4"
    with pytest.raises(HeadInputError, match=r"line 6 .*r4.tif.*'cover' is 'nan'"):
        from_csv(_table(tmp_path, "path,cover,h", rows, "n.csv"), task="regression",
                 value_columns=["cover", "h"])  # fmt: skip
    rows[4] = "r4.tif,,4"
    with pytest.raises(HeadInputError, match="line 6"):
        from_csv(_table(tmp_path, "path,cover,h", rows, "e.csv"), task="regression",
                 value_columns=["cover"])  # fmt: skip


def test_csv_bad_input_is_named(tmp_path):
    rows = ["x0.tif,a", "x1.tif,", "x2.tif,b"]
    with pytest.raises(HeadInputError, match=r"line 3 .*missing label"):
        from_csv(_table(tmp_path, "path,label", rows))
    rows = ["x0.tif,a", "x1.tif,c", "x2.tif,b"]
    with pytest.raises(HeadInputError, match=r"label 'c' is not one of the classes \['a', 'b'\]"):
        from_csv(_table(tmp_path, "path,label", rows, "u.csv"), classes=["a", "b"])
    with pytest.raises(HeadInputError, match="no column"):
        from_csv(_table(tmp_path, "path,label", rows, "m.csv"), label_columns=["crop"])
    (tmp_path / "x1.tif").unlink()
    with pytest.raises(HeadInputError, match=r"do not exist \(line 3: .*x1\.tif\)") as err:
        from_csv(tmp_path / "m.csv")
    assert f"the folder relative paths start from ({tmp_path})" in str(err.value)
    assert err.value.param == "data_root"  # the programs name --data-root
    rows = [f"y{i}.tif,{'ab'[i % 2]},{'train' if i < 6 else 'val'}" for i in range(8)]
    with pytest.raises(HeadInputError, match="the test split is empty"):
        from_csv(_table(tmp_path, "path,label,split", rows, "s.csv"))


def test_csv_split_column_with_train_and_test_rows_only(tmp_path):
    # the layout most published tables have; it was refused ("the val split is empty") although
    # split files of the same two splits take validation out of train
    rows = [f"v{i}.tif,{'ab'[i % 2]},{'test' if i >= 14 else 'train'}" for i in range(20)]
    d = from_csv(_table(tmp_path, "path,label,split", rows), val_fraction=0.2)
    assert d.splits["test"].tolist() == list(range(14, 20))
    assert list(d.splits) == ["train", "val", "test"]
    fitted = sorted(d.splits["train"].tolist() + d.splits["val"].tolist())
    assert fitted == list(range(14)) and len(d.splits["val"]) == 2  # one per class
    assert np.bincount(d.targets[d.splits["val"]]).tolist() == [1, 1]
    assert d.split_source["test"].startswith("column 'split'")
    assert "of the given train split, val_fraction 0.2" in d.split_source["val"]


@pytest.mark.parametrize("sep", [";", "\t"])
def test_csv_separated_by_semicolons_or_tabs(tmp_path, sep):
    # a spreadsheet's export where the comma is the decimal mark: one column 'path;label;value'
    rows = [f"s{i}.tif{sep}{'ab'[i % 2]}{sep}{i},5" for i in range(10)]
    for r in rows:
        _touch(tmp_path / r.split(sep)[0])
    table = tmp_path / "s.csv"
    table.write_text(sep.join(["path", "label", "value"]) + "\n" + "\n".join(rows) + "\n")
    d = from_csv(table, split_column=None, val_fraction=0.2)
    assert d.names == ["a", "b"] and d.targets.tolist() == [i % 2 for i in range(10)]
    with pytest.raises(HeadInputError, match=r"line 2 .*'0,5', not a finite number"):
        from_csv(table, task="regression")  # a decimal comma is named, not misread


def test_a_table_that_is_not_utf8_is_named_with_the_line_and_the_fix(tmp_path):
    """A spreadsheet's Latin-1 export: the csv module's error ('position 4095' of a read chunk)
    became "cannot read table"; the line of the first bad byte and the fix are named, as
    msclip-train names them (msclip.io.tables.where_not_utf8)."""
    rows = [f"s{i}.tif,{'ab'[i % 2]}" for i in range(600)] + ["s600.tif,caf\u00e9"]
    for r in rows:
        _touch(tmp_path / r.split(",")[0])
    table = tmp_path / "latin1.csv"
    table.write_bytes(("path,label\n" + "\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(HeadInputError, match=r"latin1.csv is not UTF-8 text \(.* at byte \d+, "
                       r"line 602\); save it as UTF-8") as info:  # fmt: skip
        from_csv(table, split_column=None, val_fraction=0.2)
    assert info.value.param == "csv"


def test_tables_split_columns_by_the_rule_msclip_train_reads_by(tmp_path):
    # a .tsv file is tab-separated whatever its header holds (a comma in a column name split the
    # header at the comma and the rows nowhere); a tab decides before a semicolon
    rows = [f"s{i}.tif\t{'ab'[i % 2]}; x" for i in range(10)]
    for r in rows:
        _touch(tmp_path / r.split("\t")[0])
    tsv = tmp_path / "s.tsv"
    tsv.write_text("path\tcrop, 2020\n" + "\n".join(rows) + "\n")
    d = from_csv(tsv, label_columns=["crop, 2020"], split_column=None, val_fraction=0.2)
    assert d.names == ["a; x", "b; x"]
    tabs = tmp_path / "s.csv"
    tabs.write_text("path\tcrop; 2020\n" + "\n".join(rows) + "\n")
    d = from_csv(tabs, label_columns=["crop; 2020"], split_column=None, val_fraction=0.2)
    assert d.names == ["a; x", "b; x"]


def test_csv_image_listed_twice_is_refused(tmp_path):
    # duplicated rows would be split apart by the seeded rule: the same image in train and test
    rows = [f"z{i}.tif,{'ab'[i % 2]}" for i in range(10)] + ["./z3.tif,b"]
    with pytest.raises(HeadInputError, match=r"lines 5 and 12 name the same image"):
        from_csv(_table(tmp_path, "path,label", rows, "d.csv"))


# -- class folders -----------------------------------------------------------------------------
def _folders(root: Path, classes: dict[str, int]) -> Path:
    for c, n in classes.items():
        for i in range(n):
            _touch(root / c / f"{c}_{i}.tif")
    return root


def test_folders_seeded_split_and_split_files(tmp_path):
    root = _folders(tmp_path / "ds", {"sea": 10, "forest": 10})
    d = from_folders(root, val_fraction=0.2, test_fraction=0.2)
    assert d.names == ["forest", "sea"] and len(d) == 20
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    (root / "test.txt").write_text("# test images\nsea/sea_0.tif\nforest/forest_1\n")
    d = from_folders(root, val_fraction=0.2)
    test = [d.items[i] for i in d.splits["test"]]
    assert sorted(Path(p).name for p in test) == ["forest_1.tif", "sea_0.tif"]
    assert d.split_source["test"].startswith("split file")
    assert "outside the test split" in d.split_source["train"]


def test_folders_train_and_test_files_without_val_file(tmp_path):
    root = _folders(tmp_path / "ds", {"sea": 10, "forest": 10})
    listed = {s: [f"{c}/{c}_{i}.tif" for c in ("sea", "forest") for i in r]
              for s, r in (("train", range(5)), ("test", range(7, 10)))}  # fmt: skip
    for s, entries in listed.items():
        (root / f"{s}.txt").write_text("\n".join(entries) + "\n")
    d = from_folders(root, val_fraction=0.2)
    rel = [f"{Path(p).parent.name}/{Path(p).name}" for p in d.item_names()]
    # validation comes out of train.txt; images in no file (_5, _6) take no part
    fitted = sorted(rel[i] for s in ("train", "val") for i in d.splits[s])
    assert fitted == sorted(listed["train"]) and len(d.splits["val"]) == 2
    assert sorted(rel[i] for i in d.splits["test"]) == sorted(listed["test"])
    assert "of the given train split" in d.split_source["val"]
    # a test file listing every image leaves nothing to train on: said, not a traceback
    (root / "train.txt").unlink()
    (root / "test.txt").write_text("\n".join(rel) + "\n")
    with pytest.raises(HeadInputError, match="the train split is empty"):
        from_folders(root)


def test_folders_split_file_naming_a_missing_class_is_refused(tmp_path):
    root = _folders(tmp_path / "ds", {"sea": 4, "forest": 4})
    (root / "test.txt").write_text("sea/sea_0.tif\nurban/urban_3.tif\n")
    with pytest.raises(HeadInputError, match=r"line 2: 'urban/urban_3.tif' names class 'urban'"):
        from_folders(root)
    (root / "test.txt").write_text("sea/sea_9.tif\n")
    with pytest.raises(HeadInputError, match="is not under"):
        from_folders(root)
    (root / "test.txt").write_text("# nothing\n")
    with pytest.raises(HeadInputError, match="test split is empty"):
        from_folders(root)


def test_folders_with_split_subfolders(tmp_path):
    for s, n in (("train", 3), ("val", 1), ("test", 2)):
        _folders(tmp_path / "ds" / s, {"a": n, "b": n})
    d = from_folders(tmp_path / "ds")
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [6, 2, 4]
    assert d.split_source["val"] == f"folder {tmp_path / 'ds' / 'val'}"


# -- benchmark datasets ------------------------------------------------------------------------
def test_benchmark_dataset_uses_its_split_file_and_splits_the_rest(tmp_path):
    mb.eurosat_ms(tmp_path, n_per_class=5)  # eurosat-test.txt lists the first image of each class
    d = from_benchmark("EuroSAT_MS", tmp_path, val_fraction=0.25)
    assert d.task == "classification" and len(d.names) == 10 and len(d) == 50
    test = [d.item_names()[i] for i in d.splits["test"]]
    assert len(test) == 10 and all(Path(p).stem.endswith("_1") for p in test)
    assert d.split_source["test"].endswith("eurosat-test.txt")
    assert len(d.splits["val"]) == 10 and len(d.splits["train"]) == 30
    assert d.prompt_names[0] == "annual crops"
    # every split file present: used as they are
    ds = tmp_path / "EuroSAT_MS"
    classes = sorted(p.name for p in (ds / "2750").iterdir())
    for split, k in (("train", (2, 3, 4)), ("val", (5,))):
        (ds / f"eurosat-{split}.txt").write_text("".join(f"{c}_{i}.jpg\n" for c in classes
                                                         for i in k))  # fmt: skip
    d = from_benchmark("EuroSAT_MS", tmp_path)
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [30, 10, 10]
    assert d.split_source["val"].endswith("eurosat-val.txt")
    # train and test files without a val file: validation comes out of the train file
    (ds / "eurosat-val.txt").unlink()
    d = from_benchmark("EuroSAT_MS", tmp_path, val_fraction=0.34)
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    names = d.item_names()
    assert not any(Path(names[i]).stem.endswith("_5") for s in d.splits.values() for i in s)
    model = msclip.create_model("msclip-tiny")
    item = d.dataset(model.preprocess())[int(d.splits["test"][0])]
    assert tuple(item["image"].shape) == (10, 32, 32) and item["index"] == d.splits["test"][0]
